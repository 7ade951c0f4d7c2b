"""Microsoft Graph v1.0 through the proxy: what `az ad sp create-for-rbac` and clean-up send
(“Azure Citadel: Managed Identities” step 13, “Azure CLI release notes” create-for-rbac row; shapes from az CLI recordings)."""

from __future__ import annotations

import uuid

import jwt
import pytest
import requests

GRAPH = "https://graph.microsoft.com/v1.0"


def graph_headers(credential) -> dict[str, str]:
    token = credential.get_token("https://graph.microsoft.com/.default").token
    return {"Authorization": f"Bearer {token}"}


def create_for_rbac(headers: dict[str, str], display_name: str) -> tuple[dict, dict, dict]:
    """The Graph calls of `az ad sp create-for-rbac`, in its order: app, password, SP."""
    app = requests.post(f"{GRAPH}/applications", headers=headers,
                        json={"displayName": display_name, "keyCredentials": []})
    assert app.status_code == 201, app.text
    pwd = requests.post(f"{GRAPH}/applications/{app.json()['id']}/addPassword", headers=headers,
                        json={"passwordCredential": {"displayName": "rbac",
                                                     "endDateTime": "2099-01-01T00:00:00Z"}})
    assert pwd.status_code == 200, pwd.text
    sp = requests.post(f"{GRAPH}/servicePrincipals", headers=headers,
                       json={"appId": app.json()["appId"], "accountEnabled": True})
    assert sp.status_code == 201, sp.text
    return app.json(), pwd.json(), sp.json()


def sign_in(azure, app_id: str, secret: str):
    """A fresh credential (no token cache) that asks Entra for an ARM token."""
    from azure.identity import ClientSecretCredential

    return ClientSecretCredential(azure.tenant_id, app_id, secret).get_token(
        "https://management.azure.com/.default")


def test_create_for_rbac_sequence_gives_a_working_credential(azure_env, operator_credential):
    headers = graph_headers(operator_credential)
    name = f"http://contributor-{uuid.uuid4().hex[:6]}"
    # The CLI first looks for an existing SP and app of that name.
    r = requests.get(f"{GRAPH}/servicePrincipals", headers=headers,
                     params={"$filter": f"displayName eq '{name}'"})
    assert r.json() == {"@odata.context": f"{GRAPH}/$metadata#servicePrincipals", "value": []}
    r = requests.get(f"{GRAPH}/applications", headers=headers,
                     params={"$filter": f"startswith(displayName,'{name}')"})
    assert r.status_code == 200 and r.json()["value"] == []

    app, pwd, sp = create_for_rbac(headers, name)
    assert app["@odata.context"] == f"{GRAPH}/$metadata#applications/$entity"
    assert app["displayName"] == name
    # What Graph gives an app made with a display name only (azure-cli recordings, 2022 on).
    assert app["signInAudience"] == "AzureADandPersonalMicrosoftAccount"
    assert app["api"]["requestedAccessTokenVersion"] == 2
    assert app["passwordCredentials"] == [] and app["tags"] == []
    assert app["createdDateTime"].endswith("Z")
    assert pwd["displayName"] == "rbac" and pwd["endDateTime"] == "2099-01-01T00:00:00Z"
    assert len(pwd["secretText"]) == 40 and pwd["hint"] == pwd["secretText"][:3]
    assert sp["appId"] == app["appId"] and sp["servicePrincipalType"] == "Application"
    assert sp["servicePrincipalNames"] == [app["appId"]] and sp["accountEnabled"] is True

    token = sign_in(azure_env, app["appId"], pwd["secretText"])
    claims = jwt.decode(token.token, options={"verify_signature": False})
    assert claims["oid"] == sp["id"] and claims["appid"] == app["appId"]

    # The secret is shown once: reading the app back gives only its metadata.
    again = requests.get(f"{GRAPH}/applications/{app['id']}", headers=headers).json()
    assert again["passwordCredentials"][0]["keyId"] == pwd["keyId"]
    assert again["passwordCredentials"][0]["secretText"] is None


def test_lookups_by_app_id_and_service_principal_name(azure_env, operator_credential):
    headers = graph_headers(operator_credential)
    app, _, sp = create_for_rbac(headers, f"lookup-{uuid.uuid4().hex[:6]}")
    app_id = app["appId"]

    r = requests.get(f"{GRAPH}/applications", headers=headers,
                     params={"$filter": f"appId eq '{app_id}'"})
    assert [a["id"] for a in r.json()["value"]] == [app["id"]]
    r = requests.get(f"{GRAPH}/servicePrincipals", headers=headers,
                     params={"$filter": f"appId eq '{app_id}'"})
    assert [s["id"] for s in r.json()["value"]] == [sp["id"]]
    r = requests.get(f"{GRAPH}/servicePrincipals", headers=headers,
                     params={"$filter": f"servicePrincipalNames/any(c:c eq '{app_id}')"})
    assert [s["id"] for s in r.json()["value"]] == [sp["id"]]
    r = requests.get(f"{GRAPH}/applications(appId='{app_id}')", headers=headers)
    assert r.status_code == 200 and r.json()["id"] == app["id"]
    r = requests.get(f"{GRAPH}/servicePrincipals(appId='{app_id}')", headers=headers)
    assert r.status_code == 200 and r.json()["id"] == sp["id"]

    r = requests.post(f"{GRAPH}/directoryObjects/getByIds", headers=headers,
                      json={"ids": [sp["id"]], "types": ["user", "group", "servicePrincipal"]})
    (found,) = r.json()["value"]
    assert found["@odata.type"] == "#microsoft.graph.servicePrincipal" and found["id"] == sp["id"]

    r = requests.get(f"{GRAPH}/organization", headers=headers)
    assert r.json()["value"][0]["id"] == azure_env.tenant_id


