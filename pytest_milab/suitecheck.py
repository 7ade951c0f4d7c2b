"""Suite authors' mistakes found at collection, each a one-line error naming the fix: reads
and probe parts a suite's code uses but never declared (`lab.read("x")`, `lab.probe("x")`
with a literal name, in the suite's test modules and the modules beside them)."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

from .errors import SuiteError

_USES = {"read": "read", "probe": "probe part"}


def _receiver_is_lab(node: ast.expr) -> bool:
    name = node.id if isinstance(node, ast.Name) else (
        node.attr if isinstance(node, ast.Attribute) else "")
    return name == "self" or name.lower().endswith("lab")


def uses(path: Path) -> list[tuple[str, str, int]]:
    """(kind, name, line) of every `<lab>.read("name")` / `<lab>.probe("name")` in a file."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return []
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in _USES and _receiver_is_lab(node.func.value)
                and node.args and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)):
            found.append((node.func.attr, node.args[0].value, node.lineno))
    return found


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
