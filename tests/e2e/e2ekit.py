"""Helpers for end-to-end grading runs: labs built in the local Azure, graded by the example suite."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SUITES = Path(__file__).resolve().parents[2] / "example_suites"
SUITE = SUITES / "managed_identity"
ARC_SUITE = SUITES / "arc_managed_identity"
# The suites are packages: imported by name, as pytest imports them.
if str(SUITES) not in sys.path:
    sys.path.insert(0, str(SUITES))


def loaded(suite: Path = SUITE):
    """The suite as the `milab` command loads it."""
    from pytest_milab.suiteload import load_suite

    return load_suite(suite)


def suite_module(name: str, suite: Path = SUITE):
    return importlib.import_module(f"{suite.name}.{name}")


def suite_spec(suite: Path = SUITE):
    """The spec the suite's `pytest_milab_spec` hook gives."""
    return loaded(suite).spec


def suite_stages(suite: Path = SUITE) -> list:
    """The suite's stages, in the lab's order."""
    return loaded(suite).suite.stages()


def suite_defects(suite: Path = SUITE) -> dict:
    """The suite's defects by name."""
    return loaded(suite).defects()


def engine_suite(suite: Path = SUITE):
    """The engine's `Suite` as the suite's hooks describe it (for gathering without pytest)."""
    return loaded(suite).suite


def suite_needs(suite: Path = SUITE) -> dict[str, tuple[str, ...]]:
    """Each step's declared prerequisites, read from the suite's markers."""
    needs: dict[str, tuple[str, ...]] = {}
    for path in sorted(suite.glob("test_*.py")):
        module = suite_module(path.stem, suite)
        for name in dir(module):
            for mark in getattr(getattr(module, name), "pytestmark", []):
                if mark.name == "milab_step":
                    needs[mark.args[0]] = tuple(mark.kwargs.get("needs", ()))
    return needs


def dependents_of(step: str, needs: dict[str, tuple[str, ...]]) -> set[str]:
    """The step and every step that needs it, directly or not."""
    out = {step}
    changed = True
    while changed:
        changed = False
        for s, ns in needs.items():
            if s not in out and out & set(ns):
                out.add(s)
                changed = True
    return out


@dataclass
class GradingRun:
    returncode: int
    output: str
    report: dict
    directory: Path

    def file(self, name: str) -> str:
        return (self.directory / name).read_text()


def _with_suites(env: dict[str, str]) -> dict[str, str]:
    """Suites written in tests import the example suites' packages by name."""
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SUITES), env.get("PYTHONPATH")) if p)
    return env


def grade(azure, key_path: Path, directory: Path, *groups: str, extra=(),
          suite: Path = SUITE) -> GradingRun:
    """Run the example suite in a subprocess over labs of a local Azure, as its Reader-only
    grader, with JSON, CSV and JUnit reports in `directory`."""
    env = _with_suites(dict(os.environ, **azure.env))
    env.update(AZURE_CLIENT_ID=azure.grader.client_id,
               AZURE_CLIENT_SECRET=azure.grader.client_secret, PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTEST_ADDOPTS", None)
    directory.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "pytest", str(suite), "-p", "no:cacheprovider", "-v",
            "--rootdir", str(directory), "-c", os.devnull,
            "--junitxml", str(directory / "junit.xml"),
            "--milab-report", str(directory / "grades.json"),
            "--milab-report", str(directory / "grades.csv"),
            "--milab-ssh-key", str(key_path),
            "--milab-ssh-port", azure.env.get("MILAB_SSH_PORT", "22")]
    for g in groups:
        args += ["--milab-group", g]
    proc = subprocess.run([*args, *extra], env=env, cwd=directory, capture_output=True,
                          text=True, timeout=600)
    report_path = directory / "grades.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    return GradingRun(proc.returncode, proc.stdout + proc.stderr, report, directory)


def outcomes(report: dict, group: str) -> dict[str, tuple[str, str]]:
    lab = next(g for g in report["groups"] if g["group"] == group)
    return {s["id"]: (s["outcome"], s["reason"]) for s in lab["steps"]}


def provision(azure, directory: Path, *, credentials=None, extra=(),
              suite: Path = SUITE) -> GradingRun:
    """Run the example suite in provision mode against a local Azure, as its operator (or
    `credentials`, an Identity), in a subprocess."""
    who = credentials or azure.operator
    env = dict(os.environ, **azure.env)
    env.update(AZURE_CLIENT_ID=who.client_id, AZURE_CLIENT_SECRET=who.client_secret,
               PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTEST_ADDOPTS", None)
    directory.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "pytest", str(suite), "-p", "no:cacheprovider", "-v",
            "--rootdir", str(directory), "-c", os.devnull, "--milab-mode", "provision",
            "--milab-report", str(directory / "grades.json"),
            "--milab-ssh-port", azure.env.get("MILAB_SSH_PORT", "22"), *extra]
    proc = subprocess.run(args, env=env, cwd=directory, capture_output=True, text=True,
                          timeout=900)
    report_path = directory / "grades.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    return GradingRun(proc.returncode, proc.stdout + proc.stderr, report, directory)


def run_demo(directory: Path, *extra, suite: Path = SUITE) -> tuple[subprocess.CompletedProcess,
                                                                   dict]:
    """The README's demo, `pytest --milab-emulator <suite>`, in a subprocess with nothing of a
    local Azure in its environment; its JSON report."""
    env = {k: v for k, v in os.environ.items()
           if (k == "MILAB_AZ_CLI" or not k.startswith(("AZURE_", "MILAB_"))) and k.lower() not in (
               "https_proxy", "http_proxy", "no_proxy", "requests_ca_bundle", "ssl_cert_file",
               "curl_ca_bundle")}
    report = directory / "grades.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--milab-emulator", str(suite), "-p", "no:cacheprovider",
         "--rootdir", str(directory), "-c", os.devnull, "--milab-report", str(report), *extra],
        env=env, cwd=directory, capture_output=True, text=True, timeout=600)
    return proc, (json.loads(report.read_text()) if report.exists() else {})
