"""A lab's machine is logged in to as soon as the suite can name it from the reads in so far,
while the reads that only explain a refusal are still in flight; what that found counts only
when the lab, read in full, names the very same machine. And a run that grades every lab it
was given starts gathering while pytest still collects."""

from __future__ import annotations

import argparse
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from pytest_milab import Machine, Read, SuiteError
from pytest_milab import evidence as evidence_module
from pytest_milab.azure.reads import LabReads, check_reads
from pytest_milab.errors import ReadPending
from pytest_milab.evidence import Connections, Gatherer, LabEvidence, _SoFar
from pytest_milab.lab import Lab
from pytest_milab.run import grades_every_lab
from pytest_milab.settings import LabTarget, Settings
from pytest_milab.store import EvidenceStore
from pytest_milab.suite import Suite

SUB = "00000000-0000-0000-0000-000000000001"
GID = f"/subscriptions/{SUB}/resourceGroups/lab"


class SlowArm:
    """ARM whose answer for `slow` paths waits for `release` (or 3 s); notes what happened."""

    def __init__(self, answers: dict, slow: set[str], events: list) -> None:
        self.answers, self.slow, self.events = answers, slow, events
        self.release = threading.Event()

    def get(self, url, api_version=None):
        if url in self.slow:
            self.release.wait(3)
            self.events.append(("answered", url))
        return self.answers.get(url, (404, {"error": {"code": "NotFound"}}))


class FakeConn:
    made: list[FakeConn] = []

    def __init__(self, target, connect_timeout=None, refused_for=None) -> None:
        self.target, self.connects, self.closed = target, 0, False
        self.events: list = FakeConn.events
        FakeConn.made.append(self)

    def connect(self) -> None:
        self.connects += 1
        self.events.append(("connect", self.target.host))
        if self.target.host == "refusing":
            from pytest_milab.errors import SshError

            raise SshError("connection refused", refused=True)

    @property
    def host_key(self):
        return {"type": "ssh-ed25519", "sha256": "x", "known": False}

    @property
    def is_connected(self) -> bool:
        return self.connects > 0 and not self.closed

    def close(self) -> None:
        self.closed = True


class Clients:
    pool_size = 8

    def __init__(self, arm) -> None:
        self.arm = arm

    def warm(self) -> None:
        pass

    def for_subscription(self, subscription):
        return self


def machine(lab) -> Machine:
    """The pattern of the example suite: the address from the group's list early, from the
    NIC once it is in."""
    vm = lab.read("vm")
    if vm is None:
        return Machine.missing("no VM")
    if lab.arrived("nic"):
        host = (lab.read("nic") or {}).get("address")
    else:
        listed = lab.read("ips") or []
        host = listed[0]["address"] if len(listed) == 1 else lab.read("nic")
    return Machine(host=host, user="azureuser")


@pytest.fixture
def events(monkeypatch):
    found: list = []
    FakeConn.made, FakeConn.events = [], found
    monkeypatch.setattr(evidence_module, "VmConnection", FakeConn)
    return found


def gather(events, nic_address: str, listed: str = "10.0.0.1") -> tuple[LabEvidence, SlowArm]:
    answers = {GID: (200, {"id": GID, "name": "lab"}),
               f"{GID}/vm": (200, {"id": "vm"}),
               f"{GID}/ips": (200, {"value": [{"address": listed}]}),
               f"{GID}/nic": (200, {"id": "nic", "address": nic_address})}
    arm = SlowArm(answers, {f"{GID}/nic"}, events)
    reads = check_reads([Read("vm", "{group_id}/vm", "v"),
                         Read("ips", "{group_id}/ips", "v", list=True),
                         Read("nic", "{group_id}/nic", "v", after=("vm",))])
    suite = Suite(reads=reads, machine=machine)
    gatherer = Gatherer(Settings(), suite, Clients(arm), Connections(), lambda: SUB)
    # The NIC's answer waits until the machine was logged in to (or 3 s).
    original = FakeConn.connect

    def connect(conn):
        original(conn)
        arm.release.set()

    FakeConn.connect = connect
    try:
        return gatherer.gather(LabTarget(group="lab", subscription=SUB, label="lab")), arm
    finally:
        FakeConn.connect = original


def test_the_machine_is_logged_in_to_before_the_last_reads_are_in(events):
    ev, _ = gather(events, nic_address="10.0.0.1")
    assert events.index(("connect", "10.0.0.1")) < events.index(("answered", f"{GID}/nic"))
    assert len(FakeConn.made) == 1 and FakeConn.made[0].connects == 1
    assert not FakeConn.made[0].closed  # kept for the lab's checks
    assert ev.ssh.ok and ev.ssh.target == "azureuser@10.0.0.1"
    assert ev.machine.host == "10.0.0.1" and ev.control["nic"]["address"] == "10.0.0.1"


