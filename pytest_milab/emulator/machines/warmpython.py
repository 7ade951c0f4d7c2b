"""A warm interpreter for the local Azure's VMs (one fork server per local Azure).

On Azure a VM's commands run on other machines; here they cost the host's CPU. Each grader's
probe is a fresh `python3 -I -S -c <kit>` in the VM, and most of what that costs is starting the
interpreter and importing ssl, http.client, json and the like. So each local Azure keeps one
interpreter with those modules imported (warmpython_server.py, started as a fresh `python3 -I -S`
process, not a fork of the emulator) and each VM's `python3` is a small client of it
(warmpython_client.py): a run with `-I -S` (`-c`, a script, `-` or stdin) is a child forked from
the server with the client's argv, environment, working directory, umask and file descriptors;
anything else (site packages, `-m`, other options, a terminal) execs the real interpreter, as
the plain shim did. The client is native (warmpython_client.c, compiled once per local Azure)
when the host has a C compiler, else the same in Python (about 10 ms more CPU per run, a bare
interpreter's start). The client ends as the program ended (its exit code, or the same signal); a
client that dies, or whose SSH channel closes, takes its program down with it.

One server for all VMs of a local Azure: its children inherit nothing but the server's clean
state (the VMs already run as one host user). Stopping a VM kills the children its clients
started (`stop_vm`); stopping the local Azure stops the server and every child.

Where a VM has its own /usr (namespace.py: the local Azure runs as root), the grader's probe runs
`/usr/bin/python3`, not the PATH's: so a second server, started as the host's /usr/bin/python3,
has its client written into the VM's /usr overlay upper layer as `usr/bin/python3`
(`install_in_usr`; the real versioned binary, e.g. /usr/bin/python3.11, is its fallback, so the
client never execs itself). The VM's root can still replace or delete it, as on a real VM, and
what they put there is kept across restarts. Every client hands the server its mount namespace:
the forked child joins it (setns(2); the server runs as root) and goes to the client's working
directory, so the program sees the VM's /usr, /etc and /tmp. The modules the server imported
are the host's: a VM whose root edited its /usr/lib/python3.* sees those edits only in the real
interpreter (a run the server cannot take, or with the client replaced).

`MILAB_WARM_PYTHON=0` turns it off (the VM's python3 is then the plain shim);
`MILAB_WARM_PYTHON=python` keeps the Python client even where the native one could be built.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

SERVER = Path(__file__).with_name("warmpython_server.py")
CLIENT = Path(__file__).with_name("warmpython_client.py")
NATIVE_CLIENT = Path(__file__).with_name("warmpython_client.c")
NATIVE_MARKER = b"MILAB-WARM-CONFIG\n"  # where the native client's configuration goes
NATIVE_CONFIG_SIZE = 1024
SHEBANG_MAX = 250  # Linux reads 256 bytes of a script's first line
HOST_PATH = "/usr/local/bin:/usr/bin:/bin"
HOST_PYTHON = "/usr/bin/python3"  # what a VM's /usr/bin/python3 is on the host
CLIENT_RECORD = "warm-python3.sha256"  # in a VM's layers folder: the client last written there


def enabled() -> bool:
    return os.environ.get("MILAB_WARM_PYTHON", "1") != "0"


class WarmPython:
    """The fork server of one local Azure and the client its VMs run as `python3`."""

    def __init__(self, run_dir: Path, interpreter: str | None = None,
                 real: str | None = None) -> None:
        self.run_dir = run_dir
        self.interpreter = interpreter or sys.executable  # the server's
        self.real = real or self.interpreter  # what a client execs when the server cannot run it
        self.socket_path = run_dir / "warm-python.sock"
        self.proc: subprocess.Popen | None = None
        self.native: bytes | None = None  # the compiled client, unconfigured

    def usable(self) -> bool:
        """Whether a VM's python3 can be this client: a first line `#!INTERPRETER -IS`."""
        line = f"#!{os.path.realpath(self.real)} -IS"
        return (len(line) <= SHEBANG_MAX and not re.search(r"\s", line[2:-4])
                and len(str(self.socket_path)) < 100)  # sun_path holds 108 bytes

    def start(self) -> None:
        """Start the server (without waiting: until it listens, clients run the real one)."""
        if self.proc is not None:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        if self.native is None:  # (another server's may have been handed over)
            self.native = self._compile()
        log = open(self.run_dir / "warm-python.log", "ab")  # noqa: SIM115 - the child's stderr
        try:
            self.proc = subprocess.Popen(
                [self.interpreter, "-I", "-S", str(SERVER), str(self.socket_path)],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log,
                env={"LANG": "C.UTF-8", "PATH": "/usr/bin:/bin"}, cwd="/",
                start_new_session=True, close_fds=True)
        finally:
            log.close()

    def ready(self, timeout: float = 10) -> bool:
        """Wait until the server listens (for tests and measurements)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.socket_path.exists():
                return True
            if self.proc is None or self.proc.poll() is not None:
                return False
            time.sleep(0.01)
        return False

    def _compile(self) -> bytes | None:
        """The native client, compiled with the host's C compiler (None: there is none, or it
        failed: the Python client is used)."""
        compiler = shutil.which("cc", path=HOST_PATH) or shutil.which("gcc", path=HOST_PATH)
        if compiler is None or os.environ.get("MILAB_WARM_PYTHON") == "python":
            return None
        output = self.run_dir / "python3-client"
        try:
            subprocess.run([compiler, "-O2", "-o", str(output), str(NATIVE_CLIENT)],
                           check=True, capture_output=True, timeout=60, cwd=self.run_dir)
            binary = output.read_bytes()
        except (OSError, subprocess.SubprocessError):
            return None
        return binary if binary.count(NATIVE_MARKER) == 1 else None

    def client(self, tag: str) -> str | bytes:
        """The VM's `python3`: the native client configured for this VM, else the script."""
        if self.native is None:
            return self.client_script(tag)
        config = b"\0".join(os.fsencode(str(part)) for part in (
            self.socket_path, self.real, tag)) + b"\0"
        if len(NATIVE_MARKER) + len(config) > NATIVE_CONFIG_SIZE:
            return self.client_script(tag)
        at = self.native.index(NATIVE_MARKER) + len(NATIVE_MARKER)
        return self.native[:at] + config + self.native[at + len(config):]

    def client_script(self, tag: str) -> str:
        """The VM's `python3`: the client with this server, this interpreter and the VM's tag."""
        text = CLIENT.read_text()
        # The interpreter's real path: the VM may see this client as /usr/bin/python3.
        text = text.replace("#!/usr/bin/python3 -IS",
                            f"#!{os.path.realpath(self.real)} -IS", 1)
        text = re.sub(r'^REAL = .*$', f"REAL = {str(self.real)!r}", text, count=1,
                      flags=re.M)
        text = re.sub(r'^SOCKET = .*$', f"SOCKET = {str(self.socket_path)!r}", text, count=1,
                      flags=re.M)
        return re.sub(r'^TAG = .*$', f"TAG = {tag.encode()!r}", text, count=1, flags=re.M)

    def stop_vm(self, tag: str) -> None:
        """Kill what the VM with this tag runs in the warm interpreter (the VM stops)."""
        self._order(f"stop {tag}\n".encode())

    def _order(self, line: bytes) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.write(line)
                self.proc.stdin.flush()

    def cpu_seconds(self) -> float:
        """CPU of the server and the children it has reaped (a measurement's view)."""
        if self.proc is None:
            return 0.0
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """Stop the server and every program it runs (its stdin closes)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()


def for_private_usr(run_dir: Path) -> WarmPython | None:
    """The server whose client is a VM's own /usr/bin/python3: started as the host's
    /usr/bin/python3, its clients falling back to the real versioned binary behind it (None:
    the host has no /usr/bin/python3)."""
    real = os.path.realpath(HOST_PYTHON)
    if not (os.path.isfile(real) and os.access(real, os.X_OK)):
        return None
    warm = WarmPython(run_dir, interpreter=HOST_PYTHON, real=real)
    return warm if warm.usable() else None


def install_in_usr(layers: Path, client: str | bytes) -> bool:
    """Write the client as `usr/bin/python3` of a VM's /usr upper layer (`layers`: the VM's
    layers folder, namespace.py), before its overlay is mounted. Whatever else is there (the
    VM's root replaced or deleted /usr/bin/python3) is kept, as a disk keeps it: only a missing
    entry or the client written last time (its digest is recorded) is replaced. True if
    written."""
    data = client.encode() if isinstance(client, str) else client
    upper_bin = layers / "usr" / "upper" / "bin"
    target, record = upper_bin / "python3", layers / CLIENT_RECORD
    if os.path.lexists(target):
        try:
            ours = (target.is_file() and not target.is_symlink() and record.is_file()
                    and hashlib.sha256(target.read_bytes()).hexdigest() == record.read_text())
        except OSError:
            ours = False
        if not ours:
            return False
    layers.mkdir(mode=0o700, parents=True, exist_ok=True)
    for folder in (layers / "usr", layers / "usr" / "upper", upper_bin):  # as namespace.py
        folder.mkdir(mode=0o755, exist_ok=True)  # makes them (the upper root is /usr's mode)
    tmp = upper_bin / ".python3.milab-tmp"
    tmp.write_bytes(data)
    tmp.chmod(0o755)
    os.replace(tmp, target)
    record.write_text(hashlib.sha256(data).hexdigest())
    return True
