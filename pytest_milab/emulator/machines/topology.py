"""Read-only views of a VM's network and identity in the ARM model: NICs, subnets, public IPs,
the NSG verdict for inbound SSH, and the managed identities IMDS can hand tokens for.

Everything is read from `cloud.resources` each time, so a change made through ARM (an NSG rule,
a removed identity) takes effect on the next question. Callers hold no references to the JSON.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from ..state import Cloud, arm_key

VM_TYPE = "microsoft.compute/virtualmachines"
# NSG source prefixes that name Azure-internal traffic; anything else (an address, a CIDR, `*`,
# `Internet`) is taken to include the student's machine, whose address the emulator cannot know.
INTERNAL_TAGS = ("virtualnetwork", "azureloadbalancer", "azurecloud", "gatewaymanager")


def props(resource: dict | None) -> dict:
    return (resource or {}).get("properties") or {}


def get(cloud: Cloud, resource_id: str | None) -> dict | None:
    if not resource_id:
        return None
    with cloud.lock:
        return cloud.resources.get(arm_key(resource_id))


def is_vm(resource: dict) -> bool:
    return str(resource.get("type", "")).lower() == VM_TYPE


def nics(cloud: Cloud, vm: dict) -> list[dict]:
    """The VM's network interfaces that exist, primary first."""
    refs = props(vm).get("networkProfile", {}).get("networkInterfaces") or []
    ordered = sorted(refs, key=lambda r: not (r.get("properties") or {}).get("primary", False))
    found = [get(cloud, ref.get("id")) for ref in ordered]
    return [nic for nic in found if nic is not None]


def ip_configurations(nic: dict) -> list[dict]:
    return [props(cfg) for cfg in props(nic).get("ipConfigurations") or []]


def subnet(cloud: Cloud, subnet_id: str | None) -> dict | None:
    """A subnet, stored either inside its vnet's `properties.subnets` or as its own resource."""
    if not subnet_id:
        return None
    own = get(cloud, subnet_id)
    if own is not None:
        return own
    vnet_id, _, name = subnet_id.rstrip("/").rpartition("/subnets/")
    for candidate in props(get(cloud, vnet_id)).get("subnets") or []:
        if str(candidate.get("name", "")).lower() == name.lower():
            return candidate
    return None


def public_ip(cloud: Cloud, ip_config: dict) -> dict | None:
    return get(cloud, (ip_config.get("publicIPAddress") or {}).get("id"))


def ssh_address(cloud: Cloud, vm: dict) -> tuple[str, dict] | None:
    """The public address SSH answers on and the NIC that carries it, if the VM has one."""
    for nic in nics(cloud, vm):
        for cfg in ip_configurations(nic):
            address = props(public_ip(cloud, cfg)).get("ipAddress")
            if address:
                return address, nic
    return None


def _nsgs_for(cloud: Cloud, nic: dict) -> list[dict]:
    """The NSGs traffic to this NIC passes: its subnet's, then its own (both must allow)."""
    ids = []
    for cfg in ip_configurations(nic):
        sub = subnet(cloud, (cfg.get("subnet") or {}).get("id"))
        nsg_ref = (props(sub).get("networkSecurityGroup") or (sub or {}).get("networkSecurityGroup")
                   or {})
        ids.append(nsg_ref.get("id"))
    ids.append((props(nic).get("networkSecurityGroup") or {}).get("id"))
    found = [get(cloud, i) for i in dict.fromkeys(i for i in ids if i)]
    return [nsg for nsg in found if nsg is not None]


def _port_matches(rule: dict, port: int) -> bool:
    ranges = list(rule.get("destinationPortRanges") or [])
    if rule.get("destinationPortRange"):
        ranges.append(rule["destinationPortRange"])
    for text in ranges:
        text = str(text).strip()
        if text == "*":
            return True
        low, _, high = text.partition("-")
        try:
            if int(low) <= port <= int(high or low):
                return True
        except ValueError:
            continue
    return False


def _source_matches(rule: dict) -> bool:
    sources = list(rule.get("sourceAddressPrefixes") or [])
    if rule.get("sourceAddressPrefix"):
        sources.append(rule["sourceAddressPrefix"])
    if not sources:
        return False
    for prefix in sources:
        text = str(prefix).strip().lower()
        if text in ("*", "any", "internet", "0.0.0.0/0"):
            return True
        if text in INTERNAL_TAGS or "." not in text and ":" not in text:
            continue  # a service tag for Azure-internal traffic
        try:
            ipaddress.ip_network(text, strict=False)
            return True
        except ValueError:
            continue
    return False


def nsg_allows_inbound(nsg: dict, port: int) -> bool:
    """The first inbound TCP rule by priority that covers the port decides; default is deny."""
    rules = [props(r) or r for r in props(nsg).get("securityRules") or []]
    inbound = [r for r in rules if str(r.get("direction", "")).lower() == "inbound"
               and str(r.get("protocol", "*")).lower() in ("*", "tcp", "any")
               and _port_matches(r, port) and _source_matches(r)]
    inbound.sort(key=lambda r: int(r.get("priority", 65000)))
    if not inbound:
        return False  # DenyAllInBound: the default rules admit only vnet and load-balancer traffic
    return str(inbound[0].get("access", "")).lower() == "allow"


def ssh_allowed(cloud: Cloud, nic: dict, port: int = 22) -> bool:
    """Inbound TCP 22 passes every NSG on the path; a NIC with no NSG at all is open."""
    return all(nsg_allows_inbound(nsg, port) for nsg in _nsgs_for(cloud, nic))


# -- managed identities ----------------------------------------------------------------------


@dataclass(frozen=True)
class ManagedIdentity:
    """One identity a VM can ask IMDS for: its principal and app ids and its `xms_mirid`."""

    principal_id: str
    client_id: str
    resource_id: str  # the VM (system-assigned) or the identity resource (user-assigned)
    user_assigned: bool


def mirid(resource_id: str) -> str:
    """Resource ids as tokens carry them: a lower-case `resourcegroups` segment (“Microsoft identity platform access token claims reference”)."""
    return re.sub(r"/resourcegroups/", "/resourcegroups/", resource_id, flags=re.I)


def identity_types(vm: dict) -> set[str]:
    raw = str((vm.get("identity") or {}).get("type") or "")
    return {part.strip().lower() for part in raw.split(",") if part.strip()}


def system_identity(cloud: Cloud, vm: dict) -> ManagedIdentity | None:
    if "systemassigned" not in identity_types(vm):
        return None
    principal_id = (vm.get("identity") or {}).get("principalId")
    sp = cloud.principal(principal_id) if principal_id else None
    if sp is None:
        return None
    return ManagedIdentity(sp.object_id, sp.app_id, vm["id"], False)


def user_identities(cloud: Cloud, vm: dict) -> list[ManagedIdentity]:
    if "userassigned" not in identity_types(vm):
        return []
    out = []
    for rid, info in ((vm.get("identity") or {}).get("userAssignedIdentities") or {}).items():
        stored = props(get(cloud, rid))
        principal_id = (info or {}).get("principalId") or stored.get("principalId")
        client_id = (info or {}).get("clientId") or stored.get("clientId")
        if principal_id and client_id:
            out.append(ManagedIdentity(principal_id, client_id, rid, True))
    return out
