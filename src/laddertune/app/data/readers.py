"""Reading a data file (CSV, TSV, JSONL, JSON, parquet) as texts and labels, or prompts and targets.

Everything a user can get wrong about a data file is checked before any model is loaded (the
file and its syntax in `tables`, the classes in `labels`, the rest here), and raised as a one-line
`DataError` naming the fix and the line, row or record: a missing, empty, UTF-16 or non-UTF-8
file; a CSV cut short, saved with another separator, without a header, or with a ragged row; a
broken JSON line; the label column passed as the text column; a missing or repeated column; a
text or label that is a list, dict or other non-scalar; a label that is a fraction (a regression
target); a single class; labels in the eval file never seen in training.
What can be used once repaired is repaired with a one-line `DataWarning` that counts the rows:

- Rows whose text is empty (or missing) are dropped from labelled data; in data to predict on they
  are kept, so every input row gets a prediction. A file whose texts are all empty is an error.
- Labels lose surrounding spaces (`" sport"` is `"sport"`), but capitalisation is kept: `"Sport"`
  and `"sport"` are two classes (a warning says so when one file holds both).
- Whole-number labels are one class whatever their spelling: 1, 1.0 and "01" are all "1", so CSV,
  JSON and parquet copies of the same data agree. Booleans are "False"/"True".
- Numbers in the text column are read as text (digits are valid text); a warning asks whether the
  column is the right one when every text is a number.
- Parquet bytes are read as UTF-8 text, the way older writers store strings.
"""

from __future__ import annotations

import math
import warnings

from ...errors import DataError, DataWarning
from .examples import PairDataset, TextDataset
from .tables import Table, check_file, read_table
from .values import kind, label_name, listing, parse_number, preview


def load_texts(source: str, text_column: str = "text", label_column: str = "label",
               need_labels: bool = True, id_column: str | None = "id",
               text_pair_column: str | None = None) -> TextDataset:
    """Read `source`, a .csv, .tsv, .jsonl, .json (an array of records) or .parquet file.

    Args:
        need_labels: False for data to predict on: the label column is not read, and rows with an
            empty text are kept rather than dropped.
        id_column: a column kept as `TextDataset.ids` when the file has it (None: ignore ids).
        text_pair_column: sentence pairs: the column of each text's second text
            (`TextDataset.pairs`); a missing one is an error, an empty one an empty text.

    Raises:
        DataError: `text_column` is `label_column`; the file is missing, empty, not UTF-8 or
            unreadable, lacks a column, or holds a value that is not a text or a class name (see
            the module docstring).
    """
    if text_column == label_column:   # a model that reads its label learns nothing to use
        raise DataError(f"--text-column and --label-column both name {text_column!r}; pass the "
                        "column that holds the texts to --text-column")
    path = check_file(source)
    table = read_table(path)
    has_ids = _check_needed(table, (text_column, "--text-column"),
                            (label_column, "--label-column") if need_labels else None, id_column,
                            (text_pair_column, "--text-pair-column") if text_pair_column else None)
    texts = _texts(table, text_column)
    labels = _labels(table, label_column) if need_labels else []
    ids = _ids(table, id_column) if has_ids else None
    pairs = _texts(table, text_pair_column) if text_pair_column else None
    data = _handle_empty_texts(TextDataset(texts, labels, str(source), ids, pairs), table,
                               text_column, drop=need_labels)
    _warn_if_texts_are_numbers(data.texts, data.source, text_column)
    _warn_case_clashes(data.labels, data.source)
    return data


def load_pairs(source: str, prompt_column: str = "prompt", target_column: str = "target",
               need_targets: bool = True, id_column: str | None = "id") -> PairDataset:
    """Read prompt -> target pairs from `source` (any format `load_texts` reads).

    Rows with an empty prompt or target are dropped from training data, counted in a
    `DataWarning`; in data to generate for (`need_targets=False`) every row is kept.

    Raises:
        DataError: as `load_texts`; or every target is empty.
    """
    path = check_file(source)
    table = read_table(path)
    return _pairs(table, str(source), prompt_column, target_column, need_targets, id_column)


def columns(source: str) -> list[str]:
    """The column names of the data file `source`, in file order (the file is checked)."""
    return list(read_table(check_file(source)).columns)


