"""What caching the backbone buys: seconds per epoch with and without `--cache-backbone`, an
8-configuration `laddertune sweep` against 8 separate runs, and the cache's bytes per example.

Every figure comes from `laddertune train` / `laddertune sweep` run as a user runs them, each in
a fresh process, on BBC News (`DATA`: a stratified subset of its fixed training split, so that
the 8 separate runs fit a CPU session; 3 epochs, eval on a dev split of the rest):

    python -m laddertune.app.bench.cache_bench --models minilm,mpnet --sweep-models minilm

writes benchmarks/results/cache/results.json and results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .report import machine
from .suite import DataSpec, write_data

EPOCHS, MAX_LENGTH = 3, 128
DATA = DataSpec("bbc-news", 600, 200, None, MAX_LENGTH, "BBC News, 5 topics")
# the sweep: 4 learning rates x 2 seeds, the rates LST's usual range
SWEEP_GRID = (("lr", ("1e-3", "3e-3", "1e-2", "3e-2")), ("seed", ("0", "1")))
TARGETS = {"minilm": 0.30, "mpnet": 0.20, "sweep": 0.35}


def _laddertune(*args: str) -> float:
    """Run one laddertune command in a fresh process; its wall time in seconds."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "laddertune.app.cli", *args],
                          capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"laddertune {' '.join(args[:3])} ... failed: {last}")
    return time.perf_counter() - start


def _common(model: str, work: Path) -> list[str]:
    files = write_data(DATA, work / "data")
    return ["--model", model, "--train", str(files["train"]), "--eval", str(files["dev"]),
            "--epochs", str(EPOCHS),
            "--max-length", str(MAX_LENGTH), "--no-progress", "--device", "cpu"]


def epochs(model: str, work: Path) -> dict:
    """Seconds per epoch of the same LST run, without and with the cache (built in epoch 1)."""
    states = work / f"states-{model}"
    shutil.rmtree(states, ignore_errors=True)
    rows = {}
    for name, extra in (("no cache", []), ("cache", ["--cache-backbone", "--cache-dir",
                                                      str(states)])):
        out = work / f"{model}-{name.replace(' ', '-')}"
        shutil.rmtree(out, ignore_errors=True)
        wall = _laddertune("train", *_common(model, work), "--output", str(out), *extra)
        metrics = json.loads((out / "metrics.json").read_text())
        seconds = metrics["epoch_seconds"]
        rows[name] = {"epoch_seconds": seconds, "wall_seconds": round(wall, 1),
                      "backbone_seconds": metrics["backbone_seconds"],
                      "accuracy": metrics["eval"]["accuracy"],
                      "later_vs_first": round(max(seconds[1:]) / seconds[0], 3)}
    shards = sorted(states.rglob("shard-*.safetensors"))
    manifests = [json.loads(p.read_text()) for p in states.rglob("manifest.json")]
    examples = sum(m["size"] for m in manifests)
    rows["cache_bytes_per_example"] = round(sum(p.stat().st_size for p in shards) / examples)
    rows["cache_examples"] = examples
    rows["cache_dtype"] = "float16"
    return rows


def sweep_against_runs(model: str, work: Path) -> dict:
    """Wall time of one 8-configuration sweep against 8 separate runs of the same settings."""
    separate = []
    for lr in SWEEP_GRID[0][1]:
        for seed in SWEEP_GRID[1][1]:
            out = work / f"{model}-alone-lr{lr}-s{seed}"
            shutil.rmtree(out, ignore_errors=True)
            separate.append(_laddertune("train", *_common(model, work), "--lr", lr, "--seed", seed,
                                        "--output", str(out)))
    out = work / f"{model}-sweep"
    shutil.rmtree(out, ignore_errors=True)
    grid = [f"--grid={name}={','.join(values)}" for name, values in SWEEP_GRID]
    swept = _laddertune("sweep", *_common(model, work), "--output", str(out), *grid)
    summary = json.loads((out / "sweep.json").read_text())
    return {"configurations": len(separate), "separate_runs_seconds": round(sum(separate), 1),
            "sweep_seconds": round(swept, 1), "ratio": round(swept / sum(separate), 3),
            "best": summary["best"]}


def write(results: dict, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results, indent=2))
    m = results["machine"]
    lines = ["# Caching the backbone: time per epoch, sweeps, disk", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}; {m['date']}. "
             f"BBC News: {DATA.train_size} articles of its training split (stratified, seed 0), "
             f"eval on {DATA.dev_size} others; {EPOCHS} epochs, {MAX_LENGTH} tokens, batch 16, "
             "LST defaults; each run `laddertune train` in its own process, "
             f"{results['threads']} thread(s). Command: `{results['command']}`.", "",
             "| backbone | run | epoch 1 s | epoch 2 s | epoch 3 s | later / first | "
             "backbone s | eval accuracy |", "|---|---|---|---|---|---|---|---|"]
    for model, rows in results["epochs"].items():
        for name in ("no cache", "cache"):
            r = rows[name]
            e = r["epoch_seconds"]
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
    for model, rows in results["epochs"].items():
        limit = TARGETS.get(model)
        if limit is not None:
            value = rows["cache"]["later_vs_first"]
            lines.append(f"| {model}: cached epochs after the first ≤ {limit:.2f}× the first | "
                         f"{value:.2f}× | {'yes' if value <= limit else '**no**'} |")
    for model, s in (results.get("sweeps") or {}).items():
        lines.append(f"| {model}: 8-configuration sweep ≤ {TARGETS['sweep']:.2f}× of 8 runs | "
                     f"{s['ratio']:.2f}× | {'yes' if s['ratio'] <= TARGETS['sweep'] else '**no**'}"
                     " |")
    path = folder / "results.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m laddertune.app.bench.cache_bench",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm,mpnet")
    parser.add_argument("--sweep-models", default="minilm")
    parser.add_argument("--work", default="runs/cache-bench", help="where the runs go")
    parser.add_argument("--output", default="benchmarks/results/cache")
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine(), "threads": os.environ.get("OMP_NUM_THREADS", "all"),
               "command": "python -m laddertune.app.bench.cache_bench " + " ".join(
                   argv if argv is not None else sys.argv[1:]),
               "epochs": {}, "sweeps": {}}
    for model in filter(None, args.models.split(",")):
        results["epochs"][model] = epochs(model, work)
        print(json.dumps({model: results["epochs"][model]}), flush=True)
        write(results, Path(args.output))
    for model in filter(None, args.sweep_models.split(",")):
        results["sweeps"][model] = sweep_against_runs(model, work)
        print(json.dumps({model: results["sweeps"][model]}), flush=True)
        write(results, Path(args.output))
    print(write(results, Path(args.output)))


if __name__ == "__main__":
    main()
