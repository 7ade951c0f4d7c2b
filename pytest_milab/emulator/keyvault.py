"""The Key Vault data plane (`https://{vault}.vault.azure.net`): secrets only (“Azure Key Vault REST API error codes”).

Every request goes through the same gate, in the order a real vault applies it: the vault must
exist (in Azure a missing vault fails at DNS), the bearer token must be valid for
`https://vault.azure.net` (401 with the challenge the SDKs follow), the api-version must be one
Key Vault knows, and the caller must hold the permission: an access policy in force now, or an
RBAC data action for vaults with `enableRbacAuthorization`.

The vault itself is an ARM resource (`cloud.resources`); its contents live here, in
`cloud.vault_data[name.lower()]`, so they survive an ARM soft delete and come back on recover.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import faults, rbac
from .entra.tokens import VAULT_AUDIENCES, TokenIssuer, TokenRejected
from .hosts import LOGIN_ENDPOINT, VAULT_RESOURCE, VAULT_SUFFIX
from .responses import json_response, set_caller
from .state import Cloud, Timed

VAULT_TYPE = "microsoft.keyvault/vaults"
# 7.x are the classic versions; 2025-07-01 is the first date-named one. 2026-04-01 is what
# azure-keyvault-secrets 4.12 sends by default, and 2016-10-01 still appears in old tutorials.
API_VERSIONS = frozenset({"7.0", "7.1", "7.2", "7.3", "7.4", "7.5", "7.6", "2025-07-01",
                          "2026-04-01", "2016-10-01"})
SERVICE_VERSION = "1.9.2164.1"
SECRET_NAME = re.compile(r"^[0-9a-zA-Z-]{1,127}$")
PAGE_SIZE = 25  # Key Vault's largest page (maxresults 1..25)
HELP_403 = "For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125287"
HELP_404 = "For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"
DATA_ACTION = "Microsoft.KeyVault/vaults/secrets/"


# -- the store --------------------------------------------------------------------------------
@dataclass
class SecretVersion:
    version: str
    value: str
    content_type: str | None
    tags: dict | None
    enabled: bool
    nbf: int | None
    exp: int | None
    created: int
    updated: int


@dataclass
class Secret:
    name: str  # as first set: Key Vault names are case-insensitive but keep their spelling
    versions: list[SecretVersion] = field(default_factory=list)  # oldest first

    @property
    def latest(self) -> SecretVersion:
        return self.versions[-1]

    def version(self, version: str) -> SecretVersion | None:
        return next((v for v in self.versions if v.version == version.lower()), None)


@dataclass
class DeletedSecret:
    secret: Secret
    deleted: int
    purge_at: int


@dataclass
class VaultStore:
    """What one vault holds, keyed by lower-cased secret name."""

    secrets: dict[str, Secret] = field(default_factory=dict)
    deleted: dict[str, DeletedSecret] = field(default_factory=dict)

    def expire(self, now: float) -> None:
        """Deleted secrets past their scheduled purge date are gone, as Key Vault purges them."""
        for key in [k for k, d in self.deleted.items() if d.purge_at <= now]:
            del self.deleted[key]


def _is_vault(res: dict, name: str) -> bool:
    return (str(res.get("type", "")).lower() == VAULT_TYPE
            and str(res.get("name", "")).lower() == name)


def find_vault(cloud: Cloud, name: str) -> dict | None:
    """The ARM JSON of the vault called `name` (case-insensitive), if ARM has it. Vault names
    are unique (ARM refuses a second one, VaultAlreadyExists): where the vault was found last
    time is checked first, so a request does not read every resource of the cloud."""
    wanted = name.lower()
    with cloud.lock:
        key = cloud.vault_keys.get(wanted)
        res = cloud.resources.get(key) if key is not None else None
        if res is not None and _is_vault(res, wanted):
            return res
        for key, res in cloud.resources.items():
            if _is_vault(res, wanted):
                cloud.vault_keys[wanted] = key
                return res
    return None


def vault_store(cloud: Cloud, name: str) -> VaultStore:
    with cloud.lock:
        store = cloud.vault_data.get(name.lower())
        if store is None:
            store = cloud.vault_data[name.lower()] = VaultStore()
        return store


# -- what each vault answers with -------------------------------------------------------------
@dataclass
class VaultContext:
    """One request against one vault: who asks, and the vault's settings."""

    request: Request
    cloud: Cloud
    vault: dict
    claims: dict
    api_version: str
    params: dict[str, str]

    @property
    def name(self) -> str:
        return str(self.vault["name"])

    @property
    def props(self) -> dict:
        return self.vault.get("properties") or {}

    @property
    def base(self) -> str:
        return f"https://{self.name.lower()}{VAULT_SUFFIX}"

    @property
    def retention_days(self) -> int:
        return int(self.props.get("softDeleteRetentionInDays") or 90)

    @property
    def purge_protected(self) -> bool:
        return bool(self.props.get("enablePurgeProtection"))

    @property
    def recovery_level(self) -> str:
        # “Get Secret (Azure Key Vault REST API)”: 90 days is plain "Recoverable", anything shorter "CustomizedRecoverable";
        # "+Purgeable" unless purge protection is on.
        level = "Recoverable" if self.retention_days >= 90 else "CustomizedRecoverable"
        return level if self.purge_protected else level + "+Purgeable"

    @property
    def store(self) -> VaultStore:
        return vault_store(self.cloud, self.name)

    def now(self) -> int:
        return int(self.cloud.now())


