"""`ArcLab`: the Arc lab as its checks speak of it (the suite's `lab` fixture)."""

from __future__ import annotations

from pytest_milab import Lab, shapes


class ArcLab(shapes.IdentityGrants, Lab):
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
        return shapes.access_policies(self.vault)

    def access_policy_for(self, object_id: str | None) -> dict | None:
        return shapes.access_policy_for(self.vault, object_id)

    @property
    def machine(self) -> dict | None:
        """The server's `Microsoft.HybridCompute/machines` resource (None: not onboarded)."""
        return self.read("machine")

    @property
    def identity_principal_id(self) -> str | None:
        """The server's system-assigned identity (None without one)."""
        return shapes.system_identity(self.machine)

    @property
    def role_assignments(self) -> list[dict]:
        """Assignments at, above and below the group, each with `roleName` added."""
        return shapes.role_assignments(self.read("role_assignments"))
