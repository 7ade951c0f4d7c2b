"""A vault's secrets as ARM shows them ("Secrets - List" and "Secrets - Get" of the Key Vault
management REST API): names, attributes and URIs, never a value; a Reader may list them (the
control-plane action `Microsoft.KeyVault/vaults/secrets/read`), without any access policy;
a principal with no role on the vault may not."""

from __future__ import annotations

import json
import uuid

import pytest
import requests
from azure.identity import ClientSecretCredential
from azure.keyvault.secrets import SecretClient
from azure.mgmt.keyvault import KeyVaultManagementClient
from azure.mgmt.resource.resources import ResourceManagementClient

ARM = "https://management.azure.com"
API = "2023-07-01"
VALUES = {"portal-phrase": "TheCakeIsALie", "client-id": "0f0f-not-a-secret-value-xyz"}


@pytest.fixture
def vault_with_secrets(azure_env, operator_credential, unique_group):
    sub, tid = azure_env.subscription_id, azure_env.tenant_id
    ResourceManagementClient(operator_credential, sub).resource_groups.create_or_update(
        unique_group, {"location": "uksouth"})
    name = f"kv-{uuid.uuid4().hex[:12]}"
    KeyVaultManagementClient(operator_credential, sub).vaults.begin_create_or_update(
        unique_group, name, {"location": "uksouth", "properties": {
            "tenantId": tid, "sku": {"family": "A", "name": "standard"},
            "enableRbacAuthorization": False, "softDeleteRetentionInDays": 7,
            "accessPolicies": [{"tenantId": tid, "objectId": azure_env.operator.object_id,
                                "permissions": {"secrets": ["get", "list", "set",
                                                            "delete"]}}]}}).result()
    client = SecretClient(f"https://{name}.vault.azure.net", operator_credential)
    for secret, value in VALUES.items():
        client.set_secret(secret, value, content_type="text/plain")
    client.begin_delete_secret(client.set_secret("gone", "deleted value").name).wait()
    return unique_group, name


def raw(path: str, credential, **params) -> requests.Response:
    token = credential.get_token(f"{ARM}/.default").token
    return requests.get(f"{ARM}{path}", params={"api-version": API, **params},
                        headers={"Authorization": f"Bearer {token}"}, timeout=10)


def test_a_reader_lists_the_vault_s_secrets_by_name_without_values(
        azure_env, grader_credential, vault_with_secrets):
    group, name = vault_with_secrets
    kv = KeyVaultManagementClient(grader_credential, azure_env.subscription_id)
    listed = list(kv.secrets.list(group, name))
    assert sorted(s.name for s in listed) == sorted(VALUES)  # the deleted one is not listed
    one = kv.secrets.get(group, name, "portal-phrase")
    assert one.type == "Microsoft.KeyVault/vaults/secrets"
    assert one.id.endswith(f"/vaults/{name}/secrets/portal-phrase")
    assert one.properties.attributes.enabled is True
    assert one.properties.secret_uri == f"https://{name}.vault.azure.net/secrets/portal-phrase"
    assert one.properties.secret_uri_with_version.startswith(one.properties.secret_uri + "/")
    assert one.properties.value is None
    vault_id = (f"/subscriptions/{azure_env.subscription_id}/resourceGroups/{group}/providers/"
                f"Microsoft.KeyVault/vaults/{name}")
    body = raw(f"{vault_id}/secrets", grader_credential).json()
    text = json.dumps(body)
    assert all(v not in text for v in [*VALUES.values(), "deleted value"])
    assert all("value" not in s["properties"] for s in body["value"])
    created = body["value"][0]["properties"]["attributes"]["created"]
    assert isinstance(created, int)  # seconds since the epoch, as Key Vault gives them
    # Paged with $top (at most 25); a missing secret or vault is ARM's 404.
    first = raw(f"{vault_id}/secrets", grader_credential, **{"$top": "1"}).json()
    assert len(first["value"]) == 1 and first["nextLink"]
    assert raw(f"{vault_id}/secrets/nope", grader_credential).status_code == 404
    gone = raw(f"{vault_id[:-len(name)]}kv-absent-000000/secrets", grader_credential)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "ResourceNotFound"


def test_without_a_role_the_list_is_refused(azure_env, vault_with_secrets):
    group, name = vault_with_secrets
    nobody = azure_env.add_service_principal(f"nobody-{uuid.uuid4().hex[:6]}")
    cred = ClientSecretCredential(nobody.tenant_id, nobody.client_id, nobody.client_secret)
    vault_id = (f"/subscriptions/{azure_env.subscription_id}/resourceGroups/{group}/providers/"
                f"Microsoft.KeyVault/vaults/{name}")
    got = raw(f"{vault_id}/secrets", cred)
    assert got.status_code == 403
    error = got.json()["error"]
    assert error["code"] == "AuthorizationFailed"
    assert "Microsoft.KeyVault/vaults/secrets/read" in error["message"]