def _location(vault: dict) -> str:
    return str(vault.get("location") or "eastus")


def _headers(vault: dict | None) -> dict[str, str]:
    headers = {
        "Cache-Control": "no-cache",
        "Pragma": "no-cache",
        "Expires": "-1",
        "x-ms-keyvault-service-version": SERVICE_VERSION,
        "x-ms-request-id": str(uuid.uuid4()),
        "x-ms-keyvault-network-info": "conn_type=Ipv4;addr=127.0.0.1;act_addr_fam=InterNetwork;",
        "Strict-Transport-Security": "max-age=31536000;includeSubDomains",
        "X-Content-Type-Options": "nosniff",
    }
    if vault is not None:
        headers["x-ms-keyvault-region"] = _location(vault)
    return headers


def kv_json(body: Any, status: int = 200, vault: dict | None = None,
            extra: dict[str, str] | None = None) -> Response:
    headers = _headers(vault)
    headers.update(extra or {})
    if body is None:
        return Response(b"", status_code=status, headers=headers)
    return json_response(body, status, headers)


def kv_error(status: int, code: str, message: str, vault: dict | None = None, *,
             inner: str | None = None, extra: dict[str, str] | None = None) -> Response:
    err: dict[str, Any] = {"code": code, "message": message}
    if inner:
        err["innererror"] = {"code": inner}
    return kv_json({"error": err}, status, vault, extra)


def secret_not_found(ctx: VaultContext, name: str, version: str = "") -> Response:
    ident = f"{name}/{version}" if version else name
    return kv_error(404, "SecretNotFound",
                    f"A secret with (name/id) {ident} was not found in this key vault. If you "
                    "recently deleted this secret you may be able to recover it using the correct "
                    f"recovery command. {HELP_404}", ctx.vault)


def deleted_not_found(ctx: VaultContext, name: str) -> Response:
    # UNCONFIRMED: the wording for a missing deleted secret; recordings show only the code.
    return kv_error(404, "SecretNotFound", f"Deleted Secret not found: {name}", ctx.vault)


def bad_parameter(ctx_or_vault: VaultContext | dict | None, message: str) -> Response:
    vault = ctx_or_vault.vault if isinstance(ctx_or_vault, VaultContext) else ctx_or_vault
    return kv_error(400, "BadParameter", message, vault)


# -- authentication ---------------------------------------------------------------------------
def _challenge(vault: dict, cloud: Cloud) -> dict[str, str]:
    tenant = (vault.get("properties") or {}).get("tenantId") or cloud.tenant_id
    return {"WWW-Authenticate": f'Bearer authorization="{LOGIN_ENDPOINT}/'
                                f'{tenant}", resource="{VAULT_RESOURCE}"'}


def _unauthorized(vault: dict, cloud: Cloud, message: str) -> Response:
    return kv_error(401, "Unauthorized", message, vault, extra=_challenge(vault, cloud))


