"""Role assignment conditions (Azure ABAC), as "Azure role assignment condition format and
syntax" describes them: `((!(ActionMatches{'…'})) OR (<attribute expression>))`, version 2.0.

The local Azure stores and echoes a condition, but it does not evaluate attribute expressions
(`@Resource[…]`, `@Request[…]`, `@Principal[…]`). A condition is accepted only when it cannot
change what the assignment grants here: every action it names with `ActionMatches` is one the
role does not grant at all. Any other condition is refused with `InvalidRoleAssignmentCondition`
rather than stored and ignored, which would grant more than Azure does.
"""

from __future__ import annotations

import re

from ..rbac import RoleDefinition, role_permits
from .kinds import ArmError

VERSIONS = ("2.0",)
_ACTION = re.compile(r"(?:ActionMatches|SubOperationMatches)\s*\{\s*'([^']+)'\s*\}", re.I)


def _refuse(message: str) -> ArmError:
    return ArmError(400, "InvalidRoleAssignmentCondition", message)


def checked(props: dict, role: RoleDefinition) -> tuple[str | None, str | None]:
    """(condition, conditionVersion) to store for a role assignment PUT, or raise 400."""
    condition = props.get("condition")
    version = props.get("conditionVersion")
    if condition in (None, ""):
        if version not in (None, ""):
            raise _refuse("The conditionVersion is set but the condition is empty.")
        return None, None
    if not isinstance(condition, str):
        raise _refuse("The condition must be a string.")
    version = str(version or "2.0")
    if version not in VERSIONS:
        raise _refuse(f"The condition version '{version}' is not supported. Supported versions: "
                      f"{', '.join(VERSIONS)}.")
    depth = 0
    for ch in condition:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            break
    if depth != 0:
        raise _refuse("The condition is not valid: its parentheses do not balance.")
    actions = _ACTION.findall(condition)
    if not actions:
        raise _refuse("The local Azure cannot evaluate this condition: it names no action with "
                      "ActionMatches, so it would restrict every action of the role.")
    granted = [a for a in actions if role_permits(role, a) or role_permits(role, a, data=True)]
    if granted:
        raise _refuse("The local Azure stores role assignment conditions but cannot evaluate "
                      f"them, and the role '{role.role_name}' grants "
                      f"{', '.join(repr(a) for a in granted)}, which this condition restricts. "
                      "The assignment is refused rather than granting more than Azure would.")
    return condition, version
