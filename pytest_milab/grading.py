"""Outcomes, step prerequisites and points. Pure functions of check results: no I/O."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .provenance import VM_REPORTED, weakest

PASSED, FAILED, UNVERIFIED, ERROR, NOT_PROPAGATED, SKIPPED = (
    "passed", "failed", "unverified", "error", "not-propagated", "skipped")
# When several checks of one step disagree, the first of these wins.
_PRECEDENCE = (FAILED, UNVERIFIED, ERROR, NOT_PROPAGATED, PASSED, SKIPPED)
# Outcomes that count in max_score. `unverified`: the student's machine did not let the grader
# see (it answered garbage, hung, refused SSH while running with SSH allowed): no points, as
# if the step had failed, so breaking the probe never raises a score.
COUNTED = (PASSED, FAILED, UNVERIFIED)


@dataclass(frozen=True)
class StepInfo:
    id: str
    title: str = ""
    points: float = 1
    needs: tuple[str, ...] = ()
    vm_weight: float = 1.0  # the share of its points a pass earns on the machine's word alone


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one test case for one lab."""

    lab: str
    step: str
    outcome: str
    reason: str = ""
    nodeid: str = ""
    provenance: str = "control-plane"  # where its evidence came from (see provenance.py)


@dataclass(frozen=True)
class LabInfo:
    label: str
    group: str
    subscription: str | None = None
    student: str | None = None
    problem: str | None = None


@dataclass
class StepResult:
    id: str
    title: str
    outcome: str
    points: float
    max_points: float
    reason: str = ""
    provenance: str = "control-plane"


@dataclass
class LabResult:
    label: str
    group: str
    subscription: str | None
    student: str | None
    steps: list[StepResult] = field(default_factory=list)
    problem: str | None = None

    @property
    def score(self) -> float:
        return sum(s.points for s in self.steps)

    @property
    def max_score(self) -> float:
        return sum(s.max_points for s in self.steps)

    @property
    def to_rerun(self) -> list[StepResult]:
        return [s for s in self.steps if s.outcome in (ERROR, NOT_PROPAGATED)]


def combine(results: Iterable[CheckResult]) -> tuple[str, str]:
    """One step's outcome from its checks: it passes when all its checks pass."""
    first: dict[str, str] = {}  # outcome -> the reason of its first check
    for r in results:
        first.setdefault(r.outcome, r.reason)
    if not first:
        return SKIPPED, "no check ran"
    for outcome in _PRECEDENCE:
        if outcome in first:
            return outcome, first[outcome]
    return ERROR, f"unknown outcome {next(iter(first))!r}"


def prerequisite_outcome(step: StepInfo, outcomes: dict[str, tuple[str, str]]) -> tuple[str, str] | None:
    """The outcome a step inherits from its first prerequisite that did not pass, if any."""
    for need in step.needs:
        if need not in outcomes:
            continue
        outcome, _ = outcomes[need]
        if outcome == PASSED:
            continue
        if outcome == FAILED:
            return FAILED, f"needs {need}"
        if outcome == UNVERIFIED:
            return UNVERIFIED, f"needs {need}, which could not be verified"
        if outcome == SKIPPED:
            return SKIPPED, f"needs {need}, which was skipped"
        return outcome, f"needs {need}, which could not be decided" if outcome == ERROR \
            else f"needs {need}, which has not propagated yet"
    return None


def grade_lab(lab: LabInfo, steps: list[StepInfo], checks: list[CheckResult]) -> LabResult:
    """Grade one lab: `steps` in catalogue order (prerequisites first)."""
    result = LabResult(lab.label, lab.group, lab.subscription, lab.student, problem=lab.problem)
    by_step: dict[str, list[CheckResult]] = {}
    for check in checks:
        by_step.setdefault(check.step, []).append(check)
    outcomes: dict[str, tuple[str, str]] = {}
    provenances: dict[str, str] = {}
    for step in steps:
        provenance = weakest(c.provenance for c in by_step.get(step.id, ()))
        if lab.problem:
            outcome, reason = ERROR, lab.problem
        elif step.id not in by_step:
            continue
        else:
            outcome, reason = combine(by_step[step.id])
            inherited = prerequisite_outcome(step, outcomes)
            if inherited is not None:
                outcome, reason = inherited
                # The outcome rests on the prerequisite's evidence as well as on its own.
                need = next(n for n in step.needs if n in outcomes and outcomes[n][0] != PASSED)
                provenance = weakest((provenance, provenances.get(need, provenance)))
        outcomes[step.id] = (outcome, reason)
        provenances[step.id] = provenance
        earned = step.points * (step.vm_weight if provenance == VM_REPORTED else 1)
        result.steps.append(StepResult(
            id=step.id, title=step.title, outcome=outcome,
            points=earned if outcome == PASSED else 0,
            max_points=step.points if outcome in COUNTED else 0,
            reason="" if outcome == PASSED else reason, provenance=provenance))
    return result


def grade(labs: list[LabInfo], steps: list[StepInfo], checks: list[CheckResult]) -> list[LabResult]:
    by_lab: dict[str, list[CheckResult]] = {}
    for check in checks:
        by_lab.setdefault(check.lab, []).append(check)
    return [grade_lab(lab, steps, by_lab.get(lab.label, [])) for lab in labs]


def order_steps(steps: list[StepInfo]) -> list[StepInfo]:
    """Steps in their given order, except that each comes after the steps it needs."""
    by_id = {s.id: s for s in steps}
    out: list[StepInfo] = []
    placed: set[str] = set()

    def place(step: StepInfo, trail: tuple[str, ...]) -> None:
        if step.id in placed:
            return
        if step.id in trail:
            raise ValueError("steps need each other in a cycle: " + " -> ".join(trail + (step.id,)))
        for need in step.needs:
            if need in by_id:
                place(by_id[need], trail + (step.id,))
        placed.add(step.id)
        out.append(step)

    for step in steps:
        place(step, ())
    return out