def _rejection_message(exc: TokenRejected, authorization: str, expected_iss: str) -> str:
    if exc.kind == "missing":
        return "AKV10000: Request is missing a Bearer or PoP token."
    if exc.kind == "audience":
        return (f"AKV10022: Invalid audience. Expected {VAULT_RESOURCE}, "
                f"found: {exc.claims.get('aud')}.")
    if exc.kind == "expired":
        # [OBS] azure-sdk-for-python#12368 shows this text for an expired token.
        return "Error validating token: IDX10223"
    if exc.detail == "not a bearer token":
        # UNCONFIRMED: a Basic or empty scheme is treated as no token at all.
        return "AKV10000: Request is missing a Bearer or PoP token."
    iss = _unverified_issuer(authorization)
    if iss and iss != expected_iss:
        # [OBS] AKV10032 is what Key Vault says to a token from another tenant.
        return f"AKV10032: Invalid issuer. Expected one of {expected_iss}, found {iss}."
    # UNCONFIRMED: the code for a token whose signature does not verify.
    return "AKV10046: Unable to resolve the key used for signature validation."


def _unverified_issuer(authorization: str) -> str | None:
    value = authorization.partition(" ")[2].strip()
    try:
        return jwt.decode(value, options={"verify_signature": False}).get("iss")
    except jwt.PyJWTError:
        return None


def authenticate(request: Request, vault: dict, cloud: Cloud,
                 tokens: TokenIssuer) -> dict | Response:
    """The token's claims, or the 401 Key Vault answers with."""
    authorization = request.headers.get("authorization")
    try:
        audiences = faults.vault_audiences(cloud.knobs, VAULT_AUDIENCES)  # a quirk may lift it
        return tokens.verify_header(authorization, audiences=audiences)
    except TokenRejected as exc:
        return _unauthorized(vault, cloud,
                             _rejection_message(exc, authorization or "", tokens.issuer))


# -- authorization ----------------------------------------------------------------------------
def _caller(claims: dict) -> str:
    return f"appid={claims.get('appid')};oid={claims.get('oid')};iss={claims.get('iss')}"


def policies_in_force(cloud: Cloud, vault: dict) -> list[dict]:
    """The vault's access policies as enforced now (ARM records them with their effective time)."""
    timed: Timed | None = cloud.access_policies.get(str(vault["name"]).lower())
    if timed is None:
        # A vault put into the model without a policy history enforces what its JSON says.
        return list((vault.get("properties") or {}).get("accessPolicies") or [])
    return list(timed.at(cloud.now(), default=[]) or [])


def policy_allows(policies: list[dict], oid: str | None, verb: str) -> bool:
    if not oid:
        return False
    for policy in policies:
        if str(policy.get("objectId", "")).lower() != oid.lower():
            continue
        if policy.get("applicationId"):
            continue  # a compound identity (app + user) is not this caller on its own
        granted = {str(p).lower() for p in (policy.get("permissions") or {}).get("secrets") or []}
        if verb in granted or "all" in granted:
            return True
    return False


def authorize(ctx: VaultContext, op: Operation, secret: str | None) -> Response | None:
    """None when the caller may do `op`, else Key Vault's 403."""
    oid = ctx.claims.get("oid")
    location = _location(ctx.vault)
    if ctx.props.get("enableRbacAuthorization"):
        resource = str(ctx.vault["id"])
        if secret:
            resource += f"/secrets/{secret}"
        action = DATA_ACTION + op.data_action
        if rbac.is_allowed(ctx.cloud, oid, action, resource, data=True):
            return None
        # [OBS] real bodies lower-case the resource id and end the reason line with a space.
        message = "\r\n".join([
            "Caller is not authorized to perform action on resource.",
            "If role assignments, deny assignments or role definitions were changed recently, "
            "please observe propagation time.",
            f"Caller: {_caller(ctx.claims)}",
            f"Action: '{action}'",
            f"Resource: '{resource.lower()}'",
            "Assignment: (not found)",
            "DenyAssignmentId: null",
            "DecisionReason: 'DeniedWithNoValidRBAC' ",
            f"Vault: {ctx.name};location={location}",
            "",
        ])
        return kv_error(403, "Forbidden", message, ctx.vault, inner="ForbiddenByRbac")
    if policy_allows(policies_in_force(ctx.cloud, ctx.vault), oid, op.verb):
        return None
    return kv_error(403, "Forbidden",
                    f"The user, group or application '{_caller(ctx.claims)}' does not have "
                    f"secrets {op.verb} permission on key vault '{ctx.name};location={location}'. "
                    f"{HELP_403}", ctx.vault, inner="AccessDenied")


