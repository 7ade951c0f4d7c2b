"""Microsoft.HybridCompute machines: servers outside Azure onboarded with Azure Arc.

The Connected Machine agent (`azcmagent connect`, see `machines/azcmagent.py`) creates the resource with a
PUT and a system-assigned identity; ARM makes that identity a service principal of kind
ManagedIdentity, as for a VM (public docs: "Authenticate against Azure resources with Azure
Arc-enabled servers"). `properties.status` is computed on every read: `Connected` while a live
machine's agent is linked to the resource and its HIMDS answers, `Disconnected` otherwise (Azure
shows Disconnected once the agent stops sending heartbeats). Deleting the resource deletes the
identity's service principal and the role assignments on the resource.
"""

from __future__ import annotations

import copy

from ..responses import iso
from ..state import new_guid
from .compute import invalid_parameter, resolve_identity
from .kinds import Ctx, Registry, Tracked

NS = "Microsoft.HybridCompute"
MACHINE_TYPE = f"{NS}/machines"
# What the platform sets or computes; a PUT or PATCH body cannot change these.
COMPUTED = {"provisioningState", "status", "lastStatusChange", "agentVersion", "errorDetails",
            "vmUuid", "displayName", "machineFqdn", "osName", "osVersion", "osType", "osSku",
            "domainName", "adFqdn", "dnsFqdn", "detectedProperties", "networkProfile"}
# What the agent reports about the server it runs on (the `agent` key of the PUT body is how
# the local agent passes them; Azure learns them from the agent's own channel). networkProfile
# is read-only in the REST API ("Machines - Get", api-version 2024-07-10):
# {"networkInterfaces": [{"ipAddresses": [{"address", "ipAddressVersion",
#                                          "subnet": {"addressPrefix"}}]}]}.
REPORTED = ("agentVersion", "machineFqdn", "osName", "osVersion", "osType", "osSku",
            "displayName", "domainName", "dnsFqdn", "vmUuid", "networkProfile")


class HybridMachines(Tracked):
    ns, types = NS, ("machines",)

    def build(self, ctx: Ctx, body: dict, existing: dict | None) -> dict:
        out = self.base(ctx, body, existing)
        given = body.get("properties") or {}
        old = (existing or {}).get("properties", {})
        if body.get("identity") is not None:
            kind = str((body["identity"] or {}).get("type") or "None")
            if kind.lower() not in ("systemassigned", "none"):
                raise invalid_parameter(f"The value '{kind}' of parameter 'identity.type' is "
                                        "invalid. Azure Arc-enabled servers support only a "
                                        "system-assigned identity.")
        props = {k: copy.deepcopy(v) for k, v in given.items() if k not in COMPUTED}
        reported = given.get("agent") if isinstance(given.get("agent"), dict) else {}
        props.pop("agent", None)
        for key in REPORTED:
            value = reported.get(key, old.get(key))
            if value is not None:
                props[key] = value
        props.setdefault("displayName", out["name"])
        props["vmId"] = old.get("vmId") or given.get("vmId") or new_guid()
        props["provisioningState"] = "Succeeded"
        props["lastStatusChange"] = old.get("lastStatusChange") or iso(ctx.cloud.now())
        props.setdefault("errorDetails", [])
        identity = resolve_identity(ctx, body.get("identity"), (existing or {}).get("identity"),
                                    out["id"], out["name"])
        if identity:
            out["identity"] = identity
        out["properties"] = props
        return out

    def present(self, ctx: Ctx, res: dict) -> dict:
        status = ctx.cloud.arc_status(res) if ctx.cloud.arc_status else "Disconnected"
        return {**res, "properties": {**res["properties"], "status": status}}

    def on_delete(self, ctx: Ctx, res: dict) -> None:
        principal = (res.get("identity") or {}).get("principalId")
        if principal:
            ctx.cloud.service_principals.pop(principal, None)
        ctx.emit("machine.deleted", res)


MACHINES = HybridMachines()
KINDS = (MACHINES,)


def register(registry: Registry) -> None:
    """Add this provider's resource types to an ARM's registry (arm.PROVIDERS lists the order)."""
    for kind in KINDS:
        registry.add(kind)
