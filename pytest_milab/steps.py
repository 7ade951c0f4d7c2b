"""The `milab_step` marker: reading and validating it on collected test cases."""

from __future__ import annotations

import difflib
import re

from .errors import StepMarkerError
from .grading import StepInfo

MARKER = "milab_step"
MARKER_DOC = ("milab_step(id, points=1, title='', needs=(), vm_weight=1): this test checks lab "
              "step `id`; `needs` names steps it depends on; `vm_weight` is the share of its "
              "points a pass earns on the machine's own report")
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_KEYWORDS = ("points", "title", "needs", "vm_weight")


def step_from_marker(marker, where: str) -> StepInfo:
    if len(marker.args) != 1 or not isinstance(marker.args[0], str):
        raise StepMarkerError(f"{where}: milab_step takes one step id, e.g. "
                              f"@pytest.mark.milab_step('vm-identity')")
    step_id = marker.args[0]
    if not _ID.match(step_id):
        raise StepMarkerError(f"{where}: step id {step_id!r} must be lower-case letters, digits "
                              "and dashes")
    unknown = sorted(set(marker.kwargs) - set(_KEYWORDS))
    if unknown:
        raise StepMarkerError(f"{where}: milab_step has no keyword {unknown[0]!r} "
                              f"(it takes {', '.join(_KEYWORDS)})")
    points = marker.kwargs.get("points", 1)
    if isinstance(points, bool) or not isinstance(points, (int, float)) or points < 0:
        raise StepMarkerError(f"{where}: points of step {step_id!r} must be a number >= 0")
    title = marker.kwargs.get("title", "")
    if not isinstance(title, str):
        raise StepMarkerError(f"{where}: title of step {step_id!r} must be text")
    needs = marker.kwargs.get("needs", ())
    if isinstance(needs, str):
        needs = (needs,)
    if not all(isinstance(n, str) for n in needs):
        raise StepMarkerError(f"{where}: needs of step {step_id!r} must be step ids")
    vm_weight = marker.kwargs.get("vm_weight", 1.0)
    if isinstance(vm_weight, bool) or not isinstance(vm_weight, (int, float)) \
            or not 0 <= vm_weight <= 1:
        raise StepMarkerError(f"{where}: vm_weight of step {step_id!r} must be a number from "
                              "0 to 1")
    return StepInfo(step_id, title, points, tuple(needs), float(vm_weight))


class StepRegistry:
    """Every step seen at collection; one id must always carry the same points and title."""

    def __init__(self) -> None:
        self.steps: dict[str, StepInfo] = {}
        self.first_seen: dict[str, str] = {}

    def add(self, info: StepInfo, where: str) -> StepInfo:
        known = self.steps.get(info.id)
        if known is None:
            self.steps[info.id] = info
            self.first_seen[info.id] = where
            return info
        for attr in ("points", "title"):
            a, b = getattr(known, attr), getattr(info, attr)
            if attr == "title" and (not a or not b):
                continue
            if a != b:
                raise StepMarkerError(
                    f"{where}: step {info.id!r} has {attr} {b!r} here but {a!r} at "
                    f"{self.first_seen[info.id]}: give one step id one {attr}, or use "
                    "another id")
        merged = StepInfo(known.id, known.title or info.title, known.points,
                          tuple(dict.fromkeys(known.needs + info.needs)), known.vm_weight)
        self.steps[info.id] = merged
        return merged

    def check_needs(self) -> None:
        for step in self.steps.values():
            for need in step.needs:
                if need not in self.steps:
                    close = difflib.get_close_matches(need, list(self.steps), n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    raise StepMarkerError(f"{self.first_seen[step.id]}: step {step.id!r} needs "
                                          f"{need!r}, which no test checks{hint}")
