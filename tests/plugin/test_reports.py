"""Reports: JSON and CSV shapes, and the terminal table (pure)."""

from __future__ import annotations

import csv
import io
import json

from pytest_milab import reports
from pytest_milab.grading import CheckResult, LabInfo, StepInfo, grade

STEPS = [StepInfo("vm", "VM", 2), StepInfo("jq", "jq", 1)]


def graded():
    labs = [LabInfo("alice", "g", "sub-a", "alice"), LabInfo("bob", "g", "sub-b", "bob"),
            LabInfo("line-4", "line-4", None, None, problem="roster x, line 4: bad")]
    checks = [CheckResult("alice", "vm", "passed"), CheckResult("alice", "jq", "failed", "no jq"),
              CheckResult("bob", "vm", "passed"), CheckResult("bob", "jq", "error", "ssh broke")]
    return grade(labs, STEPS, checks)


def test_json_shape(tmp_path):
    path = tmp_path / "grades.json"
    reports.write(str(path), graded(), STEPS)
    data = json.loads(path.read_text())
    alice, bob = data["groups"]
    assert {k: alice[k] for k in ("group", "subscription", "student", "score", "max_score",
                                  "complete", "undecided")} == {
        "group": "g", "subscription": "sub-a", "student": "alice", "score": 2, "max_score": 3,
        "complete": True, "undecided": 0}
    assert alice["steps"][1] == {"id": "jq", "title": "jq", "outcome": "failed", "points": 0,
                                 "max_points": 1, "reason": "no jq"}
    assert (bob["complete"], bob["undecided"]) == (False, 1)
    # A roster line that could not be graded is not a 0/0 row beside the real ones.
    assert data["not_graded"] == [{"group": "line-4", "student": None, "label": "line-4",
                                   "problem": "roster x, line 4: bad"}]


def test_csv_says_status_points_outcomes_and_problems(tmp_path):
    path = tmp_path / "grades.csv"
    reports.write(str(path), graded(), STEPS)
    rows = list(csv.reader(io.StringIO(path.read_text())))
    assert rows[0] == ["group", "student", "status", "score", "max_score", "undecided",
                       "vm", "vm outcome", "jq", "jq outcome", "problems"]
    assert rows[1] == ["g", "alice", "complete", "2", "3", "0", "2", "passed", "0", "failed",
                       "jq: no jq"]
    assert rows[2] == ["g", "bob", "incomplete: 1 undecided", "2", "2", "1", "2", "passed", "",
                       "error", ""]
    assert rows[3] == ["line-4", "", "not graded", "", "", "", "", "not graded", "",
                       "not graded", "roster x, line 4: bad"]


def test_csv_cells_are_never_formulas_and_carry_no_control_characters(tmp_path):
    labs = grade([LabInfo("=HYPERLINK(1)", "g", None, "=HYPERLINK(\"http://x\")")],
                 STEPS, [CheckResult("=HYPERLINK(1)", "vm", "failed", "+cmd|' /C calc'!A0"),
                         CheckResult("=HYPERLINK(1)", "jq", "failed", "@SUM(1)\x1b]52;c;aGk=\x07")])
    rows = list(csv.reader(io.StringIO(reports.to_csv(labs, STEPS))))
    assert rows[1][1] == "'=HYPERLINK(\"http://x\")"
    assert rows[1][-1] == "vm: +cmd|' /C calc'!A0; jq: @SUM(1)]52;c;aGk="
    assert not any(c.startswith(("=", "+", "-", "@")) for c in rows[1])


def test_terminal_lists_failing_steps_and_reruns():
    lines = reports.terminal_lines(graded())
    text = "\n".join(lines)
    assert "alice" in lines[1] and "2/3" in lines[1]
    assert "failed         jq: no jq" in text
    assert "not decided (never counted; grade again later): bob" in text


def test_terminal_says_a_reason_shared_by_labs_once():
    labs = grade([LabInfo(n, n) for n in ("a", "b", "c")], STEPS,
                 [CheckResult(n, "jq", "skipped", "no Azure CLI") for n in ("a", "b", "c")]
                 + [CheckResult("a", "vm", "failed", "no VM")])
    text = "\n".join(reports.terminal_lines(labs))
    assert text.count("no Azure CLI") == 1 and "[3 labs: a, b, c]" in text
    assert "a:\n  failed         vm: no VM" in text


def test_terminal_text_from_students_has_no_escape_sequences():
    labs = grade([LabInfo("x\x1b[1Ay", "g")], STEPS,
                 [CheckResult("x\x1b[1Ay", "vm", "failed", "bad\x1b]52;c;aGk=\x07\x1b[2K")])
    text = "\n".join(reports.terminal_lines(labs))
    assert "\x1b" not in text and "\x07" not in text
