"""Live VMs: every running VM in the ARM model answers SSH on its public IP and has its own
egress to the local Azure and to IMDS.

The fleet follows ARM's lifecycle events (`vm.changed`, `vm.deleted`, `network.changed`) and
reconciles: a running VM gets a home directory, an Ubuntu-like bin folder, an egress proxy that
stamps IMDS requests with the VM's key, and an asyncssh server on its public address while the
NSGs on its path allow inbound TCP 22. Stopping, deallocating or deleting the VM closes them
and ends every process it started, even one that left its session (reaper.py).

Commands run as the emulator's own user in `bash -c`, with the VM's environment and
`SSH_CLIENT`/`SSH_CONNECTION` as sshd sets them, so bash reads `~/.bashrc` as Ubuntu's bash does
for a command run by sshd; the VM's default `~/.bashrc` returns at once for a non-interactive
shell, as Ubuntu's does, so only lines a student puts above that return apply to commands.

Isolation: the local Azure's work directory and each VM's folder are 0700, and each VM's egress
proxy (which carries its IMDS) asks for the VM's own secret (Proxy-Authorization, 407
otherwise), which only the VM's environment carries in its proxy URLs: another local user can
neither read a VM's home nor get a token as its identity. A VM's `sudo` is a shim that runs as
the emulator's own user; when that is root, each VM has its own mount namespace (namespace.py:
overlays on /usr and /etc, a private /tmp), so what its root changes there stays in the VM, and
the grader's probe runs the VM's own `/usr/bin/python3`. Not root: no namespace, and a VM's
`sudo cp x /usr/bin/...` changes the host's files (the tests never do that then).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import ipaddress
import json
import logging
import os
import pty
import re
import secrets
import shutil
import signal
import socket
import struct
import termios
from collections.abc import Awaitable
from pathlib import Path

import asyncssh

from .. import faults
from ..entra.tokens import TokenIssuer
from ..files import write_private
from ..hosts import EMULATED_HOSTS, IMDS_HOST, VM_EXTRA_HOSTS
from ..state import Cloud, arm_key
from ..wire.frontdoor import FrontDoor
from ..wire.network import (
    VM_KEY_HEADER,
    ForwardProxy,
    HttpListener,
)
from . import namespace, reaper, spawn, topology, userland, warmpython
from .imds import Imds

log = logging.getLogger(__name__)

FALLBACK_SSH_PORT = 2222
PROBE_ADDRESS = "127.10.255.254"  # never handed out by Cloud.allocate_ip in practice
ACCEPTED_CLIENT_ENV = re.compile(r"^(LANG|LC_[A-Z]+|TZ)$")  # what Ubuntu's sshd AcceptEnv takes


def can_bind(port: int, host: str = PROBE_ADDRESS) -> bool:
    """Whether this process may listen on that port of a 127.10.x.y address."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def _safe_name(vm: dict) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", str(vm.get("name", "vm")))
    return f"{name}-{secrets.token_hex(3)}"


