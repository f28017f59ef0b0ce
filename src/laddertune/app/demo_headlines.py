"""`laddertune demo --task generate`: SmolLM2-135M learns to write BBC News headlines.

The task: from the start of an article's body, its title (the first line of each BBC News file).
The same articles, lengths, prompt, epochs and eval set for every model:

1. Write the data: `HEADLINES["train_articles"]` articles of the fixed BBC News training split
   and `HEADLINES["eval_articles"]` of its test split, each as a prompt (an instruction, then the
   body's first `body_words` words, in SmolLM2's chat template) and its title as the target,
   to <output>/data/{train,eval}.csv.
2. In this process, on one loaded backbone through `TrainingRun` (no folder written): the
   untrained model's zero-shot headlines (LoRA before its first step is the pretrained model
   exactly), then each method's memory account of one step on the same batch (weights,
   gradients, AdamW state, activations saved for backward).
3. `laddertune train --task generate` for LST and for LoRA, each in a fresh process (so each
   one's peak resident memory is its own), writing <output>/lst and <output>/lora; the step
   time is the mean optimizer step that training loop measured.
4. report.md, metrics.json, headlines.png and memory.png in <output>.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import time
from pathlib import Path

import torch

from ..checkpoint import atomic_write_bytes, load_json, save_json
from .data import load_bbc_news
from .memory import training_memory_account
from .options import DemoConfig, TrainConfig
from .report import _pyplot, plot_memory
from .subprocess_run import CLI, ChildFailed, run_module
from .trainer import TrainingRun, epoch_batches

# What the demo trains on, chosen to fit 10 minutes on 2 CPU cores.
HEADLINES = dict(train_articles=48, eval_articles=16, body_words=64, max_length=192,
                 max_new_tokens=24, batch_size=8)
INSTRUCTION = "Write the headline of this BBC News article."
# LST with the head reading the backbone's state plus the side network's correction
# (LSTConfig.head_residual): it starts from the pretrained model, as LoRA does.
METHOD_FLAGS = {"lst": ["--lst-head-residual", "true"], "lora": []}
# Each method's rate: the lowest dev eval loss of 3 rates (and one past a winning end) after the
# demo's own training, on 16 articles of the training split the demo does not train on (never
# the eval articles): `python benchmarks/generate_lr_check.py` in the repository, results in
# benchmarks/results/demo-generate/.
CHOSEN_LR = {"lst": 1e-3, "lora": 3e-3}
HEADLINE_EPOCHS = 1      # the demo's default (DemoConfig), for which CHOSEN_LR was chosen


def headline_pairs(texts: list[str], body_words: int) -> list[dict]:
    """BBC News files as {prompt, target}: the instruction and the body's first words, and
    the title (the file's first line)."""
    rows = []
    for text in texts:
        title, _, body = text.strip().partition("\n")
        words = body.split()[:body_words]
        rows.append({"prompt": f"{INSTRUCTION}\n\n{' '.join(words)}", "target": title.strip()})
    return rows


def write_headline_data(folder: Path, seed: int = 0, dev: bool = False) -> tuple[Path, Path]:
    """The demo's train and eval files, from the fixed BBC News split. `dev`: instead of the
    eval articles, as many training-split articles that the demo does not train on."""
    train, test = load_bbc_news()
    generator = torch.Generator().manual_seed(seed)
    train_order = torch.randperm(len(train), generator=generator).tolist()
    eval_order = torch.randperm(len(test), generator=generator).tolist()
    n_train, n_eval = HEADLINES["train_articles"], HEADLINES["eval_articles"]
    splits = {"train": (train, train_order[:n_train]),
              "eval": (train, train_order[n_train:n_train + n_eval]) if dev
              else (test, eval_order[:n_eval])}
    picked = {}
    for name, (data, order) in splits.items():
        rows = headline_pairs([data.texts[i] for i in order], HEADLINES["body_words"])
        handle = io.StringIO()
        writer = csv.DictWriter(handle, fieldnames=["id", "prompt", "target"])
        writer.writeheader()
        writer.writerows({"id": data.ids[i], **row} for i, row in zip(order, rows))
        picked[name] = folder / f"{name}.csv"
        atomic_write_bytes(picked[name], handle.getvalue().encode("utf-8"))
    return picked["train"], picked["eval"]


def run_headline_demo(demo: DemoConfig) -> dict:
    started = time.perf_counter()
    out = Path(demo.output)
    train_file, eval_file = write_headline_data(out / "data")
    base = headline_config(train_file, eval_file, demo.epochs, demo.device)
    print(f"== 1/3 SmolLM2-135M writes BBC News headlines: {HEADLINES['train_articles']} "
          f"train / {HEADLINES['eval_articles']} eval articles (their first "
          f"{HEADLINES['body_words']} words), {demo.epochs} epochs, batch "
          f"{HEADLINES['batch_size']}; the untrained model first, then memory and step time")
    untrained, comparison = untrained_and_compare(base)
    print(f"  untrained: {describe(untrained)}")
    runs = {}
    for step, method in enumerate(METHOD_FLAGS, start=2):
        print(f"\n== {step}/3 {method} training, in its own process")
        runs[method] = train_in_subprocess(base, method, out / method)
    for row in comparison:     # the step time the training loop measured
        row["step_seconds"] = runs[row["method"]]["step_seconds"]
    metrics = {"task": "generate", "model": "smollm2", "settings": HEADLINES,
               "instruction": INSTRUCTION, "epochs": demo.epochs,
               "untrained": untrained, "comparison": comparison,
               **{method: summary(run) for method, run in runs.items()}}
    metrics["demo_seconds"] = round(time.perf_counter() - started, 1)
    save_json(metrics, out / "metrics.json")
    plot_memory(comparison, out / "memory.png")
    plot_headlines(metrics, out / "headlines.png")
    report = write_headline_report(out, metrics)
    print("\n" + "\n".join(results_table(metrics)))
    print(f"\nwrote {report}, {out / 'metrics.json'}, {out / 'headlines.png'}, "
          f"{out / 'memory.png'} (demo took {metrics['demo_seconds']:.0f} s)")
    return metrics


def headline_config(train_file: Path, eval_file: Path, epochs: int, device: str) -> TrainConfig:
    """The demo's `laddertune train --task generate` settings, for every method alike."""
    return TrainConfig(task="generate", model="smollm2", train=str(train_file),
                       eval=str(eval_file), chat_template=True, epochs=epochs,
                       batch_size=HEADLINES["batch_size"], max_length=HEADLINES["max_length"],
                       max_new_tokens=HEADLINES["max_new_tokens"], device=device,
                       eval_batch_size=HEADLINES["eval_articles"], progress=False,
                       output="unused")


def untrained_and_compare(base: TrainConfig) -> tuple[dict, list[dict]]:
    """The untrained model's eval scores, and per method its memory account and mean step
    time on the first batches, all on one loaded backbone (LST first: LoRA wraps it)."""
    lead = TrainingRun(dataclasses.replace(base, method="lora", lr=CHOSEN_LR["lora"]))
    lead.destination = None
    backbone = lead.load()
    rows, untrained = [], None
    for method in METHOD_FLAGS:
        run = lead if method == "lora" else TrainingRun(dataclasses.replace(
            base, method=method, lr=CHOSEN_LR[method], lst={"head_residual": True}))
        if run is not lead:
            run.destination = None
            run.share_data(lead)
        run.build(backbone, write=False)
        if method == "lora":
            untrained = run.evaluate()          # LoRA starts as the pretrained model exactly
        rows.append(measure_account(run, method))
        run.model = run.optimization = None
    return untrained, rows


def measure_account(run: TrainingRun, method: str) -> dict:
    """The memory account of one training step on the run's first batch."""
    indices = epoch_batches(len(run.train_set), run.cfg.batch_size, run.cfg.seed, 0)[0]
    batch = run.batch(indices)
    account = training_memory_account(run.model, lambda: run.model(**batch).loss)
    print(f"  {method:5s} {account['total_bytes'] / 2**20:8.1f} MiB per training step "
          f"(account), {account['saved_bytes'] / 2**20:.1f} MiB of it saved for backward")
    return {"method": method, "trainable_params": run.trainable, "account": account,
            "peak_memory_mb": round(account["total_bytes"] / 2**20, 1)}


def train_in_subprocess(base: TrainConfig, method: str, folder: Path,
                        lr: float | None = None, extra: list[str] = ()) -> dict:
    """`laddertune train --task generate` for `method` (at `lr`, by default its chosen rate,
    with `extra` flags) in a fresh process; its metrics."""
    lr = CHOSEN_LR[method] if lr is None else lr
    args = ["train", "--task", "generate", "--model", base.model, "--train", base.train,
            "--eval", base.eval, "--chat-template", "--method", method,
            "--epochs", str(base.epochs), "--batch-size", str(base.batch_size),
            "--max-length", str(base.max_length), "--max-new-tokens", str(base.max_new_tokens),
            "--eval-batch-size", str(base.eval_batch_size), "--device", base.device,
            "--no-progress", "--output", str(folder), "--lr", f"{lr:g}", *METHOD_FLAGS[method],
            *extra]
    if (folder / "run.json").is_file():
        args.append("--overwrite")
    try:
        run_module(CLI, args, capture=False)     # its progress and errors go to the terminal
    except ChildFailed as failed:
        raise SystemExit(failed.returncode or 1) from None
    return load_json(folder / "metrics.json")


def summary(metrics: dict) -> dict:
    keep = ("eval", "train_seconds", "step_seconds", "training_memory_mb",
            "training_peak_rss_mb", "peak_memory_mb", "trainable_params", "all_params", "steps",
            "lr", "truncated")
    return {key: metrics[key] for key in keep}


def describe(scores: dict) -> str:
    return (f"ROUGE-L {scores['rouge_l']:.4f}, exact match {scores['exact_match']:.4f}, token "
            f"F1 {scores['token_f1']:.4f}, loss {scores['loss']:.4f}")


def results_table(metrics: dict) -> list[str]:
    """Markdown: scores, memory (account and measured peak RSS) and step time per model."""
    by_method = {row["method"]: row for row in metrics["comparison"]}
    lora_account = by_method["lora"]["account"]["total_bytes"]
    lines = ["| | ROUGE-L | exact match | token F1 | eval loss | training memory, account "
             "(MiB, ×LoRA) | peak RSS in training (MiB, ×LoRA) | step time (s, ×LoRA) |",
             "|---|---|---|---|---|---|---|---|"]
    ev = metrics["untrained"]
    lines.append(f"| untrained (zero-shot) | {ev['rouge_l']:.4f} | {ev['exact_match']:.4f} | "
                 f"{ev['token_f1']:.4f} | {ev['loss']:.4f} | – | – | – |")
    for method in METHOD_FLAGS:
        ev, row = metrics[method]["eval"], by_method[method]
        account = row["account"]["total_bytes"]
        rss, lora_rss = (metrics[m]["training_peak_rss_mb"] or float("nan")
                         for m in (method, "lora"))
        lines.append(
            f"| {'**LST**' if method == 'lst' else 'LoRA'} | {ev['rouge_l']:.4f} | "
            f"{ev['exact_match']:.4f} | {ev['token_f1']:.4f} | {ev['loss']:.4f} | "
            f"{account / 2**20:,.0f} ({account / lora_account:.2f}×) | {rss:,.0f} "
            f"({rss / lora_rss:.2f}×) | {row['step_seconds']:.2f} "
            f"({row['step_seconds'] / by_method['lora']['step_seconds']:.2f}×) |")
    return lines


def write_headline_report(out: Path, metrics: dict) -> Path:
    lst, lora = metrics["lst"]["eval"], metrics["lora"]["eval"]
    by_method = {row["method"]: row for row in metrics["comparison"]}
    ratio = by_method["lst"]["account"]["total_bytes"] / by_method["lora"]["account"]["total_bytes"]
    gap = 100 * (lora["rouge_l"] - lst["rouge_l"])
    s = metrics["settings"]
    lines = [
        "# laddertune demo: SmolLM2-135M writes BBC News headlines",
        "",
        f"- {s['train_articles']} training and {s['eval_articles']} eval articles of the fixed "
        f"BBC News split; the prompt: \"{metrics['instruction']}\" and the article's first "
        f"{s['body_words']} words, in the chat template; the target: its title",
        f"- {metrics['epochs']} epochs, batch {s['batch_size']}, at most {s['max_length']} "
        f"tokens, answers of at most {s['max_new_tokens']} tokens, greedy; LST lr "
        f"{metrics['lst']['lr']:g} (r = 8, head_residual), LoRA lr {metrics['lora']['lr']:g} "
        "(r = 32)",
        f"- the demo took {metrics['demo_seconds']:.0f} s",
        "",
        *results_table(metrics),
        "",
        f"LST's ROUGE-L is {abs(gap):.1f} points {'below' if gap > 0 else 'above'} LoRA's, "
        f"at {ratio:.2f}× LoRA's training memory.",
        "Training memory is the device-independent account (weights, gradients, AdamW state and "
        "what autograd keeps for backward) of one step; peak RSS is measured in each run's own "
        "process, over its training steps, less what the process held once its model was "
        "built (gradients, AdamW state, activations; loading and evals excluded).",
        "",
        "![headlines](headlines.png)",
        "",
        "![memory](memory.png)",
        "",
        "## Headlines (the first eval articles)",
        "",
        "| title | untrained | LST | LoRA |",
        "|---|---|---|---|",
    ]
    for i, sample in enumerate(metrics["untrained"]["samples"]):
        cells = [sample["reference"], sample["generated"],
                 metrics["lst"]["eval"]["samples"][i]["generated"],
                 metrics["lora"]["eval"]["samples"][i]["generated"]]
        lines.append("| " + " | ".join(" ".join(c.split()).replace("|", "\\|") for c in cells)
                     + " |")
    path = out / "report.md"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


def plot_headlines(metrics: dict, path: Path) -> None:
    """ROUGE-L and exact match of the untrained model, LST and LoRA."""
    plt = _pyplot()
    names = ["untrained", "LST", "LoRA"]
    scores = [metrics["untrained"], metrics["lst"]["eval"], metrics["lora"]["eval"]]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for offset, (key, label) in zip((-0.2, 0.2), (("rouge_l", "ROUGE-L"),
                                                  ("exact_match", "exact match"))):
        ax.bar([i + offset for i in range(3)], [s[key] for s in scores], width=0.4, label=label)
    ax.set_xticks(range(3), names)
    ax.set(ylabel="score on the eval articles", title="BBC News headlines, SmolLM2-135M")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
