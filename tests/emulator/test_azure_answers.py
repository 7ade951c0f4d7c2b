"""Answers as recorded from real Azure: every public region, long-running network and compute
PUTs, the empty version list of a missing secret, role-assignment conditions."""

from __future__ import annotations

import time
import uuid

import pytest
import requests
from azure.mgmt.network import NetworkManagementClient
from test_arm import ARM, arm
from test_keyvault import ALL_SECRETS, make_vault, policy, secret_client

from pytest_milab.emulator import rbac


@pytest.fixture
def group(azure_env, operator_credential, unique_group):
    sub = azure_env.subscription_id
    path = f"/subscriptions/{sub}/resourcegroups/{unique_group}"
    assert arm("PUT", path, operator_credential, json={"location": "westus"}).status_code == 201
    yield f"/subscriptions/{sub}/resourceGroups/{unique_group}"
    arm("DELETE", path, operator_credential)


def test_every_public_region(azure_env, operator_credential):
    names = {loc["name"] for loc in arm("GET", f"/subscriptions/{azure_env.subscription_id}/"
                                        "locations", operator_credential,
                                        api="2022-12-01").json()["value"]}
    assert {"westus", "eastus", "southcentralus", "brazilsouth", "southeastasia",
            "germanywestcentral", "southafricanorth", "uaenorth", "koreacentral",
            "canadacentral", "italynorth", "polandcentral"} <= names
    assert len(names) >= 55


def test_network_put_is_long_running(azure_env, operator_credential, group):
    azure_env.knobs.lro_delay = 0.3
    try:
        r = arm("PUT", f"{group}/providers/Microsoft.Network/networkSecurityGroups/nsg",
                operator_credential, api="2024-05-01", json={"location": "westus"})
        assert r.status_code == 201
        assert r.json()["properties"]["provisioningState"] == "Updating"
        status_url = r.headers["Azure-AsyncOperation"]
        assert "/providers/Microsoft.Network/locations/westus/operations/" in status_url
        token = operator_credential.get_token(f"{ARM}/.default").token
        auth = {"Authorization": f"Bearer {token}"}
        first = requests.get(status_url, headers=auth)
        assert first.json() == {"status": "InProgress"}
        assert first.headers["x-ms-retry-after-ms"] == "300"
        got = arm("GET", f"{group}/providers/Microsoft.Network/networkSecurityGroups/nsg",
                  operator_credential, api="2024-05-01").json()
        assert got["properties"]["provisioningState"] == "Updating"
        time.sleep(0.4)
        assert requests.get(status_url, headers=auth).json() == {"status": "Succeeded"}
        got = arm("GET", f"{group}/providers/Microsoft.Network/networkSecurityGroups/nsg",
                  operator_credential, api="2024-05-01").json()
        assert got["properties"]["provisioningState"] == "Succeeded"
        # The SDK's poller follows it, as the project's provision code relies on.
        client = NetworkManagementClient(operator_credential, azure_env.subscription_id)
        t0 = time.monotonic()
        pip = client.public_ip_addresses.begin_create_or_update(
            group.rsplit("/", 1)[1], "pip", {"location": "westus", "sku": {"name": "Standard"},
                                             "public_ip_allocation_method": "Static"}).result()
        assert pip.provisioning_state == "Succeeded" and 0.25 < time.monotonic() - t0 < 5
    finally:
        azure_env.knobs.lro_delay = 0.05


def test_no_delay_means_no_async_operation(azure_env, operator_credential, group):
    azure_env.knobs.lro_delay = 0
    try:
        r = arm("PUT", f"{group}/providers/Microsoft.Network/networkSecurityGroups/n0",
                operator_credential, api="2024-05-01", json={"location": "westus"})
        assert r.json()["properties"]["provisioningState"] == "Succeeded"
        assert "Azure-AsyncOperation" not in r.headers
    finally:
        azure_env.knobs.lro_delay = 0.05