# -- JSON shapes (“Get Secret (Azure Key Vault REST API)”) ----------------------------------------
def _attributes(ctx: VaultContext, v: SecretVersion) -> dict:
    attrs: dict[str, Any] = {"enabled": v.enabled}
    if v.nbf is not None:
        attrs["nbf"] = v.nbf
    if v.exp is not None:
        attrs["exp"] = v.exp
    attrs.update({"created": v.created, "updated": v.updated,
                  "recoveryLevel": ctx.recovery_level, "recoverableDays": ctx.retention_days})
    return attrs


def _decorate(body: dict, v: SecretVersion) -> dict:
    if v.content_type is not None:
        body["contentType"] = v.content_type
    if v.tags is not None:
        body["tags"] = dict(v.tags)
    return body


def bundle(ctx: VaultContext, s: Secret, v: SecretVersion, *, value: bool = True) -> dict:
    body: dict[str, Any] = {}
    if value:
        body["value"] = v.value
    body["id"] = f"{ctx.base}/secrets/{s.name}/{v.version}"
    body["attributes"] = _attributes(ctx, v)
    return _decorate(body, v)


def item(ctx: VaultContext, s: Secret, v: SecretVersion, *, with_version: bool) -> dict:
    ident = f"{ctx.base}/secrets/{s.name}" + (f"/{v.version}" if with_version else "")
    return _decorate({"id": ident, "attributes": _attributes(ctx, v)}, v)


def _deleted_fields(ctx: VaultContext, d: DeletedSecret) -> dict:
    return {"recoveryId": f"{ctx.base}/deletedsecrets/{d.secret.name}",
            "deletedDate": d.deleted, "scheduledPurgeDate": d.purge_at}


def deleted_bundle(ctx: VaultContext, d: DeletedSecret) -> dict:
    # The value is left out: the SDK's DeletedSecret has none, and a deleted secret is not readable.
    body = _deleted_fields(ctx, d)
    body.update(bundle(ctx, d.secret, d.secret.latest, value=False))
    return body


def deleted_item(ctx: VaultContext, d: DeletedSecret) -> dict:
    body = _deleted_fields(ctx, d)
    body.update(item(ctx, d.secret, d.secret.latest, with_version=False))
    return body


def page(ctx: VaultContext, items: list[dict], path: str) -> Response:
    """One page of a list, with `nextLink` (null on the last page) as Key Vault pages."""
    raw = ctx.params.get("maxresults")
    try:
        size = int(raw) if raw is not None else PAGE_SIZE
    except ValueError:
        size = 0
    if not 1 <= size <= PAGE_SIZE:
        # UNCONFIRMED: wording; the 1..25 range is documented.
        return bad_parameter(ctx, f"The value of maxresults must be between 1 and {PAGE_SIZE}.")
    start = _decode_skiptoken(ctx.params.get("$skiptoken"))
    chunk = items[start:start + size]
    next_link = None
    if start + size < len(items):
        token = base64.urlsafe_b64encode(f"offset:{start + size}".encode()).decode().rstrip("=")
        next_link = (f"{ctx.base}{path}?api-version={ctx.api_version}"
                     f"&$skiptoken={token}&maxresults={size}")
    return kv_json({"value": chunk, "nextLink": next_link}, 200, ctx.vault)


def _decode_skiptoken(token: str | None) -> int:
    if not token:
        return 0
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        return max(0, int(raw.removeprefix("offset:")))
    except (ValueError, UnicodeDecodeError):
        return 0


# -- request bodies ---------------------------------------------------------------------------
async def _json_body(request: Request) -> dict | None:
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _apply_attributes(v: SecretVersion, attrs: dict) -> None:
    if "enabled" in attrs and attrs["enabled"] is not None:
        v.enabled = bool(attrs["enabled"])
    if "nbf" in attrs:
        v.nbf = None if attrs["nbf"] is None else int(attrs["nbf"])
    if "exp" in attrs:
        v.exp = None if attrs["exp"] is None else int(attrs["exp"])


# -- operations -------------------------------------------------------------------------------
Handler = Callable[["VaultContext", dict[str, str]], Awaitable[Response]]


