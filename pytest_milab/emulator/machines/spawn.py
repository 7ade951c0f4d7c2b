"""Starting a machine's command from the event loop, the same on asyncio's loop and uvloop's.

`asyncio.create_subprocess_exec` is the loop's own: asyncio's starts the child with `subprocess`
(a vfork, every descriptor but 0-2 closed, a preexec_fn run once the child's streams are set up),
uvloop's with libuv's `uv_spawn`, which differs in all three: it forks the whole emulator
(about 2 ms more CPU in the emulator and 4 in the command, each time, at this process's size),
leaves open in the child every descriptor it passed as a standard stream (a command's
`nohup … &` would then hold the session's output open) and runs a preexec_fn right after the
fork, before the streams and the new session exist.
So the command starts here with `subprocess` on every loop, and only its pipes and its exit go
through the running loop (`connect_read_pipe`, `connect_write_pipe`, a pidfd on Linux).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import threading
from collections.abc import Sequence
from typing import Any

PIPE = subprocess.PIPE


class Command:
    """A started command: `pid`, `returncode` (None while it runs), `stdin` (a StreamWriter),
    `stdout` and `stderr` (StreamReaders) for the streams that are pipes, `await wait()`."""

    def __init__(self, popen: subprocess.Popen, exited: asyncio.Future) -> None:
        self._popen = popen
        self._exited = exited
        self.pid = popen.pid
        self.stdin: asyncio.StreamWriter | None = None
        self.stdout: asyncio.StreamReader | None = None
        self.stderr: asyncio.StreamReader | None = None

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)


async def start(argv: Sequence[str], **options: Any) -> Command:
    """`subprocess.Popen(argv, **options)` (bufsize 0) from the running loop; stdin, stdout and
    stderr given as PIPE become the Command's streams on this loop."""
    loop = asyncio.get_running_loop()
    popen = subprocess.Popen(list(argv), bufsize=0, **options)
    try:
        command = Command(popen, _exit_of(loop, popen))
        if popen.stdout is not None:
            command.stdout = await _reader(loop, popen.stdout)
        if popen.stderr is not None:
            command.stderr = await _reader(loop, popen.stderr)
        if popen.stdin is not None:
            # A StreamReaderProtocol: the public protocol with the flow control drain() needs.
            transport, protocol = await loop.connect_write_pipe(
                lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader(), loop=loop),
                popen.stdin)
            command.stdin = asyncio.StreamWriter(transport, protocol, None, loop)
    except BaseException:
        with contextlib.suppress(OSError):
            popen.kill()
        raise
    return command


async def _reader(loop: asyncio.AbstractEventLoop, pipe) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=2 ** 16, loop=loop)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop), pipe)
    return reader


def _exit_of(loop: asyncio.AbstractEventLoop, popen: subprocess.Popen) -> asyncio.Future:
    """A future of the exit status, set on this loop once the child has exited and been reaped
    (here, by its own pid only: no other child's status is taken)."""
    exited = loop.create_future()

    def collect() -> None:
        if not exited.done():
            exited.set_result(popen.wait())

    try:
        pidfd = os.pidfd_open(popen.pid)
    except (AttributeError, OSError):  # not Linux 5.3+: a thread waits
        def wait() -> None:
            popen.wait()
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(collect)
        threading.Thread(target=wait, name=f"milab-wait-{popen.pid}", daemon=True).start()
        return exited

    def readable() -> None:  # the pidfd reads as ready once the process has exited
        loop.remove_reader(pidfd)
        os.close(pidfd)
        collect()

    loop.add_reader(pidfd, readable)
    return exited
