"""Live VMs over real SSH (Fabric): login, NSGs, power, the userland, and the lab's in-VM commands
verbatim (“Azure Citadel: Managed Identities” steps 6-7, 10 and 14, “Azure Instance Metadata Service for virtual machines”, “How to use managed identities for Azure resources on an Azure VM to acquire an access token”, “Microsoft identity platform access token claims reference”).
"""

from __future__ import annotations

import io
import json
import os
import socket
import time
import uuid

import jwt
import paramiko
import pytest
from vmkit import LabVm, client_key, make_vm, wait_until

INSTANCE_CMD = ('curl -s -H Metadata:true '
                '"http://169.254.169.254/metadata/instance?api-version=2020-09-01"')
TOKEN_CMD = ("curl -s 'http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01"
             "&resource=https%3A%2F%2Fmanagement.azure.com%2F' -H Metadata:true")


# Not named `vm`: the milab plugin claims the fixture names `lab`, `vm` and `evidence`.
@pytest.fixture(scope="module")
def ubuntu(local_azure):
    made = make_vm(local_azure)
    yield made
    made.delete()


def refused(address: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((address, port)) != 0


# -- SSH --------------------------------------------------------------------------------------
def test_commands_return_exit_codes_stdout_and_stderr(ubuntu):
    r = ubuntu.run("echo out; echo err >&2; exit 7")
    assert (r.exited, r.stdout, r.stderr) == (7, "out\n", "err\n")
    assert ubuntu.run("true").exited == 0
    assert ubuntu.run("no-such-command").exited == 127


def test_stdin_is_piped_and_commands_run_in_home(ubuntu):
    with ubuntu.connect() as conn:
        r = conn.run("cat | wc -c", in_stream=io.StringIO("hello vm"), hide=True, warn=True)
        assert r.stdout.strip() == "8"
        assert conn.run("pwd", hide=True, in_stream=False).stdout.strip() == \
            conn.run("echo $HOME", hide=True, in_stream=False).stdout.strip()


def test_a_pty_session_works(ubuntu):
    with ubuntu.connect() as conn:
        r = conn.run("tty; exit 3", pty=True, hide=True, warn=True, in_stream=False)
    assert r.exited == 3 and r.stdout.startswith("/dev/pts/")


def test_an_unlisted_key_or_another_user_is_refused(ubuntu):
    other, _ = client_key()
    with pytest.raises(paramiko.AuthenticationException):
        ubuntu.connect(pkey=other).open()
    with pytest.raises(paramiko.AuthenticationException):
        ubuntu.connect(user="root").open()


def test_ssh_port_is_advertised(local_azure, ubuntu):
    assert local_azure.env["MILAB_SSH_PORT"] == str(ubuntu.port)


def test_fallback_port_when_22_cannot_be_bound(tmp_path, monkeypatch):
    from pytest_milab.emulator import LocalAzure
    from pytest_milab.emulator.machines import vms

    real = vms.can_bind
    monkeypatch.setattr(vms, "can_bind", lambda port, *a: port != 22 and real(port, *a))
    with LocalAzure(ssh_port=2299, workdir=tmp_path) as azure:
        assert azure.env["MILAB_SSH_PORT"] == "2299"
        other = make_vm(azure)
        assert other.run("echo hi").stdout == "hi\n"


# -- NSGs and power ---------------------------------------------------------------------------
def test_nsg_without_a_rule_for_22_refuses_until_one_is_added(local_azure):
    closed = make_vm(local_azure, name="closed", nsg_rules=())
    try:
        assert refused(closed.address, closed.port)
        closed.set_ssh_rules([{"name": "ssh", "properties": {
            "direction": "Inbound", "access": "Allow", "protocol": "Tcp", "priority": 300,
            "sourceAddressPrefix": "Internet", "destinationPortRanges": ["22", "443"]}}])
        assert closed.run("echo open").stdout == "open\n"
        # A deny with a lower priority number wins over the allow.
        closed.set_ssh_rules([
            {"properties": {"direction": "Inbound", "access": "Allow", "protocol": "*",
                            "priority": 300, "sourceAddressPrefix": "*",
                            "destinationPortRange": "*"}},
            {"properties": {"direction": "Inbound", "access": "Deny", "protocol": "Tcp",
                            "priority": 200, "sourceAddressPrefix": "*",
                            "destinationPortRange": "20-30"}}])
        assert refused(closed.address, closed.port)
    finally:
        closed.delete()


def test_subnet_nsg_counts_too(local_azure):
    from pytest_milab.emulator.state import arm_key

    boxed = make_vm(local_azure, name="subnetted", with_nsg=False)
    try:
        nsg_id = boxed.nic_id.replace("networkInterfaces/subnettedVMNic",
                                      "networkSecurityGroups/subnetNSG")

        def guard_subnet(cloud):
            cloud.resources[arm_key(nsg_id)] = {
                "id": nsg_id, "name": "subnetNSG", "properties": {"securityRules": []},
                "type": "Microsoft.Network/networkSecurityGroups"}
            vnet_id = boxed.nic_id.split("/Microsoft.Network/")[0] + \
                "/Microsoft.Network/virtualNetworks/myVnet"
            vnet = cloud.resources[arm_key(vnet_id)]
            vnet["properties"]["subnets"][0]["properties"]["networkSecurityGroup"] = {"id": nsg_id}
            return vnet
        boxed.mutate(guard_subnet, "network.changed")
        assert refused(boxed.address, boxed.port)
    finally:
        boxed.delete()


def test_a_new_public_address_moves_ssh(local_azure):
    from pytest_milab.emulator.state import arm_key

    mover = make_vm(local_azure, name="mover")
    try:
        old, new = mover.address, local_azure.cloud.allocate_ip()

        def readdress(cloud):
            pip = cloud.resources[arm_key(mover.pip_id)]
            pip["properties"]["ipAddress"] = new
            return pip
        mover.mutate(readdress, "network.changed")
        mover.address = new
        assert refused(old, mover.port)
        assert mover.run("echo moved").stdout == "moved\n"
    finally:
        mover.delete()


def test_vm_without_any_nsg_is_reachable(local_azure):
    open_vm = make_vm(local_azure, name="open", with_nsg=False)
    try:
        assert open_vm.run("echo ok").stdout == "ok\n"
    finally:
        open_vm.delete()


def test_stopping_closes_ssh_and_starting_restores_it_with_the_disk(local_azure):
    box = make_vm(local_azure, name="box")
    try:
        conn = box.connect()
        conn.run("echo kept > note.txt", hide=True, in_stream=False)
        box.set_power("deallocated")
        assert refused(box.address, box.port)
        assert wait_until(lambda: not conn.is_connected, 5)  # the open session was closed too
        box.set_power("running")
        assert box.run("cat note.txt").stdout == "kept\n"
        box.set_power("stopped")
        assert refused(box.address, box.port)
    finally:
        box.delete()
    assert refused(box.address, box.port)
    assert local_azure.vms.live(box.id) is None


# -- the VM's environment and userland --------------------------------------------------------
def test_environment_is_the_vms_own(local_azure, ubuntu):
    env = dict(line.split("=", 1) for line in ubuntu.run("env").stdout.splitlines() if "=" in line)
    live = local_azure.vms.live(ubuntu.id)
    assert env["PATH"] == str(live.bin)
    assert env["USER"] == env["LOGNAME"] == "azureuser"
    # The proxy URLs carry the VM's credential: compared, never shown.
    own = env["http_proxy"] == env["https_proxy"] == live.proxy_url()
    assert own and live.proxy_url().endswith(f"@127.0.0.1:{live.proxy.port}")
    assert env["no_proxy"] == ""
    assert env["REQUESTS_CA_BUNDLE"] == env["CURL_CA_BUNDLE"] == str(local_azure.ca_path)
    assert env["AZURE_CONFIG_DIR"] == env["HOME"] + "/.azure"
    for name in env:
        assert not name.startswith(("AZURE_CLIENT", "AZURE_TENANT", "AZURE_POD", "IDENTITY_",
                                    "MSI_", "MILAB_"))
    assert ubuntu.run("hostname").stdout == "ubuntu\n"
    assert ubuntu.run("command -v ssh || command -v az || command -v pip").exited == 1


def test_sudo_gives_no_privilege(ubuntu):
    assert ubuntu.run("sudo id -u").stdout == ubuntu.run("id -u").stdout
    assert ubuntu.run("sudo sh -c 'echo $SUDO_USER'").stdout == "azureuser\n"


def test_jq_arrives_only_through_apt(local_azure):
    fresh = make_vm(local_azure, name="fresh")
    try:
        assert fresh.run("command -v jq").exited == 1
        r = fresh.run("apt install jq -y")
        assert r.exited == 100 and "are you root?" in r.stderr
        r = fresh.run("sudo apt update && sudo apt install jq -y")
        assert r.exited == 0, r.stderr
        assert fresh.run("echo '{\"a\": 5}' | jq .a").stdout == "5\n"
        r = fresh.run("sudo apt install nosuchtool -y")
        assert r.exited == 100 and "E: Unable to locate package nosuchtool" in r.stderr
        assert fresh.run("sudo apt-get install -y ../../bin/sh").exited == 100
    finally:
        fresh.delete()


def test_azure_cli_installer_without_a_configured_cli_fails_clearly(local_azure, ubuntu):
    if local_azure.az_cli is not None:
        pytest.skip("an Azure CLI is configured (MILAB_AZ_CLI); see test_azure_cli_in_the_vm")
    r = ubuntu.run("curl -sL https://aka.ms/InstallAzureCLIDeb | sudo bash")
    assert r.exited != 0 and "no Azure CLI to install" in r.stderr
    assert ubuntu.run("command -v az").exited == 1


def test_other_hosts_are_unreachable_from_the_vm(ubuntu):
    r = ubuntu.run("curl -sS https://example.com")
    assert r.exited != 0


# -- the lab's commands verbatim (“Azure Citadel: Managed Identities”) ----------------------------
def test_lab_step_6_instance_metadata(ubuntu):
    doc = json.loads(ubuntu.run(INSTANCE_CMD).stdout)
    assert doc["compute"]["resourceId"] == ubuntu.id
    assert {"name": "site", "value": "citadel"} in doc["compute"]["tagsList"]
    assert doc["network"]["interface"][0]["ipv4"]["ipAddress"][0]["publicIpAddress"] == ubuntu.address


def test_lab_step_6_with_jq(local_azure, ubuntu):
    ubuntu.run("sudo apt update && sudo apt install jq -y")
    r = ubuntu.run(INSTANCE_CMD + " | jq -r '.compute.tagsList[] | select(.name==\"site\").value'")
    assert r.stdout == "citadel\n"
    r = ubuntu.run('curl -s -H Metadata:true '
               '"http://169.254.169.254/metadata/instance/compute/tagsList?api-version=2020-09-01"'
               ' | jq -r \'.[]|select(.name=="vault").value\'')
    assert r.stdout == "keyvault-1a2b3c4d\n"


def test_lab_step_7_management_token(ubuntu):
    body = json.loads(ubuntu.run(TOKEN_CMD).stdout)
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["aud"] == "https://management.azure.com/"
    assert claims["oid"] == ubuntu.principal_id


def test_vm_without_identity_gets_identity_not_found(local_azure):
    bare = make_vm(local_azure, name="noid", identity="")
    try:
        assert json.loads(bare.run(TOKEN_CMD).stdout) == {
            "error": "invalid_request", "error_description": "Identity not found"}
    finally:
        bare.delete()


def test_azure_identity_inside_the_vm_gets_a_token(ubuntu):
    script = ("from azure.identity import ManagedIdentityCredential\n"
              "import jwt\n"
              "t = ManagedIdentityCredential().get_token('https://management.azure.com/.default')\n"
              "print(jwt.decode(t.token, options={'verify_signature': False})['oid'])\n")
    r = ubuntu.run(f"python3 -c \"{script}\"")
    assert r.exited == 0, r.stderr
    assert r.stdout.strip() == ubuntu.principal_id


def test_two_vms_get_their_own_metadata(local_azure, ubuntu):
    other = make_vm(local_azure, name="other")
    try:
        assert other.address != ubuntu.address and other.port == ubuntu.port
        r = other.run(INSTANCE_CMD.replace("instance?", "instance/compute/name?")
                      .replace("2020-09-01", "2020-09-01&format=text"))
        assert r.stdout == "other"
    finally:
        other.delete()


@pytest.mark.skipif(not os.environ.get("MILAB_AZ_CLI"),
                    reason="no Azure CLI configured: set MILAB_AZ_CLI to an `az` in its own venv "
                           "(tox -e azcli does)")
def test_azure_cli_installs_in_the_vm(local_azure):
    fresh = make_vm(local_azure, name="cli")
    try:
        assert fresh.run("command -v az").exited == 1
        r = fresh.run("curl -sL https://aka.ms/InstallAzureCLIDeb | sudo bash")
        assert r.exited == 0, r.stderr
        assert fresh.run("az version").exited == 0
    finally:
        fresh.delete()


def test_addresses_another_local_azure_serves_are_skipped(local_azure, ubuntu, tmp_path):
    from pytest_milab.emulator import LocalAzure

    with LocalAzure(workdir=tmp_path) as second:
        # Aim the second local Azure's next address at the one the first one's VM listens on.
        taken = [int(x) for x in ubuntu.address.split(".")[2:]]
        second.cloud.next_public_ip = taken[0] * 250 + taken[1] - 2
        assert second.cloud.allocate_ip() != ubuntu.address


LAB_IMDS = 'imds=$(curl -sSL -H Metadata:true "http://169.254.169.254/metadata/instance?api-version=2020-09-01")'
LAB_VAULT = "vault=$(jq -r '.compute.tagsList[]|select(.name == \"vault\").value' <<< $imds)"
LAB_TOKEN = ("token=$(curl 'http://169.254.169.254/metadata/identity/oauth2/token?api-version="
             "2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F' -H Metadata:true -s "
             "| jq -r .access_token)")
LAB_VAULT_TOKEN = ("vaultToken=$(curl 'http://169.254.169.254/metadata/identity/oauth2/token?"
                   "api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net' -H Metadata:true"
                   " -s | jq -r .access_token)")
LAB_GET_SECRET = ('curl -X GET -H "Authorization: Bearer ${}" -H "Content-Type: application/json" '
                  'https://$vault.vault.azure.net/secrets/portal-phrase?api-version=7.1')


def insert_vault(azure, name: str, group: str) -> dict:
    """A vault with access policies, as ARM stores it, readable by the operator."""
    from pytest_milab.emulator.state import arm_key

    vid = (f"/subscriptions/{azure.subscription_id}/resourceGroups/{group}/providers/"
           f"Microsoft.KeyVault/vaults/{name}")
    vault = {"id": vid, "name": name, "type": "Microsoft.KeyVault/vaults", "location": "uksouth",
             "tags": {}, "properties": {
                 "tenantId": azure.tenant_id, "sku": {"family": "A", "name": "standard"},
                 "enableRbacAuthorization": False, "enableSoftDelete": True,
                 "softDeleteRetentionInDays": 7, "vaultUri": f"https://{name}.vault.azure.net/",
                 "accessPolicies": [{"tenantId": azure.tenant_id,
                                     "objectId": azure.operator.object_id,
                                     "permissions": {"secrets": ["get", "list", "set"]}}]}}
    with azure.cloud.lock:
        azure.cloud.resources[arm_key(vid)] = vault
    return vault


def test_lab_steps_10_to_12_key_vault_from_the_vm(azure_env, operator_credential):
    """Vault access from inside the VM with the lab's curl lines (ARM JSON put in directly)."""
    from azure.keyvault.secrets import SecretClient

    name = f"kv-{os.urandom(4).hex()}"
    box = make_vm(azure_env, name="kvbox", tags={"vault": name})
    vault = insert_vault(azure_env, name, box.group)
    try:
        SecretClient(f"https://{name}.vault.azure.net", operator_credential).set_secret(
            "portal-phrase", "TheCakeIsALie")
        box.run("sudo apt update && sudo apt install jq -y")
        prefix = f"{LAB_IMDS}; {LAB_VAULT}; {LAB_TOKEN}; {LAB_VAULT_TOKEN}; "
        r = box.run(prefix + LAB_GET_SECRET.format("token"))
        assert json.loads(r.stdout)["error"]["message"] == (
            "AKV10022: Invalid audience. Expected https://vault.azure.net, found: "
            "https://management.azure.com/.")
        r = box.run(prefix + LAB_GET_SECRET.format("vaultToken"))
        assert json.loads(r.stdout)["error"]["innererror"]["code"] == "AccessDenied"
        with azure_env.cloud.lock:
            vault["properties"]["accessPolicies"].append({
                "tenantId": azure_env.tenant_id, "objectId": box.principal_id,
                "permissions": {"secrets": ["get"]}})
        r = box.run(prefix + "phrase=$(" + LAB_GET_SECRET.format("vaultToken")
                    + " | jq -r .value); echo $phrase")
        assert r.stdout == "TheCakeIsALie\n"
    finally:
        box.delete()
        with azure_env.cloud.lock:
            azure_env.cloud.resources.pop(vault["id"].lower(), None)


# -- the whole lab through ARM with the SDKs (“Azure Citadel: Managed Identities” steps 1-12) -----
READER = "acdd72a7-3385-48ef-bd42-f606fba81ae7"
LAB_LIST = ('resourceGroupName=$(jq -r .compute.resourceGroupName <<< $imds); '
            'subscriptionId=$(jq -r .compute.subscriptionId <<< $imds); '
            'curl -s -o out.json -w "%{http_code}" -X GET -H "Authorization: Bearer $token" '
            '-H "Content-Type: application/json" https://management.azure.com/subscriptions/'
            '$subscriptionId/resourceGroups/$resourceGroupName/resources?api-version=2020-06-01')


def resource_client(credential, subscription_id: str):
    try:  # azure-mgmt-resource 26 moved the client into a subpackage
        from azure.mgmt.resource.resources import ResourceManagementClient
    except ImportError:
        from azure.mgmt.resource import ResourceManagementClient
    return ResourceManagementClient(credential, subscription_id)


def build_lab(azure, credential, group: str, public_key: str) -> dict:
    """The lab's host side, as an operator does it with the SDKs: group, vault with an access
    policy and the secret, public IP, vnet, NSG allowing 22, NIC and VM `ubuntu`. Bodies are
    REST JSON, which every generation of the SDKs sends as it is."""
    import hashlib

    from azure.keyvault.secrets import SecretClient
    from azure.mgmt.compute import ComputeManagementClient
    from azure.mgmt.keyvault import KeyVaultManagementClient
    from azure.mgmt.network import NetworkManagementClient

    sub, tenant, where = azure.subscription_id, azure.tenant_id, "uksouth"
    rg = resource_client(credential, sub).resource_groups.create_or_update(
        group, {"location": where})
    vault = "keyvault-" + hashlib.md5((rg.id + "\n").encode()).hexdigest()[:8]
    KeyVaultManagementClient(credential, sub).vaults.begin_create_or_update(group, vault, {
        "location": where, "properties": {
            "tenantId": tenant, "sku": {"family": "A", "name": "standard"},
            "enableRbacAuthorization": False, "softDeleteRetentionInDays": 7,
            "accessPolicies": [{"tenantId": tenant, "objectId": azure.operator.object_id,
                                "permissions": {"secrets": ["get", "list", "set"]}}]}}, polling_interval=0).result()
    SecretClient(f"https://{vault}.vault.azure.net", credential).set_secret(
        "portal-phrase", "TheCakeIsALie")
    net = NetworkManagementClient(credential, sub)
    pip = net.public_ip_addresses.begin_create_or_update(group, "ubuntu-pip", {
        "location": where, "sku": {"name": "Standard"},
        "properties": {"publicIPAllocationMethod": "Static"}}, polling_interval=0).result()
    nsg = net.network_security_groups.begin_create_or_update(group, "ubuntuNSG", {
        "location": where, "properties": {"securityRules": [{
            "name": "default-allow-ssh", "properties": {
                "priority": 1000, "protocol": "Tcp", "access": "Allow", "direction": "Inbound",
                "sourceAddressPrefix": "*", "sourcePortRange": "*",
                "destinationAddressPrefix": "*", "destinationPortRange": "22"}}]}}, polling_interval=0).result()
    vnet = net.virtual_networks.begin_create_or_update(group, "myVnet", {
        "location": where, "properties": {
            "addressSpace": {"addressPrefixes": ["10.0.0.0/16"]},
            "subnets": [{"name": "mySubnet",
                         "properties": {"addressPrefix": "10.0.0.0/24"}}]}}, polling_interval=0).result()
    nic = net.network_interfaces.begin_create_or_update(group, "ubuntuVMNic", {
        "location": where, "properties": {
            "networkSecurityGroup": {"id": nsg.id},
            "ipConfigurations": [{"name": "ipconfigubuntu", "properties": {
                "subnet": {"id": vnet.subnets[0].id},
                "publicIPAddress": {"id": pip.id}}}]}}, polling_interval=0).result()
    vm = ComputeManagementClient(credential, sub).virtual_machines.begin_create_or_update(
        group, "ubuntu", {
            "location": where, "identity": {"type": "SystemAssigned"},
            "tags": {"site": "citadel", "lab": "identity", "vault": vault},
            "properties": {
                "hardwareProfile": {"vmSize": "Standard_D2s_v5"},
                "storageProfile": {
                    "imageReference": {"publisher": "Canonical",
                                       "offer": "0001-com-ubuntu-server-jammy",
                                       "sku": "22_04-lts-gen2", "version": "latest"},
                    "osDisk": {"name": "ubuntu-os", "createOption": "FromImage",
                               "managedDisk": {"storageAccountType": "Premium_LRS"}}},
                "osProfile": {"computerName": "ubuntu", "adminUsername": "azureuser",
                              "linuxConfiguration": {
                                  "disablePasswordAuthentication": True,
                                  "ssh": {"publicKeys": [{
                                      "path": "/home/azureuser/.ssh/authorized_keys",
                                      "keyData": public_key}]}}},
                "networkProfile": {"networkInterfaces": [{"id": nic.id}]}}}, polling_interval=0).result()
    address = net.public_ip_addresses.get(group, "ubuntu-pip").ip_address
    return {"rg": rg, "vault": vault, "vm": vm, "address": address}


def lab_box(azure, lab: dict, pkey) -> LabVm:
    vm = lab["vm"]
    return LabVm(azure, lab["rg"].name, vm.name, vm.id, "", None, None, lab["address"],
                 "azureuser", pkey, vm.identity.principal_id)


def assign_reader(azure, credential, lab: dict) -> None:
    from azure.mgmt.authorization import AuthorizationManagementClient

    sub = azure.subscription_id
    AuthorizationManagementClient(credential, sub).role_assignments.create(
        lab["rg"].id, str(uuid.uuid4()), {
            "properties": {
                "roleDefinitionId": f"/subscriptions/{sub}/providers/Microsoft.Authorization/"
                                    f"roleDefinitions/{READER}",
                "principalId": lab["vm"].identity.principal_id,
                "principalType": "ServicePrincipal"}})


def grant_secret_get(azure, credential, lab: dict) -> None:
    from azure.mgmt.keyvault import KeyVaultManagementClient

    KeyVaultManagementClient(credential, azure.subscription_id).vaults.update_access_policy(
        lab["rg"].name, lab["vault"], "add", {"properties": {"accessPolicies": [{
            "tenantId": azure.tenant_id, "objectId": lab["vm"].identity.principal_id,
            "permissions": {"secrets": ["get"]}}]}})


def teardown_lab(credential, azure, group: str) -> None:
    resource_client(credential, azure.subscription_id).resource_groups.begin_delete(group, polling_interval=0).result()


def list_group(box: LabVm) -> tuple[str, str]:
    r = box.run(f"{LAB_IMDS}; {LAB_TOKEN}; {LAB_LIST}; echo; cat out.json")
    status, _, body = r.stdout.partition("\n")
    return status, body


def test_the_lab_end_to_end(azure_env, operator_credential, unique_group):
    pkey, public_key = client_key()
    lab = build_lab(azure_env, operator_credential, unique_group, public_key)
    try:
        box = lab_box(azure_env, lab, pkey)
        assert wait_until(lambda: not refused(box.address, box.port), 5)
        assert box.run("sudo apt update && sudo apt install jq -y").exited == 0
        status, body = list_group(box)
        assert status == "403" and json.loads(body)["error"]["code"] == "AuthorizationFailed"
        assign_reader(azure_env, operator_credential, lab)
        status, body = list_group(box)
        assert status == "200"
        names = {item["name"] for item in json.loads(body)["value"]}
        assert {"ubuntu", lab["vault"]} <= names
        prefix = f"{LAB_IMDS}; {LAB_VAULT}; {LAB_TOKEN}; {LAB_VAULT_TOKEN}; "
        r = box.run(prefix + LAB_GET_SECRET.format("token"))
        assert "AKV10022" in json.loads(r.stdout)["error"]["message"]
        r = box.run(prefix + LAB_GET_SECRET.format("vaultToken"))
        assert json.loads(r.stdout)["error"]["code"] == "Forbidden"
        grant_secret_get(azure_env, operator_credential, lab)
        r = box.run(prefix + "curl -s -H \"Authorization: Bearer $vaultToken\" "
                    "https://$vault.vault.azure.net/secrets/portal-phrase?api-version=7.1 "
                    "| jq -r .value")
        assert r.stdout == "TheCakeIsALie\n"
    finally:
        teardown_lab(operator_credential, azure_env, unique_group)


def test_the_reader_grant_takes_effect_after_the_propagation_delay(azure_env, operator_credential,
                                                                   unique_group):
    pkey, public_key = client_key()
    lab = build_lab(azure_env, operator_credential, unique_group, public_key)
    try:
        box = lab_box(azure_env, lab, pkey)
        assert wait_until(lambda: not refused(box.address, box.port), 5)
        box.run("sudo apt update && sudo apt install jq -y")
        azure_env.knobs.propagation_delay = 2.0
        granted = time.monotonic()
        assign_reader(azure_env, operator_credential, lab)
        assert list_group(box)[0] == "403"
        assert wait_until(lambda: list_group(box)[0] == "200", 6, interval=0.3)
        assert time.monotonic() - granted >= 1.8
    finally:
        azure_env.knobs.propagation_delay = 0.0
        teardown_lab(operator_credential, azure_env, unique_group)


@pytest.mark.skipif(not os.environ.get("MILAB_AZ_CLI"),
                    reason="no Azure CLI configured: set MILAB_AZ_CLI to an `az` in its own venv "
                           "(tox -e azcli does)")
def test_the_lab_with_the_azure_cli(azure_env, operator_credential, unique_group):
    """“Azure Citadel: Managed Identities” step 14: install the CLI in the VM, `az login --identity`, read the secret."""
    pkey, public_key = client_key()
    lab = build_lab(azure_env, operator_credential, unique_group, public_key)
    try:
        assign_reader(azure_env, operator_credential, lab)
        grant_secret_get(azure_env, operator_credential, lab)
        box = lab_box(azure_env, lab, pkey)
        assert wait_until(lambda: not refused(box.address, box.port), 5)
        r = box.run("curl -sL https://aka.ms/InstallAzureCLIDeb | sudo bash")
        assert r.exited == 0, r.stderr
        r = box.run("az login --identity")
        assert r.exited == 0, r.stderr
        assert json.loads(r.stdout)[0]["user"]["assignedIdentityInfo"] == "MSI"
        r = box.run(f"az keyvault secret show --vault-name {lab['vault']} --name portal-phrase "
                    "--query value -o tsv")
        assert (r.exited, r.stdout) == (0, "TheCakeIsALie\n"), r.stderr
    finally:
        teardown_lab(operator_credential, azure_env, unique_group)
