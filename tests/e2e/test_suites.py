"""The example suites as lab authors use them: a variant of the lab by its spec alone (the
same spec for building, discovering and provisioning), and the suites under pytest's
importlib import mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from e2ekit import SUITE, SUITES

VARIANT_CONFTEST = '''
from managed_identity.conftest import *  # noqa: F403 - the suite's hooks and `lab` fixture
from managed_identity.spec import ManagedIdentitySpec


def pytest_milab_spec(config):
    return ManagedIdentitySpec(group="myvm_lab", vm_name="myvm", os_disk="myvm-os",
                               secret_value="NotTheCake")
'''
VARIANT_CHECKS = "".join(f"from managed_identity.{m} import *  # noqa: F403\n" for m in (
    "test_resource_group_and_vault", "test_virtual_machine", "test_access", "test_inside_vm"))


def run_pytest(cwd, *args) -> tuple[subprocess.CompletedProcess, dict]:
    env = dict(os.environ, PYTHONPATH=str(SUITES), PYTHONDONTWRITEBYTECODE="1")
    for key in ("PYTEST_ADDOPTS", "MILAB_AZ_CLI"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                           "--rootdir", str(cwd), "-c", os.devnull,
                           "--milab-report", str(cwd / "grades.json"), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    report = cwd / "grades.json"
    return proc, (json.loads(report.read_text()) if report.exists() else {})


def passed_all(report: dict) -> dict[str, str]:
    lab = report["groups"][0]
    return {s["id"]: s["outcome"] for s in lab["steps"]
            if s["outcome"] != "passed" and not s["id"].startswith("az-")}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["discover", "provision"])
def test_a_variant_of_the_lab_is_its_spec_alone(tmp_path, mode):
    """A suite that only returns another spec (VM `myvm`, another secret): the demo builds
    the lab with it and grades it with it, and provision mode builds and checks it with it."""
    (tmp_path / "conftest.py").write_text(VARIANT_CONFTEST)
    (tmp_path / "test_variant.py").write_text(VARIANT_CHECKS)
    proc, report = run_pytest(tmp_path, str(tmp_path), "--milab-emulator", "--milab-mode", mode)
    assert report, proc.stdout + proc.stderr
    assert passed_all(report) == {}, proc.stdout
    if mode == "discover":
        assert report["groups"][0]["group"] == "myvm_lab"
    assert len(report["groups"][0]["steps"]) == 24
    assert "NotTheCake" not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_the_suite_runs_under_importlib_import_mode(tmp_path):
    proc, report = run_pytest(tmp_path, str(SUITE), "--milab-emulator",
                              "--import-mode=importlib")
    assert report, proc.stdout + proc.stderr
    assert passed_all(report) == {}, proc.stdout
