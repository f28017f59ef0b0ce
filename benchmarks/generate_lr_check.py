"""The learning rate each method of `laddertune demo --task generate` uses, chosen on a dev split.

Each method (LST with head_residual, LoRA) trains exactly as the demo trains it (its 48 training
articles, batch 8, in its own `laddertune train --task generate` process) at 3 rates a factor
sqrt(10) apart around its usual range, and one more past an end of them that wins. Each is
scored on 16 articles of BBC News's training split that the demo never trains on; the demo's
eval articles (its test split) are never read. The lowest dev eval loss wins (16 headlines are
too few for ROUGE-L to rank rates):

    python benchmarks/generate_lr_check.py [--epochs N]

writes benchmarks/results/demo-generate/lr_check.{json,md} (lr_check_N_epochs.* for N > 1);
`laddertune.app.demo_headlines.CHOSEN_LR` holds the winners for the demo's default epochs.
Each run lives in its own folder under --work, so a check stopped half-way reuses what finished.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from accuracy_suite import sweep_rates
from runner import machine, read_json, write_json, write_text

from laddertune.app.demo_headlines import (
    CHOSEN_LR,
    HEADLINE_EPOCHS,
    METHOD_FLAGS,
    headline_config,
    train_in_subprocess,
    write_headline_data,
)
from laddertune.app.run_folder import data_digests

RATES = {"lst": (3e-4, 1e-3, 3e-3), "lora": (1e-4, 3e-4, 1e-3)}
# Where LST's gap to LoRA could come from, each alone at LST's chosen rate (--suspects).
SUSPECTS = {"r = 4": ["--reduction-factor", "4"], "r = 2": ["--reduction-factor", "2"]}


def check(work: Path, methods=tuple(RATES), epochs: int = 1) -> dict:
    train_file, dev_file = write_headline_data(work / "data", dev=True)
    base = headline_config(train_file, dev_file, epochs=epochs, device="cpu")
    results = {"machine": machine(), "epochs": epochs, "rates": {}, "chosen": {}}
    for method in methods:
        def scored(lr: float, method=method) -> dict:
            row = {"lr": lr, **_scores(_trained(base, method, lr, work))}
            print(method, row, flush=True)
            return row
        rows = list(sweep_rates(RATES[method], scored, lambda row: -row["loss"]).values())
        results["rates"][method] = sorted(rows, key=lambda row: row["lr"])
        results["chosen"][method] = min(rows, key=lambda row: row["loss"])["lr"]
    return results


def suspects(work: Path, epochs: int = 1) -> list[dict]:
    """LST with each of `SUSPECTS` at its chosen rate, on the same dev split."""
    train_file, dev_file = write_headline_data(work / "data", dev=True)
    base = headline_config(train_file, dev_file, epochs=epochs, device="cpu")
    rows = []
    for name, flags in SUSPECTS.items():
        folder = work / f"lst-{name.replace(' = ', '')}-lr{CHOSEN_LR['lst']:g}-e{epochs}"
        metrics = train_in_subprocess(base, "lst", folder, extra=flags)
        rows.append({"suspect": name, "flags": flags, "lr": CHOSEN_LR["lst"], "epochs": epochs,
                     "trainable_params": metrics["trainable_params"], **_scores(metrics)})
        print(rows[-1], flush=True)
    return rows


def _trained(base, method: str, lr: float, work: Path) -> dict:
    """metrics.json of `method` at `lr`, trained now unless that run already finished with
    these settings (data, rate, epochs, batch, lengths, the method's flags)."""
    suffix = "" if base.epochs == 1 else f"-e{base.epochs}"
    folder = work / f"{method}-lr{lr:g}{suffix}"
    if (folder / "metrics.json").is_file() and (folder / "run.json").is_file():
        saved = read_json(folder / "run.json")
        wanted = {"method": method, "lr": lr, "epochs": base.epochs,
                  "batch_size": base.batch_size, "max_length": base.max_length,
                  "max_new_tokens": base.max_new_tokens,
                  "data_sha256": data_digests(base),
                  "head_residual": "--lst-head-residual" in METHOD_FLAGS[method]}
        saved["head_residual"] = bool((saved.get("lst_settings") or {}).get("head_residual"))
        if all(saved.get(key) == value for key, value in wanted.items()):
            return read_json(folder / "metrics.json")
    return train_in_subprocess(base, method, folder, lr=lr)


def _scores(metrics: dict) -> dict:
    return {k: metrics["eval"][k] for k in ("loss", "rouge_l", "exact_match", "token_f1")}


def stale_choices(results: dict) -> dict:
    """{method: rate} where this check, at the demo's default epochs, chose another rate than
    the demo uses (`CHOSEN_LR`)."""
    if results.get("epochs", 1) != HEADLINE_EPOCHS:
        return {}
    return {m: lr for m, lr in results["chosen"].items() if CHOSEN_LR.get(m) != lr}


def write(results: dict, folder: Path) -> Path:
    epochs = results.get("epochs", 1)
    name = "lr_check" if epochs == 1 else f"lr_check_{epochs}_epochs"
    write_json(folder / f"{name}.json", results)
    lines = [f"# The demo's learning rates, chosen on a dev split ({epochs} epoch(s))", "",
             f"`python benchmarks/generate_lr_check.py --epochs {epochs}`: each method "
             "trains as `laddertune demo --task generate` trains it, scored on 16 "
             "training-split articles the demo does not train on; the lowest dev eval loss "
             "wins.", "",
             "| method | lr | dev eval loss | dev ROUGE-L | dev exact match | chosen |",
             "|---|---|---|---|---|---|"]
    for method, rows in results["rates"].items():
        for row in rows:
            chosen = "**yes**" if row["lr"] == results["chosen"][method] else ""
            lines.append(f"| {method} | {row['lr']:g} | {row['loss']:.4f} | "
                         f"{row['rouge_l']:.4f} | {row['exact_match']:.4f} | {chosen} |")
    for method, rows in results["rates"].items():
        if results["chosen"][method] == max(row["lr"] for row in rows) and len(rows) > len(
                RATES[method]):
            lines += ["", f"{method}'s rate won at the end of the rates tried (one past its "
                      "grid); a higher one was not tried."]
    stale = stale_choices(results)
    if stale:
        lines += ["", f"demo_headlines.CHOSEN_LR differs from this check: {stale}; update it."]
    return write_text(folder / f"{name}.md", "\n".join(lines))


def write_suspects(rows: list[dict], folder: Path) -> Path:
    write_json(folder / "lst_suspects.json", rows)
    lines = ["# LST's gap to LoRA on the headline task: capacity", "",
             "`python benchmarks/generate_lr_check.py --suspects`: LST (head_residual) at "
             "its chosen rate with a wider side network, on the same 16 dev articles as "
             "lr_check.md (r = 8 there).", "",
             "| suspect | flags | epochs | trainable params | dev eval loss | dev ROUGE-L |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['suspect']} | `{' '.join(r['flags'])}` | {r['epochs']} | "
              f"{r['trainable_params']:,} | {r['loss']:.4f} | {r['rouge_l']:.4f} |" for r in rows]
    return write_text(folder / "lst_suspects.md", "\n".join(lines))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python benchmarks/generate_lr_check.py",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/headline-lr")
    parser.add_argument("--output", default="benchmarks/results/demo-generate")
    parser.add_argument("--epochs", type=int, default=HEADLINE_EPOCHS)
    parser.add_argument("--suspects", action="store_true",
                        help="instead: LST's capacity (r = 4, 2) at its chosen rate")
    args = parser.parse_args(argv)
    if args.suspects:
        print(write_suspects(suspects(Path(args.work), args.epochs), Path(args.output)))
        return
    print(write(check(Path(args.work), epochs=args.epochs), Path(args.output)))


if __name__ == "__main__":
    main()
