"""Text from outside (a student's machine, a roster, Azure's messages) made safe to show: no
control characters (terminal escapes cannot move the cursor, hide lines or reach the
clipboard), bounded in size, and CSV cells that no spreadsheet takes for a formula."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def clean(text: object, limit: int = 300) -> str:
    """One line: control characters (and bidirectional overrides) gone, newlines folded,
    at most `limit` characters."""
    one = _CONTROL.sub("", str(text).replace("\r\n", " ").replace("\n", " "))
    return one if len(one) <= limit else one[: limit - 1] + "…"


def csv_cell(value: object) -> object:
    """A CSV cell: numbers as they are; text cleaned, and prefixed with ' when a spreadsheet
    would read it as a formula (=, +, -, @)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    text = clean(value, 2000)
    return "'" + text if text.startswith(_FORMULA_START) else text
