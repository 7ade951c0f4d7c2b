"""Microsoft Entra ID for one tenant: discovery documents, keys and client-credential tokens.

Served for `login.microsoftonline.com` and `login.windows.net`. Error bodies follow “Microsoft identity platform and the OAuth 2.0 client credentials flow”.
"""

from __future__ import annotations

import datetime as _dt
import uuid

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from ..hosts import GRAPH_ENDPOINT, GRAPH_HOST, LOGIN_HOST, LOGIN_HOSTS
from ..responses import json_response, read_form, set_caller
from ..state import Cloud
from . import users
from .tokens import KNOWN_RESOURCES, TokenIssuer, audience_for_scope

TOKEN_LIFETIME = 3599


def _aad_error(status: int, error: str, code: int, text: str, host: str) -> object:
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    trace, corr = str(uuid.uuid4()), str(uuid.uuid4())
    body = {
        "error": error,
        "error_description": f"AADSTS{code}: {text}\r\nTrace ID: {trace}\r\n"
                             f"Correlation ID: {corr}\r\nTimestamp: {now}",
        "error_codes": [code],
        "timestamp": now,
        "trace_id": trace,
        "correlation_id": corr,
        "error_uri": f"https://{host}/error?code={code}",
    }
    return json_response(body, status, {"Cache-Control": "no-store, no-cache"})


