"""A student cannot raise a score by breaking the probe: a machine that answers garbage or
floods the grader gets no more than a lab whose in-machine steps failed (`unverified`, counted,
no points), its control-plane steps are still graded, and the grader's memory stays bounded."""

from __future__ import annotations

import resource
import shlex

import pytest
from e2ekit import grade, outcomes, suite_spec, suite_stages

from pytest_milab import Stage
from pytest_milab.emulator.machines import namespace
from pytest_milab.provision import build_in_local_azure

CONTROL_PLANE = {"resource-group", "key-vault", "vault-permission-model",
                 "operator-access-policy", "vm", "vm-identity", "vm-tags", "reader-assignment",
                 "identity-access-policy", "service-principal"}
# What answers the probe instead of the kit, once the lab is built.
FAKES = {
    "garbage": "echo 'MILAB-PROBE-RESULT {\"secret_read\": {\"status\": 200}}'; echo '{not json'",
    "flood": "head -c 1500000000 /dev/zero | tr '\\0' x",
}


def fake_python(script: str):
    """The student is root in their VM: they replace its /usr/bin/python3, which the probe runs
    (when the local Azure gives each VM its own /usr; otherwise, so as never to touch the
    host's, a function in ~/.bashrc stands in for the /usr/bin/env the probe starts with)."""
    if namespace.wanted():
        command = ("sudo sh -c 'rm -f /usr/bin/python3 && cat > /usr/bin/python3 && "
                   "chmod 755 /usr/bin/python3' <<'EOF'\n#!/bin/sh\n" + script + "\nEOF\n")
    else:
        line = "/usr/bin/env() { " + script + "; }"
        command = (f"printf '%s\\n' {shlex.quote(line)} | cat - ~/.bashrc > ~/.b && "
                   "mv ~/.b ~/.bashrc")

    def stage(ctx):
        result = ctx.run_in_vm(command)
        assert result.ok, result.stderr
    return stage


@pytest.fixture(scope="module")
def tampered(local_azure, tmp_path_factory):
    key = None
    for name, script in FAKES.items():
        stages = [*suite_stages(), Stage("tamper", fake_python(script))]
        key, failures = build_in_local_azure(local_azure, [f"tampered-{name}"], stages,
                                             suite_spec())
        assert failures == [], failures
    run = grade(local_azure, key, tmp_path_factory.mktemp("tampered"),
                *(f"tampered-{n}" for n in FAKES))
    return run


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FAKES))
def test_a_broken_probe_is_unverified_never_a_pass(tampered, name):
    got = outcomes(tampered.report, f"tampered-{name}")
    in_machine = {s for s in got if s not in CONTROL_PLANE and s != "ssh"}
    assert {s: got[s][0] for s in CONTROL_PLANE} == dict.fromkeys(CONTROL_PLANE, "passed")
    assert got["ssh"][0] == "passed"  # it answered SSH: what it said could not be believed
    for step in in_machine:
        assert got[step][0] in ("unverified", "skipped"), (step, got[step])
    lab = next(g for g in tampered.report["groups"] if g["group"] == f"tampered-{name}")
    assert lab["score"] == len(CONTROL_PLANE) + 1 and lab["complete"] is True
    assert tampered.returncode == 1  # decided: unverified steps count, with no points


def test_the_grader_s_memory_stays_bounded_by_a_flood(tampered):
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    assert peak_mb < 300, f"a grading process peaked at {peak_mb:.0f} MB"
    got = outcomes(tampered.report, "tampered-flood")
    assert "more output than a probe gives" in got["imds-instance"][1]
