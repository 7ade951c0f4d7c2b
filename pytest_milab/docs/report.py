"""What a document run shows: the Markdown drift report, JSON and CSV rows of its blocks, the
terminal lines, and where each report goes when several documents are run."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..text import clean, csv_cell
from .runner import FAILED, PASSED, DocSession


def _md(text: str) -> str:
    """Text from outside shown as Markdown text, never as markup."""
    return clean(text, 400).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _code(text: str) -> str:
    text = clean(text, 300).replace("|", "\\|")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def counts(session: DocSession) -> dict[str, int]:
    out: dict[str, int] = {}
    for result in session.results.values():
        out[result.outcome] = out.get(result.outcome, 0) + 1
    return out


def drifts(session: DocSession):
    seen, out = set(), []
    for result in sorted(session.results.values(), key=lambda r: r.number):
        for d in result.drifts:
            key = (d.entry.id, d.doc_line)
            if key not in seen:
                seen.add(key)
                out.append(d)
    return sorted(out, key=lambda d: d.doc_line)


def markdown(session: DocSession) -> str:
    doc = session.doc
    c = counts(session)
    lines = [f"# Drift report: {_md(doc.path.name)}", "",
             f"{len(doc.blocks)} blocks: {c.get(PASSED, 0)} passed, {c.get(FAILED, 0)} failed, "
             f"{c.get('skipped', 0)} skipped, {len(doc.blocks) - len(session.results)} not run.",
             ""]
    found = drifts(session)
    if found:
        lines += ["## Known drift", "", "| line | as written | what changed | today | since |",
                  "|---|---|---|---|---|"]
        for d in found:
            today = _code(d.insert) + " before it" if d.insert else (
                _code(d.fixed.strip()) if d.fixed is not None else "(no automatic fix)")
            lines.append(f"| {d.doc_line} | {_code(d.text.strip())} | {_md(d.entry.title)} | "
                         f"{today} | {_md(d.entry.since)} |")
        sources = sorted({part.strip() for d in found for part in d.entry.source.split(";")
                          if d.entry.source != "the document"})
        if sources:
            lines += ["", "Sources: " + "; ".join(_md(s) for s in sources) + "."]
        lines.append("")
    if doc.problems:
        lines += ["## Document errors", ""] + [f"- {_md(p)}" for p in doc.problems] + [""]
    lines += ["## Blocks", "", "| block | line | runs on | outcome | reason |",
              "|---|---|---|---|---|"]
    for block in doc.blocks:
        result = session.results.get(block.number)
        outcome = result.outcome if result else "not run"
        reason = result.reason if result and result.outcome != PASSED else ""
        lines.append(f"| {block.number} | {block.line} | {block.machine} | {outcome} | "
                     f"{_md(reason)} |")
    failed = [r for r in sorted(session.results.values(), key=lambda r: r.number)
              if r.outcome == FAILED and (r.command or r.tail)]
    if failed:
        lines += ["", "## Failures", ""]
        for r in failed:
            lines.append(f"### Block {r.number} (line {r.line})")
            lines.append("")
            if r.command:
                lines.append(f"Command: {_code(r.command)}, exit status {r.status}.")
                lines.append("")
            if r.tail:
                lines += ["```text"] + [clean(t, 240).replace("```", "'''") for t in r.tail] \
                    + ["```", ""]
    return "\n".join(lines).rstrip() + "\n"


def rows(session: DocSession) -> list[dict]:
    out = []
    for block in session.doc.blocks:
        r = session.results.get(block.number)
        out.append({"document": str(session.doc.path), "block": block.number,
                    "line": block.line, "machine": block.machine,
                    "outcome": r.outcome if r else "not run",
                    "reason": clean(r.reason, 500) if r else "",
                    "drift": [{"id": d.entry.id, "line": d.doc_line,
                               "fix": d.insert or d.fixed} for d in (r.drifts if r else [])]})
    return out


def write_data(path: str, sessions: list[DocSession]) -> None:
    all_rows = [row for s in sessions for row in rows(s)]
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix.lower() == ".json":
        target.write_text(json.dumps({"documents": [
            {"path": str(s.doc.path), "blocks": rows(s)} for s in sessions]}, indent=2))
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["document", "block", "line", "machine", "outcome", "reason", "drift"])
    for row in all_rows:
        writer.writerow([csv_cell(row["document"]), row["block"], row["line"], row["machine"],
                         row["outcome"], csv_cell(row["reason"]),
                         csv_cell("; ".join(d["id"] for d in row["drift"]))])
    target.write_text(buffer.getvalue())


def per_document(path: str, session: DocSession, several: bool) -> Path:
    """PATH itself for one document; PATH's stem plus the document's for several."""
    target = Path(path)
    if not several:
        return target
    return target.with_name(f"{target.stem}-{session.doc.path.stem}{target.suffix}")


def terminal_lines(session: DocSession) -> list[str]:
    c = counts(session)
    lines = [f"milab: {clean(session.doc.path.name)}: {c.get(PASSED, 0)} of "
             f"{len(session.doc.blocks)} blocks passed, {c.get(FAILED, 0)} failed"]
    for d in drifts(session):
        lines.append(f"  {clean(d.one_line(), 400)}")
    return lines
