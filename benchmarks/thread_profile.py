"""A pytest plugin of the benchmark (`-p thread_profile`, with this folder on PYTHONPATH): every
thread the grading process starts runs under its own cProfile on the thread's CPU clock (waits
are not counted), and at exit all of them are written, merged, to the file
`BENCH_THREAD_PROFILE` names. The main thread is not included (`--profile` has it).

    python benchmarks/grade_class.py --n 50 --workers 0 --no-baseline \
        --pytest-args '-p thread_profile'   # with BENCH_THREAD_PROFILE=/tmp/t.prof
"""

from __future__ import annotations

import atexit
import cProfile
import os
import threading
import time

_PATH = os.environ.get("BENCH_THREAD_PROFILE")
_profiles: list[cProfile.Profile] = []
_lock = threading.Lock()


def _dump() -> None:
    import pstats

    with _lock:
        profiles = list(_profiles)
    stats = None
    for profile in profiles:
        try:
            profile.create_stats()
        except Exception:  # noqa: BLE001 - a thread still running: skipped
            continue
        if not profile.stats:
            continue
        if stats is None:
            stats = pstats.Stats(profile)
        else:
            stats.add(profile)
    if stats is not None:
        stats.dump_stats(_PATH)


if _PATH:
    _run = threading.Thread.run

    def run(self) -> None:
        profile = cProfile.Profile(time.thread_time)
        with _lock:
            _profiles.append(profile)
        profile.enable()
        try:
            _run(self)
        finally:
            profile.disable()

    threading.Thread.run = run
    atexit.register(_dump)
