"""Building the managed-identity lab with the SDKs, in the lab's order, with today's
equivalents where the lab document has drifted (steps.md "Known drift"):

* access policies are asked for explicitly (new vaults default to RBAC);
* the image is Ubuntu 22.04 (`UbuntuLTS` is gone), the public IP Standard;
* the service principal is created through Graph and given Contributor explicitly.

`defects` breaks named steps on purpose, the way a student would, so each check can be shown
failing (the defect catalogue).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..spec import LabSpec
from ..vm.keys import generate_key_pair
from ..vm.ssh import SshTarget, VmConnection
from .clients import SubscriptionClients

READER = "acdd72a7-3385-48ef-bd42-f606fba81ae7"
CONTRIBUTOR = "b24988ac-6180-42a0-ab88-20f7382dd24c"
UBUNTU = {"publisher": "Canonical", "offer": "0001-com-ubuntu-server-jammy",
          "sku": "22_04-lts-gen2", "version": "latest"}
DEBIAN = {"publisher": "Debian", "offer": "debian-12", "sku": "12-gen2", "version": "latest"}

DEFECTS = (
    "resource-group", "key-vault", "vault-permission-model", "operator-access-policy", "vm",
    "vm-identity", "vm-tags", "reader-assignment", "identity-access-policy", "service-principal",
    "ssh", "jq", "vault-denied-before", "secret-read", "sp-secrets", "sp-login", "az-cli",
)


@dataclass
class BuiltLab:
    group: str
    group_id: str = ""
    vault_name: str = ""
    identity: str | None = None
    public_ip: str | None = None
    admin_user: str = "azureuser"
    sp_app_id: str | None = None
    notes: list[str] = field(default_factory=list)


class LabBuilder:
    """Builds one lab as the signed-in operator (Owner of the subscription)."""

    def __init__(self, credential, subscription_id: str, tenant_id: str, operator_object_id: str,
                 group: str, *, spec: LabSpec | None = None, ssh_public_key: str,
                 ssh_key_path: str, ssh_port: int = 22, defects=(), install_az: bool = False,
                 timeout: float = 60.0) -> None:
        unknown = set(defects) - set(DEFECTS)
        if unknown:
            raise ValueError(f"unknown defect {sorted(unknown)[0]!r}")
        self.credential = credential
        self.c = SubscriptionClients(credential, subscription_id, timeout)
        self.subscription_id = subscription_id
        self.tenant_id = tenant_id
        self.operator = operator_object_id
        self.spec = spec or LabSpec()
        self.defects = set(defects)
        self.ssh_public_key = ssh_public_key
        self.ssh_key_path = ssh_key_path
        self.ssh_port = ssh_port
        self.install_az = install_az
        self.lab = BuiltLab(group)

    # -- the lab's stages, in order --------------------------------------------------------------
    def build(self) -> BuiltLab:
        if "resource-group" in self.defects:
            return self.lab  # the group is never created
        for stage in (self.resource_group, self.key_vault, self.secret, self.virtual_machine,
                      self.install_jq, self.reader_assignment, self.identity_access_policy,
                      self.service_principal, self.install_azure_cli, self.finish):
            stage()
        return self.lab

    def resource_group(self) -> None:
        group = self.c.resource.resource_groups.create_or_update(
            self.lab.group, {"location": self.spec.location})
        self.lab.group_id = group.id

    def key_vault(self) -> None:
        name = self.spec.vault_name(self.lab.group_id)
        if "key-vault" in self.defects:
            name = "kv-" + name[len(self.spec.vault_prefix):] + "x"
        self.lab.vault_name = name
        retention = 90 if "vault-permission-model" in self.defects else self.spec.retention_days
        self.c.keyvault.vaults.begin_create_or_update(self.lab.group, name, {
            "location": self.spec.location,
            "properties": {
                "tenantId": self.tenant_id, "sku": {"family": "A", "name": "standard"},
                "enableRbacAuthorization": False, "softDeleteRetentionInDays": retention,
                "accessPolicies": [self._policy(self.operator, ["get", "list", "set"])],
            }}).result()

    def _policy(self, object_id: str, secrets: list[str]) -> dict:
        return {"tenantId": self.tenant_id, "objectId": object_id,
                "permissions": {"secrets": secrets, "keys": [], "certificates": []}}

    def _secrets(self):
        from azure.keyvault.secrets import SecretClient

        return SecretClient(f"https://{self.lab.vault_name}.vault.azure.net", self.credential)

    def secret(self) -> None:
        value = self.spec.secret_value + ("!" if "secret-read" in self.defects else "")
        self._secrets().set_secret(self.spec.secret_name, value)

    def virtual_machine(self) -> None:
        g, loc, spec = self.lab.group, self.spec.location, self.spec
        net = self.c.network
        pip = net.public_ip_addresses.begin_create_or_update(g, spec.public_ip, {
            "location": loc, "sku": {"name": "Standard"},
            "properties": {"publicIPAllocationMethod": "Static"}}).result()
        rules = [] if "ssh" in self.defects else [{
            "name": "default-allow-ssh", "properties": {
                "priority": 1000, "direction": "Inbound", "access": "Allow", "protocol": "Tcp",
                "sourceAddressPrefix": "*", "sourcePortRange": "*",
                "destinationAddressPrefix": "*", "destinationPortRange": "22"}}]
        nsg = net.network_security_groups.begin_create_or_update(g, f"{spec.vm_name}NSG", {
            "location": loc, "properties": {"securityRules": rules}}).result()
        vnet = net.virtual_networks.begin_create_or_update(g, spec.vnet, {
            "location": loc, "properties": {
                "addressSpace": {"addressPrefixes": ["10.0.0.0/16"]},
                "subnets": [{"name": spec.subnet, "properties": {"addressPrefix": "10.0.0.0/24"}}],
            }}).result()
        subnet_id = next(s.id for s in vnet.properties.subnets if s.name == spec.subnet)
        nic = net.network_interfaces.begin_create_or_update(g, f"{spec.vm_name}VMNic", {
            "location": loc, "properties": {
                "networkSecurityGroup": {"id": nsg.id},
                "ipConfigurations": [{"name": f"ipconfig{spec.vm_name}", "properties": {
                    "subnet": {"id": subnet_id}, "publicIPAddress": {"id": pip.id},
                    "privateIPAllocationMethod": "Dynamic"}}]}}).result()
        # The tag carries the formula's name even when the vault was misnamed (one defect at once).
        tags = spec.expected_tags(spec.vault_name(self.lab.group_id))
        if "vm-tags" in self.defects:
            tags.pop("vault")
        body = {
            "location": loc, "tags": tags,
            "properties": {
                "hardwareProfile": {"vmSize": "Standard_D2s_v5"},
                "storageProfile": {
                    "imageReference": DEBIAN if "vm" in self.defects else UBUNTU,
                    "osDisk": {"name": spec.os_disk, "createOption": "FromImage",
                               "managedDisk": {"storageAccountType": "Premium_LRS"}}},
                "osProfile": {"computerName": spec.vm_name, "adminUsername": self.lab.admin_user,
                              "linuxConfiguration": {
                                  "disablePasswordAuthentication": True,
                                  "ssh": {"publicKeys": [{
                                      "path": f"/home/{self.lab.admin_user}/.ssh/authorized_keys",
                                      "keyData": self.ssh_public_key}]}}},
                "networkProfile": {"networkInterfaces": [{"id": nic.id}]},
            }}
        if "vm-identity" not in self.defects:
            body["identity"] = {"type": "SystemAssigned"}
        vm = self.c.compute.virtual_machines.begin_create_or_update(
            g, spec.vm_name, body).result()
        self.lab.identity = vm.identity.principal_id if vm.identity else None
        self.lab.public_ip = net.public_ip_addresses.get(g, spec.public_ip).properties.ip_address

    def _in_vm(self, command: str, timeout: float = 300) -> None:
        if "ssh" in self.defects or not self.lab.public_ip:
            self.lab.notes.append(f"not run in the VM (no SSH): {command}")
            return
        conn = VmConnection(SshTarget(self.lab.public_ip, self.lab.admin_user, self.ssh_port,
                                      self.ssh_key_path))
        try:
            result = conn.run(command, timeout=timeout)
        finally:
            conn.close()
        if not result.ok:
            self.lab.notes.append(f"`{command}` exited {result.exit_code}: "
                                  f"{result.stderr.strip()[-200:]}")

    def install_jq(self) -> None:
        if "jq" not in self.defects:
            self._in_vm("sudo apt update && sudo apt install jq -y")

    def _assign(self, scope: str, role: str, principal: str) -> None:
        import uuid

        self.c.authorization.role_assignments.create(scope, str(uuid.uuid4()), {
            "role_definition_id": f"/subscriptions/{self.subscription_id}/providers/"
                                  f"Microsoft.Authorization/roleDefinitions/{role}",
            "principal_id": principal, "principal_type": "ServicePrincipal"})

    def reader_assignment(self) -> None:
        if self.lab.identity and "reader-assignment" not in self.defects:
            self._assign(self.lab.group_id, READER, self.lab.identity)

    def identity_access_policy(self) -> None:
        if not self.lab.identity or "identity-access-policy" in self.defects:
            return
        secrets = ["get", "list"] if "vault-denied-before" in self.defects else ["get"]
        self.c.keyvault.vaults.update_access_policy(
            self.lab.group, self.lab.vault_name, "add",
            {"properties": {"accessPolicies": [self._policy(self.lab.identity, secrets)]}})

    def _graph(self, method: str, path: str, body: dict | None = None) -> dict:
        import requests

        token = self.credential.get_token("https://graph.microsoft.com/.default").token
        r = requests.request(method, f"https://graph.microsoft.com/v1.0{path}", json=body,
                             headers={"Authorization": f"Bearer {token}"}, timeout=60)
        r.raise_for_status()
        return r.json() if r.content else {}

    def service_principal(self) -> None:
        # `az ad sp create-for-rbac --name "http://contributor-$uniq" --role Contributor
        #  --scope $resourceGroupId`: $uniq is never set in the lab, so the name is literal.
        app = self._graph("POST", "/applications", {"displayName": "http://contributor-",
                                                    "tags": ["milab"]})
        password = self._graph("POST", f"/applications/{app['id']}/addPassword",
                               {"passwordCredential": {"displayName": "rbac"}})
        sp = self._graph("POST", "/servicePrincipals", {"appId": app["appId"]})
        self.lab.sp_app_id = app["appId"]
        role = READER if "service-principal" in self.defects else CONTRIBUTOR
        self._assign(self.lab.group_id, role, sp["id"])
        creds = {"appId": app["appId"], "displayName": app["displayName"],
                 "password": password["secretText"], "tenant": self.tenant_id}
        stored = dict(creds)
        if "sp-secrets" in self.defects:
            stored["appId"] = "00000000-0000-0000-0000-000000000000"
        client = self._secrets()
        client.set_secret("tenant-id", creds["tenant"])
        client.set_secret("client-id", creds["appId"])
        client.set_secret("client-secret", creds["password"])
        client.set_secret("service-principal", json.dumps(stored, separators=(",", ":")))
        if "sp-login" in self.defects:
            self._graph("POST", f"/applications/{app['id']}/removePassword",
                        {"keyId": password["keyId"]})

    def install_azure_cli(self) -> None:
        if self.install_az and "az-cli" not in self.defects:
            self._in_vm("curl -sL https://aka.ms/InstallAzureCLIDeb | sudo bash", timeout=600)

    def finish(self) -> None:
        if "operator-access-policy" in self.defects:
            # The operator set its secrets, then its own policy lost `list` and `set`.
            self.c.keyvault.vaults.update_access_policy(
                self.lab.group, self.lab.vault_name, "remove",
                {"properties": {"accessPolicies": [self._policy(self.operator, ["list", "set"])]}})


def build_demo_lab(azure, groups, *, defects=(), spec: LabSpec | None = None,
                   wait: float = 0.0) -> Path:
    """Build complete labs in a started `LocalAzure` as its operator; return the SSH key path
    that reaches their VMs."""
    from azure.identity import ClientSecretCredential

    key_path = Path(azure.workdir) / "grader-ssh" / "id_ed25519"
    pub_path = key_path.with_name(key_path.name + ".pub")
    public = (pub_path.read_text().strip() if pub_path.exists()
              else generate_key_pair(key_path))
    op = azure.operator
    port = int(azure.env.get("MILAB_SSH_PORT", "22"))
    with azure.environment():
        credential = ClientSecretCredential(op.tenant_id, op.client_id, op.client_secret)
        for group in groups:
            LabBuilder(credential, azure.subscription_id, azure.tenant_id, op.object_id, group,
                       spec=spec, ssh_public_key=public, ssh_key_path=str(key_path),
                       ssh_port=port, defects=defects,
                       install_az=bool(getattr(azure, "az_cli", None))).build()
    if wait:
        time.sleep(wait)
    return key_path
