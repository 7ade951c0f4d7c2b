"""The event loop the local Azure runs on: asyncio's own unless MILAB_EMULATOR_LOOP says uvloop.

`MILAB_EMULATOR_LOOP=uvloop` runs it on uvloop (libuv under asyncio's API; `pip install uvloop`,
an error without it), `auto` on uvloop where it can be imported (it has no Windows build) and on
asyncio's otherwise; empty or `asyncio` (the default) on the stdlib loop. uvloop is not the
default: measured side by side on a grading benchmark (benchmarks/azure_cpu.py, 50 labs), it
took 11 to 16% off the local Azure's request-handling CPU, too little for one more dependency
(it replaces only the loop's own share: TLS, HTTP parsing and the services stay as they are).

Everything of the local Azure runs the same on both: it uses asyncio's public API only (transports,
`connect_accepted_socket`, `add_reader`, pipes), never a loop's private attributes, and starts
its machines' commands itself rather than with the loop's own subprocesses (machines/spawn.py).
"""

from __future__ import annotations

import asyncio
import os

ENV = "MILAB_EMULATOR_LOOP"
CHOICES = ("asyncio", "uvloop", "auto")


def choice() -> str:
    """The loop asked for in the environment: asyncio (the default), uvloop or auto."""
    value = os.environ.get(ENV, "").strip().lower() or "asyncio"
    if value not in CHOICES:
        raise ValueError(f"{ENV}={value!r}: expected one of {', '.join(CHOICES)}")
    return value


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new loop of the kind `choice()` says."""
    wanted = choice()
    if wanted != "asyncio":
        try:
            import uvloop
        except ImportError:
            if wanted == "uvloop":
                raise
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()
