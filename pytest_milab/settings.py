"""One `Settings` object from the command line, the environment and the ini file.

Every option `--milab-NAME` is also the environment variable `MILAB_NAME` and the ini setting
`milab_NAME` (dashes become underscores). The command line wins, then the environment, then the
ini file. Repeatable options are comma-separated in the environment and the ini file.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import ConfigError, RosterError
from .text import clean


@dataclass(frozen=True)
class Option:
    name: str
    help: str
    kind: str = "str"  # str | int | float | flag | list
    default: object = None
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    low: float | None = None  # the least value allowed (numbers)
    low_open: bool = False  # the value must be above `low`, not equal to it
    high: float | None = None

    @property
    def flag(self) -> str:
        return f"--milab-{self.name}"

    @property
    def dest(self) -> str:
        return "milab_" + self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return "MILAB_" + self.name.replace("-", "_").upper()


OPTIONS: tuple[Option, ...] = (
    Option("group", "resource group of a lab to grade (repeatable)", "list", metavar="NAME"),
    Option("roster", "CSV of labs: header with `group` and optionally subscription, student, "
           "ssh_user, ssh_key, ssh_host", metavar="FILE"),
    Option("subscription", "subscription of the labs (default: AZURE_SUBSCRIPTION_ID, else the "
           "credential's only subscription)", metavar="ID"),
    Option("ssh-user", "SSH user for the VMs (default: the VM's admin user read from ARM)",
           metavar="USER"),
    Option("ssh-key", "private key for SSH (default: the keys and agent Fabric would use)",
           metavar="FILE"),
    Option("ssh-port", "SSH port of the VMs (default: the ssh config's Port, else 22)", "int",
           metavar="PORT", low=1, high=65535),
    Option("ssh-config", "ssh config file (default: ~/.ssh/config, as Fabric reads it)",
           metavar="FILE"),
    Option("report", "write a report; .json, .csv or .html by suffix (repeatable)", "list",
           metavar="PATH"),
    Option("feedback", "write one Markdown file per student into DIR", metavar="DIR"),
    Option("emulator", "start the local Azure in-process, build a complete lab in it and grade "
           "it (the demo)", "flag", False),
    Option("mode", "discover grades finished labs read-only; provision builds a lab step by step",
           "str", "discover", choices=("discover", "provision")),
    Option("keep", "provision mode: keep what the run created", "flag", False),
    Option("concurrency", "labs gathered at once", "int", 32, metavar="N", low=1),
    Option("timeout", "seconds an Azure or SSH call may take, retries included", "float", 60.0,
           metavar="SECONDS", low=0, low_open=True),
    Option("propagation-deadline", "seconds to wait for a change to take effect", "float",
           120.0, metavar="SECONDS", low=0),
    Option("shard", "grade only shard K of N of the labs (a stable share, whatever the roster's "
           "order), e.g. 2/3; merge the shards' reports with `milab merge-reports`",
           metavar="K/N"),
    Option("doc", "a lab document (Markdown) to run block by block (repeatable; `pytest "
           "lab.md` too)", "list", metavar="PATH"),
    Option("doc-report", "write a Markdown drift report of the lab document", metavar="PATH"),
    Option("doc-fix", "write a copy of the lab document with today's equivalents of its "
           "drifted lines", metavar="PATH"),
    Option("doc-timeout", "seconds a lab document's block may run (default 900)", "float",
           metavar="SECONDS", low=0, low_open=True),
    Option("evidence-audience", "verify Entra-signed tokens the machines get for this audience "
           "(the app ID URI or appId of an app registration that authorizes nothing: `milab "
           "onboard --evidence-app`)", metavar="URI"),
)

ROSTER_COLUMNS = ("group", "subscription", "student", "ssh_user", "ssh_key", "ssh_host")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
# Azure resource group names: 1-90 of letters, digits, _ - . ( ), not ending in a period.
_GROUP = re.compile(r"[-\w.()]{0,89}[-\w()]")


def valid_group(name: object) -> bool:
    """Whether `name` is a resource group name Azure accepts (the whole of it: no newline
    after it, no period at its end)."""
    return isinstance(name, str) and _GROUP.fullmatch(name) is not None


@dataclass(frozen=True)
class LabTarget:
    """One lab to grade: a resource group in a subscription, maybe a student's."""

    group: str
    subscription: str | None = None
    student: str | None = None
    ssh_user: str | None = None
    ssh_key: str | None = None
    ssh_host: str | None = None
    line: int | None = None
    problem: str | None = None  # why this lab cannot be graded (bad roster line)
    label: str = ""


