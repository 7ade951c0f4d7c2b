"""Text from outside (a student's machine, a roster, Azure's messages) made safe to show: no
control characters (terminal escapes cannot move the cursor, hide lines or reach the
clipboard), bounded in size, and CSV cells that no spreadsheet takes for a formula."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")
# Every character _CONTROL matches (and \n, \r, \t) is one `str.isprintable` says is not: text
# that is printable throughout has nothing to remove, and is kept as it is without a search.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def clean(text: object, limit: int = 300) -> str:
    """One line: control characters (and bidirectional overrides) gone, newlines folded,
    at most `limit` characters."""
    one = str(text)
    if not one.isprintable():
        one = _CONTROL.sub("", one.replace("\r\n", " ").replace("\n", " "))
    return one if len(one) <= limit else one[: limit - 1] + "…"


def strip_controls(text: str) -> str:
    """Text of several lines: control characters (and bidirectional overrides) gone, tabs and
    newlines kept, the size as it is."""
    return text if text.isprintable() else _CONTROL.sub("", text.replace("\r\n", "\n"))


def clean_tree(value: Any) -> Any:
    """JSON from outside (a machine's answer) with every string, keys too, stripped of
    control characters as it comes in (`strip_controls`): whatever a check later puts in a
    message is then already safe to show."""
    if isinstance(value, str):
        return strip_controls(value)
    if isinstance(value, dict):
        return type(value)((clean_tree(k), clean_tree(v)) for k, v in value.items())
    if isinstance(value, list):
        return [clean_tree(v) for v in value]
    return value


def clean_in_place(obj: Any, _seen: set[int] | None = None) -> Any:
    """An object tree of dataclasses, lists, tuples and dicts (pytest's report of a failure:
    its traceback's lines, locals, arguments, crash message) with every string stripped of
    control characters (`strip_controls`); dataclasses and lists are changed in place."""
    seen = set() if _seen is None else _seen
    if isinstance(obj, str):
        return strip_controls(obj)
    if id(obj) in seen:
        return obj
    if isinstance(obj, list):
        seen.add(id(obj))
        obj[:] = [clean_in_place(v, seen) for v in obj]
    elif isinstance(obj, tuple):
        return type(obj)(clean_in_place(v, seen) for v in obj) if not hasattr(obj, "_fields") \
            else type(obj)(*(clean_in_place(v, seen) for v in obj))
    elif isinstance(obj, dict):
        seen.add(id(obj))
        for key in list(obj):
            obj[key] = clean_in_place(obj[key], seen)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        seen.add(id(obj))
        for f in dataclasses.fields(obj):
            if hasattr(obj, f.name):
                object.__setattr__(obj, f.name, clean_in_place(getattr(obj, f.name), seen))
    return obj


def csv_cell(value: object) -> object:
    """A CSV cell: numbers as they are; text cleaned, and prefixed with ' when a spreadsheet
    would read it as a formula (=, +, -, @)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    text = clean(value, 2000)
    return "'" + text if text.startswith(_FORMULA_START) else text
