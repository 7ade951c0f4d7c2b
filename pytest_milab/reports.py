"""Reports from graded labs: the terminal summary, JSON and CSV. Pure: results in, text out.

A grade book must not mislead: every row says whether its lab is completely graded or how many
steps could not be decided, each step's outcome stands beside its points, and a roster line
that could not be graded is listed apart (JSON) or marked "not graded" with no score (CSV)."""

from __future__ import annotations

import csv
import io
import json

from .grading import COUNTED, ERROR, NOT_PROPAGATED, LabResult, StepInfo, StepResult
from .text import clean, csv_cell

UNDECIDED = (ERROR, NOT_PROPAGATED)
SUFFIXES = (".json", ".csv", ".html")
SUFFIX_WORDS = ", ".join(SUFFIXES[:-1]) + " or " + SUFFIXES[-1]


def _num(x: float) -> int | float:
    return int(x) if float(x).is_integer() else round(x, 2)


def undecided(lab: LabResult) -> int:
    return sum(1 for s in lab.steps if s.outcome in UNDECIDED)


def status(lab: LabResult) -> str:
    """"complete", "incomplete: N undecided" or "not graded"."""
    if lab.problem:
        return "not graded"
    n = undecided(lab)
    return "complete" if n == 0 else f"incomplete: {n} undecided"


def to_json(labs: list[LabResult]) -> dict:
    graded = [lab for lab in labs if not lab.problem]
    return {
        "groups": [{
            "group": lab.group, "subscription": lab.subscription, "student": lab.student,
            "label": lab.label, "score": _num(lab.score), "max_score": _num(lab.max_score),
            "complete": undecided(lab) == 0, "undecided": undecided(lab),
            "steps": [{"id": s.id, "title": s.title, "outcome": s.outcome,
                       "points": _num(s.points), "max_points": _num(s.max_points),
                       "reason": clean(s.reason, 1000)} for s in lab.steps],
        } for lab in graded],
        "not_graded": [{"group": lab.group, "student": lab.student, "label": lab.label,
                        "problem": clean(lab.problem, 1000)}
                       for lab in labs if lab.problem],
    }


def problems(lab: LabResult) -> str:
    """The failed steps with their reasons, in one cell."""
    if lab.problem:
        return lab.problem
    return "; ".join(f"{s.id}: {s.reason}" for s in lab.steps
                     if s.outcome in ("failed", "unverified"))