@dataclass(frozen=True)
class Settings:
    groups: tuple[str, ...] = ()
    roster: str | None = None
    subscription: str | None = None
    ssh_user: str | None = None
    ssh_key: str | None = None
    ssh_port: int | None = None
    ssh_config: str | None = None
    reports: tuple[str, ...] = ()
    feedback: str | None = None
    emulator: bool = False
    mode: str = "discover"
    keep: bool = False
    concurrency: int = 32
    timeout: float = 60.0
    propagation_deadline: float = 120.0
    shard: tuple[int, int] | None = None  # (k, n): this run grades shard k of n
    targets: tuple[LabTarget, ...] = field(default_factory=tuple)
    docs: tuple[str, ...] = ()
    doc_report: str | None = None
    doc_fix: str | None = None
    doc_timeout: float | None = None
    evidence_audience: str | None = None  # tokens for it are verified (signed evidence)

    @property
    def active(self) -> bool:
        """Whether any lab is to be graded in this run."""
        return (bool(self.targets) or self.emulator or self.mode == "provision"
                or self.shard is not None)


def _convert(option: Option, raw: object, source: str):
    if option.kind == "flag":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("", "0", "false", "no", "off"):
            return False
        raise ConfigError(f"{source}: expected true or false, got {raw!r}")
    if option.kind == "list":
        if isinstance(raw, (list, tuple)):
            items = [str(i) for i in raw]
        else:
            items = str(raw).split(",")
        return tuple(i.strip() for i in items if i.strip())
    text = str(raw).strip()
    if option.kind in ("int", "float"):
        try:
            number = int(text) if option.kind == "int" else float(text)
        except ValueError:
            raise ConfigError(f"{source}: expected a number, got {raw!r}") from None
        too_low = option.low is not None and (number < option.low or option.low_open
                                              and number == option.low)
        too_high = option.high is not None and number > option.high
        if too_low or too_high or number != number:  # NaN too
            bound = (f"above {option.low:g}" if option.low_open else f"at least {option.low:g}"
                     if option.high is None else f"from {option.low:g} to {option.high:g}")
            raise ConfigError(f"{source}: expected a number {bound}, got {raw!r}")
        return number
    if option.choices and text not in option.choices:
        raise ConfigError(f"{source}: expected one of {', '.join(option.choices)}, got {raw!r}")
    return text


def resolve(cli: dict[str, object], ini: dict[str, object], env: dict[str, str] | None = None,
            *, rootdir: Path | None = None) -> Settings:
    """Resolve every option: `cli` and `ini` map option names to raw values (None when unset)."""
    env = os.environ if env is None else env
    values: dict[str, object] = {}
    for option in OPTIONS:
        raw, source = cli.get(option.name), option.flag
        if raw in (None, [], ()) or (option.kind == "flag" and raw is False):
            raw, source = env.get(option.env), option.env
        if raw in (None, ""):
            raw, source = ini.get(option.name), f"ini milab_{option.dest[6:]}"
        if raw in (None, "", [], ()):
            values[option.name] = option.default
            continue
        values[option.name] = _convert(option, raw, source)
    settings = Settings(
        groups=values["group"] or (),
        roster=values["roster"],
        subscription=values["subscription"],
        ssh_user=values["ssh-user"],
        ssh_key=values["ssh-key"],
        ssh_port=values["ssh-port"],
        ssh_config=values["ssh-config"],
        reports=values["report"] or (),
        feedback=values["feedback"],
        emulator=values["emulator"],
        mode=values["mode"],
        keep=values["keep"],
        concurrency=values["concurrency"],
        timeout=values["timeout"],
        propagation_deadline=values["propagation-deadline"],
        shard=parse_shard(values["shard"]) if values["shard"] else None,
        docs=values["doc"] or (),
        doc_report=values["doc-report"],
        doc_fix=values["doc-fix"],
        doc_timeout=values["doc-timeout"],
        evidence_audience=values["evidence-audience"],
    )
    from . import reports
    from .reports import SUFFIXES

    for report in settings.reports:
        if Path(report).suffix.lower() not in SUFFIXES:
            raise ConfigError(f"--milab-report {report}: the name must end in "
                              f"{reports.SUFFIX_WORDS}")
    if settings.feedback and Path(settings.feedback).exists() \
            and not Path(settings.feedback).is_dir():
        raise ConfigError(f"--milab-feedback {settings.feedback}: a file is in the way; give "
                          f"a directory")
    if settings.ssh_config and not Path(settings.ssh_config).expanduser().is_file():
        raise ConfigError(f"--milab-ssh-config {settings.ssh_config}: no such file")
    targets = [LabTarget(group=g) for g in settings.groups]
    for g in settings.groups:
        if not valid_group(g):
            raise ConfigError(f"--milab-group {g!r}: not a valid resource group name")
    if settings.roster:
        path = Path(settings.roster)
        if rootdir is not None and not path.is_absolute() and not path.exists():
            path = rootdir / path
        targets += parse_roster(path)
    targets = label_targets(targets)
    if settings.shard is not None:
        targets = [t for t in targets if shard_of(t, settings.shard[1]) == settings.shard[0]]
    return replace(settings, targets=tuple(targets))


def parse_shard(text: str) -> tuple[int, int]:
    k, sep, n = str(text).partition("/")
    try:
        shard = (int(k), int(n))
    except ValueError:
        shard = (0, 0)
    if not sep or not 1 <= shard[0] <= shard[1]:
        raise ConfigError(f"--milab-shard {text!r}: expected K/N with 1 <= K <= N, e.g. 2/3")
    return shard


