"""The Arc suite (`example_suites/arc_managed_identity`), the lab's on-premises part, written
without changing the engine: its demo with full marks, provision mode observing each denial
before its grant, and its defect catalogue (each check failing on a lab with that step broken,
and on Azure misbehaving where only Azure's behaviour decides the step)."""

from __future__ import annotations

import pytest
from e2ekit import (
    ARC_SUITE,
    dependents_of,
    grade,
    outcomes,
    provision,
    run_demo,
    suite_defects,
    suite_needs,
    suite_spec,
    suite_stages,
)

from pytest_milab.provision import build_in_local_azure

STEPS = {"resource-group", "key-vault", "machine", "machine-identity", "reader-assignment",
         "identity-access-policy", "ssh", "himds-challenge", "management-token",
         "reader-denied-before", "reader-allowed", "wrong-audience", "secret-read"}


@pytest.fixture(scope="module")
def needs():
    return suite_needs(ARC_SUITE)


@pytest.mark.parametrize("workers", [(), ("-n", "2")], ids=["serial", "xdist"])
def test_demo_grades_a_complete_arc_lab(tmp_path, needs, workers):
    proc, report = run_demo(tmp_path, *workers, suite=ARC_SUITE)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [lab] = report["groups"]
    assert lab["group"] == "arc_identity_lab"
    steps = {s["id"]: s["outcome"] for s in lab["steps"]}
    assert set(steps) == STEPS == set(needs)
    assert set(steps.values()) == {"passed"}, steps
    assert lab["score"] == lab["max_score"] == len(STEPS)
    assert "StillAliveOnPrem" not in proc.stdout + proc.stderr


def test_provision_observes_each_denial_before_its_grant(local_azure, tmp_path):
    start = len(local_azure.audit)
    run = provision(local_azure, tmp_path, suite=ARC_SUITE)
    [lab] = run.report["groups"]
    steps = {s["id"]: (s["outcome"], s["reason"]) for s in lab["steps"]}
    assert {k for k, (o, _) in steps.items() if o != "passed"} == set(), steps
    assert run.returncode == 0, run.output[-3000:]
    entries = local_azure.audit.entries()[start:]
    group = lab["group"].lower()
    # The server was racked by the local Azure's Owner, then onboarded by its agent.
    assert any(e.service == "control" and e.method == "POST" and e.status == 201
               for e in entries)
    onboarded = next(e for e in entries if e.method == "PUT" and e.status in (200, 201)
                     and "/microsoft.hybridcompute/machines/" in e.path.lower())
    # Reader: the identity's listing was refused, then the assignment was made, then allowed.
    listing = [e for e in entries if e.path.lower().endswith(f"/resourcegroups/{group}/resources")
               and e.caller_oid not in (None, local_azure.operator.object_id,
                                        local_azure.grader.object_id)]
    grant = next(e for e in entries if e.method == "PUT" and "roleassignments" in e.path.lower()
                 and f"/resourcegroups/{group}/" in e.path.lower())
    refused = [e for e in listing if e.status == 403]
    assert refused and onboarded.time < refused[0].time < grant.time
    assert any(e.status == 200 and e.time > grant.time for e in listing)
    # Key Vault: the secret was read by the server's identity after its access policy.
    policy = next(e for e in entries if e.method == "PUT" and e.path.endswith("/accessPolicies/add"))
    reads = [e for e in entries if e.service == "keyvault" and e.path == "/secrets/onprem-phrase"
             and e.caller_oid not in (None, local_azure.operator.object_id)]
    assert any(e.status == 200 and e.time > policy.time for e in reads)
    assert "removed lab" in run.output


def test_a_server_behind_nat_is_reached_at_the_rosters_ssh_host(local_azure, tmp_path):
    """The agent reports the server's own address, private to its site (here TEST-NET-1, where
    nobody answers); the roster's ssh_host, where the grader does reach it, wins."""
    site = "192.0.2.10"
    key, failures = build_in_local_azure(local_azure, ["arc-behind-nat"], suite_stages(ARC_SUITE),
                                         suite_spec(ARC_SUITE), state={"site_address": site})
    assert failures == []
    [server] = [m for m in local_azure.machines.machines.values() if m.site_address == site]
    roster = tmp_path / "class.csv"
    roster.write_text(f"group,student,ssh_host,ssh_user\narc-behind-nat,ada,"
                      f"{server.host_address},azureuser\n")
    run = grade(local_azure, key, tmp_path / "run", extra=("--milab-roster", str(roster)),
                suite=ARC_SUITE)
    got = outcomes(run.report, "arc-behind-nat")
    assert {s: o for s, (o, _) in got.items() if o != "passed"} == {}, got


