"""What the engine reads of an Arc lab (all GETs), and where its server answers SSH."""

from __future__ import annotations

from pytest_milab import API, Machine, Read

RESOURCES = API["Microsoft.Resources"]
KEYVAULT = API["Microsoft.KeyVault"]
HYBRID_COMPUTE = API["Microsoft.HybridCompute"]
AUTHORIZATION = API["Microsoft.Authorization"]


def addresses(machine: dict | None) -> list[str]:
    """The addresses the Connected Machine agent reported (`properties.networkProfile`), IPv4
    first."""
    profile = ((machine or {}).get("properties") or {}).get("networkProfile") or {}
    found = [str(ip.get("address")) for nic in profile.get("networkInterfaces") or []
             for ip in nic.get("ipAddresses") or [] if ip.get("address")]
    return sorted(found, key=lambda a: ":" in a)


def _vault_id(r) -> str:
    return f"{r.group_id}/providers/Microsoft.KeyVault/vaults/{r.spec.vault_name(r.group_id)}"


READS = [
    Read("resources", "{group_id}/resources", RESOURCES, list=True),
    Read("vault", _vault_id, KEYVAULT),
    # The vault's secrets by name, as ARM shows them to a Reader (never their values): what
    # the VM reports reading is checked against it.
    Read("vault_secrets", lambda r: f"{_vault_id(r)}/secrets", KEYVAULT, list=True),
    Read("machine", "{group_id}/providers/Microsoft.HybridCompute/machines/{spec.machine_name}",
         HYBRID_COMPUTE),
    # Assignments at, above and below the group (ARM's list for a scope).
    Read("role_assignments", "{group_id}/providers/Microsoft.Authorization/roleAssignments",
         AUTHORIZATION, list=True),
]


def machine(spec, lab) -> Machine:
    """The Arc-enabled server at the address its agent reported, as the spec's user; a roster's
    `ssh_host`/`ssh_user` win (the engine applies them). Its identity's tokens come from HIMDS."""
    resource = lab.read("machine")
    if resource is None:
        return Machine.missing(f"there is no Arc-enabled server {spec.machine_name!r} in the "
                               "group")
    found = addresses(resource)
    # No address: the engine fails SSH with "no address" unless the roster gives ssh_host.
    return Machine(host=found[0] if found else None, user=spec.user, source="himds")
