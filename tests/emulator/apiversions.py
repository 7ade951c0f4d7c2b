"""Collect the api-versions that installed Azure SDKs and the Azure CLI send, per resource type.

Read from the installed sources, not from a list kept by hand:

* azure-mgmt-* request builders pair a URL template (`_url = "/subscriptions/.../providers/
  Microsoft.Network/publicIPAddresses/{...}"`) with `_params.pop("api-version", "2025-09-01")`;
* the Azure CLI's AAZ commands pair `format_url("/subscriptions/.../providers/...")` with
  `serialize_query_param("api-version", "2025-09-01")` in one operation class;
* the CLI's ARM template builders pair `'type': 'Microsoft.Network/virtualNetworks'` with
  `'apiVersion': '2015-06-15'` (or an `api_version = '...'` they then use) in one function.

Each source file is cut into blocks at `def`/`class` lines of its two outer levels; within a block
every URL or template type is paired with every api-version literal.
"""

from __future__ import annotations

import re
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path

_BLOCK = re.compile(r"^(?:    )?(?:def|class) ", re.M)
_URL = re.compile(r"[\"'](/[^\"'\s]*?/providers/(Microsoft\.[A-Za-z]+)/([^\"'\s]*))[\"']")
_QUERY_VERSION = re.compile(r"[\"']api-version[\"'],\s*[\"'](\d{4}-\d{2}-\d{2}(?:-[a-z]+)?)[\"']")
_TEMPLATE_TYPE = re.compile(r"[\"']type[\"']:\s*[\"'](Microsoft\.[A-Za-z]+)/([A-Za-z]+)[\"']")
_TEMPLATE_VERSION = re.compile(
    r"(?:[\"']apiVersion[\"']:\s*|api_version\s*=\s*)[\"'](\d{4}-\d{2}-\d{2}(?:-[a-z]+)?)[\"']")


# The azure-mgmt packages of the resource providers the local Azure emulates.
MGMT = ("authorization", "compute", "keyvault", "msi", "network", "resource", "subscription")


def site_packages_of(az: str | Path) -> list[Path]:
    """The site-packages of the venv an `az` entry point lives in."""
    venv = Path(az).resolve().parent.parent
    return sorted(p for p in venv.glob("lib/python*/site-packages") if p.is_dir())


def default_roots() -> list[Path]:
    return [Path(sysconfig.get_paths()["purelib"])] + [Path(p) for p in sys.path
                                                       if p.endswith("site-packages")]


def _files(roots: Iterable[Path], namespaces: set[str]) -> Iterator[tuple[Path, str]]:
    seen: set[Path] = set()
    for root in roots:
        bases = [root / "azure/cli/command_modules"] + [root / "azure/mgmt" / p for p in MGMT]
        for base in bases:
            if not base.is_dir():
                continue
            for path in base.rglob("*.py"):
                if "/aio/" in str(path) or "/tests/" in str(path) or path in seen:
                    continue
                seen.add(path)
                try:
                    text = path.read_text(encoding="utf-8", errors="replace")
                except OSError:
                    continue
                if any(ns in text for ns in namespaces):
                    yield path, text


def _types(rest: str) -> tuple[str, ...]:
    """`publicIPAddresses/{name}/...` -> ("publicipaddresses", ...); () when a type is a `{param}`."""
    parts = [p for p in rest.split("?")[0].split("/") if p]
    types = tuple(p.lower() for p in parts[0::2])
    return () if any(t.startswith("{") for t in types) else types


def collect(roots: Iterable[Path],
            namespaces: set[str]) -> dict[tuple[str, tuple[str, ...]], set[str]]:
    """(namespace lower, type segments lower) -> api-versions some installed client sends."""
    wanted = {n.lower() for n in namespaces}
    out: dict[tuple[str, tuple[str, ...]], set[str]] = {}
    for _path, text in _files(roots, namespaces):
        starts = [m.start() for m in _BLOCK.finditer(text)] + [len(text)]
        blocks = [text[a:b] for a, b in zip([0] + starts, starts, strict=False)]
        for block in blocks:
            pairs: list[tuple[str, tuple[str, ...]]] = []
            for m in _URL.finditer(block):
                ns, types = m.group(2).lower(), _types(m.group(3))
                if ns in wanted and types:
                    pairs.append((ns, types))
            versions = set(_QUERY_VERSION.findall(block))
            template_pairs = [(ns.lower(), (t.lower(),)) for ns, t in _TEMPLATE_TYPE.findall(block)
                              if ns.lower() in wanted]
            template_versions = set(_TEMPLATE_VERSION.findall(block))
            for key in pairs:
                out.setdefault(key, set()).update(versions)
            for key in template_pairs:
                out.setdefault(key, set()).update(template_versions)
    return {k: v for k, v in out.items() if v}
