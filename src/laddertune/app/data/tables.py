"""A data file read into a table: the checks on the file itself and on each format's syntax
(CSV and TSV quoting and field counts, JSON and JSONL records, parquet), each a one-line
`DataError` naming the line, record or row and the fix."""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ...errors import DataError
from .corpora import BUILTIN
from .values import kind, listing

SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
_ANY_FILE = ".csv, .tsv, .jsonl, .json or .parquet"


def check_file(source: str) -> Path:
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
class Table:
    """A file's columns, read on demand, and where each row starts in it, for messages."""

    path: Path
    format: str                         # "csv", "json" or "parquet"
    columns: list[str]                  # in file order, repeats kept so that they are reported
    values: Callable[[str], list]       # a column's values, one Python value per row
    unit: str                           # "line" (CSV, JSONL), "record" (JSON array), "row"
    numbers: Sequence[int]              # per row: its line, record or row number, from 1

    def where(self, i: int) -> str:
        return f"{self.unit} {self.numbers[i]}"


def read_table(path: Path) -> Table:
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


def _read_csv(path: Path, text: str, delimiter: str) -> Table:
    _check_separator(path, text, delimiter)
    lines, records = _csv_records(path, text, delimiter)
    header = [name.strip() for name in records[0]]
    if len(records) == 1:
        raise DataError(f"{path} has a header but no rows; add examples")
    separator = "tabs" if delimiter == "\t" else "commas"
    for line, fields in zip(lines[1:], records[1:]):
        if len(fields) < len(header) and line == lines[-1]:   # a download or export cut short
            raise DataError(f"{path} looks cut short: its last line ({line}) ends after "
                            f"{len(fields)} of the header's {len(header)} fields "
                            f"({listing(header)}); export or download the file again, or delete "
                            "that line")
        if len(fields) != len(header):
            raise DataError(f"{path} line {line} has {len(fields)} fields but the header has "
                            f"{len(header)} ({listing(header)}); quote texts that contain "
                            f"{separator}")

    def values(column: str) -> list[str]:
        index = header.index(column)
        return [fields[index] for fields in records[1:]]
    return Table(path, "csv", header, values, "line", lines[1:])


_SEPARATORS = {",": "commas", "\t": "tabs", ";": "';'", "|": "'|'"}


def _check_separator(path: Path, text: str, delimiter: str) -> None:
    """Refuse a file whose header splits on another separator but not on its own type's: a
    semicolon-separated file (Excel's CSV in many locales) or a TSV saved under the other name.
    Read on, it would fail later on a quote or a field count, blamed on the wrong thing."""
    header = next((line.strip("\r\n") for line in io.StringIO(text) if line.strip()), "")

    def width(separator: str) -> int:
        return len(next(csv.reader([header], delimiter=separator), []))
    if width(delimiter) > 1:
        return
    found = max(_SEPARATORS, key=width)
    if width(found) < 2:
        return
    own, other = (("commas", "tabs, as .tsv") if delimiter == "," else
                  ("tabs", "commas, as .csv"))
    swapped = {",": ".csv", "\t": ".tsv"}.get(found)
    fix = (f"rename it {path.stem}{swapped}, or re-save it with {own}" if swapped
           else f"re-save it with {own} (or with {other})")
    raise DataError(f"{path} separates its columns with {_SEPARATORS[found]}, not {own}; {fix}")


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
        # A quote left open on the last line, with no line break after it: the file was cut.
        cut = start == reader.line_num and not text.endswith(("\n", "\r"))
        raise _csv_error(path, err, start, cut) from None
    finally:
        csv.field_size_limit(old_limit)
    return lines, records


def _csv_error(path: Path, err: csv.Error, line: int, cut: bool) -> DataError:
    if "unexpected end of data" in str(err) and cut:
        return DataError(f"{path} looks cut short: its last line ({line}) opens a quote the file "
                         "never closes; export or download the file again, or delete that line")
    if "unexpected end of data" in str(err):
        return DataError(f"{path} line {line}: a quote opened in this row is never closed; close "
                         'it, and double any quote inside a quoted text ("")')
    if "expected after" in str(err):
        return DataError(f"{path} line {line}: a quote inside a quoted text ends it early; double "
                         'the quotes inside ("")')
    return DataError(f"cannot read {path} line {line} as CSV ({err}); check its quoting")


def _read_jsonl(path: Path, text: str) -> Table:
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


def _read_json(path: Path, text: str) -> Table:
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
        raise DataError(f"{path} holds {kind(records)}; a .json file must be an array of records "
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
        raise DataError(f'{path} {where} is {kind(record)}, not an object like {{"text": ..., '
                        '"label": ...}; write one object per record')
    return record


def _json_table(path: Path, rows: list[dict], unit: str, numbers: Sequence[int]) -> Table:
    if not rows:
        raise DataError(f"{path} has no rows; add examples")
    columns = list(dict.fromkeys(key for row in rows for key in row))   # a record may lack keys
    return Table(path, "json", columns, lambda column: [row.get(column) for row in rows], unit,
                 numbers)


def _read_parquet(path: Path) -> Table:
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
    return Table(path, "parquet", table.column_names,
                 lambda column: table.column(column).to_pylist(), "row",
                 range(1, table.num_rows + 1))
