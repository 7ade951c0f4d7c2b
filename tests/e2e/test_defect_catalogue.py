"""The defect catalogue: for each step a student can break, a lab with that one step broken
(through the normal APIs or the lab's own commands) fails exactly that step and its declared
dependents, with a reason naming the defect; a complete lab gets full marks.

This is what shows the example suite's checks are real."""

from __future__ import annotations

import pytest
from defects import broken
from e2ekit import dependents_of, grade, outcomes, suite_spec, suite_stages

from pytest_milab.provision import build_in_local_azure

SPEC = suite_spec()

# What the failing step's reason must say, so a student knows what to fix.
DEFECTS = {
    "resource-group": "not found in subscription",
    "key-vault": "no vault named",
    "vault-permission-model": "kept 90 days",
    "operator-access-policy": "get, list and set",
    "vm": "not an Ubuntu image",
    "vm-identity": "no system-assigned identity",
    "vm-tags": "vault=",
    "reader-assignment": "no Reader assignment",
    "identity-access-policy": "no access policy for the VM identity",
    "service-principal": "Contributor",
    "ssh": "does not answer SSH",
    "jq": "jq is not installed",
    "vault-denied-before": "not 403",
    "secret-read": "does not hold the lab's value",
    "sp-secrets": "disagrees with client-id",
    "sp-login": "AADSTS7000215",
}
AZ_STEPS = {"az-cli", "az-login-identity"}
# Steps judged on what the identity was seen to do, not on the grant behind it: a defect's
# effect fails them with their own reason (the grant's step says what to fix), not "needs".
SEEN_DIRECTLY = {
    "identity-access-policy": {"secret-read", "sp-secrets"},
    "reader-assignment": {"reader-allowed", "reader-denied-before", "az-login-identity"},
    "vm-tags": {"imds-tags-path"},
}


@pytest.fixture(scope="module")
def graded(local_azure, tmp_path_factory):
    """One grading run over a complete lab and one lab per defect."""
    groups = {defect: f"defect-{defect}" for defect in DEFECTS}
    for defect, group in groups.items():
        stages, state = broken(defect)
        build_in_local_azure(local_azure, [group], stages, SPEC, state=state)
    key, failures = build_in_local_azure(local_azure, ["complete-lab"], suite_stages(), SPEC)
    assert failures == []
    run = grade(local_azure, key, tmp_path_factory.mktemp("catalogue"), "complete-lab",
                *groups.values())
    return groups, run, run.report


def test_complete_lab_gets_full_marks(graded):
    _, result, report = graded
    complete = outcomes(report, "complete-lab")
    lab = next(g for g in report["groups"] if g["group"] == "complete-lab")
    not_passed = {k: v for k, v in complete.items() if v[0] != "passed"}
    assert set(not_passed) <= AZ_STEPS and {v[0] for v in not_passed.values()} <= {"skipped"}
    assert lab["score"] == lab["max_score"] == len(complete) - len(not_passed)


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_defect_fails_exactly_its_step_and_dependents(graded, needs, defect):
    groups, result, report = graded
    got = outcomes(report, groups[defect])
    failed = {step for step, (outcome, _) in got.items() if outcome == "failed"}
    skipped = {step for step, (outcome, _) in got.items() if outcome == "skipped"}
    assert skipped <= AZ_STEPS  # only when the local Azure has no Azure CLI
    seen = {defect} | SEEN_DIRECTLY.get(defect, set())
    assert failed == set().union(*(dependents_of(s, needs) for s in seen)) - skipped
    assert DEFECTS[defect] in got[defect][1]
    for step in failed - seen:
        assert got[step][1].startswith("needs "), (step, got[step])
    for step in (seen - {defect}) - skipped:
        assert not got[step][1].startswith("needs "), (step, got[step])
    others = {s: o for s, (o, _) in got.items() if s not in failed | skipped}
    assert set(others.values()) <= {"passed"}, {s: got[s] for s, o in others.items()
                                                if o != "passed"}


# Steps only Azure's behaviour decides: shown failing by making the local Azure misbehave.
QUIRKS = {
    "imds-wrong-resource-id": ("imds-instance", "not this VM"),
    "imds-no-tags-path": ("imds-tags-path", "answered 404"),
    "imds-token-audience-mismatch": ("management-token", "aud is"),
    "arm-permissions-too-wide": ("reader-denied-before", "on the whole subscription"),
    "arm-list-denied": ("reader-allowed", "403"),
    "keyvault-accepts-any-audience": ("wrong-audience", "not 401 AKV10022"),
}


@pytest.mark.parametrize("quirk", sorted(QUIRKS))
def test_azure_misbehaving_fails_exactly_the_step_that_checks_it(graded, local_azure, needs,
                                                                   tmp_path, quirk):
    _, _, _ = graded  # the complete lab exists
    step, words = QUIRKS[quirk]
    key = local_azure.workdir / "grader-ssh" / "id_ed25519"
    local_azure.knobs.quirks.add(quirk)
    try:
        run = grade(local_azure, key, tmp_path, "complete-lab")
    finally:
        local_azure.knobs.quirks.discard(quirk)
    got = outcomes(run.report, "complete-lab")
    failed = {s for s, (o, _) in got.items() if o == "failed"}
    skipped = {s for s, (o, _) in got.items() if o == "skipped"}
    assert failed == dependents_of(step, needs) - skipped
    assert words in got[step][1], got[step]
