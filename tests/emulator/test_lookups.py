"""Lookups a request makes against the whole cloud answer as a full scan would: the vault of a
name (keyvault.find_vault) and a principal's role assignments (rbac.assignments_in_force), with
vaults and assignments created, deleted and re-created between requests."""

from __future__ import annotations

from pytest_milab.emulator import rbac
from pytest_milab.emulator.keyvault import find_vault
from pytest_milab.emulator.state import Cloud, arm_key

SUB = "/subscriptions/00000000-0000-0000-0000-000000000001"


def _vault(cloud: Cloud, group: str, name: str) -> str:
    rid = f"{SUB}/resourceGroups/{group}/providers/Microsoft.KeyVault/vaults/{name}"
    with cloud.lock:
        cloud.resources[arm_key(rid)] = {"id": rid, "name": name,
                                         "type": "Microsoft.KeyVault/vaults"}
    return arm_key(rid)


def test_a_vault_is_found_again_after_it_moved_to_another_group():
    cloud = Cloud()
    first = _vault(cloud, "rg-a", "kv-lab")
    _vault(cloud, "rg-a", "kv-other")
    assert find_vault(cloud, "KV-LAB")["id"].endswith("/rg-a/providers/Microsoft.KeyVault/vaults/kv-lab")
    del cloud.resources[first]
    assert find_vault(cloud, "kv-lab") is None
    _vault(cloud, "rg-b", "kv-lab")
    assert "/rg-b/" in find_vault(cloud, "kv-lab")["id"]
    assert find_vault(cloud, "kv-other")["name"] == "kv-other"


def test_a_principal_s_assignments_follow_new_and_removed_ones_in_order():
    cloud = Cloud()
    role = f"{SUB}/providers/Microsoft.Authorization/roleDefinitions/"
    reader = cloud.assign_role(scope=f"{SUB}/resourceGroups/rg-a", principal_id="ABC",
                               role_definition_id=role + rbac.READER, immediate=True)
    cloud.assign_role(scope=SUB, principal_id="other", role_definition_id=role + rbac.OWNER,
                      immediate=True)
    target = f"{SUB}/resourceGroups/rg-a/providers/Microsoft.KeyVault/vaults/kv"
    assert rbac.assignments_in_force(cloud, "abc", target) == [reader]
    assert not rbac.is_allowed(cloud, "abc", "Microsoft.KeyVault/vaults/write", target)
    owner = cloud.assign_role(scope=SUB, principal_id="abc", immediate=True,
                              role_definition_id=role + rbac.OWNER)
    assert rbac.assignments_in_force(cloud, "ABC", target) == [reader, owner]
    assert rbac.is_allowed(cloud, "abc", "Microsoft.KeyVault/vaults/write", target)
    cloud.remove_role_assignment(owner.id)
    cloud.clock = lambda: owner.effective_at + 3600
    assert rbac.assignments_in_force(cloud, "abc", target) == [reader]
    assert rbac.assignments_in_force(cloud, "abc", f"{SUB}/resourceGroups/rg-b") == []
