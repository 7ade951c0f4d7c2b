"""Profile the local Azure's request handling while a class is graded (CPU time of its loop
thread, cProfile with time.thread_time).

    python benchmarks/azure_profile.py [--n 50] [--out azure.prof]

Runs a LocalAzure in this process (grade_class.py's latency, switched on after the build),
builds N labs, grades them once to warm up, then grades them again with its loop thread
profiled, and prints the top functions. The VMs' commands run in other processes: not here
(see azure_cpu.py).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import grade_class as gc  # noqa: E402

from pytest_milab.emulator import LocalAzure  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--out", default="azure.prof")
    parser.add_argument("--sort", default="tottime")
    parser.add_argument("--top", type=int, default=45)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="milab-azprof-"))
    azure = LocalAzure(workdir=workdir / "azure").start()
    try:
        env = azure.env
        groups = [f"lab-{i:03d}" for i in range(1, args.n + 1)]
        key, _ = gc.build_class(env, groups, workdir, 12)
        azure.knobs.latency = dict(gc.LATENCY)
        gargs = argparse.Namespace(profile=None, concurrency=None, pytest_args="", pin=False)
        gc.grade(env, groups, key, workdir, gargs)
        profiler = cProfile.Profile(time.thread_time)

        async def switch(on: bool) -> None:
            profiler.enable() if on else profiler.disable()

        azure.run(switch(True))
        run = gc.grade(env, groups, key, workdir, gargs)
        azure.run(switch(False))
        print(f"graded {args.n} in {run['seconds']:.2f} s, outcomes {run['outcomes']}")
        profiler.dump_stats(args.out)
        out = io.StringIO()
        stats = pstats.Stats(args.out, stream=out)
        print(f"loop thread CPU per lab: {stats.total_tt / args.n * 1000:.1f} ms (profiled)")
        stats.sort_stats(args.sort).print_stats(args.top)
        print(out.getvalue())
    finally:
        azure.stop()
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
