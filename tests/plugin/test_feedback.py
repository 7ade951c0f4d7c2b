"""Feedback files (pure): what passed, what to fix, what will be graded again; safe names."""

from __future__ import annotations

import pytest

from pytest_milab import feedback
from pytest_milab.grading import CheckResult, LabInfo, StepInfo, grade

STEPS = [StepInfo("vm", "The VM exists", 2), StepInfo("jq", "jq is installed", 1, ("vm",)),
         StepInfo("ssh", "The VM answers SSH", 1), StepInfo("az", "The Azure CLI", 1)]


def lab(checks, name="alice", problem=None):
    return grade([LabInfo(name, "g", None, name, problem)], STEPS,
                 [CheckResult(name, *c) for c in checks])[0]


def test_failed_steps_with_reasons_and_what_passed():
    text = feedback.render(lab([("vm", "passed"), ("jq", "failed", "jq is not installed: "
                                                   "run sudo apt-get install jq"),
                                ("ssh", "passed"), ("az", "skipped", "no Azure CLI here")]),
                           STEPS)
    assert text.startswith("# Lab feedback: alice\n")
    assert "Score: 3 of 4 points. 1 step to fix." in text
    fix = text.split("## What to fix\n\n")[1].split("\n\n")[0]
    assert fix == "- **jq is installed** (`jq`): jq is not installed: run sudo apt-get install jq"
    passed = text.split("## What passed\n\n")[1].split("\n\n")[0]
    assert passed.splitlines() == ["- **The VM exists** (`vm`)", "- **The VM answers SSH** (`ssh`)"]
    assert "## Not checked this time\n\n- **The Azure CLI** (`az`): no Azure CLI here" in text
    assert "not decided" not in text.lower() and "not final" not in text


def test_steps_failed_for_a_prerequisite_wait_on_its_fix():
    text = feedback.render(lab([("vm", "failed", "no VM named ubuntu"), ("jq", "passed")]), STEPS)
    assert "Score: 0 of 3 points. 1 step to fix, and 1 more that waits on it." in text
    assert "## What to fix\n\n- **The VM exists** (`vm`): no VM named ubuntu\n" in text
    waiting = text.split("## Waiting on a fix above\n\n")[1].split("\n\n")
    assert waiting[1].strip() == "- **jq is installed** (`jq`): needs The VM exists (`vm`)"


def test_undecided_steps_are_never_called_failures():
    text = feedback.render(lab([("vm", "passed"), ("jq", "passed"),
                                ("ssh", "error", "SSH broke"),
                                ("az", "not-propagated", "the grant is not in force yet")]), STEPS)
    assert "## What to fix" not in text and "fail" not in text.lower()
    later = text.split("## Not decided, will be graded again\n\n")[1].split("\n\n")
    assert later[1].splitlines() == [
        "- **The VM answers SSH** (`ssh`): not decided, will be graded again (SSH broke)",
        "- **The Azure CLI** (`az`): not decided, will be graded again (the grant is not in "
        "force yet)"]
    assert "This grade is not final: 2 steps could not be decided" in text


def test_a_complete_lab_is_told_so():
    text = feedback.render(lab([(s.id, "passed") for s in STEPS]), STEPS)
    assert "Well done: every step that was checked passed (5 of 5 points)." in text


def test_a_roster_line_not_graded_is_told_it_was_not_graded():
    text = feedback.render(lab([], problem="roster c.csv, line 3: the group is empty"), STEPS)
    assert "Your lab was **not graded**" in text and "line 3: the group is empty" in text
    assert "Score" not in text


def test_markdown_and_html_from_students_stay_text():
    name = "<img src=x onerror=alert(1)>"
    text = feedback.render(lab([("vm", "failed", "[click](javascript:alert(1)) *x* `y` <b>")],
                               name=name), STEPS)
    assert "<" not in text.replace("\\<", "") and "](" not in text.replace("\\](", "")
    assert "# Lab feedback: \\<img src=x onerror=alert(1)\\>" in text
    assert "\\[click\\](javascript:alert(1)) \\*x\\* \\`y\\` \\<b\\>" in text


@pytest.mark.parametrize("label, stem", [
    ("alice", "alice"),
    ("../../etc/passwd", "etc_passwd"),
    ("..\\..\\win.ini", "win.ini"),
    (".hidden", "hidden"),
    ("-rf", "rf"),
    ("José Ñúñez", "José_Ñúñez"),
    ("a/b\x00c\x1b", "a_bc"),
    ("CON", "lab_CON"),
    ("nul.txt", "lab_nul.txt"),
    ("...", "lab"),
    ("", "lab"),
    ("x" * 300, "x" * feedback.MAX_STEM),
])
def test_safe_file_names(label, stem):
    assert feedback.safe_stem(label) == stem


def test_file_names_never_collide_even_ignoring_case():
    labs = grade([LabInfo(n, "g") for n in ("a/b", "a_b", "A_B", "a?b", "x" * 300, "x" * 301)],
                 STEPS, [])
    names = feedback.file_names(labs)
    assert list(names.values()) == ["a_b.md", "a_b-2.md", "A_B-3.md", "a_b-4.md",
                                    "x" * 64 + ".md", "x" * 62 + "-2.md"]


def test_write_puts_one_file_per_lab_in_the_directory(tmp_path):
    labs = grade([LabInfo("../alice", "g"), LabInfo("bob", "g")], STEPS,
                 [CheckResult("bob", "vm", "passed")])
    written = feedback.write(str(tmp_path / "fb"), labs, STEPS)
    assert sorted(p.name for p in written) == ["alice.md", "bob.md"]
    assert all(p.parent == tmp_path / "fb" for p in written)
    assert (tmp_path / "fb" / "bob.md").read_text().startswith("# Lab feedback: bob")
