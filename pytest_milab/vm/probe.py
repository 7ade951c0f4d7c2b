"""Running the in-VM probe: one SSH round trip returns statuses, error codes, token claims and
hashes. The probe's source travels in the command line, so nothing of it stays on the VM."""

from __future__ import annotations

import base64
import functools
import json
import shlex
import zlib
from importlib import resources

from ..errors import CouldNotDecide, SshError
from .ssh import CommandResult, VmConnection

MARK = "MILAB-PROBE-RESULT "


def probe_source() -> str:
    return resources.files(__package__).joinpath("probe_script.py").read_text()


@functools.lru_cache(maxsize=1)
def probe_command_prefix() -> str:
    """`python3 -c` with the probe compressed into the command line. (Not stdin: SSH is slow
    to signal end-of-input, and the probe must not write itself to the VM's disk.)"""
    packed = base64.b64encode(zlib.compress(probe_source().encode(), 9)).decode()
    loader = ("import base64,sys,zlib;sys.argv[0]='milab-probe';"
              f"exec(compile(zlib.decompress(base64.b64decode('{packed}')),'milab-probe','exec'))")
    # -I -S: the standard library only, untouched by PYTHON* variables, user or site packages
    # (and quicker to start).
    return "python3 -I -S -c " + shlex.quote(loader)


def _invoke(conn: VmConnection, params: dict, timeout: float | None = None) -> dict:
    command = probe_command_prefix() + " " + shlex.quote(json.dumps(params, separators=(",", ":")))
    result = conn.run(command, timeout=timeout)
    for line in reversed(result.stdout.splitlines()):
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    detail = (result.stderr.strip().splitlines() or ["no output"])[-1][:300]
    if result.exit_code == 127 or "python3: not found" in result.stderr:
        raise SshError("the VM has no python3, which the probe needs")
    raise SshError(f"the probe did not report (exit {result.exit_code}: {detail})")


def run_probe(conn: VmConnection, params: dict, timeout: float | None = None) -> dict:
    """The whole standard probe of a lab: one command, one JSON result."""
    return _invoke(conn, params, timeout)


class Vm:
    """The `vm` fixture: commands and HTTP calls inside a lab's VM, acting as its identity.

    Tokens never leave the VM: `token()` returns claims, `http()` sends the token from inside the
    VM and returns status, headers and JSON with secret-bearing fields replaced by their SHA-256
    and length.
    """

    def __init__(self, conn: VmConnection) -> None:
        self._conn = conn

    @property
    def target(self):
        return self._conn.target

    def run(self, command: str, *, timeout: float | None = None) -> CommandResult:
        """Run a shell command in the VM; its output is the student's, returned as is."""
        try:
            return self._conn.run(command, timeout=timeout)
        except SshError as exc:
            raise CouldNotDecide(str(exc)) from None

    def _single(self, **params) -> dict:
        try:
            result = _invoke(self._conn, params)
        except SshError as exc:
            raise CouldNotDecide(str(exc)) from None
        if "error" in result and len(result) == 1:
            raise CouldNotDecide(f"in the VM: {result['error']}")
        return result

    def imds(self, path: str) -> dict:
        """GET an IMDS path (with `Metadata: true`): {"status", "json", "text"}."""
        return self._single(op="imds", path=path)

    def token(self, resource: str) -> dict:
        """Ask IMDS for a token: {"status", "claims", "code", "message"}; never the token."""
        return self._single(op="token", resource=resource)

    def http(self, method: str, url: str, *, resource: str | None = None,
             body=None, headers: dict | None = None) -> dict:
        """An HTTP call from inside the VM, with a token for `resource` if given."""
        return self._single(op="http", method=method, url=url, resource=resource, body=body,
                            headers=headers)
