"""Azure RBAC: built-in role definitions and the evaluation ARM and Key Vault apply per request.

An action is allowed at a scope when some assignment in force for the principal, at that scope
or above it, has a role whose `actions` match and whose `notActions` do not (`dataActions` and
`notDataActions` for data-plane operations). Matching is case-insensitive; `*` is a wildcard.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from .state import Cloud


@dataclass(frozen=True)
class RoleDefinition:
    guid: str
    role_name: str
    description: str
    actions: tuple[str, ...] = ()
    not_actions: tuple[str, ...] = ()
    data_actions: tuple[str, ...] = ()
    not_data_actions: tuple[str, ...] = field(default_factory=tuple)

    def permissions_json(self) -> dict:
        return {"actions": list(self.actions), "notActions": list(self.not_actions),
                "dataActions": list(self.data_actions),
                "notDataActions": list(self.not_data_actions)}

    def to_arm(self, scope: str) -> dict:
        scope = scope.rstrip("/")
        return {
            "id": f"{scope}/providers/Microsoft.Authorization/roleDefinitions/{self.guid}",
            "name": self.guid,
            "type": "Microsoft.Authorization/roleDefinitions",
            "properties": {
                "roleName": self.role_name,
                "type": "BuiltInRole",
                "description": self.description,
                "assignableScopes": ["/"],
                "permissions": [self.permissions_json()],
                "createdOn": "2015-02-02T21:55:09.8806423Z",
                "updatedOn": "2024-01-01T00:00:00.0000000Z",
                "createdBy": None,
                "updatedBy": None,
            },
        }


OWNER = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"
CONTRIBUTOR = "b24988ac-6180-42a0-ab88-20f7382dd24c"
READER = "acdd72a7-3385-48ef-bd42-f606fba81ae7"
USER_ACCESS_ADMINISTRATOR = "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9"
KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
KEY_VAULT_SECRETS_OFFICER = "b86a8fe4-44ce-4948-aee5-eccb2c155cd7"
CONNECTED_MACHINE_ONBOARDING = "b64e21ea-ac4e-4cdf-9dc9-5b892992bee7"

BUILTIN_ROLES: dict[str, RoleDefinition] = {r.guid: r for r in (
    RoleDefinition(OWNER, "Owner", "Grants full access to manage all resources, including the "
                   "ability to assign roles in Azure RBAC.", actions=("*",)),
    RoleDefinition(
        CONTRIBUTOR, "Contributor", "Grants full access to manage all resources, but does not "
        "allow you to assign roles in Azure RBAC, manage assignments in Azure Blueprints, or "
        "share image galleries.", actions=("*",),
        not_actions=("Microsoft.Authorization/*/Delete", "Microsoft.Authorization/*/Write",
                     "Microsoft.Authorization/elevateAccess/Action",
                     "Microsoft.Blueprint/blueprintAssignments/write",
                     "Microsoft.Blueprint/blueprintAssignments/delete",
                     "Microsoft.Compute/galleries/share/action",
                     "Microsoft.Purview/consents/write", "Microsoft.Purview/consents/delete",
                     "Microsoft.Resources/deploymentStacks/manageDenySetting/action",
                     "Microsoft.Subscription/cancel/action",
                     "Microsoft.Subscription/enable/action")),
    RoleDefinition(READER, "Reader", "View all resources, but does not allow you to make any "
                   "changes.", actions=("*/read",)),
    RoleDefinition(USER_ACCESS_ADMINISTRATOR, "User Access Administrator",
                   "Lets you manage user access to Azure resources.",
                   actions=("*/read", "Microsoft.Authorization/*", "Microsoft.Support/*")),
    RoleDefinition(KEY_VAULT_SECRETS_USER, "Key Vault Secrets User",
                   "Read secret contents. Only works for key vaults that use the 'Azure "
                   "role-based access control' permission model.",
                   data_actions=("Microsoft.KeyVault/vaults/secrets/getSecret/action",
                                 "Microsoft.KeyVault/vaults/secrets/readMetadata/action")),
    RoleDefinition(
        KEY_VAULT_SECRETS_OFFICER, "Key Vault Secrets Officer",
        "Perform any action on the secrets of a key vault, except manage permissions. Only works "
        "for key vaults that use the 'Azure role-based access control' permission model.",
        actions=("Microsoft.Authorization/*/read", "Microsoft.Insights/alertRules/*",
                 "Microsoft.Resources/deployments/*",
                 "Microsoft.Resources/subscriptions/resourceGroups/read", "Microsoft.Support/*",
                 "Microsoft.KeyVault/checkNameAvailability/read",
                 "Microsoft.KeyVault/deletedVaults/read", "Microsoft.KeyVault/locations/*/read",
                 "Microsoft.KeyVault/vaults/*/read", "Microsoft.KeyVault/operations/read"),
        data_actions=("Microsoft.KeyVault/vaults/secrets/*",)),
    # What `azcmagent connect` needs and no more: it cannot delete, so `azcmagent disconnect`
    # with this role alone fails (public docs: "Azure built-in roles", Hybrid + multicloud).
    RoleDefinition(
        CONNECTED_MACHINE_ONBOARDING, "Azure Connected Machine Onboarding",
        "Can onboard Azure Connected Machines.",
        actions=("Microsoft.Resources/subscriptions/resourcegroups/read",
                 "Microsoft.HybridCompute/machines/read", "Microsoft.HybridCompute/machines/write",
                 "Microsoft.HybridCompute/privateLinkScopes/read",
                 "Microsoft.GuestConfiguration/guestConfigurationAssignments/read")),
)}


def role_guid(role_definition_id: str) -> str:
    return role_definition_id.rstrip("/").rsplit("/", 1)[-1].lower()


def role_by_name(name: str) -> RoleDefinition | None:
    for role in BUILTIN_ROLES.values():
        if role.role_name.lower() == name.lower():
            return role
    return None


@lru_cache(maxsize=512)
def _pattern(glob: str) -> re.Pattern:
    return re.compile("^" + ".*".join(re.escape(p) for p in glob.split("*")) + "$", re.I)


def action_matches(glob: str, action: str) -> bool:
    return bool(_pattern(glob).match(action))


def role_permits(role: RoleDefinition, action: str, *, data: bool = False) -> bool:
    allow, deny = ((role.data_actions, role.not_data_actions) if data
                   else (role.actions, role.not_actions))
    return (any(action_matches(g, action) for g in allow)
            and not any(action_matches(g, action) for g in deny))


def scope_covers(assigned: str, target: str) -> bool:
    """An assignment at `assigned` applies at `target` (same scope or a child of it)."""
    a = assigned.rstrip("/").lower()
    t = target.rstrip("/").lower()
    return a == "" or t == a or t.startswith(a + "/")


def assignments_in_force(cloud: Cloud, principal_id: str, scope: str) -> list:
    now = cloud.now()
    pid = principal_id.lower()
    with cloud.lock:
        return [ra for ra in cloud.assignments_of(pid)
                if ra.in_force(now) and scope_covers(ra.scope, scope)]


def is_allowed(cloud: Cloud, principal_id: str | None, action: str, scope: str, *,
               data: bool = False) -> bool:
    if not principal_id:
        return False
    for ra in assignments_in_force(cloud, principal_id, scope):
        role = BUILTIN_ROLES.get(role_guid(ra.role_definition_id))
        if role and role_permits(role, action, data=data):
            return True
    return False


def effective_permissions(cloud: Cloud, principal_id: str, scope: str) -> list[dict]:
    """What `GET {scope}/providers/Microsoft.Authorization/permissions` returns."""
    out = []
    for ra in assignments_in_force(cloud, principal_id, scope):
        role = BUILTIN_ROLES.get(role_guid(ra.role_definition_id))
        if role:
            out.append(role.permissions_json())
    return out


def has_any_access_in_subscription(cloud: Cloud, principal_id: str, subscription_id: str) -> bool:
    """A subscription is listed to a principal with any role in force at it or below it."""
    prefix = f"/subscriptions/{subscription_id}".lower()
    now = cloud.now()
    with cloud.lock:
        return any(ra.principal_id.lower() == principal_id.lower() and ra.in_force(now)
                   and (ra.scope.lower() == prefix or ra.scope.lower().startswith(prefix + "/")
                        or ra.scope in ("", "/"))
                   for ra in cloud.role_assignments.values())
