"""Known drift of Azure and the CLI (the catalogue is data: drift.toml) matched against what a
block did, and today's equivalents applied to a copy of the document."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .document import Block, Document, tomllib

CATALOGUE = Path(__file__).with_name("drift.toml")


@dataclass(frozen=True)
class Entry:
    id: str
    title: str
    line: str
    unless: str = ""
    symptom: str = ""
    later: str = ""
    fix: dict = field(default_factory=dict)
    when_passed: bool = False
    static: bool = False
    with_line: str = ""
    since: str = ""
    source: str = ""

    def broken(self, text: str) -> bool:
        return bool(self.line) and re.search(self.line, text) is not None and not (
            self.unless and re.search(self.unless, text))

    def fixed(self, text: str) -> str | None:
        if "pattern" in self.fix:
            return re.sub(self.fix["pattern"], self.fix["replacement"], text)
        if "append" in self.fix:
            body = text.rstrip()
            if body.endswith("\\"):
                return body[:-1].rstrip() + self.fix["append"] + " \\"
            return body + self.fix["append"]
        return None


@dataclass
class Drift:
    entry: Entry
    block: int  # the block that showed it
    doc_line: int  # the document line that is out of date
    text: str  # that line as written
    fixed: str | None  # today's form of the line (None: advice only)
    insert: str | None = None  # a line to put before `doc_line`
    read_only: bool = False  # found by reading a block that could not run

    @property
    def fix_words(self) -> str:
        if self.insert:
            return f"add `{self.insert}` before it"
        if self.fixed is not None:
            return f"today: `{self.fixed.strip()}`"
        return "no automatic fix"

    def one_line(self) -> str:
        return (f"drift{' (read, not run)' if self.read_only else ''}: line {self.doc_line} `{self.text.strip()[:120]}`: "
                f"{self.entry.title}; {self.fix_words}")


@lru_cache(maxsize=1)
def catalogue() -> tuple[tuple[Entry, ...], dict[str, str]]:
    data = tomllib.loads(CATALOGUE.read_text(encoding="utf-8"))
    entries = tuple(Entry(**{k: v for k, v in e.items()}) for e in data.get("drift", []))
    return entries, dict(data.get("undefined", {}))


def _lines(block: Block) -> list[tuple[int, str]]:
    return list(zip(block.lines, block.text.splitlines(), strict=False))


def match(doc: Document, block: Block, output: str, command: str, passed: bool,
          unset: tuple[str, ...]) -> list[Drift]:
    """The known drifts that explain what `block` did: the out-of-date line is in this block
    or, when the symptom shows here, an earlier one (a vault made the old way refuses later)."""
    entries, defaults = catalogue()
    found: list[Drift] = []
    seen_lines: set[tuple[str, int]] = set()
    shown = output
    for entry in entries:
        if not entry.line or (passed and not entry.when_passed):
            continue
        here = not entry.symptom or re.search(entry.symptom, shown) is not None
        candidates = [(n, t) for n, t in _lines(block) if entry.broken(t)] if here else []
        if not candidates and not passed and entry.later and re.search(entry.later, shown):
            for earlier in reversed(doc.blocks[:block.number - 1]):
                candidates = [(n, t) for n, t in _lines(earlier) if entry.broken(t)]
                if candidates:
                    break
        for number, text in candidates:
            if (entry.id, number) not in seen_lines:
                seen_lines.add((entry.id, number))
                found.append(Drift(entry, block.number, number, text, entry.fixed(text)))
    undefined = next((e for e in entries if e.id == "undefined-variable"), None)
    for name in unset:
        uses = [(n, t) for n, t in _lines(block)
                if re.search(r"\$\{?" + re.escape(name) + r"\b", t)]
        number, text = uses[0] if uses else (block.line, block.text.splitlines()[0])
        entry = Entry(undefined.id if undefined else "undefined-variable",
                      f"${name} is used but no step sets it", "", since="the document",
                      source="the document")
        found.append(Drift(entry, block.number, number, text, None, defaults.get(name)))
    return found


def read(doc: Document, block: Block) -> list[Drift]:
    """Known drift found by reading a block that could not run (it needed a failed block)."""
    entries, defaults = catalogue()
    text = "\n".join(b.text for b in doc.blocks)
    found = []
    for entry in entries:
        if not entry.static or (entry.with_line and not re.search(entry.with_line, text)):
            continue
        for number, line in _lines(block):
            if entry.broken(line):
                found.append(Drift(entry, block.number, number, line, entry.fixed(line),
                                   read_only=True))
    for name, insert in defaults.items():
        pattern = r"\$\{?" + re.escape(name) + r"\b"
        uses = [(n, t) for n, t in _lines(block) if re.search(pattern, t)]
        if uses and not re.search(r"(?:^|[\s;(])" + re.escape(name) + "=", text, re.M):
            entry = Entry("undefined-variable", f"${name} is used but no step sets it", "",
                          since="the document", source="the document")
            found.append(Drift(entry, block.number, uses[0][0], uses[0][1], None, insert,
                               read_only=True))
    return found


def apply(doc: Document, drifts: list[Drift]) -> str:
    """The document with today's equivalents: each out-of-date line fixed wherever it appears,
    and the missing assignments added."""
    lines = list(doc.lines)
    entries = {d.entry.id: d.entry for d in drifts if d.fixed is not None}
    code_lines = {n for b in doc.blocks for n in b.lines}
    for number in sorted(code_lines):
        text = lines[number - 1]
        for entry in entries.values():
            if entry.broken(text):
                new = entry.fixed(text)
                if new is not None:
                    text = new
        lines[number - 1] = text
    inserts = sorted({(d.doc_line, d.insert) for d in drifts if d.insert}, reverse=True)
    for number, insert in inserts:
        original = doc.lines[number - 1]
        indent = original[:len(original) - len(original.lstrip())]
        lines.insert(number - 1, indent + insert)
    end = "\n" if doc.lines else ""
    return "\n".join(lines) + end
