"""Microsoft.Network: virtual networks (subnets), NSGs (security rules), public IPs and NICs.

Children live inline in their parent as the Network RP keeps them, and are also addressable as
`…/subnets/{name}` and `…/securityRules/{name}`. A change to an NSG, NIC, public IP or virtual
network emits `network.changed` so live VMs can follow. Error texts beyond the codes are
UNCONFIRMED unless noted.
"""

from __future__ import annotations

import copy
import ipaddress
import itertools
import secrets

from ..state import Cloud, arm_key, new_guid
from .kinds import (
    ArmError,
    Ctx,
    InlineChild,
    Registry,
    Tracked,
    etag,
    invalid_reference,
    referrers,
)

NS = "Microsoft.Network"
SUBNET = f"{NS}/virtualNetworks/subnets"
NSG = f"{NS}/networkSecurityGroups"
PIP = f"{NS}/publicIPAddresses"
NIC = f"{NS}/networkInterfaces"
READ_ONLY = {"provisioningState", "resourceGuid", "ipConfigurations", "ipConfigurationProfiles",
             "purpose", "networkInterfaces", "subnets", "etag"}


def find_any(cloud: Cloud, rid: str) -> dict | None:
    """A stored resource or an inline child of one (e.g. a subnet) by id."""
    key = arm_key(rid)
    if key in cloud.resources:
        return cloud.resources[key]
    head, sep, tail = rid.partition("/providers/")
    parts = tail.split("/")
    if not sep or len(parts) < 5 or len(parts) % 2 == 0:
        return None
    node = cloud.resources.get(arm_key(f"{head}/providers/{'/'.join(parts[:3])}"))
    for child_type, child_name in zip(parts[3::2], parts[4::2], strict=False):
        if node is None:
            return None
        node = next((c for c in node.get("properties", {}).get(child_type, [])
                     if c.get("name", "").lower() == child_name.lower()), None)
    return node


def reference(ctx: Ctx, value: object, type_name: str) -> dict:
    """`{"id": …}` for a reference that must name an existing resource of `type_name`."""
    rid = value.get("id") if isinstance(value, dict) else None
    if not isinstance(rid, str) or not rid:
        raise invalid_reference(ctx, str(value))
    found = find_any(ctx.cloud, rid)
    if found is None or found.get("type", "").lower() != type_name.lower():
        raise invalid_reference(ctx, rid)
    return {"id": rid}


def _writable(props: dict) -> dict:
    return {k: copy.deepcopy(v) for k, v in props.items() if k not in READ_ONLY}


def _bad_request(message: str) -> ArmError:
    return ArmError(400, "InvalidRequestFormat", message)


# -- virtual networks and subnets -----------------------------------------------------------------
class VirtualNetworks(Tracked):
    ns, types = NS, ("virtualNetworks",)
    long_running = True

    def build(self, ctx: Ctx, body: dict, existing: dict | None) -> dict:
        out = self.base(ctx, body, existing)
        props = body.get("properties") or {}
        old = (existing or {}).get("properties", {})
        subnets = [self._subnet(ctx, out["id"], s) for s in props.get("subnets") or []]
        kept = {s["name"].lower() for s in subnets}
        for gone in (s for s in old.get("subnets", []) if s["name"].lower() not in kept):
            users = referrers(ctx.cloud, gone["id"])
            if users:
                raise ArmError(400, "InUseSubnetCannotBeDeleted",
                               f"Subnet {gone['name']} is in use by {users[0][1]} and cannot be "
                               "deleted. In order to delete the subnet, delete all the resources "
                               "within the subnet. See aka.ms/deletesubnet.")
        out["etag"] = etag()
        out["properties"] = {
            **_writable(props),
            "provisioningState": "Succeeded",
            "resourceGuid": old.get("resourceGuid") or new_guid(),
            "addressSpace": props.get("addressSpace") or {"addressPrefixes": []},
            "subnets": subnets,
            "virtualNetworkPeerings": props.get("virtualNetworkPeerings") or [],
            "enableDdosProtection": bool(props.get("enableDdosProtection", False)),
        }
        return out

    def _subnet(self, ctx: Ctx, vnet_id: str, subnet: dict) -> dict:
        name = subnet.get("name")
        if not name:
            raise _bad_request("Subnet name is required.")
        props = _writable(subnet.get("properties") or {})
        if props.get("networkSecurityGroup"):
            props["networkSecurityGroup"] = reference(ctx, props["networkSecurityGroup"], NSG)
        props.setdefault("delegations", [])
        props.setdefault("privateEndpointNetworkPolicies", "Disabled")
        props.setdefault("privateLinkServiceNetworkPolicies", "Enabled")
        return {"id": f"{vnet_id}/subnets/{name}", "name": name, "etag": etag(),
                "properties": {"provisioningState": "Succeeded", **props}, "type": SUBNET}

    def after_put(self, ctx: Ctx, res: dict, existing: dict | None) -> None:
        ctx.emit("network.changed", res)  # subnet NSGs decide what reaches a VM

    def check_delete(self, ctx: Ctx, res: dict) -> None:
        users = referrers(ctx.cloud, res["id"])
        if users:
            subnet = users[0][1].split("/subnets/")[-1].split("/")[0]
            raise ArmError(400, "InUseSubnetCannotBeDeleted",
                           f"Subnet {subnet} is in use by {users[0][0]['id']} and cannot be "
                           "deleted. In order to delete the subnet, delete all the resources "
                           "within the subnet. See aka.ms/deletesubnet.")


