"""Declared reads: what a suite asks of a lab's control plane, read by the engine in as few
rounds as their dependencies allow, with 404s, failures and a group spelled otherwise."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pytest_milab import Read, SuiteError
from pytest_milab.azure.reads import LabReads, check_reads

SUB = "00000000-0000-0000-0000-000000000001"


class FakeArm:
    """ARM as a dict of path -> (status, body); records what was asked, in order."""

    def __init__(self, answers: dict[str, tuple[int, object]]) -> None:
        self.answers = {k.lower(): v for k, v in answers.items()}
        self.asked: list[str] = []
        self.lock = threading.Lock()

    def get(self, url, api_version=None):
        with self.lock:
            self.asked.append(url)
        return self.answers.get(url.lower(), (404, {"error": {"code": "NotFound"}}))


def group(name="lab"):
    gid = f"/subscriptions/{SUB}/resourceGroups/{name}"
    return gid, {"id": gid, "name": name}


def run(arm, reads, name="lab", spec=None, executor=True):
    pool = ThreadPoolExecutor(4) if executor else None
    try:
        lab = LabReads(arm, SUB, name, check_reads(reads), spec, pool)
        lab.run()
        return lab
    finally:
        if pool is not None:
            pool.shutdown()


def test_reads_follow_their_dependencies():
    gid, body = group()
    arm = FakeArm({gid: (200, body), f"{gid}/vm": (200, {"id": "vm", "nic": f"{gid}/nic"}),
                   f"{gid}/nic": (200, {"id": "nic"})})
    lab = run(arm, [Read("vm", "{group_id}/vm", "v"),
                    Read("nic", lambda r: r.got("vm")["nic"], "v", after=("vm",)),
                    Read("disk", "{group_id}/disk", "v")])
    assert lab.control == {"group": body, "vm": {"id": "vm", "nic": f"{gid}/nic"},
                           "nic": {"id": "nic"}, "disk": None}
    assert lab.errors == {}
    assert arm.asked.index(f"{gid}/nic") > arm.asked.index(f"{gid}/vm")


@pytest.mark.parametrize("executor", [True, False])
def test_a_missing_group_drops_the_other_reads(executor):
    arm = FakeArm({})
    lab = run(arm, [Read("vm", "{group_id}/vm", "v")], executor=executor)
    assert lab.control == {"group": None} and lab.errors == {}


def test_a_failed_read_fails_what_comes_after_it():
    gid, body = group()
    arm = FakeArm({gid: (200, body), f"{gid}/vm": (503, {"error": {"code": "ServerBusy"}})})
    lab = run(arm, [Read("vm", "{group_id}/vm", "v"),
                    Read("nic", lambda r: "/never", "v", after=("vm",))])
    assert lab.errors == {"vm": "Azure answered 503 ServerBusy",
                          "nic": "needs vm, which could not be read"}
    assert "/never" not in arm.asked


def test_a_refused_read_names_the_role_the_grader_lacks():
    gid, body = group()
    arm = FakeArm({gid: (200, body), f"{gid}/vm": (403, {"error": {"code": "AuthorizationFailed"}})})
    lab = run(arm, [Read("vm", "{group_id}/vm", "v")])
    assert "give it Reader" in lab.errors["vm"]


def test_paths_are_made_again_with_the_group_id_as_arm_spells_it():
    gid, body = group("Lab")
    arm = FakeArm({gid: (200, body), f"{gid}/x": (200, {"id": "x"})})
    lab = run(arm, [Read("x", lambda r: f"{r.group_id}/x" if r.group_id.endswith("Lab")
                         else "/wrong-case", "v")], name="lab")
    assert lab.control["x"] == {"id": "x"}
    assert lab.group_id == gid


def test_lists_page_and_many_paths_are_read_once():
    gid, body = group()
    arm = FakeArm({gid: (200, body),
                   f"{gid}/items": (200, {"value": [1, 2], "nextLink": f"{gid}/page2"}),
                   f"{gid}/page2": (200, {"value": [3]}),
                   f"{gid}/a": (200, {"id": "a"})})
    lab = run(arm, [Read("items", "{group_id}/items", "v", list=True),
                    Read("nsgs", lambda r: [f"{r.group_id}/a", f"{r.group_id}/A",
                                            f"{r.group_id}/gone"], "v", many=True)])
    assert lab.control["items"] == [1, 2, 3]
    assert lab.control["nsgs"] == [{"id": "a"}]
    assert sum(p.lower() == f"{gid}/a".lower() for p in arm.asked) == 1


@pytest.mark.parametrize("reads, message", [
    ([Read("a", "/a", "v"), Read("a", "/b", "v")], "two reads are named 'a'"),
    ([Read("group", "/a", "v")], "the engine reads the group itself"),
    ([Read("a", "/a", "v", after=("b",))], "comes after 'b', which no read is named"),
    ([Read("a", "/a", "v", after=("b",)), Read("b", "/b", "v", after=("a",))], "cycle"),
])
def test_suite_mistakes_in_reads_are_named(reads, message):
    with pytest.raises(SuiteError, match=message):
        check_reads(reads)


def test_a_path_field_that_does_not_exist_is_the_suites_mistake():
    with pytest.raises(SuiteError, match=r"names \{vault\}"):
        Read("v", "{group_id}/{vault}", "v")


def _first_nic(r):
    return r.got("vm")["properties"]["networkProfile"]["networkInterfaces"][0].get("id")


@pytest.mark.parametrize("nics", [[None], ["x"], 5])
@pytest.mark.parametrize("executor", [True, False])
def test_a_malformed_answer_fails_only_the_reads_made_from_it(nics, executor):
    """ARM's JSON is data: a VM whose networkInterfaces are [null], ["x"] or 5 fails the read
    whose path is made from it (and those after that one), not the lab's other reads."""
    gid, body = group()
    vm = {"id": "vm", "properties": {"networkProfile": {"networkInterfaces": nics}}}
    arm = FakeArm({gid: (200, body), f"{gid}/vm": (200, vm), f"{gid}/disk": (200, {"id": "d"})})
    lab = run(arm, [Read("vm", "{group_id}/vm", "v"),
                    Read("nic", _first_nic, "v", after=("vm",)),
                    Read("nsg", lambda r: "/nsg", "v", after=("nic",)),
                    Read("disk", "{group_id}/disk", "v")], executor=executor)
    assert lab.control["vm"] == vm and lab.control["disk"] == {"id": "d"}
    assert lab.errors["nic"].startswith("its path could not be made from the lab's other reads")
    assert lab.errors["nsg"] == "needs nic, which could not be read"
    assert set(lab.errors) == {"nic", "nsg"}


