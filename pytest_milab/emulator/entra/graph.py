"""Microsoft Graph v1.0 (`https://graph.microsoft.com`): the applications and service principals
`az ad sp create-for-rbac`, `az role assignment create --assignee` and clean-up scripts use.

Reads are open to any principal of the tenant; writes need the caller's `graph_write` (the
operator's Application Administrator-like right). Managed identities, which ARM creates as
service principals, are listed like any other. `$select` is honoured as a plain projection;
`$expand`, `$orderby`, `$count` and `$search` are ignored.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import secrets
import string
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..hosts import GRAPH_ENDPOINT, LOGIN_ENDPOINT, TENANT_DOMAIN
from ..responses import set_caller
from ..state import Application, Cloud, ServicePrincipal, User, password_credential
from .tokens import GRAPH_AUDIENCES, TokenIssuer, TokenRejected

GRAPH = GRAPH_ENDPOINT
VERSIONS = ("v1.0", "beta")  # beta answers like v1.0: the few calls made to it need no more
CONTENT_TYPE = ("application/json;odata.metadata=minimal;odata.streaming=true;"
                "IEEE754Compatible=false;charset=utf-8")
DOMAIN = TENANT_DOMAIN
PAGE_SIZE = 100  # Graph's default page for directory objects
GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
SECRET_ALPHABET = string.ascii_letters + string.digits + "._~-"


# -- responses --------------------------------------------------------------------------------
def _ids(request: Request) -> tuple[str, str]:
    rid = request.scope.setdefault("state", {}).setdefault("graph_request_id", str(uuid.uuid4()))
    return rid, request.headers.get("client-request-id") or rid


def graph_json(request: Request, body: Any, status: int = 200,
               extra: dict[str, str] | None = None) -> Response:
    rid, crid = _ids(request)
    headers = {
        "Cache-Control": "no-cache",
        "OData-Version": "4.0",
        "request-id": rid,
        "client-request-id": crid,
        "Strict-Transport-Security": "max-age=31536000",
        "x-ms-ags-diagnostic": json.dumps({"ServerInfo": {
            "DataCenter": "Local Azure", "Slice": "E", "Ring": "5", "ScaleUnit": "000",
            "RoleInstance": "LOCAL"}}, separators=(",", ":")),
    }
    headers.update(extra or {})
    if body is None:
        return Response(b"", status_code=status, headers=headers)
    data = json.dumps(body, separators=(",", ":")).encode()
    return Response(data, status_code=status, headers=headers, media_type=CONTENT_TYPE)


def graph_error(request: Request, status: int, code: str, message: str,
                extra: dict[str, str] | None = None) -> Response:
    rid, crid = _ids(request)
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return graph_json(request, {"error": {
        "code": code, "message": message,
        "innerError": {"date": date, "request-id": rid, "client-request-id": crid},
    }}, status, extra)


def not_found(request: Request, ident: str) -> Response:
    return graph_error(request, 404, "Request_ResourceNotFound",
                       f"Resource '{ident}' does not exist or one of its queried "
                       "reference-property objects are not present.")


def denied(request: Request) -> Response:
    return graph_error(request, 403, "Authorization_RequestDenied",
                       "Insufficient privileges to complete the operation.")


def bad_request(request: Request, message: str, code: str = "Request_BadRequest") -> Response:
    return graph_error(request, 400, code, message)


def graph_time(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def context(version: str, fragment: str) -> str:
    return f"{GRAPH}/{version}/$metadata#{fragment}"


def new_secret() -> str:
    """A client secret shaped like Entra's: 40 characters with `8Q~` after the hint."""
    pick = secrets.choice
    return ("".join(pick(string.ascii_letters + string.digits) for _ in range(3)) + "8Q~"
            + "".join(pick(SECRET_ALPHABET) for _ in range(34)))


# -- object shapes ----------------------------------------------------------------------------
def public_password(cred: dict) -> dict:
    """A password credential as Graph shows it after creation: the secret is never returned."""
    out = dict(cred)
    out["secretText"] = None
    return out


