"""Entra through the proxy with unchanged clients (“Microsoft identity platform access token claims reference”, “Microsoft identity platform and the OAuth 2.0 client credentials flow”)."""

from __future__ import annotations

import jwt
import pytest
import requests


def test_client_secret_credential_gets_a_v1_arm_token(azure_env, operator_credential):
    token = operator_credential.get_token("https://management.azure.com/.default")
    claims = jwt.decode(token.token, options={"verify_signature": False})
    assert claims["aud"] == "https://management.azure.com"
    assert claims["iss"] == f"https://sts.windows.net/{azure_env.tenant_id}/"
    assert claims["tid"] == azure_env.tenant_id
    assert claims["oid"] == claims["sub"] == azure_env.operator.object_id
    assert claims["appid"] == azure_env.operator.client_id
    assert claims["appidacr"] == "1" and claims["idtyp"] == "app" and claims["ver"] == "1.0"
    assert all(isinstance(claims[k], int) for k in ("iat", "nbf", "exp"))
    assert jwt.get_unverified_header(token.token)["alg"] == "RS256"


def test_token_signature_verifies_against_jwks(azure_env, operator_credential):
    token = operator_credential.get_token("https://vault.azure.net/.default").token
    keys = requests.get(
        f"https://login.microsoftonline.com/{azure_env.tenant_id}/discovery/v2.0/keys").json()
    key = jwt.PyJWK(keys["keys"][0])
    claims = jwt.decode(token, key.key, algorithms=["RS256"], audience="https://vault.azure.net")
    assert claims["aud"] == "https://vault.azure.net"


def test_cli_scope_keeps_the_double_slash_audience(azure_env, operator_credential):
    token = operator_credential.get_token("https://management.core.windows.net//.default")
    assert jwt.decode(token.token, options={"verify_signature": False})["aud"] == \
        "https://management.core.windows.net/"


def test_wrong_secret_is_aadsts7000215(azure_env):
    from azure.core.exceptions import ClientAuthenticationError
    from azure.identity import ClientSecretCredential

    cred = ClientSecretCredential(azure_env.tenant_id, azure_env.operator.client_id, "wrong")
    with pytest.raises(ClientAuthenticationError, match="AADSTS7000215"):
        cred.get_token("https://management.azure.com/.default")


def test_unknown_app_is_aadsts700016(azure_env):
    r = requests.post(
        f"https://login.microsoftonline.com/{azure_env.tenant_id}/oauth2/v2.0/token",
        data={"grant_type": "client_credentials", "client_id": "00000000-0000-0000-0000-000000000001",
              "client_secret": "x", "scope": "https://management.azure.com/.default"})
    assert r.status_code == 400
    body = r.json()
    assert body["error"] == "unauthorized_client" and body["error_codes"] == [700016]
    assert "was not found in the directory" in body["error_description"]


def test_v1_endpoint_returns_string_numbers_and_resource(azure_env):
    op = azure_env.operator
    r = requests.post(
        f"https://login.microsoftonline.com/{azure_env.tenant_id}/oauth2/token",
        data={"grant_type": "client_credentials", "client_id": op.client_id,
              "client_secret": op.client_secret, "resource": "https://management.azure.com/"})
    body = r.json()
    assert r.status_code == 200
    assert body["resource"] == "https://management.azure.com/"
    assert isinstance(body["expires_in"], str) and isinstance(body["expires_on"], str)


def test_openid_configuration_has_what_msal_needs(azure_env):
    r = requests.get(f"https://login.microsoftonline.com/{azure_env.tenant_id}"
                     "/v2.0/.well-known/openid-configuration")
    doc = r.json()
    assert doc["token_endpoint"].startswith(f"https://login.microsoftonline.com/{azure_env.tenant_id}/")
    assert "authorization_endpoint" in doc


def test_proxy_refuses_other_hosts(azure_env):
    with pytest.raises(requests.exceptions.ProxyError):
        requests.get("https://example.com", timeout=5)
    assert azure_env.audit.find(host="example.com") == []


def _evidence_app(cloud, uri):
    app = cloud.add_application("milab evidence")
    app.identifier_uris = [uri]
    cloud.add_service_principal(app.app_id, app.display_name)
    return app


def test_client_credentials_for_an_app_id_uri_and_the_grader_verifies_it(azure_env):
    from pytest_milab.azure.signed import TokenRefused, TokenVerifier

    op = azure_env.operator
    url = f"https://login.microsoftonline.com/{azure_env.tenant_id}/oauth2/v2.0/token"
    form = {"grant_type": "client_credentials", "client_id": op.client_id,
            "client_secret": op.client_secret, "scope": "api://milab-evidence-cc/.default"}
    r = requests.post(url, data=form)
    assert r.status_code == 400 and r.json()["error_codes"] == [500011]  # no such resource yet
    _evidence_app(azure_env.cloud, "api://milab-evidence-cc")
    r = requests.post(url, data=form)
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    # The grader reads the tenant's keys through its own HTTPS route (the local Azure's proxy).
    verifier = TokenVerifier("api://milab-evidence-cc", lambda: azure_env.tenant_id)
    claims = verifier.verify(token)
    assert claims["aud"] == "api://milab-evidence-cc" and claims["appid"] == op.client_id
    assert claims["tid"] == azure_env.tenant_id and "exp" in claims
    with pytest.raises(TokenRefused, match="another audience"):
        TokenVerifier("api://something-else", lambda: azure_env.tenant_id).verify(token)
    with pytest.raises(TokenRefused, match="not by the labs' tenant"):
        TokenVerifier("api://milab-evidence-cc",
                      lambda: "common").verify(token)
    # Re-signed by anyone else, or altered: refused.
    from cryptography.hazmat.primitives.asymmetric import rsa

    forged_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    header = jwt.get_unverified_header(token)
    body = jwt.decode(token, options={"verify_signature": False})
    forged = jwt.encode(body, forged_key, algorithm="RS256", headers={"kid": header["kid"]})
    with pytest.raises(TokenRefused, match="does not verify"):
        verifier.verify(forged)
    other_kid = jwt.encode(body, forged_key, algorithm="RS256", headers={"kid": "mine"})
    with pytest.raises(TokenRefused, match="does not publish"):
        verifier.verify(other_kid)
    with pytest.raises(TokenRefused, match="expired"):
        verifier.verify(token, now=body["exp"] + 3600)