class Subnets(InlineChild):
    """Deleting one in use fails in VirtualNetworks.build (InUseSubnetCannotBeDeleted)."""

    ns, types, prop = NS, ("virtualNetworks", "subnets"), "subnets"


# -- network security groups ----------------------------------------------------------------------
_DEFAULT_RULES = (
    ("AllowVnetInBound", "Allow inbound traffic from all VMs in VNET", "VirtualNetwork",
     "VirtualNetwork", "Allow", 65000, "Inbound"),
    ("AllowAzureLoadBalancerInBound", "Allow inbound traffic from azure load balancer",
     "AzureLoadBalancer", "*", "Allow", 65001, "Inbound"),
    ("DenyAllInBound", "Deny all inbound traffic", "*", "*", "Deny", 65500, "Inbound"),
    ("AllowVnetOutBound", "Allow outbound traffic from all VMs to all VMs in VNET",
     "VirtualNetwork", "VirtualNetwork", "Allow", 65000, "Outbound"),
    ("AllowInternetOutBound", "Allow outbound traffic from all VMs to Internet", "*", "Internet",
     "Allow", 65001, "Outbound"),
    ("DenyAllOutBound", "Deny all outbound traffic", "*", "*", "Deny", 65500, "Outbound"),
)
_RULE_LISTS = ("sourcePortRanges", "destinationPortRanges", "sourceAddressPrefixes",
               "destinationAddressPrefixes")


def _rule_json(nsg_id: str, collection: str, name: str, props: dict) -> dict:
    body = {"provisioningState": "Succeeded", **props}
    for key in _RULE_LISTS:
        body.setdefault(key, [])
    return {"id": f"{nsg_id}/{collection}/{name}", "name": name, "etag": etag(),
            "type": f"{NSG}/{collection}", "properties": body}


def default_rules(nsg_id: str) -> list[dict]:
    return [_rule_json(nsg_id, "defaultSecurityRules", name, {
        "description": text, "protocol": "*", "sourcePortRange": "*", "destinationPortRange": "*",
        "sourceAddressPrefix": src, "destinationAddressPrefix": dst, "access": access,
        "priority": prio, "direction": direction})
        for name, text, src, dst, access, prio, direction in _DEFAULT_RULES]


