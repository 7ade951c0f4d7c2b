"""The managed-identity lab as stages, in the lab's order, with today's equivalents where the
lab document has drifted (steps.md, "Known drift"):

* `az ad signed-in-user show --query objectId` is empty today: the operator's object id comes
  from its token;
* the vault asks for access policies explicitly (new vaults default to RBAC);
* `UbuntuLTS` is gone: Ubuntu 22.04 (`Ubuntu2204`); the public IP is Standard;
* `az ad sp create-for-rbac` no longer assigns a role unless asked: Contributor is explicit.

Each stage names the steps checked once it is done; the "denied before" steps are checked
before the grant that ends the denial.
"""

from __future__ import annotations

import json
import os
import uuid

from pytest_milab import ProvisionContext, Stage, role_definition_id

UBUNTU_2204 = {"publisher": "Canonical", "offer": "0001-com-ubuntu-server-jammy",
               "sku": "22_04-lts-gen2", "version": "latest"}
ADMIN_USER = "azureuser"


def resource_group(ctx: ProvisionContext) -> None:
    ctx.clients.resource.resource_groups.create_or_update(
        ctx.group, {"location": ctx.spec.location, "tags": ctx.tags})


def secret_policy(ctx: ProvisionContext, object_id: str, secrets: list[str]) -> dict:
    return {"tenantId": ctx.tenant_id, "objectId": object_id,
            "permissions": {"secrets": secrets, "keys": [], "certificates": []}}


def key_vault(ctx: ProvisionContext) -> None:
    name = ctx.state.setdefault("vault_name", ctx.spec.vault_name(ctx.group_id))
    ctx.clients.keyvault.vaults.begin_create_or_update(ctx.group, name, {
        "location": ctx.spec.location, "tags": ctx.tags,
        "properties": {
            "tenantId": ctx.tenant_id, "sku": {"family": "A", "name": "standard"},
            "enableRbacAuthorization": False,
            "softDeleteRetentionInDays": ctx.state.get("retention_days", ctx.spec.retention_days),
            "accessPolicies": [secret_policy(ctx, ctx.operator_object_id, ["get", "list", "set"])],
        }}).result()


def secrets_client(ctx: ProvisionContext):
    from azure.keyvault.secrets import SecretClient

    return SecretClient(f"https://{ctx.state['vault_name']}.vault.azure.net", ctx.credential)


def secret(ctx: ProvisionContext) -> None:
    # The vault's creator policy, made a moment ago, may not be in force yet.
    value = ctx.state.get("secret_value", ctx.spec.secret_value)
    ctx.until_allowed(lambda: secrets_client(ctx).set_secret(ctx.spec.secret_name, value),
                      what="setting the secret")


def virtual_machine(ctx: ProvisionContext) -> None:
    g, loc, spec, net = ctx.group, ctx.spec.location, ctx.spec, ctx.clients.network
    pip = net.public_ip_addresses.begin_create_or_update(g, spec.public_ip, {
        "location": loc, "tags": ctx.tags, "sku": {"name": "Standard"},
        "properties": {"publicIPAllocationMethod": "Static"}}).result()
    nsg = net.network_security_groups.begin_create_or_update(g, f"{spec.vm_name}NSG", {
        "location": loc, "tags": ctx.tags, "properties": {"securityRules": [{
            "name": "default-allow-ssh", "properties": {
                "priority": 1000, "direction": "Inbound", "access": "Allow", "protocol": "Tcp",
                "sourceAddressPrefix": "*", "sourcePortRange": "*",
                "destinationAddressPrefix": "*", "destinationPortRange": "22"}}]}}).result()
    vnet = net.virtual_networks.begin_create_or_update(g, spec.vnet, {
        "location": loc, "tags": ctx.tags, "properties": {
            "addressSpace": {"addressPrefixes": ["10.0.0.0/16"]},
            "subnets": [{"name": spec.subnet, "properties": {"addressPrefix": "10.0.0.0/24"}}]},
    }).result()
    subnet_id = next(s.id for s in vnet.properties.subnets if s.name == spec.subnet)
    nic = net.network_interfaces.begin_create_or_update(g, f"{spec.vm_name}VMNic", {
        "location": loc, "tags": ctx.tags, "properties": {
            "networkSecurityGroup": {"id": nsg.id},
            "ipConfigurations": [{"name": f"ipconfig{spec.vm_name}", "properties": {
                "subnet": {"id": subnet_id}, "publicIPAddress": {"id": pip.id},
                "privateIPAllocationMethod": "Dynamic"}}]}}).result()
    vm = ctx.clients.compute.virtual_machines.begin_create_or_update(g, spec.vm_name, {
        "location": loc,
        "tags": {**ctx.tags, **spec.expected_tags(spec.vault_name(ctx.group_id))},
        "identity": {"type": "SystemAssigned"},
        "properties": {
            "hardwareProfile": {"vmSize": "Standard_D2s_v5"},
            "storageProfile": {
                "imageReference": ctx.state.get("image", UBUNTU_2204),
                "osDisk": {"name": spec.os_disk, "createOption": "FromImage",
                           "managedDisk": {"storageAccountType": "Premium_LRS"}}},
            "osProfile": {
                "computerName": spec.vm_name, "adminUsername": ADMIN_USER,
                "linuxConfiguration": {"disablePasswordAuthentication": True, "ssh": {
                    "publicKeys": [{"path": f"/home/{ADMIN_USER}/.ssh/authorized_keys",
                                    "keyData": ctx.ssh_public_key}]}}},
            "networkProfile": {"networkInterfaces": [{"id": nic.id}]},
        }}).result()
    ctx.state["identity"] = vm.identity.principal_id if vm.identity else None
    ctx.ssh_user = ADMIN_USER
    ctx.ssh_host = net.public_ip_addresses.get(g, spec.public_ip).properties.ip_address


