"""`ArcLab`: the Arc lab as its checks speak of it (the suite's `lab` fixture)."""

from __future__ import annotations

from pytest_milab import Lab, role_name


def _props(resource) -> dict:
    return (resource or {}).get("properties") or {}


class ArcLab(Lab):
    @property
    def resources(self) -> list[dict]:
        return self.read("resources") or []

    def in_group(self, type_: str) -> list[dict]:
        return [r for r in self.resources if r.get("type", "").lower() == type_.lower()]

    @property
    def vault_name(self) -> str | None:
        """The vault name the lab's formula gives for this group."""
        return self.spec.vault_name(self.group_id) if self.group_id else None

    @property
    def vault(self) -> dict | None:
        return self.read("vault")

    @property
    def access_policies(self) -> list[dict]:
        return _props(self.vault).get("accessPolicies") or []

    def access_policy_for(self, object_id: str | None) -> dict | None:
        for policy in self.access_policies:
            if object_id and str(policy.get("objectId", "")).lower() == object_id.lower():
                return policy
        return None

    @property
    def machine(self) -> dict | None:
        """The server's `Microsoft.HybridCompute/machines` resource (None: not onboarded)."""
        return self.read("machine")

    @property
    def identity_principal_id(self) -> str | None:
        """The server's system-assigned identity (None without one)."""
        identity = (self.machine or {}).get("identity") or {}
        if "systemassigned" not in str(identity.get("type", "")).lower().replace(" ", ""):
            return None
        return identity.get("principalId")

    @property
    def role_assignments(self) -> list[dict]:
        """Assignments at, above and below the group, each with `roleName` added."""
        out = []
        for ra in self.read("role_assignments") or []:
            props = dict(ra.get("properties") or ra)
            props["roleName"] = role_name(props.get("roleDefinitionId", ""))
            out.append(props)
        return out

    def assignments_for(self, principal_id: str | None, role: str | None = None) -> list[dict]:
        return [ra for ra in self.role_assignments
                if principal_id and str(ra.get("principalId", "")).lower() == principal_id.lower()
                and (role is None or ra["roleName"].lower() == role.lower())]
