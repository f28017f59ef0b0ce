"""Where an LST training step spends its time: frozen backbone, side network, backward, optimizer.

``python benchmarks/profile_step.py --workload t5-base`` times, on one batch of a `laddertune
bench` model shape (random weights, nothing downloaded):

- the backbone's forward alone, under no_grad (what LST runs first, every step);
- the whole LST forward (backbone + ladders + side network);
- one whole training step as `laddertune train` takes it: the training loop's own `train_step`
  (forward, backward, gradient clipping, AdamW, schedule, zero_grad);
- the same forward and step for the baselines (LoRA and full fine-tuning by default);
and prints torch.profiler's top operators of the LST step by self CPU time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from runner import comma_list

from laddertune.app.bench.workloads import WORKLOADS, get_workload
from laddertune.app.methods import DEFAULT_LR, build_method
from laddertune.app.trainer import Optimization, train_step


def _median_time(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls of `fn`, after one warm-up call."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def _timed_method(method: str, workload, batch: dict, repeats: int) -> tuple[dict, object]:
    """Forward and whole-step seconds of `method`; the model and its `Optimization`."""
    model = build_method(method, workload.build(), workload.task_type, workload.num_labels)
    model.train()
    # enough steps that the schedule never reaches zero while we time it
    optimization = Optimization(model, DEFAULT_LR[method], total_steps=10 * (repeats + 2))
    times = {f"{method}_forward": _median_time(lambda: model(**batch).loss, repeats),
             f"{method}_train_step": _median_time(
                 lambda: train_step(model, batch, optimization), repeats)}
    return times, (model, optimization)


def breakdown(workload_name: str, batch_size: int = 8, repeats: int = 2,
              baselines: tuple = ("lora", "full")) -> dict:
    workload = get_workload(workload_name)
    batch = workload.batch(batch_size)
    out = {"workload": workload_name, "batch_size": batch_size, "repeats": repeats}
    times, (lst, optimization) = _timed_method("lst", workload, batch, repeats)
    out.update(times)

    def backbone_only():
        with torch.no_grad():
            lst.backbone_states(**batch)

    out["lst_backbone_forward_no_grad"] = _median_time(backbone_only, repeats)
    out["lst_side_forward"] = out["lst_forward"] - out["lst_backbone_forward_no_grad"]
    out["lst_backward_and_optimizer"] = out["lst_train_step"] - out["lst_forward"]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        train_step(lst, batch, optimization)
    out["lst_top_ops"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    lst = optimization = None   # free before building the baselines
    for method in baselines:
        times, held = _timed_method(method, workload, batch, repeats)
        out.update(times)
        del held
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python benchmarks/profile_step.py",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="t5-base", choices=sorted(WORKLOADS))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="timed calls after a warm-up")
    parser.add_argument("--baselines", default="lora,full", help="comma list of methods")
    args = parser.parse_args(argv)
    result = breakdown(args.workload, args.batch_size, args.repeats, comma_list(args.baselines))
    print(result.pop("lst_top_ops"))
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                      for k, v in result.items()}, indent=2))


if __name__ == "__main__":
    main()
