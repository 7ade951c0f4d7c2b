"""Entra users: password and device-code sign-in with MSAL and azure-identity, Graph /me and
/users, users as principals of role assignments and vault access policies."""

from __future__ import annotations

import threading
import time
import uuid

import jwt
import msal
import pytest
import requests
from test_arm import ARM, arm

AZURE_CLI = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"
GRAPH = "https://graph.microsoft.com/v1.0"


@pytest.fixture
def user(azure_env):
    return azure_env.add_user(f"u-{uuid.uuid4().hex[:8]}@localazure.onmicrosoft.com",
                              role="Reader")


def cli_app(azure, authority: str = "organizations") -> msal.PublicClientApplication:
    return msal.PublicClientApplication(
        AZURE_CLI, authority=f"https://login.microsoftonline.com/{authority}")


def test_password_sign_in_with_msal_and_graph_me(azure_env, user):
    app = cli_app(azure_env)
    got = app.acquire_token_by_username_password(
        user.user_principal_name, user.password,
        scopes=["https://management.core.windows.net//.default"])
    assert "access_token" in got, got
    claims = jwt.decode(got["access_token"], options={"verify_signature": False})
    assert (claims["oid"], claims["upn"], claims["idtyp"]) == (
        user.object_id, user.user_principal_name, "user")
    assert claims["appid"] == AZURE_CLI and claims["tid"] == azure_env.tenant_id
    assert got["id_token_claims"]["preferred_username"] == user.user_principal_name
    [account] = app.get_accounts()
    assert account["username"] == user.user_principal_name
    # Graph for the same account, from the refresh token, as `az ad signed-in-user show` does.
    graph = app.acquire_token_silent(["https://graph.microsoft.com//.default"], account)
    me = requests.get(f"{GRAPH}/me", headers={
        "Authorization": f"Bearer {graph['access_token']}"}).json()
    assert me["id"] == user.object_id and "objectId" not in me
    assert me["userPrincipalName"] == user.user_principal_name
    assert me["@odata.context"] == "https://graph.microsoft.com/v1.0/$metadata#users/$entity"
    # The user is a Reader: ARM answers as the user.
    subs = arm("GET", "/subscriptions", token=got["access_token"], api="2022-12-01").json()
    assert [s["subscriptionId"] for s in subs["value"]] == [azure_env.subscription_id]


def test_wrong_password_and_unknown_user(azure_env, user):
    app = cli_app(azure_env)
    bad = app.acquire_token_by_username_password(user.user_principal_name, "nope",
                                                 scopes=[f"{ARM}/.default"])
    assert bad["error"] == "invalid_grant" and 50126 in bad["error_codes"]
    unknown = app.acquire_token_by_username_password("nobody@localazure.onmicrosoft.com", "x",
                                                     scopes=[f"{ARM}/.default"])
    assert unknown["error"] == "invalid_grant" and 50034 in unknown["error_codes"]


def test_device_code_completed_without_a_browser(azure_env, user):
    """The code is approved through the stand-in for the sign-in page (users.py), as a person
    with the code and the password would."""
    app = cli_app(azure_env)
    flow = app.initiate_device_flow(scopes=[f"{ARM}/.default"])
    assert flow["verification_uri"] == "https://microsoft.com/devicelogin"
    assert flow["user_code"] in flow["message"]
    result: dict = {}
    waiter = threading.Thread(target=lambda: result.update(
        app.acquire_token_by_device_flow(flow, exit_condition=lambda f: time.time() > f[
            "expires_at"] or result.get("stop"))))
    # Pending until someone approves it.
    r = requests.post(f"https://login.microsoftonline.com/{azure_env.tenant_id}/oauth2/v2.0/"
                      "token", data={"grant_type": "urn:ietf:params:oauth:grant-type:device_code",
                                     "client_id": AZURE_CLI, "device_code": flow["device_code"]})
    assert r.json()["error"] == "authorization_pending"
    wrong = requests.post("https://login.microsoftonline.com/common/oauth2/deviceauth", data={
        "otc": flow["user_code"], "login": user.user_principal_name, "passwd": "wrong"})
    assert wrong.status_code == 400
    ok = requests.post("https://login.microsoftonline.com/common/oauth2/deviceauth", data={
        "otc": flow["user_code"], "login": user.user_principal_name, "passwd": user.password})
    assert ok.status_code == 200, ok.text
    waiter.start()
    waiter.join(15)
    assert "access_token" in result, result
    claims = jwt.decode(result["access_token"], options={"verify_signature": False})
    assert claims["oid"] == user.object_id


def test_users_are_principals_of_role_assignments(azure_env, operator_credential, user,
                                                  unique_group):
    sub = azure_env.subscription_id
    arm("PUT", f"/subscriptions/{sub}/resourcegroups/{unique_group}", operator_credential,
        json={"location": "uksouth"})
    scope = f"/subscriptions/{sub}/resourceGroups/{unique_group}"
    ra = arm("PUT", f"{scope}/providers/Microsoft.Authorization/roleAssignments/"
             f"{uuid.uuid4()}", operator_credential, api="2022-04-01", json={"properties": {
                 "roleDefinitionId": f"/subscriptions/{sub}/providers/Microsoft.Authorization/"
                                     "roleDefinitions/b24988ac-6180-42a0-ab88-20f7382dd24c",
                 "principalId": user.object_id}})
    assert ra.status_code == 201, ra.text
    assert ra.json()["properties"]["principalType"] == "User"
    token = operator_credential.get_token("https://graph.microsoft.com/.default").token
    found = requests.post(f"{GRAPH}/directoryObjects/getByIds",
                          headers={"Authorization": f"Bearer {token}"},
                          json={"ids": [user.object_id]}).json()["value"]
    assert found[0]["@odata.type"] == "#microsoft.graph.user"
    listed = requests.get(f"{GRAPH}/users", headers={"Authorization": f"Bearer {token}"},
                          params={"$filter": f"userPrincipalName eq '{user.user_principal_name}'"}
                          ).json()["value"]
    assert [u["id"] for u in listed] == [user.object_id]
    arm("DELETE", f"/subscriptions/{sub}/resourcegroups/{unique_group}", operator_credential)


def test_an_app_token_gets_graph_me_refused(azure_env, operator_credential):
    token = operator_credential.get_token("https://graph.microsoft.com/.default").token
    r = requests.get(f"{GRAPH}/me", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "/me request is only valid with delegated " \
                                           "authentication flow."