class LiveVm:
    """One VM's running parts: home, bin folder, egress proxy, SSH server, processes."""

    def __init__(self, fleet: VmFleet, vm_key: str, vm: dict) -> None:
        self.fleet = fleet
        self.vm_key = vm_key  # arm_key of the VM id
        self.vm_id = topology.props(vm).get("vmId")
        self.root = fleet.workdir / _safe_name(vm)
        self.bin = self.root / "bin"
        self.imds_key = secrets.token_urlsafe(24)
        # The egress proxy's password: only the VM's own processes (its environment) know it.
        self.proxy_secret = secrets.token_urlsafe(24)
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.proxy: ForwardProxy | None = None
        self.address: str | None = None
        self._acceptor = None
        self.powered_as: str | None = None  # the ARM JSON power_on last set the VM up for
        self._connections: set = set()
        self._processes: set[spawn.Command] = set()
        self.namespace: namespace.VmNamespace | None = None  # its private /usr, /etc, /tmp

    # -- what the VM is now, read from ARM each time ------------------------------------------
    def arm(self) -> dict | None:
        with self.fleet.cloud.lock:
            return self.fleet.cloud.resources.get(self.vm_key)

    @property
    def admin_username(self) -> str:
        return str((topology.props(self.arm()).get("osProfile") or {}).get("adminUsername", ""))

    @property
    def home(self) -> Path:
        return self.root / "home" / (self.admin_username or "azureuser")

    def authorized_keys(self) -> list[str]:
        linux = (topology.props(self.arm()).get("osProfile") or {}).get("linuxConfiguration") or {}
        return [str(k.get("keyData", "")).strip()
                for k in (linux.get("ssh") or {}).get("publicKeys") or [] if k.get("keyData")]

    def proxy_url(self) -> str:
        """The VM's egress proxy with its credential ("" when the VM is off)."""
        return f"http://milab:{self.proxy_secret}@127.0.0.1:{self.proxy.port}" \
            if self.proxy else ""

    def egress(self) -> dict | None:
        """How the grader's probe reaches Azure from this VM: its proxy (with the credential)
        and the local Azure's CA, and the VM's tools. Grader-side knowledge: never read from
        the VM."""
        if self.proxy is None:
            return None
        return {"proxy": self.proxy_url(), "ca": str(self.fleet.ca_path), "path": str(self.bin)}

    def environment(self) -> dict[str, str]:
        """What a command in this VM sees: its own PATH, proxy and CA; nothing of the host's."""
        proxy = self.proxy_url()
        ca = str(self.fleet.ca_path)
        user = self.admin_username
        return {
            "HOME": str(self.home), "USER": user, "LOGNAME": user,
            "PATH": str(self.bin), "SHELL": userland.host_tool("bash") or "/bin/bash",
            "LANG": "C.UTF-8",
            "http_proxy": proxy, "https_proxy": proxy, "HTTP_PROXY": proxy, "HTTPS_PROXY": proxy,
            "no_proxy": "", "NO_PROXY": "",
            "REQUESTS_CA_BUNDLE": ca, "CURL_CA_BUNDLE": ca, "SSL_CERT_FILE": ca,
            "AZURE_CONFIG_DIR": str(self.home / ".azure"),
        }

    # -- power ----------------------------------------------------------------------------------
    async def power_on(self) -> None:
        vm = self.arm() or {}
        computer = (topology.props(vm).get("osProfile") or {}).get("computerName") or vm.get("name")
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.home, 0o700)
        # Warm interpreter (warmpython.py): the VM's python3 is its client (not on-premises
        # machines: their commands run as another user).
        warm = getattr(self.fleet, "warm", None)
        userland.provision(self.bin, computer_name=str(computer or "vm"),
                           az_cli=self.fleet.az_cli,
                           python3=warm.client(self.root.name) if warm else None)
        self._write_authorized_keys()
        self._write_bashrc(re.sub(r"[^A-Za-z0-9_.-]", "-", str(computer or "vm")))
        if self.namespace is None and namespace.wanted():
            warm_usr = getattr(self.fleet, "warm_usr", None)
            if warm_usr is not None:  # the probe's /usr/bin/python3: the warm client
                warmpython.install_in_usr(self.root / "layers", warm_usr.client(self.root.name))
            held = namespace.VmNamespace(self.root / "layers", namespace.kept_paths(
                self.fleet.workdir, self.fleet.ca_path, self.fleet.az_cli))
            if await asyncio.get_running_loop().run_in_executor(None, held.start):
                self.namespace = held
        if self.proxy is None:
            self.proxy = ForwardProxy(tls_port=self.fleet.tls_port,
                                      allowed=EMULATED_HOSTS + VM_EXTRA_HOSTS,
                                      plain_http=self._plain_http,
                                      faults=self.fleet.cloud.knobs.faults, name="vm",
                                      secret=self.proxy_secret,
                                      tunnel=self.fleet.tls_tunnel)
            await self.proxy.start()

    def _plain_http(self, host: str) -> tuple[int, dict[str, str]] | None:
        # The proxy drops a client-sent key header and adds the real one, so no VM can pose as
        # another.
        if host == IMDS_HOST:
            return self.fleet.imds_port, {VM_KEY_HEADER: self.imds_key}
        return None

    def _write_bashrc(self, computer: str) -> None:
        # As on an Ubuntu image, a shell that is not interactive (an SSH command) stops at the
        # top; interactive ones get a prompt naming the VM, not the host (root@<container>).
        rc = self.home / ".bashrc"
        if not rc.exists():
            rc.write_text("# ~/.bashrc of a local Azure VM, read by every bash sshd starts.\n"
                          "# Not interactive (a command run over SSH): nothing more to do.\n"
                          "case $- in\n    *i*) ;;\n      *) return;;\nesac\n\n"
                          f"PS1='${{USER}}@{computer}:\\w$ '\n")

    def _write_authorized_keys(self) -> None:
        ssh_dir = self.home / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text("".join(k + "\n" for k in self.authorized_keys()))

    async def power_off(self) -> None:
        await self.set_listening(None)
        for conn in list(self._connections):
            conn.close()
        for proc in list(self._processes):
            _kill(proc)
        for warm in (getattr(self.fleet, "warm", None), getattr(self.fleet, "warm_usr", None)):
            if warm is not None:  # warm interpreter (warmpython.py)
                warm.stop_vm(self.root.name)
        self.end_processes()
        if self.namespace is not None:
            self.namespace.stop()
            self.namespace = None
        if self.proxy is not None:
            await self.proxy.stop()
            self.proxy = None

    def spawned(self) -> set[int]:
        """Processes whose exit status the emulator itself waits for."""
        return {proc.pid for proc in self._processes}

    def end_processes(self) -> int:
        """Kill every process this VM started, left its session or not (reaper.py)."""
        return reaper.end_processes(self.spawned(), self.root, spawned=self.spawned())

    # -- SSH ----------------------------------------------------------------------------------
    async def set_listening(self, address: str | None) -> None:
        """Listen for SSH on this address (None: do not listen, so connections are refused)."""
        if address == self.address and (address is None) == (self._acceptor is None):
            return
        if self._acceptor is not None:
            self._acceptor.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._acceptor.wait_closed(), 2)
            self._acceptor = None
            self._publish_egress(self.address, None)
            self.address = None
        if address is None:
            return
        self._acceptor = await asyncssh.listen(
            address, self.fleet.ssh_port, reuse_address=True,
            server_factory=lambda: _SshServer(self), server_host_keys=[self.host_key],
            process_factory=self._serve, encoding=None, line_editor=False,
            agent_forwarding=False, x11_forwarding=False, allow_scp=False)
        self.address = address
        self._publish_egress(address, self.egress())

    def _publish_egress(self, address: str | None, egress: dict | None) -> None:
        """The VM's egress for a grader in another process (`MILAB_EGRESS_DIR`): one file per
        SSH address, readable by the local Azure's user only."""
        directory = self.fleet.egress_dir
        if directory is None or not address:
            return
        path = directory / f"{address}.json"
        if egress is None:
            path.unlink(missing_ok=True)
            return
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(path, json.dumps(egress))

    async def _serve(self, process: asyncssh.SSHServerProcess) -> None:
        delay = self.fleet.cloud.knobs.faults.hang_for(self.arm() or {})
        if delay and await faults.hang(delay, process.wait_closed()):
            return  # the client gave up on a hanging command
        if process.subsystem:
            process.stderr.write(f"subsystem {process.subsystem} is not available\n".encode())
            process.exit(1)
            return
        env = self.environment()
        for name, value in (process.env or {}).items():
            name = name.decode() if isinstance(name, bytes) else name
            if ACCEPTED_CLIENT_ENV.match(name):
                env[name] = value.decode() if isinstance(value, bytes) else value
        peer = process.get_extra_info("peername") or ("", 0)
        # As sshd sets them; bash seeing SSH_CLIENT reads ~/.bashrc even for a command (Debian
        # and Ubuntu build bash so).
        env["SSH_CLIENT"] = f"{peer[0]} {peer[1]} {self.fleet.ssh_port}"
        env["SSH_CONNECTION"] = f"{peer[0]} {peer[1]} {self.address} {self.fleet.ssh_port}"
        bash = userland.host_tool("bash") or "/bin/bash"
        command = process.command
        term = process.get_terminal_type()
        if term:
            env["TERM"] = term
            argv = [bash, "-c", command] if command is not None else [bash, "-i"]
            rc = await self._run_pty(process, argv, env)
        else:
            argv = [bash, "-c", command] if command is not None else [bash]
            rc = await self._run_pipes(process, argv, env)
        with contextlib.suppress(Exception):
            process.exit(rc)

    def _spawn_options(self, *, tty: int | None) -> dict:
        """How the session's process starts (a machine outside Azure drops privileges): in a
        session of its own, whose controlling terminal is `tty` (the pty's slave) if given."""
        if tty is None:
            return {"start_new_session": True}
        return {"preexec_fn": functools.partial(_take_controlling_tty, tty)}

    def _in_namespace(self, argv: list[str]) -> list[str]:
        """The command as run in the VM's mount namespace, if it has one (nsenter: the spawn
        stays a vfork, where a preexec_fn would fork the whole emulator)."""
        held = self.namespace
        return held.command(argv, str(self.home)) if held is not None else argv

    async def _run_pipes(self, process, argv: list[str], env: dict[str, str]) -> int:
        proc = await spawn.start(
            self._in_namespace(argv), stdin=spawn.PIPE, stdout=spawn.PIPE, stderr=spawn.PIPE,
            cwd=self.home, env=env, **self._spawn_options(tty=None))
        self._processes.add(proc)
        feeder = asyncio.ensure_future(_feed_stdin(process, proc))
        watcher = asyncio.ensure_future(_kill_when_closed(process, proc))
        try:
            await asyncio.gather(_pump(proc.stdout, process.stdout),
                                 _pump(proc.stderr, process.stderr))
            return _exit_code(await proc.wait())
        finally:
            feeder.cancel()
            watcher.cancel()
            _kill(proc)
            self._processes.discard(proc)

    async def _run_pty(self, process, argv: list[str], env: dict[str, str]) -> int:
        master, slave = pty.openpty()
        width, height, _, _ = process.get_terminal_size()
        if width and height:
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))
        proc = await spawn.start(
            self._in_namespace(argv), stdin=slave, stdout=slave, stderr=slave, cwd=self.home, env=env,
            **self._spawn_options(tty=slave))
        os.close(slave)
        self._processes.add(proc)
        loop = asyncio.get_running_loop()
        output_done = loop.create_future()

        def readable() -> None:
            try:
                data = os.read(master, 65536)
            except OSError:
                data = b""
            if data:
                process.stdout.write(data)
            else:
                loop.remove_reader(master)
                if not output_done.done():
                    output_done.set_result(None)

        loop.add_reader(master, readable)

        async def feed() -> None:
            with contextlib.suppress(Exception):
                while data := await process.stdin.read(65536):
                    os.write(master, data)

        feeder = asyncio.ensure_future(feed())
        watcher = asyncio.ensure_future(_kill_when_closed(process, proc))
        try:
            rc = _exit_code(await proc.wait())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(output_done, 1)
            return rc
        finally:
            loop.remove_reader(master)
            feeder.cancel()
            watcher.cancel()
            _kill(proc)
            os.close(master)
            self._processes.discard(proc)