def test_a_machine_the_full_reads_do_not_name_is_dropped(events):
    ev, _ = gather(events, nic_address="10.0.0.2")
    early, final = FakeConn.made
    assert early.target.host == "10.0.0.1" and early.closed
    assert final.target.host == "10.0.0.2" and final.connects == 1 and not final.closed
    assert ev.ssh.ok and ev.ssh.target == "azureuser@10.0.0.2"


def test_a_refusal_found_early_is_explained_from_the_full_reads(events, monkeypatch):
    explained = []
    monkeypatch.setattr(Gatherer, "_explain_refusal",
                        lambda self, ev, machine, conn, clients, lab_reads=None:
                        explained.append((machine.host, sorted(ev.control))))
    ev, _ = gather(events, nic_address="refusing", listed="refusing")
    assert len(FakeConn.made) == 1 and FakeConn.made[0].connects == 1
    assert not ev.ssh.ok and ev.ssh.error == "connection refused"
    assert explained == [("refusing", ["group", "ips", "nic", "vm"])]


@pytest.mark.parametrize("needs_nic", [False, True])
def test_the_probe_runs_early_unless_its_program_needs_a_read_in_flight(events, monkeypatch,
                                                                        needs_nic):
    from pytest_milab import probe as probe_kit
    from pytest_milab.azure import signed
    from pytest_milab.vm import probe as vm_probe

    def run_probe(conn, parts, key, timeout, egress=None):
        events.append(("probe", parts[0]["url"]))
        return {"p": {"status": 200}}

    monkeypatch.setattr(vm_probe, "run_probe", run_probe)
    monkeypatch.setattr(signed, "verify_parts", lambda results, parts, verifier: None)
    answers = {GID: (200, {"id": GID, "name": "lab"}), f"{GID}/vm": (200, {"id": "vm"}),
               f"{GID}/ips": (200, {"value": [{"address": "10.0.0.1"}]}),
               f"{GID}/nic": (200, {"id": "nic", "address": "10.0.0.1"})}
    arm = SlowArm(answers, {f"{GID}/nic"}, events)
    reads = check_reads([Read("vm", "{group_id}/vm", "v"),
                         Read("ips", "{group_id}/ips", "v", list=True),
                         Read("nic", "{group_id}/nic", "v", after=("vm",))])
    fields = ((lambda lab: {"where": lab.read("nic")["id"]}) if needs_nic
              else (lambda lab: {"where": lab.group_id}))
    probe = probe_kit.Probe([probe_kit.http("p", "https://x/{where}")], fields=fields)
    gatherer = Gatherer(Settings(), Suite(reads=reads, machine=machine, probe=probe),
                        Clients(arm), Connections(), lambda: SUB)
    original = vm_probe.run_probe

    def release_after_probe(*args, **kwargs):
        try:
            return original(*args, **kwargs)
        finally:
            arm.release.set()

    monkeypatch.setattr(vm_probe, "run_probe", release_after_probe)
    if needs_nic:  # the probe cannot run before the NIC is in: the NIC answers after the login
        login = FakeConn.connect

        def connect(conn):
            login(conn)
            arm.release.set()

        monkeypatch.setattr(FakeConn, "connect", connect)
    ev = gatherer.gather(LabTarget(group="lab", subscription=SUB, label="lab"))
    probes = [e for e in events if e[0] == "probe"]
    assert probes == [("probe", f"https://x/{'nic' if needs_nic else GID}")]
    answered = events.index(("answered", f"{GID}/nic"))
    assert len(FakeConn.made) == 1 and events.index(("connect", "10.0.0.1")) < answered
    assert ev.probe == {"p": {"status": 200}} and ev.ssh.ok
    assert (events.index(probes[0]) < answered) is not needs_nic


def test_a_run_that_ended_while_a_lab_was_read_reaches_no_machine(events):
    """(Early gathering begins before the collection: a suite mistake found there ends the
    run, and the process does not wait for machines to be probed for nothing.)"""
    answers = {GID: (200, {"id": GID, "name": "lab"}), f"{GID}/vm": (200, {"id": "vm"}),
               f"{GID}/ips": (200, {"value": [{"address": "10.0.0.1"}]}),
               f"{GID}/nic": (200, {"id": "nic", "address": "10.0.0.1"})}
    arm = SlowArm(answers, {f"{GID}/vm", f"{GID}/ips", f"{GID}/nic"}, events)
    reads = check_reads([Read("vm", "{group_id}/vm", "v"),
                         Read("ips", "{group_id}/ips", "v", list=True),
                         Read("nic", "{group_id}/nic", "v", after=("vm",))])
    gatherer = Gatherer(Settings(), Suite(reads=reads, machine=machine), Clients(arm),
                        Connections(), lambda: SUB)
    futures = gatherer.start_all([LabTarget(group="lab", subscription=SUB, label="lab")])
    time.sleep(0.2)  # its first reads are out
    gatherer.close()
    arm.release.set()
    ev = futures["lab"].result(timeout=5)
    assert ev.problem == "not gathered: the run ended first"
    assert FakeConn.made == [] and not [e for e in events if e[0] == "connect"]


