"""Entra user sign-in: username/password (ROPC), refresh tokens and the device code flow, as
"Microsoft identity platform and OAuth 2.0 Resource Owner Password Credentials", "... OAuth 2.0
device authorization grant flow" and "Microsoft identity platform ID tokens" describe them.

A user's access token is a v1 token like an app's, with the user's `oid`, `upn`, `unique_name`,
`name`, `scp` and `idtyp` "user", issued to the public client that asked (the Azure CLI's
first-party app id, for one). The answer carries an `id_token` and `client_info`, which MSAL needs
to make an account, and a refresh token for other resources (Graph after ARM).

The device code flow needs a browser at https://microsoft.com/devicelogin in Azure. Here the
code is approved without one, in either of two ways:

* from Python: `approve_device_code(cloud, user_code, user_principal_name)`;
* over HTTPS through the local Azure's proxy, as a browser's sign-in form would:
  `POST https://login.microsoftonline.com/common/oauth2/deviceauth` with the form fields
  `otc` (the user code), `login` (the UPN) and `passwd` (the password).

The client polling the token endpoint gets `authorization_pending` until then.
"""

from __future__ import annotations

import base64
import json
import secrets
import string
import time
from typing import Any

from ..hosts import LOGIN_ENDPOINT
from ..state import Cloud, User
from .tokens import KNOWN_RESOURCES, TokenIssuer, audience_for_scope

# First-party public clients present in every tenant: Azure CLI, Azure PowerShell, Visual Studio.
PUBLIC_CLIENTS = {
    "04b07795-8ddb-461a-bbee-02f9e1bf7b46": "Microsoft Azure CLI",
    "1950a258-227b-4e31-a9cf-717495945fc2": "Microsoft Azure PowerShell",
    "04f0c124-f2bc-4f59-8241-bf6df9866bbd": "Visual Studio",
}
OIDC_SCOPES = {"openid", "profile", "offline_access", "email"}
DEVICE_CODE_LIFETIME = 900
DEVICE_CODE_INTERVAL = 5
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


class SignInError(Exception):
    """An Entra error answer: (status, error, AADSTS code, text)."""

    def __init__(self, status: int, error: str, code: int, text: str) -> None:
        super().__init__(text)
        self.status, self.error, self.code, self.text = status, error, code, text


def _store(cloud: Cloud, name: str) -> dict:
    with cloud.lock:
        if not hasattr(cloud, name):
            setattr(cloud, name, {})
        return getattr(cloud, name)


def known_client(cloud: Cloud, client_id: str) -> bool:
    return client_id.lower() in PUBLIC_CLIENTS or \
        cloud.application_by_app_id(client_id) is not None


def resource_of(scope: str) -> str:
    """The resource of a v2 scope list, skipping the OpenID Connect scopes."""
    wanted = [s for s in scope.split() if s.lower() not in OIDC_SCOPES]
    return audience_for_scope(" ".join(wanted)) if wanted else ""