@dataclass(frozen=True)
class Operation:
    method: str
    pattern: re.Pattern
    verb: str  # the access-policy permission
    data_action: str  # the RBAC data action, after Microsoft.KeyVault/vaults/secrets/
    handler: Handler


async def set_secret(ctx: VaultContext, args: dict[str, str]) -> Response:
    body = await _json_body(ctx.request)
    if body is None:
        return bad_parameter(ctx, "The request body is not valid JSON.")
    value = body.get("value")
    if not isinstance(value, str):
        # UNCONFIRMED: wording of the missing-value error.
        return bad_parameter(ctx, "Property value is required.")
    name, key = args["name"], args["name"].lower()
    now = ctx.now()
    with ctx.cloud.lock:
        store = ctx.store
        store.expire(now)
        if key in store.deleted:
            return kv_error(409, "Conflict",
                            f"Secret {name} is currently in a deleted but recoverable state, and "
                            "its name cannot be reused; in this state, the secret can only be "
                            "recovered or purged.", ctx.vault)
        secret = store.secrets.setdefault(key, Secret(name))
        tags = body.get("tags")
        version = SecretVersion(uuid.uuid4().hex, value, body.get("contentType"),
                                dict(tags) if isinstance(tags, dict) else None,
                                True, None, None, now, now)
        _apply_attributes(version, body.get("attributes") or {})
        secret.versions.append(version)
        return kv_json(bundle(ctx, secret, version), 200, ctx.vault)


def _lookup(ctx: VaultContext, name: str, version: str) -> tuple[Secret, SecretVersion] | Response:
    secret = ctx.store.secrets.get(name.lower())
    if secret is None:
        return secret_not_found(ctx, name, version)
    found = secret.version(version) if version else secret.latest
    if found is None:
        return secret_not_found(ctx, name, version)
    return secret, found


async def get_secret(ctx: VaultContext, args: dict[str, str]) -> Response:
    with ctx.cloud.lock:
        found = _lookup(ctx, args["name"], args.get("version") or "")
        if isinstance(found, Response):
            return found
        secret, version = found
        if not version.enabled:
            # [OBS] a disabled secret is refused, not hidden.
            return kv_error(403, "Forbidden", "Operation get is not allowed on a disabled secret.",
                            ctx.vault, inner="SecretDisabled")
        return kv_json(bundle(ctx, secret, version), 200, ctx.vault)


async def update_secret(ctx: VaultContext, args: dict[str, str]) -> Response:
    body = await _json_body(ctx.request)
    if body is None:
        return bad_parameter(ctx, "The request body is not valid JSON.")
    with ctx.cloud.lock:
        found = _lookup(ctx, args["name"], args.get("version") or "")
        if isinstance(found, Response):
            return found
        secret, version = found
        if "contentType" in body:
            version.content_type = body["contentType"]
        if "tags" in body:
            version.tags = dict(body["tags"]) if isinstance(body["tags"], dict) else None
        _apply_attributes(version, body.get("attributes") or {})
        version.updated = ctx.now()
        return kv_json(bundle(ctx, secret, version, value=False), 200, ctx.vault)


async def list_secrets(ctx: VaultContext, args: dict[str, str]) -> Response:
    with ctx.cloud.lock:
        items = [item(ctx, s, s.latest, with_version=False)
                 for s in sorted(ctx.store.secrets.values(), key=lambda s: s.name.lower())]
    return page(ctx, items, "/secrets")


async def list_versions(ctx: VaultContext, args: dict[str, str]) -> Response:
    with ctx.cloud.lock:
        secret = ctx.store.secrets.get(args["name"].lower())
        if secret is None:
            # Key Vault lists the versions of a secret it does not have as an empty page, not a
            # 404 (recorded in the SDKs' test recordings of "Get Secret Versions").
            return page(ctx, [], f"/secrets/{args['name']}/versions")
        items = [item(ctx, secret, v, with_version=True) for v in secret.versions]
    return page(ctx, items, f"/secrets/{secret.name}/versions")


async def delete_secret(ctx: VaultContext, args: dict[str, str]) -> Response:
    now = ctx.now()
    with ctx.cloud.lock:
        store = ctx.store
        secret = store.secrets.pop(args["name"].lower(), None)
        if secret is None:
            return secret_not_found(ctx, args["name"])
        deleted = DeletedSecret(secret, now, now + ctx.retention_days * 86400)
        store.deleted[secret.name.lower()] = deleted
        return kv_json(deleted_bundle(ctx, deleted), 200, ctx.vault)


