"""How fast a local Azure VM comes alive and how fast IMDS answers inside it.

Prints the time from ARM's `vm.changed` (power on) to the first SSH command returning, over a
few start/stop cycles, and the median round trip of the lab's IMDS curl run N times inside one
SSH command. A plain script: `python benchmarks/vm_startup.py [--curls 50] [--cycles 5]`.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
import uuid

import asyncssh
import fabric
import paramiko

from pytest_milab.emulator import LocalAzure
from pytest_milab.emulator.state import arm_key

CURL = ('curl -s -o /dev/null -w "%{time_total}\\n" -H Metadata:true '
        '"http://169.254.169.254/metadata/instance?api-version=2020-09-01"')


def insert_vm(azure: LocalAzure, public_key: str) -> tuple[str, str]:
    """A VM with a NIC and a public IP (no NSG: open), stored as ARM stores them; powered off."""
    base = f"/subscriptions/{azure.subscription_id}/resourceGroups/bench/providers"
    vm_id = f"{base}/Microsoft.Compute/virtualMachines/bench-{uuid.uuid4().hex[:6]}"
    nic_id = f"{base}/Microsoft.Network/networkInterfaces/bench-nic"
    pip_id = f"{base}/Microsoft.Network/publicIPAddresses/bench-pip"
    address = azure.cloud.allocate_ip()
    with azure.cloud.lock:
        azure.cloud.resources[arm_key(pip_id)] = {
            "id": pip_id, "name": "bench-pip", "type": "Microsoft.Network/publicIPAddresses",
            "sku": {"name": "Standard"}, "properties": {"ipAddress": address}}
        azure.cloud.resources[arm_key(nic_id)] = {
            "id": nic_id, "name": "bench-nic", "type": "Microsoft.Network/networkInterfaces",
            "properties": {"ipConfigurations": [{"properties": {
                "privateIPAddress": "10.0.0.4", "publicIPAddress": {"id": pip_id}}}]}}
        azure.cloud.resources[arm_key(vm_id)] = {
            "id": vm_id, "name": "bench", "type": "Microsoft.Compute/virtualMachines",
            "location": "uksouth", "tags": {},
            "properties": {"vmId": str(uuid.uuid4()), "osProfile": {
                "computerName": "bench", "adminUsername": "azureuser",
                "linuxConfiguration": {"ssh": {"publicKeys": [{"keyData": public_key}]}}},
                "networkProfile": {"networkInterfaces": [{"id": nic_id}]}}}
        azure.cloud.vm_power[arm_key(vm_id)] = "stopped"
    return vm_id, address


def set_power(azure: LocalAzure, vm_id: str, state: str) -> None:
    def change() -> None:
        azure.cloud.vm_power[arm_key(vm_id)] = state
        azure.cloud.emit("vm.changed", azure.cloud.resources[arm_key(vm_id)])
    azure._loop.call_soon_threadsafe(change)


def connect(address: str, port: int, pkey) -> fabric.Connection:
    return fabric.Connection(address, user="azureuser", port=port, connect_timeout=5,
                             connect_kwargs={"pkey": pkey, "look_for_keys": False,
                                             "allow_agent": False},
                             config=fabric.Config(overrides={"load_ssh_configs": False}))


def start_to_ready(azure: LocalAzure, vm_id: str, address: str, pkey) -> float:
    t0 = time.perf_counter()
    set_power(azure, vm_id, "running")
    while True:
        try:
            with connect(address, azure.vms.ssh_port, pkey) as conn:
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
    args = parser.parse_args()
    key = asyncssh.generate_private_key("ssh-ed25519")
    pkey = paramiko.Ed25519Key(file_obj=io.StringIO(key.export_private_key().decode()))
    with LocalAzure() as azure:
        print(f"local Azure started in {azure.started_in * 1000:.0f} ms; "
              f"SSH port {azure.vms.ssh_port}")
        vm_id, address = insert_vm(azure, key.export_public_key().decode())
        ready = []
        for _ in range(args.cycles):
            ready.append(start_to_ready(azure, vm_id, address, pkey))
            set_power(azure, vm_id, "stopped")
            azure.run(azure.vms.settled())
        print(f"start to SSH ready: first {ready[0] * 1000:.0f} ms, "
              f"median {statistics.median(ready) * 1000:.0f} ms over {len(ready)} starts")
        start_to_ready(azure, vm_id, address, pkey)
        with connect(address, azure.vms.ssh_port, pkey) as conn:
            t0 = time.perf_counter()
            out = conn.run(f"for i in $(seq {args.curls}); do {CURL}; done", hide=True,
                           in_stream=False).stdout
            wall = time.perf_counter() - t0
        times = [float(x) for x in out.split()]
        print(f"in-VM curl to IMDS: median {statistics.median(times) * 1000:.1f} ms, "
              f"max {max(times) * 1000:.1f} ms over {len(times)} calls "
              f"({wall / len(times) * 1000:.1f} ms each including process start)")


if __name__ == "__main__":
    main()