def application_json(app: Application) -> dict:
    return {
        "id": app.object_id,
        "deletedDateTime": None,
        "appId": app.app_id,
        "applicationTemplateId": None,
        "disabledByMicrosoftStatus": None,
        "createdDateTime": graph_time(app.created),
        "displayName": app.display_name,
        "description": None,
        "groupMembershipClaims": None,
        "identifierUris": list(app.identifier_uris),
        "isDeviceOnlyAuthSupported": None,
        "isFallbackPublicClient": None,
        "notes": None,
        "publisherDomain": DOMAIN,
        "serviceManagementReference": None,
        "signInAudience": app.sign_in_audience,
        "tags": list(app.tags),
        "tokenEncryptionKeyId": None,
        "defaultRedirectUri": None,
        "optionalClaims": None,
        "addIns": [],
        "api": {"acceptMappedClaims": None, "knownClientApplications": [],
                "requestedAccessTokenVersion": app.requested_access_token_version,
                "oauth2PermissionScopes": [],
                "preAuthorizedApplications": []},
        "appRoles": [],
        "info": {"logoUrl": None, "marketingUrl": None, "privacyStatementUrl": None,
                 "supportUrl": None, "termsOfServiceUrl": None},
        "keyCredentials": [],
        "parentalControlSettings": {"countriesBlockedForMinors": [], "legalAgeGroupRule": "Allow"},
        "passwordCredentials": [public_password(p) for p in app.passwords],
        "publicClient": {"redirectUris": []},
        "requiredResourceAccess": [],
        "verifiedPublisher": {"displayName": None, "verifiedPublisherId": None,
                              "addedDateTime": None},
        "web": {"homePageUrl": None, "logoutUrl": None, "redirectUris": [],
                "implicitGrantSettings": {"enableAccessTokenIssuance": False,
                                          "enableIdTokenIssuance": False},
                "redirectUriSettings": []},
        "spa": {"redirectUris": []},
    }


def _is_user_assigned(resource_id: str) -> bool:
    return "/microsoft.managedidentity/userassignedidentities/" in resource_id.lower()


def _app_audience(cloud: Cloud, app_id: str) -> str:
    app = cloud.application_by_app_id(app_id)
    return app.sign_in_audience if app else "AzureADMyOrg"


AUDIENCES = ("AzureADMyOrg", "AzureADMultipleOrgs", "AzureADandPersonalMicrosoftAccount",
             "PersonalMicrosoftAccount")


def user_json(user: User) -> dict:
    """A user's default properties, as "Get user" (Microsoft Graph v1.0) returns them."""
    return {"businessPhones": [], "displayName": user.display_name,
            "givenName": user.given_name, "jobTitle": None, "mail": None, "mobilePhone": None,
            "officeLocation": None, "preferredLanguage": None, "surname": user.surname,
            "userPrincipalName": user.user_principal_name, "id": user.object_id}


def service_principal_json(cloud: Cloud, sp: ServicePrincipal) -> dict:
    managed = sp.kind == "ManagedIdentity"
    names = [sp.app_id]
    alternative: list[str] = []
    if managed and sp.mi_resource_id:
        names.append(sp.mi_resource_id)
        # [OBS] system-assigned identities say isExplicit=False, user-assigned ones True.
        explicit = "True" if _is_user_assigned(sp.mi_resource_id) else "False"
        alternative = [f"isExplicit={explicit}", sp.mi_resource_id]
    return {
        "id": sp.object_id,
        "deletedDateTime": None,
        "accountEnabled": True,
        "alternativeNames": alternative,
        "appDisplayName": sp.display_name,
        "appDescription": None,
        "appId": sp.app_id,
        "applicationTemplateId": None,
        # UNCONFIRMED: managed identities belong to a Microsoft-owned app; left null here.
        "appOwnerOrganizationId": None if managed else cloud.tenant_id,
        "appRoleAssignmentRequired": False,
        "createdDateTime": graph_time(sp.created) if sp.created else None,
        "description": None,
        "disabledByMicrosoftStatus": None,
        "displayName": sp.display_name,
        "homepage": None,
        "loginUrl": None,
        "logoutUrl": None,
        "notes": None,
        "notificationEmailAddresses": [],
        "preferredSingleSignOnMode": None,
        "preferredTokenSigningKeyThumbprint": None,
        "replyUrls": [],
        "servicePrincipalNames": names,
        "servicePrincipalType": "ManagedIdentity" if managed else "Application",
        "signInAudience": None if managed else _app_audience(cloud, sp.app_id),
        "tags": list(sp.tags),
        "tokenEncryptionKeyId": None,
        "samlSingleSignOnSettings": None,
        "addIns": [],
        "appRoles": [],
        "info": {"logoUrl": None, "marketingUrl": None, "privacyStatementUrl": None,
                 "supportUrl": None, "termsOfServiceUrl": None},
        "keyCredentials": [],
        "oauth2PermissionScopes": [],
        "passwordCredentials": [],
        "resourceSpecificApplicationPermissions": [],
        "verifiedPublisher": {"displayName": None, "verifiedPublisherId": None,
                              "addedDateTime": None},
    }


