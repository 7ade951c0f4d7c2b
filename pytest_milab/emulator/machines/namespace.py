"""A private view of /usr, /etc and /tmp for each VM, so what a student does as root in their VM
stays in their VM.

When the local Azure runs as root, each running VM has one long-lived mount namespace (see the
mount_namespaces(7) and unshare(2) manual pages), held by a small process started at power on:
in it /usr and /etc are overlays (overlayfs: the host's as the lower layer, the VM's own changes
in an upper layer kept in the VM's folder, so they last across a restart as a disk does) and
/tmp is a fresh tmpfs (the local Azure's work directory, when it lies under /tmp, is bound back
in place so the VM's home and the CA are still there). Each command of the VM enters that
namespace (setns(2)) between fork and exec: a few microseconds per command, not a namespace per
command. So `sudo cp fake /usr/bin/python3` or an edit of /etc/bash.bashrc changes that VM only,
and the grader's probe, which runs `/usr/bin/python3`, runs that VM's (by default the warm
interpreter's client, written into the upper layer before the overlay is mounted; its runs
join this namespace: warmpython.py).

Not root (or a kernel or container refusing mount namespaces or overlayfs): no namespace, and a
VM's sudo, a shim running as the emulator's user, writes to the host's own /usr and /etc.
`MILAB_VM_NAMESPACES=0` turns namespaces off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

CLONE_NEWNS = 0x00020000
OVERLAID = ("/usr", "/etc")

# Run as `python3 -I -S -c HOLDER LAYERS KEEP...` by root: unshare the mount namespace, overlay
# /usr and /etc (upper layers under LAYERS), a private /tmp with the KEEP folders bound back,
# then say "ready" and wait until stdin closes (the VM stops) or it is killed.
HOLDER = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18

def mount(source, target, fstype, flags, data):
    if libc.mount(source and source.encode(), target.encode(), fstype and fstype.encode(),
                  flags, data and data.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")

try:
    layers, keep = sys.argv[1], sys.argv[2:]
    if libc.unshare(0x00020000) != 0:
        raise OSError(ctypes.get_errno(), "unshare: " + os.strerror(ctypes.get_errno()))
    mount(None, "/", None, MS_REC | MS_PRIVATE, None)
    # Opened in the new namespace (a bind's source must be one of its mounts), before /tmp goes.
    held = [(path, os.open(path, os.O_PATH | os.O_DIRECTORY)) for path in keep
            if os.path.isdir(path)]
    for top in ("/usr", "/etc"):
        upper = os.path.join(layers, top.strip("/"), "upper")
        work = os.path.join(layers, top.strip("/"), "work")
        os.makedirs(upper, mode=0o755, exist_ok=True)
        os.makedirs(work, mode=0o700, exist_ok=True)
        mount("overlay", top, "overlay", 0, f"lowerdir={top},upperdir={upper},workdir={work}")
    mount("tmpfs", "/tmp", "tmpfs", 0, "mode=1777")
    for path, fd in held:
        if path == "/tmp" or path.startswith("/tmp/"):
            os.makedirs(path, exist_ok=True)
            mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC, None)
        os.close(fd)
except OSError as exc:
    print("failed " + str(exc), flush=True)
    sys.exit(1)
print("ready", flush=True)
# Held by a shell from here (about 1 MB, not an interpreter's 9): the namespace lasts as long
# as it does, which is until the local Azure closes its stdin or kills it (or itself dies).
os.execv("/bin/sh", ["sh", "-c", "read -r line"])
"""


NSENTER = shutil.which("nsenter", path="/usr/bin:/bin:/usr/sbin:/sbin") or "/usr/bin/nsenter"


def wanted() -> bool:
    """Whether VMs get a namespace each: as root on Linux with util-linux's nsenter, unless
    MILAB_VM_NAMESPACES=0."""
    return (sys.platform.startswith("linux") and os.geteuid() == 0
            and os.path.exists(NSENTER) and os.environ.get("MILAB_VM_NAMESPACES", "1") != "0")


def kept_paths(workdir: Path, ca_path: Path, az_cli: Path | None) -> list[Path]:
    """What a VM's private /tmp must still show if they lie there: the local Azure's work
    directory (homes, bin folders, CA), the interpreter and Azure CLI its shims run, and this
    package's own scripts they start (sudo's client, the warm interpreter's)."""
    package = Path(__file__).resolve().parents[2]  # pytest_milab, wherever it is installed
    paths = [Path(os.path.commonpath([workdir, ca_path.parent])), Path(sys.prefix),
             Path(sys.base_prefix), package]
    if az_cli is not None:
        paths.append(Path(az_cli).resolve().parent.parent)
    return paths


class VmNamespace:
    """One VM's mount namespace, held by a process; `enter()` runs in a command's child."""

    def __init__(self, layers: Path, keep: list[Path]) -> None:
        self.layers = layers
        self.keep = keep
        self.proc: subprocess.Popen | None = None
        self.path: str | None = None  # /proc/<holder>/ns/mnt

    def start(self) -> bool:
        """Start the holder; False (and no namespace) when this host refuses it."""
        self.layers.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", HOLDER, str(self.layers),
                 *(str(p) for p in self.keep)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                cwd="/", start_new_session=True)
            line = self.proc.stdout.readline().decode(errors="replace").strip()
        except OSError as exc:
            line = f"failed {exc}"
        if line != "ready":
            log.warning("local Azure: no private /usr, /etc and /tmp for a VM (%s)", line)
            self.stop()
            return False
        self.path = f"/proc/{self.proc.pid}/ns/mnt"
        return True

    def command(self, argv: list[str], cwd: str) -> list[str]:
        """argv run in this namespace, in `cwd` (nsenter(1))."""
        if not self.path:
            return argv
        return [NSENTER, f"--mount={self.path}", f"--wd={cwd}", "--", *argv]

    def enter(self, cwd: str | None) -> None:
        """Join the namespace (in a child between fork and exec), then go to `cwd` again:
        setns moves the caller to the namespace's root."""
        import ctypes

        fd = os.open(self.path, os.O_RDONLY)
        try:
            if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNS) != 0:
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(fd)
        os.chdir(cwd or "/")

    def stop(self) -> None:
        proc, self.proc, self.path = self.proc, None, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            proc.kill()
        with contextlib.suppress(Exception):
            proc.wait(5)
        for stream in (proc.stdin, proc.stdout):
            with contextlib.suppress(Exception):
                stream.close()
