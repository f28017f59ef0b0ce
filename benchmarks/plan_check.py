"""Does `laddertune plan` predict what `laddertune train` measures? Each configuration trains
one epoch on a few examples through the CLI, in a fresh process with one thread, and its own
printed plan ("plan: ... should peak at X MiB above the runtime") is set against the peak it
measured above the runtime (metrics.json's `peak_above_runtime_mb`: the process's peak RSS
less its RSS before the model loaded, less the shared libraries' code paged in since).

Two data sets: ``long`` (texts of 8 tweets each: every batch is --max-length tokens, the
plan's worst case) and ``tweets`` (single tweets, as the frontier trains them: batches as long
as their longest tweet). glibc keeps freed heap pages, so each run is measured twice where
asked (``--allocators default,returning``): under the default allocator (what a user gets)
and with ``MALLOC_MMAP_THRESHOLD_=131072``, which returns large freed blocks to the system at
once, so RSS follows the bytes alive, which is what the plan's formulas count.

    python benchmarks/plan_check.py --output benchmarks/results/plan
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import re
from pathlib import Path

from data import DATASETS, write_data
from runner import ResultFiles, laddertune, machine, read_json, write_text

# name -> (method, extra train flags)
CONFIGS = {
    "lst": ("lst", ()),
    "lst-cache": ("lst", ("--cache-backbone",)),
    "lst-late": ("lst", ("--lst-preset", "late")),
    "lst-xladder": ("lst", ("--lst-xladder-depth", "2")),
    "lst-rank16": ("lst", ("--lst-ladder-rank", "16")),
    "probe": ("probe", ()),
    "lora": ("lora", ()),
    "lora-top1": ("lora", ("--top-layers", "1")),
    "full": ("full", ()),
}
SHAPES = ((16, 64), (32, 128))
ALLOCATORS = {"default": {}, "returning": {"MALLOC_MMAP_THRESHOLD_": "131072"},
              # large blocks only (>= 4 MiB) returned: what a user could set at little cost
              "returning-4m": {"MALLOC_MMAP_THRESHOLD_": str(4 * 2**20)}}
TWEETS_PER_TEXT = 8
PLAN_LINE = re.compile(r"^plan: .* should peak at ([\d,.]+) MiB above the runtime \((.*)\)")
PART = re.compile(r"(weights|activations|gradients and AdamW|working set|eval|cached states) "
                  r"([\d,.]+) MiB")


def parse_plan_line(stdout: str) -> dict:
    """The figures of `laddertune train`'s plan line, in MiB: total and each part.

    Raises:
        ValueError: the output has no plan line.
    """
    for line in stdout.splitlines():
        match = PLAN_LINE.match(line.strip())
        if match:
            parts = {name: float(value.replace(",", ""))
                     for name, value in PART.findall(match.group(2))}
            return {"total": float(match.group(1).replace(",", "")), **parts}
    raise ValueError("laddertune train printed no plan line")


def write_long_texts(source: Path, path: Path, rows: int) -> Path:
    """`rows` texts of TWEETS_PER_TEXT tweets each from the CSV `source`, labelled in turn
    with its labels (sorted), so that every batch fills --max-length."""
    with open(source, newline="", encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    labels = sorted({row["label"] for row in table})
    out = []
    for i in range(rows):
        chunk = table[i * TWEETS_PER_TEXT:(i + 1) * TWEETS_PER_TEXT]
        out.append({"text": " ".join(row["text"] for row in chunk),
                    "label": labels[i % len(labels)]})
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["text", "label"])
        writer.writeheader()
        writer.writerows(out)
    return path


def write_tweets(source: Path, path: Path, rows: int) -> Path:
    """`rows` single tweets from `source`, labelled in turn as `write_long_texts` labels."""
    with open(source, newline="", encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    labels = sorted({row["label"] for row in table})
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["text", "label"])
        writer.writeheader()
        writer.writerows({"text": row["text"], "label": labels[i % len(labels)]}
                         for i, row in enumerate(table[:rows]))
    return path


def row_of(key: str, config: str, data: str, allocator: str, batch: int, length: int,
           planned: dict, metrics: dict, command: list[str]) -> dict:
    """One result: the plan against the measured peak above the runtime, with their ratio."""
    measured = metrics.get("peak_above_runtime_mb")
    return {"key": key, "config": config, "method": metrics.get("method"), "data": data,
            "allocator": allocator, "batch_size": batch, "max_length": length,
            "planned_mib": planned["total"], "planned_parts_mib": planned,
            "measured_mib": measured,
            "planned_vs_measured": round(planned["total"] / measured, 3) if measured else None,
            **{k: metrics.get(k) for k in ("peak_memory_mb", "runtime_rss_mb",
                                           "runtime_code_paged_in_mb", "training_memory_mb",
                                           "training_peak_rss_mb", "steps")},
            "command": "laddertune " + " ".join(command)}


def run_key(model: str, config: str, data: str, allocator: str, batch: int, length: int
            ) -> str:
    """A run's name (MiniLM's runs carry no model name)."""
    prefix = "" if model == "minilm" else f"{model}_"
    return f"{prefix}{config}_{data}_{allocator}_b{batch}_t{length}"


def run_one(root: Path, files: dict, model: str, config: str, data: str, allocator: str,
            batch: int, length: int, threads: int) -> dict:
    method, flags = CONFIGS[config]
    key = run_key(model, config, data, allocator, batch, length)
    out = root / "runs" / key
    command = ["train", "--model", model, "--train", str(files[data, "train"]), "--eval",
               str(files[data, "eval"]), "--method", method, "--epochs", "1", "--batch-size",
               str(batch), "--max-length", str(length), "--no-progress", "--overwrite",
               "--cache-dir", str(root / "cache"), "--output", str(out), *flags]
    with allocator_settings(ALLOCATORS[allocator]):
        stdout = laddertune(*command, threads=threads)
    return {"model": model, **row_of(key, config, data, allocator, batch, length,
                                      parse_plan_line(stdout), read_json(out / "metrics.json"),
                                      command)}


@contextlib.contextmanager
def allocator_settings(settings: dict[str, str]):
    """The child processes started inside see `settings` in their environment."""
    before = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def report(rows: list[dict], info: dict) -> str:
    where = f"{info['cpu']}, {info['cores']} cores, torch {info['torch']}, {info['date']}"
    lines = ["# The planner against measured peaks (real weights, CPU)", "",
             f"Command: `python benchmarks/plan_check.py`; {where}; one thread, one fresh "
             "`laddertune train` process per run (1 epoch: 64 training and 32 eval examples), on "
             "a machine shared with other jobs.", "",
             "Measured: metrics.json's `peak_above_runtime_mb`, the process's peak RSS (loading, "
             "steps and evals) less the runtime (its RSS before the model loaded: Python, torch, "
             "the libraries, the tokenizer, the data) less the shared libraries' code paged in "
             "since. Planned: the figure `laddertune train` printed for its own run. "
             "`returning` runs set MALLOC_MMAP_THRESHOLD_=131072 (glibc returns large freed "
             "blocks at once; RSS then follows the bytes alive).", "",
             "| model | configuration | data | allocator | batch × tokens | planned MiB | "
             "measured MiB | planned / measured | runtime MiB | code paged in MiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["allocator"], r.get("model", "minilm"), r["data"],
                                         list(CONFIGS).index(r["config"]), r["batch_size"])):
        lines.append(f"| {r.get('model', 'minilm')} | {r['config']} | {r['data']} | "
                     f"{r['allocator']} | {r['batch_size']} × "
                     f"{r['max_length']} | {r['planned_mib']:,.0f} | {r['measured_mib']:,.0f} "
                     f"| {r['planned_vs_measured']:.2f} | {r['runtime_rss_mb']:,.0f} | "
                     f"{r['runtime_code_paged_in_mb']:,.0f} |")
    for allocator in sorted({r["allocator"] for r in rows}):
        ratios = [r["planned_vs_measured"] for r in rows if r["allocator"] == allocator]
        within = sum(abs(x - 1) <= 0.15 for x in ratios)
        lines.append("")
        lines.append(f"{allocator}: {within} of {len(ratios)} runs within 15%; planned / "
                     f"measured from {min(ratios):.2f} to {max(ratios):.2f}.")
    lines += ["", "What other glibc settings cost and save, measured beside this: "
              "[allocators.md](allocators.md)."]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python benchmarks/plan_check.py",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--data", default="long,tweets")
    parser.add_argument("--allocators", default="default,returning")
    parser.add_argument("--shapes", default=",".join(f"{b}x{t}" for b, t in SHAPES))
    parser.add_argument("--root", default="runs/plan_check", help="where the runs live")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default="benchmarks/results/plan")
    parser.add_argument("--again", action="store_true", help="run finished runs again")
    args = parser.parse_args(argv)
    root, out = Path(args.root), Path(args.output)
    source = write_data(DATASETS["tweet-sentiment"], root / "data")
    files = {("long", "train"): write_long_texts(source["train"], root / "long-train.csv", 64),
             ("long", "eval"): write_long_texts(source["dev"], root / "long-eval.csv", 32),
             ("tweets", "train"): write_tweets(source["train"], root / "tweets-train.csv", 64),
             ("tweets", "eval"): write_tweets(source["dev"], root / "tweets-eval.csv", 32)}
    results = ResultFiles(out / "runs")
    info = machine()
    for allocator in args.allocators.split(","):
        for data in args.data.split(","):
            for config in args.configs.split(","):
                for shape in args.shapes.split(","):
                    batch, length = map(int, shape.split("x"))
                    key = run_key(args.model, config, data, allocator, batch, length)
                    if results.get(key) and not args.again:
                        continue
                    row = run_one(root, files, args.model, config, data, allocator, batch,
                                  length, args.threads)
                    print(f"{key}: planned {row['planned_mib']:,.0f} MiB, measured "
                          f"{row['measured_mib']:,.0f} MiB ({row['planned_vs_measured']:.2f}x)",
                          flush=True)
                    results.put(key, {**row, "machine": info})
    print(write_text(out / "plan.md", report(results.all(), info)))


if __name__ == "__main__":
    main()
