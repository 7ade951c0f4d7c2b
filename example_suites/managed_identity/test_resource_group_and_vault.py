"""Part 1 of the lab: the resource group and the Key Vault with its secret."""

import pytest

from pytest_milab import shapes


@pytest.mark.milab_step("resource-group", title="The resource group exists")
def test_resource_group(lab):
    assert lab.group is not None, (
        f"resource group {lab.group_name!r} not found in subscription {lab.subscription}: "
        "create it with `az group create`")


@pytest.mark.milab_step("key-vault", title="The lab's Key Vault exists", needs=("resource-group",))
def test_key_vault(lab):
    if lab.vault is None:
        others = [v["name"] for v in lab.vaults_in_group]
        found = f" (the group has {', '.join(others)})" if others else ""
        pytest.fail(f"no vault named {lab.vault_name!r} in the group{found}: name it "
                    "keyvault-$(md5sum <<< $resourceGroupId | cut -c1-8)")


@pytest.mark.milab_step("vault-permission-model", title="Access policies and 7-day soft delete",
                        needs=("key-vault",))
def test_vault_permission_model(lab, milab_spec):
    props = lab.vault["properties"]
    assert not props.get("enableRbacAuthorization"), (
        "the vault uses the RBAC permission model: create it with "
        "--enable-rbac-authorization false to use access policies")
    days = props.get("softDeleteRetentionInDays", 90)
    assert days == milab_spec.retention_days, (
        f"deleted objects are kept {days} days, not {milab_spec.retention_days}: "
        f"create the vault with --retention-days {milab_spec.retention_days}")


@pytest.mark.milab_step("operator-access-policy", title="You can get, list and set secrets",
                        needs=("key-vault",))
def test_operator_access_policy(lab):
    identity = (lab.identity_principal_id or "").lower() if lab.vm else ""
    operators = [p for p in lab.access_policies
                 if str(p.get("objectId") or "").lower() != identity]
    wanted = {"get", "list", "set"}
    granted = [p for p in operators
               if "all" in shapes.secret_permissions(p) or wanted <= shapes.secret_permissions(p)]
    assert granted, ("no access policy other than the VM's grants secrets get, list and set: "
                     "az keyvault set-policy --secret-permissions get list set --object-id <you>")
