"""Running the probe kit in a machine: one SSH command returns every part's result.

The kit's source is the command line's `-c` program, so nothing of it stays on the machine;
its result is the one output line framed by this run's nonce.

The kit starts clean: `/usr/bin/env -i` with a fixed PATH and LANG, then `/usr/bin/python3 -I -S`
(absolute paths, no PYTHON* variables, no site packages). Its program (the parts, the digest key,
the nonce and the egress) comes over stdin as one JSON line, read up to its newline, so no
secret is in any process's argv. The egress is the grader's to say: on Azure none (IMDS and
Azure's hosts directly), in the local Azure the machine's egress proxy with its credential and
the local Azure's CA; the kit never reads a proxy from the machine's environment. The student's
environment (after their `~/.bashrc`) still reaches what a suite asks to run as the student
(`command` parts, the `which` lookups): the shell hands it to the kit on file descriptor 3."""

from __future__ import annotations

import functools
import json
import secrets
import shlex
from collections.abc import Callable
from importlib import resources

from ..digests import received
from ..errors import CouldNotDecide, SshError, Unverified
from ..provenance import VM_REPORTED, note
from ..text import clean
from .ssh import CommandResult, VmConnection

MARK = "MILAB-PROBE-RESULT "


CLEAN_ENV = ("PATH=/usr/bin:/bin", "LANG=C.UTF-8")


@functools.lru_cache(maxsize=1)
def probe_command() -> str:
    """The probe's command: `/usr/bin/python3 -c <the kit's source>` in a clean environment
    (the program comes on stdin; the kit must not write itself to the machine's disk). The
    source itself is the `-c` program, as it is in the package (ASCII, about 25 KB: far below
    Linux's 128 KiB for one argument and SSH's packet size), so a fresh interpreter only
    compiles it, and an interpreter that keeps compiled programs (the local Azure's warm
    python3) serves it compiled. The login shell saves its stdin (the program) as fd 4, pipes
    the student's environment (`env -0`) to the kit as fd 3 and gives fd 4 back as its stdin:
    POSIX shell only."""
    source = resources.files(__package__).joinpath("probe_kit.py").read_text(encoding="ascii")
    # -I -S: the standard library only, untouched by PYTHON* variables, user or site packages
    # (and quicker to start).
    return ("exec 4<&0; /usr/bin/env -0 | /usr/bin/env -i " + " ".join(CLEAN_ENV)
            + " /usr/bin/python3 -I -S -c " + shlex.quote(source) + " 3<&0 0<&4 4<&-")


def run_probe(conn: VmConnection, parts: list[dict], key: bytes,
              timeout: float | None = None, egress: dict | None = None) -> dict:
    """Run the parts (as `Part.program` gives them) at once in the machine: their results by
    name. Only the line framed by a fresh nonce counts. `egress`: how the kit reaches Azure
    from there ({"proxy": URL, "ca": file, "path": its tools' folders}; None: directly)."""
    nonce = secrets.token_hex(8)
    program = {"parts": parts, "key": key.hex(), "nonce": nonce, "egress": egress or {}}
    line = json.dumps(program, separators=(",", ":")) + "\n"
    result = conn.run(probe_command(), timeout=timeout, stdin=line.encode())
    return _result(result, MARK + nonce + " ")


def _result(result: CommandResult, mark: str) -> dict:
    found = [line for line in result.stdout.splitlines() if line.startswith(mark)]
    if len(found) == 1:
        try:
            data = json.loads(found[0][len(mark):])
        except ValueError:
            data = None
        if isinstance(data, dict) and not getattr(result, "truncated", False):
            return received(data)  # its text without control characters, digests hidden
        raise SshError("the probe's result line is not a JSON object", machine=True)
    if len(found) > 1:
        raise SshError("the probe's result line appeared more than once", machine=True)
    if getattr(result, "truncated", False):
        raise SshError("the machine answered the probe with more output than a probe gives",
                       machine=True)
    detail = clean((result.stderr.strip().splitlines() or ["no output"])[-1], 300)
    if result.exit_code == 127 or "python3: not found" in result.stderr:
        raise SshError("the machine has no python3, which the probe needs (install it)",
                       machine=True)
    raise SshError(f"the probe did not report (exit {result.exit_code}: {detail})",
                   machine=True)


def part_result(name: str, result) -> dict:
    """One part's result as the machine answered it, judged: Azure's trouble that the probe
    met (throttling, 5xx, silence after its retries) cannot decide (grading again asks again);
    a part left out or said to have failed is the machine not letting the grader see
    (`Unverified`: counted, no points), never the grader's trouble."""
    if not isinstance(result, dict):
        raise Unverified(f"the machine's probe answer has no result for {name}")
    if set(result) == {"error", "trouble"} and result["trouble"] == "azure":
        raise CouldNotDecide(f"in the machine, {name}: {clean(result['error'])} "
                             "(Azure's trouble, as the machine reports it)")
    if "error" in result and set(result) <= {"error", "trouble"}:
        raise Unverified(f"in the machine, {name} could not run: {clean(result['error'])}")
    return result


class Vm:
    """The `vm` fixture: commands and HTTP calls inside a lab's machine, acting as its identity.

    Tokens never leave the machine: `token()` returns claims, `http()` sends the token from
    inside and returns status and JSON with secret-bearing fields replaced by keyed digests.
    """

    def __init__(self, conn: VmConnection, key: bytes, source: str = "imds",
                 egress: Callable[[], dict | None] | None = None) -> None:
        self._conn = conn
        self._key = key
        self.source = source
        self._egress = egress

    def __repr__(self) -> str:
        return f"<Vm {self._conn.target.describe()}>"

    @property
    def target(self):
        return self._conn.target

    def run(self, command: str, *, timeout: float | None = None) -> CommandResult:
        """Run a shell command in the machine; its output is the student's, returned as is."""
        note(VM_REPORTED)
        try:
            return self._conn.run(command, timeout=timeout)
        except SshError as exc:
            raise (Unverified if exc.machine else CouldNotDecide)(str(exc)) from None

    def _single(self, part) -> dict:
        note(VM_REPORTED)
        try:
            result = run_probe(self._conn, [part.program({})], self._key,
                               egress=self._egress() if self._egress else None
                               ).get(part.name)
        except SshError as exc:
            raise (Unverified if exc.machine else CouldNotDecide)(str(exc)) from None
        return part_result(part.name, result)

    def imds(self, path: str) -> dict:
        """GET a metadata path (with `Metadata: true`): {"status", "json", "text"}."""
        from .. import probe

        return self._single(probe.imds("imds", path, source=self.source))

    def token(self, resource: str) -> dict:
        """Ask the identity endpoint for a token: {"status", "claims", "code", "message"}."""
        from .. import probe

        return self._single(probe.token("token", resource, source=self.source))

    def http(self, method: str, url: str, *, resource: str | None = None,
             body=None, headers: dict | None = None) -> dict:
        """An HTTP call from inside the machine, with a token for `resource` if given."""
        from .. import probe

        part = probe.http("http", url, method=method, token=resource, source=self.source,
                          json=body, attempts=1)
        if headers:
            part = probe.Part(part.name, part.op, {**part.args, "headers": headers})
        return self._single(part)
