"""`Results`: every check's outcome as it is reported, typed end to end, and the grades.

A check's result travels on its test report as `report.milab` (plain data, so pytest-xdist
carries it from the workers to the controller unchanged); the controller grades them."""

from __future__ import annotations

from dataclasses import dataclass

from . import grading
from .grading import CheckResult, LabInfo, StepInfo
from .settings import LabTarget


@dataclass(frozen=True)
class Reported:
    """What one check's report carries: the step, the lab and the outcome."""

    step: StepInfo
    rank: int
    lab: LabInfo
    check: CheckResult

    def to_data(self) -> dict:
        # Field by field (dataclasses.asdict deep-copies: a class's checks made it add up).
        return {"step": {f: getattr(self.step, f) for f in StepInfo.__dataclass_fields__},
                "rank": self.rank,
                "lab": {f: getattr(self.lab, f) for f in LabInfo.__dataclass_fields__},
                "check": {f: getattr(self.check, f) for f in CheckResult.__dataclass_fields__}}

    @classmethod
    def from_data(cls, data: dict) -> Reported:
        step = dict(data["step"])
        step["needs"] = tuple(step.get("needs") or ())
        return cls(StepInfo(**step), int(data["rank"]), LabInfo(**data["lab"]),
                   CheckResult(**data["check"]))


class Results:
    """Collects reported checks (registered as a plugin: it sees every report, the workers'
    too under xdist) and what this process already knows of each lab's steps."""

    def __init__(self) -> None:
        self._local: dict[tuple[str, str], list[CheckResult]] = {}
        self._steps: dict[str, tuple[int, StepInfo]] = {}
        self._labs: dict[str, LabInfo] = {}
        self._checks: list[CheckResult] = []
        self.graded: list[grading.LabResult] | None = None
        self._ranks: dict[str, int] = {}

    def set_steps(self, steps: list[StepInfo]) -> None:
        """The collected steps in catalogue order (prerequisites first)."""
        self._ranks = {s.id: i for i, s in enumerate(steps)}

    def step_rank(self, step_id: str) -> int:
        return self._ranks.get(step_id, len(self._ranks))

    def record_local(self, check: CheckResult) -> None:
        """A check this process ran: its dependents here may short-circuit on it."""
        self._local.setdefault((check.lab, check.step), []).append(check)

    def prerequisite(self, label: str, info: StepInfo) -> tuple[str, str] | None:
        """What this process already knows of the step's prerequisites for this lab."""
        if not info.needs:
            return None
        known = {need: grading.combine(self._local[(label, need)])
                 for need in info.needs if (label, need) in self._local}
        return grading.prerequisite_outcome(info, known)

    def pytest_runtest_logreport(self, report) -> None:
        data = getattr(report, "milab", None)
        if report.when == "teardown" or not data:
            return
        reported = Reported.from_data(data)
        self._steps.setdefault(reported.step.id, (reported.rank, reported.step))
        self._labs.setdefault(reported.lab.label, reported.lab)
        self._checks.append(reported.check)

    def grade(self, targets: tuple[LabTarget, ...], stopped: str | None = None,
              planned: dict[str, set[str]] | None = None) -> tuple[list[grading.LabResult],
                                                        list[StepInfo]]:
        """The grades of the labs checked. `stopped`: why the run ended before every check ran
        (-x, --maxfail, Ctrl-C): a lab it never reached is not graded for that reason, and a
        step of a lab it reached that has no check result ends `error` (undecided, never
        costing points): the grade book never looks complete. `planned`: the steps this run
        was to check, by lab (None: every step of every target)."""
        steps = [s for _, s in sorted(self._steps.values(), key=lambda x: x[0])]
        labs = []
        checks = list(self._checks)
        for target in targets:
            if target.problem:
                labs.append(LabInfo(target.label, target.group, target.subscription,
                                    target.student, target.problem))
            elif target.label in self._labs:
                labs.append(self._labs[target.label])
                if stopped:
                    seen = {c.step for c in self._checks if c.lab == target.label}
                    checks += [CheckResult(target.label, s.id, grading.ERROR,
                                           f"not graded: {stopped}")
                               for s in steps if s.id not in seen and (
                                   planned is None or s.id in planned.get(target.label, ()))]
            elif stopped and (planned is None or target.label in planned):
                labs.append(LabInfo(target.label, target.group, target.subscription,
                                    target.student, stopped))
        self.graded = grading.grade(labs, steps, checks)
        return self.graded, steps
