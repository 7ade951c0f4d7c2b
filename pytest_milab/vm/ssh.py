"""One SSH connection per VM, made with Fabric: the grader's ssh config honoured as Fabric reads
it (Host aliases, HostName, User, Port, IdentityFile, ProxyJump), host keys checked against
known_hosts, opened lazily, waited for while the VM refuses connections, reconnected once,
closed when the lab's checks are done.

Fabric (its `Connection`, see Fabric's "Connection" and "Configuration" documentation) finds out
where and how to connect and opens the paramiko client and transport, through the jump hosts if
any. Commands do not go through Fabric's runners (two I/O threads per command): each runs on one
raw channel of the connection, with no polling, and what it prints is capped.
"""

from __future__ import annotations

import functools
import os
import socket
import threading
import time
from dataclasses import dataclass

from ..errors import CommandTimedOut, ConfigError, SshError
from ..retry import backoff

# An open connection's transport thread wakes this often to notice it was closed (paramiko's
# default is 0.1 s: with a class's VMs all connected, thousands of wake-ups a second).
IDLE_CHECK = 1.0
# What a command may return: stdout and stderr each keep at most this many bytes; the rest is
# read and dropped, so a VM printing gigabytes cannot exhaust the grader's memory.
OUTPUT_CAP = 1 << 20
# known_hosts files when the ssh config names none (UserKnownHostsFile, GlobalKnownHostsFile).
USER_KNOWN_HOSTS = "~/.ssh/known_hosts"
GLOBAL_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"


