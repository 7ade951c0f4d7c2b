"""Where a step's evidence came from, noted as a check reads it:

- `control-plane`: read by the grader from ARM (or Graph) with its own credential;
- `signed`: a document or token whose signature the grader verified;
- `vm-reported`: the student's machine said so (the probe, the `vm` fixture): what a student
  who owns the machine could have forged.

A step's provenance is the weakest its checks used; a step that read nothing is
`control-plane` (it judged what the engine knows, such as the roster).

A check may also read the machine's word only to *refute* (`lab.refute_with`): that word can
cost the student a pass, never earn one. It is noted `REFUTING` and settled when the check
ends (`settle`): a check that passed keeps its provenance, one that did not pass is
`vm-reported`, since the machine's word may be what failed it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from contextvars import ContextVar

CONTROL_PLANE, SIGNED, VM_REPORTED = "control-plane", "signed", "vm-reported"
REFUTING = "refuting"  # noted while a check runs, never a step's provenance (see `settle`)
_STRENGTH = {CONTROL_PLANE: 0, SIGNED: 1, VM_REPORTED: 2}  # larger: weaker

_used: ContextVar[set[str] | None] = ContextVar("milab_provenance", default=None)


def note(source: str) -> None:
    """The check running now used evidence of this kind."""
    used = _used.get()
    if used is not None:
        used.add(source)


@contextlib.contextmanager
def tracking() -> Iterator[set[str]]:
    """Collect what a check uses while it runs."""
    used: set[str] = set()
    token = _used.set(used)
    try:
        yield used
    finally:
        _used.reset(token)


def weakest(sources: Iterable[str]) -> str:
    return max(sources, key=lambda s: _STRENGTH.get(s, 2), default=CONTROL_PLANE)


def settle(used: Iterable[str], passed: bool) -> str:
    """A check's provenance once it ended: `REFUTING` lowers it to `vm-reported` unless it
    passed."""
    used = set(used)
    if REFUTING in used:
        used.discard(REFUTING)
        if not passed:
            used.add(VM_REPORTED)
    return weakest(used)
