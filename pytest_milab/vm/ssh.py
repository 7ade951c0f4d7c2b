"""One SSH connection per VM (paramiko, with the keys and host-key policy Fabric would use):
opened lazily, waited for while the VM refuses connections, reconnected once, closed at
session end. Commands run on a channel of that connection, with no polling."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

from ..errors import SshError

# An open connection's transport thread wakes this often to notice it was closed (paramiko's
# default is 0.1 s: with a class's VMs all connected, thousands of wake-ups a second).
IDLE_CHECK = 1.0


@dataclass(frozen=True)
class CommandResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass(frozen=True)
class SshTarget:
    host: str
    user: str
    port: int = 22
    key_filename: str | None = None

    def describe(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


def _is_refusal(exc: BaseException) -> bool:
    """The VM does not answer (student side), as opposed to the grader failing to log in."""
    import paramiko

    if isinstance(exc, (ConnectionRefusedError, socket.timeout, TimeoutError)):
        return True
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return True
    if isinstance(exc, OSError) and not isinstance(exc, paramiko.SSHException):
        return True
    return False


class CommandTimedOut(Exception):
    pass


class VmConnection:
    """A lazily opened SSH connection with one reconnect on a broken transport."""

    def __init__(self, target: SshTarget, *, connect_timeout: float = 15.0,
                 command_timeout: float = 300.0, refused_for: float = 5.0) -> None:
        self.target = target
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        # A VM refusing connections may still be booting (or sshd restarting): keep trying
        # for this long before concluding it does not answer.
        self.refused_for = refused_for
        self._client = None
        self._lock = threading.Lock()
        self.connections_opened = 0
        self.refused_seconds = 0.0  # how long the last connect() was refused before it gave up

    @property
    def is_connected(self) -> bool:
        transport = self._client.get_transport() if self._client is not None else None
        return transport is not None and transport.is_active()

    def _open(self):
        import paramiko

        client = paramiko.SSHClient()
        client.load_system_host_keys()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        kwargs: dict = {"timeout": self.connect_timeout, "banner_timeout": self.connect_timeout,
                        "auth_timeout": self.connect_timeout}
        if self.target.key_filename:
            kwargs.update(key_filename=self.target.key_filename, look_for_keys=False,
                          allow_agent=False)
        try:
            client.connect(self.target.host, port=self.target.port, username=self.target.user,
                           **kwargs)
        except Exception as exc:
            client.close()
            where = self.target.describe()
            if _is_refusal(exc):
                raise SshError(f"the VM does not answer SSH at {where} ({_why(exc)})",
                               refused=True) from None
            raise SshError(f"SSH login to {where} failed ({_why(exc)}); check the SSH user and "
                           "key (--milab-ssh-user, --milab-ssh-key)") from None
        transport = client.get_transport()
        if transport is not None and transport.sock is not None:
            transport.sock.settimeout(IDLE_CHECK)
        self.connections_opened += 1
        return client

    def connect(self) -> None:
        with self._lock:
            if self.is_connected:
                return
            started = time.monotonic()
            deadline = started + self.refused_for
            delay = 0.2
            while True:
                try:
                    self._client = self._open()
                    self.refused_seconds = 0.0
                    return
                except SshError as exc:
                    self.refused_seconds = time.monotonic() - started
                    if not exc.refused or time.monotonic() + delay > deadline:
                        raise
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _exec(self, command: str, timeout: float) -> CommandResult:
        """Run one command on a new channel: stdout here, stderr on a helper thread (so neither
        can fill the window while the other is read), within `timeout` seconds in all."""
        transport = self._client.get_transport() if self._client is not None else None
        if transport is None or not transport.is_active():
            raise EOFError("the SSH connection is closed")
        deadline = time.monotonic() + timeout
        channel = transport.open_session(timeout=min(timeout, self.connect_timeout))
        try:
            channel.exec_command(command)
            channel.shutdown_write()  # no input: a command reading stdin sees end of file
            err: list[bytes] = []

            def drain_stderr() -> None:
                try:
                    while data := channel.recv_stderr(65536):
                        err.append(data)
                except Exception:  # the channel closed under it; stdout's reader reports
                    pass

            reader = threading.Thread(target=drain_stderr, daemon=True,
                                      name="milab-ssh-stderr")
            reader.start()
            out: list[bytes] = []
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
                out.append(data)
            if not channel.status_event.wait(max(0.0, deadline - time.monotonic())):
                raise CommandTimedOut
            reader.join(max(0.0, deadline - time.monotonic()))
            return CommandResult(channel.recv_exit_status(),
                                 b"".join(out).decode("utf-8", "replace"),
                                 b"".join(err).decode("utf-8", "replace"))
        finally:
            channel.close()  # a command still running is dropped with its channel, as sshd does

    def run(self, command: str, *, timeout: float | None = None) -> CommandResult:
        timeout = timeout or self.command_timeout
        for attempt in (1, 2):
            self.connect()
            try:
                return self._exec(command, timeout)
            except CommandTimedOut:
                raise SshError(f"a command on {self.target.describe()} did not finish in "
                               f"{timeout:.0f}s") from None
            except Exception as exc:
                self.close()
                if attempt == 2:
                    raise SshError(f"SSH to {self.target.describe()} broke ({_why(exc)})") \
                        from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                try:
                    self._client.close()
                finally:
                    self._client = None


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