@dataclass(frozen=True)
class CommandResult:
    exit_code: int
    stdout: str
    stderr: str
    truncated: bool = False  # stdout or stderr was longer than OUTPUT_CAP and was cut there

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass(frozen=True)
class SshTarget:
    """Where to connect. `host` may be an alias of the ssh config; `user`, `port` and
    `key_filename`, when given, win over what the config says for that host. Without a key,
    the config's IdentityFile, the default keys and the agent are tried, as Fabric does.
    `ssh_config`: the ssh config file to read instead of ~/.ssh/config and /etc/ssh/ssh_config."""

    host: str
    user: str | None = None
    port: int | None = None
    key_filename: str | None = None
    ssh_config: str | None = None

    def describe(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"{user}{self.host}{port}"


def _is_refusal(exc: BaseException) -> bool:
    """The VM does not answer (student side), as opposed to the grader failing to log in."""
    import paramiko

    if isinstance(exc, (ConnectionRefusedError, socket.timeout, TimeoutError)):
        return True
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return True
    if isinstance(exc, paramiko.ChannelException):
        # A jump host could not reach the VM; "administratively prohibited" is the jump host's
        # own refusal to forward (the grader's side).
        return exc.code == paramiko.common.OPEN_FAILED_CONNECT_FAILED
    if isinstance(exc, OSError) and not isinstance(exc, paramiko.SSHException):
        return True
    return False


@functools.cache
def _host_key_policy_class():
    import paramiko

    class RecordUnknownHostKey(paramiko.MissingHostKeyPolicy):
        """A host key that known_hosts does not list is accepted for this connection only and
        remembered (`unknown`); nothing is written to any known_hosts file. A key that differs
        from the listed one never gets here: paramiko refuses it (BadHostKeyException)."""

        def __init__(self) -> None:
            self.unknown = None

        def missing_host_key(self, client, hostname, key) -> None:
            self.unknown = key

    return RecordUnknownHostKey


def _known_hosts_files(ssh_config) -> list[str]:
    """The known_hosts files ssh would read for this host: the config's UserKnownHostsFile and
    GlobalKnownHostsFile (each may list several files), else the usual ones."""
    files: list[str] = []
    for key, default in (("userknownhostsfile", USER_KNOWN_HOSTS),
                         ("globalknownhostsfile", GLOBAL_KNOWN_HOSTS)):
        files += [os.path.expanduser(f) for f in str(ssh_config.get(key, default)).split()]
    return files


def _chain(conn):
    """The Fabric connection and its jump hosts (ProxyJump), nearest the grader last."""
    import fabric

    out = []
    while isinstance(conn, fabric.Connection):
        out.append(conn)
        conn = conn.gateway
    return out


def _fabric_connection(target: SshTarget, connect_timeout: float):
    """A Fabric Connection for the target, configured but not opened, and the host key policy
    of its client (the jump hosts' clients have their own)."""
    import fabric

    where = target.describe()
    try:
        config = (fabric.Config(runtime_ssh_path=os.path.expanduser(target.ssh_config))
                  if target.ssh_config else fabric.Config())
    except FileNotFoundError:
        raise ConfigError(f"ssh config {target.ssh_config}: no such file") from None
    except Exception as exc:
        raise SshError(f"SSH to {where}: the ssh config cannot be read ({_why(exc)})") from None
    timeouts = {"banner_timeout": connect_timeout, "auth_timeout": connect_timeout}
    kwargs = dict(timeouts)
    if target.key_filename:
        kwargs.update(look_for_keys=False, allow_agent=False)
    try:
        conn = fabric.Connection(target.host, user=target.user, port=target.port, config=config,
                                 connect_kwargs=kwargs)
    except Exception as exc:
        raise SshError(f"SSH to {where}: the ssh config cannot be used ({_why(exc)})") from None
    if target.key_filename:
        # The target's key only (Fabric would add the config's IdentityFile after it).
        conn.connect_kwargs["key_filename"] = [os.path.expanduser(target.key_filename)]
    for hop in _chain(conn):
        if "connecttimeout" not in hop.ssh_config:
            hop.connect_timeout = connect_timeout
        if hop is not conn:
            hop.connect_kwargs = {**hop.connect_kwargs, **timeouts}
        for path in _known_hosts_files(hop.ssh_config):
            if os.path.isfile(path):
                try:
                    hop.client.load_system_host_keys(path)
                except Exception as exc:  # unreadable, or a line paramiko cannot decode
                    raise SshError(f"SSH to {where}: known_hosts file {path} cannot be read "
                                   f"({_why(exc)})") from None
    policy = _host_key_policy_class()()
    for hop in _chain(conn):
        # Fabric's own policy adds unknown keys silently: record them instead.
        hop.client.set_missing_host_key_policy(policy if hop is conn
                                               else _host_key_policy_class()())
    return conn, policy


class VmConnection:
    """A lazily opened SSH connection (one Fabric Connection, kept) with one reconnect on a
    broken transport.

    `host_key`, once connected: the VM's host key as {"type", "sha256", "known"}; known is False
    when no known_hosts file listed the host (the key was accepted for this connection only)."""

    def __init__(self, target: SshTarget, *, connect_timeout: float = 15.0,
                 command_timeout: float = 300.0, refused_for: float = 5.0) -> None:
        self.target = target
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        # A VM refusing connections may still be booting (or sshd restarting): keep trying
        # for this long before concluding it does not answer.
        self.refused_for = refused_for
        self._fabric = None  # the fabric.Connection, made on first use
        self._policy = None  # its client's host key policy
        self._lock = threading.Lock()
        self.connections_opened = 0
        self.refused_seconds = 0.0  # how long the last connect() was refused before it gave up
        self.host_key: dict | None = None

    @property
    def _client(self):
        return self._fabric.client if self._fabric is not None else None

    @property
    def is_connected(self) -> bool:
        transport = self._client.get_transport() if self._client is not None else None
        return transport is not None and transport.is_active()

    def _open(self) -> None:
        import paramiko

        if self._fabric is None:
            self._fabric, self._policy = _fabric_connection(self.target, self.connect_timeout)
        conn = self._fabric
        where = self._where()
        hops = _chain(conn)
        self._policy.unknown = None
        gateway = conn.gateway
        try:
            if hops[1:]:
                try:
                    gateway.open()  # the jump hosts first: their failure is the grader's side
                    gateway.transport.channel_timeout = self.connect_timeout
                except Exception as exc:
                    raise _JumpHostFailed(exc) from exc
            conn.open()
        except Exception as exc:
            self._close_fabric()
            if isinstance(exc, _JumpHostFailed):
                exc = exc.cause
                if isinstance(exc, paramiko.BadHostKeyException):
                    raise SshError(_changed_key(exc, where)) from None
                raise SshError(f"SSH to {where} failed at the jump host ({_why(exc)}); check "
                               "the ssh config's ProxyJump host") from None
            if isinstance(exc, paramiko.BadHostKeyException):
                raise SshError(_changed_key(exc, where)) from None
            if _is_refusal(exc):
                raise SshError(f"the machine does not answer SSH at {where} ({_why(exc)})",
                               refused=True) from None
            raise SshError(f"SSH login to {where} failed ({_why(exc)}); check the SSH user and "
                           "key (--milab-ssh-user, --milab-ssh-key, the ssh config)") from None
        for hop in hops:
            transport = hop.client.get_transport()
            if transport is not None and transport.sock is not None:
                transport.sock.settimeout(IDLE_CHECK)
        key = conn.client.get_transport().get_remote_server_key()
        self.host_key = {"type": key.get_name(), "sha256": key.fingerprint,
                         "known": self._policy.unknown is None}
        self.connections_opened += 1

    @property
    def resolved_host(self) -> str:
        """The address the ssh config resolved the target to (HostName), once connected."""
        conn = self._fabric
        return str(conn.host) if conn is not None else self.target.host

    def _where(self) -> str:
        """The target as the ssh config resolved it: user@host:port, and the jump host."""
        conn = self._fabric
        if conn is None:
            return self.target.describe()
        where = f"{conn.user}@{conn.host}:{conn.port}"
        if conn.gateway:
            gateway = conn.gateway
            where += (f" via {gateway.user}@{gateway.host}:{gateway.port}"
                      if not isinstance(gateway, str) else f" via ProxyCommand {gateway}")
        return where

    def connect(self) -> None:
        with self._lock:
            if self.is_connected:
                return
            started = time.monotonic()
            delays = backoff(started + self.refused_for, first=0.2, factor=2, cap=5.0)
            while True:
                try:
                    self._open()
                    self.refused_seconds = 0.0
                    return
                except SshError as exc:
                    self.refused_seconds = time.monotonic() - started
                    delay = next(delays, None) if exc.refused else None
                    if delay is None:
                        raise
                time.sleep(delay)

    def _exec(self, command: str, timeout: float, stdin: bytes = b"") -> CommandResult:
        """Run one command on a new channel: stdout here, stderr on a helper thread (so neither
        can fill the window while the other is read), within `timeout` seconds in all. Each
        keeps at most OUTPUT_CAP bytes. `stdin` is sent first, then end of file."""
        transport = self._client.get_transport() if self._client is not None else None
        if transport is None or not transport.is_active():
            raise EOFError("the SSH connection is closed")
        deadline = time.monotonic() + timeout
        channel = transport.open_session(timeout=min(timeout, self.connect_timeout))
        try:
            channel.exec_command(command)
            if stdin:
                channel.settimeout(timeout)
                channel.sendall(stdin)
            channel.shutdown_write()  # no more input: a command reading stdin sees end of file
            err = _Capped()

            def drain_stderr() -> None:
                try:
                    while data := channel.recv_stderr(65536):
                        err.add(data)
                except Exception:  # the channel closed under it; stdout's reader reports
                    pass

            reader = threading.Thread(target=drain_stderr, daemon=True,
                                      name="milab-ssh-stderr")
            reader.start()
            out = _Capped()
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CommandTimedOut
                channel.settimeout(left)
                try:
                    data = channel.recv(65536)
                except TimeoutError:
                    raise CommandTimedOut from None
                if not data:
                    break
                out.add(data)
            if not channel.status_event.wait(max(0.0, deadline - time.monotonic())):
                raise CommandTimedOut
            reader.join(max(0.0, deadline - time.monotonic()))
            return CommandResult(channel.recv_exit_status(), out.text(), err.text(),
                                 truncated=out.dropped > 0 or err.dropped > 0)
        finally:
            channel.close()  # a command still running is dropped with its channel, as sshd does

    def run(self, command: str, *, timeout: float | None = None,
            stdin: bytes = b"") -> CommandResult:
        """Run a command (its input: `stdin`, then end of file)."""
        timeout = timeout or self.command_timeout
        for attempt in (1, 2):
            self.connect()
            try:
                return self._exec(command, timeout, stdin)
            except CommandTimedOut:
                # The machine took the command and kept it: its doing, not the grader's.
                raise SshError(f"a command on {self._where()} did not finish in "
                               f"{timeout:.0f}s", machine=True) from None
            except Exception as exc:
                self.close()
                if attempt == 2:
                    raise SshError(f"SSH to {self._where()} broke ({_why(exc)})") from None
        raise AssertionError("unreachable")

    def _close_fabric(self) -> None:
        """Close the connection and its jump hosts' (the Fabric Connection is kept)."""
        for hop in _chain(self._fabric):
            hop.client.close()

    def close(self) -> None:
        with self._lock:
            if self._fabric is not None:
                self._close_fabric()


class _JumpHostFailed(Exception):
    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _Capped:
    """Bytes read from a channel, kept up to OUTPUT_CAP; the rest only counted."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.kept = 0
        self.dropped = 0

    def add(self, data: bytes) -> None:
        room = OUTPUT_CAP - self.kept
        if room > 0:
            self.parts.append(data[:room])
            self.kept += min(room, len(data))
        self.dropped += max(0, len(data) - max(room, 0))

    def text(self) -> str:
        return b"".join(self.parts).decode("utf-8", "replace")


def _changed_key(exc, where: str) -> str:
    return (f"SSH to {where} refused: the host key of {exc.hostname} changed (known_hosts "
            f"lists {exc.expected_key.fingerprint}, the host offers {exc.key.fingerprint}); if "
            "the machine was rebuilt, remove its old line from known_hosts")


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
