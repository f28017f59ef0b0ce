"""A frozen backbone in 16 and 8 bits: what it saves, what it costs, and whether the planner
saw it coming. For MiniLM (real weights) at float32, bfloat16 and int8:

- weight memory: the bytes the backbone's stored weights take, loaded as `laddertune train`
  loads a bare LST backbone (`load_backbone(..., backbone_dtype=...)`);
- last-hidden-state error: |h - h_fp32| / |h_fp32| on real BBC News texts, at the compute
  dtype this machine gets;
- step time vs fp32 and peak memory: a few LST steps through `laddertune train` in a fresh
  process each, with the default pruned initialisation (which loads float32 and converts after
  pruning) and with ``--lst-side-init random`` (which converts as it loads);
- the planner: `laddertune plan`'s total for the same run against the measured peak above the
  runtime (metrics.json's `peak_above_runtime_mb`: the peak less what the process held before
  the model loaded, less the libraries' code paged in since).

    python benchmarks/lowbit.py --output benchmarks/results/lowbit
"""

from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path

import torch
from data import DATASETS, label_mixed_subset, write_data
from runner import laddertune, machine, read_json, write_json, write_text

DTYPES = ("float32", "bfloat16", "int8")
INITS = ("magnitude", "random")


def weights_and_error(model: str, texts: list[str], max_length: int) -> dict:
    """Stored weight bytes and last-hidden-state error of each dtype, against float32."""
    from laddertune import quant
    from laddertune.app.aliases import load_backbone, load_tokenizer, resolve_model
    source = resolve_model(model)
    tokenizer = load_tokenizer(source)
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt")
    rows, reference = {}, None
    for dtype in DTYPES:
        backbone = load_backbone(source, tokenizer.pad_token_id, "bare", backbone_dtype=dtype)
        with torch.no_grad():
            hidden = backbone(**batch).last_hidden_state.float()               # (b, t, d)
        if reference is None:
            reference = hidden
        mask = batch["attention_mask"][..., None].bool()
        error = ((hidden - reference) * mask).norm() / (reference * mask).norm()
        rows[dtype] = {"weight_mib": round(_stored_bytes(backbone) / 2**20, 1),
                       "compute_dtype": quant.compute_dtype(dtype, "cpu"),
                       "hidden_state_error": round(float(error), 5)}
    return rows


def _stored_bytes(backbone) -> int:
    total = 0
    for param in {id(p): p for p in backbone.parameters()}.values():
        if type(param).__name__ == "Int8Tensor":
            total += param.qdata.numel() + param.scale.numel() * param.scale.element_size()
        else:
            total += param.numel() * param.element_size()
    return total


def train_run(root: Path, model: str, dtype: str, init: str, batch_size: int, max_length: int,
              steps: int, threads: int, again: bool = False) -> dict:
    """metrics of `steps` LST steps through `laddertune train` (a finished run is reused unless
    `again`)."""
    files = write_data(DATASETS["bbc-news"], root / "data")
    train = label_mixed_subset(files["train"], steps * batch_size,
                               root / f"train-{steps}x{batch_size}.csv")
    evaluation = label_mixed_subset(files["dev"], 16, root / "eval.csv")
    out = root / f"{model}-{dtype}-{init}-b{batch_size}-t{max_length}"
    if not (out / "metrics.json").is_file() or again:
        laddertune("train", "--model", model, "--train", train, "--eval", evaluation, "--epochs", 1,
                   "--batch-size", batch_size, "--max-length", max_length, "--backbone-dtype",
                   dtype, "--lst-side-init", init, "--output", out, "--no-progress",
                   "--overwrite", "--save-every", 10**6, threads=threads)
    metrics = read_json(out / "metrics.json")
    run = read_json(out / "run.json")
    return {"dtype": dtype, "init": init, "compute_dtype": run["backbone_compute_dtype"],
            **{k: metrics.get(k) for k in ("step_seconds", "peak_memory_mb", "training_memory_mb",
                                           "training_peak_rss_mb", "peak_above_runtime_mb")}}