def test_managed_identities_are_listed(azure_env, operator_credential):
    vm = (f"/subscriptions/{azure_env.subscription_id}/resourceGroups/rg/providers/"
          "Microsoft.Compute/virtualMachines/ubuntu")
    mi = azure_env.cloud.add_service_principal(str(uuid.uuid4()), "ubuntu",
                                               kind="ManagedIdentity", mi_resource_id=vm)
    r = requests.get(f"{GRAPH}/servicePrincipals", headers=graph_headers(operator_credential),
                     params={"$filter": f"servicePrincipalNames/any(c:c eq '{vm}')"})
    (sp,) = r.json()["value"]
    assert sp["id"] == mi.object_id and sp["servicePrincipalType"] == "ManagedIdentity"
    assert sp["servicePrincipalNames"] == [mi.app_id, vm]
    assert sp["alternativeNames"] == ["isExplicit=False", vm]


def test_grader_may_read_but_not_write(azure_env, operator_credential, grader_credential):
    grader = graph_headers(grader_credential)
    r = requests.post(f"{GRAPH}/applications", headers=grader, json={"displayName": "nope"})
    assert r.status_code == 403
    err = r.json()["error"]
    assert err["code"] == "Authorization_RequestDenied"
    assert err["message"] == "Insufficient privileges to complete the operation."
    assert set(err["innerError"]) == {"date", "request-id", "client-request-id"}

    app, _, _ = create_for_rbac(graph_headers(operator_credential), f"ro-{uuid.uuid4().hex[:6]}")
    assert requests.get(f"{GRAPH}/applications/{app['id']}", headers=grader).status_code == 200
    r = requests.delete(f"{GRAPH}/applications/{app['id']}", headers=grader)
    assert r.status_code == 403
    r = requests.post(f"{GRAPH}/applications/{app['id']}/addPassword", headers=grader, json={})
    assert r.status_code == 403


def test_deleting_the_app_removes_its_sp_and_sign_in(azure_env, operator_credential):
    from azure.core.exceptions import ClientAuthenticationError

    headers = graph_headers(operator_credential)
    app, pwd, sp = create_for_rbac(headers, f"del-{uuid.uuid4().hex[:6]}")
    sign_in(azure_env, app["appId"], pwd["secretText"])

    assert requests.delete(f"{GRAPH}/applications/{app['id']}", headers=headers).status_code == 204
    r = requests.get(f"{GRAPH}/servicePrincipals/{sp['id']}", headers=headers)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "Request_ResourceNotFound"
    assert r.json()["error"]["message"] == (
        f"Resource '{sp['id']}' does not exist or one of its queried reference-property objects "
        "are not present.")
    with pytest.raises(ClientAuthenticationError, match="AADSTS700016"):
        sign_in(azure_env, app["appId"], pwd["secretText"])


def test_remove_password_retires_the_secret(azure_env, operator_credential):
    from azure.core.exceptions import ClientAuthenticationError

    headers = graph_headers(operator_credential)
    app, old, _ = create_for_rbac(headers, f"rot-{uuid.uuid4().hex[:6]}")
    new = requests.post(f"{GRAPH}/applications/{app['id']}/addPassword", headers=headers,
                        json={"passwordCredential": {"displayName": "rotated"}}).json()
    r = requests.post(f"{GRAPH}/applications/{app['id']}/removePassword", headers=headers,
                      json={"keyId": old["keyId"]})
    assert r.status_code == 204
    with pytest.raises(ClientAuthenticationError, match="AADSTS7000215"):
        sign_in(azure_env, app["appId"], old["secretText"])
    assert sign_in(azure_env, app["appId"], new["secretText"]).token


def test_patch_and_service_principal_conflicts(azure_env, operator_credential):
    headers = graph_headers(operator_credential)
    app, _, _ = create_for_rbac(headers, f"patch-{uuid.uuid4().hex[:6]}")
    r = requests.patch(f"{GRAPH}/applications/{app['id']}", headers=headers,
                       json={"displayName": "renamed", "tags": ["lab"]})
    assert r.status_code == 204
    body = requests.get(f"{GRAPH}/applications/{app['id']}", headers=headers).json()
    assert body["displayName"] == "renamed" and body["tags"] == ["lab"]

    r = requests.post(f"{GRAPH}/servicePrincipals", headers=headers, json={"appId": app["appId"]})
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "Request_MultipleObjectsWithSameKeyValue"
    r = requests.post(f"{GRAPH}/servicePrincipals", headers=headers,
                      json={"appId": str(uuid.uuid4())})
    assert r.status_code == 400


def test_tokens_for_other_audiences_are_refused(azure_env, operator_credential):
    r = requests.get(f"{GRAPH}/applications")
    assert r.status_code == 401 and r.json()["error"]["code"] == "InvalidAuthenticationToken"
    token = operator_credential.get_token("https://management.azure.com/.default").token
    r = requests.get(f"{GRAPH}/applications", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401
    assert r.json()["error"]["message"] == "Access token validation failure. Invalid audience."


def test_unsupported_filter_is_refused(azure_env, operator_credential):
    r = requests.get(f"{GRAPH}/applications", headers=graph_headers(operator_credential),
                     params={"$filter": "notes eq 'x'"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "Request_UnsupportedQuery"
