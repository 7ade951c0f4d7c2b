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
    alice = data["groups"][0]
    assert {k: alice[k] for k in ("group", "subscription", "student", "score", "max_score")} == {
        "group": "g", "subscription": "sub-a", "student": "alice", "score": 2, "max_score": 3}
    assert alice["steps"][1] == {"id": "jq", "title": "jq", "outcome": "failed", "points": 0,
                                 "max_points": 1, "reason": "no jq"}
    assert data["groups"][2]["problem"] == "roster x, line 4: bad"


def test_csv_has_a_column_per_step(tmp_path):
    path = tmp_path / "grades.csv"
    reports.write(str(path), graded(), STEPS)
    rows = list(csv.reader(io.StringIO(path.read_text())))
    assert rows[0] == ["group", "student", "vm", "jq", "score", "max_score"]
    assert rows[1] == ["g", "alice", "2", "0", "2", "3"]
    assert rows[2] == ["g", "bob", "2", "", "2", "2"]


def test_terminal_lists_failing_steps_and_reruns():
    lines = reports.terminal_lines(graded())
    text = "\n".join(lines)
    assert "alice" in lines[1] and "2/3" in lines[1]
    assert "failed         jq: no jq" in text
    assert "not decided (never counted; run again): bob" in text
