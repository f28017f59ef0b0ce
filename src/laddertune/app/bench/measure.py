"""Memory, speed and size of one method on one workload, each in a fresh subprocess.

A process's peak resident set (ru_maxrss) only ever grows, so comparing methods by peak RSS needs
one process per method: `measure_in_subprocess` starts ``python -m laddertune.app.bench.measure``
with a JSON spec and reads back one JSON line. Three views of memory come back:

- ``cpu_peak_rss_mb``: peak RSS minus RSS after the model was built (CPU runs);
- ``cuda_peak_allocated_mb`` / ``cuda_peak_reserved_mb``: the allocator's peaks minus the memory
  held after the model was built (CUDA runs);
- ``account``: the device-independent bytes of `laddertune.app.memory.training_memory_account`
  (saved-for-backward activations, parameters, gradients, AdamW state).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..memory import current_rss_mb, peak_memory_mb, training_memory_account
from ..methods import DEFAULT_LR, build_method, count_parameters, save_trained
from ..subprocess_run import ChildFailed, last_json_line, run_module
from ..trainer import Optimization, train_step
from .workloads import get_workload


@dataclass
class RunSpec:
    """What one subprocess measures."""

    workload: str
    method: str
    batch_size: int = 8
    seq_len: int | None = None
    steps: int = 3                  # timed training steps, after one warm-up step
    device: str = "cpu"
    seed: int = 0
    account: bool = True            # also run the device-independent account
    train: bool = True              # real optimizer steps (False: account only, for big shapes)
    inference: bool = True
    checkpoint: bool = True
    threads: int | None = None


def measure(spec: RunSpec) -> dict:
    """Measure `spec` in this process. Call it in a fresh process (see module doc)."""
    if spec.threads:
        torch.set_num_threads(spec.threads)
    workload = get_workload(spec.workload)
    device = torch.device(spec.device)
    model = build_method(spec.method, workload.build(spec.seed), workload.task_type,
                         workload.num_labels)
    model.to(device)
    batch = {k: v.to(device) for k, v in workload.batch(spec.batch_size, spec.seq_len).items()}
    trainable, total = count_parameters(model)
    result = {**asdict(spec), "seq_len": batch["input_ids"].shape[1],
              "trainable_params": trainable, "all_params": total,
              "trainable_percent": 100 * trainable / total}
    if spec.train:
        result.update(_train_steps(model, batch, spec, device))
    if spec.account:
        model.train()
        account = training_memory_account(model, lambda: model(**batch).loss)
        result["account"] = {k.replace("_bytes", "_mib"): v / 2**20 for k, v in account.items()}
    if spec.inference:
        result["inference_ms_per_example"] = _inference_ms(model, batch, device)
    if spec.checkpoint:
        result["checkpoint_mb"] = _checkpoint_mb(model, spec.method)
    return result


def _train_steps(model, batch, spec: RunSpec, device) -> dict:
    """Timed steps of the training loop's own `train_step` (forward, backward, clipping, AdamW,
    schedule), the first one a warm-up that also allocates AdamW's state."""
    optimization = Optimization(model, DEFAULT_LR[spec.method], total_steps=spec.steps + 1,
                                warmup_ratio=0.0)
    model.train()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base_allocated = torch.cuda.memory_allocated(device)
        base_reserved = torch.cuda.memory_reserved(device)
    rss_built = current_rss_mb()
    times = []
    for _ in range(spec.steps + 1):
        start = time.perf_counter()
        loss, _ = train_step(model, batch, optimization)
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    step = statistics.median(times[1:])
    out = {"step_seconds": step, "examples_per_second": spec.batch_size / step,
           "step_seconds_all": times, "final_loss": loss}
    if cuda:
        out["cuda_peak_allocated_mb"] = (torch.cuda.max_memory_allocated(device)
                                         - base_allocated) / 2**20
        out["cuda_peak_reserved_mb"] = (torch.cuda.max_memory_reserved(device)
                                        - base_reserved) / 2**20
    else:
        out["cpu_peak_rss_mb"] = peak_memory_mb() - rss_built
    del optimization
    return out


def _inference_ms(model, batch, device, repeats: int = 3) -> float:
    """Median time of one forward pass (teacher-forced for text-to-text) per example, in ms."""
    model.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels" or _needs_labels(model)}
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            start = time.perf_counter()
            model(**inputs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[1:]) / batch["input_ids"].shape[0]


def _needs_labels(model) -> bool:
    # Text-to-text models build decoder inputs from the labels (teacher forcing).
    config = getattr(model, "config", None)
    return getattr(config, "is_encoder_decoder", False) or getattr(
        config, "task_type", None) == "SEQ_2_SEQ_LM"


def _checkpoint_mb(model, method: str) -> float:
    """The size of what the method must ship, written by the product's own `save_trained`."""
    with tempfile.TemporaryDirectory() as folder:
        written = save_trained(model, method, Path(folder))
        return sum(path.stat().st_size for path in written) / 2**20


def measure_in_subprocess(spec: RunSpec, timeout: float | None = None) -> dict:
    """`measure(spec)` in a fresh Python process; a failure comes back as {"error": ...}."""
    try:
        stdout = run_module("laddertune.app.bench.measure", [json.dumps(asdict(spec))],
                            timeout=timeout)
    except ChildFailed as failed:
        return {**asdict(spec), "error": str(failed)}
    return last_json_line(stdout)


def main() -> None:
    spec = RunSpec(**json.loads(sys.argv[1]))
    print(json.dumps(measure(spec)))


if __name__ == "__main__":
    main()
