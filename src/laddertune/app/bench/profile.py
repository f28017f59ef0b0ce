"""Where an LST training step spends its time: frozen backbone, side network, ladders, optimizer.

``python -m laddertune.app.bench.profile --workload t5-base`` times, on one batch:

- the backbone's forward under no_grad (what LST runs first, every step);
- the whole LST forward (backbone + ladders + side) and its backward (side only);
- the optimizer step;
- the same forward and backward for LoRA and full fine-tuning, for comparison;
and prints torch.profiler's top operators of the LST step by self CPU time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ...model import frozen
from ..methods import DEFAULT_LR, build_method
from ..trainer import Optimization
from .workloads import get_workload


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def breakdown(workload_name: str, batch_size: int = 8, repeats: int = 2) -> dict:
    workload = get_workload(workload_name)
    batch = workload.batch(batch_size)
    out = {"workload": workload_name, "batch_size": batch_size}
    lst = build_method("lst", workload.build(), workload.task_type, workload.num_labels)
    lst.train()
    backbone_inputs = {k: v for k, v in batch.items() if k != "labels" or workload.kind == "t5"}

    def backbone_only():
        with frozen(lst.backbone):
            lst.backbone(**backbone_inputs, output_hidden_states=True)

    out["lst_backbone_forward_no_grad"] = _median_time(backbone_only, repeats)
    out["lst_forward"] = _median_time(lambda: lst(**batch).loss, repeats)

    def forward_backward():
        lst(**batch).loss.backward()
    out["lst_forward_backward"] = _median_time(forward_backward, repeats)
    optimization = Optimization(lst, DEFAULT_LR["lst"], total_steps=repeats + 1)
    out["lst_optimizer_step"] = _median_time(optimization.optimizer.step, repeats)
    out["lst_side_forward"] = out["lst_forward"] - out["lst_backbone_forward_no_grad"]
    out["lst_backward"] = out["lst_forward_backward"] - out["lst_forward"]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        forward_backward()
    out["lst_top_ops"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    lst = optimization = None  # free before building the baselines
    for method in ("lora", "full"):
        model = build_method(method, workload.build(), workload.task_type, workload.num_labels)
        model.train()
        out[f"{method}_forward"] = _median_time(lambda m=model: m(**batch).loss, repeats)

        def fb(m=model):
            m(**batch).loss.backward()
        out[f"{method}_forward_backward"] = _median_time(fb, repeats)
        del model
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="t5-base")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    result = breakdown(args.workload, args.batch_size, args.repeats)
    print(result.pop("lst_top_ops"))
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                      for k, v in result.items()}, indent=2))


if __name__ == "__main__":
    main()
