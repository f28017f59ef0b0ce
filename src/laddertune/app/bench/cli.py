"""`laddertune bench`: every method trained on the same batches, measured side by side.

`add_arguments(parser)` and `run(args)` are what `laddertune.app.cli` registers as the ``bench``
subcommand; ``python -m laddertune.app.bench`` runs the same thing.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ...checkpoint import atomic_write_bytes
from ..methods import METHODS
from .measure import RunSpec, measure_in_subprocess
from .report import (
    check_expectations,
    expectations_table,
    long_expectations,
    machine,
    markdown_table,
    write_results,
)
from .workloads import METHODS_BY_KIND, WORKLOADS, get_workload

FULL_WORKLOADS = ("t5-base", "bert-base", "smollm2-135m")
QUICK_WORKLOADS = ("t5-small", "bert-base")
PARTS = ("table", "scaling", "long")
DEFAULT_PARTS = ("table", "scaling")
# Long sequences, where activations dominate: SmolLM2-shaped training memory per length.
LONG_WORKLOAD = "smollm2-135m"
LONG_LENGTHS = (256, 512, 1024, 2048)

ADAPTERS_NOTE = (
    "Bottleneck adapters are laddertune's own (app/adapters.py: Houlsby, reduction 16): `peft` "
    "has none and the `adapters` library needs transformers 4.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="small shapes, one timed step, memory/speed table only (minutes)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument("--parts", default=None,
                        help=f"comma list of {', '.join(PARTS)} (default: table, or table "
                             "and scaling without --quick); long: SmolLM2-shaped training "
                             f"memory at {', '.join(map(str, LONG_LENGTHS))} tokens (batch 1 "
                             "unless --batch-size), device-independent account")
    parser.add_argument("--workloads", default=None,
                        help="comma list of model shapes (default: t5-base,bert-base,"
                             "smollm2-135m; --quick: t5-small,bert-base)")
    parser.add_argument("--methods", default=None,
                        help="comma list of full,lora,bitfit,prompt,lst (default: all that apply)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 8 (quick: 4)")
    parser.add_argument("--seq-len", type=int, default=None, help="default: 128 source tokens")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed training steps after one warm-up (default 3, quick 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    parser.add_argument("--output", default=None,
                        help="results folder (default runs/bench; quick: runs/bench-quick)")
    parser.add_argument("--merge", action="store_true",
                        help="keep parts of an existing results.json that this run does not redo")



def run(args: argparse.Namespace) -> int:
    """The ``bench`` subcommand: measure, write results, print the table; exit status 0."""
    run_bench(args)
    return 0


def output_folder(args: argparse.Namespace) -> Path:
    """--output, else a folder under the current directory (never inside the package)."""
    return Path(args.output or ("runs/bench-quick" if args.quick else "runs/bench"))


def run_bench(args: argparse.Namespace) -> dict:
    """Run the asked parts of the bench and write them to the output folder; return results."""
    parts = _split(args.parts, PARTS, "--parts") or (["table"] if args.quick
                                                      else list(DEFAULT_PARTS))
    out_dir = output_folder(args)
    results = {}
    if args.merge and (out_dir / "results.json").exists():
        results = json.loads((out_dir / "results.json").read_text())
    batch_size = args.batch_size or (4 if args.quick else 8)
    steps = args.steps or (1 if args.quick else 3)
    results.update(machine=machine(), device=args.device,
                   notes=[ADAPTERS_NOTE, "T5 and Llama have no bias terms, so BitFit runs on the "
                          "BERT shape only.",
                          "Inference time is one teacher-forced forward pass (no generation)."])
    results.setdefault("settings", {})
    results.setdefault("runs", [])
    common = dict(device=args.device, threads=args.threads)
    if "table" in parts:
        workloads = _split(args.workloads, WORKLOADS, "--workloads") or list(
            QUICK_WORKLOADS if args.quick else FULL_WORKLOADS)
        results["settings"].update(batch_size=batch_size, steps=steps, seq_len=args.seq_len or 128,
                                   workloads=workloads, optimizer="AdamW, methods.DEFAULT_LR")
        # --merge keeps the runs of workloads this call does not measure again
        results["runs"] = [r for r in results["runs"] if r["workload"] not in workloads]
        for workload in workloads:
            for method in _methods(args, workload):
                spec = RunSpec(workload, method, batch_size, args.seq_len, steps, **common)
                results["runs"].append(_log(measure_in_subprocess(spec, args.timeout)))
                _save_partial(results, out_dir)
    if "scaling" in parts:
        results["scaling"] = scaling_runs(args, common, results, out_dir)
    if "long" in parts:
        results["long"] = long_runs(args, common, results, out_dir)
    paper = "t5-base" if any(r["workload"] == "t5-base" for r in results["runs"]) else "t5-small"
    for older in ("accuracy", "targets"):   # keys of results.json written by older versions
        results.pop(older, None)
    results["expectations"] = check_expectations(results["runs"], paper) + long_expectations(
        results.get("long", []))
    write_results(results, out_dir)
    print(markdown_table(results["runs"]))
    if results["expectations"]:
        print()
        print(expectations_table(results["expectations"]))
    print(f"\nwrote {out_dir}/results.json, results.md and plots")
    return results


def scaling_runs(args, common, results: dict, out_dir: Path) -> dict:
    """Memory and step time against batch size and source length (T5-small shape, measured),
    and against model size (T5 small/base/large shapes, device-independent account only)."""
    methods = [m for m in ("full", "lora", "lst") if m in (_split(args.methods) or [m])]
    one = dict(steps=1, inference=False, checkpoint=False, **common)
    batches = (1, 4, 16) if not args.quick else (1, 4)
    lengths = (64, 128, 256) if not args.quick else (64, 128)
    sizes = ("t5-small", "t5-base", "t5-large") if not args.quick else ("t5-small",)
    account_only = dict(train=False, inference=False, checkpoint=False, **common)
    plan = {
        "model_size": [RunSpec(w, m, 8, 128, **account_only) for w in sizes for m in methods],
        "batch_size": [RunSpec("t5-small", m, b, 128, **one) for b in batches for m in methods],
        "seq_len": [RunSpec("t5-small", m, 4, n, **one) for n in lengths for m in methods],
    }
    scaling = results.setdefault("scaling", {})
    for axis, specs in plan.items():
        scaling[axis] = []
        for spec in specs:
            scaling[axis].append(_log(measure_in_subprocess(spec, args.timeout)))
            _save_partial(results, out_dir)
    # The table's own T5-shaped runs (batch 8, 128 tokens) are model-size points too.
    measured = {(r["workload"], r["method"]) for r in scaling["model_size"]}
    scaling["model_size"] += [
        r for r in results.get("runs", [])
        if r["workload"].startswith("t5-") and r["method"] in methods and "error" not in r
        and (r["workload"], r["method"]) not in measured
        and r["batch_size"] == 8 and r["seq_len"] == 128]
    return scaling


def long_runs(args, common, results: dict, out_dir: Path) -> list[dict]:
    """Training memory of full FT, LoRA and LST on the SmolLM2-135M shape (causal LM, loss on
    every token; --workloads names another) at each of `LONG_LENGTHS` tokens (the first two
    with --quick), each in a fresh process: the account of one
    forward and backward (weights, gradients, AdamW state, activations saved for backward).
    Optimizer steps are left out, which would take minutes each at 2,048 tokens on a CPU."""
    methods = [m for m in ("full", "lora", "lst") if m in (_split(args.methods) or [m])]
    account_only = dict(train=False, inference=False, checkpoint=False, **common)
    lengths = LONG_LENGTHS[:2] if args.quick else LONG_LENGTHS
    workload = (_split(args.workloads, WORKLOADS, "--workloads") or [LONG_WORKLOAD])[0]
    results["settings"].update(long_workload=workload, long_batch_size=args.batch_size or 1,
                               long_lengths=list(lengths), long_measure="account")
    runs = results["long"] = []
    for length in lengths:
        for method in methods:
            spec = RunSpec(workload, method, args.batch_size or 1, length, **account_only)
            runs.append(_log(measure_in_subprocess(spec, args.timeout)))
            _save_partial(results, out_dir)
    return runs


def _save_partial(results: dict, out_dir: Path) -> None:
    """results.json after every run, so an interrupted bench keeps what it measured."""
    atomic_write_bytes(out_dir / "results.json", json.dumps(results, indent=2).encode())


def _methods(args, workload: str) -> list[str]:
    allowed = METHODS_BY_KIND[get_workload(workload).kind]
    wanted = _split(args.methods, METHODS, "--methods") or list(allowed)
    return [m for m in wanted if m in allowed]


def _split(text: str | None, allowed=None, flag: str = "") -> list[str]:
    """A comma list, each item checked against `allowed` (a one-line error names the flag)."""
    items = [part.strip() for part in (text or "").split(",") if part.strip()]
    unknown = [item for item in items if allowed is not None and item not in allowed]
    if unknown:
        from ...errors import LSTError
        raise LSTError(f"{flag} {unknown[0]!r} is unknown; use one of {', '.join(allowed)}")
    return items


def _log(result: dict) -> dict:
    step = f"step {result['step_seconds']:.2f}s, " if "step_seconds" in result else ""
    status = result.get("error") or (
        f"{step}account {result.get('account', {}).get('total_mib', float('nan')):.0f} MiB")
    print(f"[{time.strftime('%H:%M:%S')}] {result['workload']} {result['method']} "
          f"b={result['batch_size']} t={result.get('seq_len')}: {status}", flush=True)
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="laddertune bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    raise SystemExit(run(parser.parse_args(argv)))
