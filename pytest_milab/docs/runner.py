"""Running a lab document block by block, as its reader would: where (the operator's machine,
the local Azure or Azure itself, and the VM once a block has SSHed in), what each block
showed, which known drift explains a failure, and what carries from block to block."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MilabError
from ..text import clean
from . import drift
from .document import Block, Document
from .secrets import Masker
from .shell import LocalShell, Outcome, VmShell, make_workdir

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
TAIL_LINES = 12
DEFAULT_TIMEOUT = 900.0  # seconds a block may take (az vm create on Azure takes minutes)
_ASSIGN = re.compile(r"(?:^|[;&|({]\s*|\bexport\s+|\blocal\s+|\breadonly\s+|\bdeclare\s+(?:-\w+\s+)*)"
                     r"([A-Za-z_]\w*)(?:\[[^\]]*\])?\+?=", re.M)
_READ = re.compile(r"\b(?:read|for)\s+(?:-\w+\s+)*([A-Za-z_]\w*)")
_USE = re.compile(r"\$\{?([A-Za-z_]\w*)")
_SINGLE = re.compile(r"'[^']*'")
_APP_CREATE = re.compile(r"\baz\s+ad\s+(?:sp\s+create-for-rbac|app\s+create)\b")
_APP_ID = re.compile(r'"appId"\s*:\s*"([0-9a-fA-F-]{36})"')
_GROUP_CREATE = re.compile(r"az group create\b[^\n]*?(?:--name|-n|--resource-group|-g)\s+"
                           r"([-\w.()]+)")


def assigned(text: str) -> list[str]:
    names = [m.group(1) for m in _ASSIGN.finditer(text)]
    names += [m.group(1) for m in _READ.finditer(text)]
    return list(dict.fromkeys(names))


def used(text: str) -> list[str]:
    """Variables the text expands (not inside single quotes, not set by itself first)."""
    bare = _SINGLE.sub("''", text)
    mine = set(assigned(text))
    return list(dict.fromkeys(m.group(1) for m in _USE.finditer(bare)
                              if m.group(1) not in mine))


@dataclass
class BlockResult:
    number: int
    line: int
    machine: str
    outcome: str
    reason: str
    command: str = ""
    status: int | None = None
    tail: list[str] = field(default_factory=list)
    drifts: list[drift.Drift] = field(default_factory=list)
    seconds: float = 0.0

    def details(self) -> str:
        lines = [self.reason]
        if self.tail:
            lines.append("last lines of output:")
            lines += [f"  | {t}" for t in self.tail]
        lines += [d.one_line() for d in self.drifts]
        return "\n".join(lines)


class Place:
    """Where the document runs: the operator's environment for the local shell (the local
    Azure's, logged in as its operator, or the operator's own with real Azure), how to reach
    the VMs, and what to clean up."""

    def __init__(self, *, emulator: bool, keep: bool, run_id: str, ssh_key: str | None = None,
                 ssh_port: int | None = None, ssh_config: str | None = None,
                 timeout: float | None = None) -> None:
        self.emulator = emulator
        self.keep = keep
        self.run_id = run_id
        self.ssh_key, self.ssh_port, self.ssh_config = ssh_key, ssh_port, ssh_config
        self.timeout = timeout
        self.azure = None
        self.env: dict[str, str] | None = None
        self.workdir = make_workdir()
        self.masker = Masker()
        self.groups: list[str] = []  # fresh groups made in real Azure, deleted at the end
        self.apps: list[str] = []  # app registrations the document made (appId), likewise
        self.notes: list[str] = []
        self.login_problem: str | None = None

    def start(self) -> None:
        if self.env is not None:
            return
        az = os.environ.get("MILAB_AZ_CLI") or shutil.which("az")
        if self.emulator and (not az or not Path(az).is_file()):
            raise MilabError("lab documents in the local Azure need an Azure CLI: set "
                             "MILAB_AZ_CLI to an `az` in its own venv (tox -e azcli builds one)")
        env = dict(os.environ)
        if az:
            env["PATH"] = str(Path(az).parent) + os.pathsep + env.get("PATH", "")
        env.update(AZURE_CORE_COLLECT_TELEMETRY="false", AZURE_CORE_NO_COLOR="true",
                   AZURE_CORE_SURVEY_MESSAGE="false", AZURE_CORE_ONLY_SHOW_ERRORS="false")
        if self.emulator:
            try:
                from ..emulator import LocalAzure
            except ImportError as exc:
                raise MilabError(f"--milab-emulator needs the emulator extra ({exc.name} is "
                                 "missing): pip install 'pytest-milab[emulator]'") from None
            if sys.stderr.isatty():
                print("milab: starting a local Azure for the lab document...", file=sys.stderr,
                      flush=True)
            self.azure = LocalAzure(az_cli=az).start()
            user = self.azure.make_operator_user()
            home = self.workdir / "home"
            home.mkdir()
            env.update(self.azure.env)
            # The operator's shell in the local Azure: its own HOME (where `az vm create
            # --generate-ssh-keys` puts the key `ssh` uses) and user name (the VM's admin).
            env.update(HOME=str(home), AZURE_CONFIG_DIR=str(home / ".azure"),
                       USER="azureuser", LOGNAME="azureuser")
            for value in (user.password, self.azure.operator.client_secret,
                          self.azure.grader.client_secret):
                self.masker.add(value)
            self.ssh_port = self.ssh_port or self.azure.vms.ssh_port
            self.env = env
            shell = LocalShell(env, self.workdir)
            login = shell.run(f"az login -u {shlex.quote(user.user_principal_name)} -p "
                              f"{shlex.quote(user.password)} -o none", [], 120)
            if login.status != 0:
                self.login_problem = ("az login as the local Azure's operator failed: "
                                      + clean(self.masker(login.output)))
        else:
            self.env = env

    def group_for(self, doc: Document) -> tuple[str, str] | None:
        """Real Azure: the document's group and the fresh one that replaces it."""
        if self.emulator:
            return None
        for block in doc.blocks:
            found = _GROUP_CREATE.search(block.text)
            if found:
                fresh = f"milab-doc-{self.run_id}"[:90]
                if fresh not in self.groups:
                    self.groups.append(fresh)
                return found.group(1), fresh
        return None

    def finish(self) -> None:
        if self.env is not None and self.apps and not self.emulator:
            shell = LocalShell(self.env, self.workdir)
            for app in self.apps:
                if self.keep:
                    self.notes.append(f"kept app registration {app} (--milab-keep); remove it "
                                      f"with `az ad app delete --id {app}`")
                    continue
                out = shell.run(f"az ad app delete --id {shlex.quote(app)}", [], 120)
                self.notes.append(f"deleted app registration {app}" if out.status == 0 else
                                  f"could not delete app registration {app}: "
                                  f"{clean(self.masker(out.output))}")
            self.apps.clear()
        if self.env is not None and self.groups:
            shell = LocalShell(self.env, self.workdir)
            for group in self.groups:
                if self.keep:
                    self.notes.append(f"kept resource group {group} (--milab-keep); remove it "
                                      f"with `milab cleanup --run {self.run_id}`")
                    continue
                out = shell.run(f"az group delete --name {shlex.quote(group)} --yes --no-wait",
                                [], 300)
                self.notes.append(f"deleting resource group {group}" if out.status == 0 else
                                  f"could not delete resource group {group}: "
                                  f"{clean(self.masker(out.output))}; run `milab cleanup "
                                  f"--run {self.run_id}`")
            self.groups.clear()
        if self.azure is not None:
            self.azure.stop()
            self.azure = None
        shutil.rmtree(self.workdir, ignore_errors=True)


