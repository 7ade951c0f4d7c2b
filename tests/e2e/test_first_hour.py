"""A new user's first hour, as the README walks it: `milab emulator` builds labs (one with a
named defect), writes what a grader needs, and prints the commands that grade them; the
commands work as printed. Bad input to `milab` is one line, never a traceback."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

import pytest
from e2ekit import SUITE

MILAB = [sys.executable, "-m", "pytest_milab.cli"]


def milab(*args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([*MILAB, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_emulator_builds_a_class_and_prints_the_commands_that_grade_it(tmp_path):
    env_file = tmp_path / "azure.env"
    out = tmp_path / "emulator.log"
    with out.open("w") as log:
        proc = subprocess.Popen([*MILAB, "emulator", "--env-file", str(env_file), "--suite",
                                 str(SUITE), "--lab", "alice", "--lab", "bob:vm-tags"],
                                stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while "ready in" not in out.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, out.read_text()
            time.sleep(0.2)
        text = out.read_text()
        assert "built 2 lab(s)" in text and "bob (vm-tags broken)" in text, text
        commands = [line.strip() for line in text.splitlines() if line.startswith("    ")]
        assert len(commands) == 2 and commands[0].startswith("set -a; . "), text
        for name in ("azure.env", "azure.grader.env", "grader_ed25519"):
            mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
            assert mode == 0o600, (name, oct(mode))
        # The printed commands, as a user pastes them (pytest from this environment).
        script = "; ".join(commands).replace("pytest ", f"{sys.executable} -m pytest -p "
                                                       "no:cacheprovider ", 1)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "MILAB_"))}
        env.pop("PYTEST_ADDOPTS", None)
        graded = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                                env=env, cwd=tmp_path, timeout=300)
        assert "alice      22/22" in graded.stdout, graded.stdout[-3000:] + graded.stderr
        assert "bob        20/22" in graded.stdout
        assert "vm-tags: missing or wrong tags: vault=" in graded.stdout
        assert graded.returncode == 1  # decided, and bob failed two steps
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


@pytest.mark.parametrize("args, message", [
    (["emulator", "--env-file", "{tmp}/a.env", "--lab", "alice"],
     "milab emulator: --lab and --labs build labs with a suite's stages: pass --suite DIR"),
    (["emulator", "--env-file", "{tmp}/a.env", "--suite", str(SUITE), "--lab", "alice:typo"],
     "milab emulator: the suite has no defect 'typo' (it has: az-cli, identity-access-policy"),
    (["emulator", "--env-file", "{tmp}/no-dir/a.env"],
     "milab emulator: --env-file {tmp}/no-dir/a.env: cannot write it (No such file or "
     "directory)"),
    (["cleanup", "--env-file", "{tmp}/missing.env"],
     "milab cleanup: --env-file {tmp}/missing.env: cannot read it (No such file or directory)"),
])
def test_bad_input_to_milab_is_one_line(tmp_path, args, message):
    result = milab(*[a.format(tmp=tmp_path) for a in args])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message.format(tmp=tmp_path)), result.stderr