@pytest.mark.parametrize("value", [5, "x", {"a": 1}])
def test_a_list_whose_value_is_not_a_list_fails_that_read_alone(value):
    gid, body = group()
    arm = FakeArm({gid: (200, body), f"{gid}/ra": (200, {"value": value}),
                   f"{gid}/vm": (200, {"id": "vm"})})
    lab = run(arm, [Read("ra", "{group_id}/ra", "v", list=True),
                    Read("vm", "{group_id}/vm", "v")])
    assert lab.errors == {"ra": f"Azure's answer is malformed: its value is "
                                f"{type(value).__name__}, not a list"}
    assert lab.control["vm"] == {"id": "vm"}


def test_many_paths_that_are_not_a_list_fail_that_read_alone():
    gid, body = group()
    arm = FakeArm({gid: (200, body), f"{gid}/vm": (200, {"id": "vm"})})
    lab = run(arm, [Read("nsgs", lambda r: 5, "v", many=True),
                    Read("vm", "{group_id}/vm", "v")])
    assert lab.errors["nsgs"].startswith("Azure's answer could not be read (TypeError")
    assert lab.control["vm"] == {"id": "vm"}


@pytest.mark.parametrize("vm_props, role_assignments", [
    ({"networkProfile": {"networkInterfaces": [None]}}, {"value": [{"id": "ra"}]}),
    ({"networkProfile": {"networkInterfaces": "x"}}, {"value": [{"id": "ra"}]}),
    ({"networkProfile": {"networkInterfaces": [{"id": "/nic"}]}}, {"value": 5}),
])
def test_the_managed_identity_suites_reads_fail_one_by_one(vm_props, role_assignments,
                                                          monkeypatch):
    """The audit's cases on the suite's own reads: a VM with networkInterfaces [null] or "x"
    fails the network reads only; role assignments with `value: 5` fail that read only."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))  # example_suites
    from example_suites.managed_identity.reads import READS
    from example_suites.managed_identity.spec import ManagedIdentitySpec

    spec = ManagedIdentitySpec()
    gid, body = group()
    vault = f"{gid}/providers/Microsoft.KeyVault/vaults/{spec.vault_name(gid)}"
    arm = FakeArm({gid: (200, body),
                   f"{gid}/resources": (200, {"value": []}),
                   vault: (200, {"id": "vault"}),
                   f"{gid}/providers/Microsoft.Compute/virtualMachines/{spec.vm_name}":
                       (200, {"id": "vm", "properties": vm_props}),
                   f"{gid}/providers/Microsoft.Authorization/roleAssignments":
                       (200, role_assignments),
                   "/nic": (200, {"id": "/nic", "properties": {}})})
    lab = run(arm, READS, spec=spec, executor=False)
    assert lab.control["vault"] == {"id": "vault"} and lab.control["vm"]["id"] == "vm"
    if role_assignments["value"] == 5:
        assert set(lab.errors) == {"role_assignments"}
        assert lab.control["nic"] == {"id": "/nic", "properties": {}}
    else:
        assert lab.control["role_assignments"] == [{"id": "ra"}]
        assert set(lab.errors) == {"nic", "public_ip"}
        lab.run_on_refusal()  # what explains a refused SSH needs the NIC too
        assert set(lab.errors) == {"nic", "public_ip", "vnet", "nic_nsg", "subnet_nsg"}


def test_on_refusal_reads_wait_until_asked_for():
    """What only explains a refused SSH is not read with the lab: `run_on_refusal` reads it,
    after the reads it needs, in the order its own `after` says."""
    gid, body = group()
    arm = FakeArm({gid: (200, body), f"{gid}/vm": (200, {"id": "vm", "nsg": "/nsg"}),
                   "/nsg": (200, {"id": "/nsg", "rules": 1}),
                   "/nsg/rules": (200, {"id": "/nsg/rules"})})
    reads = [Read("vm", "{group_id}/vm", "v"),
             Read("nsg", lambda r: r.got("vm")["nsg"], "v", after=("vm",), on_refusal=True),
             Read("rules", lambda r: r.got("nsg")["id"] + "/rules", "v", after=("nsg",),
                  on_refusal=True)]
    pool = ThreadPoolExecutor(4)
    try:
        lab = LabReads(arm, SUB, "lab", check_reads(reads), None, pool)
        lab.run()
        assert sorted(lab.control) == ["group", "vm"] and not lab.errors
        assert lab.pending() == frozenset() and set(lab.on_refusal) == {"nsg", "rules"}
        assert [u for u in arm.asked if u.startswith("/nsg")] == []
        lab.run_on_refusal()
    finally:
        pool.shutdown()
    assert lab.control["nsg"] == {"id": "/nsg", "rules": 1}
    assert lab.control["rules"] == {"id": "/nsg/rules"}
    assert arm.asked[-2:] == ["/nsg", "/nsg/rules"] and not lab.on_refusal
    lab.run_on_refusal()  # once only
    assert arm.asked.count("/nsg") == 1


def test_on_refusal_reads_of_a_lab_without_a_group_are_not_made():
    arm = FakeArm({})
    lab = run(arm, [Read("nsg", "{group_id}/nsg", "v", on_refusal=True)], executor=False)
    lab.run_on_refusal()
    assert arm.asked == [f"/subscriptions/{SUB}/resourceGroups/lab"]
    assert "nsg" not in lab.control


def test_a_read_after_an_on_refusal_read_must_be_one_too():
    with pytest.raises(SuiteError, match="make 'rules' on_refusal=True too"):
        check_reads([Read("nsg", "{group_id}/nsg", "v", on_refusal=True),
                     Read("rules", "{group_id}/rules", "v", after=("nsg",))])
