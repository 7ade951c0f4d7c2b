"""End-to-end grading runs: labs built in the local Azure, graded by the example suite."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parents[2] / "example_suites" / "managed_identity"


def suite_needs() -> dict[str, tuple[str, ...]]:
    """Each step's declared prerequisites, read from the suite's markers."""
    needs: dict[str, tuple[str, ...]] = {}
    for path in sorted(SUITE.glob("test_*.py")):
        spec = importlib.util.spec_from_file_location(f"_suite_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
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


class Grader:
    """Runs the example suite over labs of a local Azure as its Reader-only grader."""

    def __init__(self, pytester, azure, key_path: Path, monkeypatch) -> None:
        self.pytester = pytester
        self.azure = azure
        self.key_path = key_path
        for k, v in azure.env.items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("AZURE_CLIENT_ID", azure.grader.client_id)
        monkeypatch.setenv("AZURE_CLIENT_SECRET", azure.grader.client_secret)
        pytester.makeini("[pytest]\n")

    def run(self, *groups: str, extra=()) -> tuple[pytest.RunResult, dict]:
        args = [str(SUITE), "-p", "no:cacheprovider", "-v", "--junitxml", "junit.xml",
                "--milab-report", "grades.json", "--milab-report", "grades.csv",
                "--milab-ssh-key", str(self.key_path),
                "--milab-ssh-port", self.azure.env.get("MILAB_SSH_PORT", "22")]
        for g in groups:
            args += ["--milab-group", g]
        result = self.pytester.runpytest(*args, *extra)
        report = json.loads((self.pytester.path / "grades.json").read_text())
        return result, report


def outcomes(report: dict, group: str) -> dict[str, tuple[str, str]]:
    lab = next(g for g in report["groups"] if g["group"] == group)
    return {s["id"]: (s["outcome"], s["reason"]) for s in lab["steps"]}


@pytest.fixture(scope="session")
def needs():
    return suite_needs()
