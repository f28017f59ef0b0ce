"""Metrics and what a run leaves for people to read: report.md and PNG figures (matplotlib Agg)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ..checkpoint import atomic_write_bytes
from ..errors import DataWarning


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor,
                           names: list[str] | None = None) -> dict:
    """Accuracy, macro-F1, mean cross-entropy, and per class its precision, recall, F1 and
    support, with the confusion matrix (rows: true, columns: predicted).

    Macro-F1 is scikit-learn's `f1_score(average="macro")`: the mean F1 over the classes that the
    eval labels or the predictions hold. A class with no eval example is listed in
    `classes_absent_from_eval`, with a warning: its recall is undefined (None), and so are its
    precision and F1 unless it was predicted (then both are 0, every such prediction wrong).
    """
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support
    num_labels = probs.shape[-1]
    names = names or [str(i) for i in range(num_labels)]
    classes = list(range(num_labels))
    truth, predicted = labels.tolist(), probs.argmax(-1).tolist()
    loss = -torch.log(probs[torch.arange(len(labels)), labels].clamp_min(1e-12)).mean()
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=classes, zero_division=0)
    in_eval, in_predictions = set(truth), set(predicted)
    per_class, absent = {}, []
    for c, name in enumerate(names):
        scores = {"precision": round(float(precision[c]), 6), "recall": round(float(recall[c]), 6),
                  "f1": round(float(f1[c]), 6), "support": int(support[c])}
        if c not in in_eval:   # no example to recall; nothing to be precise about unless predicted
            undefined = ("recall",) if c in in_predictions else ("precision", "recall", "f1")
            scores.update({key: None for key in undefined}, absent_from_eval=True)
            absent.append(name)
        per_class[name] = scores
    warn_absent_classes(absent, num_labels)
    return {
        "accuracy": round(sum(t == p for t, p in zip(truth, predicted)) / max(len(truth), 1), 6),
        "macro_f1": round(float(f1_score(truth, predicted, average="macro", zero_division=0)), 6),
        "loss": round(float(loss), 6),
        "examples": len(truth),
        "per_class": per_class,
        "classes_absent_from_eval": absent,
        "confusion_matrix": confusion_matrix(truth, predicted, labels=classes).tolist(),
    }


def warn_absent_classes(absent: list[str], num_labels: int) -> None:
    """Say which classes the eval data lacks: macro-F1 then averages over fewer classes."""
    if absent:
        warnings.warn(f"the eval data has no example of {len(absent)} of {num_labels} classes "
                      f"({', '.join(absent)}); macro-F1 averages over the classes it holds or "
                      "predicts, as scikit-learn's does", DataWarning, stacklevel=3)


def plot_confusion_matrix(scores: dict, path: Path) -> None:
    """The eval confusion matrix as a picture: counts, true class down, predicted across."""
    plt = _pyplot()
    matrix, names = scores["confusion_matrix"], list(scores["per_class"])
    size = max(3.5, 0.6 * len(names) + 1.5)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set(xticks=range(len(names)), yticks=range(len(names)), xlabel="predicted",
           ylabel="true", title="Eval confusion matrix")
    ax.set_xticklabels(names, rotation=45, ha="right")
    ax.set_yticklabels(names)
    top = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center",
                    color="white" if count > top / 2 else "black", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


SCORE_NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "rouge_l": "ROUGE-L",
               "exact_match": "exact match", "token_f1": "token F1", "loss": "loss"}


def plot_learning_curve(history: dict, path: Path,
                        scores: tuple[str, ...] = ("accuracy", "macro_f1")) -> None:
    """Training loss per step and the eval `scores` per epoch, side by side."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    steps = [s for s, _ in history["train_loss"]]
    left.plot(steps, [loss for _, loss in history["train_loss"]], lw=1, color="tab:blue")
    left.set(xlabel="step", ylabel="training loss", title="Training loss")
    epochs = history["eval"]
    # evaluations within epochs (--eval-every) are placed by step, as the training loss is
    by = "epoch" if all(isinstance(e["epoch"], int) for e in epochs) else "step"
    for key, style in zip(scores, ("o-", "s--", "^:", "d-.")):
        right.plot([e[by] for e in epochs], [e[key] for e in epochs], style,
                   label=SCORE_NAMES[key])
    right.set(xlabel=by, ylabel="eval score", title="Eval", ylim=(0, 1.02))
    if by == "epoch":
        right.set_xticks([e["epoch"] for e in epochs])
    right.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_memory(comparison: list[dict], path: Path) -> None:
    """Stacked training-memory account (MiB) of each method, and its step time."""
    plt = _pyplot()
    parts = [("parameter_bytes", "weights"), ("gradient_bytes", "gradients"),
             ("optimizer_bytes", "optimizer state"), ("saved_bytes", "saved activations")]
    names = [row["method"] for row in comparison]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    bottom = [0.0] * len(names)
    for key, label in parts:
        values = [row["account"][key] / 2**20 for row in comparison]
        left.bar(names, values, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, values)]
    left.set(ylabel="MiB per training step", title="Training memory (device-independent)")
    left.legend(fontsize=8)
    right.bar(names, [row["step_seconds"] for row in comparison], color="tab:gray")
    right.set(ylabel="seconds per step", title="Step time")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def write_report(run_dir: Path, metrics: dict, comparison: list[dict] | None = None) -> Path:
    """report.md: the run's settings, its eval scores, truncation, and a method comparison."""
    ev, trunc = metrics["eval"], metrics["truncated"]
    generate = metrics.get("task") == "generate"
    classes = (f", {len(metrics['labels'])} classes" + (" answered as words" if generate else "")
               if metrics["labels"] else "")
    lines = [
        f"# laddertune run: {metrics['method']} on {metrics['model']}"
        + (" (text to text)" if generate else ""),
        "",
        f"- data: {metrics['train_data']} ({metrics['train_examples']} train, "
        f"{ev['examples']} eval examples{classes})",
        f"- epochs {metrics['epochs']}, batch size {metrics['batch_size']}, lr {metrics['lr']}, "
        f"max length {trunc['max_length']} tokens, seed {metrics['seed']}",
        f"- trainable parameters: {metrics['trainable_params']:,} of {metrics['all_params']:,} "
        f"({100 * metrics['trainable_params'] / metrics['all_params']:.2f}%)",
        f"- training time {metrics['train_seconds']:.1f} s, peak memory "
        f"{metrics['peak_memory_mb']:.0f} MiB ({metrics['device']})",
        *_account_lines(metrics.get("memory_account")),
        f"- {'prompts cut from the left to fit' if generate else 'texts truncated to'} "
        f"{trunc['max_length']} tokens: {trunc['train']} of "
        f"{metrics['train_examples']} train, {trunc['eval']} of {ev['examples']} eval",
        "",
        "## Eval",
        "",
    ]
    keys = (("rouge_l", "exact_match", "token_f1") + (("accuracy", "macro_f1") if classes
                                                        else ()) if generate
            else ("accuracy", "macro_f1"))
    lines += [", ".join(f"{SCORE_NAMES[k]} **{ev[k]:.4f}**" for k in keys)
              + f", loss {ev['loss']:.4f}", "",
              "| epoch | " + " | ".join(SCORE_NAMES[k] for k in keys) + " | eval loss |",
              "|---|" + "---|" * (len(keys) + 1)]
    lines += ["| " + " | ".join([str(e["epoch"]), *(f"{e[k]:.4f}" for k in keys),
                                 f"{e['loss']:.4f}"]) + " |" for e in metrics["history"]["eval"]]
    if ev.get("samples"):
        lines += ["", "### Answers (the first eval examples)", "", "| reference | generated |",
                  "|---|---|"]
        lines += [f"| {_cell(s['reference'])} | {_cell(s['generated'])} |" for s in ev["samples"]]
    if "per_class" in ev:
        lines += ["", "### Per class", "", "| class | precision | recall | F1 | support |",
                  "|---|---|---|---|---|"]
        lines += [f"| {name} | {_score(c['precision'])} | {_score(c['recall'])} | "
                  f"{_score(c['f1'])} | {c['support']} |" for name, c in ev["per_class"].items()]
        if ev.get("classes_absent_from_eval"):
            lines += ["", f"No eval example of {', '.join(ev['classes_absent_from_eval'])}: "
                          "their recall is undefined (n/a), and macro-F1 averages over the "
                          "classes the eval data holds or the model predicts."]
        lines += ["", "![confusion matrix](confusion_matrix.png)"]
    lines += ["", "![learning curve](learning_curve.png)", ""]
    if comparison:
        lines += comparison_table(comparison) + ["", "![memory](memory.png)", ""]
    path = run_dir / "report.md"
    atomic_write_bytes(path, "\n".join(lines).encode())
    return path


