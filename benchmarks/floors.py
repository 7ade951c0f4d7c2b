"""What grade_class.py's targets run into on this machine: the costs that stay whatever the
engine does, measured here, so that a target below them is seen to be out of reach rather
than said to be.

    python benchmarks/floors.py [--labs 50] [--repeat 5] [--latency entra=0.06 ...]

Each figure is the least of `--repeat` runs, each in a fresh process (bytecode kept, as on a
grader's machine: PYTHONDONTWRITEBYTECODE is dropped). It prints one JSON line per figure and
then what they add up to against the targets:

- `interpreter`: `python -I -c pass`, wall and CPU seconds.
- `pytest`: pytest with the plugins installed here but pytest-milab (`-p no:milab`) and anyio's
  (`-p no:anyio`, as grade_class.py runs the grader), from the process's start to the first
  `pytest_configure` (the first moment a plugin can act on its options), measured by a
  plugin of this benchmark that ends the process there.
  `pytest_milab`: the same with pytest-milab loaded; the difference is the plugin's import.
- `azure_identity_import`: `python -c "import azure.identity"` less `python -c pass`: the
  credential library (msal, requests, cryptography under it) that signs the grader in.
- `entra_round_trips`: msal's two dependent round trips before the first token (the tenant's
  OpenID configuration, then the token), at the Entra latency grade_class.py configures.
- `startup_floor`: `pytest` + `azure_identity_import` + `entra_round_trips`: the least time from
  starting the grading process to its first ARM read (the read needs the token) with
  azure-identity signing in (target: 0.4 s).
- `one_lab_floor`: `pytest` + `azure_identity_import` + grade_class.py's critical path (the
  lab's dependent round trips at that latency, the two to Entra among them): one lab's wall
  time with nothing else, no collection, no reading of answers, no judging, no report, no exit
  (target 1.0 s; `left` is what the target leaves for all of that).
- `pytest_per_lab`: pytest's own CPU per extra lab for a class of trivial checks shaped as the
  engine's (one module of 24 checks, each lab a parameter of a session-scoped fixture, and two
  function-scoped fixtures over it, as `_milab_target`, `evidence` and `lab`):
  `(cpu(--labs labs) - cpu(1 lab)) / (--labs - 1)`, and per check. What a grader of 24 checks
  a lab pays before reading anything (target: 0.03 CPU-s per extra lab, reads, SSH and the
  probe's answer included).
- `tls_client_handshake`: CPU of one TLS client handshake in this Python's OpenSSL against a
  loopback server with a P-256 certificate (as the local Azure's): the probe makes five a lab
  and the local Azure answers them (target: local Azure 0.05 CPU-s a lab, its VMs' commands
  included).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grade_class as gc  # noqa: E402

CHECKS = 24

AT_CONFIGURE = '''
import os

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    with open("/proc/self/stat", encoding="ascii") as f:
        ticks = int(f.read().rpartition(")")[2].split()[19])
    with open("/proc/uptime", encoding="ascii") as f:
        uptime = float(f.read().split()[0])
    with open(os.environ["FLOORS_OUT"], "a", encoding="ascii") as f:
        f.write(f"{uptime - ticks / os.sysconf('SC_CLK_TCK')}\\n")
    os._exit(0)
'''

CONFTEST = '''
import os

import pytest

LABS = [f"lab-{i:03d}" for i in range(int(os.environ["FLOORS_LABS"]))]


@pytest.fixture(scope="session", params=LABS)
def target(request):
    return request.param


@pytest.fixture
def evidence(target):
    return {"group": target}


@pytest.fixture
def lab(evidence):
    return evidence
'''


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _run(argv: list[str], env: dict[str, str] | None = None,
         expect: tuple[int, ...] = (0,)) -> tuple[float, float]:
    """(wall, CPU) seconds of one process run to its end."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=env or _env())
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        code = os.waitstatus_to_exitcode(status)
        if code not in expect:
            err.seek(0)
            tail = err.read().decode(errors="replace")[-500:]
            raise SystemExit(f"{' '.join(argv[:4])}... exited {code}: {tail}")
    return wall, usage.ru_utime + usage.ru_stime


def _least(repeat: int, argv: list[str], **kwargs) -> dict[str, float]:
    runs = [_run(argv, **kwargs) for _ in range(repeat)]
    return {"wall": round(min(w for w, _ in runs), 3), "cpu": round(min(c for _, c in runs), 3)}


