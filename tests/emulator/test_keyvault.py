"""The Key Vault data plane through the proxy with the real SecretClient (“Azure Key Vault REST API error codes”, “Vaults - Create Or Update (Key Vault management REST API)”, “Troubleshoot Azure RBAC”).

Vaults are put straight into the model the way the ARM service records them (“Vaults - Create Or Update (Key Vault management REST API)”), so these
tests need nothing but Key Vault itself.
"""

from __future__ import annotations

import time
import uuid

import pytest
import requests

from pytest_milab.emulator import rbac
from pytest_milab.emulator.entra.tokens import TokenIssuer
from pytest_milab.emulator.state import Timed, arm_key

ALL_SECRETS = ["get", "list", "set", "delete", "recover", "purge", "backup", "restore"]


def make_vault(azure, *, policies: list[dict] | None = None, rbac_mode: bool = False,
               retention: int = 90, location: str = "uksouth", name: str | None = None) -> str:
    """Insert a vault's ARM JSON and its access policies, as the ARM service does (“Vaults - Create Or Update (Key Vault management REST API)”)."""
    cloud = azure.cloud
    name = name or f"kv-{uuid.uuid4().hex[:12]}"
    rid = (f"/subscriptions/{azure.subscription_id}/resourceGroups/rg-kv-tests/providers/"
           f"Microsoft.KeyVault/vaults/{name}")
    policies = policies or []
    vault = {
        "id": rid, "name": name, "type": "Microsoft.KeyVault/vaults", "location": location,
        "tags": {},
        "properties": {
            "sku": {"family": "A", "name": "standard"}, "tenantId": cloud.tenant_id,
            "accessPolicies": policies, "enableSoftDelete": True,
            "softDeleteRetentionInDays": retention, "enableRbacAuthorization": rbac_mode,
            "vaultUri": f"https://{name}.vault.azure.net/", "provisioningState": "Succeeded",
            "publicNetworkAccess": "Enabled",
        },
    }
    with cloud.lock:
        cloud.resources[arm_key(rid)] = vault
        cloud.access_policies.setdefault(name.lower(), Timed()).set(policies,
                                                                     cloud.effective_time())
    return name


def policy(azure, object_id: str, *secrets: str) -> dict:
    return {"tenantId": azure.tenant_id, "objectId": object_id,
            "permissions": {"keys": [], "secrets": list(secrets), "certificates": [],
                            "storage": []}}


def vault_id(azure, name: str) -> str:
    return (f"/subscriptions/{azure.subscription_id}/resourceGroups/rg-kv-tests/providers/"
            f"Microsoft.KeyVault/vaults/{name}")


def secret_client(name: str, credential):
    from azure.keyvault.secrets import SecretClient

    return SecretClient(vault_url=f"https://{name}.vault.azure.net", credential=credential)


def bearer(credential, resource: str = "https://vault.azure.net") -> dict[str, str]:
    return {"Authorization": f"Bearer {credential.get_token(resource + '/.default').token}"}


@pytest.fixture
def operator_vault(azure_env):
    """An access-policy vault where the operator holds every secret permission."""
    return make_vault(azure_env, policies=[policy(azure_env, azure_env.operator.object_id,
                                                  *ALL_SECRETS)])


# -- “Get Secret (Azure Key Vault REST API)” / “Azure Key Vault Secrets client library for Python”: the SDK round trip ---
def test_sdk_sets_gets_and_lists_versions(azure_env, operator_credential, operator_vault):
    client = secret_client(operator_vault, operator_credential)
    first = client.set_secret("portal-phrase", "TheCakeIsALie")
    second = client.set_secret("portal-phrase", "StillALie", content_type="text/plain",
                               tags={"lab": "identity"})
    assert len(first.properties.version) == 32 and first.properties.version != \
        second.properties.version
    assert client.get_secret("portal-phrase").value == "StillALie"
    assert client.get_secret("portal-phrase", first.properties.version).value == "TheCakeIsALie"
    client.set_secret("other", "x")

    listed = {p.name: p for p in client.list_properties_of_secrets(max_page_size=1)}
    assert set(listed) == {"portal-phrase", "other"}
    assert listed["portal-phrase"].version is None  # list ids carry no version (“Get Secret (Azure Key Vault REST API)”)
    assert listed["portal-phrase"].content_type == "text/plain"
    versions = list(client.list_properties_of_secret_versions("portal-phrase"))
    assert {v.version for v in versions} == {first.properties.version, second.properties.version}

    updated = client.update_secret_properties("portal-phrase", enabled=True, tags={"a": "b"})
    assert updated.tags == {"a": "b"}


