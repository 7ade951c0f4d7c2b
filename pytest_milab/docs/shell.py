"""The reader's shells: one on the operator's machine and one in the VM (over the plugin's SSH).

Each block runs in bash with what the earlier blocks left behind on that machine: variables
(exported or not), functions and the working directory are saved after every block and
restored before the next (with aliases and shell options), so `x=...`, `export` and `cd` carry
over as in the reader's terminal,
and a block that hangs can be ended at its deadline without losing the session."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..vm.ssh import SshTarget, VmConnection

# Variables bash owns (or the session's own), never saved nor restored.
_OWN = (r"BASH.*|FUNCNAME|GROUPS|PPID|UID|EUID|SHELLOPTS|PIPESTATUS|LINENO|RANDOM|SRANDOM|"
        r"SECONDS|HISTCMD|EPOCH.*|COLUMNS|LINES|_|__milab.*|DIRSTACK|OPTIND|OPTARG|IFS|PS[0-9]|"
        r"HOSTNAME|HOSTTYPE|MACHTYPE|OSTYPE|SHLVL|PWD|OLDPWD|COMP_.*")
MARK = "__MILAB_BLOCK_END__"
_END = re.compile(MARK + r" rc=(\d+) cmd=(.*)\n?$")
_UNSET = re.compile(r"^__MILAB_UNSET__ ?(.*)\n", re.M)


@dataclass
class Outcome:
    status: int | None  # None: the block did not finish by its deadline
    output: str  # stdout and stderr, as the reader saw them (markers removed)
    failed_command: str = ""  # the first command that failed, as bash saw it
    unset: tuple[str, ...] = ()  # variables the block uses that nothing had set


def script(state: str, body: str, uses: list[str]) -> str:
    """The block wrapped: restore the session, note unset variables, run, save the session."""
    check = ""
    if uses:
        check = (f"__milab_unset=; for __milab_v in {' '.join(uses)}; do "
                 '[ -n "${!__milab_v+x}" ] || __milab_unset="$__milab_unset $__milab_v"; done; '
                 'echo "__MILAB_UNSET__$__milab_unset"\n')
    return (
        "exec 2>&1\n"
        f"__milab_state={shlex.quote(state)}\n"
        '[ -f "$__milab_state" ] && . "$__milab_state" >/dev/null 2>&1\n'
        + check +
        "__milab_rc=0; __milab_cmd=\n"
        "trap '__milab_s=$?; if [ $__milab_rc -eq 0 ]; then __milab_rc=$__milab_s; "
        "__milab_cmd=$BASH_COMMAND; fi' ERR\n"
        + body + "\n"
        "trap - ERR\n"
        "{ declare -p $(compgen -v | grep -Ev '^(" + _OWN + ")$') 2>/dev/null; declare -f; "
        "alias -p; set +o | grep -v xtrace; shopt -p; "
        'echo "cd $(printf %q "$PWD") 2>/dev/null"; } > "$__milab_state"\n'
        'printf "\\n%s rc=%s cmd=%s\\n" ' + MARK + ' "$__milab_rc" '
        '"$(printf %s "$__milab_cmd" | head -c 300 | tr "\\n" " ")"\n'
        'exit "$__milab_rc"\n')


def parse_output(raw: str, status: int | None) -> Outcome:
    unset: tuple[str, ...] = ()
    found = _UNSET.search(raw)
    if found:
        unset = tuple(found.group(1).split())
        raw = raw[:found.start()] + raw[found.end():]
    end = _END.search(raw)
    command = ""
    if end:
        command = end.group(2).strip()
        raw = raw[:end.start()]
        if raw.endswith("\n"):
            raw = raw[:-1]
    return Outcome(status, raw, command, unset)


class LocalShell:
    """The operator's shell: bash on this machine, with the environment given."""

    name = "local"

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = env
        self.workdir = workdir
        self.state = str(workdir / "session.sh")
        Path(self.state).write_text(f"cd {shlex.quote(str(workdir))}\n")

    def run(self, body: str, uses: list[str], timeout: float) -> Outcome:
        proc = subprocess.Popen(["bash", "-c", script(self.state, body, uses)], env=self.env,
                                cwd=self.workdir, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            return parse_output(out.decode("utf-8", "replace"), None)
        return parse_output(out.decode("utf-8", "replace"), proc.returncode)

    def value(self, expression: str) -> str:
        """What `expression` expands to in the session (e.g. `$publicIp`)."""
        result = self.run(f"printf '%s' {expression}", [], 30)
        return result.output if result.status == 0 else ""

    def close(self) -> None:
        pass


class VmShell:
    """The VM's shell over SSH, as the reader's `ssh host` gives it."""

    name = "vm"

    def __init__(self, target: SshTarget, run_id: str) -> None:
        self.target = target
        self.connection = VmConnection(target, connect_timeout=15, refused_for=20)
        self.state = f".milab-doc-session-{run_id}.sh"

    def connect(self) -> None:
        self.connection.connect()
        self.connection.run(f"rm -f {self.state}", timeout=30)

    def run(self, body: str, uses: list[str], timeout: float) -> Outcome:
        from ..errors import SshError

        command = "bash -c " + shlex.quote(script(self.state, body, uses))
        try:
            result = self.connection.run(command, timeout=timeout)
        except SshError as exc:
            if "did not finish" in str(exc):
                return Outcome(None, "")
            raise
        return parse_output(result.stdout + result.stderr, result.exit_code)

    def close(self) -> None:
        self.connection.close()


def make_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="milab-doc-"))
