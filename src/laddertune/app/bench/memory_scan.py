"""Peak training memory as the batch grows, through `laddertune train`: from what batch size the
bigger backbone under LST needs less memory than the smaller one under LoRA or full fine-tuning.

The accuracy suite trains at batch 16 on 48-64 tokens. There a CPU process's peak is mostly the
runtime and the weights (MPNet-base's are 4.9x MiniLM's), which no method saves, so
the activations LST does not keep matter little. This scan trains each (backbone, method) for
two steps at each batch size, on 128-token BBC News articles, in a fresh process per run, and
reads the same figure the suite reports (`peak_memory_mb`: the process's peak RSS on a CPU, the
allocator's peak on a GPU). It measures memory only: two steps say nothing of accuracy.

    python -m laddertune.app.bench.memory_scan --output benchmarks/results/accuracy
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from ...checkpoint import atomic_write_bytes
from .report import machine
from .suite import DATASETS, run_command, write_data

RUNS = (("minilm", "full"), ("minilm", "lora"), ("minilm", "lst"), ("mpnet", "lora"),
        ("mpnet", "lst"))
BATCH_SIZES = (16, 32, 64)
MAX_LENGTH, STEPS = 128, 2


def _subset(source: Path, rows: int, path: Path) -> Path:
    """The header and `rows` rows of the CSV `source`, taken from each label in turn, as `path`."""
    with open(source, newline="", encoding="utf-8") as f:
        header, *table = list(csv.reader(f))
    by_label: dict[str, list] = {}
    for row in table:
        by_label.setdefault(row[header.index("label")], []).append(row)
    mixed = [row for group in zip(*by_label.values()) for row in group]
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *mixed[:rows]])
    return path


def measure(root: Path, model: str, method: str, batch_size: int, threads: int | None,
            again: bool = False) -> dict:
    """metrics.json of `STEPS` training steps of `method` on `model` at `batch_size` (a finished
    run is reused unless `again`)."""
    out = root / f"{model}-{method}-b{batch_size}"
    if (out / "metrics.json").is_file() and not again:
        return json.loads((out / "metrics.json").read_text())
    files = write_data(DATASETS["bbc-news"], root / "data")
    train = _subset(files["train"], STEPS * batch_size, root / f"train-{batch_size}.csv")
    evaluation = _subset(files["dev"], 16, root / "eval.csv")
    run_command([sys.executable, "-m", "laddertune.app.cli", "train", "--model", model,
                 "--method", method, "--train", str(train), "--eval", str(evaluation),
                 "--epochs", "1", "--batch-size", str(batch_size),
                 "--max-length", str(MAX_LENGTH), "--output", str(out), "--no-progress",
                 "--overwrite"], threads)
    return json.loads((out / "metrics.json").read_text())


def table(rows: list[dict]) -> list[str]:
    """Markdown: peak MiB per run, and each as a multiple of LoRA on MiniLM at that batch."""
    lines = ["| batch | backbone | method | peak MiB (× LoRA on MiniLM) | training MiB "
             "(peak less what the process held before loading the model) |",
             "|---|---|---|---|---|"]
    for batch in sorted({r["batch_size"] for r in rows}):
        here = [r for r in rows if r["batch_size"] == batch]
        lora = next(r["peak_memory_mb"] for r in here
                    if (r["model"], r["method"]) == ("minilm", "lora"))
        lines += [f"| {batch} | {r['model']} | {r['method']} | {r['peak_memory_mb']:,.0f} "
                  f"({r['peak_memory_mb'] / lora:.2f}×) | {r['training_memory_mb']:,.0f} |"
                  for r in here]
    return lines


def bigger_under_lst(rows: list[dict]) -> str:
    """One line: LST on MPNet-base's peak as a multiple of LoRA on MiniLM's, per batch size."""
    peak = {(r["model"], r["method"], r["batch_size"]): r["peak_memory_mb"] for r in rows}
    ratios = [f"{peak['mpnet', 'lst', b] / peak['minilm', 'lora', b]:.2f}× at batch {b}"
              for b in sorted({r["batch_size"] for r in rows})
              if ("mpnet", "lst", b) in peak and ("minilm", "lora", b) in peak]
    return ("LST on MPNet-base needs " + ", ".join(ratios) + " the peak of LoRA on MiniLM."
            if ratios else "")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m laddertune.app.bench.memory_scan",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="runs/memory-scan", help="where the runs live")
    parser.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)))
    parser.add_argument("--threads", type=int, default=1, help="OMP threads per run")
    parser.add_argument("--output", default="benchmarks/results/accuracy")
    parser.add_argument("--again", action="store_true", help="train finished runs again")
    args = parser.parse_args(argv)
    rows = []
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        for model, method in RUNS:
            metrics = measure(Path(args.root), model, method, batch, args.threads,
                              args.again)
            rows.append({"model": model, "method": method, "batch_size": batch,
                         **{k: metrics[k] for k in ("peak_memory_mb", "training_memory_mb",
                                                    "device", "step_seconds")}})
            print(f"batch {batch} {model} {method}: peak {metrics['peak_memory_mb']:,.0f} MiB",
                  flush=True)
    out = Path(args.output)
    info = machine()
    where = (f"{info.get('gpu') or info['cpu']}, {info['cores']} cores, torch {info['torch']}, "
             f"{info['date']}")
    atomic_write_bytes(out / "memory_scan.json", json.dumps(
        {"max_length": MAX_LENGTH, "steps": STEPS, "machine": info, "rows": rows},
        indent=2).encode())
    lines = ["# Peak training memory by batch size (BBC News, 128 tokens, 2 steps per run)", "",
             f"Command: `python -m laddertune.app.bench.memory_scan`; {where}; one fresh "
             "`laddertune train` process per run, one thread.", "", *table(rows), "",
             bigger_under_lst(rows), ""]
    atomic_write_bytes(out / "memory_scan.md", "\n".join(lines).encode())
    print(out / "memory_scan.md")


if __name__ == "__main__":
    main()
