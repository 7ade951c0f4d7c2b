"""Gathering runs ahead of judging, but only so far: a slow lab at the front of a class does
not leave the whole class gathered (and its SSH connections open) behind it."""

from __future__ import annotations

import threading
import time

from pytest_milab.evidence import Connections, Gatherer, LabEvidence
from pytest_milab.settings import LabTarget, Settings
from pytest_milab.suite import Suite


class FakeClients:
    pool_size = 8

    def warm(self) -> None:
        pass


class RecordingGatherer(Gatherer):
    """Gathers nothing from Azure: notes which labs were started."""

    def __init__(self, concurrency: int) -> None:
        super().__init__(Settings(concurrency=concurrency), Suite(), FakeClients(),
                         Connections(), lambda: "sub")
        self.started: list[str] = []
        self._lock = threading.Lock()

    def gather(self, target: LabTarget) -> LabEvidence:
        with self._lock:
            self.started.append(target.label)
        return LabEvidence(label=target.label, group=target.group)


def _labs(n: int) -> list[LabTarget]:
    return [LabTarget(group=f"g{i}", label=f"lab{i}") for i in range(n)]


def _settle(gatherer: RecordingGatherer, count: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while len(gatherer.started) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # and no more than that


def test_gathering_stops_ahead_labs_past_the_one_judged():
    gatherer = RecordingGatherer(concurrency=2)
    futures = gatherer.start_all(_labs(12), ahead=4)
    try:
        _settle(gatherer, 5)
        assert sorted(gatherer.started) == sorted(f"lab{i}" for i in range(5))  # lab0..lab4
        gatherer.judging("lab0")
        assert futures["lab0"].result(timeout=5).label == "lab0"
        gatherer.judging("lab3")
        _settle(gatherer, 8)
        assert len(gatherer.started) == 8  # up to lab7
        gatherer.judging("lab11")
        assert [futures[f"lab{i}"].result(timeout=5).label for i in range(12)] == [
            f"lab{i}" for i in range(12)]
    finally:
        gatherer.close()


def test_without_a_limit_every_lab_is_gathered():
    gatherer = RecordingGatherer(concurrency=3)
    evidence = gatherer.gather_all(_labs(10))
    assert sorted(evidence) == sorted(f"lab{i}" for i in range(10))


def test_closing_releases_labs_waiting_their_turn():
    gatherer = RecordingGatherer(concurrency=2)
    futures = gatherer.start_all(_labs(6), ahead=1)
    _settle(gatherer, 2)
    gatherer.close()
    done = [f.result(timeout=5) for f in futures.values() if not f.cancelled()]
    assert len(gatherer.started) == 2
    assert all(ev.problem for ev in done if ev.label not in gatherer.started)
