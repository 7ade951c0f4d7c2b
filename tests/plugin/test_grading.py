"""Grading: outcomes, prerequisites and points (pure)."""

from __future__ import annotations

import pytest

from pytest_milab.grading import CheckResult, LabInfo, StepInfo, combine, grade_lab, order_steps

STEPS = [StepInfo("vm", "VM", 1), StepInfo("vm-identity", "Identity", 2, ("vm",)),
         StepInfo("token", "Token", 1, ("vm-identity",)), StepInfo("tags", "Tags", 1, ("vm",))]
LAB = LabInfo("alice", "g")


def check(step, outcome, reason=""):
    return CheckResult("alice", step, outcome, reason)


def test_all_passed_scores_everything():
    result = grade_lab(LAB, STEPS, [check(s.id, "passed") for s in STEPS])
    assert result.score == result.max_score == 5


def test_failed_prerequisite_fails_its_dependents_with_needs():
    result = grade_lab(LAB, STEPS, [check("vm", "passed"), check("vm-identity", "failed", "no id"),
                                    check("token", "passed"), check("tags", "passed")])
    by_id = {s.id: s for s in result.steps}
    assert by_id["vm-identity"].reason == "no id"
    assert (by_id["token"].outcome, by_id["token"].reason) == ("failed", "needs vm-identity")
    assert by_id["tags"].outcome == "passed"
    assert (result.score, result.max_score) == (2, 5)


def test_an_outcome_inherited_from_a_machine_s_word_is_labelled_so():
    """A step that ends `needs X` rests on X's evidence: a control-plane check needing a step
    the machine reported is labelled vm-reported, as is everything downstream of it."""
    vm_said = CheckResult("alice", "vm-identity", "unverified", "garbage", provenance="vm-reported")
    result = grade_lab(LAB, STEPS, [check("vm", "passed"), vm_said, check("token", "passed"),
                                    check("tags", "passed")])
    by_id = {s.id: s for s in result.steps}
    assert (by_id["token"].outcome, by_id["token"].provenance) == ("unverified", "vm-reported")
    assert by_id["tags"].provenance == by_id["vm"].provenance == "control-plane"
    # A control-plane prerequisite that failed leaves its dependents control-plane.
    result = grade_lab(LAB, STEPS, [check("vm", "failed", "no vm"), check("vm-identity", "passed"),
                                    check("token", "passed"), check("tags", "passed")])
    assert {s.provenance for s in result.steps} == {"control-plane"}


def test_error_and_not_propagated_never_cost_points():
    result = grade_lab(LAB, STEPS, [check("vm", "passed"), check("vm-identity", "error", "429"),
                                    check("token", "passed"), check("tags", "not-propagated")])
    by_id = {s.id: s for s in result.steps}
    assert by_id["token"].outcome == "error"
    assert "could not be decided" in by_id["token"].reason
    assert (result.score, result.max_score) == (1, 1)
    assert {s.id for s in result.to_rerun} == {"vm-identity", "token", "tags"}


def test_a_step_passes_only_when_all_its_checks_pass():
    assert combine([check("vm", "passed"), check("vm", "failed", "x")]) == ("failed", "x")
    assert combine([check("vm", "passed"), check("vm", "error", "y")]) == ("error", "y")
    assert combine([check("vm", "passed"), check("vm", "skipped")])[0] == "passed"
    assert combine([check("vm", "skipped", "why")]) == ("skipped", "why")


def test_a_lab_with_a_problem_is_all_error():
    lab = LabInfo("x", "g", problem="roster line 3: bad")
    result = grade_lab(lab, STEPS, [])
    assert {s.outcome for s in result.steps} == {"error"}
    assert result.max_score == 0


def test_order_puts_prerequisites_first_and_detects_cycles():
    steps = [StepInfo("b", needs=("a",)), StepInfo("a")]
    assert [s.id for s in order_steps(steps)] == ["a", "b"]
    with pytest.raises(ValueError, match="cycle"):
        order_steps([StepInfo("a", needs=("b",)), StepInfo("b", needs=("a",))])
