"""The README's demo: `pytest --milab-emulator example_suites/managed_identity`."""

from __future__ import annotations

import os

import pytest
from e2ekit import run_demo


@pytest.mark.parametrize("workers", [(), ("-n", "2")], ids=["serial", "xdist"])
def test_demo_grades_a_complete_lab(tmp_path, workers):
    proc, report = run_demo(tmp_path, *workers)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [lab] = report["groups"]
    steps = {s["id"]: s for s in lab["steps"]}
    assert len(steps) == 24
    skipped = {k for k, s in steps.items() if s["outcome"] == "skipped"}
    if os.environ.get("MILAB_AZ_CLI"):  # tox -e azcli: the CLI steps run for real
        assert skipped == set()
    else:
        assert skipped == {"az-cli", "az-login-identity"}
        assert "no Azure CLI configured" in steps["az-cli"]["reason"]
    assert all(s["outcome"] == "passed" for k, s in steps.items() if k not in skipped)
    assert lab["score"] == lab["max_score"] == 24 - len(skipped)
    # Where each step's evidence came from: what the grader read or saw itself (ARM, its own SSH
    # connection), or the VM's own report.
    assert {k for k, s in steps.items() if s["evidence"] == "control-plane"} - skipped == {
        "resource-group", "key-vault", "vault-permission-model", "operator-access-policy", "vm",
        "vm-identity", "vm-tags", "reader-assignment", "identity-access-policy",
        "service-principal", "ssh"}
    assert steps["secret-read"]["evidence"] == "vm-reported"