def _take_controlling_tty(slave: int) -> None:
    """In the child before exec: a new session whose controlling terminal is the pty `slave`."""
    os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)


def _exit_code(returncode: int) -> int:
    return returncode if returncode >= 0 else 128 - returncode  # killed by a signal, as bash says


def _kill(proc: spawn.Command) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


async def _pump(reader: asyncio.StreamReader, writer) -> None:
    while data := await reader.read(65536):
        try:
            writer.write(data)
            await writer.drain()
        except (BrokenPipeError, ConnectionError, asyncssh.Error):
            # The client went away; keep draining so the command is not blocked on a full pipe.
            continue


async def _feed_stdin(process, proc: spawn.Command) -> None:
    try:
        while data := await process.stdin.read(65536):
            proc.stdin.write(data)
            await proc.stdin.drain()
    except (BrokenPipeError, ConnectionError, asyncssh.Error):
        pass
    finally:
        with contextlib.suppress(Exception):
            proc.stdin.close()


async def _kill_when_closed(process, proc: spawn.Command) -> None:
    """A client that drops the channel takes its command down with it, as sshd does."""
    await process.wait_closed()
    _kill(proc)


class _SshServer(asyncssh.SSHServer):
    """Public-key login only, for the VM's admin user with a key from its osProfile."""

    def __init__(self, vm: LiveVm) -> None:
        self.vm = vm
        self.conn = None

    def connection_made(self, conn) -> None:
        self.conn = conn
        self.vm._connections.add(conn)
        self.vm.fleet.ssh_connections += 1

    def connection_lost(self, exc) -> None:
        self.vm._connections.discard(self.conn)

    def begin_auth(self, username: str) -> bool | Awaitable[bool]:
        delay = self.vm.fleet.cloud.knobs.latency.get("ssh_handshake", 0.0)
        return faults.after(delay, True) if delay else True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str,
                             orig_port: int) -> bool:
        """A client using this VM as a jump host (ssh -J, ProxyJump: a direct-tcpip channel)
        may reach the SSH address of a VM of this local Azure, and nothing else. True lets
        asyncssh open that connection itself (asyncssh's SSHServer.connection_requested); a
        VM's address that does not answer now (stopped, NSG closed) is refused as sshd would.
        The connection is opened here rather than by asyncssh (`True`): see `_forward`."""
        fleet = self.vm.fleet
        if fleet.serves_ssh(dest_host, dest_port):
            fleet.forwarded.append((self.vm.address, dest_host, dest_port))
            return _forward(dest_host, dest_port)
        if fleet.serves_ssh(dest_host, dest_port, now=False):
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "Connection refused")
        # As sshd answers a destination its PermitOpen leaves out (asyncssh's plain False
        # would read as the destination refusing).
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                                        "open failed: not a VM of this local Azure")

    def validate_public_key(self, username: str, key) -> bool:
        if username != self.vm.admin_username:
            return False
        offered = key.public_data
        for text in self.vm.authorized_keys():
            with contextlib.suppress(Exception):
                if asyncssh.import_public_key(text).public_data == offered:
                    return True
        return False