def to_csv(labs: list[LabResult], steps: list[StepInfo]) -> str:
    """One row per lab: its status and score, then per step its points (empty where the step
    does not count) and its outcome, then the problems to fix."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = ["group", "student", "status", "score", "max_score", "undecided"]
    for step in steps:
        header += [step.id, f"{step.id} outcome"]
    writer.writerow(header + ["problems"])
    for lab in labs:
        row: list[object] = [lab.group, lab.student or "", status(lab)]
        by_id = {s.id: s for s in lab.steps}
        if lab.problem:
            row += ["", "", ""] + ["", "not graded"] * len(steps)
        else:
            row += [_num(lab.score), _num(lab.max_score), undecided(lab)]
            for step in steps:
                r = by_id.get(step.id)
                counted = r is not None and r.outcome in COUNTED
                row += [_num(r.points) if counted else "", r.outcome if r else ""]
        writer.writerow([csv_cell(c) for c in row + [problems(lab)]])
    return out.getvalue()


def write(path: str, labs: list[LabResult], steps: list[StepInfo]) -> None:
    """A report by its suffix: .json, .csv, or .html (the class report)."""
    suffix = path.lower().rsplit(".", 1)[-1]
    if suffix == "html":
        import time

        from . import html_report

        html_report.write(path, labs, steps, generated=time.strftime("%Y-%m-%d %H:%M %Z"))
        return
    text = json.dumps(to_json(labs), indent=2) + "\n" if suffix == "json" else to_csv(labs, steps)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def terminal_lines(labs: list[LabResult]) -> list[str]:
    """One row per lab with its score, then the reasons: a reason shared by several labs is
    said once, with the labs it applies to."""
    graded = [lab for lab in labs if not lab.problem]
    if not graded:
        return []
    names = {lab.label: clean(lab.label, 60) for lab in graded}
    width = max(len("lab"), *(len(n) for n in names.values()))
    unverified = any(s.outcome == "unverified" for lab in graded for s in lab.steps)
    lines = [f"{'lab':<{width}}  {'score':>9}  passed failed "
             + ("unverif " if unverified else "") + "error not-prop skipped"]
    for lab in graded:
        counts = {o: sum(1 for s in lab.steps if s.outcome == o)
                  for o in ("passed", "failed", "unverified", "error", "not-propagated",
                            "skipped")}
        score = f"{_num(lab.score)}/{_num(lab.max_score)}"
        lines.append(f"{names[lab.label]:<{width}}  {score:>9}  {counts['passed']:>6} "
                     f"{counts['failed']:>6} "
                     + (f"{counts['unverified']:>7} " if unverified else "")
                     + f"{counts['error']:>5} {counts['not-propagated']:>8} "
                     f"{counts['skipped']:>7}")
    # (outcome, step, reason) -> labs, in the order first seen
    shared: dict[tuple[str, str, str], list[str]] = {}
    for lab in graded:
        skipped = {s.id for s in lab.steps if s.outcome == "skipped"}
        for s in lab.steps:
            # A step skipped because its prerequisite was skipped says nothing new.
            implied = s.outcome == "skipped" and any(
                s.reason == f"needs {n}, which was skipped" for n in skipped)
            if s.outcome != "passed" and not implied:
                shared.setdefault((s.outcome, s.id, clean(s.reason)), []).append(names[lab.label])
    if len(graded) == 1:
        for (outcome, step, reason) in shared:
            lines.append(f"  {outcome:<14} {step}: {reason}")
    else:
        by_lab: dict[str, list[str]] = {}
        for (outcome, step, reason), who in shared.items():
            line = f"  {outcome:<14} {step}: {reason}"
            if len(who) > 1:
                lines_for = f"{line}  [{len(who)} labs: {', '.join(who[:5])}" \
                            f"{', ...' if len(who) > 5 else ''}]"
                by_lab.setdefault("", []).append(lines_for)
            else:
                by_lab.setdefault(who[0], []).append(line)
        for label in [names[lab.label] for lab in graded]:
            if label in by_lab:
                lines += ["", f"{label}:", *by_lab[label]]
        if "" in by_lab:
            lines += ["", "in several labs:", *by_lab[""]]
    rerun = [names[lab.label] for lab in graded if lab.to_rerun]
    if rerun:
        lines.append("")
        lines.append("not decided (never counted; grade again later): " + ", ".join(rerun))
    return lines


def from_json(data: dict) -> tuple[list[LabResult], list[StepInfo]]:
    """A JSON report back as results (and its steps, in the order the labs list them)."""
    labs, steps = [], {}
    for g in data.get("groups") or []:
        lab = LabResult(g.get("label") or g.get("student") or g["group"], g["group"],
                        g.get("subscription"), g.get("student"))
        for s in g.get("steps") or []:
            lab.steps.append(StepResult(s["id"], s.get("title", ""), s["outcome"],
                                        s.get("points", 0), s.get("max_points", 0),
                                        s.get("reason", "")))
            known = steps.get(s["id"])
            points = max(s.get("max_points", 0), known.points if known else 0)
            steps[s["id"]] = StepInfo(s["id"], s.get("title", ""), points)
        labs.append(lab)
    for g in data.get("not_graded") or []:
        labs.append(LabResult(g.get("label") or g["group"], g["group"], None, g.get("student"),
                              problem=g.get("problem")))
    return labs, list(steps.values())


def merge(reports: list[dict]) -> tuple[list[LabResult], list[StepInfo]]:
    """Several runs' JSON reports (a class graded in shards) as one: every lab once, in the
    order of the reports; a lab in two reports is a mistake, said as such."""
    labs: list[LabResult] = []
    steps: dict[str, StepInfo] = {}
    seen: dict[str, int] = {}
    for index, data in enumerate(reports):
        these, their_steps = from_json(data)
        for lab in these:
            key = f"{(lab.subscription or '').lower()}/{lab.group.lower()}/{lab.label}"
            if key in seen:
                raise ValueError(f"lab {lab.label} (group {lab.group}) is in reports "
                                 f"{seen[key] + 1} and {index + 1}: merge each shard once")
            seen[key] = index
            labs.append(lab)
        for step in their_steps:
            steps.setdefault(step.id, step)
    return labs, list(steps.values())
