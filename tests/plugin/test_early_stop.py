"""A run that stops early (-x, --maxfail, Ctrl-C) writes a grade book that says so: labs it
never reached are not graded, steps it never reached are undecided, no lab looks complete
unless every step was checked. A run that grades nothing (--collect-only, --setup-only,
--setup-plan) writes no report and leaves an old one as it was."""

from __future__ import annotations

import csv
import json

import pytest
from test_plugin import CONFTEST  # the synthetic evidence of the plugin's own tests

SUITE = """
import pytest

@pytest.mark.milab_step("first", title="First")
def test_first(lab):
    if lab.group_name == "interrupt":
        raise KeyboardInterrupt
    assert lab.group_name != "broken", "the lab is broken"

@pytest.mark.milab_step("second", title="Second")
def test_second(lab):
    pass

@pytest.mark.milab_step("third", title="Third", needs=("first",))
def test_third(lab):
    pass
"""


@pytest.fixture
def suite(pytester, azure_env):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_suite=SUITE)
    (pytester.path / "g.json").write_text("kept")
    return pytester


def labs(suite):
    return "--milab-group", "ok", "--milab-group", "broken", "--milab-group", "late"


@pytest.mark.parametrize("flag", ["--setup-only", "--setup-plan", "--collect-only"])
def test_a_run_that_grades_nothing_leaves_the_report_alone(suite, flag):
    suite.runpytest(*labs(suite), flag, "--milab-report", "g.json")
    assert (suite.path / "g.json").read_text() == "kept"


@pytest.mark.parametrize("stop", [("-x",), ("--maxfail", "1")])
def test_a_run_stopped_by_a_failure_says_so(suite, stop):
    result = suite.runpytest(*labs(suite), *stop, "--milab-report", "g.json",
                             "--milab-report", "g.csv")
    data = json.loads((suite.path / "g.json").read_text())
    by_label = {g["label"]: g for g in data["groups"]}
    assert by_label["ok"]["complete"] is True
    broken = by_label["broken"]
    assert broken["complete"] is False and broken["undecided"] == 1
    # `third` needs `first`, which failed: that it inherits, checked or not.
    assert [(s["id"], s["outcome"], s["reason"]) for s in broken["steps"]] == [
        ("first", "failed", "the lab is broken"),
        ("second", "error", "not graded: the run stopped early"),
        ("third", "failed", "needs first")]
    assert data["not_graded"] == [{"group": "late", "student": None, "label": "late",
                                   "problem": "the run stopped early"}]
    rows = {r[0]: r for r in csv.reader((suite.path / "g.csv").open())}
    assert rows["ok"][2] == "complete" and rows["broken"][2] == "incomplete: 1 undecided"
    assert rows["late"][2] == "not graded"
    result.stdout.fnmatch_lines(["milab: the run stopped early (stopping after 1 failures)*",
                                 "milab: 2 labs graded in *"])
    assert result.ret == 10  # the grade book is not final


def test_a_run_without_a_stop_grades_every_lab_completely(suite):
    result = suite.runpytest(*labs(suite), "--milab-report", "g.json")
    data = json.loads((suite.path / "g.json").read_text())
    assert [g["complete"] for g in data["groups"]] == [True, True, True]
    assert data["not_graded"] == [] and result.ret == 1
    assert "stopped early" not in result.stdout.str()


def test_steps_deselected_are_not_counted_against_a_stopped_run(suite):
    suite.runpytest(*labs(suite), "-x", "-k", "first", "--milab-report", "g.json")
    data = json.loads((suite.path / "g.json").read_text())
    broken = {g["label"]: g for g in data["groups"]}["broken"]
    assert [s["id"] for s in broken["steps"]] == ["first"]


def test_ctrl_c_writes_a_grade_book_that_is_not_final(suite):
    # In a process of its own: pytester's in-process run hands Ctrl-C on to this session.
    result = suite.runpytest_subprocess("--milab-group", "ok", "--milab-group", "interrupt",
                             "--milab-group", "late", "--milab-report", "g.json")
    data = json.loads((suite.path / "g.json").read_text())
    assert [g["label"] for g in data["groups"] if g["complete"]] == ["ok"]
    assert {g["label"] for g in data["not_graded"]} <= {"interrupt", "late"}
    assert "late" in {g["label"] for g in data["not_graded"]}
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["milab: the run stopped early (interrupted)*"])


def test_under_xdist_a_stopped_run_shows_no_unfinished_lab_complete(suite):
    result = suite.runpytest(*labs(suite), "-p", "xdist", "-n", "2", "-x",
                             "--milab-report", "g.json")
    data = json.loads((suite.path / "g.json").read_text())
    for group in data["groups"]:
        ran = [s for s in group["steps"] if not s["reason"].startswith("not graded")]
        assert group["complete"] == (len(ran) == 3 == len(group["steps"])), group
    assert {g["label"] for g in data["groups"]} | {g["label"] for g in data["not_graded"]} \
        == {"ok", "broken", "late"}
    if data["not_graded"] or not all(g["complete"] for g in data["groups"]):
        assert result.ret == 10  # stopped by -x (not Ctrl-C): the grade book is not final
