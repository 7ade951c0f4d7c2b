"""Suite authors' mistakes found at collection, each a one-line error naming the fix: reads
and probe parts a suite's code uses but never declared (`lab.read("x")`, `lab.probe("x")`
with a literal name, in the suite's test modules and the modules beside them)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from .errors import SuiteError

_USES = {"read": "read", "probe": "probe part"}


# `<x>lab.read("name")`, `self.probe('name')`: a receiver named like a lab (or `self`, in a
# Lab subclass), a literal name. A regular expression, not a parse: it reads a suite's files in
# a millisecond or two, every run.
_USE = re.compile(r"""\b(\w*lab|self)\.(read|probe)\(\s*(?P<q>["'])(?P<name>[^"'\\]+)(?P=q)""",
                  re.IGNORECASE)


def uses(path: Path) -> list[tuple[str, str, int]]:
    """(kind, name, line) of every `<lab>.read("name")` / `<lab>.probe("name")` in a file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    return [(m.group(2).lower(), m.group("name"), text.count("\n", 0, m.start()) + 1)
            for m in _USE.finditer(text)]


def check_uses(files: Iterable[Path], reads: frozenset[str], parts: frozenset[str]) -> None:
    declared = {"read": reads, "probe": parts}
    hook = {"read": "pytest_milab_reads", "probe": "pytest_milab_probe"}
    for path in sorted(set(files)):
        for kind, name, line in uses(path):
            if name not in declared[kind]:
                known = ", ".join(sorted(declared[kind])) or "none"
                raise SuiteError(f"{path}:{line}: uses the {_USES[kind]} {name!r}, which the "
                                 f"suite never declared in {hook[kind]} (declared: {known})")


def suite_files(module_paths: Iterable[Path]) -> set[Path]:
    """The test modules and the Python files beside them (a suite's helpers)."""
    out: set[Path] = set()
    for path in module_paths:
        out.add(path)
        out.update(p for p in path.parent.glob("*.py"))
    return out
