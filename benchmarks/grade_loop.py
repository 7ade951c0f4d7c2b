"""A local Azure with a class already built, held for repeated grading runs: measure the
grader's CPU per check again and again without building the class each time.

    python benchmarks/grade_loop.py --labs 50 --dir /tmp/loop &
    # once it prints "ready": grade any number of times, e.g.
    /tmp/loop/grade.sh 1          # the first lab
    /tmp/loop/grade.sh 50 --capture=sys
    /tmp/loop/grade.sh missing 50 # 50 labs never started
    MILAB_BENCH_REPLAY=/tmp/ev50.pickle /tmp/loop/grade.sh 50 -p replay   # see replay.py
    LOOP_PROFILE=/tmp/loop.prof /tmp/loop/grade.sh 50                      # see loop_cpu.py
    kill -INT <its pid>           # stops the local Azure

`grade.sh [missing] N [PYTEST ARGS]` runs the grading pytest of `grade_class.py` (same
options, same latency) on the first N labs and prints its wall time and CPU (user + sys of
the process and its children), and `loop_cpu.py` the main thread's CPU in pytest's test loop.
It drops PYTHONDONTWRITEBYTECODE, as the benchmark does (bytecode kept, as on a grader's
machine: otherwise every run compiles what changed since its bytecode was written). The
working directory holds the local Azure's env files: readable by you alone, removed when this
script ends.
"""

from __future__ import annotations

import argparse
import csv
import shlex
import shutil
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grade_class as gc  # noqa: E402

SCRIPT = """#!/bin/sh
# grade.sh [missing] N [PYTEST ARGS]: grade the first N labs (see grade_loop.py)
set -e
unset PYTHONDONTWRITEBYTECODE
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"  # python -m puts the working directory first on sys.path
roster=complete
if [ "$1" = missing ]; then roster=missing; shift; fi
n=$1; shift
head -n $((n + 1)) "$here/$roster.csv" > "$here/roster-$roster-$n.csv"
set -a; . "$here/grader.env"; set +a
export PYTHONPATH={bench}${{PYTHONPATH:+:$PYTHONPATH}}
exec {python} {timer} {python} -m pytest {suite} -p no:cacheprovider -q \\
    --rootdir "$here" -c /dev/null --milab-roster "$here/roster-$roster-$n.csv" \\
    --milab-report "$here/grades-$roster-$n.json" --milab-ssh-key "$here/{key}" \\
    --milab-ssh-port {port} -p loop_cpu "$@"
"""

TIMER = """import os, subprocess, sys, time
t = time.perf_counter()
with open(os.devnull, "w") as out:
    p = subprocess.Popen(sys.argv[1:], stdout=None if os.environ.get("SHOW") else out)
    _, status, usage = os.wait4(p.pid, 0)
print(f"wall {time.perf_counter() - t:.2f} s, cpu {usage.ru_utime + usage.ru_stime:.2f} s, "
      f"exit {os.waitstatus_to_exitcode(status)}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labs", type=int, default=50)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--build-parallel", type=int, default=12)
    args = parser.parse_args()
    workdir = args.dir
    workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    emulator = gc.Emulator(workdir, gc.LATENCY, throttle=False)
    try:
        env = emulator.env
        groups = [f"lab-{i:03d}" for i in range(1, args.labs + 1)]
        key, failures = gc.build_class(env, groups, workdir, args.build_parallel)
        unexpected = [f for f in failures if "azure cli" not in f]
        if unexpected:
            print("stage failures:", *unexpected[:5], sep="\n  ", flush=True)
        emulator.knobs(on=True)
        for name, labs in (("complete", groups),
                           ("missing", [f"never-started-{i:03d}" for i in
                                        range(1, args.labs + 1)])):
            with (workdir / f"{name}.csv").open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["group", "subscription", "student"])
                for g in labs:
                    writer.writerow([g, env["AZURE_SUBSCRIPTION_ID"], f"student-{g}"])
        grader = dict(env)
        grader.update(AZURE_CLIENT_ID=env["MILAB_GRADER_CLIENT_ID"],
                      AZURE_CLIENT_SECRET=env["MILAB_GRADER_CLIENT_SECRET"])
        env_file = workdir / "grader.env"
        env_file.touch(mode=0o600)
        env_file.write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in grader.items()))
        (workdir / "timer.py").write_text(TIMER)
        script = workdir / "grade.sh"
        script.write_text(SCRIPT.format(python=shlex.quote(sys.executable),
                                        timer=shlex.quote(str(workdir / "timer.py")),
                                        suite=shlex.quote(str(gc.SUITE)),
                                        bench=shlex.quote(str(Path(__file__).resolve().parent)), key=key.name, port=env.get("MILAB_SSH_PORT", "22")))
        script.chmod(0o700)
        print(f"ready: {script} [missing] N [PYTEST ARGS]", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        while not stop.wait(1):
            pass
    finally:
        emulator.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
