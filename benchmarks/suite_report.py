"""The accuracy suite's results as people read them: tables, the targets, and accuracy against
peak training memory (the paper's Figure 1), from the suite's JSON.

``python benchmarks/suite_report.py benchmarks/results/accuracy`` merges the folder's
suite-<data set>.json files (and memory_scan.json when there is one) and writes results.md,
targets.json and one memory_vs_accuracy_<data set>.png there. The suite runs it at its end.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from runner import read_json, write_json, write_text

NAMES = {"full": "Full FT", "lora": "LoRA", "adapter": "Adapters (Houlsby)", "bitfit": "BitFit",
         "prompt": "Prompt tuning", "ia3": "IA3", "lst": "LST"}
ORDER = ("full", "lora", "adapter", "ia3", "bitfit", "prompt", "lst")
MODELS = {"minilm": "MiniLM-L6 (22.7M)", "mpnet": "MPNet-base (110M)"}


def _rows(results: dict, dataset: str) -> list[dict]:
    rows = [r for r in results["methods"].values() if r["dataset"] == dataset]
    return sorted(rows, key=lambda r: (list(MODELS).index(r["model"]), ORDER.index(r["method"])))


def _pm(summary: dict) -> str:
    return f"{summary['accuracy_mean']:.2f} ± {summary['accuracy_std']:.2f}"


def method_table(results: dict, dataset: str) -> list[str]:
    rows = _rows(results, dataset)
    lora = next((r for r in rows if r["model"] == "minilm" and r["method"] == "lora"), None)
    reference = lora["summary"]["peak_memory_mb"] if lora else None
    lines = ["| backbone | method | lr (chosen on dev) | dev acc % | test acc % (3 seeds) | "
             "test macro-F1 % | peak training memory MiB (× LoRA on MiniLM) | trainable params |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["summary"]
        dev = r["dev_by_lr"][str(r["chosen_lr"])] if str(r["chosen_lr"]) in r["dev_by_lr"] \
            else r["dev_by_lr"][r["chosen_lr"]]
        ratio = f" ({s['peak_memory_mb'] / reference:.2f}×)" if reference else ""
        lines.append(f"| {MODELS[r['model']]} | {NAMES[r['method']]} | {r['chosen_lr']:g} | "
                     f"{100 * dev['accuracy']:.2f} | {_pm(s)} | {s['macro_f1_mean']:.2f} | "
                     f"{s['peak_memory_mb']:,.0f}{ratio} | {s['trainable_params']:,} |")
    return lines


def sweep_table(results: dict, dataset: str) -> list[str]:
    lines = ["| backbone | method | dev accuracy % at each learning rate (seed 0) |",
             "|---|---|---|"]
    for r in _rows(results, dataset):
        cells = []
        for lr, scores in r["dev_by_lr"].items():
            mark = "**" if float(lr) == r["chosen_lr"] else ""
            cells.append(f"{float(lr):g}: {mark}{100 * scores['accuracy']:.1f}{mark}")
        lines.append(f"| {MODELS[r['model']]} | {NAMES[r['method']]} | {', '.join(cells)} |")
    return lines


def ablation_table(results: dict, dataset: str) -> list[str]:
    rows = [r for r in results["ablations"].values() if r["dataset"] == dataset]
    if not rows:
        return []
    base = {r["model"]: r["summary"]["accuracy_mean"] for r in rows if r["variant"] == "defaults"}
    lines = ["| backbone | LST variant | flags | test acc % (3 seeds) | vs defaults (points) | "
             "peak MiB |", "|---|---|---|---|---|---|"]
    for r in rows:
        s = r["summary"]
        delta = s["accuracy_mean"] - base.get(r["model"], s["accuracy_mean"])
        lines.append(f"| {MODELS[r['model']]} | {r['variant']} | `{' '.join(r['flags']) or '-'}`"
                     f" | {_pm(s)} | {delta:+.2f} | {s['peak_memory_mb']:,.0f} |")
    return lines


def explored(entry: dict) -> list[dict]:
    """Each suspect of an explore entry: per rate, its dev accuracy (%) and the points it gains
    over the defaults at that rate (None where the defaults were not trained at that rate)."""
    rates = list(next(iter(entry["suspects"].values())))
    base = {rate: entry["defaults"].get(str(rate), entry["defaults"].get(rate)) for rate in rates}
    rows = []
    for suspect, by_rate in entry["suspects"].items():
        cells = []
        for rate in rates:
            acc = 100 * by_rate[rate]["accuracy"]
            b = base[rate]
            cells.append({"lr": float(rate), "accuracy": acc,
                          "defaults": None if b is None else 100 * b["accuracy"],
                          "vs_defaults": None if b is None else acc - 100 * b["accuracy"]})
        rows.append({"suspect": suspect, "flags": entry["flags"][suspect], "rates": cells})
    return rows


def explore_table(results: dict, dataset: str) -> list[str]:
    """Each suspect of an LST gap alone, dev accuracy at LST's chosen rate and the next up."""
    lines = []
    for entry in results.get("explore", {}).values():
        if entry["dataset"] != dataset:
            continue
        rows = explored(entry)
        head = rows[0]["rates"]
        shown = ["–" if c["defaults"] is None else f"{c['defaults']:.2f}" for c in head]
        lines += ["| suspect | flags | " + " | ".join(
                      f"dev acc % at lr {c['lr']:g} (defaults: {b})"
                      for c, b in zip(head, shown)) + " |",
                  "|---|---|" + "---|" * len(head)]
        for row in rows:
            cells = [f"{c['accuracy']:.2f}" + ("" if c["vs_defaults"] is None
                                               else f" ({c['vs_defaults']:+.2f})")
                     for c in row["rates"]]
            lines.append(f"| {row['suspect']} | `{' '.join(row['flags'])}` | "
                         + " | ".join(cells) + " |")
    return lines