# -- $filter ----------------------------------------------------------------------------------
_STR = r"'((?:[^']|'')*)'"
_EQ = re.compile(rf"(\w+)\s+eq\s+{_STR}", re.I)
_STARTSWITH = re.compile(rf"startswith\(\s*(\w+)\s*,\s*{_STR}\s*\)", re.I)
_ANY = re.compile(rf"(\w+)/any\(\s*(\w+)\s*:\s*\2\s+eq\s+{_STR}\s*\)", re.I)
_AND = re.compile(r"\s+and\s+", re.I)

# Properties each collection can be filtered on, by operator.
FILTERABLE = {
    "applications": {"eq": {"appid", "displayname", "id", "publisherdomain"},
                     "startswith": {"displayname"}, "any": {"identifieruris", "tags"}},
    "users": {"eq": {"displayname", "id", "mail", "userprincipalname"},
              "startswith": {"displayname", "userprincipalname", "mail"}, "any": set()},
    "servicePrincipals": {"eq": {"appid", "displayname", "id", "serviceprincipaltype"},
                          "startswith": {"displayname"},
                          "any": {"serviceprincipalnames", "tags", "alternativenames"}},
}
RESOURCE_NAME = {"applications": "Application", "servicePrincipals": "ServicePrincipal",
                 "users": "User"}

Predicate = Callable[[dict], bool]


class FilterError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _prop(obj: dict, name: str) -> Any:
    return next((v for k, v in obj.items() if k.lower() == name.lower()), None)


def _unquote(literal: str) -> str:
    return literal.replace("''", "'")


def _clause(kind: str, prop: str, value: str) -> Predicate:
    value = _unquote(value).lower()
    if kind == "eq":
        return lambda o: str(_prop(o, prop) or "").lower() == value
    if kind == "startswith":
        return lambda o: str(_prop(o, prop) or "").lower().startswith(value)
    return lambda o: any(str(x).lower() == value for x in (_prop(o, prop) or []))


def _match_clause(expr: str, pos: int) -> tuple[str, re.Match]:
    for kind, pattern in (("startswith", _STARTSWITH), ("any", _ANY), ("eq", _EQ)):
        m = pattern.match(expr, pos)
        if m:
            return kind, m
    raise FilterError("BadRequest", f"Invalid filter clause: {expr[pos:] or expr}")


def parse_filter(expr: str, collection: str) -> Predicate:
    """`a eq 'x'`, `startswith(a,'x')` and `a/any(c:c eq 'x')`, joined with `and`."""
    allowed = FILTERABLE[collection]
    predicates: list[Predicate] = []
    pos, expr = 0, expr.strip()
    while True:
        kind, m = _match_clause(expr, pos)
        prop = m.group(1)
        if prop.lower() not in allowed[kind]:
            raise FilterError("Request_UnsupportedQuery",
                              "Unsupported or invalid query filter clause specified for property "
                              f"'{prop}' of resource '{RESOURCE_NAME[collection]}'.")
        predicates.append(_clause(kind, prop, m.group(m.lastindex or 1)))
        pos = m.end()
        if pos >= len(expr.rstrip()):
            break
        joiner = _AND.match(expr, pos)
        if not joiner:
            raise FilterError("BadRequest", f"Invalid filter clause: {expr}")
        pos = joiner.end()
    return lambda o: all(p(o) for p in predicates)


def _select(obj: dict, select: str | None) -> dict:
    if not select:
        return obj
    wanted = {s.strip().lower() for s in select.split(",") if s.strip()}
    return {k: v for k, v in obj.items() if k.lower() in wanted or k.startswith("@odata")}


# -- the service ------------------------------------------------------------------------------
KEYED = re.compile(r"^(applications|servicePrincipals)"
                   r"(?:\(appId='(?P<app_id>[^']*)'\)|/(?P<id>[^/()]+))"
                   r"(?:/(?P<action>[A-Za-z.]+))?/?$", re.I)


