"""A pytest plugin of `grade_loop.py` (`-p loop_cpu`, with this folder on PYTHONPATH): the main
thread's CPU seconds in pytest's test loop (every check's protocol, hooks and fixtures, the
wait for gathered evidence excluded) and the process's, printed on stderr at the end.
With `LOOP_PROFILE=FILE`, the loop's main thread runs under cProfile timed by its own CPU
clock (not wall time: a machine shared with other work does not blur it), written to FILE."""

from __future__ import annotations

import os
import sys
import time

import pytest


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session):
    profile = None
    if os.environ.get("LOOP_PROFILE"):
        import cProfile

        profile = cProfile.Profile(time.thread_time)
    thread, process = time.thread_time(), time.process_time()
    if profile is not None:
        profile.enable()
    try:
        return (yield)
    finally:
        if profile is not None:
            profile.disable()
            profile.dump_stats(os.environ["LOOP_PROFILE"])
        thread = time.thread_time() - thread
        process = time.process_time() - process
        print(f"loop: main thread {thread:.2f} CPU-s, all threads {process:.2f} CPU-s, "
              f"{len(session.items)} checks", file=sys.stderr)
