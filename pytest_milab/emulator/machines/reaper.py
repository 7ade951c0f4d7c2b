"""Ending every process a machine started, however it left its session.

A command of a VM may leave processes behind (`nohup ... &`, `setsid`, a daemon that forks twice):
on a real VM they die with the VM. Here they run on the host, so when a VM stops, is
deallocated or deleted (and when the local Azure stops) its processes are found and killed:

- the local Azure is a child subreaper (Linux `prctl(PR_SET_CHILD_SUBREAPER)`, see the
  prctl(2) manual page), so a process orphaned by a double fork is re-parented to it rather
  than to init, and stays in sight (and is reaped here, not left a zombie);
- a VM's processes are the process trees under its sessions' processes, and any process
  whose environment (`/proc/<pid>/environ`) is the VM's (its HOME or a PATH entry lies in the
  VM's folder: every command of the VM starts so), or whose working directory does, with the
  trees under those.

A process that clears its environment, leaves the VM's folders and forks twice escapes; a cgroup
per VM would close that gap (not used: it needs a writable cgroup hierarchy, which containers
rarely give). An orphan that exits on its own while its VM runs stays a zombie of the local
Azure's process until that process ends: reaping children it cannot tell apart could steal the
exit status that a spawner in another thread waits for.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Iterable
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
PROC = Path("/proc")


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux only): True if it is."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process now."""
    out: dict[int, int] = {}
    for entry in os.scandir(PROC):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        with contextlib.suppress(IndexError, ValueError):
            out[int(entry.name)] = int(fields[1])
    return out


def _environ(pid: int) -> dict[bytes, bytes]:
    try:
        raw = (PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return {}
    env = {}
    for item in raw.split(b"\0"):
        name, sep, value = item.partition(b"=")
        if sep:
            env[name] = value
    return env


def _belongs(pid: int, root: Path) -> bool:
    env = _environ(pid)
    inside = str(root).encode() + b"/"
    if env.get(b"HOME", b"").startswith(inside):
        return True
    if any(part.startswith(inside) for part in env.get(b"PATH", b"").split(b":")):
        return True
    try:
        cwd = os.readlink(PROC / str(pid) / "cwd")
    except OSError:
        return False
    return (cwd + "/").startswith(str(root) + "/")


def processes_of(roots: Iterable[int], root: Path) -> set[int]:
    """The machine's processes now: the trees under `roots` and every process of the machine
    (`root`: its folder) with the trees under those."""
    me = os.getpid()
    parents = _parents()
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found = {pid for pid in roots if pid in parents}
    found |= {pid for pid in parents if pid != me and pid not in found and _belongs(pid, root)}
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    found.discard(me)
    return found


def end_processes(roots: Iterable[int], root: Path, *,
                  spawned: Iterable[int] = ()) -> int:
    """SIGKILL the machine's processes until none is left (a few rounds: one may fork while
    the others die), then reap those re-parented to this process. `spawned`: pids whose exit
    status their own spawner waits for (never reaped here). Returns how many were killed."""
    roots = list(roots)
    keep_status = set(spawned) | set(roots)
    killed: set[int] = set()
    for _ in range(8):
        alive = {pid for pid in processes_of(roots, root) if not _is_zombie(pid)}
        if not alive:
            break
        for pid in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        killed |= alive
        time.sleep(0.01)
    _reap(killed - keep_status)
    return len(killed)


def _is_zombie(pid: int) -> bool:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return True  # gone
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def _reap(pids: Iterable[int]) -> None:
    """Collect the exit status of those that are this process's children (orphans adopted as a
    subreaper), so none stays a zombie."""
    me = os.getpid()
    parents = _parents()
    for pid in pids:
        if parents.get(pid) != me:
            continue
        for _ in range(50):
            try:
                done, _status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break
            if done:
                break
            time.sleep(0.005)