def _collection(name: str) -> str:
    return "applications" if name.lower() == "applications" else "servicePrincipals"


class GraphService:
    """The handlers; one instance per local Azure."""

    def __init__(self, cloud: Cloud, tokens: TokenIssuer) -> None:
        self.cloud = cloud
        self.tokens = tokens

    # -- gate ---------------------------------------------------------------------------------
    def authenticate(self, request: Request) -> dict | Response:
        try:
            return self.tokens.verify_header(request.headers.get("authorization"),
                                             audiences=GRAPH_AUDIENCES)
        except TokenRejected as exc:
            messages = {
                "missing": "Access token is empty.",
                "audience": "Access token validation failure. Invalid audience.",
                "expired": "Lifetime validation failed, the token is expired.",
            }
            # UNCONFIRMED: the exact text for a token that does not verify.
            message = messages.get(exc.kind, "Access token validation failure.")
            return graph_error(request, 401, "InvalidAuthenticationToken", message,
                               {"WWW-Authenticate": 'Bearer realm="", authorization_uri='
                                f'"{LOGIN_ENDPOINT}/common/oauth2/authorize", '
                                'client_id="00000003-0000-0000-c000-000000000000"'})

    def may_write(self, claims: dict) -> bool:
        """Service principals granted it; users, who may register applications by default
        ("Default user permissions in Microsoft Entra ID")."""
        if claims.get("idtyp") == "user" and self.cloud.user(str(claims.get("oid") or "")):
            return True
        sp = self.cloud.principal(str(claims.get("oid") or ""))
        return bool(sp and sp.graph_write)

    async def dispatch(self, request: Request) -> Response:
        version = request.path_params["version"]
        rest = request.path_params["rest"].strip("/")
        claims = self.authenticate(request)
        if isinstance(claims, Response):
            return claims
        set_caller(request, claims.get("oid"))
        if version not in VERSIONS:
            return bad_request(request, f"Invalid version: {version}", "BadRequest")
        return await self.route(request, version, rest, claims)

    async def route(self, request: Request, version: str, rest: str, claims: dict) -> Response:
        method, lower = request.method, rest.lower()
        if lower in ("applications", "serviceprincipals"):
            collection = _collection(lower)
            if method == "GET":
                return self.list_objects(request, version, collection)
            if method == "POST":
                if not self.may_write(claims):
                    return denied(request)
                body = await _body(request)
                if collection == "applications":
                    return self.create_application(request, version, body)
                return self.create_service_principal(request, version, body)
        keyed = KEYED.match(rest)
        if keyed:
            return await self.keyed(request, version, keyed, claims)
        if lower == "directoryobjects/getbyids" and method == "POST":
            return self.get_by_ids(request, version, await _body(request))
        if lower.startswith("directoryobjects/") and method == "GET":
            return self.directory_object(request, version, rest.split("/", 1)[1])
        if lower == "organization" and method == "GET":
            return self.organization(request, version)
        if lower == "me" or lower.startswith("me/"):
            user = self.cloud.user(str(claims.get("oid") or "")) \
                if claims.get("idtyp") == "user" else None
            if user is None:
                # [OBS] what Graph tells an app-only token.
                return bad_request(request, "/me request is only valid with delegated "
                                            "authentication flow.", "BadRequest")
            if lower == "me" and method == "GET":
                return self.get_user(request, version, user)
        if lower == "users" and method == "GET":
            return self.list_users(request, version)
        if lower.startswith("users/") and lower.count("/") == 1 and method == "GET":
            ident = rest.split("/", 1)[1]
            user = self.cloud.user(ident) if GUID.match(ident) else \
                self.cloud.user_by_name(ident)
            if user is None:
                return not_found(request, ident)
            return self.get_user(request, version, user)
        segment = rest.split("/", 1)[0].split("(", 1)[0]
        if method not in ("GET", "POST", "PATCH", "DELETE"):
            return graph_error(request, 405, "Request_BadRequest",
                               "Specified HTTP method is not allowed for the request target.")
        return bad_request(request, f"Resource not found for the segment '{segment}'.",
                           "BadRequest")

    async def keyed(self, request: Request, version: str, m: re.Match, claims: dict) -> Response:
        collection = _collection(m.group(1))
        action = (m.group("action") or "").lower()
        ident = m.group("id") or m.group("app_id") or ""
        if m.group("id") and not GUID.match(ident):
            return bad_request(request, f"Invalid object identifier '{ident}'.")
        obj = self.lookup(collection, object_id=m.group("id"), app_id=m.group("app_id"))
        if obj is None:
            return not_found(request, ident)
        method = request.method
        if action not in ("", "addpassword", "removepassword"):
            return bad_request(request, f"Resource not found for the segment "
                                        f"'{m.group('action')}'.", "BadRequest")
        if method == "GET" and not action:
            return self.get(request, version, collection, obj)
        if method not in ("PATCH", "DELETE", "POST"):
            return bad_request(request, "Specified HTTP method is not allowed for the request "
                                        "target.")
        if not self.may_write(claims):
            return denied(request)
        body = await _body(request)
        if method == "PATCH" and not action:
            return self.update(request, obj, body)
        if method == "DELETE" and not action:
            return self.delete(request, obj)
        if method == "POST" and action == "addpassword" and isinstance(obj, Application):
            return self.add_password(request, version, obj, body)
        if method == "POST" and action == "removepassword" and isinstance(obj, Application):
            return self.remove_password(request, obj, body)
        return bad_request(request, f"Resource not found for the segment '{m.group('action')}'.",
                           "BadRequest")

    # -- users --------------------------------------------------------------------------------
    def get_user(self, request: Request, version: str, user: User) -> Response:
        body = {"@odata.context": context(version, "users/$entity")}
        body.update(_select(user_json(user), request.query_params.get("$select")))
        return graph_json(request, body)

    def list_users(self, request: Request, version: str) -> Response:
        with self.cloud.lock:
            items = [user_json(u) for u in sorted(self.cloud.users.values(),
                                                  key=lambda u: u.created)]
        expr = request.query_params.get("$filter")
        if expr:
            try:
                predicate = parse_filter(expr, "users")
            except FilterError as exc:
                return bad_request(request, exc.message, exc.code)
            items = [o for o in items if predicate(o)]
        select = request.query_params.get("$select")
        return self.page(request, version, "users", [_select(o, select) for o in items])

    # -- reads --------------------------------------------------------------------------------
    def lookup(self, collection: str, *, object_id: str | None = None,
               app_id: str | None = None) -> Application | ServicePrincipal | None:
        with self.cloud.lock:
            pool: list = list((self.cloud.applications if collection == "applications"
                               else self.cloud.service_principals).values())
        for obj in pool:
            if object_id and obj.object_id.lower() == object_id.lower():
                return obj
            if app_id and obj.app_id.lower() == app_id.lower():
                return obj
        return None

    def to_json(self, obj: Application | ServicePrincipal) -> dict:
        if isinstance(obj, Application):
            return application_json(obj)
        return service_principal_json(self.cloud, obj)

    def get(self, request: Request, version: str, collection: str, obj) -> Response:
        body = {"@odata.context": context(version, f"{collection}/$entity")}
        body.update(_select(self.to_json(obj), request.query_params.get("$select")))
        return graph_json(request, body)

    def list_objects(self, request: Request, version: str, collection: str) -> Response:
        with self.cloud.lock:
            pool = list((self.cloud.applications if collection == "applications"
                         else self.cloud.service_principals).values())
        items = [self.to_json(o) for o in sorted(pool, key=lambda o: o.created)]
        expr = request.query_params.get("$filter")
        if expr:
            try:
                predicate = parse_filter(expr, collection)
            except FilterError as exc:
                return bad_request(request, exc.message, exc.code)
            items = [o for o in items if predicate(o)]
        select = request.query_params.get("$select")
        return self.page(request, version, collection, [_select(o, select) for o in items])

    def page(self, request: Request, version: str, collection: str, items: list[dict]) -> Response:
        params = request.query_params
        try:
            top = int(params.get("$top") or PAGE_SIZE)
            start = int(params.get("$skiptoken") or 0)
        except ValueError:
            return bad_request(request, "Invalid page request.", "BadRequest")
        top = max(1, min(top, 999))
        body: dict[str, Any] = {"@odata.context": context(version, collection),
                                "value": items[start:start + top]}
        if start + top < len(items):
            query = {k: v for k, v in params.items() if k != "$skiptoken"}
            query["$skiptoken"] = str(start + top)
            body["@odata.nextLink"] = f"{GRAPH}/{version}/{collection}?{urlencode(query)}"
        return graph_json(request, body)

    def get_by_ids(self, request: Request, version: str, body: dict | None) -> Response:
        ids = [str(i).lower() for i in (body or {}).get("ids") or []]
        types = {str(t).lower() for t in (body or {}).get("types") or []}
        found: list[dict] = []
        with self.cloud.lock:
            pools = [("servicePrincipal", list(self.cloud.service_principals.values())),
                     ("application", list(self.cloud.applications.values()))]
        for kind, pool in pools:
            if types and kind.lower() not in types:
                continue
            for obj in pool:
                if obj.object_id.lower() in ids:
                    found.append({"@odata.type": f"#microsoft.graph.{kind}", **self.to_json(obj)})
        if not types or "user" in types:
            for ident in ids:
                user = self.cloud.user(ident)
                if user is not None:
                    found.append({"@odata.type": "#microsoft.graph.user", **user_json(user)})
        return graph_json(request, {"@odata.context": context(version, "directoryObjects"),
                                    "value": found})

    def directory_object(self, request: Request, version: str, ident: str) -> Response:
        for collection, kind in (("servicePrincipals", "servicePrincipal"),
                                 ("applications", "application")):
            obj = self.lookup(collection, object_id=ident)
            if obj is not None:
                body = {"@odata.context": context(version, "directoryObjects/$entity"),
                        "@odata.type": f"#microsoft.graph.{kind}"}
                body.update(self.to_json(obj))
                return graph_json(request, body)
        user = self.cloud.user(ident)
        if user is not None:
            body = {"@odata.context": context(version, "directoryObjects/$entity"),
                    "@odata.type": "#microsoft.graph.user", **user_json(user)}
            return graph_json(request, body)
        return not_found(request, ident)

    def organization(self, request: Request, version: str) -> Response:
        tid = self.cloud.tenant_id
        return graph_json(request, {"@odata.context": context(version, "organization"), "value": [{
            "id": tid,
            "deletedDateTime": None,
            "displayName": "Local Azure",
            "tenantType": "AAD",
            "countryLetterCode": "GB",
            "verifiedDomains": [{"capabilities": "Email, OfficeCommunicationsOnlineService",
                                 "isDefault": True, "isInitial": True, "name": DOMAIN,
                                 "type": "Managed"}],
        }]})

    # -- writes -------------------------------------------------------------------------------
    def create_application(self, request: Request, version: str, body: dict | None) -> Response:
        name = (body or {}).get("displayName")
        if not isinstance(name, str) or not name:
            # UNCONFIRMED: wording for a missing displayName.
            return bad_request(request, "Invalid value specified for property 'displayName' of "
                                        "resource 'Application'.")
        audience = (body or {}).get("signInAudience") or "AzureADandPersonalMicrosoftAccount"
        if audience not in AUDIENCES:
            return bad_request(request, "Invalid value specified for property 'signInAudience' "
                                        "of resource 'Application'.")
        token_version = ((body or {}).get("api") or {}).get("requestedAccessTokenVersion")
        app = self.cloud.add_application(name)
        with self.cloud.lock:
            app.tags = [str(t) for t in (body or {}).get("tags") or []]
            app.identifier_uris = [str(u) for u in (body or {}).get("identifierUris") or []]
            # Graph requires v2 tokens for audiences with personal accounts, and picks them.
            app.sign_in_audience = audience
            app.requested_access_token_version = token_version if token_version is not None \
                else (2 if "Personal" in audience else None)
        out = {"@odata.context": context(version, "applications/$entity")}
        out.update(application_json(app))
        return graph_json(request, out, 201, {"Location": self._location(app.object_id,
                                                                           "Application")})

    def create_service_principal(self, request: Request, version: str,
                                 body: dict | None) -> Response:
        app_id = str((body or {}).get("appId") or "")
        app = self.cloud.application_by_app_id(app_id) if app_id else None
        if app is None:
            # UNCONFIRMED: the code and wording when no application has this appId.
            return bad_request(request, f"The appId '{app_id}' of the service principal does not "
                                        "reference a valid application object.")
        with self.cloud.lock:
            if self.cloud.sp_by_app_id(app_id) is not None:
                # [OBS] Graph's 409 for a second service principal of one app.
                return graph_error(request, 409, "Request_MultipleObjectsWithSameKeyValue",
                                   "The service principal cannot be created, updated, or "
                                   "restored because the service principal name "
                                   f"{app.app_id} is already in use.")
            sp = self.cloud.add_service_principal(app.app_id, app.display_name)
            sp.tags = [str(t) for t in (body or {}).get("tags") or []]
        out = {"@odata.context": context(version, "servicePrincipals/$entity")}
        out.update(service_principal_json(self.cloud, sp))
        return graph_json(request, out, 201, {"Location": self._location(sp.object_id,
                                                                           "ServicePrincipal")})

    def _location(self, object_id: str, kind: str) -> str:
        return (f"{GRAPH}/v2/{self.cloud.tenant_id}/directoryObjects/{object_id}/"
                f"Microsoft.DirectoryServices.{kind}")

    def update(self, request: Request, obj, body: dict | None) -> Response:
        body = body or {}
        with self.cloud.lock:
            if isinstance(body.get("displayName"), str):
                obj.display_name = body["displayName"]
            if isinstance(body.get("tags"), list):
                obj.tags = [str(t) for t in body["tags"]]
            if isinstance(obj, Application) and isinstance(body.get("identifierUris"), list):
                obj.identifier_uris = [str(u) for u in body["identifierUris"]]
            if isinstance(obj, Application) and body.get("signInAudience") in AUDIENCES:
                obj.sign_in_audience = body["signInAudience"]
            api = body.get("api")
            if isinstance(obj, Application) and isinstance(api, dict) and \
                    "requestedAccessTokenVersion" in api:
                obj.requested_access_token_version = api["requestedAccessTokenVersion"]
        return graph_json(request, None, 204)

    def delete(self, request: Request, obj) -> Response:
        with self.cloud.lock:
            if isinstance(obj, Application):
                # Deleting an app registration takes its service principal in this tenant with it.
                self.cloud.applications.pop(obj.object_id, None)
                for key, sp in list(self.cloud.service_principals.items()):
                    if sp.app_id.lower() == obj.app_id.lower() and sp.kind == "Application":
                        del self.cloud.service_principals[key]
            elif obj.kind == "ManagedIdentity":
                # UNCONFIRMED: wording; a managed identity goes away with its Azure resource only.
                return bad_request(request, "Managed identity service principals can only be "
                                            "deleted through the Azure resource that owns them.")
            else:
                self.cloud.service_principals.pop(obj.object_id, None)
        return graph_json(request, None, 204)

    def add_password(self, request: Request, version: str, app: Application,
                     body: dict | None) -> Response:
        spec = (body or {}).get("passwordCredential") or {}
        cred = password_credential(new_secret(), spec.get("displayName"), self.cloud.now())
        for key in ("startDateTime", "endDateTime"):
            if isinstance(spec.get(key), str):
                cred[key] = spec[key]
        with self.cloud.lock:
            app.passwords.append(cred)
        out = {"@odata.context": context(version, "microsoft.graph.passwordCredential")}
        out.update(cred)  # the only time secretText is ever returned
        return graph_json(request, out)

    def remove_password(self, request: Request, app: Application, body: dict | None) -> Response:
        key_id = str((body or {}).get("keyId") or "").lower()
        with self.cloud.lock:
            keep = [p for p in app.passwords if str(p.get("keyId")).lower() != key_id]
            if len(keep) == len(app.passwords):
                # UNCONFIRMED: code and wording for an unknown keyId.
                return bad_request(request, f"No password credential found with keyId "
                                            f"'{key_id}'.")
            app.passwords[:] = keep
        return graph_json(request, None, 204)


async def _body(request: Request) -> dict | None:
    raw = await request.body()
    if not raw:
        return None
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def build_app(cloud: Cloud, tokens: TokenIssuer) -> Starlette:
    service = GraphService(cloud, tokens)
    methods = ["GET", "POST", "PATCH", "DELETE", "PUT"]

    async def no_version(request: Request) -> Response:
        # A path with no version segment ("/", "/v1.0") is not a Graph resource.
        version = request.url.path.strip("/") or "(none)"
        return bad_request(request, f"Invalid version: {version}", "BadRequest")

    return Starlette(routes=[Route("/{version}/{rest:path}", service.dispatch, methods=methods),
                             Route("/{path:path}", no_version, methods=methods)])
