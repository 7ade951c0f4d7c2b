"""A pytest plugin of the benchmarks (`-p replay`, with this folder on PYTHONPATH): judge labs
from evidence gathered earlier, so the grader's per-check path can be timed alone, with no
gathering threads beside it (`grade_loop.py`).

`MILAB_BENCH_REPLAY=FILE`: if FILE does not exist, the run gathers as usual and writes every
lab's evidence to it (pickle) at the end; if it does, the run gathers nothing and its checks
judge FILE's evidence (a lab FILE lacks is judged as never gathered: an error)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

_PATH = os.environ.get("MILAB_BENCH_REPLAY")
_seen: dict = {}


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session):
    run = session.config.pluginmanager.get_plugin("milab-run")
    store = getattr(run, "store", None)
    if not _PATH or store is None:
        return
    path = Path(_PATH)
    if path.exists():
        saved = pickle.loads(path.read_bytes())

        def replayed(target):
            return saved[target.label]

        store.evidence_for = replayed
        return
    original = store.evidence_for

    def recorded(target):
        evidence = original(target)
        _seen[target.label] = evidence
        return evidence

    store.evidence_for = recorded


def pytest_sessionfinish(session):
    if _PATH and _seen and not Path(_PATH).exists():
        Path(_PATH).write_bytes(pickle.dumps(_seen))
