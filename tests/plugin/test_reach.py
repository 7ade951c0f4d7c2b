"""Whether a lab's NSGs explain a refused SSH, read from ARM's JSON as it comes: by priority,
the first inbound rule covering TCP 22 decides; JSON shaped otherwise explains nothing and
never raises."""

from __future__ import annotations

import types

import pytest

from pytest_milab.evidence import Gatherer, LabEvidence, SshOutcome
from pytest_milab.vm.reach import Machine, nsg_blocking_ssh, power_state


def rule(name, access, priority, port="22", source="*", direction="Inbound"):
    return {"name": name, "properties": {"access": access, "priority": priority,
                                         "direction": direction, "protocol": "Tcp",
                                         "destinationPortRange": port,
                                         "sourceAddressPrefix": source}}


def nsg(*rules, name="lab-nsg"):
    return {"name": name, "properties": {"securityRules": list(rules)}}


def test_the_rule_of_lowest_priority_number_decides():
    deny, allow = rule("deny-ssh", "Deny", 100), rule("allow-ssh", "Allow", 200)
    assert "its rule 'deny-ssh' denies inbound TCP 22" in nsg_blocking_ssh([nsg(allow, deny)])
    assert nsg_blocking_ssh([nsg(rule("deny-ssh", "Deny", 300), allow)]) is None


def test_a_non_numeric_priority_counts_as_the_last_rule():
    """Priority "high" (not a number) is read as 65000: the numbered allow rule wins."""
    assert nsg_blocking_ssh([nsg(rule("deny", "Deny", "high"), rule("allow", "Allow", 4000))]) \
        is None
    assert "'deny'" in nsg_blocking_ssh([nsg(rule("allow", "Allow", None),
                                             rule("deny", "Deny", 4000))])


@pytest.mark.parametrize("nsgs", [
    [nsg(None)], [nsg("x")], [nsg(5)], [{"name": "n", "properties": "x"}],
    [{"name": "n", "properties": {"securityRules": 5}}], [None], ["x"], 5, None,
    [nsg({"name": "r", "properties": None})], [nsg({"name": "r", "properties": "x"})],
    [nsg({"properties": {"direction": "Inbound", "access": "Deny", "protocol": "Tcp",
                         "destinationPortRanges": 22, "sourceAddressPrefixes": "*"}})],
    [nsg({"properties": {"direction": "Inbound", "access": "Deny", "protocol": "Tcp",
                         "destinationPortRanges": [None, {"a": 1}, "22"],
                         "sourceAddressPrefixes": [None, 5, "*"]}})],
])
def test_malformed_nsgs_never_raise(nsgs):
    verdict = nsg_blocking_ssh(nsgs)
    assert verdict is None or verdict.startswith("NSG ")


def test_an_nsg_with_a_rule_that_cannot_be_read_explains_nothing():
    """The unreadable rule might be the one that lets SSH in: the refusal is not blamed on
    the student (the in-machine steps end unverified, never failed)."""
    assert nsg_blocking_ssh([nsg(None, rule("deny-ssh", "Deny", 100))]) is None
    assert nsg_blocking_ssh([nsg({"name": "r", "properties": "x"},
                                 rule("deny-ssh", "Deny", 100))]) is None
    assert "'deny-ssh'" in nsg_blocking_ssh([nsg({"name": "r", "properties": "x"}),
                                             nsg(rule("deny-ssh", "Deny", 100), name="b")])


@pytest.mark.parametrize("view", [None, 5, {"statuses": 5}, {"statuses": [None, "x", 5]},
                                  {"statuses": [{"code": None}]}])
def test_a_malformed_instance_view_has_no_power_state(view):
    assert power_state(view) is None


def test_a_refusal_with_malformed_nsgs_is_explained_or_not_but_never_raises():
    """The audit's case: `securityRules: [null]` raised inside the SSH error handler and the
    `evidence` fixture errored for the lab."""
    ev = LabEvidence(label="lab", group="g", ssh=SshOutcome(error="refused"))
    machine = Machine(host="h", nsgs=[{"name": "n", "properties": {"securityRules": [None]}},
                                      {"name": "m", "properties": "x"}])
    Gatherer._explain_refusal(None, ev, machine, types.SimpleNamespace(refused_seconds=10),
                              None)
    assert ev.ssh.unverified and not ev.ssh.refused
