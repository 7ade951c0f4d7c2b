"""A grading run whose SSH follows the grader's ssh config (--milab-ssh-config): the lab's VM is
reached through another VM as the jump host (ProxyJump), and its host key, first seen, is in
the evidence."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import paramiko
from e2ekit import grade, outcomes, suite_spec, suite_stages

from pytest_milab.provision import build_in_local_azure
from pytest_milab.vm.keys import generate_key_pair

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "emulator"))
from vmkit import make_vm  # noqa: E402

LAB = "jump-host-lab"
SUITE = '''
import pytest

@pytest.mark.milab_step("run")
def test_run(vm):
    result = vm.run("hostname; echo $USER")
    assert result.ok and result.stdout.split() == [{computer!r}, {user!r}]

@pytest.mark.milab_step("host-key")
def test_host_key(evidence):
    assert evidence.ssh.host_key == {{"type": "ssh-ed25519", "sha256": {sha256!r},
                                        "known": False}}
'''


def lab_vm(azure, group: str) -> dict:
    prefix = f"/subscriptions/{azure.subscription_id}/resourcegroups/{group}/providers/" \
             "microsoft.compute/virtualmachines/"
    with azure.cloud.lock:
        return next(vm for key, vm in azure.cloud.resources.items()
                    if key.startswith(prefix.lower()))


def test_a_lab_graded_through_a_jump_host(local_azure, tmp_path):
    key, _ = build_in_local_azure(local_azure, [LAB], suite_stages(), suite_spec())
    vm = lab_vm(local_azure, LAB)
    live = local_azure.vms.live(vm["id"])
    address, port = live.address, local_azure.vms.ssh_port
    jump_key = tmp_path / "jump_ed25519"
    public = generate_key_pair(jump_key)
    jump = make_vm(local_azure, name="bastion", public_key=public,
                   pkey=paramiko.Ed25519Key.from_private_key_file(str(jump_key)))
    try:
        (tmp_path / "known_hosts").write_text("")
        config = tmp_path / "ssh_config"
        config.write_text(textwrap.dedent(f"""\
            Host {address}
                ProxyJump bastion
            Host bastion
                HostName {jump.address}
                User {jump.user}
                Port {port}
                IdentityFile {jump_key}
            Host *
                UserKnownHostsFile {tmp_path / "known_hosts"}
            """))
        profile = vm["properties"]["osProfile"]
        suite = tmp_path / "suite"
        suite.mkdir()
        (suite / "conftest.py").write_text("from managed_identity.conftest import *  # noqa\n")
        (suite / "test_jump.py").write_text(SUITE.format(
            computer=profile["computerName"], user=profile["adminUsername"],
            sha256=live.host_key.get_fingerprint("sha256")))
        before = len(local_azure.vms.forwarded)
        run = grade(local_azure, key, tmp_path / "run", LAB, suite=suite,
                    extra=("--milab-ssh-config", str(config)))
        got = outcomes(run.report, LAB)
        assert {k: o for k, (o, _) in got.items()} == {"run": "passed", "host-key": "passed"}, \
            (got, run.output[-3000:])
        # The lab VM's one connection came through the bastion; nothing was added to
        # known_hosts.
        assert local_azure.vms.forwarded[before:] == [(jump.address, address, port)]
        assert (tmp_path / "known_hosts").read_text() == ""
    finally:
        jump.delete()
