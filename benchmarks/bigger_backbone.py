"""The bigger-backbone claim on memory: does MPNet-base LST, with its backbone in bfloat16 or
int8, peak below LoRA on MiniLM? The low-precision issue's memory target, measured as it asks:
`laddertune train` at the CLI's default batch (16) and `--max-length 128`, on each frontier
data set, metrics.json's `peak_memory_mb` (the whole process's peak RSS, loading, steps, evals
and checkpoints included).

Each run is a fresh process with one thread, a few steps on a capped, label-mixed training set
(the peak comes from the weights, one step and one eval batch, not from the data's size) and a
64-example eval set; the configurations of one data set run back to back. MPNet-base LST runs
with the CLI's default start (pruned from the float32 weights, then converted) and with
`--lst-side-init random` (converted as it loads, so the float32 copy is never resident).

    python benchmarks/bigger_backbone.py --output benchmarks/results/bigger_backbone
"""

from __future__ import annotations

import argparse
from pathlib import Path

from data import label_mixed_subset
from frontier import DATASETS as FRONTIER_DATA
from runner import ResultFiles, laddertune, machine, read_json, write_text

# name -> (model, method, flags); the reference first
CONFIGS = {
    "minilm lora": ("minilm", "lora", ()),
    "mpnet lst float32": ("mpnet", "lst", ("--backbone-dtype", "float32")),
    "mpnet lst bfloat16": ("mpnet", "lst", ("--backbone-dtype", "bfloat16")),
    "mpnet lst int8": ("mpnet", "lst", ("--backbone-dtype", "int8")),
    "mpnet lst bfloat16, random start": ("mpnet", "lst", ("--backbone-dtype", "bfloat16",
                                                          "--lst-side-init", "random")),
    "mpnet lst int8, random start": ("mpnet", "lst", ("--backbone-dtype", "int8",
                                                      "--lst-side-init", "random")),
}
REFERENCE = "minilm lora"
DATA = ("tweet-sentiment", "bbc-news", "bbc-headlines")
BATCH, LENGTH, EVAL_EXAMPLES = 16, 128, 64


def slug(name: str) -> str:
    """A configuration's name as a file name: "mpnet lst int8, random start" ->
    mpnet-lst-int8-random-start."""
    return name.replace(" ", "-").replace(",", "")


def run_one(root: Path, data: str, name: str, steps: int, threads: int) -> dict:
    dataset = FRONTIER_DATA[data]
    files = dataset.write(dataset.spec, root / "data" / data, None)
    train = label_mixed_subset(files["train"], steps * BATCH, root / f"{data}-train.csv")
    evaluation = label_mixed_subset(files["dev"], EVAL_EXAMPLES, root / f"{data}-eval.csv")
    model, method, flags = CONFIGS[name]
    out = root / "runs" / data / slug(name)
    command = ["train", "--model", model, "--method", method, "--train", train, "--eval",
               evaluation, "--epochs", 1, "--batch-size", BATCH, "--max-length", LENGTH,
               "--no-progress", "--overwrite", "--output", out, *dataset.flags, *flags]
    laddertune(*command, threads=threads)
    metrics, run = read_json(out / "metrics.json"), read_json(out / "run.json")
    return {"data": data, "config": name, "steps": metrics.get("steps"),
            "backbone_dtype": run.get("backbone_dtype"),
            "backbone_compute_dtype": run.get("backbone_compute_dtype"),
            "eval_batch_size": run.get("eval_batch_size"),
            **{k: metrics.get(k) for k in ("peak_memory_mb", "runtime_rss_mb",
                                           "peak_above_runtime_mb", "step_seconds")},
            "command": "laddertune " + " ".join(str(c) for c in command)}


def report(rows: list[dict], info: dict) -> str:
    where = f"{info['cpu']}, {info['cores']} cores, torch {info['torch']}, {info['date']}"
    lines = ["# MPNet-base LST at each backbone dtype against LoRA on MiniLM: peak memory", "",
             f"Command: `python benchmarks/bigger_backbone.py`; {where}; one thread, one fresh "
             f"`laddertune train` per run at batch {BATCH} x `--max-length {LENGTH}`, 1 epoch "
             f"of a few steps, a {EVAL_EXAMPLES}-example eval at the CLI's default eval batch "
             "(64; LST's at most its training batch since 2026-12-07). Peak: metrics.json's "
             "`peak_memory_mb`, the whole process's peak RSS, loading and evals included. "
             f"Ratio: against {REFERENCE} on the same data.", "",
             "| data | configuration | computes in | steps | eval batch | peak MiB | vs "
             + REFERENCE + " | runtime MiB | peak above runtime MiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    by = {(r["data"], r["config"]): r for r in rows}
    for data in DATA:
        reference = by.get((data, REFERENCE))
        for name in CONFIGS:
            r = by.get((data, name))
            if r is None:
                continue
            ratio = (f"{r['peak_memory_mb'] / reference['peak_memory_mb']:.2f}x"
                     if reference else "—")
            lines.append(f"| {data} | {name} | {r['backbone_compute_dtype'] or 'float32'} | "
                         f"{r['steps']} | {r.get('eval_batch_size') or '—'} | "
                         f"{r['peak_memory_mb']:,.0f} | {ratio} | "
                         f"{r['runtime_rss_mb']:,.0f} | {r['peak_above_runtime_mb']:,.0f} |")
    for name in CONFIGS:
        if name == REFERENCE:
            continue
        below = [d for d in DATA if (d, name) in by and (d, REFERENCE) in by
                 and by[d, name]["peak_memory_mb"] < by[d, REFERENCE]["peak_memory_mb"]]
        measured = [d for d in DATA if (d, name) in by and (d, REFERENCE) in by]
        if measured:
            lines += ["", f"{name}: below {REFERENCE} on {len(below)} of {len(measured)} data "
                      f"sets ({', '.join(below) or 'none'})."]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python benchmarks/bigger_backbone.py",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=",".join(DATA))
    parser.add_argument("--configs", default=";".join(CONFIGS), help="names, ';'-separated")
    parser.add_argument("--steps", type=int, default=8, help="training steps per run")
    parser.add_argument("--root", default="runs/bigger_backbone", help="where the runs live")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default="benchmarks/results/bigger_backbone")
    parser.add_argument("--again", action="store_true", help="run finished runs again")
    parser.add_argument("--report", action="store_true", help="rebuild report.md only")
    args = parser.parse_args(argv)
    root, out = Path(args.root), Path(args.output)
    results = ResultFiles(out / "runs")
    info = machine()
    for data in [] if args.report else args.data.split(","):
        for name in args.configs.split(";"):
            key = f"{data}_{slug(name)}"
            if results.get(key) and not args.again:
                continue
            row = run_one(root, data, name, args.steps, args.threads)
            print(f"{data} / {name}: peak {row['peak_memory_mb']:,.0f} MiB", flush=True)
            results.put(key, {**row, "machine": info})
            write_text(out / "report.md", report(results.all(), info))
    print(write_text(out / "report.md", report(results.all(), info)))


if __name__ == "__main__":
    main()
