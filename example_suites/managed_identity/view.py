"""`ManagedIdentityLab`: the lab as its checks speak of it (the suite's `lab` fixture)."""

from __future__ import annotations

from pytest_milab import Lab, shapes

from .reads import subnet_id


class ManagedIdentityLab(Lab):
    @property
    def resources(self) -> list[dict]:
        return self.read("resources") or []

    @property
    def vault_name(self) -> str | None:
        """The vault name the lab's formula gives for this group."""
        return self.spec.vault_name(self.group_id) if self.group_id else None

    @property
    def vault(self) -> dict | None:
        return self.read("vault")

    @property
    def vaults_in_group(self) -> list[dict]:
        return [r for r in self.resources
                if r.get("type", "").lower() == "microsoft.keyvault/vaults"]

    @property
    def access_policies(self) -> list[dict]:
        return shapes.access_policies(self.vault)

    def access_policy_for(self, object_id: str | None) -> dict | None:
        return shapes.access_policy_for(self.vault, object_id)

    @property
    def vm(self) -> dict | None:
        return self.read("vm")

    @property
    def identity_principal_id(self) -> str | None:
        """The VM's system-assigned identity (None without one)."""
        return shapes.system_identity(self.vm)

    @property
    def public_ip(self) -> dict | None:
        return self.read("public_ip")

    @property
    def subnet_id(self) -> str | None:
        return subnet_id(self.read("nic"))

    @property
    def role_assignments(self) -> list[dict]:
        """Assignments at, above and below the group, each with `roleName` added."""
        return shapes.role_assignments(self.read("role_assignments"))

    def assignments_for(self, principal_id: str | None, role: str | None = None) -> list[dict]:
        return shapes.assignments_for(self.role_assignments, principal_id, role)

    # -- what ARM shows, against which the machine's word is checked -------------------------
    @property
    def vault_secret_names(self) -> set[str]:
        """The names (lower case) of the secrets ARM lists in the lab's vault."""
        return shapes.secret_names(self.read("vault_secrets"))

    def identity_may_get_secrets(self) -> bool:
        """Whether ARM shows the identity may read secrets' values in the lab's vault."""
        return shapes.may_get_secrets(self.vault, self.role_assignments,
                                      self.identity_principal_id)

    def identity_roles_on_group(self) -> list[dict]:
        """The identity's role assignments that apply to the group (at it or above)."""
        return [ra for ra in self.assignments_for(self.identity_principal_id)
                if shapes.covers(ra.get("scope"), self.group_id)]

    def identity_roles_on_subscription(self) -> list[dict]:
        """The identity's role assignments at the group's subscription or above."""
        subscription = "/".join(str(self.group_id or "").split("/")[:3])
        return [ra for ra in self.assignments_for(self.identity_principal_id)
                if shapes.covers(ra.get("scope"), subscription)]
