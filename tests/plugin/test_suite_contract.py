"""The hook contract between the engine and a suite, through pytester: a suite for another lab
written with the hooks alone, and a suite author's mistakes as one-line collection errors."""

from __future__ import annotations

import json

import pytest

TINY_SUITE = '''
import pytest
from dataclasses import dataclass
from pytest_milab import Read


@dataclass(frozen=True)
class Spec:
    account: str = "lab-ip"


def pytest_milab_spec(config):
    return Spec()


def pytest_milab_reads(spec):
    return [Read("account", "{group_id}/providers/Microsoft.Network/publicIPAddresses/"
                            "{spec.account}", "2023-09-01")]
'''

TINY_CHECKS = '''
import pytest

@pytest.mark.milab_step("resource-group", title="The group exists")
def test_group(lab):
    assert lab.group is not None, "create the group"

@pytest.mark.milab_step("storage-account", needs=("resource-group",))
def test_account(lab, milab_spec):
    assert lab.read("account") is not None, f"no public IP {milab_spec.account!r}"
'''


def test_a_suite_for_another_lab_needs_only_the_hooks(pytester, azure_env, operator_credential,
                                                      unique_group):
    from pytest_milab.azure.clients import SubscriptionClients

    SubscriptionClients(operator_credential, azure_env.subscription_id).resource \
        .resource_groups.create_or_update(unique_group, {"location": "uksouth"})
    pytester.makeconftest(TINY_SUITE)
    pytester.makepyfile(test_storage=TINY_CHECKS)
    result = pytester.runpytest("--milab-group", unique_group, "--milab-report", "g.json")
    report = json.loads((pytester.path / "g.json").read_text())
    steps = {s["id"]: (s["outcome"], s["reason"]) for s in report["groups"][0]["steps"]}
    assert steps == {"resource-group": ("passed", ""),
                     "storage-account": ("failed", "no public IP 'lab-ip'")}
    assert result.ret == 1


@pytest.mark.parametrize("checks, message", [
    ('''
import pytest
@pytest.mark.milab_step("vm")
def test_vm(lab): pass
@pytest.mark.milab_step("vm-identity", needs=("vm",))
def test_identity(lab): pass
@pytest.mark.milab_step("vm-tags", needs=("vm-identiy",))
def test_tags(lab): pass
''', "step 'vm-tags' needs 'vm-identiy', which no test checks (did you mean 'vm-identity'?)"),
    ('''
import pytest
@pytest.mark.milab_step("a", needs=("b",))
def test_a(lab): pass
@pytest.mark.milab_step("b", needs=("a",))
def test_b(lab): pass
''', "steps need each other in a cycle: a -> b -> a"),
    ('''
import pytest
@pytest.mark.milab_step("a", points=1)
def test_a(lab): pass
@pytest.mark.milab_step("a", points=2)
def test_a_again(lab): pass
''', "step 'a' has points 2 here but 1 at"),
    ('''
import pytest
@pytest.mark.milab_step("a")
def test_a(lab):
    assert lab.read("acount")
''', "uses the read 'acount', which the suite never declared in pytest_milab_reads "
     "(declared: account, group)"),
    ('''
import pytest
@pytest.mark.milab_step("a")
def test_a(lab):
    assert lab.probe("token")
''', "uses the probe part 'token', which the suite never declared in pytest_milab_probe"),
])
def test_suite_mistakes_are_collection_errors(pytester, azure_env, checks, message):
    pytester.makeconftest(TINY_SUITE)
    pytester.makepyfile(test_suite=checks)
    result = pytester.runpytest("--milab-group", "any-group")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.startswith("ERROR: milab:")]
    assert len(errors) == 1 and message in errors[0], result.stderr.str()


@pytest.mark.parametrize("conftest, message", [
    ("def pytest_milab_reads(spec):\n    return 'vm'\n",
     "pytest_milab_reads returned str, not a list of pytest_milab.Read"),
    ("from pytest_milab import Read\n"
     "def pytest_milab_reads(spec):\n    return [Read('vm', '{group_id}/{vm_name}', 'v')]\n",
     "Read 'vm': its path names {vm_name}"),
    ("def pytest_milab_probe(spec):\n    return ['token']\n",
     "pytest_milab_probe returned list, not a pytest_milab.Probe"),
    ("from pytest_milab import Probe, probe\n"
     "def pytest_milab_probe(spec):\n"
     "    return Probe([probe.which('az', 'az'), probe.which('az', 'az')])\n",
     "two probe parts are named 'az'"),
])
def test_hooks_returning_the_wrong_thing_are_usage_errors(pytester, conftest, message):
    pytester.makeconftest(conftest)
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


def test_overriding_the_spec_fixture_is_refused_with_the_fix(pytester, azure_env):
    pytester.makeconftest(TINY_SUITE + '''
@pytest.fixture(scope="session")
def milab_spec():
    return Spec(account="other")
''')
    pytester.makepyfile(test_storage=TINY_CHECKS)
    result = pytester.runpytest("--milab-group", "any-group", "--milab-report", "g.json")
    report = json.loads((pytester.path / "g.json").read_text())
    reasons = {s["reason"] for s in report["groups"][0]["steps"]}
    assert any("give the lab's spec with the pytest_milab_spec hook" in r for r in reasons)
    assert result.ret == 10  # the checks could not decide: never the student's fault
