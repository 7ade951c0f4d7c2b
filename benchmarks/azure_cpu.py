"""The local Azure's CPU per graded lab, split finer than grade_class.py's table.

    python benchmarks/azure_cpu.py [--n 50] [--rounds 3] [--py-spy DIR] [--perf DIR]

Starts a local Azure with grade_class.py's latency, builds N labs, then grades them `--rounds`
times with one pytest process each, and prints per round the CPU seconds per lab of the local
Azure's own process (request handling), of the commands it reaped (the sessions' shells: bash,
env, nsenter), and of each warm interpreter server with its children (the probe's python3).
The `... sys` figures are the kernel's part of these (forks, page faults, sockets): already in
them, not added to `total` again.
`--py-spy DIR` samples the local Azure's process during the last round (py-spy record, speedscope
format), `--perf DIR` runs `perf record -g` on it and its children during the last round.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import grade_class as gc  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:80]
    except OSError:
        return "?"


def split(pid: int) -> dict[str, float]:
    own = _stat(pid)
    out = {"requests": (int(own[11]) + int(own[12])) / TICK,
           "reaped": (int(own[13]) + int(own[14])) / TICK,
           "requests sys": int(own[12]) / TICK, "reaped sys": int(own[14]) / TICK}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        child = _stat(int(entry.name))
        if child is None or int(child[1]) != pid:
            continue
        name = _comm(int(entry.name))
        key = "warm-usr" if "warm-usr" in name else ("warm" if "warm" in name else "child")
        out[key + " own"] = out.get(key + " own", 0) + (int(child[11]) + int(child[12])) / TICK
        out[key + " kids"] = out.get(key + " kids", 0) + (int(child[13]) + int(child[14])) / TICK
        out[key + " kids sys"] = out.get(key + " kids sys", 0) + int(child[14]) / TICK
    return out


def tree(pid: int) -> list[int]:
    """The process and its live children."""
    kids = [int(e.name) for e in Path("/proc").iterdir()
            if e.name.isdigit() and (_stat(int(e.name)) or ["", "0"])[1] == str(pid)]
    return [pid, *kids]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--py-spy", default=None)
    parser.add_argument("--perf", default=None)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="milab-azcpu-"))
    emulator = gc.Emulator(workdir, dict(gc.LATENCY), False)
    gargs = argparse.Namespace(profile=None, concurrency=None, pytest_args="", pin=False)
    try:
        groups = [f"lab-{i:03d}" for i in range(1, args.n + 1)]
        key, _ = gc.build_class(emulator.env, groups, workdir, 12)
        emulator.knobs(on=True)
        gc.grade(emulator.env, groups[:1], key, workdir, gargs)
        pid = emulator.proc.pid
        for r in range(args.rounds):
            last = r == args.rounds - 1
            sampler = None
            if last and args.py_spy:
                Path(args.py_spy).mkdir(parents=True, exist_ok=True)
                sampler = subprocess.Popen(
                    [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid),
                     "--format", "raw", "-r", "250", "--nonblocking", "-o",
                     str(Path(args.py_spy) / "emulator.txt")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1)
            if last and args.perf:
                Path(args.perf).mkdir(parents=True, exist_ok=True)
                sampler = subprocess.Popen(
                    ["perf", "record", "-F", "499", "-g", "--inherit", "-o",
                     str(Path(args.perf) / "perf.data"), "-p", ",".join(map(str, tree(pid)))],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1)
            stats0 = emulator.stats()
            before = split(pid)
            run = gc.grade(emulator.env, groups, key, workdir, gargs)
            after = split(pid)
            stats1 = emulator.stats()
            requests = {k: round((v - stats0["requests"].get(k, 0)) / args.n, 2)
                        for k, v in stats1["requests"].items()}
            if sampler is not None:
                sampler.send_signal(signal.SIGINT)
                sampler.wait(60)
            per_lab = {k: round((after.get(k, 0) - before.get(k, 0)) / args.n, 4)
                       for k in after}
            per_lab["total"] = round(sum(v for k, v in per_lab.items()
                                         if not k.endswith(" sys")), 4)
            print(json.dumps({"round": r, "seconds": round(run["seconds"], 2),
                              "outcomes": run["outcomes"], "per_lab": per_lab,
                              "requests_per_lab": requests}), flush=True)
    finally:
        emulator.stop()
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