def check_password(cloud: Cloud, username: str, password: str) -> User:
    user = cloud.user_by_name(username)
    if user is None:
        raise SignInError(400, "invalid_grant", 50034,
                          f"The user account {{EmailHidden}} does not exist in the "
                          f"{cloud.tenant_id} directory. To sign into this application, the "
                          "account must be added to the directory.")
    if not secrets.compare_digest(user.password.encode(), password.encode()):
        raise SignInError(400, "invalid_grant", 50126,
                          "Error validating credentials due to invalid username or password.")
    return user


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def issue_for_user(cloud: Cloud, tokens: TokenIssuer, user: User, client_id: str, scope: str,
                   lifetime: int, *, v2: bool = True, resource: str | None = None) -> dict:
    """The token answer for a signed-in user: access, refresh and ID tokens, client info."""
    resource = resource if resource is not None else resource_of(scope)
    if resource.rstrip("/") not in {r.rstrip("/") for r in KNOWN_RESOURCES}:
        raise SignInError(400, "invalid_resource", 500011,
                          f"The resource principal named {resource} was not found in the tenant "
                          f"named {cloud.tenant_id}. This can happen if the application has not "
                          "been installed by the administrator of the tenant or consented to by "
                          "any user in the tenant. You might have sent your authentication "
                          "request to the wrong tenant.")
    first, _, last = user.display_name.partition(" ")
    extra = {"idtyp": "user", "upn": user.user_principal_name,
             "unique_name": user.user_principal_name, "name": user.display_name,
             "given_name": user.given_name or first, "family_name": user.surname or last,
             "scp": "user_impersonation", "amr": ["pwd"], "acr": "1",
             "ipaddr": "127.0.0.1", "puid": "1003" + secrets.token_hex(6).upper()}
    access = tokens.issue(aud=resource, oid=user.object_id, appid=client_id, appidacr="0",
                          lifetime=lifetime, extra=extra)
    refresh = "0.A" + secrets.token_urlsafe(48)
    _store(cloud, "refresh_tokens")[refresh] = (user.object_id, client_id.lower())
    now = int(cloud.now())
    id_token = tokens.issue(aud=client_id, oid=user.object_id, appid=client_id, lifetime=lifetime,
                            extra={"iss": f"{LOGIN_ENDPOINT}/{cloud.tenant_id}"
                                          "/v2.0", "ver": "2.0", "name": user.display_name,
                                   "preferred_username": user.user_principal_name,
                                   "iat": now, "nbf": now}).value
    out: dict[str, Any] = {
        "token_type": "Bearer",
        "scope": " ".join(s for s in scope.split() if s.lower() not in OIDC_SCOPES) or resource,
        "expires_in": lifetime, "ext_expires_in": lifetime,
        "access_token": access.value, "refresh_token": refresh, "id_token": id_token,
        "client_info": _b64({"uid": user.object_id, "utid": cloud.tenant_id}),
    }
    if not v2:
        c = access.claims
        out.update(expires_in=str(lifetime), ext_expires_in=str(lifetime),
                   expires_on=str(c["exp"]), not_before=str(c["nbf"]), resource=resource)
        out.pop("scope")
    return out


def redeem_refresh_token(cloud: Cloud, token: str, client_id: str) -> User:
    entry = _store(cloud, "refresh_tokens").get(token)
    user = cloud.user(entry[0]) if entry else None
    if entry is None or user is None or entry[1] != client_id.lower():
        raise SignInError(400, "invalid_grant", 9002313,
                          "Invalid request. Request is malformed or invalid.")
    return user


# -- device codes -----------------------------------------------------------------------------
def _user_code() -> str:
    return "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(9))


def start_device_code(cloud: Cloud, client_id: str, scope: str) -> dict:
    code = {"user_code": _user_code(), "device_code": secrets.token_urlsafe(96),
            "verification_uri": "https://microsoft.com/devicelogin",
            "expires_in": DEVICE_CODE_LIFETIME, "interval": DEVICE_CODE_INTERVAL}
    code["message"] = (f"To sign in, use a web browser to open the page "
                       f"{code['verification_uri']} and enter the code {code['user_code']} to "
                       "authenticate.")
    _store(cloud, "device_codes")[code["device_code"]] = {
        "user_code": code["user_code"], "client_id": client_id.lower(), "scope": scope,
        "expires": time.monotonic() + DEVICE_CODE_LIFETIME, "user": None}
    return code


def approve_device_code(cloud: Cloud, user_code: str, user_principal_name: str,
                        password: str | None = None) -> User:
    """Complete a device code sign-in as `user_principal_name` (what the browser page does);
    with `password`, the password is checked as the sign-in form would."""
    user = (check_password(cloud, user_principal_name, password) if password is not None
            else cloud.user_by_name(user_principal_name))
    if user is None:
        raise SignInError(400, "invalid_grant", 50034,
                          f"The user account {user_principal_name} does not exist.")
    with cloud.lock:
        for entry in _store(cloud, "device_codes").values():
            if entry["user_code"].upper() == user_code.strip().upper():
                entry["user"] = user.object_id
                return user
    raise SignInError(400, "invalid_grant", 70000, "The code you entered has expired or is not "
                      "valid.")


def redeem_device_code(cloud: Cloud, device_code: str, client_id: str) -> tuple[User, str]:
    entry = _store(cloud, "device_codes").get(device_code)
    if entry is None or entry["client_id"] != client_id.lower():
        raise SignInError(400, "invalid_grant", 70000, "The provided value for the input "
                          "parameter 'device_code' is not valid.")
    if time.monotonic() > entry["expires"]:
        raise SignInError(400, "expired_token", 70020, "The provided value for the input "
                          "parameter 'device_code' is not valid. This device code has expired.")
    if entry["user"] is None:
        raise SignInError(400, "authorization_pending", 70016, "OAuth 2.0 device flow error. "
                          "Authorization is pending. Continue polling.")
    _store(cloud, "device_codes").pop(device_code, None)
    user = cloud.user(entry["user"])
    assert user is not None
    return user, entry["scope"]