def test_sdk_delete_recover_purge(azure_env, operator_credential, operator_vault):
    from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

    client = secret_client(operator_vault, operator_credential)
    client.set_secret("doomed", "v1")
    deleted = client.begin_delete_secret("doomed").result()
    assert deleted.recovery_id == f"https://{operator_vault}.vault.azure.net/deletedsecrets/doomed"
    assert (deleted.scheduled_purge_date - deleted.deleted_date).days == 90
    assert [d.name for d in client.list_deleted_secrets()] == ["doomed"]
    with pytest.raises(ResourceNotFoundError):
        client.get_secret("doomed")
    with pytest.raises(ResourceExistsError, match="deleted but recoverable state"):
        client.set_secret("doomed", "v2")

    client.begin_recover_deleted_secret("doomed").wait()
    assert client.get_secret("doomed").value == "v1"

    client.begin_delete_secret("doomed").wait()
    client.purge_deleted_secret("doomed")
    with pytest.raises(ResourceNotFoundError):
        client.get_deleted_secret("doomed")
    assert client.set_secret("doomed", "fresh").value == "fresh"


def test_backup_and_restore(azure_env, operator_credential, operator_vault):
    client = secret_client(operator_vault, operator_credential)
    client.set_secret("kept", "one")
    blob = client.backup_secret("kept")
    client.begin_delete_secret("kept").wait()
    client.purge_deleted_secret("kept")
    assert client.restore_secret_backup(blob).name == "kept"
    assert client.get_secret("kept").value == "one"


# -- “Azure Key Vault REST API error codes” / “Azure Key Vault REST API error codes”: authentication ---
def test_no_token_is_the_akv10000_challenge(azure_env, operator_vault):
    r = requests.get(f"https://{operator_vault}.vault.azure.net/secrets/x?api-version=7.1")
    assert r.status_code == 401
    assert r.json() == {"error": {"code": "Unauthorized",
                                  "message": "AKV10000: Request is missing a Bearer or PoP token."}}
    assert r.headers["WWW-Authenticate"] == (
        f'Bearer authorization="https://login.microsoftonline.com/{azure_env.tenant_id}", '
        'resource="https://vault.azure.net"')
    assert r.headers["Content-Type"] == "application/json; charset=utf-8"
    assert r.headers["x-ms-keyvault-region"] == "uksouth"
    assert r.headers["x-ms-keyvault-service-version"] and r.headers["x-ms-request-id"]


def test_challenge_comes_before_api_version_check(azure_env, operator_vault):
    r = requests.get(f"https://{operator_vault}.vault.azure.net/secrets")
    assert r.status_code == 401 and "WWW-Authenticate" in r.headers


def test_management_token_is_akv10022(azure_env, operator_credential, operator_vault):
    r = requests.get(f"https://{operator_vault}.vault.azure.net/secrets/x?api-version=7.1",
                     headers=bearer(operator_credential, "https://management.azure.com"))
    assert r.status_code == 401
    assert r.json()["error"] == {
        "code": "Unauthorized",
        "message": "AKV10022: Invalid audience. Expected https://vault.azure.net, "
                   "found: https://management.azure.com."}
    assert r.headers["WWW-Authenticate"].startswith("Bearer authorization=")