async def get_deleted(ctx: VaultContext, args: dict[str, str]) -> Response:
    with ctx.cloud.lock:
        store = ctx.store
        store.expire(ctx.now())
        deleted = store.deleted.get(args["name"].lower())
        if deleted is None:
            return deleted_not_found(ctx, args["name"])
        return kv_json(deleted_bundle(ctx, deleted), 200, ctx.vault)


async def list_deleted(ctx: VaultContext, args: dict[str, str]) -> Response:
    with ctx.cloud.lock:
        store = ctx.store
        store.expire(ctx.now())
        items = [deleted_item(ctx, d) for d in
                 sorted(store.deleted.values(), key=lambda d: d.secret.name.lower())]
    return page(ctx, items, "/deletedsecrets")


async def recover_deleted(ctx: VaultContext, args: dict[str, str]) -> Response:
    with ctx.cloud.lock:
        store = ctx.store
        store.expire(ctx.now())
        deleted = store.deleted.pop(args["name"].lower(), None)
        if deleted is None:
            return deleted_not_found(ctx, args["name"])
        secret = deleted.secret
        store.secrets[secret.name.lower()] = secret
        return kv_json(bundle(ctx, secret, secret.latest, value=False), 200, ctx.vault)


async def purge_deleted(ctx: VaultContext, args: dict[str, str]) -> Response:
    if ctx.purge_protected:
        # UNCONFIRMED: wording; purge protection forbids purging before the retention ends.
        return kv_error(403, "Forbidden",
                        f"Operation \"purge\" is not allowed because purge protection is enabled "
                        f"for this vault. Key Vault service will automatically purge it after "
                        f"the retention period has passed. Vault: {ctx.name};"
                        f"location={_location(ctx.vault)}", ctx.vault, inner="ForbiddenByPolicy")
    with ctx.cloud.lock:
        store = ctx.store
        store.expire(ctx.now())
        if store.deleted.pop(args["name"].lower(), None) is None:
            return deleted_not_found(ctx, args["name"])
    return kv_json(None, 204, ctx.vault)


BACKUP_MAGIC = "milab-kv-backup-1"


async def backup_secret(ctx: VaultContext, args: dict[str, str]) -> Response:
    """An opaque blob that restores all versions (real blobs are encrypted; this one is not)."""
    with ctx.cloud.lock:
        secret = ctx.store.secrets.get(args["name"].lower())
        if secret is None:
            return secret_not_found(ctx, args["name"])
        doc = {"magic": BACKUP_MAGIC, "name": secret.name,
               "versions": [vars(v) for v in secret.versions]}
    blob = base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")
    return kv_json({"value": blob}, 200, ctx.vault)


async def restore_secret(ctx: VaultContext, args: dict[str, str]) -> Response:
    body = await _json_body(ctx.request)
    try:
        blob = str((body or {})["value"])
        doc = json.loads(base64.urlsafe_b64decode(blob + "=" * (-len(blob) % 4)))
        assert doc["magic"] == BACKUP_MAGIC
        secret = Secret(doc["name"], [SecretVersion(**v) for v in doc["versions"]])
    except (KeyError, ValueError, TypeError, AssertionError):
        # UNCONFIRMED: wording for a blob Key Vault cannot read.
        return bad_parameter(ctx, "Backup blob contains invalid or corrupt version.")
    with ctx.cloud.lock:
        store = ctx.store
        key = secret.name.lower()
        if key in store.secrets or key in store.deleted:
            # UNCONFIRMED: wording; restoring over an existing name is refused with 409.
            return kv_error(409, "Conflict", f"Secret {secret.name} already exists.", ctx.vault)
        store.secrets[key] = secret
        return kv_json(bundle(ctx, secret, secret.latest, value=False), 200, ctx.vault)