def test_versions_of_a_missing_secret_are_an_empty_list(azure_env, operator_credential):
    name = make_vault(azure_env, policies=[policy(azure_env, azure_env.operator.object_id,
                                                  *ALL_SECRETS)])
    client = secret_client(name, operator_credential)
    assert list(client.list_properties_of_secret_versions("never-set")) == []
    token = operator_credential.get_token("https://vault.azure.net/.default").token
    r = requests.get(f"https://{name}.vault.azure.net/secrets/never-set/versions",
                     params={"api-version": "7.4"}, headers={"Authorization": f"Bearer {token}"})
    assert (r.status_code, r.json()) == (200, {"value": [], "nextLink": None})


def role_assignment(azure, cred, scope: str, role: str, principal: str, **props):
    sub = azure.subscription_id
    return arm("PUT", f"{scope}/providers/Microsoft.Authorization/roleAssignments/"
               f"{uuid.uuid4()}", cred, api="2022-04-01", json={"properties": {
                   "roleDefinitionId": f"/subscriptions/{sub}/providers/Microsoft.Authorization/"
                                       f"roleDefinitions/{role}", "principalId": principal,
                   "principalType": "ServicePrincipal", **props}})


def test_role_assignment_conditions(azure_env, operator_credential, group):
    sp = azure_env.add_service_principal("conditioned")
    # A condition on an action Reader does not grant changes nothing here: stored and echoed.
    condition = ("((!(ActionMatches{'Microsoft.KeyVault/vaults/secrets/getSecret/action'})) OR "
                 "(@Resource[Microsoft.KeyVault/vaults/secrets:name] StringEquals 'x'))")
    r = role_assignment(azure_env, operator_credential, group, rbac.READER, sp.object_id,
                        condition=condition)
    assert r.status_code == 201, r.text
    props = r.json()["properties"]
    assert (props["condition"], props["conditionVersion"]) == (condition, "2.0")
    listed = arm("GET", f"{group}/providers/Microsoft.Authorization/roleAssignments",
                 operator_credential, api="2022-04-01").json()["value"]
    assert [a["properties"]["condition"] for a in listed
            if a["properties"]["principalId"] == sp.object_id] == [condition]
    # On an action the role grants, Azure would evaluate it per request; the local Azure cannot,
    # so it refuses rather than grant more.
    r = role_assignment(azure_env, operator_credential, group, rbac.KEY_VAULT_SECRETS_USER,
                        sp.object_id, condition=condition)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "InvalidRoleAssignmentCondition"
    assert "getSecret/action" in r.json()["error"]["message"]
    r = role_assignment(azure_env, operator_credential, group, rbac.READER, sp.object_id,
                        condition=condition, conditionVersion="1.0")
    assert r.status_code == 400


def test_graph_application_defaults(azure_env, operator_credential):
    token = operator_credential.get_token("https://graph.microsoft.com/.default").token
    headers = {"Authorization": f"Bearer {token}"}
    plain = requests.post("https://graph.microsoft.com/v1.0/applications", headers=headers,
                          json={"displayName": f"plain-{uuid.uuid4().hex[:6]}"}).json()
    assert plain["signInAudience"] == "AzureADandPersonalMicrosoftAccount"
    assert plain["api"]["requestedAccessTokenVersion"] == 2
    mine = requests.post("https://graph.microsoft.com/v1.0/applications", headers=headers,
                         json={"displayName": f"org-{uuid.uuid4().hex[:6]}",
                               "signInAudience": "AzureADMyOrg"}).json()
    assert mine["signInAudience"] == "AzureADMyOrg"
    assert mine["api"]["requestedAccessTokenVersion"] is None
    sp = requests.post("https://graph.microsoft.com/v1.0/servicePrincipals", headers=headers,
                       json={"appId": plain["appId"]}).json()
    assert sp["signInAudience"] == "AzureADandPersonalMicrosoftAccount"
