"""A lab document read as a reader reads it: its shell blocks in order, where each runs, what it
must show, and the mistakes that stop a reader before any command runs.

Shell blocks are fenced blocks labelled bash, sh, shell, zsh or console (only the `$ ` lines of a
console block are commands; the rest is output), and indented code blocks inside a step list.
`<!-- milab: on=vm expect=fail contains="..." -->` just before a block (invisible when
rendered) says where it runs and what it must show; a sidecar `<doc>.milab.toml` says the same
for documents their author cannot annotate."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

SHELL_LANGS = {"bash", "sh", "shell", "zsh", "console", "shell-session", "terminal"}
_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
_LIST_ITEM = re.compile(r"^(?P<indent>\s*)(?:[-*+•]|\d+[.)])\s+")
_ANNOTATION = re.compile(r"<!--\s*milab:(?P<body>.*?)-->", re.S)
# `<vault-name>`: a value the reader must fill in (not a here-string `<<<`, not `<(...)`).
_PLACEHOLDER = re.compile(r"(?<![<\w])<([A-Za-z][\w.-]*(?:[- ][\w.-]+)*)>(?![>\w])")
_EMPTY_URL = re.compile(r"""\b(?:curl|wget)\b[^\n]*?(?<![\w=])(""|'')(?=\s|$)""")
_LOST_HOST = re.compile(r"https?://\$\$")
_BARE_LINK = re.compile(r"(?<![!\]\\])\[([^\]\n]{2,80})\](?![(\[:])")
_REF_DEF = re.compile(r"^\s*\[([^\]]+)\]:\s*\S+", re.M)
KEYS = {"on", "expect", "contains", "not-contains", "matches", "timeout", "skip", "secret"}
MACHINES = ("local", "vm")


class DocumentError(Exception):
    """The document cannot be read as a lab document (one line saying why)."""


@dataclass
class Expect:
    on: str | None = None  # local | vm; None: inferred
    expect: str = "ok"  # ok | fail | any
    contains: tuple[str, ...] = ()
    not_contains: tuple[str, ...] = ()
    matches: tuple[str, ...] = ()
    timeout: float | None = None
    skip: str | None = None
    secrets: tuple[str, ...] = ()  # variables whose values are masked in every output


@dataclass
class Block:
    number: int  # 1-based, in document order
    line: int  # line of the first command in the document
    lang: str
    text: str  # the commands as the reader types them
    lines: list[int]  # document line of each line of `text`
    expect: Expect = field(default_factory=Expect)
    problems: list[str] = field(default_factory=list)  # document errors: not run
    machine: str = "local"  # where it runs, after inference
    move_to: str | None = None  # the block ends by moving to this machine (ssh / exit)
    ssh_args: str | None = None  # the `ssh ...` words that move into the VM
    body: str = ""  # what runs before the move (the block without its `ssh`/`exit` line)

    def title(self, mask=lambda text: text) -> str:
        """`block N (line L): ` and the first command (after `mask`, then shortened)."""
        first = mask(next((ln for ln in self.text.splitlines() if ln.strip()), "")).strip()
        return f"block {self.number} (line {self.line}): {first[:60]}"


@dataclass
class Document:
    path: Path
    lines: list[str]
    blocks: list[Block]
    problems: list[str]  # document-wide errors (links without a target)


def parse_annotation(body: str, where: str) -> Expect:
    try:
        words = shlex.split(body)
    except ValueError as exc:
        raise DocumentError(f"{where}: milab comment cannot be read ({exc})") from None
    return apply_settings(Expect(), dict(_pair(w, where) for w in words), where)


def _pair(word: str, where: str) -> tuple[str, str]:
    key, sep, value = word.partition("=")
    if not sep and key == "skip":
        return key, "skipped by the document's milab comment"
    if not sep:
        raise DocumentError(f"{where}: milab comment word {word!r} is not key=value")
    return key, value


def apply_settings(expect: Expect, values: dict, where: str) -> Expect:
    unknown = set(values) - KEYS - {"number", "line", "match"}
    if unknown:
        raise DocumentError(f"{where}: unknown milab setting {sorted(unknown)[0]!r}; settings "
                            f"are {', '.join(sorted(KEYS))}")

    def many(key):
        value = values.get(key)
        if value is None:
            return None
        return tuple(value) if isinstance(value, list) else (str(value),)

    changes: dict = {}
    if "on" in values:
        if values["on"] not in MACHINES:
            raise DocumentError(f"{where}: on={values['on']!r}: expected local or vm")
        changes["on"] = values["on"]
    if "expect" in values:
        if values["expect"] not in ("ok", "fail", "any"):
            raise DocumentError(f"{where}: expect={values['expect']!r}: expected ok, fail or "
                                "any")
        changes["expect"] = values["expect"]
    for key, attr in (("contains", "contains"), ("not-contains", "not_contains"),
                      ("matches", "matches"), ("secret", "secrets")):
        if many(key) is not None:
            changes[attr] = many(key)
    for pattern in changes.get("matches", ()):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise DocumentError(f"{where}: matches={pattern!r} is not a regular expression "
                                f"({exc})") from None
    if "timeout" in values:
        try:
            changes["timeout"] = float(values["timeout"])
        except (TypeError, ValueError):
            raise DocumentError(f"{where}: timeout={values['timeout']!r}: expected seconds") \
                from None
    if "skip" in values:
        changes["skip"] = str(values["skip"]) or "skipped by the document"
    return replace(expect, **changes)


def _console_commands(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    going = False
    for number, text in lines:
        stripped = text.lstrip()
        if stripped.startswith("$ ") or stripped == "$":
            out.append((number, stripped[2:]))
            going = stripped.rstrip().endswith("\\")
        elif going:
            out.append((number, text))
            going = text.rstrip().endswith("\\")
    return out


def _looks_like_output(text: str, prose: str) -> bool:
    first = text.lstrip()[:1]
    return first in '{["<' or prose.rstrip().lower().endswith(("output:", "like this:",
                                                               "example:"))


def parse(path: Path, text: str | None = None) -> Document:
    """Read a Markdown lab document; DocumentError when it is not one."""
    if text is None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DocumentError(f"{path}: cannot read it ({exc.strerror})") from None
        if b"\x00" in data[:4096]:
            raise DocumentError(f"{path}: not a Markdown document (binary data)")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise DocumentError(f"{path}: not a Markdown document (not UTF-8 text)") from None
    lines = text.splitlines()
    raw: list[tuple[str, list[tuple[int, str]], Expect | None, str]] = []
    pending: Expect | None = None
    prose = ""
    list_indent: int | None = None  # content indent of the current step list item
    i = 0
    while i < len(lines):
        line = lines[i]
        number = i + 1
        fence = _FENCE.match(line)
        if line.lstrip().startswith("<!--"):
            # An HTML comment, maybe over several lines.
            j = i
            chunk = line
            while "-->" not in chunk and j + 1 < len(lines):
                j += 1
                chunk += "\n" + lines[j]
            found = _ANNOTATION.search(chunk)
            if found:
                pending = parse_annotation(found.group("body"), f"{path.name}:{number}")
            i = j + 1
            continue
        if fence:
            indent, mark = len(fence.group("indent")), fence.group("fence")
            lang = (fence.group("info").split() or [""])[0].lower().strip("{}.")
            body: list[tuple[int, str]] = []
            j = i + 1
            while j < len(lines):
                close = lines[j].strip()
                if close.startswith(mark[0] * len(mark)) and set(close) <= {mark[0]}:
                    break
                cut = lines[j]
                cut = cut[min(indent, len(cut) - len(cut.lstrip())):]
                body.append((j + 1, cut))
                j += 1
            if lang in SHELL_LANGS:
                if lang in ("console", "shell-session", "terminal"):
                    body = _console_commands(body)
                raw.append((lang, body, pending, prose))
            elif pending is not None and pending.on is not None:
                raw.append(("bash", body, pending, prose))  # an unlabelled block the author marked
            pending = None
            i = j + 1
            continue
        item = _LIST_ITEM.match(line)
        stripped = line.strip()
        width = len(line) - len(line.lstrip())
        if item:
            list_indent = len(item.group(0))
            prose = line
        elif stripped and list_indent is not None and width >= list_indent + 4 \
                and i > 0 and not lines[i - 1].strip():
            body = []
            j = i
            while j < len(lines) and (not lines[j].strip()
                                      or len(lines[j]) - len(lines[j].lstrip())
                                      >= list_indent + 4):
                body.append((j + 1, lines[j][list_indent + 4:]))
                j += 1
            while body and not body[-1][1].strip():
                body.pop()
            text_of = "\n".join(t for _, t in body)
            if pending is not None or not _looks_like_output(text_of, prose):
                if pending is None or pending.skip != "not shell":
                    raw.append(("indented", body, pending, prose))
            pending = None
            i = j
            continue
        elif stripped and width == 0 and not stripped.startswith("<!--"):
            list_indent = None if not item else list_indent
            prose = stripped
        elif stripped:
            prose = stripped
        i += 1
    blocks = []
    for lang, body, expect, _ in raw:
        body = [(n, t) for n, t in body]
        while body and not body[0][1].strip():
            body.pop(0)
        while body and not body[-1][1].strip():
            body.pop()
        if not body:
            continue
        block = Block(len(blocks) + 1, body[0][0], lang, "\n".join(t for _, t in body),
                      [n for n, _ in body], expect or Expect())
        blocks.append(block)
    for block in blocks:
        block.problems = _block_problems(block)
    return Document(path, lines, blocks, _link_problems(lines))


def _block_problems(block: Block) -> list[str]:
    problems = []
    for offset, text in enumerate(block.text.splitlines()):
        where = f"line {block.lines[offset]}"
        no_heredoc = text.replace("<<<", "   ")
        for found in _PLACEHOLDER.finditer(no_heredoc):
            problems.append(f"{where}: placeholder <{found.group(1)}> is for the reader to fill "
                            "in: give an example value the lab can run with")
        if _EMPTY_URL.search(text):
            problems.append(f"{where}: an empty URL (\"\"): the link's address was lost; write "
                            "the address itself")
        if _LOST_HOST.search(text):
            problems.append(f"{where}: a URL with no host (https://$$): the link's address was "
                            "lost; write the address itself")
    return problems


def _link_problems(lines: list[str]) -> list[str]:
    defined = {m.group(1).lower() for m in _REF_DEF.finditer("\n".join(lines))}
    problems = []
    fenced = False
    for number, line in enumerate(lines, 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if fenced or line.startswith("    ") or line.lstrip().startswith("<!--"):
            continue
        for found in _BARE_LINK.finditer(re.sub(r"`[^`]*`", "", line)):
            label = found.group(1)
            if label.lower() in defined or label.strip().lower() in ("x", " "):
                continue
            problems.append(f"line {number}: [{label}] is written as a link but has no "
                            "address: add (https://...) after it or a reference definition")
    return problems


def load_sidecar(doc: Document) -> None:
    """`<name>.milab.toml` beside the document: [[block]] tables with `number`, `line` or
    `match` (text the block contains) and the settings of a milab comment."""
    sidecar = doc.path.with_name(doc.path.stem + ".milab.toml")
    if not sidecar.is_file():
        return

    try:
        data = tomllib.loads(sidecar.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DocumentError(f"{sidecar}: not TOML ({exc})") from None
    for index, table in enumerate(data.get("block", []), 1):
        where = f"{sidecar.name}: [[block]] {index}"
        if not isinstance(table, dict):
            raise DocumentError(f"{where}: expected a table")
        chosen = [b for b in doc.blocks
                  if ("number" in table and b.number == table["number"])
                  or ("line" in table and table["line"] in b.lines)
                  or ("match" in table and str(table["match"]) in b.text)]
        if not chosen:
            raise DocumentError(f"{where}: names no block of {doc.path.name} (give number, "
                                "line or match)")
        for block in chosen:
            block.expect = apply_settings(block.expect, table, where)


# -- where each block runs -------------------------------------------------------------------
_SSH = re.compile(r"^\s*ssh\s+(?P<args>[^;&|#]+?)\s*$")
_EXIT = re.compile(r"^\s*(exit|logout)\s*$")


def infer_machines(doc: Document) -> None:
    """Blocks after an `ssh` step run in the VM until an `exit`; a block whose last command is
    `ssh host` or `exit` moves the reader there after its other commands."""
    where = "local"
    for block in doc.blocks:
        lines = block.text.splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        last = lines[-1] if lines else ""
        block.machine = block.expect.on or where
        block.body = block.text
        ssh = _SSH.match(last)
        if ssh and block.machine == "local":
            block.move_to, block.ssh_args = "vm", ssh.group("args")
            block.body = "\n".join(lines[:-1])
        elif _EXIT.match(last) and block.machine == "vm":
            block.move_to = "local"
            block.body = "\n".join(lines[:-1])
        if block.move_to:
            where = block.move_to


def load(path: Path) -> Document:
    doc = parse(path)
    load_sidecar(doc)
    infer_machines(doc)
    return doc
