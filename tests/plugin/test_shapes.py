"""Azure's JSON shapes as checks read them (pure)."""

from __future__ import annotations

from pytest_milab import ROLES, shapes


def test_system_identity_only_when_system_assigned():
    assert shapes.system_identity({"identity": {"type": "SystemAssigned, UserAssigned",
                                                "principalId": "p"}}) == "p"
    assert shapes.system_identity({"identity": {"type": "UserAssigned", "principalId": "p"}}) \
        is None
    assert shapes.system_identity(None) is None and shapes.system_identity("junk") is None


def test_access_policies_and_their_secret_permissions():
    vault = {"properties": {"accessPolicies": [
        {"objectId": "AbC", "permissions": {"secrets": ["Get", "LIST"]}}, "junk"]}}
    policy = shapes.access_policy_for(vault, "abc")
    assert shapes.secret_permissions(policy) == {"get", "list"}
    assert shapes.access_policy_for(vault, "other") is None
    assert shapes.access_policy_for(vault, None) is None


def test_role_assignments_carry_their_role_name():
    listed = [{"properties": {"principalId": "P", "scope": "/s",
                              "roleDefinitionId": f"/s/x/roleDefinitions/{ROLES['Reader']}"}},
              {"properties": {"principalId": "q", "roleDefinitionId": "/x/custom-guid"}}]
    flat = shapes.role_assignments(listed)
    assert [ra["roleName"] for ra in flat] == ["Reader", "custom-guid"]
    assert shapes.assignments_for(flat, "p", "reader") == [flat[0]]
    assert shapes.assignments_for(flat, "p", "Owner") == []


def test_values_and_actions_of_a_probed_answer():
    answer = {"status": 200, "json": {"value": [{"actions": ["a/read", "b/write"]}, "junk"]}}
    assert shapes.actions(answer) == ["a/read", "b/write"]
    assert shapes.values({"status": 403, "json": {"error": {}}}) == []
    assert shapes.values({"status": None}) == []


def test_scopes_cover_what_is_under_them():
    group = "/subscriptions/S/resourceGroups/G"
    assert shapes.covers(group, group.lower()) and shapes.covers("/subscriptions/s", group)
    assert shapes.covers("/", group) and shapes.covers("", group)
    assert not shapes.covers(group + "/providers/x/y/z", group)
    assert not shapes.covers("/subscriptions/S/resourceGroups/G2", group)  # a prefix, not a parent


def test_secret_names_and_who_may_get_them():
    assert shapes.secret_names([{"name": "Portal-Phrase"}, "junk", {"id": "x"}]) == {
        "portal-phrase"}
    assert shapes.secret_names(None) == set()
    vault = {"id": "/subscriptions/s/resourceGroups/g/providers/Microsoft.KeyVault/vaults/v",
             "properties": {"accessPolicies": [
                 {"objectId": "a", "permissions": {"secrets": ["Get"]}},
                 {"objectId": "l", "permissions": {"secrets": ["list"]}}]}}
    assert shapes.may_get_secrets(vault, [], "A")
    assert not shapes.may_get_secrets(vault, [], "l")  # list shows names, not values
    assert not shapes.may_get_secrets(vault, [], "nobody")
    assert not shapes.may_get_secrets(None, [], "a")
    # The RBAC model: access policies are ignored; a secrets-reading role above the vault counts.
    rbac = {**vault, "properties": {**vault["properties"], "enableRbacAuthorization": True}}
    user = [{"principalId": "r", "scope": "/subscriptions/s/resourceGroups/g",
             "roleName": "Key Vault Secrets User"}]
    assert not shapes.may_get_secrets(rbac, [], "a")
    assert shapes.may_get_secrets(rbac, user, "r")
    assert not shapes.may_get_secrets(rbac, [{**user[0], "roleName": "Reader"}], "r")
    assert not shapes.may_get_secrets(rbac, [{**user[0], "scope": "/subscriptions/s/resourceGroups/h"}],
                                      "r")
