"""The lab's operator commands, verbatim, through the real Azure CLI against the local Azure
(`tox -e azcli`): today's form works end to end, including SSH into the VM that `az vm create`
made and the lab's in-VM commands; the lab's original commands fail as they fail on Azure today;
template deployments with parameters, a copy loop and `reference`, a failing one, a Reader's.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import paramiko
import pytest
from test_vms import LAB_GET_SECRET, LAB_IMDS, LAB_LIST, LAB_TOKEN, LAB_VAULT, LAB_VAULT_TOKEN
from vmkit import wait_until

pytestmark = pytest.mark.skipif(
    not os.environ.get("MILAB_AZ_CLI"),
    reason="no Azure CLI configured: set MILAB_AZ_CLI to an `az` in its own venv (tox -e azcli)")

TIMINGS: dict[str, float] = {}


class Az:
    """The `az` of MILAB_AZ_CLI with its own config dir and HOME (its SSH keys go there)."""

    def __init__(self, azure, home: Path) -> None:
        self.home = home
        self.env = {**os.environ, **azure.env, "HOME": str(home),
                    "AZURE_CONFIG_DIR": str(home / ".azure"),
                    "AZURE_CORE_COLLECT_TELEMETRY": "false", "AZURE_CORE_NO_COLOR": "true",
                    "AZURE_CORE_SURVEY_MESSAGE": "false"}
        home.mkdir(parents=True, exist_ok=True)

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        t0 = time.perf_counter()
        proc = subprocess.run([os.environ["MILAB_AZ_CLI"], *args], env=self.env,
                              capture_output=True, text=True, timeout=180)
        TIMINGS[" ".join(args[:3])] = time.perf_counter() - t0
        if check:
            assert proc.returncode == 0, f"az {' '.join(args)}\n{proc.stderr[-3000:]}"
        return proc

    def json(self, *args: str):
        return json.loads(self(*args, "-o", "json").stdout)

    def tsv(self, *args: str) -> str:
        return self(*args, "-o", "tsv").stdout.strip()


@pytest.fixture(scope="module")
def user(local_azure):
    name = f"student-{uuid.uuid4().hex[:6]}@localazure.onmicrosoft.com"
    return local_azure.add_user(name, role="Owner")


@pytest.fixture(scope="module")
def az(local_azure, user, tmp_path_factory):
    cli = Az(local_azure, tmp_path_factory.mktemp("az-home"))
    cli("login", "-u", user.user_principal_name, "-p", user.password, "-o", "none")
    yield cli
    print("\naz wall times (s): " + json.dumps({k: round(v, 2) for k, v in TIMINGS.items()}))


@pytest.fixture(scope="module")
def group(az):
    name = f"rg-cli-{uuid.uuid4().hex[:8]}"
    az("group", "create", "-n", name, "-l", "uksouth", "-o", "none")
    yield name
    az("group", "delete", "-n", name, "--yes", "--no-wait", check=False)


def ssh_run(address: str, port: int, key_file: Path, command: str) -> tuple[int, str, str]:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(address, port=port, username="azureuser", key_filename=str(key_file),
                   look_for_keys=False, allow_agent=False, timeout=10)
    try:
        _, out, err = client.exec_command(command, timeout=60)
        code = out.channel.recv_exit_status()
        return code, out.read().decode(), err.read().decode()
    finally:
        client.close()


def test_the_lab_operator_commands_in_todays_form(local_azure, az, user, group):
    uniq = uuid.uuid4().hex[:8]
    vault = f"keyvault-{uniq}"
    me = az.json("ad", "signed-in-user", "show")
    assert me["userPrincipalName"] == user.user_principal_name and me["id"] == user.object_id
    assert "objectId" not in me
    az("keyvault", "create", "-n", vault, "-g", group, "--enable-rbac-authorization", "false",
       "-o", "none")
    policies = az.json("keyvault", "set-policy", "-n", vault, "--secret-permissions", "get",
                       "list", "set", "--object-id", me["id"])["properties"]["accessPolicies"]
    assert me["id"] in {p["objectId"] for p in policies}
    assert az.tsv("keyvault", "secret", "set", "--vault-name", vault, "-n", "portal-phrase",
                  "--value", "TheCakeIsALie", "--query", "value") == "TheCakeIsALie"
    t0 = time.perf_counter()
    vm = az.json("vm", "create", "-g", group, "-n", "ubuntu", "--image", "Ubuntu2204",
                 "--assign-identity", "--generate-ssh-keys", "--admin-username", "azureuser",
                 "--public-ip-sku", "Standard", "--tags", f"vault={vault}", "site=citadel")
    TIMINGS["az vm create (wall)"] = time.perf_counter() - t0
    assert vm["powerState"] == "VM running"
    principal = vm["identity"]["systemAssignedIdentity"]
    address = az.tsv("network", "public-ip", "show", "-g", group, "-n", "ubuntuPublicIP",
                     "--query", "ipAddress")
    assert address == vm["publicIpAddress"]
    extra = az.json("network", "public-ip", "create", "-g", group, "-n", "spare", "--sku",
                    "Standard")  # api-version 2025-09-01, long-running
    assert extra["publicIp"]["provisioningState"] == "Succeeded"
    group_id = az.tsv("group", "show", "-n", group, "--query", "id")
    ra = az.json("role", "assignment", "create", "--assignee", principal, "--role", "Reader",
                 "--scope", group_id)
    assert (ra["principalType"], ra["scope"]) == ("ServicePrincipal", group_id)
    az("keyvault", "set-policy", "-n", vault, "--secret-permissions", "get", "--object-id",
       principal, "-o", "none")
    sp = az.json("ad", "sp", "create-for-rbac", "--name", f"http://contributor-{uniq}",
                 "--role", "Contributor", "--scopes", group_id)
    assert sp["tenant"] == local_azure.tenant_id and sp["password"]

    # Into the VM `az vm create` made, with the key it generated, for the lab's in-VM commands.
    key = az.home / ".ssh" / "id_rsa"
    port = local_azure.vms.ssh_port
    assert wait_until(lambda: ssh_run(address, port, key, "true")[0] == 0, 10)
    assert ssh_run(address, port, key, "sudo apt update && sudo apt install jq -y")[0] == 0
    code, out, _ = ssh_run(address, port, key, f"{LAB_IMDS}; {LAB_TOKEN}; {LAB_LIST}; echo; "
                                               "cat out.json")
    status, _, body = out.partition("\n")
    assert status == "200", out
    assert {"ubuntu", vault} <= {item["name"] for item in json.loads(body)["value"]}
    prefix = f"{LAB_IMDS}; {LAB_VAULT}; {LAB_TOKEN}; {LAB_VAULT_TOKEN}; "
    code, out, _ = ssh_run(address, port, key, prefix + "phrase=$(" +
                           LAB_GET_SECRET.format("vaultToken") + " | jq -r .value); echo $phrase")
    assert out == "TheCakeIsALie\n"


def test_the_lab_original_commands_fail_as_on_azure_today(az, user, group):
    # `--query objectId`: Graph answers `id` today, so the query is empty.
    assert az("ad", "signed-in-user", "show", "--query", "objectId", "-o", "tsv").stdout == ""
    # UbuntuLTS is no alias any more: the CLI looks for a managed image of that name, which Azure
    # answers 404. CLI 2.91 shows that 404; older ones say "Invalid image".
    r = az("vm", "create", "-g", group, "-n", "old", "--image", "UbuntuLTS",
           "--generate-ssh-keys", check=False)
    assert r.returncode != 0
    assert "Invalid image \"UbuntuLTS\"" in r.stderr or \
        "The Resource 'Microsoft.Compute/images/UbuntuLTS' under resource group" in r.stderr
    # Without --scope the CLI refuses before calling Azure.
    r = az("role", "assignment", "create", "--assignee", user.object_id, "--role", "Reader",
           check=False)
    assert r.returncode != 0 and "--scope" in r.stderr
    # A vault made without the flag uses Azure RBAC: access policies are refused.
    vault = f"kv-rbac-{uuid.uuid4().hex[:6]}"
    az("keyvault", "create", "-n", vault, "-g", group, "-o", "none")
    r = az("keyvault", "set-policy", "-n", vault, "--secret-permissions", "get",
           "--object-id", user.object_id, check=False)
    assert r.returncode != 0 and "enable-rbac-authorization" in r.stderr


TEMPLATE = {
    "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
    "contentVersion": "1.0.0.0",
    "parameters": {"prefix": {"type": "string", "defaultValue": "pip"},
                   "count": {"type": "int", "allowedValues": [1, 2, 3]},
                   "note": {"type": "securestring", "defaultValue": "hush"}},
    "variables": {"location": "[resourceGroup().location]"},
    "resources": [
        {"type": "Microsoft.Network/publicIPAddresses", "apiVersion": "2024-05-01",
         "name": "[concat(parameters('prefix'), copyIndex())]",
         "location": "[variables('location')]", "sku": {"name": "Standard"},
         "properties": {"publicIPAllocationMethod": "Static"},
         "copy": {"name": "ips", "count": "[parameters('count')]"}},
        {"type": "Microsoft.Network/networkSecurityGroups", "apiVersion": "2015-06-15",
         "name": "[format('{0}-nsg', parameters('prefix'))]",
         "location": "[variables('location')]", "dependsOn": ["ips"]},
    ],
    "outputs": {
        "firstAddress": {"type": "string", "value": "[reference(resourceId("
                         "'Microsoft.Network/publicIPAddresses', concat(parameters('prefix'), "
                         "'0'))).ipAddress]"},
        "nsgId": {"type": "string", "value": "[reference(format('{0}-nsg', parameters("
                  "'prefix')), '2024-05-01', 'Full').id]"},
    },
}


def test_template_deployments_through_the_cli(local_azure, az, group, tmp_path):
    path = tmp_path / "template.json"
    path.write_text(json.dumps(TEMPLATE))
    d = az.json("deployment", "group", "create", "-g", group, "-n", "ips",
                "--template-file", str(path), "--parameters", "count=2", "prefix=web")
    props = d["properties"]
    assert props["provisioningState"] == "Succeeded"
    assert props["outputs"]["firstAddress"]["value"].startswith("127.10.")
    assert props["outputs"]["nsgId"]["value"].endswith("/networkSecurityGroups/web-nsg")
    assert props["parameters"]["note"] == {"type": "SecureString"}
    assert az.tsv("deployment", "group", "show", "-g", group, "-n", "ips", "--query",
                  "properties.provisioningState") == "Succeeded"
    assert "ips" in az.tsv("deployment", "group", "list", "-g", group, "--query", "[].name")
    # A resource the network provider refuses: DeploymentFailed naming it.
    bad = json.loads(json.dumps(TEMPLATE))
    bad["resources"][0]["properties"]["publicIPAllocationMethod"] = "Dynamic"
    path.write_text(json.dumps(bad))
    r = az("deployment", "group", "create", "-g", group, "-n", "bad", "--template-file",
           str(path), "--parameters", "count=1", "prefix=bad", check=False)
    assert r.returncode != 0
    assert "DeploymentFailed" in r.stderr
    assert "StandardSkuPublicIPAddressesCannotBeDynamic" in r.stderr
    assert "publicIPAddresses/bad0" in r.stderr
    # The grader is a Reader: it may not deploy.
    reader = Az(local_azure, tmp_path / "reader")
    g = local_azure.grader
    reader("login", "--service-principal", "-u", g.client_id, "-p", g.client_secret,
           "--tenant", g.tenant_id, "-o", "none")
    path.write_text(json.dumps(TEMPLATE))
    r = reader("deployment", "group", "create", "-g", group, "-n", "by-reader",
               "--template-file", str(path), "--parameters", "count=1", check=False)
    assert r.returncode != 0 and "AuthorizationFailed" in r.stderr
    assert "Microsoft.Resources/deployments/validate/action" in r.stderr or \
        "Microsoft.Resources/deployments/write" in r.stderr


def test_device_code_sign_in_approved_without_a_browser(azure_env, user, tmp_path):
    """`az login --use-device-code`: the code is approved through the local Azure's stand-in for
    the sign-in page (a form POST through the proxy), as the person at a browser would."""
    import re

    import requests

    cli = Az(azure_env, tmp_path / "device")
    proc = subprocess.Popen([os.environ["MILAB_AZ_CLI"], "login", "--use-device-code", "-o",
                             "none"], env=cli.env, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        code = re.search(r"enter the code (\w+)", line).group(1)
        r = requests.post("https://login.microsoftonline.com/common/oauth2/deviceauth",
                         data={"otc": code, "login": user.user_principal_name,
                               "passwd": user.password})
        assert r.status_code == 200, r.text
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    finally:
        proc.kill()
    assert cli.json("account", "show", "--query", "user") == {
        "name": user.user_principal_name, "type": "user"}
