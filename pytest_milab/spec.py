"""What a lab is expected to contain: names and values a suite may override."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class LabSpec:
    """The managed-identity lab's constants (steps.md); override them in a suite's
    `milab_spec` fixture, e.g. ``LabSpec(location="westeurope")``."""

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
    secret_value: str = "TheCakeIsALie"
    sp_secret_names: tuple[str, ...] = ("tenant-id", "client-id", "client-secret",
                                        "service-principal")
    image_publisher: str = "Canonical"
    image_offers: tuple[str, ...] = ("0001-com-ubuntu-server-jammy", "ubuntu-24_04-lts",
                                     "UbuntuServer", "0001-com-ubuntu-server-focal")

    def vault_name(self, group_id: str) -> str:
        """The lab's `keyvault-$(md5sum <<< $resourceGroupId | cut -c1-8)`: a here-string
        appends a newline before hashing."""
        return self.vault_prefix + hashlib.md5((group_id + "\n").encode()).hexdigest()[:8]

    @property
    def secret_sha256(self) -> str:
        return hashlib.sha256(self.secret_value.encode()).hexdigest()

    def expected_tags(self, vault_name: str) -> dict[str, str]:
        return {**self.tags, "vault": vault_name}