def targets(results: dict, dataset: str) -> list[dict]:
    """What LST was set to reach on one data set, each goal met or not, with the numbers."""
    by = {(r["model"], r["method"]): r["summary"] for r in _rows(results, dataset)}
    checks = []

    def check(name, met, detail):
        checks.append({"dataset": dataset, "target": name, "met": bool(met), "detail": detail})

    lst, full = by.get(("minilm", "lst")), by.get(("minilm", "full"))
    if lst and full:
        gap = full["accuracy_mean"] - lst["accuracy_mean"]
        check("LST on MiniLM within 1.0 point of full fine-tuning", gap <= 1.0,
              f"full {_pm(full)}, LST {_pm(lst)}: gap {gap:+.2f}")
    for other in ("lora", "adapter"):
        for model in MODELS:
            mine, theirs = by.get((model, "lst")), by.get((model, other))
            if mine and theirs:
                check(f"LST at least as accurate as {NAMES[other]} on {model}",
                      mine["accuracy_mean"] >= theirs["accuracy_mean"],
                      f"LST {_pm(mine)}, {NAMES[other]} {_pm(theirs)}")
    big = by.get(("mpnet", "lst"))
    small = {m: s for (model, m), s in by.items() if model == "minilm"}
    if big and small:
        best = max(small, key=lambda m: small[m]["accuracy_mean"])
        check("LST on MPNet more accurate than every MiniLM method",
              all(big["accuracy_mean"] > s["accuracy_mean"] for s in small.values()),
              f"LST-MPNet {_pm(big)}; best MiniLM: {NAMES[best]} {_pm(small[best])}")
        if "lora" in small:
            check("LST on MPNet below LoRA-on-MiniLM's peak memory",
                  big["peak_memory_mb"] < small["lora"]["peak_memory_mb"],
                  f"{big['peak_memory_mb']:,.0f} vs {small['lora']['peak_memory_mb']:,.0f} MiB")
    return checks


