"""What the engine reads of a managed-identity lab (all GETs), and where its VM answers SSH."""

from __future__ import annotations

from pytest_milab import API, Machine, Read, shapes

RESOURCES = API["Microsoft.Resources"]
KEYVAULT = API["Microsoft.KeyVault"]
COMPUTE = API["Microsoft.Compute"]
NETWORK = API["Microsoft.Network"]
AUTHORIZATION = API["Microsoft.Authorization"]


def parse_id(resource_id: str) -> dict[str, str]:
    parts = resource_id.strip("/").split("/")
    return {parts[i].lower(): parts[i + 1] for i in range(0, len(parts) - 1, 2)}


def ip_config(nic) -> dict:
    configs = shapes.props(nic).get("ipConfigurations") or []
    return shapes.props(configs[0]) if configs else {}


def subnet_id(nic) -> str | None:
    return (ip_config(nic).get("subnet") or {}).get("id")


def _nic_id(r):
    nics = (shapes.props(r.got("vm")).get("networkProfile") or {}).get("networkInterfaces") or []
    return nics[0].get("id") if nics else None


def _vnet_id(r):
    subnet = subnet_id(r.got("nic"))
    if not subnet:
        return None
    ids = parse_id(subnet)
    return (f"/subscriptions/{ids['subscriptions']}/resourceGroups/{ids['resourcegroups']}"
            f"/providers/Microsoft.Network/virtualNetworks/{ids['virtualnetworks']}")


def _nic_nsg(r):
    return (shapes.props(r.got("nic")).get("networkSecurityGroup") or {}).get("id")


def _subnet_nsg(r):
    subnet = (subnet_id(r.got("nic")) or "").lower()
    for s in shapes.props(r.got("vnet")).get("subnets") or []:
        if str(s.get("id", "")).lower() == subnet:
            nsg = (shapes.props(s).get("networkSecurityGroup") or {}).get("id")
            # Read once, however many places refer to it.
            return nsg if nsg and nsg.lower() != str(_nic_nsg(r) or "").lower() else None
    return None


def _vault_id(r) -> str:
    return f"{r.group_id}/providers/Microsoft.KeyVault/vaults/{r.spec.vault_name(r.group_id)}"


READS = [
    Read("resources", "{group_id}/resources", RESOURCES, list=True),
    Read("vault", _vault_id, KEYVAULT),
    # The vault's secrets by name, as ARM shows them to a Reader (never their values): what
    # the VM reports reading is checked against it.
    Read("vault_secrets", lambda r: f"{_vault_id(r)}/secrets", KEYVAULT, list=True),
    Read("vm", "{group_id}/providers/Microsoft.Compute/virtualMachines/{spec.vm_name}", COMPUTE),
    # Assignments at, above and below the group (ARM's list for a scope).
    Read("role_assignments", "{group_id}/providers/Microsoft.Authorization/roleAssignments",
         AUTHORIZATION, list=True),
    Read("nic", _nic_id, NETWORK, after=("vm",)),
    Read("public_ip", lambda r: (ip_config(r.got("nic")).get("publicIPAddress") or {}).get("id"),
         NETWORK, after=("nic",)),
    Read("vnet", _vnet_id, NETWORK, after=("nic",)),
    Read("nic_nsg", _nic_nsg, NETWORK, after=("nic",)),
    Read("subnet_nsg", _subnet_nsg, NETWORK, after=("nic", "vnet")),
]


def machine(spec, lab) -> Machine:
    """The VM at its public IP, as its admin user; its NSGs explain a refused SSH."""
    vm = lab.read("vm")
    if vm is None:
        return Machine.missing(f"there is no VM {spec.vm_name!r}")
    nsgs = []
    for name in ("nic_nsg", "subnet_nsg"):
        try:
            nsgs.append(lab.read(name))
        except Exception:  # noqa: BLE001 - an unreadable NSG explains nothing
            continue
    host = shapes.props(lab.read("public_ip")).get("ipAddress")
    user = (shapes.props(vm).get("osProfile") or {}).get("adminUsername")
    return Machine(host=host, user=user, nsgs=[n for n in nsgs if n],
                   instance_view=f"{vm['id']}/instanceView")