class NetworkSecurityGroups(Tracked):
    ns, types = NS, ("networkSecurityGroups",)
    long_running = True

    def build(self, ctx: Ctx, body: dict, existing: dict | None) -> dict:
        out = self.base(ctx, body, existing)
        props = body.get("properties") or {}
        old = (existing or {}).get("properties", {})
        rules = [self._rule(out["id"], r) for r in props.get("securityRules") or []]
        seen: dict[tuple[int, str], str] = {}
        for rule in rules:
            p = rule["properties"]
            slot = (p["priority"], str(p.get("direction", "")).lower())
            if slot in seen:
                raise ArmError(400, "SecurityRuleConflict",
                               f"Security rule {rule['name']} conflicts with rule {seen[slot]}. "
                               "Rules cannot have the same Priority and Direction. To learn more, "
                               "see aka.ms/nsgrules.")
            seen[slot] = rule["name"]
        out["etag"] = etag()
        out["properties"] = {
            **{k: v for k, v in _writable(props).items() if k != "defaultSecurityRules"},
            "provisioningState": "Succeeded",
            "resourceGuid": old.get("resourceGuid") or new_guid(),
            "securityRules": rules,
            "defaultSecurityRules": default_rules(out["id"]),
        }
        return out

    @staticmethod
    def _rule(nsg_id: str, rule: dict) -> dict:
        name = rule.get("name")
        if not name:
            raise _bad_request("Security rule name is required.")
        props = _writable(rule.get("properties") or {})
        try:
            priority = int(props.get("priority"))
        except (TypeError, ValueError):
            priority = 0
        if not 100 <= priority <= 4096:
            raise ArmError(400, "SecurityRuleInvalidPriority",
                           f"Security rule has invalid Priority. Value provided: "
                           f"{props.get('priority')} Allowed range 100-4096.")
        props["priority"] = priority
        return _rule_json(nsg_id, "securityRules", name, props)

    def after_put(self, ctx: Ctx, res: dict, existing: dict | None) -> None:
        ctx.emit("network.changed", res)

    def check_delete(self, ctx: Ctx, res: dict) -> None:
        users = referrers(ctx.cloud, res["id"])
        if users:
            raise ArmError(400, "InUseNetworkSecurityGroupCannotBeDeleted",
                           f"Network security group {res['id']} cannot be deleted because it is "
                           f"in use by the following resources: {users[0][1]}. In order to delete "
                           "the Network security group, remove the association with the "
                           "resource(s). To learn how to do this, see aka.ms/deletensg.")

    def on_delete(self, ctx: Ctx, res: dict) -> None:
        ctx.emit("network.changed", res)


class SecurityRules(InlineChild):
    ns, types, prop = NS, ("networkSecurityGroups", "securityRules"), "securityRules"


class DefaultSecurityRules(InlineChild):
    ns, types, prop = NS, ("networkSecurityGroups", "defaultSecurityRules"), "defaultSecurityRules"
    writable = False


# -- public IP addresses (“Public IP Addresses - Get (Network REST API)”) -------------------------
class PublicIPAddresses(Tracked):
    ns, types = NS, ("publicIPAddresses",)
    long_running = True

    def build(self, ctx: Ctx, body: dict, existing: dict | None) -> dict:
        out = self.base(ctx, body, existing)
        props = body.get("properties") or {}
        old = (existing or {}).get("properties", {})
        sku_in = body.get("sku") or {}
        sku = "Basic" if str(sku_in.get("name", "Standard")).lower() == "basic" else "Standard"
        out["sku"] = {"name": sku, "tier": sku_in.get("tier") or "Regional"}
        method = props.get("publicIPAllocationMethod") or ("Static" if sku == "Standard"
                                                           else "Dynamic")
        if sku == "Standard" and method.lower() != "static":
            raise ArmError(400, "StandardSkuPublicIPAddressesCannotBeDynamic",
                           f"Standard sku publicIp {out['id']} must be configured with static "
                           "allocation method.")
        new_props = {
            **_writable(props),
            "provisioningState": "Succeeded",
            "resourceGuid": old.get("resourceGuid") or new_guid(),
            # Assigned once at creation, also for Basic/Dynamic (Azure would wait for an
            # association): the VM's SSH server binds to this loopback address.
            "ipAddress": old.get("ipAddress") or ctx.cloud.allocate_ip(),
            "publicIPAddressVersion": props.get("publicIPAddressVersion") or "IPv4",
            "publicIPAllocationMethod": method,
            "idleTimeoutInMinutes": props.get("idleTimeoutInMinutes") or 4,
            "ipTags": props.get("ipTags") or [],
        }
        new_props.pop("ipConfiguration", None)
        if old.get("ipConfiguration"):
            new_props["ipConfiguration"] = old["ipConfiguration"]
        label = (props.get("dnsSettings") or {}).get("domainNameLabel")
        if label:
            new_props["dnsSettings"] = {"domainNameLabel": label,
                                        "fqdn": f"{label}.{out['location']}.cloudapp.azure.com"}
        out["etag"] = etag()
        out["properties"] = new_props
        return out

    def after_put(self, ctx: Ctx, res: dict, existing: dict | None) -> None:
        ctx.emit("network.changed", res)

    def check_delete(self, ctx: Ctx, res: dict) -> None:
        config = res["properties"].get("ipConfiguration")
        if config:
            raise ArmError(400, "PublicIPAddressInUse",
                           f"Public IP address {res['id']} can not be deleted since it is still "
                           f"allocated to resource {config['id']}. In order to delete the public "
                           "IP, disassociate/detach the Public IP address from the resource.  To "
                           "learn how to do this, see aka.ms/deletepublicip.")

    def on_delete(self, ctx: Ctx, res: dict) -> None:
        ctx.emit("network.changed", res)


