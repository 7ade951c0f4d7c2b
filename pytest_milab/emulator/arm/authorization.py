"""Microsoft.Authorization: role assignments, built-in role definitions and the caller's own
effective permissions (“Role Assignments - Create (Authorization REST API)”). Assignments made here take effect after the propagation
delay (`cloud.assign_role`), but are listed at once, as in Azure (“Troubleshoot Azure RBAC”)."""

from __future__ import annotations

import re

from starlette.responses import Response

from .. import faults, rbac
from ..responses import iso, json_response
from ..state import RoleAssignment, arm_key
from . import conditions
from .kinds import GUID_RE, ArmError, Ctx, Kind, Registry

NS = "Microsoft.Authorization"


def assignment_json(ra: RoleAssignment, *, just_created: bool = False) -> dict:
    """“Role Assignments - Create (Authorization REST API)”; the create answer shows `createdBy` null, later reads show the creator."""
    return {
        "properties": {
            "roleDefinitionId": ra.role_definition_id, "principalId": ra.principal_id,
            "principalType": ra.principal_type, "scope": ra.scope, "condition": ra.condition,
            "conditionVersion": ra.condition_version, "createdOn": iso(ra.created_on),
            "updatedOn": iso(ra.created_on),
            "createdBy": None if just_created else ra.created_by, "updatedBy": ra.created_by,
            "delegatedManagedIdentityResourceId": None, "description": ra.description,
        },
        "id": ra.id, "type": f"{NS}/roleAssignments", "name": ra.name,
    }


def _principal_not_found(ctx: Ctx, principal: str) -> ArmError:
    return ArmError(400, "PrincipalNotFound",
                    f"Principal {principal.replace('-', '')} does not exist in the directory "
                    f"{ctx.cloud.tenant_id}. Check that you have the correct principal ID. If you "
                    "are creating this principal and then immediately assigning a role, this "
                    "error might be related to a replication delay. In this case, set the role "
                    "assignment principalType property to a value, such as ServicePrincipal, "
                    "User, or Group.  See https://aka.ms/docs-principaltype")


def _role_missing(guid: str, status: int = 400) -> ArmError:
    return ArmError(status, "RoleDefinitionDoesNotExist",
                    f"The specified role definition with ID '{guid}' does not exist.")


def _role_scope(ctx: Ctx) -> str:
    """Role definitions are defined at the subscription (or tenant root), not below it."""
    return f"/subscriptions/{ctx.sub}" if ctx.sub else ""


def _assignment_filter(text: str | None) -> tuple[bool, str | None]:
    """(`atScope()` given, principal id) from `$filter`."""
    at_scope, principal = False, None
    for clause in re.split(r"\s+and\s+", (text or "").strip(), flags=re.I):
        clause = clause.strip()
        if not clause:
            continue
        if clause.lower() == "atscope()":
            at_scope = True
        elif m := re.fullmatch(r"(?:principalId\s+eq\s+'([^']*)'|assignedTo\('([^']*)'\))",
                               clause, re.I):
            principal = m.group(1) or m.group(2)
        else:
            # Code and text UNCONFIRMED.
            raise ArmError(400, "UnsupportedQuery", f"The filter '{text}' is not supported.")
    return at_scope, principal