_NAME = r"(?P<name>[^/]+)"
_VERSION = r"(?:/(?P<version>[^/]*))?"
OPERATIONS: tuple[Operation, ...] = (
    Operation("POST", re.compile(r"^/secrets/restore/?$"), "restore", "restore/action",
              restore_secret),
    Operation("PUT", re.compile(rf"^/secrets/{_NAME}/?$"), "set", "setSecret/action", set_secret),
    Operation("GET", re.compile(r"^/secrets/?$"), "list", "readMetadata/action", list_secrets),
    Operation("GET", re.compile(rf"^/secrets/{_NAME}/versions/?$"), "list", "readMetadata/action",
              list_versions),
    Operation("GET", re.compile(rf"^/secrets/{_NAME}{_VERSION}$"), "get", "getSecret/action",
              get_secret),
    # PATCH is the "set" permission in access policies but its own data action in RBAC.
    Operation("PATCH", re.compile(rf"^/secrets/{_NAME}{_VERSION}$"), "set", "update/action",
              update_secret),
    Operation("DELETE", re.compile(rf"^/secrets/{_NAME}/?$"), "delete", "delete", delete_secret),
    Operation("POST", re.compile(rf"^/secrets/{_NAME}/backup/?$"), "backup", "backup/action",
              backup_secret),
    Operation("GET", re.compile(r"^/deletedsecrets/?$"), "list", "readMetadata/action",
              list_deleted),
    Operation("GET", re.compile(rf"^/deletedsecrets/{_NAME}/?$"), "get", "readMetadata/action",
              get_deleted),
    Operation("POST", re.compile(rf"^/deletedsecrets/{_NAME}/recover/?$"), "recover",
              "recover/action", recover_deleted),
    Operation("DELETE", re.compile(rf"^/deletedsecrets/{_NAME}/?$"), "purge", "purge/action",
              purge_deleted),
)


def match(method: str, path: str) -> tuple[Operation, dict[str, str]] | None:
    for op in OPERATIONS:
        if op.method == method:
            m = op.pattern.match(path)
            if m:
                return op, {k: v for k, v in m.groupdict().items() if v is not None}
    return None


def vault_name_from_host(host: str) -> str:
    host = host.split(":")[0].lower().rstrip(".")
    return host[: -len(VAULT_SUFFIX)] if host.endswith(VAULT_SUFFIX) else host


def vault_absent(name: str) -> Response:
    # UNCONFIRMED: a vault that does not exist has no DNS name in Azure, so clients see a
    # connection error. Here the name resolves (the proxy serves *.vault.azure.net), and the
    # plainest honest answer is a 404.
    return kv_error(404, "VaultNotFound",
                    f"The vault '{name}' does not exist (in Azure its DNS name would not resolve).")


def build_app(cloud: Cloud, tokens: TokenIssuer) -> Starlette:
    async def dispatch(request: Request) -> Response:
        name = vault_name_from_host(request.headers.get("host", ""))
        vault = find_vault(cloud, name)
        if vault is None:
            return vault_absent(name)
        # Authentication comes before everything else: an anonymous request, even one without
        # api-version, draws the 401 challenge (the SDKs and `curl -I` rely on it).
        claims = authenticate(request, vault, cloud, tokens)
        if isinstance(claims, Response):
            return claims
        set_caller(request, claims.get("oid"))
        api_version = request.query_params.get("api-version")
        if api_version is None:
            # UNCONFIRMED: wording for a missing api-version.
            return bad_parameter(vault, "The request URI contains an invalid or missing "
                                        "parameter: api-version.")
        if api_version not in API_VERSIONS:
            # [OBS] Azure Stack Hub's wording; public Azure's may differ.
            return bad_parameter(vault, f"The specified version ({api_version}) is not "
                                        "recognized. Consider using the latest supported "
                                        "version (7.6).")
        found = match(request.method, request.url.path)
        if found is None:
            # UNCONFIRMED: what Key Vault answers for a path or method it does not serve.
            return kv_error(404, "NotFound", f"The requested resource '{request.url.path}' "
                                             "was not found.", vault)
        op, args = found
        if "name" in args and not SECRET_NAME.match(args["name"]):
            return bad_parameter(vault, f"The request URI contains an invalid name: "
                                        f"{args['name']}")
        ctx = VaultContext(request, cloud, vault, claims, api_version,
                           dict(request.query_params))
        denied = authorize(ctx, op, args.get("name"))
        if denied is not None:
            return denied
        return await op.handler(ctx, args)

    methods = ["GET", "PUT", "PATCH", "POST", "DELETE", "HEAD"]
    return Starlette(routes=[Route("/{path:path}", dispatch, methods=methods)])