# -- network interfaces ---------------------------------------------------------------------------
def _taken_ips(cloud: Cloud, subnet_id: str, except_nic: str) -> set[str]:
    taken = set()
    for key, res in cloud.resources.items():
        if res["type"] != NIC or key == arm_key(except_nic):
            continue
        for config in res["properties"].get("ipConfigurations", []):
            p = config["properties"]
            if arm_key(p.get("subnet", {}).get("id", "")) == arm_key(subnet_id):
                taken.add(p.get("privateIPAddress"))
    return taken


def allocate_private_ip(cloud: Cloud, subnet_id: str, nic_id: str) -> str:
    """The lowest free address of the subnet; Azure keeps the first four (x.0 to x.3)."""
    subnet = find_any(cloud, subnet_id) or {}
    props = subnet.get("properties", {})
    prefix = props.get("addressPrefix") or (props.get("addressPrefixes") or ["10.0.0.0/24"])[0]
    network = ipaddress.ip_network(prefix, strict=False)
    taken = _taken_ips(cloud, subnet_id, nic_id)
    for host in itertools.islice(network.hosts(), 3, None):
        if str(host) not in taken:
            return str(host)
    raise ArmError(400, "SubnetIsFull", f"Subnet {subnet_id} has no free IP addresses.")


def _mac() -> str:
    return "00-0D-3A-" + "-".join(f"{b:02X}" for b in secrets.token_bytes(3))