def _trivial_class(folder: Path) -> None:
    (folder / "conftest.py").write_text(CONFTEST)
    body = "".join(f"\n\ndef test_step_{i:02d}(lab):\n    assert lab['group']\n"
                   for i in range(CHECKS))
    (folder / "test_steps.py").write_text(body.lstrip("\n"))


def tls_handshake_cpu(rounds: int = 200) -> float:
    """CPU seconds of one TLS client handshake (this thread's clock: the server's work in its
    own thread is not counted), certificate checked against the CA as the probe does."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("management.azure.com")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except OSError:
                pass

    threading.Thread(target=serve, daemon=True).start()
    with tempfile.NamedTemporaryFile(suffix=".pem") as ca_file:
        ca.cert_pem.write_to_path(ca_file.name)
        client_ctx = ssl.create_default_context(cafile=ca_file.name)
    cpu = 0.0
    for _ in range(rounds):
        raw = socket.create_connection(listener.getsockname())
        before = time.thread_time()
        tls = client_ctx.wrap_socket(raw, server_hostname="management.azure.com")
        cpu += time.thread_time() - before
        tls.sendall(b"x")
        tls.close()
    listener.close()
    return cpu / rounds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--labs", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--latency", type=gc._latency, action="append", default=[],
                        help="SERVICE=SECONDS, as grade_class.py takes it")
    args = parser.parse_args()
    latency = dict(gc.LATENCY)
    latency.update(dict(args.latency))
    py = sys.executable
    figures: dict[str, object] = {}

    def say(name: str, value: object) -> None:
        figures[name] = value
        print(json.dumps({name: value}), flush=True)

    with tempfile.TemporaryDirectory(prefix="milab-floors-") as tmp:
        empty = Path(tmp) / "empty"
        empty.mkdir()
        trivial = Path(tmp) / "trivial"
        trivial.mkdir()
        _trivial_class(trivial)
        # As grade_class.py runs the grader: without anyio's plugin (the local Azure's
        # starlette brings it; a grader's own install does not have it).
        pytest_args = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:anyio",
                       "-c", os.devnull, "--rootdir"]
        say("interpreter", _least(args.repeat, [py, "-I", "-c", "pass"]))
        bare = _least(args.repeat, [py, "-c", "pass"])
        identity = _least(args.repeat, [py, "-c", "import azure.identity"])
        (Path(tmp) / "floors_at_configure.py").write_text(AT_CONFIGURE)
        for name, extra in (("pytest", ["-p", "no:milab"]), ("pytest_milab", [])):
            out = Path(tmp) / f"{name}.txt"
            env = _env()
            env.update(FLOORS_OUT=str(out), PYTHONPATH=tmp)
            _least(args.repeat, [*pytest_args, str(empty), *extra, "-p",
                                 "floors_at_configure", str(empty)], env=env)
            configured = min(float(x) for x in out.read_text().split())
            say(name, {"to_configure": round(configured, 3)})
        say("azure_identity_import", {"wall": round(identity["wall"] - bare["wall"], 3),
                                      "cpu": round(identity["cpu"] - bare["cpu"], 3)})
        say("entra_round_trips", round(2 * latency["entra"], 3))
        cpus = {}
        for labs in (1, args.labs):
            env = _env()
            env["FLOORS_LABS"] = str(labs)
            cpus[labs] = _least(args.repeat, [*pytest_args, str(trivial), "-p", "no:milab",
                                              str(trivial)], env=env)["cpu"]
        per_lab = (cpus[args.labs] - cpus[1]) / max(1, args.labs - 1)
        say("pytest_per_lab", {"labs": args.labs, "cpu_1": cpus[1], f"cpu_{args.labs}":
                               cpus[args.labs], "per_extra_lab": round(per_lab, 4),
                               "per_check_ms": round(per_lab / CHECKS * 1000, 3)})
        say("tls_client_handshake", {"cpu_ms": round(tls_handshake_cpu() * 1000, 3),
                                     "openssl": ssl.OPENSSL_VERSION})
    before_network = (figures["pytest"]["to_configure"]
                      + figures["azure_identity_import"]["cpu"])
    say("startup_floor", {"seconds": round(before_network + figures["entra_round_trips"], 3),
                          "target": 0.4})
    path = gc.critical_path(latency)
    floor = before_network + path
    say("one_lab_floor", {"seconds": round(floor, 3), "critical_path": round(path, 3),
                          "target": 1.0, "left": round(1.0 - floor, 3)})
    say("grader_per_extra_lab_floor", {"pytest_alone": figures["pytest_per_lab"]
                                       ["per_extra_lab"], "target": 0.03})


if __name__ == "__main__":
    main()
