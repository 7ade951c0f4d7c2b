"""Part 1: the resource group and the Key Vault (access policies) holding the secret."""

import pytest


@pytest.mark.milab_step("resource-group", title="The resource group exists")
def test_resource_group(lab):
    assert lab.group is not None, (
        f"resource group {lab.group_name!r} not found in subscription {lab.subscription}: "
        "create it with `az group create`")


@pytest.mark.milab_step("key-vault", title="The lab's Key Vault uses access policies",
                        needs=("resource-group",))
def test_key_vault(lab):
    if lab.vault is None:
        others = [v["name"] for v in lab.in_group("Microsoft.KeyVault/vaults")]
        found = f" (the group has {', '.join(others)})" if others else ""
        pytest.fail(f"no vault named {lab.vault_name!r} in the group{found}: name it "
                    "keyvault-$(md5sum <<< $resourceGroupId | cut -c1-8)")
    assert not lab.vault["properties"].get("enableRbacAuthorization"), (
        "the vault uses the RBAC permission model: create it with "
        "--enable-rbac-authorization false to use access policies")