def test_a_read_in_flight_is_pending_never_absent():
    ev = LabEvidence(label="lab", group="lab",
                     control=_SoFar({"group": {"id": GID}, "vm": None}, frozenset({"nic"})))
    lab = Lab(ev)
    assert lab.arrived("vm") and not lab.arrived("nic")
    assert lab.read("vm") is None
    with pytest.raises(ReadPending):
        lab.read("nic")
    assert Lab(LabEvidence(label="lab", group="lab")).arrived("nic")  # gathered: all in


def test_reads_report_their_progress_with_what_is_in_flight():
    seen = []
    arm = SlowArm({GID: (200, {"id": GID}), f"{GID}/a": (200, {"id": "a"}),
                   f"{GID}/b": (200, {"id": "b"})}, set(), [])
    reads = LabReads(arm, SUB, "lab", check_reads([
        Read("a", "{group_id}/a", "v"), Read("b", "{group_id}/b", "v", after=("a",))]), None,
        on_progress=lambda r: seen.append(sorted(r.pending())))
    reads.run()
    assert seen and all(pending for pending in seen)  # only while something is in flight
    assert ["b"] in seen and reads.pending() == frozenset()


def _attached(control, pending=frozenset()):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from example_suites.managed_identity.reads import attached_public_ip

    ev = LabEvidence(label="lab", group="lab", control=_SoFar(control, frozenset(pending)))
    return attached_public_ip(Lab(ev))


NIC = f"{GID}/providers/Microsoft.Network/networkInterfaces/vm-nic"
VM = {"id": "vm", "properties": {"networkProfile": {"networkInterfaces": [{"id": NIC}]}}}


def _pip(name, holder):
    return {"id": f"{GID}/providers/Microsoft.Network/publicIPAddresses/{name}", "name": name,
            "properties": {"ipAddress": name, "ipConfiguration": {"id": holder}}}


def test_the_example_suite_names_the_vms_address_from_the_groups_public_ips():
    mine, other = _pip("mine", f"{NIC.upper()}/ipConfigurations/ipconfig1"), _pip(
        "other", f"{GID}/providers/Microsoft.Network/networkInterfaces/x/ipConfigurations/c")
    # Before the NIC is in: the one public IP ARM shows held by the VM's NIC.
    assert _attached({"vm": VM, "public_ips": [other, mine]}, {"nic", "public_ip"}) == mine
    # Two held by the NIC: which one is its first configuration's waits for the NIC.
    second = _pip("second", f"{NIC}/ipConfigurations/ipconfig2")
    with pytest.raises(ReadPending):
        _attached({"vm": VM, "public_ips": [mine, second]}, {"nic", "public_ip"})
    # Once the NIC is in, its first configuration's public IP, whatever the list holds.
    nic = {"id": NIC, "properties": {"ipConfigurations": [{"properties": {
        "publicIPAddress": {"id": second["id"]}}}]}}
    assert _attached({"vm": VM, "public_ips": [mine, second], "nic": nic,
                      "public_ip": None}) == second
    elsewhere = _pip("elsewhere", f"{NIC}/ipConfigurations/ipconfig1")
    nic["properties"]["ipConfigurations"][0]["properties"]["publicIPAddress"]["id"] = "/x/pip"
    assert _attached({"vm": VM, "public_ips": [mine], "nic": nic,
                      "public_ip": elsewhere}) == elsewhere
    del nic["properties"]["ipConfigurations"][0]["properties"]["publicIPAddress"]
    assert _attached({"vm": VM, "public_ips": [mine], "nic": nic, "public_ip": None}) is None


def _config(*args, **options):
    defaults = dict(numprocesses=None, keyword="", markexpr="", deselect=None, lf=False,
                    stepwise=False, maxfail=0, collectonly=False, setuponly=False, setupplan=False)
    config = argparse.Namespace(option=argparse.Namespace(**{**defaults, **options}),
                                args=list(args) or ["suite"])
    return config


