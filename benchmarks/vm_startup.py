"""How fast a local Azure VM comes alive and how fast IMDS answers inside it.

Builds a VM through ARM's REST API (as the operator, through the local Azure's proxy), then
prints the time from the VM's PUT, and from each `start` action, to the first SSH command
returning; the median round trip of the lab's IMDS curl run N times inside one SSH command; and
the median time of a command the VM spawns, plain and in its own mount namespace (as root).
A plain script: `python benchmarks/vm_startup.py [--curls 50] [--cycles 5] [--spawns 40]`.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import asyncssh
import fabric
import paramiko
import requests

from pytest_milab.emulator import LocalAzure

ARM = "https://management.azure.com"
CURL = ('curl -s -o /dev/null -w "%{time_total}\\n" -H Metadata:true '
        '"http://169.254.169.254/metadata/instance?api-version=2020-09-01"')


class Arm:
    """Just enough of an ARM client: PUT and POST with the operator's token."""

    def __init__(self, azure: LocalAzure) -> None:
        op = azure.operator
        self.http = requests.Session()
        self.http.trust_env = False
        self.http.proxies = {"https": azure.env["HTTPS_PROXY"]}
        self.http.verify = str(azure.ca_path)
        token = self.http.post(
            f"https://login.microsoftonline.com/{azure.tenant_id}/oauth2/v2.0/token",
            data={"grant_type": "client_credentials", "client_id": op.client_id,
                  "client_secret": op.client_secret,
                  "scope": f"{ARM}/.default"}).json()["access_token"]
        self.http.headers["Authorization"] = f"Bearer {token}"
        self.base = f"/subscriptions/{azure.subscription_id}/resourceGroups/bench"

    def put(self, path: str, body: dict, version: str) -> dict:
        r = self.http.put(f"{ARM}{self.base}{path}?api-version={version}", json=body)
        r.raise_for_status()
        return r.json()

    def post(self, path: str, version: str) -> None:
        self.http.post(f"{ARM}{self.base}{path}?api-version={version}").raise_for_status()


def build_network(arm: Arm) -> tuple[str, str]:
    """Group, vnet, public IP and NIC (no NSG: open, as in Azure); returns (nic id, address)."""
    arm.put("", {"location": "uksouth"}, "2021-04-01")
    vnet = arm.put("/providers/Microsoft.Network/virtualNetworks/net", {
        "location": "uksouth", "properties": {
            "addressSpace": {"addressPrefixes": ["10.0.0.0/16"]},
            "subnets": [{"name": "sub", "properties": {"addressPrefix": "10.0.0.0/24"}}]}},
        "2023-09-01")
    pip = arm.put("/providers/Microsoft.Network/publicIPAddresses/pip", {
        "location": "uksouth", "sku": {"name": "Standard"},
        "properties": {"publicIPAllocationMethod": "Static"}}, "2023-09-01")
    nic = arm.put("/providers/Microsoft.Network/networkInterfaces/nic", {
        "location": "uksouth", "properties": {"ipConfigurations": [{"name": "ip", "properties": {
            "subnet": {"id": vnet["properties"]["subnets"][0]["id"]},
            "publicIPAddress": {"id": pip["id"]}}}]}}, "2023-09-01")
    return nic["id"], pip["properties"]["ipAddress"]


def vm_body(nic_id: str, public_key: str) -> dict:
    return {"location": "uksouth", "identity": {"type": "SystemAssigned"}, "properties": {
        "hardwareProfile": {"vmSize": "Standard_D2s_v5"},
        "storageProfile": {"imageReference": {
            "publisher": "Canonical", "offer": "0001-com-ubuntu-server-jammy",
            "sku": "22_04-lts-gen2", "version": "latest"},
            "osDisk": {"name": "bench-os", "createOption": "FromImage"}},
        "osProfile": {"computerName": "bench", "adminUsername": "azureuser",
                      "linuxConfiguration": {"disablePasswordAuthentication": True, "ssh": {
                          "publicKeys": [{"path": "/home/azureuser/.ssh/authorized_keys",
                                          "keyData": public_key}]}}},
        "networkProfile": {"networkInterfaces": [{"id": nic_id}]}}}


def connect(address: str, port: int, pkey) -> fabric.Connection:
    return fabric.Connection(address, user="azureuser", port=port, connect_timeout=5,
                             connect_kwargs={"pkey": pkey, "look_for_keys": False,
                                             "allow_agent": False},
                             config=fabric.Config(overrides={"load_ssh_configs": False}))


def until_ssh(address: str, port: int, pkey, t0: float) -> float:
    """Seconds from t0 until a command over SSH returns."""
    while True:
        try:
            with connect(address, port, pkey) as conn:
                conn.run("true", hide=True, in_stream=False)
            return time.perf_counter() - t0
        except Exception:
            if time.perf_counter() - t0 > 30:
                raise
            time.sleep(0.005)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--curls", type=int, default=50)
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--spawns", type=int, default=40)
    args = parser.parse_args()
    key = asyncssh.generate_private_key("ssh-ed25519")
    pkey = paramiko.Ed25519Key(file_obj=io.StringIO(key.export_private_key().decode()))
    with LocalAzure() as azure:
        port = azure.vms.ssh_port
        print(f"local Azure started in {azure.started_in * 1000:.0f} ms; SSH port {port}")
        arm = Arm(azure)
        nic_id, address = build_network(arm)
        vm_path = "/providers/Microsoft.Compute/virtualMachines/bench"
        t0 = time.perf_counter()
        vm = arm.put(vm_path, vm_body(nic_id, key.export_public_key().decode()), "2024-07-01")
        created = until_ssh(address, port, pkey, t0)
        print(f"VM PUT to SSH ready: {created * 1000:.0f} ms")
        starts = []
        for _ in range(args.cycles):
            arm.post(vm_path + "/deallocate", "2024-07-01")
            azure.run(azure.vms.settled())
            t0 = time.perf_counter()
            arm.post(vm_path + "/start", "2024-07-01")
            starts.append(until_ssh(address, port, pkey, t0))
        print(f"start action to SSH ready: median {statistics.median(starts) * 1000:.0f} ms "
              f"over {len(starts)} starts (each includes one SSH login, ~100 ms here)")
        with connect(address, port, pkey) as conn:
            t0 = time.perf_counter()
            out = conn.run(f"for i in $(seq {args.curls}); do {CURL}; done", hide=True,
                           in_stream=False).stdout
            wall = time.perf_counter() - t0
        times = [float(x) for x in out.split()]
        print(f"in-VM curl to IMDS: median {statistics.median(times) * 1000:.1f} ms, "
              f"max {max(times) * 1000:.1f} ms over {len(times)} calls "
              f"({wall / len(times) * 1000:.1f} ms each including curl's own start)")
        live = azure.vms.live(vm["id"])
        plain = azure.run(spawn(live, args.spawns, ["/bin/true"]))
        inside = azure.run(spawn(live, args.spawns, live._in_namespace(["/bin/true"])))
        print(f"a command spawned by the VM: median {plain:.2f} ms, {inside:.2f} ms in the VM's "
              f"own mount namespace (entering it: {inside - plain:+.2f} ms; as root only)")


async def spawn(live, n: int, argv: list[str]) -> float:
    """The median time (ms) of spawning and waiting for a command on the VM's spawn path."""
    from pytest_milab.emulator.machines import spawn as vm_spawn

    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        proc = await vm_spawn.start(argv, cwd=live.home)
        await proc.wait()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


if __name__ == "__main__":
    main()