def _account_lines(account: dict | None) -> list[str]:
    """The memory account (`memory.reference_account`) as a line of report.md, in MiB."""
    if not account:
        return []
    examples, tokens = account["shape"]

    def mib(key: str) -> str:
        return f"{account[key] / 2**20:.1f}"
    return [f"- training memory, device-independent, at {examples} x {tokens} tokens: "
            f"**{mib('training_bytes')} MiB** (saved for backward "
            f"{mib('saved_for_backward_bytes')}, "
            f"gradients {mib('gradient_bytes')}, optimizer state {mib('optimizer_bytes')}, "
            f"trainable weights {mib('trainable_weight_bytes')}), beside "
            f"{mib('frozen_weight_bytes')} MiB of frozen weights"]


def _score(value: float | None) -> str:
    """A per-class score, or n/a where it is undefined (a class with no eval example)."""
    return "n/a" if value is None else f"{value:.4f}"


def _cell(text: str, width: int = 120) -> str:
    """Text for a markdown table cell: one line, pipes escaped, long texts cut."""
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= width else text[:width - 1] + "…"


def comparison_table(comparison: list[dict]) -> list[str]:
    """Markdown rows: memory account, measured peak, step time, ratios to LST."""
    lst = next((row for row in comparison if row["method"] == "lst"), comparison[0])
    lines = [
        "## Memory and speed, same batches",
        "",
        "| method | trainable params | training memory (MiB) | saved activations (MiB) | "
        "step time (s) | memory vs LST | time vs LST |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in comparison:
        acc = row["account"]
        lines.append(
            f"| {row['method']} | {row['trainable_params']:,} | {acc['total_bytes'] / 2**20:.1f} | "
            f"{acc['saved_bytes'] / 2**20:.1f} | {row['step_seconds']:.3f} | "
            f"{acc['total_bytes'] / lst['account']['total_bytes']:.2f}x | "
            f"{row['step_seconds'] / lst['step_seconds']:.2f}x |")
    return lines
