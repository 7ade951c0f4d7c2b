"""The emulator's layout: host names defined once (hosts.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest_milab.emulator as emulator
from pytest_milab.emulator import hosts

PACKAGE = Path(emulator.__file__).parent
# The names only hosts.py may spell (in code; docstrings and comments may speak of them).
SPELLED_ONCE = (hosts.ARM_HOST, *hosts.LOGIN_HOSTS, hosts.GRAPH_HOST, hosts.VAULT_SUFFIX,
                hosts.CONTROL_HOST, hosts.IMDS_HOST, str(hosts.HIMDS_PORT), hosts.TENANT_DOMAIN,
)  # not aka.ms: error messages link to aka.ms pages


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) \
                and node.body and isinstance(node.body[0], ast.Expr) \
                and isinstance(node.body[0].value, ast.Constant):
            out.add(id(node.body[0].value))
    return out


def _code_strings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    docs = _docstrings(tree)
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
            and isinstance(n.value, str) and id(n) not in docs]


def test_host_names_are_spelled_only_in_hosts_py():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "hosts.py":
            continue
        for value in _code_strings(path):
            for name in SPELLED_ONCE:
                if name in value:
                    found.setdefault(str(path.relative_to(PACKAGE)), set()).add(name)
    assert found == {}
