"""Peak training memory as the batch grows, through `laddertune train`: from what batch size the
bigger backbone under LST needs less memory than the smaller one under LoRA or full fine-tuning.

The accuracy suite trains at batch 16 on 48-64 tokens. There a CPU process's peak is mostly the
runtime and the weights (MPNet-base's are 4.9x MiniLM's), which no method saves, so
the activations LST does not keep matter little. This scan trains each (backbone, method) for
two steps at each batch size, on 128-token BBC News articles, in a fresh process per run, and
reads the same figure the suite reports (`peak_memory_mb`: the process's peak RSS on a CPU, the
allocator's peak on a GPU). It measures memory only: two steps say nothing of accuracy.

    python benchmarks/memory_scan.py --output benchmarks/results/accuracy

Each finished run's row is kept in <root>/rows/ as it finishes, so a scan stopped half-way
resumes where it stopped; memory_scan.json and memory_scan.md are rebuilt from those rows.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from data import DATASETS, label_mixed_subset, write_data
from runner import ResultFiles, comma_list, laddertune, machine, read_json, write_json, write_text

RUNS = "minilm:full,minilm:lora,minilm:lst,mpnet:lora,mpnet:lst"    # backbone:method, in order
BATCH_SIZES = "16,32,64"
MAX_LENGTH, STEPS = 128, 2


def measure(root: Path, model: str, method: str, batch_size: int, threads: int | None,
            again: bool = False, max_length: int = MAX_LENGTH, steps: int = STEPS) -> dict:
    """metrics.json of `steps` training steps of `method` on `model` at `batch_size` (a finished
    run is reused unless `again`)."""
    out = root / f"{model}-{method}-b{batch_size}-t{max_length}-s{steps}"
    if (out / "metrics.json").is_file() and not again:
        return read_json(out / "metrics.json")
    files = write_data(DATASETS["bbc-news"], root / "data")
    train = label_mixed_subset(files["train"], steps * batch_size,
                               root / f"train-{steps}x{batch_size}.csv")
    evaluation = label_mixed_subset(files["dev"], 16, root / "eval.csv")
    laddertune("train", "--model", model, "--method", method, "--train", train,
               "--eval", evaluation, "--epochs", "1", "--batch-size", batch_size,
               "--max-length", max_length, "--output", out, "--no-progress", "--overwrite",
               threads=threads)
    return read_json(out / "metrics.json")


def with_ratios(rows: list[dict]) -> list[dict]:
    """Each row, by batch size, with `peak_vs_lora_minilm`: its peak as a multiple of LoRA on
    MiniLM's at the same batch size (None where that run is missing)."""
    lora = {r["batch_size"]: r["peak_memory_mb"] for r in rows
            if (r["model"], r["method"]) == ("minilm", "lora")}
    return [{**r, "peak_vs_lora_minilm": (r["peak_memory_mb"] / lora[r["batch_size"]]
                                          if r["batch_size"] in lora else None)}
            for r in sorted(rows, key=lambda r: r["batch_size"])]


def table(rows: list[dict]) -> list[str]:
    """Markdown: peak MiB per run, and each as a multiple of LoRA on MiniLM at that batch."""
    lines = ["| batch | backbone | method | peak MiB (× LoRA on MiniLM) | training MiB "
             "(peak less what the process held before loading the model) |",
             "|---|---|---|---|---|"]
    for r in with_ratios(rows):
        ratio = "–" if r["peak_vs_lora_minilm"] is None else f"{r['peak_vs_lora_minilm']:.2f}×"
        lines.append(f"| {r['batch_size']} | {r['model']} | {r['method']} | "
                     f"{r['peak_memory_mb']:,.0f} ({ratio}) | {r['training_memory_mb']:,.0f} |")
    return lines


def bigger_under_lst(rows: list[dict]) -> str:
    """One line: LST on MPNet-base's peak as a multiple of LoRA on MiniLM's, per batch size."""
    peak = {(r["model"], r["method"], r["batch_size"]): r["peak_memory_mb"] for r in rows}
    ratios = [f"{peak['mpnet', 'lst', b] / peak['minilm', 'lora', b]:.2f}× at batch {b}"
              for b in sorted({r["batch_size"] for r in rows})
              if ("mpnet", "lst", b) in peak and ("minilm", "lora", b) in peak]
    return ("LST on MPNet-base needs " + ", ".join(ratios) + " the peak of LoRA on MiniLM."
            if ratios else "")


def scan(root: Path, runs: list[tuple[str, str]], batch_sizes: list[int],
         threads: int | None, again: bool = False, max_length: int = MAX_LENGTH,
         steps: int = STEPS) -> list[dict]:
    """One row per (batch size, backbone, method), each kept in <root>/rows/ as it finishes."""
    kept = ResultFiles(root / "rows")
    rows = []
    for batch in batch_sizes:
        for model, method in runs:
            key = f"{model}-{method}-b{batch}-t{max_length}-s{steps}"   # as measure's folder
            row = None if again else kept.get(key)
            if row is None:
                metrics = measure(root, model, method, batch, threads, again, max_length, steps)
                row = kept.put(key, {"model": model, "method": method, "batch_size": batch,
                                     **{k: metrics[k] for k in ("peak_memory_mb",
                                                                "training_memory_mb", "device",
                                                                "step_seconds")}})
            rows.append(row)
            print(f"batch {batch} {model} {method}: peak {row['peak_memory_mb']:,.0f} MiB",
                  flush=True)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python benchmarks/memory_scan.py",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="runs/memory-scan", help="where the runs live")
    parser.add_argument("--runs", default=RUNS, help="comma list of backbone:method")
    parser.add_argument("--batch-sizes", default=BATCH_SIZES)
    parser.add_argument("--max-length", type=int, default=MAX_LENGTH, help="tokens per text")
    parser.add_argument("--steps", type=int, default=STEPS, help="training steps per run")
    parser.add_argument("--threads", type=int, default=1, help="OMP threads per run")
    parser.add_argument("--output", default="benchmarks/results/accuracy")
    parser.add_argument("--again", action="store_true", help="train finished runs again")
    args = parser.parse_args(argv)
    runs = [tuple(pair.split(":", 1)) for pair in comma_list(args.runs)]
    rows = scan(Path(args.root), runs, [int(b) for b in comma_list(args.batch_sizes)],
                args.threads, args.again, args.max_length, args.steps)
    out = Path(args.output)
    info = machine()
    where = (f"{info.get('gpu') or info['cpu']}, {info['cores']} cores, torch {info['torch']}, "
             f"{info['date']}")
    write_json(out / "memory_scan.json", {"max_length": args.max_length, "steps": args.steps,
                                          "machine": info, "rows": rows})
    lines = [f"# Peak training memory by batch size (BBC News, {args.max_length} tokens, "
             f"{args.steps} steps per run)", "",
             f"Command: `python benchmarks/memory_scan.py`; {where}; one fresh "
             f"`laddertune train` process per run, {args.threads} thread(s).", "", *table(rows),
             "", bigger_under_lst(rows)]
    print(write_text(out / "memory_scan.md", "\n".join(lines)))


if __name__ == "__main__":
    main()
