"""CPU of one in-VM probe run: a fresh interpreter against the warm interpreter (warmpython.py).

    python benchmarks/warm_python.py [--runs 50]

Runs the grader's probe (the kit as `python3 -I -S -c <kit>`, its program of no parts on stdin:
the interpreter, the kit and its imports, nothing sent anywhere) `--runs` times
with the emulator's interpreter as a VM's plain python3 runs it, then through the warm
interpreter's Python client and its native client (when the host can compile it), and a bare `python3 -I -S -c pass` both ways. Prints one JSON line per
case: CPU milliseconds per run of the processes started here (`client_ms`: the interpreter or
the client), of the fork server (`server_ms`: the fork and the child that ran the program) and
their sum (`total_ms`); wall milliseconds per run.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_milab.emulator.machines.warmpython import WarmPython  # noqa: E402
from pytest_milab.vm.probe import probe_command  # noqa: E402


def children_cpu() -> float:
    times = os.times()
    return times.children_user + times.children_system


def measure(argv: list[str], runs: int, warm: WarmPython | None, env: dict,
            stdin: bytes = b"") -> dict:
    server_before = warm.cpu_seconds() if warm else 0.0
    mine, started = children_cpu(), time.monotonic()
    for _ in range(runs):
        done = subprocess.run(argv, env=env, input=stdin, capture_output=True)
        if done.returncode != 0:
            raise SystemExit(f"{argv[0]} failed: {done.stderr.decode()[-500:]}")
    wall = time.monotonic() - started
    client = (children_cpu() - mine) / runs * 1000
    server = ((warm.cpu_seconds() - server_before) / runs * 1000) if warm else 0.0
    return {"client_ms": round(client, 1), "server_ms": round(server, 1),
            "total_ms": round(client + server, 1), "wall_ms": round(wall / runs * 1000, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    program = (json.dumps({"parts": [], "key": "00" * 16, "nonce": "0" * 16}) + "\n").encode()
    lexer = shlex.shlex(probe_command(), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = list(lexer)
    probe = ["-I", "-S", "-c", words[words.index("-c") + 1]]  # the kit, after `python3`
    with tempfile.TemporaryDirectory(prefix="milab-warm-") as tmp:
        warm = WarmPython(Path(tmp) / "run")
        warm.start()
        if not warm.ready():
            raise SystemExit("the warm interpreter did not start")
        clients = [("warm-python-client", Path(tmp) / "python3-script")]
        clients[0][1].write_text(warm.client_script("bench"))
        if warm.native is not None:
            clients.append(("warm-native-client", Path(tmp) / "python3-native"))
            clients[1][1].write_bytes(warm.client("bench"))
        for _, path in clients:
            path.chmod(0o755)
        env = {"LANG": "C.UTF-8", "PATH": "/usr/bin:/bin", "HOME": tmp}
        try:
            for case, rest in (("bare", ["-I", "-S", "-c", "pass"]), ("probe", probe)):
                for how, python, server in (("fresh", sys.executable, None),
                                            *((name, str(path), warm) for name, path in clients)):
                    measure([python, *rest], 3, server, env, program)  # warm-up
                    result = measure([python, *rest], args.runs, server, env, program)
                    print(json.dumps({"case": case, "interpreter": how, **result}), flush=True)
        finally:
            warm.stop()


if __name__ == "__main__":
    main()