@pytest.mark.parametrize("options, args, every", [
    ({}, (), True),
    ({}, ("suite/test_a.py",), True),
    ({"keyword": "alice"}, (), False),
    ({"markexpr": "slow"}, (), False),
    ({"deselect": ["suite/test_a.py::test_x"]}, (), False),
    ({"lf": True}, (), False),
    ({"stepwise": True}, (), False),
    ({"maxfail": 1}, (), False),  # -x
    ({"numprocesses": 2}, (), False),
    ({"collectonly": True}, (), False),
    ({"setupplan": True}, (), False),
    ({}, ("suite/test_a.py::test_x",), False),
])
def test_gathering_before_the_collection_only_when_every_lab_is_graded(options, args, every):
    assert grades_every_lab(_config(*args, **options)) is every


class StartRecorder:
    def __init__(self) -> None:
        self.started: list[list[str]] = []
        self.done = threading.Event()

    def prepare(self) -> None:
        self.prepared = True

    def start_all(self, targets, ahead=None):
        self.started.append([t.label for t in targets])
        self.done.set()
        return {}

    def close(self) -> None:
        pass


def _store(recorder):
    targets = (LabTarget(group="a", label="a"), LabTarget(group="b", label="b", problem="bad"))
    return EvidenceStore(Settings(targets=targets), recorder, Connections())


def test_early_gathering_begins_once_signed_in():
    recorder, signed = StartRecorder(), threading.Event()
    store = _store(recorder)
    store.gather_early(lambda: signed.wait(5))
    time.sleep(0.1)
    assert recorder.started == []  # not before the sign-in is done
    signed.set()
    assert recorder.done.wait(5)
    assert recorder.started == [["a"]]  # the labs to grade (a bad roster line is not one)
    assert recorder.prepared  # (its connections opened while the sign-in was under way)


def test_no_early_gathering_after_a_failed_sign_in_or_once_closed():
    recorder = StartRecorder()

    def failed():
        raise RuntimeError("no credentials")

    _store(recorder).gather_early(failed)
    closed, go = _store(recorder), threading.Event()
    closed.gather_early(lambda: go.wait(5))
    closed.close()
    go.set()
    time.sleep(0.2)
    assert recorder.started == []


def _gather_with_nsg(events, host: str) -> tuple[LabEvidence, SlowArm, list]:
    """A lab whose NSG (no rule lets TCP 22 in) is an `on_refusal` read."""
    seen = []

    def machine_with_nsg(lab) -> Machine:
        found = machine(lab)
        nsg = lab.read("nsg")
        seen.append(nsg)
        return replace(found, nsgs=[nsg] if nsg else [])

    answers = {GID: (200, {"id": GID, "name": "lab"}), f"{GID}/vm": (200, {"id": "vm"}),
               f"{GID}/ips": (200, {"value": [{"address": host}]}),
               f"{GID}/nic": (200, {"id": "nic", "address": host}),
               f"{GID}/nsg": (200, {"id": f"{GID}/nsg", "name": "lab-nsg",
                                    "properties": {"securityRules": []}})}
    arm = SlowArm(answers, set(), events)
    asked = []
    get = arm.get
    arm.get = lambda url, api_version=None: asked.append(url) or get(url, api_version)
    reads = check_reads([Read("vm", "{group_id}/vm", "v"),
                         Read("ips", "{group_id}/ips", "v", list=True),
                         Read("nic", "{group_id}/nic", "v", after=("vm",)),
                         Read("nsg", "{group_id}/nsg", "v", after=("nic",), on_refusal=True)])
    gatherer = Gatherer(Settings(), Suite(reads=reads, machine=machine_with_nsg),
                        Clients(arm), Connections(), lambda: SUB)
    ev = gatherer.gather(LabTarget(group="lab", subscription=SUB, label="lab"))
    return ev, asked, seen


def test_a_machine_that_answers_costs_no_on_refusal_read(events):
    ev, asked, seen = _gather_with_nsg(events, "10.0.0.1")
    assert ev.ssh.ok and f"{GID}/nsg" not in asked and set(seen) == {None}
    assert ev.not_made == frozenset({"nsg"}) and "nsg" not in ev.control
    with pytest.raises(SuiteError, match=r"lab.read\('nsg'\): that read is made only when the "
                                         "machine refuses SSH"):
        Lab(ev).read("nsg")
    assert ev.to_json()["not_made"] == ["nsg"]


def test_a_refusal_is_explained_by_the_on_refusal_reads(events):
    ev, asked, seen = _gather_with_nsg(events, "refusing")
    assert asked.count(f"{GID}/nsg") == 1 and seen[-1]["name"] == "lab-nsg"
    assert ev.ssh.refused and "lab-nsg" in ev.ssh.error and ev.not_made == frozenset()
    assert Lab(ev).read("nsg")["name"] == "lab-nsg"