def build_app(cloud: Cloud, tokens: TokenIssuer) -> Starlette:
    def known_tenant(tenant: str) -> bool:
        return tenant.lower() in (cloud.tenant_id.lower(), "organizations", "common")

    def unknown_tenant(request: Request):
        tenant = request.path_params["tenant"]
        if known_tenant(tenant):
            return None
        return _aad_error(400, "invalid_tenant", 90002, f"Tenant '{tenant}' not found.",
                          request.url.hostname)

    def base(request: Request) -> str:
        return f"https://{request.headers.get('host', LOGIN_HOST).split(':')[0]}"

    async def openid_v2(request: Request):
        if (refusal := unknown_tenant(request)) is not None:
            return refusal
        b, tid = base(request), cloud.tenant_id
        return json_response({
            "token_endpoint": f"{b}/{tid}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt",
                                                      "client_secret_basic"],
            "jwks_uri": f"{b}/{tid}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{b}/{tid}/v2.0",
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": f"{GRAPH_ENDPOINT}/oidc/userinfo",
            "authorization_endpoint": f"{b}/{tid}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{b}/{tid}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{b}/{tid}/oauth2/v2.0/logout",
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "tid", "oid", "ver"],
            "kerberos_endpoint": f"{b}/{tid}/kerberos",
            "tenant_region_scope": "WW",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": GRAPH_HOST,
            "rbac_url": "https://pas.windows.net",
        })

    async def openid_v1(request: Request):
        if (refusal := unknown_tenant(request)) is not None:
            return refusal
        b, tid = base(request), cloud.tenant_id
        return json_response({
            "token_endpoint": f"{b}/{tid}/oauth2/token",
            "jwks_uri": f"{b}/common/discovery/keys",
            "issuer": tokens.issuer,
            "authorization_endpoint": f"{b}/{tid}/oauth2/authorize",
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "token id_token"],
            "tenant_region_scope": "WW",
            "cloud_instance_name": "microsoftonline.com",
        })

    async def instance_discovery(request: Request):
        b = base(request)
        return json_response({
            "tenant_discovery_endpoint": f"{b}/{cloud.tenant_id}/v2.0/.well-known/openid-configuration",
            "api-version": "1.1",
            "metadata": [{
                "preferred_network": LOGIN_HOSTS[0],
                "preferred_cache": LOGIN_HOSTS[1],
                "aliases": [*LOGIN_HOSTS, "login.microsoft.com", "sts.windows.net"],
            }],
        })

    async def keys(request: Request):
        return json_response(tokens.jwks())

    async def token(request: Request):
        tenant = request.path_params["tenant"]
        host = request.url.hostname or LOGIN_HOST
        v2 = request.url.path.endswith("/v2.0/token")
        form = await read_form(request)
        grant = form.get("grant_type")
        if known_tenant(tenant) and grant in ("password", "refresh_token",
                                              users.DEVICE_CODE_GRANT):
            return user_token(request, form, grant, v2, host)  # `organizations` serves users
        if not known_tenant(tenant) or tenant.lower() in ("common", "organizations"):
            return _aad_error(400, "invalid_request", 90002,
                              f"Tenant '{tenant}' not found. Check to make sure you have the "
                              "correct tenant ID and are signing into the correct cloud.", host)
        if grant != "client_credentials":
            return _aad_error(400, "unsupported_grant_type", 70003,
                              "The app requested an unsupported grant type "
                              f"'{grant or ''}'.", host)
        client_id = form.get("client_id") or ""
        secret = form.get("client_secret")
        app = cloud.application_by_app_id(client_id) if client_id else None
        sp = cloud.sp_by_app_id(client_id) if client_id else None
        if app is None or sp is None:
            return _aad_error(400, "unauthorized_client", 700016,
                              f"Application with identifier '{client_id}' was not found in the "
                              f"directory '{cloud.tenant_id}'. This can happen if the application "
                              "has not been installed by the administrator of the tenant or "
                              "consented to by any user in the tenant. You may have sent your "
                              "authentication request to the wrong tenant.", host)
        if not secret or not any(p["secretText"] == secret for p in app.passwords):
            return _aad_error(401, "invalid_client", 7000215,
                              "Invalid client secret provided. Ensure the secret being sent in "
                              "the request is the client secret value, not the client secret "
                              f"ID, for a secret added to app '{client_id}'.", host)
        resource = (audience_for_scope(form.get("scope") or "") if v2
                    else (form.get("resource") or ""))
        if resource.rstrip("/") not in {r.rstrip("/") for r in KNOWN_RESOURCES} \
                and cloud.resource_application(resource) is None:
            return _aad_error(400, "invalid_resource", 500011,
                              f"The resource principal named {resource} was not found in the "
                              f"tenant named {cloud.tenant_id}. This can happen if the "
                              "application has not been installed by the administrator of the "
                              "tenant or consented to by any user in the tenant. You might have "
                              "sent your authentication request to the wrong tenant.", host)
        issued = tokens.issue(aud=resource, oid=sp.object_id, appid=sp.app_id, appidacr="1",
                              lifetime=TOKEN_LIFETIME)
        set_caller(request, sp.object_id)
        headers = {"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"}
        if v2:
            return json_response({"token_type": "Bearer", "expires_in": TOKEN_LIFETIME,
                                  "ext_expires_in": TOKEN_LIFETIME,
                                  "access_token": issued.value}, 200, headers)
        c = issued.claims
        return json_response({
            "token_type": "Bearer", "expires_in": str(TOKEN_LIFETIME),
            "ext_expires_in": str(TOKEN_LIFETIME), "expires_on": str(c["exp"]),
            "not_before": str(c["nbf"]), "resource": resource, "access_token": issued.value,
        }, 200, headers)

    def user_token(request: Request, form: dict, grant: str, v2: bool, host: str):
        """Tokens for a user: username/password, a refresh token or an approved device code."""
        client_id = form.get("client_id") or ""
        try:
            if not users.known_client(cloud, client_id):
                raise users.SignInError(400, "unauthorized_client", 700016,
                                        f"Application with identifier '{client_id}' was not "
                                        f"found in the directory '{cloud.tenant_id}'.")
            scope = form.get("scope") or ""
            if grant == "password":
                user = users.check_password(cloud, form.get("username") or "",
                                            form.get("password") or "")
            elif grant == "refresh_token":
                user = users.redeem_refresh_token(cloud, form.get("refresh_token") or "",
                                                  client_id)
            else:
                user, first_scope = users.redeem_device_code(cloud, form.get("device_code") or "",
                                                             client_id)
                scope = scope or first_scope
            body = users.issue_for_user(cloud, tokens, user, client_id, scope, TOKEN_LIFETIME,
                                        v2=v2, resource=None if v2 else form.get("resource", ""))
        except users.SignInError as exc:
            return _aad_error(exc.status, exc.error, exc.code, exc.text, host)
        set_caller(request, user.object_id)
        return json_response(body, 200, {"Cache-Control": "no-store, no-cache",
                                         "Pragma": "no-cache"})

    async def device_code(request: Request):
        if (refusal := unknown_tenant(request)) is not None:
            return refusal
        form = await read_form(request)
        client_id = form.get("client_id") or ""
        if not users.known_client(cloud, client_id):
            return _aad_error(400, "unauthorized_client", 700016,
                              f"Application with identifier '{client_id}' was not found in the "
                              f"directory '{cloud.tenant_id}'.", request.url.hostname)
        return json_response(users.start_device_code(cloud, client_id, form.get("scope") or ""))

    async def device_auth(request: Request):
        """Stands in for the browser page at microsoft.com/devicelogin (users.py)."""
        form = await read_form(request)
        try:
            user = users.approve_device_code(cloud, form.get("otc") or "", form.get("login") or "",
                                             form.get("passwd") or "")
        except users.SignInError as exc:
            return _aad_error(exc.status, exc.error, exc.code, exc.text, request.url.hostname)
        return json_response({"approved": True, "userPrincipalName": user.user_principal_name})

    async def user_realm(request: Request):
        """MSAL asks whether an account is managed or federated before a password sign-in."""
        name = request.path_params["user"]
        domain = name.split("@", 1)[-1]
        return json_response({"ver": "1.0", "account_type": "Managed", "domain_name": domain,
                              "cloud_instance_name": "microsoftonline.com",
                              "cloud_audience_urn": "urn:federation:MicrosoftOnline"})

    return Starlette(routes=[
        Route("/common/userrealm/{user}", user_realm),
        Route("/common/oauth2/deviceauth", device_auth, methods=["POST"]),
        Route("/{tenant}/oauth2/v2.0/devicecode", device_code, methods=["POST"]),
        Route("/common/discovery/instance", instance_discovery),
        Route("/common/discovery/keys", keys),
        Route("/{tenant}/discovery/v2.0/keys", keys),
        Route("/{tenant}/discovery/keys", keys),
        Route("/{tenant}/v2.0/.well-known/openid-configuration", openid_v2),
        Route("/{tenant}/.well-known/openid-configuration", openid_v1),
        Route("/{tenant}/oauth2/v2.0/token", token, methods=["POST"]),
        Route("/{tenant}/oauth2/token", token, methods=["POST"]),
    ])