def in_vm(ctx: ProvisionContext, command: str) -> None:
    result = ctx.run_in_vm(command)
    if not result.ok:
        last = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or [""]
        raise RuntimeError(f"`{command}` exited {result.exit_code}: {last[0][:200]}")


def install_jq(ctx: ProvisionContext) -> None:
    in_vm(ctx, "sudo apt update && sudo apt install jq -y")


def assign(ctx: ProvisionContext, scope: str, role: str, principal: str) -> None:
    ctx.clients.authorization.role_assignments.create(scope, str(uuid.uuid4()), {
        "role_definition_id": role_definition_id(ctx.subscription_id, role),
        "principal_id": principal, "principal_type": "ServicePrincipal"})


def reader_assignment(ctx: ProvisionContext) -> None:
    assign(ctx, ctx.group_id, "Reader", ctx.state["identity"])


def identity_access_policy(ctx: ProvisionContext) -> None:
    ctx.clients.keyvault.vaults.update_access_policy(
        ctx.group, ctx.state["vault_name"], "add",
        {"properties": {"accessPolicies": [secret_policy(ctx, ctx.state["identity"], ["get"])]}})


def service_principal(ctx: ProvisionContext) -> None:
    # `az ad sp create-for-rbac --name "http://contributor-$uniq" --role Contributor --scope
    # $resourceGroupId`: $uniq is never set in the lab, so the display name is literal.
    app = ctx.graph("POST", "/applications", {"displayName": "http://contributor-",
                                              "tags": ctx.app_tags})
    password = ctx.graph("POST", f"/applications/{app['id']}/addPassword",
                         {"passwordCredential": {"displayName": "rbac"}})
    sp = ctx.graph("POST", "/servicePrincipals", {"appId": app["appId"]})
    ctx.state.update(sp_app=app, sp_password_key=password["keyId"])
    assign(ctx, ctx.group_id, "Contributor", sp["id"])
    creds = {"appId": app["appId"], "displayName": app["displayName"],
             "password": password["secretText"], "tenant": ctx.tenant_id}
    client = secrets_client(ctx)
    for name, value in (("tenant-id", creds["tenant"]), ("client-id", creds["appId"]),
                        ("client-secret", creds["password"]),
                        ("service-principal", json.dumps(creds, separators=(",", ":")))):
        ctx.until_allowed(lambda n=name, v=value: client.set_secret(n, v), what=f"setting {name}")


def install_azure_cli(ctx: ProvisionContext) -> None:
    if os.environ.get("MILAB_LOCAL_AZURE") == "1" and not os.environ.get("MILAB_AZ_CLI"):
        return  # a local Azure with no Azure CLI to install: the CLI steps say they are skipped
    in_vm(ctx, "curl -sL https://aka.ms/InstallAzureCLIDeb | sudo bash")


STAGES = [
    Stage("resource group", resource_group, checks=("resource-group",)),
    Stage("key vault", key_vault,
          checks=("key-vault", "vault-permission-model", "operator-access-policy")),
    Stage("secret", secret),
    Stage("virtual machine", virtual_machine,
          checks=("vm", "vm-identity", "vm-tags", "ssh", "imds-instance", "imds-tags-path",
                  "management-token", "reader-denied-before", "wrong-audience",
                  "vault-denied-before")),
    Stage("install jq", install_jq, checks=("jq",)),
    Stage("reader assignment", reader_assignment,
          checks=("reader-assignment", "reader-allowed"), poll=("reader-allowed",)),
    Stage("identity access policy", identity_access_policy,
          checks=("identity-access-policy", "secret-read"), poll=("secret-read",)),
    Stage("service principal", service_principal,
          checks=("service-principal", "sp-secrets", "sp-login"), poll=("sp-secrets", "sp-login")),
    Stage("azure cli", install_azure_cli, checks=("az-cli", "az-login-identity"),
          poll=("az-login-identity",)),
]