def has_columns(source: str, *columns: str) -> bool:
    """Whether the data file `source` has every one of `columns` (the file is checked)."""
    return all(column in read_table(check_file(source)).columns for column in columns)


def _check_needed(table: Table, first: tuple[str, str], second: tuple[str, str] | None,
                  id_column: str | None, third: tuple[str, str] | None = None) -> bool:
    """Check the (column, flag) pairs a reader needs; whether the table has `id_column`."""
    has_ids = id_column in table.columns
    _check_columns(table, dict([first, *(pair for pair in (second, third) if pair)]),
                   [id_column] if has_ids else [])
    return has_ids


def _pairs(table: Table, source: str, prompt_column: str, target_column: str,
           need_targets: bool, id_column: str | None) -> PairDataset:
    has_ids = _check_needed(table, (prompt_column, "--prompt-column"),
                            (target_column, "--target-column") if need_targets else None,
                            id_column)
    prompts = _texts(table, prompt_column)
    targets = _texts(table, target_column) if need_targets else []
    data = PairDataset(prompts, targets, source, _ids(table, id_column) if has_ids else None)
    if not need_targets:   # empty prompts are kept, with a warning (all empty: an error)
        _handle_empty_texts(TextDataset(prompts, [], source, data.ids), table, prompt_column,
                            drop=False)
        return data
    empty_targets = [i for i, target in enumerate(targets) if not target.strip()]
    if len(empty_targets) == len(data):
        raise DataError(f"{source}: every target in column {target_column!r} is empty; pass "
                        f"--target-column NAME (it has: {listing(table.columns)})")
    if empty_targets:
        warnings.warn(f"{source}: {len(empty_targets)} of {len(data)} targets are empty (first "
                      f"at {table.where(empty_targets[0])}); dropped those rows, which teach "
                      "nothing to answer", DataWarning, stacklevel=3)
        keep = sorted(set(range(len(data))) - set(empty_targets))
        table = Table(table.path, table.format, table.columns, table.values, table.unit,
                      [table.numbers[i] for i in keep])
        data = data.select(keep, source)
    texts = _handle_empty_texts(TextDataset(data.prompts, data.targets, source, data.ids), table,
                                prompt_column, drop=True)
    return PairDataset(texts.texts, texts.labels, source, texts.ids)



def _check_columns(table: Table, needed: dict[str, str], optional: list[str]) -> None:
    """Every needed column is there, and every column read is there once; `needed` maps each
    column to the flag that names it."""
    for column in [*needed, *optional]:
        if table.columns.count(column) > 1:
            raise DataError(f"{table.path} has {table.columns.count(column)} columns named "
                            f"{column!r}, so it is unclear which to read; rename the others")
    for column, flag in needed.items():
        if column in table.columns:
            continue
        if table.format == "csv" and _header_looks_like_data(table):
            first = ", ".join(repr(name[:20]) for name in table.columns[:3])
            raise DataError(f"{table.path} has no column {column!r}; its first line ({first}) "
                            "looks like data: add a header line naming the columns "
                            f"({', '.join(needed)}), or pass {flag} NAME")
        alike = [name for name in table.columns if name.strip().casefold() == column.casefold()]
        raise DataError(f"{table.path} has no column {column!r} (it has: "
                        f"{listing(table.columns)}); pass {flag} "
                        f"{repr(alike[0]) if alike else 'NAME'}")


def _header_looks_like_data(table: Table) -> bool:
    """A header name that is a number, a sentence, or a value of its own column is data."""
    for name in table.columns:
        if name and (parse_number(name) is not None or len(name.split()) > 3
                     or name in (value.strip() for value in table.values(name)[:1000])):
            return True
    return False


# ---- values -------------------------------------------------------------------------------------