def plot(results: dict, dataset: str, path: Path) -> None:
    """Test accuracy (mean, std bars) against peak training memory, one point per method."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.8))
    for r in _rows(results, dataset):
        s = r["summary"]
        marker = "o" if r["model"] == "minilm" else "s"
        color = f"C{ORDER.index(r['method'])}"
        ax.errorbar(s["peak_memory_mb"], s["accuracy_mean"], yerr=s["accuracy_std"], fmt=marker,
                    color=color, ms=8 if r["method"] == "lst" else 6, capsize=3)
        ax.annotate(f"{NAMES[r['method']]} ({r['model']})", (s["peak_memory_mb"],
                    s["accuracy_mean"]), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.set_xlabel("peak training memory, MiB (process peak RSS, CPU)")
    ax.set_ylabel("test accuracy %, mean of 3 seeds")
    ax.set_title(f"{dataset}: accuracy against training memory (o MiniLM, □ MPNet)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def load(folder: Path) -> dict:
    """The suite results of every suite-*.json in `folder`, merged."""
    merged = {"settings": {}, "methods": {}, "ablations": {}, "explore": {}, "missing": []}
    for path in sorted(Path(folder).glob("suite-*.json")):
        part = read_json(path)
        merged["settings"] = part["settings"]
        merged["methods"].update(part["methods"])
        merged["ablations"].update(part["ablations"])
        merged["explore"].update(part.get("explore", {}))
        merged["missing"] += part.get("missing", [])
    return merged


def write_report(folder: Path) -> Path:
    folder = Path(folder)
    results = load(folder)
    datasets = list(dict.fromkeys(r["dataset"] for r in results["methods"].values()))
    lines = ["# Accuracy against memory, every method tuned alike", "",
             f"Settings: {json.dumps(results['settings'], default=str)}", ""]
    all_checks = []
    for dataset in datasets:
        plot(results, dataset, folder / f"memory_vs_accuracy_{dataset}.png")
        checks = targets(results, dataset)
        all_checks += checks
        lines += [f"## {dataset}", "", *method_table(results, dataset), "",
                  f"![accuracy vs memory](memory_vs_accuracy_{dataset}.png)", "",
                  "### Learning-rate sweeps (dev split)", "", *sweep_table(results, dataset), ""]
        explored = explore_table(results, dataset)
        if explored:
            lines += ["### Where an LST gap could come from: each suspect alone (dev, seed 0)",
                      "", *explored, ""]
        ablations = ablation_table(results, dataset)
        if ablations:
            lines += ["### LST ablations (test split)", "", *ablations, ""]
        lines += ["### Targets", "", "| target | met? | numbers |", "|---|---|---|"]
        lines += [f"| {c['target']} | {'yes' if c['met'] else '**no**'} | {c['detail']} |"
                  for c in checks]
        lines.append("")
    scan = folder / "memory_scan.json"
    if scan.is_file():
        from memory_scan import bigger_under_lst, table
        scanned = read_json(scan)
        lines += ["## Peak training memory as the batch grows (memory only)", "",
                  f"`python benchmarks/memory_scan.py`: {scanned['steps']} training "
                  f"steps per run at {scanned['max_length']} tokens (BBC News), one fresh "
                  "`laddertune train` process each; see memory_scan.md.", "",
                  *table(scanned["rows"]), "", bigger_under_lst(scanned["rows"]), ""]
    if results["missing"]:
        lines += ["## Not run yet", "", "Entries of the suite whose runs have not all finished "
                  "(the suite resumes them; nothing above depends on them):", "",
                  *[f"- {line}" for line in results["missing"]], ""]
    path = write_text(folder / "results.md", "\n".join(lines))
    write_json(folder / "targets.json", all_checks)
    return path


if __name__ == "__main__":
    print(write_report(Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/accuracy")))