class RoleAssignments(Kind):
    ns, types = NS, ("roleAssignments",)

    def _find(self, ctx: Ctx) -> RoleAssignment | None:
        ra = ctx.cloud.role_assignments.get(arm_key(ctx.resource_id()))
        return ra if ra is not None and ra.removed_at is None else None

    def get(self, ctx: Ctx) -> Response:
        ra = self._find(ctx)
        if ra is None:
            raise ArmError(404, "RoleAssignmentNotFound",
                           f"The role assignment '{ctx.names[-1]}' is not found.")
        return json_response(assignment_json(ra))

    def put(self, ctx: Ctx) -> Response:
        name = ctx.names[-1]
        if not GUID_RE.match(name):
            raise ArmError(400, "InvalidRoleAssignmentId", f"The role assignment ID '{name}' is "
                           "not valid. The role assignment ID must be a GUID.")
        props = ctx.json().get("properties") or {}
        principal = str(props.get("principalId") or "")
        guid = rbac.role_guid(str(props.get("roleDefinitionId") or ""))
        if guid not in rbac.BUILTIN_ROLES:
            raise _role_missing(guid)
        with ctx.cloud.lock:
            existing = self._find(ctx)
            if existing is not None:
                if existing.principal_id.lower() == principal.lower() and \
                        rbac.role_guid(existing.role_definition_id) == guid:
                    return json_response(assignment_json(existing))
                raise ArmError(400, "RoleAssignmentUpdateNotPermitted", "Tenant ID, application "
                               "ID, principal ID, and scope are not allowed to be updated.")
            condition, condition_version = conditions.checked(props, rbac.BUILTIN_ROLES[guid])
            ptype = props.get("principalType")
            if not ptype:
                if principal and ctx.cloud.user(principal) is not None:
                    ptype = "User"
                elif not principal or ctx.cloud.principal(principal) is None:
                    raise _principal_not_found(ctx, principal)
                else:
                    ptype = "ServicePrincipal"
            for ra in ctx.cloud.visible_role_assignments():
                if ra.principal_id.lower() == principal.lower() and \
                        rbac.role_guid(ra.role_definition_id) == guid and \
                        arm_key(ra.scope or "/") == arm_key(ctx.scope or "/"):
                    raise ArmError(409, "RoleAssignmentExists",
                                   "The role assignment already exists.")
            ra = ctx.cloud.assign_role(
                scope=ctx.scope or "/", principal_id=principal, principal_type=ptype,
                role_definition_id=f"{_role_scope(ctx)}/providers/{NS}/roleDefinitions/{guid}",
                created_by=ctx.oid, name=name)
            ra.description = props.get("description")
            ra.condition, ra.condition_version = condition, condition_version
        return json_response(assignment_json(ra, just_created=True), 201)

    def delete(self, ctx: Ctx) -> Response:
        with ctx.cloud.lock:
            ra = self._find(ctx)
            if ra is None:
                return Response(b"", 204)
            ctx.cloud.remove_role_assignment(ra.id)
        return json_response(assignment_json(ra))

    def list(self, ctx: Ctx) -> Response:
        """Without a filter: assignments at, above and below the scope; `atScope()`: at or above."""
        at_scope, principal = _assignment_filter(ctx.q("$filter"))
        scope = ctx.scope
        out = []
        for ra in ctx.cloud.visible_role_assignments():
            if principal and ra.principal_id.lower() != principal.lower():
                continue
            above = rbac.scope_covers(ra.scope, scope)
            if above or (not at_scope and rbac.scope_covers(scope, ra.scope)):
                out.append(assignment_json(ra))
        return json_response({"value": out})


class RoleDefinitions(Kind):
    """Built-in roles only. Any signed-in principal may read them (UNCONFIRMED, but the CLI
    resolves role names this way before the caller has any role)."""

    ns, types = NS, ("roleDefinitions",)
    check_rbac = False

    def get(self, ctx: Ctx) -> Response:
        role = rbac.BUILTIN_ROLES.get(ctx.names[-1].lower())
        if role is None:
            raise _role_missing(ctx.names[-1], 404)
        return json_response(role.to_arm(_role_scope(ctx)))

    def list(self, ctx: Ctx) -> Response:
        text = (ctx.q("$filter") or "").strip()
        roles = list(rbac.BUILTIN_ROLES.values())
        if m := re.fullmatch(r"roleName\s+eq\s+'([^']*)'", text, re.I):
            roles = [r for r in roles if r.role_name.lower() == m.group(1).lower()]
        elif m := re.fullmatch(r"type\s+eq\s+'([^']*)'", text, re.I):
            roles = roles if m.group(1).lower() == "builtinrole" else []
        elif text:
            raise ArmError(400, "UnsupportedQuery", f"The filter '{text}' is not supported.")
        return json_response({"value": [r.to_arm(_role_scope(ctx)) for r in roles]})


class Permissions(Kind):
    """The caller's own effective permissions at a scope: needs no role."""

    ns, types = NS, ("permissions",)
    check_rbac = False

    def list(self, ctx: Ctx) -> Response:
        value = rbac.effective_permissions(ctx.cloud, ctx.oid, ctx.scope or "/")
        value = faults.widened_permissions(ctx.cloud, ctx.oid, ctx.scope, value)  # a quirk
        return json_response({"value": value})


KINDS = (RoleAssignments(), RoleDefinitions(), Permissions())


def register(registry: Registry) -> None:
    """Add this provider's resource types to an ARM's registry (arm.PROVIDERS lists the order)."""
    for kind in KINDS:
        registry.add(kind)
