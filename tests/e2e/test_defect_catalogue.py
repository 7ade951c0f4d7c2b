"""The defect catalogue: for each step a student can break, a lab with that one step broken
(through the normal APIs or the lab's own commands) fails exactly that step and its declared
dependents, with a reason naming the defect; a complete lab gets full marks.

This is what shows the example suite's checks are real."""

from __future__ import annotations

import pytest
from e2ekit import dependents_of, grade, outcomes, suite_defects, suite_spec, suite_stages

from pytest_milab.provision import build_in_local_azure

SPEC = suite_spec()
# What each defect breaks, what the failing step's reason must say (so a student knows what to
# fix), and which steps observe its effect directly: the suite's own catalogue.
DEFECTS = suite_defects()
AZ_STEPS = {"az-cli", "az-login-identity"}


@pytest.fixture(scope="module")
def graded(local_azure, tmp_path_factory):
    """One grading run over a complete lab and one lab per defect."""
    groups = {name: f"defect-{name}" for name, d in DEFECTS.items()
              if local_azure.az_cli or d.breaks not in AZ_STEPS}
    for name, group in groups.items():
        stages, state = DEFECTS[name].apply(suite_stages())
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


@pytest.mark.parametrize("name", sorted(DEFECTS))
def test_defect_fails_exactly_its_step_and_dependents(graded, needs, name):
    groups, result, report = graded
    if name not in groups:
        pytest.skip("the local Azure has no Azure CLI to break (tox -e azcli gives one)")
    defect = DEFECTS[name]
    got = outcomes(report, groups[name])
    failed = {step for step, (outcome, _) in got.items() if outcome == "failed"}
    skipped = {step for step, (outcome, _) in got.items() if outcome == "skipped"}
    assert skipped <= AZ_STEPS  # only when the local Azure has no Azure CLI
    seen = {defect.breaks, *defect.seen_directly}
    assert failed == set().union(*(dependents_of(s, needs) for s in seen)) - skipped
    assert defect.says in got[defect.breaks][1]
    for step in failed - seen:
        assert got[step][1].startswith("needs "), (step, got[step])
    for step in (seen - {defect.breaks}) - skipped:
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
