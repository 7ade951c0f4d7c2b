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


def covers(scope: Any, target: Any) -> bool:
    """Whether a role assignment at `scope` applies to `target` (the same scope or one under
    it; ARM ids compare case-insensitively)."""
    scope, target = str(scope or "").rstrip("/").lower(), str(target or "").rstrip("/").lower()
    return scope == "" or target == scope or target.startswith(scope + "/")


def secret_names(listed: Any) -> set[str]:
    """The names, lower case, of the secrets in ARM's list of a vault's secrets
    (`.../vaults/{vault}/secrets`, names and attributes only: ARM never shows a value)."""
    return {str(s.get("name")).lower() for s in listed or []
            if isinstance(s, dict) and s.get("name")}


# Built-in roles whose data actions read a secret's value in an RBAC-model vault ("Azure
# built-in roles", Security).
SECRET_READERS = {"key vault secrets user", "key vault secrets officer", "key vault administrator"}
# Built-in roles that may write on the control plane ("Azure built-in roles").
WRITERS = {"owner", "contributor", "user access administrator",
           "azure connected machine onboarding", "azure connected machine resource administrator"}


def may_get_secrets(vault: Any, assignments: list[dict], principal_id: str | None) -> bool:
    """Whether ARM shows that a principal may read secrets' values in a vault: with access
    policies, a policy granting it `get`; with the RBAC model, a secrets-reading role at the
    vault or above."""
    if not isinstance(vault, dict) or not principal_id:
        return False
    if props(vault).get("enableRbacAuthorization"):
        return any(str(ra.get("roleName", "")).lower() in SECRET_READERS
                   and covers(ra.get("scope"), vault.get("id"))
                   for ra in assignments_for(assignments, principal_id))
    return bool(secret_permissions(access_policy_for(vault, principal_id)) & {"get", "all"})


class IdentityGrants:
    """What ARM shows an identity may do in a lab, for a `Lab` subclass (mix it in) that has
    `role_assignments` (from `role_assignments()`), `vault`, `identity_principal_id`,
    `group_id` and a read named `vault_secrets` (ARM's list of the vault's secrets): the
    control plane against which the machine's word is held."""

    def assignments_for(self, principal_id: str | None, role: str | None = None) -> list[dict]:
        return assignments_for(self.role_assignments, principal_id, role)

    @property
    def vault_secret_names(self) -> set[str]:
        """The names (lower case) of the secrets ARM lists in the lab's vault."""
        return secret_names(self.read("vault_secrets"))

    def identity_may_get_secrets(self) -> bool:
        """Whether ARM shows the identity may read secrets' values in the lab's vault."""
        return may_get_secrets(self.vault, self.role_assignments, self.identity_principal_id)

    def identity_roles_on_group(self) -> list[dict]:
        """The identity's role assignments that apply to the group (at it or above)."""
        return [ra for ra in self.assignments_for(self.identity_principal_id)
                if covers(ra.get("scope"), self.group_id)]

    def identity_roles_on_subscription(self) -> list[dict]:
        """The identity's role assignments at the group's subscription or above."""
        subscription = "/".join(str(self.group_id or "").split("/")[:3])
        return [ra for ra in self.assignments_for(self.identity_principal_id)
                if covers(ra.get("scope"), subscription)]

    def read_only_grant_problem(self) -> str | None:
        """What in ARM's role assignments contradicts a read-only grant to the identity on the
        group (a role above the group, none on it, or one that writes), or None."""
        wider = self.identity_roles_on_subscription()
        if wider:
            return (f"ARM shows the identity holds {wider[0]['roleName']} at {wider[0]['scope']}, "
                    "yet the machine reports no permission beyond the group")
        roles = self.identity_roles_on_group()
        if not roles:
            return ("ARM shows no role for the identity on the group, yet the machine reports "
                    "read permissions there")
        writers = sorted({ra["roleName"] for ra in roles
                          if str(ra["roleName"]).lower() in WRITERS})
        if writers:
            return (f"ARM shows the identity holds {', '.join(writers)} on the group, yet the "
                    "machine reports read-only permissions")
        return None
