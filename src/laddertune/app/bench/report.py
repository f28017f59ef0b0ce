"""Bench results on disk: one JSON file, a markdown table and PNG plots (matplotlib, Agg)."""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path

from ...checkpoint import atomic_write_bytes

METHOD_ORDER = ("full", "lora", "bitfit", "prompt", "lst")
METHOD_NAMES = {"full": "Full FT", "lora": "LoRA", "bitfit": "BitFit", "prompt": "Prompt tuning",
                "lst": "LST"}

# The ratios to the baselines LST is expected to stay under on the T5-base-shaped step and at
# long sequences (reported, not asserted).
PAPER_BATCH = 100  # the paper's T5-base GLUE batch size
EXPECTED = {"memory_vs_full": 0.25, "memory_vs_lora": 0.35, "step_vs_full": 0.40,
           "step_vs_lora": 0.60, "long_memory_vs_lora": 0.25}


def machine() -> dict:
    """The machine the numbers come from: CPU model, cores, torch/transformers versions."""
    import torch
    import transformers
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(),
            "date": datetime.date.today().isoformat()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def memory_of(run: dict) -> float | None:
    """The device's measured training memory of a run: CUDA peak allocated, else CPU peak RSS."""
    return run.get("cuda_peak_allocated_mb", run.get("cpu_peak_rss_mb"))


def _by_method(runs: list[dict], workload: str) -> dict[str, dict]:
    return {r["method"]: r for r in runs if r["workload"] == workload and "error" not in r}


def _ratio(value, reference) -> str:
    if value is None or not reference:
        return "–"
    return f"{value / reference:.2f}×"


