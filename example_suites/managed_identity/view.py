"""`ManagedIdentityLab`: the lab as its checks speak of it (the suite's `lab` fixture)."""

from __future__ import annotations

from pytest_milab import Lab, shapes

from .reads import attached_public_ip, subnet_id


class ManagedIdentityLab(shapes.IdentityGrants, Lab):
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
        """The public IP on the VM's NIC."""
        return attached_public_ip(self)

    @property
    def subnet_id(self) -> str | None:
        return subnet_id(self.read("nic"))

    @property
    def role_assignments(self) -> list[dict]:
        """Assignments at, above and below the group, each with `roleName` added."""
        return shapes.role_assignments(self.read("role_assignments"))
