"""Feedback for students: one Markdown file per lab saying, in plain words, what passed and
what to fix. Pure: results in, text out (and `write` puts the texts in a directory).

A step that could not be decided (Azure throttled, SSH broke, a grant not in force yet) is
never called a failure: it is listed as not decided, to be graded again. File names come from
the labs' labels (a student's name, usually), made safe: no path separators or leading dots,
bounded in length, and never two labs in one file, even on a file system blind to case."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from .grading import (
    ERROR,
    FAILED,
    NOT_PROPAGATED,
    PASSED,
    SKIPPED,
    UNVERIFIED,
    LabResult,
    StepInfo,
)
from .reports import _num, undecided
from .text import clean

MAX_STEM = 64
# Names Windows keeps for devices, whatever the extension.
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
             *(f"lpt{i}" for i in range(10))}
_UNSAFE = re.compile(r"[^\w.-]+")
# Markdown's inline syntax (emphasis, code, links, images, raw HTML, entities, tables, strike):
# escaped with a backslash, so a reason from a student's machine stays text.
_MARKDOWN = re.compile(r"([\\`*_\[\]<>|~&])")
_NEEDS = re.compile(r"^needs ([a-z0-9][a-z0-9-]*)$")


def needed_step(reason: str | None) -> str | None:
    """The prerequisite a failed step failed for ("needs <step>"), None when it failed on its
    own account."""
    found = _NEEDS.match(reason or "")
    return found.group(1) if found else None


def safe_stem(label: str) -> str:
    """A file name stem from a label: letters, digits, `.`, `_` and `-` only, not starting
    with a dot or a dash, at most MAX_STEM characters, never a Windows device name."""
    text = unicodedata.normalize("NFKC", clean(label, 1000))
    text = _UNSAFE.sub("_", text).strip("._-")
    text = re.sub(r"_{2,}", "_", text)[:MAX_STEM].rstrip("._-")
    if not text:
        return "lab"
    if text.split(".")[0].casefold() in _RESERVED:
        text = f"lab_{text}"[:MAX_STEM]
    return text


def file_names(labs: list[LabResult]) -> dict[str, str]:
    """Each lab's label -> its file name (`<stem>.md`), unique even ignoring case."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for lab in labs:
        stem = safe_stem(lab.label)
        name, n = f"{stem}.md", 1
        while name.casefold() in taken:
            n += 1
            suffix = f"-{n}"
            name = f"{stem[:MAX_STEM - len(suffix)]}{suffix}.md"
        taken.add(name.casefold())
        names[lab.label] = name
    return names


def md(text: object, limit: int = 1000) -> str:
    """Untrusted text as Markdown text: one line, Markdown's inline syntax escaped."""
    return _MARKDOWN.sub(r"\\\1", clean("" if text is None else text, limit))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def render(lab: LabResult, steps: list[StepInfo]) -> str:
    """The feedback for one lab."""
    titles = {s.id: s.title or s.id for s in steps}

    def name(step_id: str) -> str:
        return f"**{md(titles.get(step_id, step_id), 200)}** (`{step_id}`)"


    who = md(lab.student or lab.label, 120)
    lines = [f"# Lab feedback: {who}", ""]
    if lab.problem:
        lines += ["Your lab was **not graded**: the class list has a problem on your line.",
                  "", f"> {md(lab.problem)}", "",
                  "Your instructor will correct the class list and grade your lab again; "
                  "you do not need to do anything.", ""]
        return "\n".join(lines)
    failed = [s for s in lab.steps if s.outcome in (FAILED, UNVERIFIED)
              and needed_step(s.reason) is None]
    waiting = [s for s in lab.steps if s.outcome == FAILED and needed_step(s.reason)]
    later = [s for s in lab.steps if s.outcome in (ERROR, NOT_PROPAGATED)]
    passed = [s for s in lab.steps if s.outcome == PASSED]
    skipped = [s for s in lab.steps if s.outcome == SKIPPED]
    score = f"{_num(lab.score)} of {_num(lab.max_score)} points"
    if not failed and not waiting and not later:
        lines.append(f"Well done: every step that was checked passed ({score}).")
    elif not failed and not waiting:
        lines.append(f"Nothing to fix so far ({score}), but "
                     f"{_plural(len(later), 'step')} could not be decided yet.")
    else:
        lines.append(f"Score: {score}. {_plural(len(failed), 'step')} to fix"
                     + (f", and {len(waiting)} more that "
                        f"{'waits' if len(waiting) == 1 else 'wait'} on "
                        f"{'it' if len(failed) == 1 else 'them'}." if waiting else "."))
    if later:
        lines += ["", f"This grade is not final: {_plural(undecided(lab), 'step')} could not "
                      "be decided and will be graded again. Undecided steps never cost points."]
    if failed:
        lines += ["", "## What to fix", ""]
        lines += [f"- {name(s.id)}: {md(s.reason) or 'the check failed'}" for s in failed]
    if waiting:
        lines += ["", "## Waiting on a fix above", "",
                  "These steps need a step that failed, so they fail too; fix that one first:",
                  ""]
        for s in waiting:
            need = needed_step(s.reason)
            lines.append(f"- {name(s.id)}: needs {md(titles.get(need, need), 200)} (`{need}`)")
    if later:
        lines += ["", "## Not decided, will be graded again", "",
                  "The grader could not check these steps this time; they cost no points:",
                  ""]
        lines += [f"- {name(s.id)}: not decided, will be graded again ({md(s.reason)})"
                  for s in later]
    if passed:
        lines += ["", "## What passed", ""]
        lines += [f"- {name(s.id)}" for s in passed]
    if skipped:
        lines += ["", "## Not checked this time", ""]
        lines += [f"- {name(s.id)}: {md(s.reason) or 'skipped'}" for s in skipped]
    return "\n".join(lines) + "\n"


def render_all(labs: list[LabResult], steps: list[StepInfo]) -> dict[str, str]:
    """File name -> text, one per lab (roster lines not graded too: their students are told)."""
    names = file_names(labs)
    return {names[lab.label]: render(lab, steps) for lab in labs}


def write(directory: str, labs: list[LabResult], steps: list[StepInfo]) -> list[Path]:
    """Write each lab's feedback into `directory` (made if missing); the paths written."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_all(labs, steps).items():
        path = out / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
