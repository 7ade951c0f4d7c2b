"""The public `vm` fixture: commands and calls inside a lab's VM, tokens kept in the VM."""

from __future__ import annotations

import textwrap

from e2ekit import grade, outcomes, suite_spec, suite_stages

from pytest_milab.provision import build_in_local_azure

SPEC = suite_spec()

SUITE = '''
import pytest

@pytest.mark.milab_step("run")
def test_run(vm):
    result = vm.run("echo out; echo err >&2; exit 3")
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\\n", "err\\n")

@pytest.mark.milab_step("imds")
def test_imds(vm, lab):
    got = vm.imds("/metadata/instance/compute?api-version=2020-09-01")
    assert got["status"] == 200 and got["json"]["resourceId"].lower() == lab.vm["id"].lower()

@pytest.mark.milab_step("token")
def test_token(vm, lab):
    got = vm.token("https://vault.azure.net")
    assert got["status"] == 200 and set(got) >= {"claims"} and "access_token" not in got
    assert got["claims"]["oid"] == lab.identity_principal_id

@pytest.mark.milab_step("http")
def test_http(vm, lab):
    url = f"https://{lab.vault_name}.vault.azure.net/secrets/portal-phrase?api-version=7.1"
    got = vm.http("GET", url, resource="https://vault.azure.net")
    assert got["status"] == 200
    value = got["json"]["value"]
    assert set(value) == {"hmac", "length"} and value["length"] == len("TheCakeIsALie")
    denied = vm.http("GET", url, resource="https://management.azure.com/")
    assert denied["status"] == 401 and "AKV10022" in denied["json"]["error"]["message"]
'''


def test_vm_fixture_runs_commands_and_calls_as_the_identity(local_azure, tmp_path):
    key, _ = build_in_local_azure(local_azure, ["vm-fixture-lab"], suite_stages(), SPEC)
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_vm.py").write_text(textwrap.dedent(SUITE))
    # The managed-identity suite's hooks and `lab` fixture: this suite grades that lab.
    (suite / "conftest.py").write_text("from managed_identity.conftest import *  # noqa\n")
    run = grade(local_azure, key, tmp_path / "run", "vm-fixture-lab", suite=suite)
    got = outcomes(run.report, "vm-fixture-lab")
    assert {k: o for k, (o, _) in got.items()} == {
        "run": "passed", "imds": "passed", "token": "passed", "http": "passed"}, got
    assert "TheCakeIsALie" not in run.output and "eyJ" not in run.output