class NetworkInterfaces(Tracked):
    ns, types = NS, ("networkInterfaces",)
    long_running = True

    def build(self, ctx: Ctx, body: dict, existing: dict | None) -> dict:
        out = self.base(ctx, body, existing)
        props = body.get("properties") or {}
        old = (existing or {}).get("properties", {})
        configs_in = props.get("ipConfigurations") or []
        if not configs_in:
            raise _bad_request("A network interface needs at least one IP configuration.")
        old_configs = {c["name"].lower(): c for c in old.get("ipConfigurations", [])}
        configs = [self._config(ctx, out["id"], i, c, old_configs) for i, c in enumerate(configs_in)]
        new_props = {
            **{k: v for k, v in _writable(props).items() if k not in ("virtualMachine", "primary")},
            "provisioningState": "Succeeded",
            "resourceGuid": old.get("resourceGuid") or new_guid(),
            "ipConfigurations": configs,
            "dnsSettings": {"dnsServers": [], "appliedDnsServers": [],
                            "internalDomainNameSuffix": (old.get("dnsSettings") or {}).get(
                                "internalDomainNameSuffix")
                            or f"{secrets.token_hex(12)}.zx.internal.cloudapp.net"},
            "macAddress": old.get("macAddress") or _mac(),
            "enableAcceleratedNetworking": bool(props.get("enableAcceleratedNetworking", False)),
            "enableIPForwarding": bool(props.get("enableIPForwarding", False)),
            "disableTcpStateTracking": False, "nicType": "Standard", "hostedWorkloads": [],
            "tapConfigurations": [], "vnetEncryptionSupported": False,
        }
        if props.get("networkSecurityGroup"):
            new_props["networkSecurityGroup"] = reference(ctx, props["networkSecurityGroup"], NSG)
        for carried in ("virtualMachine", "primary"):  # set by the VM that uses this NIC
            if carried in old:
                new_props[carried] = old[carried]
        out["etag"] = etag()
        out["properties"] = new_props
        return out

    def _config(self, ctx: Ctx, nic_id: str, index: int, config: dict,
                old_configs: dict[str, dict]) -> dict:
        name = config.get("name") or f"ipconfig{index + 1}"
        cp = config.get("properties") or {}
        subnet = reference(ctx, cp.get("subnet"), SUBNET)
        old = old_configs.get(name.lower(), {}).get("properties", {})
        method = cp.get("privateIPAllocationMethod") or "Dynamic"
        if method.lower() == "static" and cp.get("privateIPAddress"):
            address = cp["privateIPAddress"]
        elif arm_key(old.get("subnet", {}).get("id", "-")) == arm_key(subnet["id"]):
            address = old["privateIPAddress"]
        else:
            address = allocate_private_ip(ctx.cloud, subnet["id"], nic_id)
        config_id = f"{nic_id}/ipConfigurations/{name}"
        props = {"provisioningState": "Succeeded", "privateIPAddress": address,
                 "privateIPAllocationMethod": method, "privateIPAddressVersion": "IPv4",
                 "subnet": subnet, "primary": bool(cp.get("primary", index == 0))}
        if cp.get("publicIPAddress"):
            props["publicIPAddress"] = reference(ctx, cp["publicIPAddress"], PIP)
            pip = ctx.cloud.resources[arm_key(props["publicIPAddress"]["id"])]
            holder = pip["properties"].get("ipConfiguration", {}).get("id", "")
            if holder and not arm_key(holder).startswith(arm_key(nic_id) + "/"):
                raise ArmError(400, "PublicIPAddressInUse",
                               f"Public IP address {pip['id']} is already in use by {holder}.")
        return {"id": config_id, "name": name, "etag": etag(),
                "type": f"{NIC}/ipConfigurations", "properties": props}

    def after_put(self, ctx: Ctx, res: dict, existing: dict | None) -> None:
        _sync_public_ips(ctx, res, existing)
        ctx.emit("network.changed", res)

    def check_delete(self, ctx: Ctx, res: dict) -> None:
        vm = res["properties"].get("virtualMachine")
        if vm:
            raise ArmError(400, "NicInUse",
                           f"Network Interface {res['id']} is used by existing resource "
                           f"{vm['id']}. In order to delete the network interface, it must be "
                           "dissociated from the resource. To learn more, see aka.ms/deletenic.")

    def on_delete(self, ctx: Ctx, res: dict) -> None:
        _sync_public_ips(ctx, None, res)
        ctx.emit("network.changed", res)


def _public_ips_of(nic: dict | None) -> dict[str, str]:
    """public IP key -> the ipConfiguration id that holds it."""
    out = {}
    for config in (nic or {}).get("properties", {}).get("ipConfigurations", []):
        pip = config["properties"].get("publicIPAddress")
        if pip:
            out[arm_key(pip["id"])] = config["id"]
    return out


def _sync_public_ips(ctx: Ctx, nic: dict | None, old_nic: dict | None) -> None:
    """Keep each public IP's `ipConfiguration` back-reference in step with the NICs."""
    wanted, before = _public_ips_of(nic), _public_ips_of(old_nic)
    for key in before.keys() - wanted.keys():
        pip = ctx.cloud.resources.get(key)
        if pip is not None and pip["properties"].pop("ipConfiguration", None) is not None:
            ctx.emit("network.changed", pip)
    for key, config_id in wanted.items():
        pip = ctx.cloud.resources.get(key)
        if pip is not None and pip["properties"].get("ipConfiguration") != {"id": config_id}:
            pip["properties"]["ipConfiguration"] = {"id": config_id}
            ctx.emit("network.changed", pip)


VNETS = VirtualNetworks()
NSGS = NetworkSecurityGroups()
NICS = NetworkInterfaces()
_CHILDREN = (Subnets(), SecurityRules(), DefaultSecurityRules())
for _child in _CHILDREN:
    _child.parent = VNETS if _child.types[0] == "virtualNetworks" else NSGS
KINDS = (VNETS, NSGS, PublicIPAddresses(), NICS, *_CHILDREN)


def register(registry: Registry) -> None:
    """Add this provider's resource types to an ARM's registry (arm.PROVIDERS lists the order)."""
    for kind in KINDS:
        registry.add(kind)
