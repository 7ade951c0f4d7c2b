"""The managed-identity lab's constants (the Azure Citadel lab); another variant of the lab is
another `ManagedIdentitySpec`, returned from the suite's `pytest_milab_spec` hook."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ManagedIdentitySpec:
    group: str = "managed_identity_lab"  # the group the lab document uses (and the demo builds)
    location: str = "uksouth"
    vm_name: str = "ubuntu"
    os_disk: str = "ubuntu-os"
    vnet: str = "myVnet"
    subnet: str = "mySubnet"
    public_ip: str = "ubuntu-pip"
    tags: dict[str, str] = field(default_factory=lambda: {"site": "citadel", "lab": "identity"})
    vault_prefix: str = "keyvault-"
    retention_days: int = 7
    secret_name: str = "portal-phrase"
    # The value is compared on the grader with the probe's keyed digest; never printed.
    secret_value: str = field(default="TheCakeIsALie", repr=False)
    sp_secret_names: tuple[str, ...] = ("tenant-id", "client-id", "client-secret",
                                        "service-principal")
    image_publisher: str = "Canonical"
    image_offers: tuple[str, ...] = ("0001-com-ubuntu-server-jammy", "ubuntu-24_04-lts",
                                     "UbuntuServer", "0001-com-ubuntu-server-focal")

    def vault_name(self, group_id: str) -> str:
        """The lab's `keyvault-$(md5sum <<< $resourceGroupId | cut -c1-8)`: a here-string
        appends a newline before hashing."""
        return self.vault_prefix + hashlib.md5((group_id + "\n").encode()).hexdigest()[:8]

    def expected_tags(self, vault_name: str) -> dict[str, str]:
        return {**self.tags, "vault": vault_name}
