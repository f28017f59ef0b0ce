"""What caching the backbone buys: seconds per epoch with and without `--cache-backbone`, an
8-configuration `laddertune sweep` against 8 separate runs, and the cache's bytes per example.

Every figure comes from `laddertune train` / `laddertune sweep` run as a user runs them, each in
a fresh process, on BBC News (`Setup`: by default 600 articles, a stratified subset of its
fixed training split, so that the 8 separate runs fit a small CPU machine; 3 epochs, eval on 200
others):

    python benchmarks/cache_bench.py --models minilm,mpnet --sweep-models minilm

writes benchmarks/results/cache/results.json and results.md, both after each backbone.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from data import DataSpec, write_data
from runner import (
    ResultFiles,
    comma_list,
    machine,
    read_json,
    timed_laddertune,
    write_json,
    write_text,
)

# the sweep: 4 learning rates x 2 seeds, the rates LST's usual range
SWEEP_GRID = (("lr", ("1e-3", "3e-3", "1e-2", "3e-2")), ("seed", ("0", "1")))
# What caching is expected to reach: later epochs' time as a share of the first, per backbone,
# and a sweep's time as a share of separate runs.
TARGETS = {"minilm": 0.30, "mpnet": 0.20, "sweep": 0.35}


@dataclass(frozen=True)
class Setup:
    """The runs' data and length, the same for every backbone."""

    train_size: int = 600
    dev_size: int = 200
    epochs: int = 3
    max_length: int = 128

    @property
    def data(self) -> DataSpec:
        return DataSpec("bbc-news", self.train_size, self.dev_size, None, self.max_length,
                        "BBC News, 5 topics")


def _common(model: str, work: Path, setup: Setup) -> list[str]:
    files = write_data(setup.data, work / "data")
    return ["--model", model, "--train", str(files["train"]), "--eval", str(files["dev"]),
            "--epochs", str(setup.epochs), "--max-length", str(setup.max_length),
            "--no-progress", "--device", "cpu"]


def epochs(model: str, work: Path, setup: Setup) -> dict:
    """Seconds per epoch of the same LST run, without and with the cache (built in epoch 1)."""
    states = work / f"states-{model}"
    shutil.rmtree(states, ignore_errors=True)
    rows = {}
    for name, extra in (("no cache", []), ("cache", ["--cache-backbone", "--cache-dir",
                                                      str(states)])):
        out = work / f"{model}-{name.replace(' ', '-')}"
        shutil.rmtree(out, ignore_errors=True)
        wall = timed_laddertune("train", *_common(model, work, setup), "--output", str(out),
                                *extra)
        metrics = read_json(out / "metrics.json")
        seconds = metrics["epoch_seconds"]
        rows[name] = {"epoch_seconds": seconds, "wall_seconds": round(wall, 1),
                      "backbone_seconds": metrics["backbone_seconds"],
                      "accuracy": metrics["eval"]["accuracy"],
                      "later_vs_first": round(max(seconds[1:]) / seconds[0], 3)}
    shards = sorted(states.rglob("shard-*.safetensors"))
    manifests = [read_json(p) for p in states.rglob("manifest.json")]
    examples = sum(m["size"] for m in manifests)
    rows["cache_bytes_per_example"] = round(sum(p.stat().st_size for p in shards) / examples)
    rows["cache_examples"] = examples
    rows["cache_dtype"] = "float16"
    return rows


def sweep_against_runs(model: str, work: Path, setup: Setup) -> dict:
    """Wall time of one 8-configuration sweep against 8 separate runs of the same settings."""
    separate = []
    for lr in SWEEP_GRID[0][1]:
        for seed in SWEEP_GRID[1][1]:
            out = work / f"{model}-alone-lr{lr}-s{seed}"
            shutil.rmtree(out, ignore_errors=True)
            separate.append(timed_laddertune("train", *_common(model, work, setup), "--lr", lr,
                                             "--seed", seed, "--output", str(out)))
    out = work / f"{model}-sweep"
    shutil.rmtree(out, ignore_errors=True)
    grid = [f"--grid={name}={','.join(values)}" for name, values in SWEEP_GRID]
    swept = timed_laddertune("sweep", *_common(model, work, setup), "--output", str(out), *grid)
    summary = read_json(out / "sweep.json")
    return {"configurations": len(separate), "separate_runs_seconds": round(sum(separate), 1),
            "sweep_seconds": round(swept, 1), "ratio": round(swept / sum(separate), 3),
            "best": summary["best"]}


