"""The learning rate each method of `laddertune demo --task generate` uses, chosen on a dev split.

Each method (LST with head_residual, LoRA) trains exactly as the demo trains it (its 48 training
articles, 1 epoch, batch 8, in its own `laddertune train --task generate` process) at 3 rates a
factor sqrt(10) apart around its usual range; each is scored on 16 articles of BBC News's
training split that the demo never trains on. The demo's eval articles (its test split) are
never read. The lowest dev eval loss wins (16 headlines are too few for ROUGE-L to rank rates);

    python -m laddertune.app.bench.headline_lr

writes benchmarks/results/demo-generate/lr_check.{json,md}; `demo_headlines.CHOSEN_LR` holds
the winners.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..demo_headlines import CHOSEN_LR, headline_config, train_in_subprocess, write_headline_data
from .report import machine

RATES = {"lst": (3e-4, 1e-3, 3e-3), "lora": (1e-4, 3e-4, 1e-3)}


def check(work: Path, methods=tuple(RATES)) -> dict:
    train_file, dev_file = write_headline_data(work / "data", dev=True)
    base = headline_config(train_file, dev_file, epochs=1, device="cpu")
    results = {"machine": machine(), "rates": {}, "chosen": {}}
    for method in methods:
        rows = []
        for lr in RATES[method]:
            metrics = train_in_subprocess(base, method, work / f"{method}-lr{lr:g}", lr=lr)
            rows.append({"lr": lr, **{k: metrics["eval"][k] for k in (
                "loss", "rouge_l", "exact_match", "token_f1")}})
            print(method, rows[-1], flush=True)
        results["rates"][method] = rows
        results["chosen"][method] = min(rows, key=lambda row: row["loss"])["lr"]
    return results


def write(results: dict, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lr_check.json").write_text(json.dumps(results, indent=2))
    lines = ["# The demo's learning rates, chosen on a dev split", "",
             "`python -m laddertune.app.bench.headline_lr`: each method trains as "
             "`laddertune demo --task generate` trains it, scored on 16 training-split articles "
             "the demo does not train on; the lowest dev eval loss wins.", "",
             "| method | lr | dev eval loss | dev ROUGE-L | dev exact match | chosen |",
             "|---|---|---|---|---|---|"]
    for method, rows in results["rates"].items():
        for row in rows:
            chosen = "**yes**" if row["lr"] == results["chosen"][method] else ""
            lines.append(f"| {method} | {row['lr']:g} | {row['loss']:.4f} | "
                         f"{row['rouge_l']:.4f} | {row['exact_match']:.4f} | {chosen} |")
    stale = {m: lr for m, lr in results["chosen"].items() if CHOSEN_LR.get(m) != lr}
    if stale:
        lines += ["", f"demo_headlines.CHOSEN_LR differs from this check: {stale}; update it."]
    path = folder / "lr_check.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m laddertune.app.bench.headline_lr",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/headline-lr")
    parser.add_argument("--output", default="benchmarks/results/demo-generate")
    args = parser.parse_args(argv)
    print(write(check(Path(args.work)), Path(args.output)))


if __name__ == "__main__":
    main()
