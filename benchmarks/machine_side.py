"""The grader's CPU per lab on the machine side (SSH, the probe's answer, signed evidence), in
every thread, measured by `machine_cpu.py` while a class is graded as `grade_class.py` does.

    python benchmarks/machine_side.py --n 50 [--repeat 3] [--yappi DIR]
    python benchmarks/machine_side.py --n 50 --serve STATE      # build, then wait (Ctrl-C)
    python benchmarks/machine_side.py --use STATE [--repeat 3]  # grade against that one

Starts a local Azure with `grade_class.py`'s latency, builds N labs, grades them `--repeat`
times with one pytest process each, and prints per run one JSON line: each part's CPU seconds
per lab (see machine_cpu.py) and the grading process's CPU per lab. `--serve` keeps the local
Azure and its labs and writes what `--use` needs to STATE, so a change can be measured again
without building the class anew. `--yappi DIR` also profiles every thread of the grading
process with yappi (CPU clock) into DIR/grader-<run>.pstat (yappi must be installed; it slows
the run down, so its totals are not the run's)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import grade_class  # noqa: E402

PARTS = ("ssh_open", "ssh_transport", "exec", "stderr_threads", "probe_result", "verify_parts",
         "attest")


def _grade(env: dict, groups: list[str], key: Path, workdir: Path, repeat: int,
           yappi: str | None) -> None:
    args = argparse.Namespace(profile=None, pin=False, concurrency=None,
                              pytest_args="-p machine_cpu")
    out = workdir / "machine-cpu.jsonl"
    os.environ["BENCH_MACHINE_CPU"] = str(out)
    if yappi:
        os.environ["BENCH_MACHINE_YAPPI"] = str(Path(yappi).resolve())
    for i in range(repeat):
        out.unlink(missing_ok=True)
        run = grade_class.grade(env, groups, key, workdir, args)
        line = json.loads(out.read_text().splitlines()[-1])
        n = len(groups)
        per_lab = {k: round(line.get(k, 0.0) / n * 1000, 2) for k in PARTS}
        mine = sum(v for k, v in per_lab.items() if k not in ("attest",))
        print(json.dumps({"run": i + 1, "n": n, "ms_per_lab": per_lab,
                          "machine_side_ms_per_lab": round(mine, 2),
                          "grader_cpu_ms_per_lab": round(run["cpu"] / n * 1000, 1),
                          "outcomes": run["outcomes"]}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--serve", metavar="STATE")
    parser.add_argument("--use", metavar="STATE")
    parser.add_argument("--yappi", metavar="DIR")
    args = parser.parse_args()
    if args.use:
        state = json.loads(Path(args.use).read_text())
        workdir = Path(tempfile.mkdtemp(prefix="milab-machine-side-"))
        _grade(state["env"], state["groups"][:args.n], Path(state["key"]), workdir, args.repeat,
               args.yappi)
        return
    workdir = Path(tempfile.mkdtemp(prefix="milab-machine-side-"))
    emulator = grade_class.Emulator(workdir, dict(grade_class.LATENCY), False)
    try:
        groups = [f"lab-{i:03d}" for i in range(1, args.n + 1)]
        key, failures = grade_class.build_class(emulator.env, groups, workdir, 12)
        emulator.knobs(on=True)
        if args.serve:
            Path(args.serve).write_text(json.dumps(
                {"env": emulator.env, "groups": groups, "key": str(key)}))
            os.chmod(args.serve, 0o600)
            print(f"serving: {args.serve}", flush=True)
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
            return
        _grade(emulator.env, groups[:1], key, workdir, 1, None)  # warm-up: bytecode written
        _grade(emulator.env, groups, key, workdir, args.repeat, args.yappi)
    finally:
        emulator.stop()


if __name__ == "__main__":
    main()