def shard_of(target: LabTarget, shards: int) -> int:
    """The shard (1..shards) a lab belongs to: from what names the lab (subscription, group,
    student), never its place in the roster, so every shard agrees whatever the order."""
    import hashlib

    key = "\n".join(((target.subscription or "").lower(), target.group.lower(),
                     target.student or "", str(target.line or "") if target.problem else ""))
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % shards + 1


MAX_LINE = 4096  # bytes of one roster line
MAX_FIELD = 256  # characters of one field


def _roster_rows(data: bytes) -> tuple[list[list[str]], dict[int, str]]:
    """The roster's rows, one per line, and the lines that are not text a roster can hold
    (line number -> why): not UTF-8, too long, not CSV."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    rows: list[list[str]] = []
    bad: dict[int, str] = {}
    for number, raw in enumerate(data.splitlines(), 1):
        row: list[str] = []
        if len(raw) > MAX_LINE:
            bad[number] = f"the line is over {MAX_LINE} bytes"
        else:
            try:
                row = next(csv.reader([raw.decode("utf-8")]), [])
            except UnicodeDecodeError:
                bad[number] = "the line is not UTF-8 text"
            except csv.Error as exc:
                bad[number] = f"not a CSV line ({exc})"
        rows.append(row)
    return rows, bad


def _key_file(roster: Path, given: str) -> str | None:
    """A roster's ssh_key: as given, else beside the roster; None when it is neither."""
    for candidate in (Path(given).expanduser(), roster.parent / given):
        if candidate.is_file():
            return str(candidate)
    return None


def parse_roster(path: Path) -> list[LabTarget]:
    """Read a roster; a malformed line becomes a target carrying its `problem`, so the rest of
    the class is still graded and the line is reported, not lost."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"--milab-roster {path}: cannot read it ({exc.strerror})") from None
    rows, bad = _roster_rows(data)
    header_index = next((i for i, r in enumerate(rows) if any(c.strip() for c in r)), None)
    if header_index is None:
        raise ConfigError(f"--milab-roster {path}: the file is empty; it needs a header line "
                          f"with a `group` column")
    header = [c.strip().lower() for c in rows[header_index]]
    if "group" not in header:
        raise RosterError(str(path), header_index + 1,
                          f"the header needs a `group` column (found: {', '.join(header)})")
    unknown = [c for c in header if c not in ROSTER_COLUMNS]
    if unknown:
        raise RosterError(str(path), header_index + 1,
                          f"unknown column {unknown[0]!r}; columns are {', '.join(ROSTER_COLUMNS)}")
    targets: list[LabTarget] = []
    seen: dict[tuple[str, str], int] = {}
    for index in range(header_index + 1, len(rows)):
        row, line = rows[index], index + 1
        if line not in bad and (not any(c.strip() for c in row)
                                or row[0].lstrip().startswith("#")):
            continue
        fields = dict(zip(header, (clean(c.strip(), MAX_FIELD) for c in row), strict=False))
        group = fields.get("group", "")
        problem = None
        if line in bad:
            problem, group = bad[line], ""
        elif len(row) != len(header):
            problem = f"expected {len(header)} fields ({', '.join(header)}), found {len(row)}"
        elif not group:
            problem = "the group is empty"
        elif not valid_group(group):
            problem = f"{group!r} is not a valid resource group name"
        elif fields.get("subscription") and not _GUID.match(fields["subscription"]):
            problem = f"subscription {fields['subscription']!r} is not a subscription id"
        elif fields.get("ssh_key") and not _key_file(path, fields["ssh_key"]):
            problem = f"ssh_key {fields['ssh_key']!r}: no such file"
        else:
            pair = ((fields.get("subscription") or "").lower(), group.lower())
            if pair in seen:
                problem = f"the same lab as line {seen[pair]} (group {group!r})"
            seen.setdefault(pair, line)
        if problem:
            problem = f"roster {path.name}, line {line}: {problem}"
        targets.append(LabTarget(
            group=group or f"line-{line}", subscription=fields.get("subscription") or None,
            student=fields.get("student") or None, ssh_user=fields.get("ssh_user") or None,
            ssh_key=_key_file(path, fields["ssh_key"]) if fields.get("ssh_key") and not problem
            else None, ssh_host=fields.get("ssh_host") or None,
            line=line, problem=problem))
    return targets


def label_targets(targets: list[LabTarget]) -> list[LabTarget]:
    """Give each target a unique label for test ids and report rows (the student, if named)."""
    base = [t.student or t.group for t in targets]
    counts: dict[str, int] = {}
    for b in base:
        counts[b] = counts.get(b, 0) + 1
    out, used = [], set()
    for target, b in zip(targets, base, strict=True):
        label = b
        if counts[b] > 1:
            label = f"{b}@{(target.subscription or '')[:8] or target.line or len(used)}"
        while label in used:
            label += "'"
        used.add(label)
        out.append(replace(target, label=label))
    return out
