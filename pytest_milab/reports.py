"""Reports from graded labs: the terminal summary, JSON and CSV. Pure: text in, text out."""

from __future__ import annotations

import csv
import io
import json

from .grading import LabResult, StepInfo


def _num(x: float) -> int | float:
    return int(x) if float(x).is_integer() else round(x, 2)


def to_json(labs: list[LabResult]) -> dict:
    return {"groups": [{
        "group": lab.group, "subscription": lab.subscription, "student": lab.student,
        "label": lab.label, "score": _num(lab.score), "max_score": _num(lab.max_score),
        **({"problem": lab.problem} if lab.problem else {}),
        "steps": [{"id": s.id, "title": s.title, "outcome": s.outcome, "points": _num(s.points),
                   "max_points": _num(s.max_points), "reason": s.reason} for s in lab.steps],
    } for lab in labs]}


def to_csv(labs: list[LabResult], steps: list[StepInfo]) -> str:
    """One row per lab: points earned per step id; empty where the step did not count."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["group", "student", *[s.id for s in steps], "score", "max_score"])
    for lab in labs:
        by_id = {s.id: s for s in lab.steps}
        cells = []
        for step in steps:
            r = by_id.get(step.id)
            cells.append("" if r is None or r.outcome not in ("passed", "failed")
                         else _num(r.points))
        writer.writerow([lab.group, lab.student or "", *cells, _num(lab.score),
                         _num(lab.max_score)])
    return out.getvalue()


def write(path: str, labs: list[LabResult], steps: list[StepInfo]) -> None:
    text = (json.dumps(to_json(labs), indent=2) + "\n" if path.lower().endswith(".json")
            else to_csv(labs, steps))
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def terminal_lines(labs: list[LabResult]) -> list[str]:
    """One row per lab with its score, then each lab's failing steps with reasons."""
    if not labs:
        return []
    width = max(len("lab"), *(len(lab.label) for lab in labs))
    lines = [f"{'lab':<{width}}  {'score':>9}  passed failed error not-prop skipped"]
    for lab in labs:
        counts = {o: sum(1 for s in lab.steps if s.outcome == o)
                  for o in ("passed", "failed", "error", "not-propagated", "skipped")}
        score = f"{_num(lab.score)}/{_num(lab.max_score)}"
        lines.append(f"{lab.label:<{width}}  {score:>9}  {counts['passed']:>6} "
                     f"{counts['failed']:>6} {counts['error']:>5} {counts['not-propagated']:>8} "
                     f"{counts['skipped']:>7}" + (f"  ({lab.problem})" if lab.problem else ""))
    for lab in labs:
        notable = [s for s in lab.steps if s.outcome != "passed"]
        if not notable or lab.problem:
            continue
        lines.append("")
        lines.append(f"{lab.label}:")
        for s in notable:
            lines.append(f"  {s.outcome:<14} {s.id}: {s.reason}")
    rerun = [lab.label for lab in labs if lab.to_rerun]
    if rerun:
        lines.append("")
        lines.append("not decided (never counted; run again): " + ", ".join(rerun))
    return lines
