"""A pytest plugin of the benchmarks (`-p timeline`, with this folder on PYTHONPATH): a
timeline of one grading run, written to stderr at exit when `MILAB_TIMELINE=1`.

Milestones, in seconds from the process's start (Linux: from /proc, so the interpreter's own
start counts): this plugin imported (pytest and its plugins loaded), configure, collection
done, first and last check, session finished, unconfigure, exit; and, from Python's audit
events (no import of its own), each HTTP request sent (method, host, path) and each TCP
connection opened, with the thread that made it."""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time

_ON = os.environ.get("MILAB_TIMELINE") == "1"
_events: list[tuple[float, str, str]] = []


def _started() -> float:
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            ticks = int(f.read().rpartition(")")[2].split()[19])
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        return time.monotonic() - max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.monotonic()


_T0 = _started()


def mark(what: str) -> None:
    _events.append((time.monotonic(), threading.current_thread().name, what))


_WATCHED = ("pytest_milab", "azure", "msal", "requests", "urllib3", "paramiko", "fabric",
            "invoke", "cryptography", "asn1crypto", "jwt", "jinja2", "xdist", "anyio",
            "asyncio", "example_suites", "managed_identity", "conftest")
_seen: set[str] = set()


def _hook(event: str, args: tuple) -> None:
    if event == "import":
        name = args[0]
        top = name.split(".", 1)[0]
        key = name if top in ("azure", "pytest_milab", "managed_identity") else top
        key = ".".join(key.split(".")[:3])
        if top in _WATCHED and key not in _seen:
            _seen.add(key)
            mark(f"import {key}")
    elif event == "http.client.send":
        data = args[1] if len(args) > 1 else b""
        if isinstance(data, (bytes, bytearray)) and data[:8].split(b" ")[0] in (
                b"GET", b"POST", b"PUT", b"CONNECT", b"DELETE", b"PATCH", b"HEAD"):
            head = data.split(b"\r\n", 2)
            host = next((h[6:] for h in head[1:2] if h.lower().startswith(b"host: ")), b"")
            mark("http " + head[0].decode("latin-1")[:110] + " " + host.decode("latin-1"))
    elif event == "socket.connect":
        mark(f"connect {args[1]!r}"[:120])


def _report() -> None:
    mark(f"exit (CPU so far {time.process_time():.3f} s)")
    out = [f"{t - _T0:7.3f}  {name[:18]:18}  {what}" for t, name, what in _events]
    sys.stderr.write("milab timeline:\n" + "\n".join(out) + "\n")


if _ON:
    mark("timeline plugin imported")
    sys.addaudithook(_hook)
    atexit.register(_report)

    import pytest

    @pytest.hookimpl(wrapper=True)
    def pytest_load_initial_conftests(early_config, parser, args):
        mark("load initial conftests")
        try:
            return (yield)
        finally:
            mark("initial conftests loaded")

    @pytest.hookimpl(tryfirst=True)
    def pytest_configure(config):
        mark("pytest_configure (first)")

    class _Last:
        @pytest.hookimpl(trylast=True)
        def pytest_configure(self, config):
            mark("pytest_configure (last)")

        @pytest.hookimpl(trylast=True)
        def pytest_unconfigure(self, config):
            mark("pytest_unconfigure (last)")

    def pytest_addoption(parser, pluginmanager):
        pluginmanager.register(_Last(), "timeline-last")

    def pytest_sessionstart(session):
        mark("sessionstart")

    def pytest_collection_finish(session):
        mark(f"collection finished ({len(session.items)} items)")

    _first = [True]

    def pytest_runtest_logreport(report):
        if report.when == "call" and _first[0]:
            _first[0] = False
            mark("first check reported")

    def pytest_runtestloop(session):
        mark("runtestloop")

    def pytest_sessionfinish(session):
        mark("sessionfinish")

    @pytest.hookimpl(tryfirst=True)
    def pytest_unconfigure(config):
        mark("pytest_unconfigure (first)")
