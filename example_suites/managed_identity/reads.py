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


def first_nic_id(vm) -> str | None:
    """The id of the VM's first NIC (None without one)."""
    nics = (shapes.props(vm).get("networkProfile") or {}).get("networkInterfaces") or []
    return nics[0].get("id") if nics else None


def _nic_id(r):
    return first_nic_id(r.got("vm"))


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


def _pip_id(nic) -> str | None:
    """The id of the public IP on the NIC (its first IP configuration's)."""
    return (ip_config(nic).get("publicIPAddress") or {}).get("id")


def _listed(listed, resource_id: str | None) -> dict | None:
    """The resource of the group's list with this id (ARM's ids compare without case)."""
    wanted = str(resource_id or "").lower()
    return next((p for p in listed or () if isinstance(p, dict)
                 and str(p.get("id", "")).lower() == wanted), None) if wanted else None


def _pip_outside_group(r):
    """The NIC's public IP when the group's list does not have it (it lives elsewhere)."""
    pip = _pip_id(r.got("nic"))
    return None if pip is None or _listed(r.got("public_ips"), pip) else pip


def attached_public_ip(lab) -> dict | None:
    """The public IP on the VM's NIC (its first IP configuration's), as ARM shows it: from the
    group's public IPs, else read on its own (one in another group).

    While the lab is still being read, before the NIC is in (`lab.arrived`), the engine asks
    for the machine early: then it is the one of the group's public IPs that ARM shows held
    by an IP configuration of the VM's NIC (a public IP's `ipConfiguration` is ARM's, read
    only), if exactly one is. The lab read in full names it again the first way, and the
    grader's early login counts only if both agree."""
    listed = lab.read("public_ips")
    if lab.arrived("nic"):
        pip = _pip_id(lab.read("nic"))
        return None if pip is None else _listed(listed, pip) or lab.read("public_ip")
    nic = str(first_nic_id(lab.read("vm")) or "").lower()
    held = [p for p in listed or () if nic and isinstance(p, dict) and str(
        (shapes.props(p).get("ipConfiguration") or {}).get("id", "")).lower().startswith(
        nic + "/ipconfigurations/")]
    return held[0] if len(held) == 1 else lab.read("public_ip")  # in flight: asked again


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
    # The group's public IPs, with the first reads: the VM's address is known (and the grader
    # logs in) before its NIC is read; see `attached_public_ip`.
    Read("public_ips", "{group_id}/providers/Microsoft.Network/publicIPAddresses", NETWORK,
         list=True),
    Read("nic", _nic_id, NETWORK, after=("vm",)),
    Read("public_ip", _pip_outside_group, NETWORK, after=("nic", "public_ips")),
    # What keeps SSH out, read only if the VM refuses it (to tell the student why).
    Read("vnet", _vnet_id, NETWORK, after=("nic",), on_refusal=True),
    Read("nic_nsg", _nic_nsg, NETWORK, after=("nic",), on_refusal=True),
    Read("subnet_nsg", _subnet_nsg, NETWORK, after=("nic", "vnet"), on_refusal=True),
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
    host = shapes.props(attached_public_ip(lab)).get("ipAddress")
    user = (shapes.props(vm).get("osProfile") or {}).get("adminUsername")
    return Machine(host=host, user=user, nsgs=[n for n in nsgs if n],
                   instance_view=f"{vm['id']}/instanceView")