async def _forward(host: str, port: int) -> asyncssh.SSHForwarder:
    """A jump host's direct-tcpip channel to host:port, as asyncssh's own forwarding does, except
    that what the destination sends before the channel is open reaches the client. asyncssh
    keeps such bytes (the destination's SSH banner, sent as soon as it accepts) where nothing
    ever passes them on; whether any arrive that early depends on the loop's order of callbacks
    (on uvloop's they do: it starts reading right after connection_made, paused or not)."""
    try:
        transport, held = await asyncio.get_running_loop().create_connection(
            _HeldForwarder, host, port)
    except OSError as exc:
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, str(exc)) from None
    transport.pause_reading()  # until the channel is open
    return _ChannelForwarder(held)


class _HeldForwarder(asyncssh.SSHForwarder):
    """The destination's side of a jump: keeps what it reads until the channel is open."""

    def __init__(self) -> None:
        super().__init__()
        self._early: list[bytes] | None = []  # None once the channel is open
        self._early_eof = False
        self._lost = False

    def connection_lost(self, exc) -> None:
        self._lost = True
        super().connection_lost(exc)

    def data_received(self, data: bytes, datatype=None) -> None:
        if self._early is None:
            super().data_received(data, datatype)
        else:
            self._early.append(data)

    def eof_received(self) -> bool:
        if self._early is None:
            return super().eof_received()
        self._early_eof = True
        return True

    def channel_open(self, channel: asyncssh.SSHForwarder) -> None:
        early, self._early = self._early or [], None
        for data in early:
            channel.write(data)
        if self._early_eof:
            super().eof_received()
        elif not self._lost:
            self.resume_reading()


