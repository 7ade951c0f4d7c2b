"""What the machine controls can only cost the student: a probe answer with a part left out or
said to have failed is `unverified` (counted, no points), never `error` (which the grader owns
and which keeps the grade book open), and a step the machine's word failed says so in its
provenance, however the check read that word."""

from __future__ import annotations

import json

import pytest

from pytest_milab import provenance
from pytest_milab.errors import CouldNotDecide, Unverified
from pytest_milab.evidence import LabEvidence, SshOutcome
from pytest_milab.lab import Lab


def lab_with(probe: dict) -> Lab:
    return Lab(LabEvidence(label="lab", group="g", ssh=SshOutcome(ok=True), probe=probe,
                           declared_parts=frozenset({"jq", "secret_read", "imds"})))


def test_a_part_the_machine_says_failed_is_unverified():
    lab = lab_with({"jq": {"error": "x\x1b[2K"}, "secret_read": {"status": 200}})
    with pytest.raises(Unverified, match="in the machine, jq could not run: x") as info:
        lab.probe("jq")
    assert "\x1b" not in str(info.value)
    with pytest.raises(Unverified):
        lab.refute_with("jq")


def test_azure_s_trouble_told_by_the_machine_is_undecided_anything_else_unverified():
    trouble = {"error": "GET http://169.254.169.254/metadata/instance: answered 503 3 times",
               "trouble": "azure"}
    with pytest.raises(CouldNotDecide, match="answered 503 3 times .*as the machine reports"):
        lab_with({"imds": trouble}).probe("imds")
    with pytest.raises(Unverified, match="imds could not run"):
        lab_with({"imds": {**trouble, "trouble": "mine"}}).probe("imds")
    # The kit says Azure's trouble apart only for throttling, 5xx and silence.
    from pytest_milab.vm import probe_kit

    results, events = {}, {"imds": __import__("threading").Event()}

    def refused(part):
        raise ConnectionRefusedError("refused")

    probe_kit.OPS["milab-test-refused"] = refused
    try:
        probe_kit.run_part(results, events, {"name": "imds", "op": "milab-test-refused"})
    finally:
        del probe_kit.OPS["milab-test-refused"]
    assert "trouble" not in results["imds"]


def test_a_part_the_machine_left_out_is_unverified():
    lab = lab_with({"jq": {"path": "/usr/bin/jq"}})
    with pytest.raises(Unverified, match="no result for secret_read"):
        lab.probe("secret_read")
    with pytest.raises(Unverified, match="no result for imds"):
        lab_with({"imds": "not an object"}).probe("imds")


def test_reading_the_probe_s_results_directly_is_the_machine_s_word():
    lab = lab_with({"jq": {"path": "/usr/bin/jq"}})
    with provenance.tracking() as used:
        assert "jq" in lab.evidence.probe  # a part's name tells nothing
    assert used == set()
    for read in (lambda p: p["jq"], lambda p: p.get("jq"), lambda p: list(p.values()),
                 lambda p: list(p.items()), lambda p: p.copy()):
        with provenance.tracking() as used:
            read(lab.evidence.probe)
        assert used == {provenance.VM_REPORTED}
    # The engine's own reads note only what the caller relies on.
    with provenance.tracking() as used:
        lab.refute_with("jq")
    assert provenance.settle(used, passed=True) == provenance.CONTROL_PLANE


CONFTEST = """
import pytest
from pytest_milab import LabEvidence
from pytest_milab.evidence import SshOutcome

FORGED = {"jq": {"error": "x"}, "imds": {"status": 500}, "tags": {"status": 200}}

@pytest.fixture
def evidence(_milab_target):
    return LabEvidence(label=_milab_target.label, group=_milab_target.group,
                       subscription="sub-1", control={"group": {"id": "/g"}},
                       ssh=SshOutcome(ok=True), probe=dict(FORGED))
"""

SUITE = """
import pytest

@pytest.mark.milab_step("jq", title="jq")
def test_jq(lab):
    assert lab.probe("jq").get("path"), "jq is not installed"

@pytest.mark.milab_step("secret-read", title="secret read")
def test_secret_read(lab):
    assert lab.probe("secret_read")["status"] == 200

@pytest.mark.milab_step("refuted", title="refuted by the machine")
def test_refuted(lab):
    assert lab.refute_with("imds")["status"] == 200, "IMDS answered 500"
    assert lab.group is not None

@pytest.mark.milab_step("refuting-passed", title="refuting, passed")
def test_refuting_passed(lab):
    assert lab.refute_with("tags")["status"] == 200
    assert lab.group is not None

@pytest.mark.milab_step("direct", title="direct read")
def test_direct(lab):
    assert lab.group is not None
    assert lab.evidence.probe["tags"]["status"] == 200
"""


def test_the_machine_s_word_in_a_grading_run(pytester, azure_env):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest("--milab-group", "forged", "--milab-report", "grades.json")
    data = json.loads((pytester.path / "grades.json").read_text())
    steps = {s["id"]: s for s in data["groups"][0]["steps"]}
    # A part said failed or left out: unverified, counted, and the grade book is decided.
    assert steps["jq"]["outcome"] == steps["secret-read"]["outcome"] == "unverified"
    assert "jq could not run" in steps["jq"]["reason"]
    assert "no result for secret_read" in steps["secret-read"]["reason"]
    assert result.ret == 1
    # The machine's word failed it: vm-reported; it could not pass it: control-plane.
    assert (steps["refuted"]["outcome"], steps["refuted"]["evidence"]) == ("failed",
                                                                          "vm-reported")
    assert (steps["refuting-passed"]["outcome"],
            steps["refuting-passed"]["evidence"]) == ("passed", "control-plane")
    assert (steps["direct"]["outcome"], steps["direct"]["evidence"]) == ("passed", "vm-reported")


class _Answering:
    """A machine connection whose probe answers `answer` for every part, on the framed line."""

    def __init__(self, answer: dict) -> None:
        self.answer = answer

    def run(self, command, *, timeout=None, stdin=b""):
        from pytest_milab.vm.ssh import CommandResult

        program = json.loads(stdin)
        results = {p["name"]: self.answer for p in program["parts"]}
        return CommandResult(0, f"MILAB-PROBE-RESULT {program['nonce']} {json.dumps(results)}\n",
                             "")


def test_the_vm_fixture_tells_azure_s_trouble_apart_from_the_machine_s_failures():
    from pytest_milab.errors import CouldNotDecide
    from pytest_milab.vm.probe import Vm

    trouble = {"error": "GET http://169.254.169.254/metadata/instance: answered 429 3 times",
               "trouble": "azure"}
    with pytest.raises(CouldNotDecide, match="answered 429 3 times"):
        Vm(_Answering(trouble), b"k" * 32).imds("/metadata/instance")
    with pytest.raises(Unverified, match="in the machine, imds could not run: boom"):
        Vm(_Answering({"error": "boom"}), b"k" * 32).imds("/metadata/instance")
    assert Vm(_Answering({"status": 200}), b"k" * 32).imds("/metadata/instance") == {
        "status": 200}