def test_a_failed_onboarding_says_why_without_the_command_or_its_token(local_azure):
    """The agent refuses (no such group): the stage's reason, which reaches the reports, is
    the agent's own last line, never the command line with the operator's token."""
    stages = [s for s in suite_stages(ARC_SUITE) if s.name in ("on-premises server", "onboard")]
    _, failures = build_in_local_azure(local_azure, ["arc-no-such-group"], stages,
                                       suite_spec(ARC_SUITE))
    [failure] = failures
    text = str(failure)
    assert failure.stage == "onboard" and "azcmagent connect exited 1" in text, text
    assert "ResourceGroupNotFound" in text
    assert "--access-token" not in text and "eyJ" not in text


# What each defect breaks, what the failing step's reason must say, and which steps observe
# its effect directly: the suite's own catalogue.
DEFECTS = suite_defects(ARC_SUITE)
# Steps only Azure's behaviour decides: shown failing by making the local Azure misbehave.
QUIRKS = {
    "imds-token-audience-mismatch": ("management-token", "aud is"),
    "arm-list-denied": ("reader-allowed", "403"),
    "keyvault-accepts-any-audience": ("wrong-audience", "not 401 AKV10022"),
}


@pytest.fixture(scope="module")
def graded(local_azure, tmp_path_factory):
    """One grading run over a complete Arc lab and one lab per defect."""
    spec = suite_spec(ARC_SUITE)
    groups = {name: f"arc-defect-{name}" for name in DEFECTS}
    for name, group in groups.items():
        stages, state = DEFECTS[name].apply(suite_stages(ARC_SUITE))
        build_in_local_azure(local_azure, [group], stages, spec, state=state)
    key, failures = build_in_local_azure(local_azure, ["arc-complete-lab"],
                                         suite_stages(ARC_SUITE), spec)
    assert failures == []
    run = grade(local_azure, key, tmp_path_factory.mktemp("arc-catalogue"), "arc-complete-lab",
                *groups.values(), suite=ARC_SUITE)
    return groups, run, key


def test_complete_arc_lab_gets_full_marks(graded):
    _, run, _ = graded
    got = outcomes(run.report, "arc-complete-lab")
    assert {s: o for s, (o, _) in got.items() if o != "passed"} == {}


@pytest.mark.parametrize("name", sorted(DEFECTS))
def test_defect_fails_exactly_its_step_and_dependents(graded, needs, name):
    groups, run, _ = graded
    defect = DEFECTS[name]
    got = outcomes(run.report, groups[name])
    failed = {step for step, (outcome, _) in got.items() if outcome == "failed"}
    seen = {defect.breaks, *defect.seen_directly}
    assert failed == set().union(*(dependents_of(s, needs) for s in seen)), got
    assert defect.says in got[defect.breaks][1], got[defect.breaks]
    for step in failed - seen:
        assert got[step][1].startswith("needs "), (step, got[step])
    for step in seen - {defect.breaks}:
        assert not got[step][1].startswith("needs "), (step, got[step])
    others = {s: got[s] for s in set(got) - failed if got[s][0] != "passed"}
    assert others == {}


def test_the_catalogue_covers_every_step_a_student_can_break(needs):
    """Every step has a defect, or is Azure's own behaviour shown by a quirk, except `ssh`
    (see the suite's defects.py, and the next test)."""
    covered = {d.breaks for d in DEFECTS.values()} | {step for step, _ in QUIRKS.values()}
    assert set(needs) - covered == {"ssh"}


def test_a_server_refusing_ssh_earns_nothing_inside_it(graded, local_azure, tmp_path):
    """Nothing in Azure explains an on-premises server refusing SSH, so `ssh` cannot be shown
    `failed`; it and every in-machine step end `unverified`: counted, no points."""
    _, _, key = graded
    local_azure.knobs.faults.ssh_refuse(60.0)
    try:
        run = grade(local_azure, key, tmp_path, "arc-complete-lab", suite=ARC_SUITE)
    finally:
        local_azure.knobs.faults.clear()
    got = outcomes(run.report, "arc-complete-lab")
    inside = {"ssh", "himds-challenge", "management-token", "reader-denied-before",
              "reader-allowed", "wrong-audience", "secret-read"}
    assert {s for s, (o, _) in got.items() if o == "unverified"} == inside, got
    assert {o for s, (o, _) in got.items() if s not in inside} == {"passed"}
    lab = run.report["groups"][0]
    assert lab["score"] == len(got) - len(inside) and lab["max_score"] == len(got)


@pytest.mark.parametrize("quirk", sorted(QUIRKS))
def test_azure_misbehaving_fails_exactly_the_step_that_checks_it(graded, local_azure, needs,
                                                                   tmp_path, quirk):
    _, _, key = graded  # the complete lab exists
    step, words = QUIRKS[quirk]
    local_azure.knobs.quirks.add(quirk)
    try:
        run = grade(local_azure, key, tmp_path, "arc-complete-lab", suite=ARC_SUITE)
    finally:
        local_azure.knobs.quirks.discard(quirk)
    got = outcomes(run.report, "arc-complete-lab")
    failed = {s for s, (o, _) in got.items() if o == "failed"}
    assert failed == dependents_of(step, needs), got
    assert words in got[step][1], got[step]