class _ChannelForwarder(asyncssh.SSHForwarder):
    """The channel's side of a jump: once open, gets what the destination said before."""

    def __init__(self, held: _HeldForwarder) -> None:
        super().__init__(held)
        self._held = held

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._held.channel_open(self)


class VmFleet:
    """Every live VM of one local Azure, and the IMDS they share."""

    def __init__(self, cloud: Cloud, tokens: TokenIssuer, *, workdir: Path, ca_path: Path,
                 tls_port: int, ssh_port: int | None = None,
                 az_cli: Path | None = None, signer=None) -> None:
        self.cloud = cloud
        self.tokens = tokens
        self.workdir = workdir
        self.ca_path = ca_path
        self.tls_port = tls_port
        self.az_cli = az_cli
        # Port 22 on each VM's own address when this process may bind it; otherwise one fixed
        # unprivileged port (`ssh_port`, MILAB_SSH_PORT) shared by all VMs, each on its address.
        self.ssh_port = 22 if can_bind(22) else (ssh_port or FALLBACK_SSH_PORT)
        self.imds = Imds(cloud, tokens, self.vm_for_imds_key, signer)
        self.imds_port = 0
        self.egress_dir: Path | None = None  # where each VM's egress is published (LocalAzure)
        self.tls_tunnel = None  # serves an egress proxy's tunnel in-process (LocalAzure)
        self._listener: HttpListener | None = None
        self._live: dict[str, LiveVm] = {}
        self.errors: list[str] = []  # VMs that failed to come alive, for tests and diagnostics
        self._deleted: set[str] = set()
        self._dirty = False
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.ssh_connections = 0  # SSH connections accepted by any VM (benchmarks count them)
        # Connections let through a VM used as a jump host: (its address, destination, port).
        self.forwarded: list[tuple[str | None, str, int]] = []
        # Warm interpreter (warmpython.py): one fork server for the VMs' `python3 -I -S`.
        warm = warmpython.WarmPython(workdir / "warm") if warmpython.enabled() else None
        self.warm = warm if warm is not None and warm.usable() else None
        # Where each VM has its own /usr: a second one, the host's /usr/bin/python3, whose
        # client is the VMs' /usr/bin/python3 (the probe's).
        self.warm_usr = (warmpython.for_private_usr(workdir / "warm-usr")
                         if self.warm is not None and namespace.wanted() else None)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        with self.cloud.lock:
            if self.cloud.next_public_ip == 0:
                # Each local Azure starts in its own block of 127.10.x.y, so parallel runs on one
                # machine (pytest-xdist workers) rarely meet; addresses in use are skipped anyway.
                self.cloud.next_public_ip = secrets.randbelow(200) * 250
            self.cloud.address_taken = lambda address: not can_bind(self.ssh_port, address)
        self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)
        # Orphans of the VMs' commands come back to this process, where they can be ended.
        reaper.become_subreaper()
        if self.warm is not None:  # warm interpreter (warmpython.py)
            self.warm.start()
            if self.warm_usr is not None:
                self.warm_usr.native = self.warm.native  # the same program, compiled once
                self.warm_usr.start()
        self._listener = HttpListener(FrontDoor(self.cloud, {"*": ("imds", self.imds.app())}))
        await self._listener.start()
        self.imds_port = self._listener.port
        self.cloud.listeners.append(self.on_event)
        self.cloud.knobs.faults.subscribe(self._faults_changed)
        self._schedule()
        await self.settled()

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            self.cloud.listeners.remove(self.on_event)
        self.cloud.knobs.faults.unsubscribe(self._faults_changed)
        if self._task is not None:
            self._task.cancel()
        for live in list(self._live.values()):
            with contextlib.suppress(Exception):
                await live.power_off()
        self._live.clear()
        for warm in (self.warm, self.warm_usr):
            if warm is not None:  # warm interpreter (warmpython.py)
                warm.stop()
        if self._listener is not None:
            await self._listener.stop()

    # -- lookups --------------------------------------------------------------------------------
    def vm_for_imds_key(self, key: str) -> str | None:
        for vm_key, live in self._live.items():
            if live.proxy is not None and secrets.compare_digest(live.imds_key, key):
                return vm_key
        return None

    def serves_ssh(self, host: str, port: int, *, now: bool = True) -> bool:
        """Whether a VM of this fleet answers SSH at that loopback address and port now (or,
        `now` False, is a VM's public address, listening or not)."""
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False
        if not loopback or port != self.ssh_port:
            return False
        if now:
            return any(live.address == host for live in list(self._live.values()))
        with self.cloud.lock:
            vms = [vm for vm in self.cloud.resources.values() if topology.is_vm(vm)]
        return any((topology.ssh_address(self.cloud, vm) or (None,))[0] == host for vm in vms)

    def live(self, vm_id: str) -> LiveVm | None:
        """The running parts of a VM (by ARM id), if it is running."""
        return self._live.get(arm_key(vm_id))

    def at_address(self, host: str) -> LiveVm | None:
        """The running VM that answers SSH at that address, if any."""
        for live in list(self._live.values()):
            if live.address == host and live.proxy is not None:
                return live
        return None

    # -- following ARM --------------------------------------------------------------------------
    def on_event(self, event: str, resource: dict) -> None:
        """A Cloud listener: called in the emulator's loop thread by ARM's handlers."""
        rid = arm_key(str((resource or {}).get("id", "")))
        if event == "vm.deleted":
            self._deleted.add(rid)
        elif event == "vm.changed":
            self._deleted.discard(rid)
        elif event != "network.changed":
            return
        try:
            asyncio.get_running_loop()
            self._schedule()
        except RuntimeError:  # called from another thread after all
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._schedule)

    def _faults_changed(self) -> None:
        """Faults changed (from any thread): SSH refusal may open or close listeners."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._schedule)

    def _schedule(self) -> None:
        self._dirty = True
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._reconcile_loop())

    async def settled(self) -> None:
        """Wait until the fleet matches the ARM model as of now."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def _reconcile_loop(self) -> None:
        while self._dirty:
            self._dirty = False
            await self._reconcile()

    def _running_vms(self) -> dict[str, dict]:
        with self.cloud.lock:
            return {key: vm for key, vm in self.cloud.resources.items()
                    if topology.is_vm(vm) and key not in self._deleted
                    and self.cloud.vm_power.get(key, "running") == "running"}

    async def _reconcile(self) -> None:
        running = self._running_vms()
        for key in list(self._live):
            live = self._live[key]
            vm = running.get(key)
            if vm is None or topology.props(vm).get("vmId") != live.vm_id:
                await live.power_off()
                if vm is not None or key in self._deleted or self._gone(key):
                    # Deleted (or recreated under the same name): its disk goes with it.
                    shutil.rmtree(live.root, ignore_errors=True)
                    del self._live[key]
                    continue
        for key, vm in running.items():
            live = self._live.get(key)
            if live is None:
                live = self._live[key] = LiveVm(self, key, vm)
            try:
                # A VM already up whose ARM JSON is unchanged needs no new home, keys or bin
                # folder (so a class of VMs does not cost O(VMs) file work per ARM write).
                seen = json.dumps(vm, sort_keys=True, default=str)
                if live.proxy is None or live.powered_as != seen:
                    await live.power_on()
                    live.powered_as = seen
                await live.set_listening(self._ssh_target(vm))
            except Exception as exc:  # one broken VM must not stop the fleet following ARM
                log.warning("local Azure: VM %s could not start: %r", vm.get("name"), exc)
                self.errors.append(f"{vm.get('name')}: {exc!r}")

    def _gone(self, key: str) -> bool:
        with self.cloud.lock:
            return key not in self.cloud.resources

    def _ssh_target(self, vm: dict) -> str | None:
        found = topology.ssh_address(self.cloud, vm)
        if found is None:
            return None
        address, nic = found
        refused_for = self.cloud.knobs.faults.ssh_refused_for(vm)
        if refused_for:  # closed for now (Faults.ssh_refuse); reconcile again when it ends
            self._loop.call_later(refused_for, self._schedule)
            return None
        return address if topology.ssh_allowed(self.cloud, nic, 22) else None