def markdown_table(runs: list[dict]) -> str:
    """One row per (workload, method); memory ratios to full FT and to LoRA."""
    lines = ["| workload | method | trainable params | measured peak MiB (×full, ×LoRA) | "
             "account MiB (×full, ×LoRA) | saved for backward MiB | step s (×full, ×LoRA) | "
             "examples/s | inference ms/example | checkpoint MiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for workload in dict.fromkeys(r["workload"] for r in runs):
        mine = _by_method(runs, workload)
        full, lora = mine.get("full", {}), mine.get("lora", {})
        for method in METHOD_ORDER:
            run = mine.get(method)
            if run is None:
                continue
            mem, step = memory_of(run), run.get("step_seconds")
            account = run.get("account", {}).get("total_mib")
            lines.append(
                f"| {workload} | {METHOD_NAMES[method]} | {run['trainable_params']:,} "
                f"({run['trainable_percent']:.2f}%) | "
                f"{_num(mem)} ({_ratio(mem, memory_of(full))}, {_ratio(mem, memory_of(lora))}) | "
                f"{_num(account)} ({_ratio(account, full.get('account', {}).get('total_mib'))}, "
                f"{_ratio(account, lora.get('account', {}).get('total_mib'))}) | "
                f"{_num(run.get('account', {}).get('saved_mib'))} | "
                f"{_num(step, 3)} ({_ratio(step, full.get('step_seconds'))}, "
                f"{_ratio(step, lora.get('step_seconds'))}) | "
                f"{_num(run.get('examples_per_second'), 2)} | "
                f"{_num(run.get('inference_ms_per_example'), 1)} | "
                f"{_num(run.get('checkpoint_mb'), 2)} |")
    for run in runs:
        if "error" in run:
            lines.append(f"| {run['workload']} | {METHOD_NAMES.get(run['method'], run['method'])}"
                         f" | failed: {run['error']} |||||||| ")
    return "\n".join(lines)


def _num(value, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def check_expectations(runs: list[dict], workload: str = "t5-base") -> list[dict]:
    """LST's ratios to the baselines against `EXPECTED`: value, limit, met, and the miss when
    missed."""
    mine = _by_method(runs, workload)
    checks = []

    def add(name, value, limit, smaller_is_better=True):
        if value is None:
            return
        met = value <= limit if smaller_is_better else value >= limit
        checks.append({"check": name, "workload": workload, "value": round(value, 3),
                       "limit": limit, "met": met,
                       "miss": None if met else round(value - limit, 3)})

    lst, full, lora = mine.get("lst"), mine.get("full"), mine.get("lora")
    if lst and full:
        for label, key in (("measured", memory_of), ("account", _account_total)):
            add(f"LST peak memory ({label}) / full FT", _safe_div(key(lst), key(full)),
                EXPECTED["memory_vs_full"])
        add("LST step time / full FT", _safe_div(lst.get("step_seconds"),
                                                 full.get("step_seconds")),
            EXPECTED["step_vs_full"])
    if lst and lora:
        for label, key in (("measured", memory_of), ("account", _account_total)):
            add(f"LST peak memory ({label}) / LoRA", _safe_div(key(lst), key(lora)),
                EXPECTED["memory_vs_lora"])
        add("LST step time / LoRA", _safe_div(lst.get("step_seconds"), lora.get("step_seconds")),
            EXPECTED["step_vs_lora"])
    # At small batches the frozen weights, the same for every method, dominate the account;
    # the paper measured at batch 100. Saved activations grow linearly with the batch.
    paper = f"account at the paper's batch {PAPER_BATCH}, activations scaled linearly"
    for other, name, key in ((full, "full FT", "memory_vs_full"),
                                (lora, "LoRA", "memory_vs_lora")):
        if lst and other:
            add(f"LST peak memory ({paper}) / {name}",
                _safe_div(_account_at_batch(lst, PAPER_BATCH),
                          _account_at_batch(other, PAPER_BATCH)), EXPECTED[key])
    return checks


def long_expectations(long: list[dict]) -> list[dict]:
    """LST's account against LoRA's at the longest length measured."""
    longest = max((r["seq_len"] for r in long if "error" not in r), default=None)
    at = {r["method"]: r for r in long if r.get("seq_len") == longest and "error" not in r}
    if "lst" not in at or "lora" not in at:
        return []
    value = _account_total(at["lst"]) / _account_total(at["lora"])
    limit = EXPECTED["long_memory_vs_lora"]
    return [{"check": f"LST training memory (account) / LoRA at {longest} tokens",
             "workload": at["lst"]["workload"], "value": round(value, 3), "limit": limit,
             "met": value <= limit, "miss": None if value <= limit else round(value - limit, 3)}]


def long_table(long: list[dict]) -> str:
    """Per length: each method's account (total and saved for backward), and LST's ratios."""
    lines = ["| tokens | batch | method | account MiB | saved for backward MiB | ×full | ×LoRA |",
             "|---|---|---|---|---|---|---|"]
    for length in sorted({r["seq_len"] for r in long if "error" not in r}):
        at = {r["method"]: r for r in long if r.get("seq_len") == length and "error" not in r}
        for method in METHOD_ORDER:
            if method in at:
                run = at[method]
                total = _account_total(run)
                lines.append(
                    f"| {length:,} | {run['batch_size']} | {METHOD_NAMES[method]} | "
                    f"{total:,.0f} | {run['account']['saved_mib']:,.0f} | "
                    f"{_ratio(total, _account_total(at.get('full', {})))} | "
                    f"{_ratio(total, _account_total(at.get('lora', {})))} |")
    for run in long:
        if "error" in run:
            lines.append(f"| {run.get('seq_len')} | | {run['method']} | failed: {run['error']} "
                         "||||")
    return "\n".join(lines)


def plot_long(long: list[dict], out_dir: Path) -> list[Path]:
    """Training memory (account total and saved for backward) against tokens, per method."""
    plt = _pyplot()
    runs = [r for r in long if "error" not in r]
    if not runs:
        return []
    fig, (total_ax, saved_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for color, method in enumerate(METHOD_ORDER):
        mine = sorted((r for r in runs if r["method"] == method), key=lambda r: r["seq_len"])
        if not mine:
            continue
        xs = [r["seq_len"] for r in mine]
        total_ax.plot(xs, [_account_total(r) for r in mine], "o-", color=f"C{color}",
                      label=METHOD_NAMES[method])
        saved_ax.plot(xs, [r["account"]["saved_mib"] for r in mine], "o-", color=f"C{color}",
                      label=METHOD_NAMES[method])
    for ax, title in ((total_ax, "training memory (account)"),
                      (saved_ax, "activations saved for backward")):
        ax.set(xscale="log", xlabel="tokens per sequence", ylabel="MiB", title=title)
        ax.set_xticks(sorted({r["seq_len"] for r in runs}),
                      [f"{n:,}" for n in sorted({r["seq_len"] for r in runs})])
        ax.legend(fontsize=8)
    fig.suptitle(f"{runs[0]['workload']} shape, batch {runs[0]['batch_size']}")
    return [_save_figure(fig, out_dir, "long_context.png")]


def _account_total(run):
    return run.get("account", {}).get("total_mib")


def _account_at_batch(run, batch: int):
    """The account at another batch size: weights, gradients and optimizer state stay, the
    bytes saved for backward scale with the number of examples (same sequence length)."""
    account = run.get("account") or {}
    if "saved_mib" not in account or not run.get("batch_size"):
        return None
    fixed = account["total_mib"] - account["saved_mib"]
    return fixed + account["saved_mib"] * batch / run["batch_size"]


def _safe_div(a, b):
    return None if a is None or not b else a / b


def expectations_table(checks: list[dict]) -> str:
    lines = ["| ratio | value | expected at most | met? |", "|---|---|---|---|"]
    for c in checks:
        verdict = "yes" if c["met"] else f"**no**, misses by {c['miss']}"
        lines.append(f"| {c['check']} ({c['workload']}) | {c['value']} | ≤ {c['limit']} | "
                     f"{verdict} |")
    return "\n".join(lines)


def write_results(results: dict, out_dir: Path) -> list[Path]:
    """results.json, results.md and the PNGs; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / "results.json", json.dumps(results, indent=2).encode())
    atomic_write_bytes(out_dir / "results.md", render_markdown(results).encode())
    written = [out_dir / "results.json", out_dir / "results.md"]
    written += plot_memory_bars(results["runs"], out_dir)
    if results.get("scaling"):
        written += plot_scaling(results["scaling"], out_dir)
    if results.get("long"):
        written += plot_long(results["long"], out_dir)
    return written


def render_markdown(results: dict) -> str:
    m = results["machine"]
    parts = [f"# laddertune bench results\n\nMachine: {m['cpu']}, {m['cores']} cores"
             f"{', GPU ' + m['gpu'] if m.get('gpu') else ''}; device `{results['device']}`; "
             f"torch {m['torch']}, transformers {m['transformers']}; {m['date']}.\n",
             f"Settings: {_settings(results['settings'])}.\n"]
    if results["runs"]:
        parts += ["## Memory and speed, one training step per method (same batch)\n",
                  markdown_table(results["runs"]), ""]
    if results.get("long"):
        parts += ["## Long sequences: SmolLM2-135M-shaped training memory\n",
                  long_table(results["long"]), ""]
    if results.get("expectations"):
        parts += ["## LST against the expected ratios\n",
                  expectations_table(results["expectations"]), ""]
    if results.get("notes"):
        parts += ["## Notes\n", *[f"- {note}" for note in results["notes"]], ""]
    return "\n".join(parts)


def _settings(settings: dict) -> str:
    return "; ".join(f"{key} {value}" for key, value in settings.items())


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_memory_bars(runs: list[dict], out_dir: Path) -> list[Path]:
    """Per workload: each method's training memory as a fraction of full FT, three ways."""
    plt = _pyplot()
    workloads = [w for w in dict.fromkeys(r["workload"] for r in runs)
                 if "full" in _by_method(runs, w)]
    if not workloads:
        return []
    fig, axes = plt.subplots(1, len(workloads), figsize=(5 * len(workloads), 4), squeeze=False)
    views = (("measured peak", memory_of), ("account total", _account_total),
             ("saved for backward", lambda r: r.get("account", {}).get("saved_mib")))
    for ax, workload in zip(axes[0], workloads):
        mine = _by_method(runs, workload)
        methods = [m for m in METHOD_ORDER if m in mine]
        for v, (label, key) in enumerate(views):
            ref = key(mine["full"]) or 1.0
            values = [(key(mine[m]) or 0.0) / ref for m in methods]
            ax.bar([i + 0.27 * (v - 1) for i in range(len(methods))], values, width=0.27,
                   label=label)
        ax.set_xticks(range(len(methods)), [METHOD_NAMES[m] for m in methods], rotation=20)
        ax.set_title(workload)
        ax.set_ylabel("training memory / full FT")
        ax.axhline(1.0, color="grey", lw=0.5)
    axes[0][0].legend(fontsize=8)
    return [_save_figure(fig, out_dir, "memory_bars.png")]


def _save_figure(fig, out_dir: Path, name: str) -> Path:
    fig.tight_layout()
    path = Path(out_dir) / name
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def plot_scaling(scaling: dict, out_dir: Path) -> list[Path]:
    """Memory and step time against batch size, sequence length and model size."""
    plt = _pyplot()
    written = []
    for axis, runs in scaling.items():
        runs = [r for r in runs if "error" not in r]
        if not runs:
            continue
        key = {"batch_size": "batch_size", "seq_len": "seq_len", "model_size": "all_params"}[axis]
        has_times = any("step_seconds" in r for r in runs)
        fig, panels = plt.subplots(1, 2 if has_times else 1, figsize=(10 if has_times else 6, 4),
                                   squeeze=False)
        ax_mem, ax_time = panels[0][0], panels[0][1] if has_times else None
        for color, method in enumerate(METHOD_ORDER):
            color = f"C{color}"
            mine = sorted((r for r in runs if r["method"] == method), key=lambda r: r[key])
            if not mine:
                continue
            xs = [r[key] / 1e6 if axis == "model_size" else r[key] for r in mine]
            ax_mem.plot(xs, [r["account"]["total_mib"] for r in mine], "o-", color=color,
                        label=f"{METHOD_NAMES[method]} (account)")
            measured = [(x, memory_of(r)) for x, r in zip(xs, mine) if memory_of(r) is not None]
            if measured:
                ax_mem.plot(*zip(*measured), "x--", color=color,
                            label=f"{METHOD_NAMES[method]} (measured)")
            timed = [(x, r["step_seconds"]) for x, r in zip(xs, mine) if "step_seconds" in r]
            if timed and ax_time is not None:
                ax_time.plot(*zip(*timed), "o-", color=color, label=METHOD_NAMES[method])
        label = {"batch_size": "batch size", "seq_len": "source tokens",
                 "model_size": "parameters (millions; T5 small/base/large shapes)"}[axis]
        for ax in (ax_mem, ax_time):
            if ax is not None:
                ax.set_xlabel(label)
                ax.legend(fontsize=7)
        ax_mem.set_ylabel("training memory MiB")
        if ax_time is not None:
            ax_time.set_ylabel("step seconds")
        fig.suptitle(f"T5 text-to-text: scaling with {label}")
        written.append(_save_figure(fig, out_dir, f"scaling_{axis}.png"))
    return written
