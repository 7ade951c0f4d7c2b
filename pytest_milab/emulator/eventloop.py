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



def spawn_closes_fds(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether the loop's subprocesses start with only their standard streams of the parent's
    descriptors: asyncio's do (subprocess's close_fds). uvloop's do not: libuv (`uv_spawn`, no
    close_fds) leaves open in the child every descriptor it passes as a standard stream, at its
    number in the parent too, so a command's background process (`nohup … &`) would hold the
    session's output open. `close_on_exec` in a preexec_fn closes them."""
    return isinstance(loop, asyncio.BaseEventLoop)


def close_on_exec() -> None:
    """In the child before exec: every descriptor from 3 up closes at exec. Under uvloop this
    runs right after fork, before libuv duplicates the standard streams onto 0-2: the copies
    stay open, the originals close (close_fds, done the other way round)."""
    import fcntl

    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, min(os.sysconf("SC_OPEN_MAX"), 65536)))
    for fd in fds:
        if fd > 2:
            try:
                fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.fcntl(fd, fcntl.F_GETFD) | fcntl.FD_CLOEXEC)
            except OSError:
                pass
