"""Test helpers for live VMs: put a VM and its network into the ARM model the way ARM stores them
(“Virtual Machines - Get (Compute REST API)”, “Public IP Addresses - Get (Network REST API)”), emit ARM's lifecycle events, and reach the VM over Fabric or its proxy.
"""

from __future__ import annotations

import io
import time
import uuid
from dataclasses import dataclass, field

import asyncssh
import fabric
import paramiko
import requests

from pytest_milab.emulator.state import arm_key

ALLOW_SSH = {"name": "default-allow-ssh", "properties": {
    "direction": "Inbound", "access": "Allow", "protocol": "Tcp", "priority": 1000,
    "sourceAddressPrefix": "*", "sourcePortRange": "*", "destinationAddressPrefix": "*",
    "destinationPortRange": "22"}}
LAB_TAGS = {"site": "citadel", "lab": "identity", "vault": "keyvault-1a2b3c4d"}


def client_key() -> tuple[paramiko.PKey, str]:
    """A fresh ed25519 key: paramiko's object for Fabric and the OpenSSH public line for ARM."""
    key = asyncssh.generate_private_key("ssh-ed25519", comment="student@laptop")
    pkey = paramiko.Ed25519Key(file_obj=io.StringIO(key.export_private_key().decode()))
    return pkey, key.export_public_key().decode().strip()


@dataclass
class LabVm:
    azure: object
    group: str
    name: str
    id: str
    nic_id: str
    nsg_id: str | None
    pip_id: str | None
    address: str | None
    user: str
    pkey: paramiko.PKey
    principal_id: str | None = None
    client_id: str | None = None
    user_assigned: list[dict] = field(default_factory=list)

    @property
    def key(self) -> str:
        return arm_key(self.id)

    @property
    def port(self) -> int:
        return self.azure.vms.ssh_port

    def connect(self, pkey: paramiko.PKey | None = None, user: str | None = None,
                timeout: float = 5) -> fabric.Connection:
        config = fabric.Config(overrides={"load_ssh_configs": False})
        return fabric.Connection(
            self.address, user=user or self.user, port=self.port, connect_timeout=timeout,
            connect_kwargs={"pkey": pkey or self.pkey, "look_for_keys": False,
                            "allow_agent": False},
            config=config)

    def run(self, command: str, **kwargs):
        """Run one command over a fresh SSH connection; never raises on a non-zero exit."""
        with self.connect() as conn:
            return conn.run(command, hide=True, warn=True, in_stream=False, **kwargs)

    def imds(self) -> requests.Session:
        """A client that reaches IMDS through this VM's egress proxy, as curl inside it does."""
        session = requests.Session()
        session.trust_env = False
        session.proxies = {"http": self.azure.vms.live(self.id).proxy_url()}
        return session

    # -- changes, made on the emulator's loop as ARM's handlers would -------------------------
    def mutate(self, change, event: str = "vm.changed") -> None:
        async def apply():
            with self.azure.cloud.lock:
                target = change(self.azure.cloud)
            self.azure.cloud.emit(event, target)
            await self.azure.vms.settled()
        self.azure.run(apply())

    def set_power(self, state: str) -> None:
        def change(cloud):
            cloud.vm_power[self.key] = state
            return cloud.resources[self.key]
        self.mutate(change)

    def set_ssh_rules(self, rules: list[dict]) -> None:
        def change(cloud):
            nsg = cloud.resources[arm_key(self.nsg_id)]
            nsg["properties"]["securityRules"] = rules
            return nsg
        self.mutate(change, "network.changed")

    def delete(self) -> None:
        def change(cloud):
            return cloud.resources.pop(self.key)
        self.mutate(change, "vm.deleted")
        self.azure.cloud.vm_power.pop(self.key, None)