def checks(results: dict) -> list[dict]:
    """Each of `TARGETS` against what was measured: what, value, limit, met."""
    found = []
    for model, rows in results["epochs"].items():
        if model in TARGETS:
            found.append({"what": f"{model}: cached epochs after the first ≤ "
                                  f"{TARGETS[model]:.2f}× the first",
                          "value": rows["cache"]["later_vs_first"], "limit": TARGETS[model]})
    for model, swept in (results.get("sweeps") or {}).items():
        found.append({"what": f"{model}: 8-configuration sweep ≤ {TARGETS['sweep']:.2f}× of 8 "
                              "runs", "value": swept["ratio"], "limit": TARGETS["sweep"]})
    return [{**c, "met": c["value"] <= c["limit"]} for c in found]


def write(results: dict, folder: Path) -> Path:
    """results.json, and results.md from it."""
    write_json(folder / "results.json", results)
    m = results["machine"]
    setup = Setup(**results.get("setup", {}))
    lines = ["# Caching the backbone: time per epoch, sweeps, disk", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}; {m['date']}. "
             f"BBC News: {setup.train_size} articles of its training split (stratified, seed "
             f"0), eval on {setup.dev_size} others; {setup.epochs} epochs, {setup.max_length} "
             "tokens, batch 16, "
             "LST defaults; each run `laddertune train` in its own process, "
             f"{results['threads']} thread(s). Command: `{results['command']}`.", "",
             "| backbone | run | epoch 1 s | epoch 2 s | epoch 3 s | later / first | "
             "backbone s | eval accuracy |", "|---|---|---|---|---|---|---|---|"]
    for model, rows in results["epochs"].items():
        for name in ("no cache", "cache"):
            r = rows[name]
            e = (r["epoch_seconds"] + [float("nan")] * 3)[:3]
            lines.append(f"| {model} | {name} | {e[0]:.1f} | {e[1]:.1f} | {e[2]:.1f} | "
                         f"{r['later_vs_first']:.2f}× | {r['backbone_seconds']:.1f} | "
                         f"{100 * r['accuracy']:.2f}% |")
    lines += ["", "| backbone | cache bytes per example (float16) | examples cached |",
              "|---|---|---|"]
    lines += [f"| {model} | {rows['cache_bytes_per_example']:,} | {rows['cache_examples']} |"
              for model, rows in results["epochs"].items()]
    if results.get("sweeps"):
        lines += ["", "| backbone | 8 separate runs s | one 8-configuration sweep s | sweep / "
                  "runs |", "|---|---|---|---|"]
        lines += [f"| {model} | {s['separate_runs_seconds']:.0f} | {s['sweep_seconds']:.0f} | "
                  f"{s['ratio']:.2f}× |" for model, s in results["sweeps"].items()]
    lines += ["", "## Targets", "", "| target | measured | met? |", "|---|---|---|"]
    lines += [f"| {c['what']} | {c['value']:.2f}× | {'yes' if c['met'] else '**no**'} |"
              for c in checks(results)]
    return write_text(folder / "results.md", "\n".join(lines))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python benchmarks/cache_bench.py",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm,mpnet")
    parser.add_argument("--sweep-models", default="minilm")
    parser.add_argument("--train-size", type=int, default=Setup.train_size,
                        help="training articles")
    parser.add_argument("--dev-size", type=int, default=Setup.dev_size, help="eval articles")
    parser.add_argument("--epochs", type=int, default=Setup.epochs, help="2 or more")
    parser.add_argument("--max-length", type=int, default=Setup.max_length)
    parser.add_argument("--work", default="runs/cache-bench", help="where the runs go")
    parser.add_argument("--output", default="benchmarks/results/cache")
    parser.add_argument("--again", action="store_true",
                        help="measure again what an earlier, interrupted call finished")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the cache pays off from the second epoch")
    setup = Setup(args.train_size, args.dev_size, args.epochs, args.max_length)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine(), "threads": os.environ.get("OMP_NUM_THREADS", "all"),
               "command": "python benchmarks/cache_bench.py " + " ".join(
                   argv if argv is not None else sys.argv[1:]),
               "setup": vars(setup), "epochs": {}, "sweeps": {}}
    # each backbone's figures in a file of their own as they finish: a rerun measures the rest
    kept = ResultFiles(work / "results")
    tag = f"{setup.train_size}-{setup.dev_size}-e{setup.epochs}-t{setup.max_length}"
    for part, measure, models in (("epochs", epochs, args.models),
                                  ("sweeps", sweep_against_runs, args.sweep_models)):
        for model in comma_list(models):
            key = f"{part}-{model}-{tag}"
            found = None if args.again else kept.get(key)
            results[part][model] = found or kept.put(key, measure(model, work, setup))
            print({model: results[part][model]}, flush=True)
            write(results, Path(args.output))
    print(write(results, Path(args.output)))


if __name__ == "__main__":
    main()
