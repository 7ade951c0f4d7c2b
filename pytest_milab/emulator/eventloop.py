"""The event loop the local Azure runs on: uvloop's where it is installed, asyncio's otherwise.

uvloop (libuv under asyncio's API) is the `emulator` extra's; where it cannot be imported (it has
no Windows build) the stdlib loop serves. `MILAB_EMULATOR_LOOP=asyncio` forces the stdlib loop
(to compare the two, or to rule uvloop out of a problem), `uvloop` insists on uvloop (an error
if it is missing), empty or `auto` takes uvloop when it can.

Everything of the local Azure runs the same on both: it uses asyncio's public API only (transports,
`connect_accepted_socket`, subprocesses, `add_reader`), never a loop's private attributes.
"""

from __future__ import annotations

import asyncio
import os

ENV = "MILAB_EMULATOR_LOOP"
CHOICES = ("auto", "uvloop", "asyncio")


def choice() -> str:
    """The loop asked for in the environment: auto, uvloop or asyncio."""
    value = os.environ.get(ENV, "").strip().lower() or "auto"
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