def make_vm(azure, *, group: str | None = None, name: str = "ubuntu", user: str = "azureuser",
            identity: str = "SystemAssigned", sku: str = "Basic", nsg_rules=(ALLOW_SSH,),
            with_nsg: bool = True, with_public_ip: bool = True, tags: dict | None = None,
            user_assigned: int = 0, pkey=None, public_key: str | None = None) -> LabVm:
    """Insert a VM with vnet/subnet, NSG, public IP and NIC, as ARM would, and wait until live."""
    cloud = azure.cloud
    group = group or f"rg-{uuid.uuid4().hex[:8]}"
    base = f"/subscriptions/{azure.subscription_id}/resourceGroups/{group}/providers"
    vnet_id = f"{base}/Microsoft.Network/virtualNetworks/myVnet"
    subnet_id = f"{vnet_id}/subnets/mySubnet"
    nsg_id = f"{base}/Microsoft.Network/networkSecurityGroups/{name}NSG" if with_nsg else None
    pip_id = f"{base}/Microsoft.Network/publicIPAddresses/{name}-pip" if with_public_ip else None
    nic_id = f"{base}/Microsoft.Network/networkInterfaces/{name}VMNic"
    vm_id = f"{base}/Microsoft.Compute/virtualMachines/{name}"
    if pkey is None:
        pkey, public_key = client_key()
    address = cloud.allocate_ip() if with_public_ip else None
    resources = {
        vnet_id: {"id": vnet_id, "name": "myVnet", "type": "Microsoft.Network/virtualNetworks",
                  "location": "uksouth", "properties": {
                      "addressSpace": {"addressPrefixes": ["10.0.0.0/16"]},
                      "subnets": [{"id": subnet_id, "name": "mySubnet",
                                   "properties": {"addressPrefix": "10.0.0.0/24"}}]}},
        nic_id: {"id": nic_id, "name": f"{name}VMNic",
                 "type": "Microsoft.Network/networkInterfaces", "location": "uksouth",
                 "properties": {
                     "macAddress": "00-0D-3A-12-34-56",
                     "ipConfigurations": [{"name": "ipconfig1", "properties": {
                         "privateIPAddress": "10.0.0.4", "subnet": {"id": subnet_id},
                         **({"publicIPAddress": {"id": pip_id}} if pip_id else {})}}],
                     **({"networkSecurityGroup": {"id": nsg_id}} if nsg_id else {})}},
    }
    if nsg_id:
        resources[nsg_id] = {"id": nsg_id, "name": f"{name}NSG",
                             "type": "Microsoft.Network/networkSecurityGroups",
                             "location": "uksouth",
                             "properties": {"securityRules": [dict(r) for r in nsg_rules]}}
    if pip_id:
        resources[pip_id] = {"id": pip_id, "name": f"{name}-pip", "sku": {"name": sku},
                             "type": "Microsoft.Network/publicIPAddresses",
                             "location": "uksouth", "properties": {"ipAddress": address}}
    vm_identity, principal_id, client_id, uas = None, None, None, []
    if identity and "SystemAssigned" in identity:
        app = cloud.add_application(f"{name}-mi")
        sp = cloud.add_service_principal(app.app_id, name, kind="ManagedIdentity",
                                         mi_resource_id=vm_id)
        principal_id, client_id = sp.object_id, sp.app_id
        vm_identity = {"type": "SystemAssigned", "principalId": principal_id,
                       "tenantId": azure.tenant_id}
    for i in range(user_assigned):
        ua_id = f"{base}/Microsoft.ManagedIdentity/userAssignedIdentities/{name}-ua{i}"
        app = cloud.add_application(f"{name}-ua{i}")
        sp = cloud.add_service_principal(app.app_id, f"{name}-ua{i}", kind="ManagedIdentity",
                                         mi_resource_id=ua_id)
        resources[ua_id] = {"id": ua_id, "name": f"{name}-ua{i}", "location": "uksouth",
                            "type": "Microsoft.ManagedIdentity/userAssignedIdentities",
                            "properties": {"principalId": sp.object_id, "clientId": sp.app_id,
                                           "tenantId": azure.tenant_id}}
        uas.append({"id": ua_id, "principalId": sp.object_id, "clientId": sp.app_id})
    if uas:
        vm_identity = vm_identity or {"tenantId": azure.tenant_id}
        vm_identity["type"] = "SystemAssigned, UserAssigned" if principal_id else "UserAssigned"
        vm_identity["userAssignedIdentities"] = {
            u["id"]: {"principalId": u["principalId"], "clientId": u["clientId"]} for u in uas}
    resources[vm_id] = {
        "id": vm_id, "name": name, "type": "Microsoft.Compute/virtualMachines",
        "location": "uksouth", "tags": dict(LAB_TAGS if tags is None else tags),
        **({"identity": vm_identity} if vm_identity else {}),
        "properties": {
            "vmId": str(uuid.uuid4()),
            "hardwareProfile": {"vmSize": "Standard_D2s_v5"},
            "storageProfile": {
                "imageReference": {"publisher": "Canonical", "offer": "0001-com-ubuntu-server-jammy",
                                   "sku": "22_04-lts-gen2", "version": "latest",
                                   "exactVersion": "22.04.202405140"},
                "osDisk": {"osType": "Linux", "name": f"{name}-os", "createOption": "FromImage",
                           "caching": "ReadWrite", "diskSizeGB": 30,
                           "managedDisk": {"storageAccountType": "Premium_LRS",
                                           "id": f"{base}/Microsoft.Compute/disks/{name}-os"}},
                "dataDisks": []},
            "osProfile": {"computerName": name, "adminUsername": user, "linuxConfiguration": {
                "disablePasswordAuthentication": True,
                "ssh": {"publicKeys": [{"path": f"/home/{user}/.ssh/authorized_keys",
                                        "keyData": public_key}]}}},
            "networkProfile": {"networkInterfaces": [{"id": nic_id}]},
            "provisioningState": "Succeeded"}}

    async def insert():
        with cloud.lock:
            for rid, body in resources.items():
                cloud.resources[arm_key(rid)] = body
            cloud.vm_power[arm_key(vm_id)] = "running"
        cloud.emit("network.changed", resources[nic_id])
        cloud.emit("vm.changed", resources[vm_id])
        await azure.vms.settled()

    azure.run(insert())
    return LabVm(azure, group, name, vm_id, nic_id, nsg_id, pip_id, address, user, pkey,
                  principal_id, client_id, uas)


def wait_until(predicate, timeout: float = 10, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
