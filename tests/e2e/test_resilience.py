"""Grading rides out Azure's transient trouble: a fault never turns a step `failed`. Each test
grades the same complete lab with one fault on (in a local Azure of its own, so the knobs touch
no other test) and compares with the lab's outcomes without it: a step keeps its outcome, or
ends `error` (could not decide) where Azure's fault left nothing to judge; every step is still
reported, and the run ends in bounded time. A VM that itself will not let the grader see
(refusing SSH while it runs with SSH allowed, a command that hangs) ends its steps `unverified`:
never failed, never a free pass."""

from __future__ import annotations

import time

import pytest
from e2ekit import grade, outcomes, suite_spec, suite_stages

from pytest_milab.emulator import LocalAzure
from pytest_milab.provision import build_in_local_azure

SPEC = suite_spec()

LAB = "resilient-lab"
IN_VM = {"imds-instance", "imds-tags-path", "jq", "management-token", "reader-denied-before",
         "reader-allowed", "wrong-audience", "vault-denied-before", "secret-read", "sp-secrets",
         "sp-login"}
AZ = {"az-cli", "az-login-identity"}  # skipped without an Azure CLI; error when SSH is
IMDS_BOUND = {"imds-instance", "imds-tags-path", "management-token", "reader-denied-before",
              "reader-allowed", "wrong-audience", "vault-denied-before", "secret-read",
              "sp-secrets", "sp-login"}


@pytest.fixture(scope="module")
def azure():
    with LocalAzure() as local:
        yield local


@pytest.fixture(scope="module")
def lab(azure, tmp_path_factory):
    """The complete lab and its outcomes with no fault on."""
    key, _ = build_in_local_azure(azure, [LAB], suite_stages(), SPEC)
    run = grade(azure, key, tmp_path_factory.mktemp("no-fault"), LAB)
    clean = outcomes(run.report, LAB)
    assert {o for o, _ in clean.values()} <= {"passed", "skipped"}, clean
    return key, clean


@pytest.fixture
def faulty(azure, lab, tmp_path):
    """Grade the lab with whatever fault the test switched on; knobs reset afterwards."""

    def run(*extra: str):
        key, _ = lab
        t0 = time.monotonic()
        result = grade(azure, key, tmp_path / "run", LAB, extra=extra)
        return result, outcomes(result.report, LAB), time.monotonic() - t0

    yield run
    azure.knobs.reset()


def no_fault_failures(clean: dict, got: dict, may_error: set[str] = frozenset(),
                      instead: str = "error") -> None:
    """Every step is reported; each keeps its outcome, or (those in `may_error`) ends
    `instead`."""
    assert set(got) == set(clean)
    for step, (outcome, reason) in got.items():
        if step in may_error and outcome == instead:
            continue
        assert outcome == clean[step][0], (step, outcome, reason)


def test_arm_500_and_503_bursts_are_retried(azure, lab, faulty):
    # Five in a row at most: within the retries of one call (a longer run of failures on one
    # call would end its steps `error`, which is also no failure).
    azure.knobs.faults.error_burst("arm", status=500, count=2)
    azure.knobs.faults.error_burst("arm", status=503, count=3)
    result, got, seconds = faulty()
    no_fault_failures(lab[1], got)
    assert azure.knobs.faults.errors_left("arm") == 0, "the bursts were not all met"
    assert seconds < 30, result.output[-2000:]


def test_connection_resets_through_the_proxies_are_retried(azure, lab, faulty):
    azure.knobs.faults.reset_connections(3, proxy="host")
    azure.knobs.faults.reset_connections(3, proxy="vm")
    result, got, seconds = faulty()
    no_fault_failures(lab[1], got)
    assert azure.knobs.faults.resets_left() == 0, "the resets were not all met"
    assert seconds < 30, result.output[-2000:]


def test_arm_throttling_is_absorbed(azure, lab, faulty):
    knobs = azure.knobs
    knobs.throttle, knobs.arm_read_bucket, knobs.arm_read_refill = True, 3, 3.0
    start = len(azure.audit)
    result, got, seconds = faulty()
    no_fault_failures(lab[1], got)
    throttled = [e for e in azure.audit.entries()[start:] if e.status == 429]
    assert throttled, "the grader was never throttled: the test shows nothing"
    assert seconds < 30, result.output[-2000:]


def test_slow_imds_makes_its_steps_error_not_fail(azure, lab, faulty):
    # IMDS silent beyond the probe's patience: Azure's trouble as the machine reports it; the
    # grader cannot decide (error, never counted against the student), and says whose word it is.
    azure.knobs.latency["imds"] = 6.0  # beyond the probe's 5 s for a link-local call
    result, got, seconds = faulty()
    no_fault_failures(lab[1], got, may_error=IMDS_BOUND)
    assert {s for s, (o, _) in got.items() if o == "error"} == IMDS_BOUND
    assert "as the machine reports it" in got["imds-instance"][1]
    assert got["jq"][0] == got["ssh"][0] == "passed"
    assert "no answer in 5s" in got["imds-instance"][1]
    assert seconds < 40, result.output[-2000:]


def test_ssh_refused_briefly_costs_nothing(azure, lab, faulty):
    # From now: the grader reaches SSH a few seconds into its run, meets the refusal and
    # waits it out (it waits up to 10 s for a VM that refuses, as a booting one does).
    azure.knobs.faults.ssh_refuse(6.0)
    result, got, seconds = faulty()
    no_fault_failures(lab[1], got)
    assert seconds < 30, result.output[-2000:]


def test_ssh_refused_for_long_is_unverified_not_failed(azure, lab, faulty):
    # The VM runs and its NSG lets SSH in, yet it refuses for longer than the grader waits:
    # nothing in the lab explains it, and the grader cannot see inside: unverified.
    azure.knobs.faults.ssh_refuse(60.0)
    result, got, seconds = faulty()
    no_fault_failures(lab[1], got, may_error=IN_VM | AZ | {"ssh"}, instead="unverified")
    assert {s for s, (o, _) in got.items() if o == "unverified"} - AZ == IN_VM | {"ssh"}
    assert "let the grader in" in got["ssh"][1] and "is running" in got["ssh"][1]
    assert seconds < 30, result.output[-2000:]


def test_a_hanging_command_times_out_unverified(azure, lab, faulty):
    azure.knobs.faults.hang_commands(None, count=1)  # the probe never starts; SSH stays up
    result, got, seconds = faulty("--milab-timeout", "5")  # the probe's deadline: 10 s
    no_fault_failures(lab[1], got, may_error=IN_VM, instead="unverified")
    assert {s for s, (o, _) in got.items() if o == "unverified"} == IN_VM
    assert got["ssh"][0] == "passed"
    assert "did not finish in 10s" in got["imds-instance"][1]
    assert seconds < 30, result.output[-2000:]
