"""Which xdist worker grades which lab, known in advance, so that each worker gathers only the
evidence of its own labs (while the others gather theirs).

The k-th lab scope of the collection (`lab_scope` of the test ids, by first appearance: the
same in every worker and in the controller) belongs to worker `gw{k % workers}`. `lab_share`
computes a worker's scopes, and so its labs, from its items; `scheduling.LabScheduling` sends each lab to its owner. A lab whose owner is gone (a
crashed worker, or one shut down because there were fewer labs than workers) goes to any
worker, which then gathers that lab on its own: the share decides speed, never correctness.
No xdist import here: a serial run uses this module too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_WORKER_ID = re.compile(r"gw(\d+)$")


def lab_scope(nodeid: str) -> str | None:
    """The lab a test id grades ("lab:<id>"), or None for a test that grades no lab."""
    if nodeid.endswith("]") and "[" in nodeid:
        return "lab:" + nodeid[nodeid.rindex("[") + 1:-1]
    return None


def owner_index(position: int, workers: int) -> int:
    return position % max(1, workers)


def worker_number(worker_id: str) -> int | None:
    match = _WORKER_ID.match(worker_id or "")
    return int(match.group(1)) if match else None


def lab_share(scopes_in_order: Iterable[str], worker_id: str, workers: int) -> list[str]:
    """The lab scopes (in the order the collection first names them) a worker owns."""
    number = worker_number(worker_id)
    if number is None:
        return list(scopes_in_order)
    return [scope for k, scope in enumerate(scopes_in_order)
            if owner_index(k, workers) == number]