def test_expired_and_foreign_tokens_are_401(azure_env, operator_vault):
    url = f"https://{operator_vault}.vault.azure.net/secrets?api-version=7.4"
    op = azure_env.operator
    expired = azure_env.tokens.issue(aud="https://vault.azure.net", oid=op.object_id,
                                     appid=op.client_id, lifetime=-60)
    r = requests.get(url, headers={"Authorization": f"Bearer {expired.value}"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "Unauthorized"

    other = TokenIssuer(str(uuid.uuid4())).issue(aud="https://vault.azure.net",
                                                 oid=op.object_id, appid=op.client_id)
    r = requests.get(url, headers={"Authorization": f"Bearer {other.value}"})
    assert r.status_code == 401
    assert r.json()["error"]["message"].startswith("AKV10032: Invalid issuer.")


def test_api_version_is_required(azure_env, operator_credential, operator_vault):
    base = f"https://{operator_vault}.vault.azure.net/secrets"
    auth = bearer(operator_credential)
    for query in ("", "?api-version=6.0"):
        r = requests.get(base + query, headers=auth)
        assert r.status_code == 400 and r.json()["error"]["code"] == "BadParameter"
    for version in ("7.0", "7.1", "7.6", "2025-07-01"):
        assert requests.get(f"{base}?api-version={version}", headers=auth).status_code == 200


def test_invalid_secret_name_is_bad_parameter(azure_env, operator_credential, operator_vault):
    r = requests.put(f"https://{operator_vault}.vault.azure.net/secrets/bad_name?api-version=7.4",
                     json={"value": "x"}, headers=bearer(operator_credential))
    assert r.status_code == 400 and r.json()["error"]["code"] == "BadParameter"


# -- “Azure Key Vault REST API error codes”: authorisation ----------------------------------------
def test_access_policy_denial_body(azure_env, grader_credential, operator_vault):
    r = requests.get(f"https://{operator_vault}.vault.azure.net/secrets/portal-phrase"
                     "?api-version=7.1", headers=bearer(grader_credential))
    gr = azure_env.grader
    assert r.status_code == 403
    assert r.json() == {"error": {
        "code": "Forbidden",
        "message": f"The user, group or application 'appid={gr.client_id};oid={gr.object_id};"
                   f"iss=https://sts.windows.net/{azure_env.tenant_id}/' does not have secrets "
                   f"get permission on key vault '{operator_vault};location=uksouth'. For help "
                   "resolving this issue, please see "
                   "https://go.microsoft.com/fwlink/?linkid=2125287",
        "innererror": {"code": "AccessDenied"}}}


def test_permission_verbs_follow_the_operation(azure_env, operator_credential):
    name = make_vault(azure_env, policies=[policy(azure_env, azure_env.operator.object_id,
                                                  "get")])
    r = requests.get(f"https://{name}.vault.azure.net/secrets?api-version=7.4",
                     headers=bearer(operator_credential))
    assert r.status_code == 403 and "does not have secrets list permission" in r.text
    r = requests.put(f"https://{name}.vault.azure.net/secrets/a?api-version=7.4",
                     json={"value": "x"}, headers=bearer(operator_credential))
    assert r.status_code == 403 and "does not have secrets set permission" in r.text


def test_rbac_vault_denies_then_allows_after_assignment(azure_env, operator_credential,
                                                        grader_credential):
    from azure.core.exceptions import HttpResponseError

    cloud = azure_env.cloud
    name = make_vault(azure_env, rbac_mode=True)
    vid = vault_id(azure_env, name)
    role_base = (f"/subscriptions/{azure_env.subscription_id}/providers/"
                 "Microsoft.Authorization/roleDefinitions/")
    # Owner at the subscription has no data actions: the operator needs a data role too.
    with pytest.raises(HttpResponseError, match="ForbiddenByRbac"):
        secret_client(name, operator_credential).set_secret("s", "v")
    cloud.assign_role(scope=vid, role_definition_id=role_base + rbac.KEY_VAULT_SECRETS_OFFICER,
                      principal_id=azure_env.operator.object_id, immediate=True)
    secret_client(name, operator_credential).set_secret("s", "v")

    url = f"https://{name}.vault.azure.net/secrets/s?api-version=7.4"
    r = requests.get(url, headers=bearer(grader_credential))
    gr = azure_env.grader
    assert r.status_code == 403
    assert r.json() == {"error": {"code": "Forbidden", "message": (
        "Caller is not authorized to perform action on resource.\r\n"
        "If role assignments, deny assignments or role definitions were changed recently, "
        "please observe propagation time.\r\n"
        f"Caller: appid={gr.client_id};oid={gr.object_id};"
        f"iss=https://sts.windows.net/{azure_env.tenant_id}/\r\n"
        "Action: 'Microsoft.KeyVault/vaults/secrets/getSecret/action'\r\n"
        f"Resource: '{vid.lower()}/secrets/s'\r\n"
        "Assignment: (not found)\r\n"
        "DenyAssignmentId: null\r\n"
        "DecisionReason: 'DeniedWithNoValidRBAC' \r\n"
        f"Vault: {name};location=uksouth\r\n"), "innererror": {"code": "ForbiddenByRbac"}}}

    cloud.assign_role(scope=vid, role_definition_id=role_base + rbac.KEY_VAULT_SECRETS_USER,
                      principal_id=gr.object_id, immediate=True)
    assert requests.get(url, headers=bearer(grader_credential)).json()["value"] == "v"
    # Secrets User reads but does not write.
    r = requests.put(url, json={"value": "w"}, headers=bearer(grader_credential))
    assert r.status_code == 403 and "setSecret/action" in r.json()["error"]["message"]


def test_new_access_policy_applies_after_propagation(azure_env, operator_credential,
                                                     grader_credential, operator_vault):
    """“Troubleshoot Azure RBAC”: a policy change is enforced only once the propagation delay has passed."""
    cloud = azure_env.cloud
    op_policy = policy(azure_env, azure_env.operator.object_id, *ALL_SECRETS)
    secret_client(operator_vault, operator_credential).set_secret("portal-phrase", "Cake")
    azure_env.knobs.propagation_delay = 1.5
    added_at = time.monotonic()
    cloud.access_policies[operator_vault.lower()].set(
        [op_policy, policy(azure_env, azure_env.grader.object_id, "get")], cloud.effective_time())

    url = f"https://{operator_vault}.vault.azure.net/secrets/portal-phrase?api-version=7.1"
    auth = bearer(grader_credential)
    assert requests.get(url, headers=auth).status_code == 403
    deadline = time.monotonic() + 10
    while (r := requests.get(url, headers=auth)).status_code == 403:
        assert time.monotonic() < deadline, "the policy never took effect"
        time.sleep(0.1)
    assert r.status_code == 200 and r.json()["value"] == "Cake"
    assert time.monotonic() - added_at >= 1.4


# -- “Azure Key Vault REST API error codes” / “Get Secret (Azure Key Vault REST API)”: not found, conflicts, bundle shape ---
def test_secret_not_found_message(azure_env, operator_credential, operator_vault):
    base = f"https://{operator_vault}.vault.azure.net/secrets"
    r = requests.get(f"{base}/nope?api-version=7.1", headers=bearer(operator_credential))
    assert r.status_code == 404
    assert r.json() == {"error": {"code": "SecretNotFound", "message": (
        "A secret with (name/id) nope was not found in this key vault. If you recently deleted "
        "this secret you may be able to recover it using the correct recovery command. For help "
        "resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182")}}
    version = "0" * 32
    r = requests.get(f"{base}/nope/{version}?api-version=7.1", headers=bearer(operator_credential))
    assert f"(name/id) nope/{version} was not found" in r.json()["error"]["message"]


def test_reusing_a_deleted_name_is_409(azure_env, operator_credential, operator_vault):
    base = f"https://{operator_vault}.vault.azure.net/secrets/gone?api-version=7.4"
    auth = bearer(operator_credential)
    assert requests.put(base, json={"value": "1"}, headers=auth).status_code == 200
    assert requests.delete(base, headers=auth).status_code == 200
    r = requests.put(base, json={"value": "2"}, headers=auth)
    assert r.status_code == 409
    assert r.json()["error"] == {"code": "Conflict", "message": (
        "Secret gone is currently in a deleted but recoverable state, and its name cannot be "
        "reused; in this state, the secret can only be recovered or purged.")}


def test_seven_day_vault_bundle_and_recovery_level(azure_env, operator_credential):
    name = make_vault(azure_env, retention=7, policies=[
        policy(azure_env, azure_env.operator.object_id, "all")])
    auth = bearer(operator_credential)
    url = f"https://{name}.vault.azure.net/secrets/portal-phrase?api-version=7.1"
    body = requests.put(url, json={"value": "TheCakeIsALie"}, headers=auth).json()
    assert body["value"] == "TheCakeIsALie"
    assert body["id"].startswith(f"https://{name}.vault.azure.net/secrets/portal-phrase/")
    attrs = body["attributes"]
    assert attrs["recoveryLevel"] == "CustomizedRecoverable+Purgeable"
    assert attrs["recoverableDays"] == 7
    assert attrs["enabled"] is True and isinstance(attrs["created"], int)
    assert "contentType" not in body
    deleted = requests.delete(url, headers=auth).json()
    assert deleted["scheduledPurgeDate"] - deleted["deletedDate"] == 7 * 86400
    assert "value" not in deleted


def test_list_pages_end_with_null_next_link(azure_env, operator_credential, operator_vault):
    auth = bearer(operator_credential)
    base = f"https://{operator_vault}.vault.azure.net"
    for n in ("a", "b", "c"):
        requests.put(f"{base}/secrets/{n}?api-version=7.1", json={"value": n}, headers=auth)
    first = requests.get(f"{base}/secrets?api-version=7.1&maxresults=2", headers=auth).json()
    assert [i["id"] for i in first["value"]] == [f"{base}/secrets/a", f"{base}/secrets/b"]
    assert all("value" not in i for i in first["value"])
    assert first["nextLink"].startswith(f"{base}/secrets?api-version=7.1&$skiptoken=")
    second = requests.get(first["nextLink"], headers=auth).json()
    assert [i["id"] for i in second["value"]] == [f"{base}/secrets/c"]
    assert second["nextLink"] is None


# -- vault lifecycle owned by ARM -------------------------------------------------------------
def test_deleted_vault_is_absent_and_recovery_brings_secrets_back(azure_env, operator_credential,
                                                                  operator_vault):
    cloud = azure_env.cloud
    client = secret_client(operator_vault, operator_credential)
    client.set_secret("survivor", "still-here")
    key = arm_key(vault_id(azure_env, operator_vault))
    with cloud.lock:
        saved = cloud.resources.pop(key)
    r = requests.get(f"https://{operator_vault}.vault.azure.net/secrets?api-version=7.4",
                     headers=bearer(operator_credential))
    assert r.status_code == 404
    with cloud.lock:
        cloud.resources[key] = saved
    assert client.get_secret("survivor").value == "still-here"
