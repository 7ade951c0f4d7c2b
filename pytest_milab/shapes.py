"""Azure's JSON shapes, read the way checks need them: a resource's system-assigned identity,
a vault's access policies, role assignments with their role's name, the `value` list and the
permitted actions of an answer the probe brought back. Azure's, not any lab's: suites share
them (`from pytest_milab import shapes`)."""

from __future__ import annotations

from typing import Any

from .azure.builtins import role_name


def props(resource: Any) -> dict:
    """A resource's `properties` ({} when absent)."""
    found = (resource or {}).get("properties") if isinstance(resource, dict) else None
    return found if isinstance(found, dict) else {}


def system_identity(resource: Any) -> str | None:
    """The principal id of a resource's system-assigned identity (a VM, an Arc machine)."""
    identity = (resource or {}).get("identity") if isinstance(resource, dict) else None
    identity = identity if isinstance(identity, dict) else {}
    if "systemassigned" not in str(identity.get("type", "")).lower().replace(" ", ""):
        return None
    return identity.get("principalId")


def access_policies(vault: Any) -> list[dict]:
    return [p for p in props(vault).get("accessPolicies") or [] if isinstance(p, dict)]


def access_policy_for(vault: Any, object_id: str | None) -> dict | None:
    """A vault's access policy for a principal, or None."""
    for policy in access_policies(vault):
        if object_id and str(policy.get("objectId", "")).lower() == object_id.lower():
            return policy
    return None


def secret_permissions(policy: Any) -> set[str]:
    """The secret permissions an access policy grants, lower case."""
    perms = (policy or {}).get("permissions") if isinstance(policy, dict) else None
    return {str(p).lower() for p in (perms or {}).get("secrets") or []}


def role_assignments(listed: Any) -> list[dict]:
    """Role assignments as ARM lists them, flattened, each with its built-in role's
    `roleName`."""
    out = []
    for ra in listed or []:
        if isinstance(ra, dict):
            flat = dict(ra.get("properties") or ra)
            flat["roleName"] = role_name(flat.get("roleDefinitionId", ""))
            out.append(flat)
    return out


def assignments_for(assignments: list[dict], principal_id: str | None,
                    role: str | None = None) -> list[dict]:
    """Those of `role_assignments(...)` held by a principal (and of a role, when given)."""
    return [ra for ra in assignments
            if principal_id and str(ra.get("principalId", "")).lower() == principal_id.lower()
            and (role is None or str(ra.get("roleName", "")).lower() == role.lower())]


def values(result: Any) -> list[dict]:
    """The `value` list of an ARM answer the probe brought back (`probe.http`)."""
    body = result.get("json") if isinstance(result, dict) else None
    listed = body.get("value") if isinstance(body, dict) else None
    return [v for v in listed or [] if isinstance(v, dict)]


def actions(result: Any) -> list[str]:
    """The actions a permissions answer (`.../providers/Microsoft.Authorization/permissions`)
    allows."""
    return [str(a) for p in values(result) for a in p.get("actions") or []]
