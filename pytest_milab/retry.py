"""Waiting with a deadline, written once: the delays between attempts of something that Azure
may grant a little later (a role assignment propagating, a machine booting)."""

from __future__ import annotations

import time
from collections.abc import Iterator


def backoff(deadline: float, *, first: float = 1.0, factor: float = 1.5,
            cap: float = 10.0) -> Iterator[float]:
    """Delays to sleep between attempts: growing by `factor` up to `cap`, and none that would
    end past `deadline` (a `time.monotonic()` value). When it stops, give up."""
    delay = first
    while time.monotonic() + delay <= deadline:
        yield delay
        delay = min(delay * factor, cap)