class DocSession:
    """One document's run: its shells, what each block did and what carries over."""

    def __init__(self, doc: Document, place: Place) -> None:
        self.doc = doc
        self.place = place
        self.results: dict[int, BlockResult] = {}
        self.assigned_by: dict[tuple[str, str], int] = {}
        self.local: LocalShell | None = None
        self.vm: VmShell | None = None
        self.vm_entry: int | None = None  # the block that last SSHed into the VM
        self.group = None

    @property
    def masker(self) -> Masker:
        return self.place.masker

    def _local(self) -> LocalShell:
        if self.local is None:
            self.place.start()
            workdir = self.place.workdir / f"doc-{len(list(self.place.workdir.iterdir()))}"
            workdir.mkdir()
            self.local = LocalShell(self.place.env, workdir)
            self.group = self.place.group_for(self.doc)
        return self.local

    def _substituted(self, text: str) -> str:
        if not self.group:
            return text
        old, fresh = self.group
        text = re.sub(r"(?<![-\w.])" + re.escape(old) + r"(?![-\w.])", fresh, text)
        tag = f" --tags milab-run={self.place.run_id}"

        def tagged(found: re.Match) -> str:
            line = found.group(1).rstrip()
            return (line[:-1].rstrip() + tag + " \\") if line.endswith("\\") else line + tag

        return re.sub(r"(az group create\b[^\n]*)", tagged, text)

    def run(self, block: Block) -> BlockResult:
        result = self._run(block)
        if result.outcome == FAILED and not result.drifts:
            # It could not run, or failed for another reason first: what is certain from its
            # text alone is still named.
            result.drifts = drift.read(self.doc, block)
        if result.outcome != SKIPPED:
            # Variables belong to the machine's shell they were set in.
            for name in assigned(block.body):
                self.assigned_by[(block.machine, name)] = block.number
        if block.move_to == "vm":
            # A new SSH session starts with none of the last one's variables.
            self.vm_entry = block.number
            for key in [k for k in self.assigned_by if k[0] == "vm"]:
                del self.assigned_by[key]
        self.results[block.number] = result
        return result

    def _fail(self, block: Block, reason: str, **kw) -> BlockResult:
        return BlockResult(block.number, block.line, block.machine, FAILED, clean(reason, 500),
                           **kw)

    def _run(self, block: Block) -> BlockResult:
        if block.problems:
            return self._fail(block, "document error: " + "; ".join(block.problems))
        if block.expect.skip:
            return BlockResult(block.number, block.line, block.machine, SKIPPED,
                               clean(block.expect.skip))
        if block.machine == "vm" and self.vm is None:
            if self.vm_entry is not None:
                return self._fail(block, f"needs block {self.vm_entry} (its ssh did not reach "
                                         "the VM)")
            return self._fail(block, "runs in the VM, but no block before it connects with "
                                     "`ssh`: add an ssh step or annotate it on=local")
        uses = used(block.body)
        for name in used(block.text):
            source = self.assigned_by.get((block.machine, name))
            if source is not None and self.results[source].outcome != PASSED:
                return self._fail(block, f"needs block {source} (it sets ${name} and did not "
                                         "pass)")
        local = self._local()
        if self.place.login_problem:
            return self._fail(block, self.place.login_problem)
        shell = self.vm if block.machine == "vm" else local
        self.masker.learn(block.text)
        timeout = block.expect.timeout or self.place.timeout or DEFAULT_TIMEOUT
        outcome = Outcome(0, "")
        started = time.monotonic()
        if block.body.strip():
            try:
                outcome = shell.run(self._substituted(block.body), uses, timeout)
            except MilabError as exc:
                return self._fail(block, f"the VM's shell broke: {exc}")
        if shell is local:
            try:
                self.masker.learn_variables(Path(local.state).read_text(errors="replace"),
                                            block.expect.secrets)
            except OSError:
                pass
        self.masker.learn(outcome.output)
        if shell is local and _APP_CREATE.search(block.body):
            # The document registered an application (`az ad sp create-for-rbac`, `az ad app
            # create`): its appId, seen in the output, is deleted at the end with the group.
            for app in _APP_ID.findall(outcome.output):
                if app not in self.place.apps:
                    self.place.apps.append(app)
        output = self.masker(outcome.output)
        tail = [clean(line, 240) for line in output.splitlines() if line.strip()][-TAIL_LINES:]
        command = clean(self.masker(outcome.failed_command), 300)
        result = self._judge(block, outcome, output, tail, command)
        if result.outcome == PASSED and block.move_to:
            result = self._move(block, result)
        result.seconds = time.monotonic() - started
        return result

    def _judge(self, block: Block, outcome: Outcome, output: str, tail: list[str],
               command: str) -> BlockResult:
        expect = block.expect
        problems: list[str] = []
        if outcome.status is None:
            timeout = expect.timeout or self.place.timeout or DEFAULT_TIMEOUT
            problems.append(f"did not finish in {timeout:g}s: ended at its deadline")
        elif expect.expect == "ok" and outcome.status != 0:
            problems.append(f"exit status {outcome.status}"
                            + (f" from `{command}`" if command else ""))
        elif expect.expect == "fail" and outcome.status == 0:
            problems.append("expected to fail (expect=fail) but exited 0")
        for text in expect.contains:
            if text not in output:
                problems.append(f"the output does not contain {text!r}")
        for text in expect.not_contains:
            if text in output:
                problems.append(f"the output contains {text!r}")
        for pattern in expect.matches:
            if not re.search(pattern, output, re.M):
                problems.append(f"the output does not match {pattern!r}")
        unset = outcome.unset
        if unset:
            problems.append("uses " + ", ".join(f"${n}" for n in unset)
                            + ", which no block sets")
        failed = bool(problems)
        drifts = drift.match(self.doc, block, output, command, not failed, unset)
        status = outcome.status
        if not failed:
            reason = "passed" + (f" ({drifts[0].entry.title})" if drifts else "")
            return BlockResult(block.number, block.line, block.machine, PASSED, clean(reason),
                               status=status, tail=tail, drifts=drifts)
        reason = "; ".join(problems)
        if drifts:
            reason += f"; known drift: {drifts[0].entry.title}"
        return self._fail(block, reason, command=command, status=status, tail=tail,
                          drifts=drifts)

    def _move(self, block: Block, result: BlockResult) -> BlockResult:
        if block.move_to == "local":
            if self.vm is not None:
                self.vm.close()
            self.vm = None
            return result
        if self.vm is not None:
            self.vm.close()
            self.vm = None
        target = self._ssh_target(block.ssh_args or "")
        if target is None:
            return self._fail(block, f"`ssh {block.ssh_args}`: no host (the variable it "
                                     "names is empty)")
        from ..vm.ssh import SshTarget  # noqa: F401  (the type of target)

        shell = VmShell(target, self.place.run_id)
        try:
            shell.connect()
        except MilabError as exc:
            return self._fail(block, f"`ssh {block.ssh_args}`: {exc}")
        self.vm = shell
        return result

    def _ssh_target(self, args: str):
        from ..vm.ssh import SshTarget

        local = self.local
        words = local.run(f"printf '%s\\n' {self._substituted(args)}", [], 30).output.split()
        user = key = host = None
        port = self.place.ssh_port
        i = 0
        while i < len(words):
            word = words[i]
            if word in ("-i", "-p", "-l") and i + 1 < len(words):
                value = words[i + 1]
                if word == "-i":
                    key = value
                elif word == "-p":
                    port = int(value) if value.isdigit() else port
                else:
                    user = value
                i += 2
                continue
            if not word.startswith("-"):
                host = word
            i += 1
        if not host:
            return None
        if "@" in host:
            user, host = host.split("@", 1)
        if user is None:
            user = local.value('"${LOGNAME:-${USER:-$(id -un)}}"') or None
        home = Path(self.place.env.get("HOME", "~")).expanduser()
        if key is None:
            key = self.place.ssh_key or next(
                (str(home / ".ssh" / n) for n in ("id_rsa", "id_ed25519")
                 if (home / ".ssh" / n).is_file()), None)
        return SshTarget(host=host, user=user, port=port, key_filename=key,
                         ssh_config=self.place.ssh_config)

    def close(self) -> None:
        if self.vm is not None:
            self.vm.close()
            self.vm = None
