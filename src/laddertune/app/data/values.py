"""How a cell's value is read: numbers, class names, and how values are shown in messages."""

from __future__ import annotations

import re
from collections.abc import Sequence

WHOLE_NUMBER = re.compile(r"[+-]?\d+")
_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def parse_number(text: str) -> int | float | None:
    """The number `text` spells, or None (also for 'nan' and 'inf', which are words here)."""
    text = text.strip()
    if WHOLE_NUMBER.fullmatch(text):
        return int(text)
    if _DECIMAL.fullmatch(text):
        return float(text)
    return None


def label_name(value) -> str | None:
    """A class name, whole numbers in one spelling (1, 1.0 and '01' are '1'); None if missing.
    Fractions are refused before they get here."""
    if isinstance(value, str):
        value = value.strip()
        if parse_number(value) is None:
            return value or None
        value = parse_number(value)
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value)
    return str(int(value))


def kind(value) -> str:
    if isinstance(value, dict):
        return "a dict (struct)"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


def preview(value, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def listing(names: Sequence[str], limit: int = 8) -> str:
    """`names` joined with commas, the tail elided so that messages stay one short line."""
    shown = ", ".join(str(name) for name in names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")