def _scalars(table: Table, column: str, fix: str) -> list:
    """The column as str, int, float or bool values, None where missing; bytes read as UTF-8.

    Raises:
        DataError: a value is a list, dict or other non-scalar (`fix` says what to write instead),
            or bytes that are not UTF-8 text.
    """
    values = table.values(column)
    for i, value in enumerate(values):
        if value is None or isinstance(value, (str, int, float)):   # bool is an int
            continue
        where = f"{table.path} {table.where(i)}: column {column!r} holds"
        if not isinstance(value, bytes):
            raise DataError(f"{where} {kind(value)} ({preview(value)}), not a text or number; "
                            f"{fix}")
        try:
            values[i] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{where} bytes that are not UTF-8 text; store it as strings") from None
    return [None if isinstance(value, float) and math.isnan(value) else value for value in values]


def _texts(table: Table, column: str) -> list[str]:
    """The column as texts: numbers become their digits, a missing text ''."""
    values = _scalars(table, column, "join it into one string per row")
    return ["" if value is None else str(value) for value in values]


def _labels(table: Table, column: str) -> list[str]:
    """The column as class names, spaces around them stripped (with a warning)."""
    values = _scalars(table, column, "give each row one class name (multi-label data is not "
                                     "supported)")
    labels = []
    for i, value in enumerate(values):
        number = parse_number(value) if isinstance(value, str) else value
        if isinstance(number, float) and not number.is_integer():
            raise DataError(f"{table.path} {table.where(i)}: label {value!r} in column {column!r} "
                            "has a fractional part, like a regression target; laddertune "
                            "classifies: bin the values into classes")
        name = label_name(value)
        if name is None:
            raise DataError(f"{table.path} {table.where(i)} has no {column!r}; fill it in or drop "
                            "the row")
        labels.append(name)
    padded = [value for value in values if isinstance(value, str) and value != value.strip()]
    if padded:
        warnings.warn(f"{table.path}: stripped spaces around {len(padded)} labels (e.g. "
                      f"{padded[0]!r} is read as {padded[0].strip()!r})", DataWarning, stacklevel=3)
    return labels



def _ids(table: Table, column: str) -> list[str]:
    """The column as strings, a missing id '' (with a warning)."""
    ids = []
    for value in _scalars(table, column, "give each row one id"):
        if isinstance(value, float) and value.is_integer():   # ints in a column that has gaps
            value = int(value)
        ids.append("" if value is None else str(value))
    missing = ids.count("")
    if missing:
        warnings.warn(f"{table.path}: {missing} of {len(ids)} rows have no {column!r}; their id "
                      "is left blank", DataWarning, stacklevel=3)
    return ids


def _handle_empty_texts(data: TextDataset, table: Table, column: str,
                        drop: bool) -> TextDataset:
    """Drop rows without a text from labelled data; keep them, counted, in data to predict on."""
    empty = [i for i, text in enumerate(data.texts) if not text.strip()]
    if len(empty) == len(data):
        raise DataError(f"{data.source}: every text in column {column!r} is empty; pass "
                        f"--text-column NAME (it has: {listing(table.columns)})")
    if not empty:
        return data
    counted = f"{len(empty)} of {len(data)} texts are empty (first at {table.where(empty[0])})"
    if not drop:
        warnings.warn(f"{data.source}: {counted}; their predictions rest on no text",
                      DataWarning, stacklevel=3)
        return data
    warnings.warn(f"{data.source}: {counted}; dropped those rows, which have nothing to learn "
                  "from", DataWarning, stacklevel=3)
    empty_rows = set(empty)
    return data.select([i for i in range(len(data)) if i not in empty_rows], data.source)


def _warn_if_texts_are_numbers(texts: list[str], source: str, column: str) -> None:
    present = [text for text in texts if text.strip()]
    if all(parse_number(text) is not None for text in present):
        warnings.warn(f"{source}: every text in column {column!r} is a number (e.g. "
                      f"{present[0]!r}); if the texts are elsewhere, pass --text-column NAME",
                      DataWarning, stacklevel=3)


def _warn_case_clashes(labels: list[str], source: str) -> None:
    by_case: dict[str, set[str]] = {}
    for name in set(labels):
        by_case.setdefault(name.casefold(), set()).add(name)
    clashes = sorted(sorted(names) for names in by_case.values() if len(names) > 1)
    if clashes:
        shown = " and ".join(repr(name) for name in clashes[0])
        warnings.warn(f"{source}: labels {shown} differ only in capitalisation and are two "
                      "classes; make them one spelling if they are one class", DataWarning,
                      stacklevel=3)

