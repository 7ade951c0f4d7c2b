"""A pytest plugin of the benchmark (`-p machine_cpu`, with this folder on PYTHONPATH): the
grader's CPU spent on the machine side, per part, in every thread (cProfile sees the main
thread only). With `BENCH_MACHINE_CPU=FILE` set, it appends one JSON line to FILE when the
run ends (the benchmark passes other variables than MILAB_*):

- `ssh_open`: opening the SSH connections (`VmConnection._open`, in the gathering threads:
  mostly waiting for the transport thread);
- `ssh_transport`: paramiko's transport threads (key exchange, authentication, every packet's
  cipher and MAC), from their start to their end or to the end of the run;
- `exec`: running commands on a channel (`VmConnection._exec`) in the calling thread, and
  `stderr_threads`: helper threads named `milab-ssh-stderr` draining a command's stderr, if a
  version of the grader has them (it once had one per command);
- `probe_result`: reading the probe's answer (`vm.probe._result`: JSON, cleaning, digests);
- `attest`: verifying IMDS's attested documents (`attest.verify`), and `verify_parts`: all the
  signed evidence, attested documents included;
- `process`: the whole grading process (user + system), `calls` how often each ran.

    python benchmarks/grade_class.py --n 50 --no-baseline --pytest-args '-p machine_cpu'
    (with BENCH_MACHINE_CPU=/tmp/m.jsonl in the environment)

Each figure is the CPU time of the thread doing the work (`time.thread_time`), so waiting on
the network costs nothing here. With `BENCH_MACHINE_YAPPI=DIR` set, every thread is also
profiled with yappi (CPU clock) into DIR/grader-<pid>.pstat."""

from __future__ import annotations

import functools
import json
import os
import threading
import time

_PATH = os.environ.get("BENCH_MACHINE_CPU")
_totals: dict[str, float] = {}
_calls: dict[str, int] = {}
_lock = threading.Lock()
_live: dict[int, str] = {}  # thread ident -> category, for threads still running at the end


def _add(name: str, seconds: float) -> None:
    with _lock:
        _totals[name] = _totals.get(name, 0.0) + seconds
        _calls[name] = _calls.get(name, 0) + 1


def _timed(name: str, func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        start = time.thread_time()
        try:
            return func(*args, **kwargs)
        finally:
            _add(name, time.thread_time() - start)

    return wrapper


def _thread_run(name: str, run):
    """A thread's whole CPU: added when it ends, or read from its CPU clock at the end of the
    run."""

    @functools.wraps(run)
    def wrapper(self, *args, **kwargs):
        tid = threading.get_ident()
        with _lock:
            _live[tid] = name
        try:
            return run(self, *args, **kwargs)
        finally:
            with _lock:
                _live.pop(tid, None)
            _add(name, time.thread_time())

    return wrapper


def _live_thread_cpu(ident: int) -> float:
    """A running thread's CPU time, read through its CPU clock."""
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(ident))
    except (OSError, AttributeError):
        return 0.0


def _install() -> None:
    import paramiko

    from pytest_milab.azure import attest, signed
    from pytest_milab.vm import probe, ssh

    paramiko.Transport.run = _thread_run("ssh_transport", paramiko.Transport.run)
    ssh.VmConnection._open = _timed("ssh_open", ssh.VmConnection._open)
    ssh.VmConnection._exec = _timed("exec", ssh.VmConnection._exec)
    probe._result = _timed("probe_result", probe._result)
    attest.verify = _timed("attest", attest.verify)
    signed.verify_parts = _timed("verify_parts", signed.verify_parts)
    original_run = threading.Thread.run

    def run(self, *args, **kwargs):
        if self.name == "milab-ssh-stderr":
            return _thread_run("stderr_threads", lambda _self: original_run(_self))(self)
        return original_run(self, *args, **kwargs)

    threading.Thread.run = run


_YAPPI = os.environ.get("BENCH_MACHINE_YAPPI")


def pytest_configure(config) -> None:
    if _PATH:
        _install()
    if _YAPPI:
        import yappi

        yappi.set_clock_type("cpu")
        yappi.start(builtins=True, profile_threads=True)


def pytest_unconfigure(config) -> None:
    if _YAPPI:
        import yappi

        yappi.stop()
        os.makedirs(_YAPPI, exist_ok=True)
        yappi.get_func_stats().save(os.path.join(_YAPPI, f"grader-{os.getpid()}.pstat"),
                                    type="pstat")
    if not _PATH:
        return
    with _lock:
        live = dict(_live)
    for tid, name in live.items():
        _add(name, _live_thread_cpu(tid))
    usage = os.times()
    out = {k: round(v, 4) for k, v in sorted(_totals.items())}
    out["process"] = round(usage.user + usage.system, 3)
    out["calls"] = dict(sorted(_calls.items()))
    with open(_PATH, "a") as f:
        f.write(json.dumps(out) + "\n")