def planned_mib(model: str, dtype: str, batch_size: int, max_length: int, threads: int
                ) -> dict[str, float]:
    """`laddertune plan`'s LST row: weights, activations, gradients, optimizer and total MiB."""
    out = laddertune("plan", "--model", model, "--method", "lst", "--backbone-dtype", dtype,
                     "--batch-size", batch_size, "--max-length", max_length, "--device", "cpu",
                     threads=threads)
    row = next(line for line in out.splitlines() if line.startswith("lst "))
    figures = [float(x.replace(",", "")) for x in re.findall(r"([\d,.]+) MiB", row)]
    return dict(zip(("weights", "activations", "gradients", "optimizer", "working", "eval",
                          "total"), figures))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python benchmarks/lowbit.py",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--root", default="runs/lowbit", help="where the runs live")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="training steps per run")
    parser.add_argument("--threads", type=int, default=1, help="OMP threads per run")
    parser.add_argument("--output", default="benchmarks/results/lowbit")
    parser.add_argument("--again", action="store_true", help="train finished runs again")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = Path(args.root)
    files = write_data(DATASETS["bbc-news"], root / "data")
    with open(files["dev"], newline="", encoding="utf-8") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)][:16]
    stored = weights_and_error(args.model, texts, args.max_length)
    runs = [train_run(root, args.model, dtype, init, args.batch_size, args.max_length,
                      args.steps, args.threads, args.again) for init in INITS for dtype in DTYPES]
    plans = {dtype: planned_mib(args.model, dtype, args.batch_size, args.max_length,
                                args.threads) for dtype in DTYPES}
    step = {(r["init"], r["dtype"]): r["step_seconds"] for r in runs}
    for r in runs:
        r["step_vs_fp32"] = round(r["step_seconds"] / step[r["init"], "float32"], 3)
        plan = plans[r["dtype"]]
        r["planned_mib"] = plan["total"]
        r["planned_vs_measured"] = round(plan["total"] / r["peak_above_runtime_mb"], 3)
        # what the training steps add to the built model: activations, gradients, AdamW
        r["planned_step_mib"] = round(plan["activations"] + plan["gradients"]
                                      + plan["optimizer"], 1)
        r["planned_step_vs_measured"] = round(r["planned_step_mib"] / r["training_peak_rss_mb"], 3)
    info = machine()
    out = Path(args.output)
    write_json(out / "lowbit.json", {"model": args.model, "batch_size": args.batch_size,
                                     "max_length": args.max_length, "steps": args.steps,
                                     "threads": args.threads, "machine": info,
                                     "stored": stored, "runs": runs})
    where = f"{info['cpu']}, {info['cores']} cores, torch {info['torch']}, {info['date']}"
    lines = [f"# A frozen {args.model} backbone in 16 and 8 bits (LST, BBC News, batch "
             f"{args.batch_size} x {args.max_length} tokens, {args.steps} steps per run)", "",
             f"Command: `python benchmarks/lowbit.py`; {where}; {args.threads} thread(s), one "
             "fresh `laddertune train` process per run, on a machine shared with other jobs "
             "(step times are noisy).", "",
             "| backbone dtype | computes in | weight MiB | last-hidden-state error |",
             "|---|---|---|---|"]
    lines += [f"| {d} | {s['compute_dtype']} | {s['weight_mib']:,.1f} | "
              f"{100 * s['hidden_state_error']:.2f}% |" for d, s in stored.items()]
    lines += ["", "| side init | backbone dtype | step s (× fp32) | peak MiB | training MiB "
              "(peak above the runtime) | planned MiB (× measured) | steps' peak above the built "
              "model MiB | planned activations + gradients + AdamW MiB (× measured) |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['init']} | {r['dtype']} | {r['step_seconds']:.3f} ({r['step_vs_fp32']:.2f}×) "
              f"| {r['peak_memory_mb']:,.0f} | {r['training_memory_mb']:,.0f} | "
              f"{r['planned_mib']:,.0f} ({r['planned_vs_measured']:.2f}×) | "
              f"{r['training_peak_rss_mb']:,.0f} | {r['planned_step_mib']:,.0f} "
              f"({r['planned_step_vs_measured']:.2f}×) |" for r in runs]
    print(write_text(out / "lowbit.md", "\n".join(lines)))


if __name__ == "__main__":
    main()
