"""One Fabric connection per VM: opened lazily, reconnected once, closed at session end."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

from ..errors import SshError


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


class VmConnection:
    """A lazily opened Fabric connection with one reconnect on a broken transport."""

    def __init__(self, target: SshTarget, *, connect_timeout: float = 15.0,
                 command_timeout: float = 300.0, refused_for: float = 5.0) -> None:
        self.target = target
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        # A VM refusing connections may still be booting (or sshd restarting): keep trying
        # for this long before concluding it does not answer.
        self.refused_for = refused_for
        self._conn = None
        self._lock = threading.Lock()
        self.connections_opened = 0

    def _open(self):
        import fabric

        kwargs: dict = {"banner_timeout": self.connect_timeout, "auth_timeout": self.connect_timeout}
        if self.target.key_filename:
            kwargs.update(key_filename=self.target.key_filename, look_for_keys=False,
                          allow_agent=False)
        config = fabric.Config(overrides={"load_ssh_configs": False})
        conn = fabric.Connection(self.target.host, user=self.target.user, port=self.target.port,
                                 connect_timeout=self.connect_timeout, connect_kwargs=kwargs,
                                 config=config)
        try:
            conn.open()
        except Exception as exc:
            conn.close()
            where = self.target.describe()
            if _is_refusal(exc):
                raise SshError(f"the VM does not answer SSH at {where} ({_why(exc)})",
                               refused=True) from None
            raise SshError(f"SSH login to {where} failed ({_why(exc)}); check the SSH user and "
                           "key (--milab-ssh-user, --milab-ssh-key)") from None
        self.connections_opened += 1
        return conn

    def connect(self) -> None:
        with self._lock:
            if self._conn is not None and self._conn.is_connected:
                return
            deadline = time.monotonic() + self.refused_for
            delay = 0.2
            while True:
                try:
                    self._conn = self._open()
                    return
                except SshError as exc:
                    if not exc.refused or time.monotonic() + delay > deadline:
                        raise
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def run(self, command: str, *, timeout: float | None = None) -> CommandResult:
        for attempt in (1, 2):
            self.connect()
            try:
                result = self._conn.run(
                    command, hide=True, warn=True, pty=False, in_stream=False,
                    timeout=timeout or self.command_timeout)
                return CommandResult(result.exited, result.stdout, result.stderr)
            except Exception as exc:
                from invoke.exceptions import CommandTimedOut

                if isinstance(exc, CommandTimedOut):
                    raise SshError(f"a command on {self.target.describe()} did not finish in "
                                   f"{timeout or self.command_timeout:.0f}s") from None
                self.close()
                if attempt == 2:
                    raise SshError(f"SSH to {self.target.describe()} broke ({_why(exc)})") \
                        from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                finally:
                    self._conn = None


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
