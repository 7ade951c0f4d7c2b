"""Azure Resource Manager (`management.azure.com`): authentication, api-versions, RBAC and routing.

Every request is authenticated (“Azure REST API reference”), needs a known api-version, and is authorised
per request against the caller's role assignments in force (“Troubleshoot Azure RBAC”). Paths are
case-insensitive. The resource types live in this package's provider modules as `Kind`s over `cloud.resources`.
"""

from __future__ import annotations

import datetime as _dt
import logging
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import rbac
from ..entra.tokens import ARM_AUDIENCES, TokenIssuer, TokenRejected
from ..faults import ArmThrottle, Verdict
from ..hosts import ARM_HOST, LOGIN_HOSTS
from ..responses import set_caller
from ..state import Cloud, arm_key, new_guid
from . import (
    authorization,
    compute,
    deployments,
    hybrid,
    images,
    keyvault,
    network,
    operations,
    resources,
)
from .kinds import (
    RESOURCE_NOT_FOUND_TAIL,
    ArmError,
    Ctx,
    Kind,
    Registry,
    forbidden,
    group_not_found,
    need_version,
    uri_not_found,
)
from .versions import LOCATION_NAMES, RESOURCES, normalize_location, provider_versions

log = logging.getLogger(__name__)
METHODS = ["GET", "HEAD", "PUT", "PATCH", "DELETE", "POST"]
# The resource providers this ARM serves, registered in this order by `providers()`.
PROVIDERS = (resources, deployments, authorization, network, compute, images, hybrid, keyvault,
             operations)


def providers(modules=PROVIDERS) -> Registry:
    """A registry holding the resource types of each provider module listed, in that order."""
    registry = Registry()
    for module in modules:
        module.register(registry)
    return registry


# -- authentication (“Azure REST API reference”) --------------------------------------------------
def _challenge(description: str) -> dict[str, str]:
    # ARM sends this challenge with the missing-header 401 [CODE azure-core tests]; sending it with
    # the other 401s too is UNCONFIRMED but harmless to clients.
    return {"WWW-Authenticate": f'Bearer authorization_uri="https://{LOGIN_HOSTS[1]}/", '
                                f'error="invalid_token", error_description="{description}"'}


def _arm_time(ts: float) -> str:
    """ARM's en-US UTC form in token errors: `11/24/2025 11:31:00 PM`."""
    t = _dt.datetime.fromtimestamp(ts, _dt.timezone.utc)
    hour = t.hour % 12 or 12
    return f"{t.month}/{t.day}/{t.year} {hour}:{t.minute:02d}:{t.second:02d} " \
           f"{'AM' if t.hour < 12 else 'PM'}"


def auth_error(exc: TokenRejected, now: float) -> ArmError:
    if exc.kind == "missing":
        return ArmError(401, "AuthenticationFailed",
                        "Authentication failed. The 'Authorization' header is missing.",
                        _challenge("The authentication failed because of missing "
                                   "'Authorization' header."))
    if exc.kind == "expired":
        message = (f"The access token expiry UTC time '{_arm_time(exc.claims.get('exp', 0))}' is "
                   f"earlier than current UTC time '{_arm_time(now)}'.")
        return ArmError(401, "ExpiredAuthenticationToken", message, _challenge(message))
    if exc.kind == "audience":
        allowed = ",".join(f"'{a}'" for a in ARM_AUDIENCES)
        message = (f"The access token has been obtained for wrong audience or resource "
                   f"'{exc.claims.get('aud')}'. It should exactly match with one of the allowed "
                   f"audiences {allowed}.")
        return ArmError(401, "InvalidAuthenticationTokenAudience", message, _challenge(message))
    return ArmError(401, "InvalidAuthenticationToken", "The access token is invalid.",
                    _challenge("The access token is invalid."))


# -- api-versions ---------------------------------------------------------------------------------
def _location_hint(ctx: Ctx) -> str:
    """The location ARM names in NoRegisteredProviderFound: the body's, the resource's, the group's."""
    if ctx.method in ("PUT", "PATCH"):
        try:
            loc = ctx.json().get("location")
        except ArmError:
            loc = None
        if isinstance(loc, str) and loc:
            return normalize_location(loc)
    if ctx.names:
        res = ctx.cloud.resources.get(arm_key(ctx.resource_id(1)))
        if res is not None:
            return res.get("location", "")
    if ctx.rg:
        group = ctx.cloud.resource_groups.get(arm_key(ctx.rg_id))
        if group is not None:
            return group["location"]
    return "global"


def need_provider_version(ctx: Ctx, kind: Kind) -> None:
    versions = provider_versions(kind.ns, kind.types[0])
    if ctx.api_version.lower() in (v.lower() for v in versions):
        return
    type_path = "/".join(kind.types)
    raise ArmError(400, "NoRegisteredProviderFound",
                   f"No registered resource provider found for location '{_location_hint(ctx)}' "
                   f"and API version '{ctx.api_version}' for type '{type_path}'. The supported "
                   f"api-versions are '{', '.join(reversed(versions))}'. The supported locations "
                   f"are '{', '.join(LOCATION_NAMES)}'.")


# -- routing --------------------------------------------------------------------------------------
def route(ctx: Ctx) -> Response:
    """Every ARM request: find its kind (a provider's type, or one of Microsoft.Resources' own
    paths), then `dispatch` it the same way."""
    segs = [s for s in ctx.path.split("/") if s]
    low = [s.lower() for s in segs]
    if not segs:
        raise uri_not_found(ctx)
    if low[0] == "subscriptions" and len(low) > 1:
        sub = ctx.cloud.subscription(segs[1])
        if sub is None:
            raise ArmError(404, "SubscriptionNotFound",
                           f"The subscription '{segs[1]}' could not be found.")
        ctx.sub = sub.subscription_id
    elif low[0] not in ("subscriptions", "tenants", "providers"):
        raise uri_not_found(ctx)
    idx = max((i for i, s in enumerate(low) if s == "providers"), default=None)
    if idx is None:
        at = 4 if len(low) > 4 and low[2] == "resourcegroups" else 2
        if ctx.sub and len(low) > at + 1 and low[at] == "deployments":
            # "Deployment Operations - List" addresses deployments without `/providers/`.
            segs = segs[:at] + ["providers", "Microsoft.Resources"] + segs[at:]
            return provider_route(ctx, segs, at)
    elif not _lists_providers(ctx, low, idx):
        return provider_route(ctx, segs, idx)
    kind, mode = _resolve_builtin(ctx, segs, low, idx)
    return dispatch(ctx, kind, mode, segs)


def _lists_providers(ctx: Ctx, low: list[str], idx: int) -> bool:
    """`[/subscriptions/{s}]/providers[/{ns}]` and `POST .../providers/{ns}/(un)register`."""
    tail = low[idx + 1:]
    if idx == 0:
        return len(tail) <= 1
    return idx == 2 and (len(tail) <= 1 or (len(tail) == 2 and tail[1] in ("register", "unregister")
                                            and ctx.method == "POST"))


def _resolve_builtin(ctx: Ctx, segs: list[str], low: list[str],
                     idx: int | None) -> tuple[Kind, str]:
    """Microsoft.Resources' own paths, which have no `/providers/{ns}/` segment: subscriptions,
    tenants, locations, provider registrations, resource groups and the generic resource lists."""
    names: tuple[str, ...] = ()
    if idx is not None:
        types, mode, names = ("providers",), "collection", tuple(segs[idx + 1:])
    elif ctx.sub is None:
        if len(low) != 1 or low[0] not in ("subscriptions", "tenants"):
            raise uri_not_found(ctx)
        types, mode = (low[0],), "collection"
    else:
        rel = low[2:]
        if not rel:
            types, mode, names = ("subscriptions",), "item", (ctx.sub,)
        elif rel in (["locations"], ["resources"], ["resourcegroups"]):
            types, mode = (rel[0],), "collection"
        elif len(rel) == 2 and rel[0] == "resourcegroups":
            ctx.rg = segs[3]
            types, mode, names = ("resourcegroups",), "item", (ctx.rg,)
        elif len(rel) == 3 and rel[0] == "resourcegroups" and rel[2] == "resources":
            ctx.rg = segs[3]
            types, mode, names = ("resourcegroups", "resources"), "collection", (ctx.rg,)
        else:
            need_version(ctx, RESOURCES)  # as ARM checks it before finding no such path
            raise uri_not_found(ctx)
    kind = ctx.registry.builtin(types)
    if kind is None:
        raise uri_not_found(ctx)
    ctx.ns, ctx.types, ctx.names = kind.ns, kind.types, names
    return kind, mode


def _parse_scope(ctx: Ctx, segs: list[str]) -> str | None:
    """Fill ctx.scope/rg from the segments before `/providers/{ns}`; return a scope resource's
    top-level id when the request is an extension of a resource (e.g. roleAssignments on a VM)."""
    low = [s.lower() for s in segs]
    if not segs:
        ctx.scope = ""
        return None
    parts = [f"/subscriptions/{ctx.sub}"]
    top_resource = None
    if len(segs) >= 4 and low[2] == "resourcegroups":
        ctx.rg = segs[3]
        parts.append(f"/resourceGroups/{segs[3]}")
        rest = segs[4:]
        if rest:
            if len(rest) < 4 or len(rest) % 2 or rest[0].lower() != "providers":
                raise uri_not_found(ctx)
            ns = ctx.registry.known_namespace(rest[1]) or rest[1]
            pairs = rest[2:]
            known = ctx.registry.kind_for(ns, tuple(pairs[0::2]))
            type_names = known.types if known else tuple(pairs[0::2])
            tail = "/".join(f"{t}/{n}" for t, n in zip(type_names, pairs[1::2], strict=False))
            parts.append(f"/providers/{ns}/{tail}")
            top_resource = "".join(parts[:2]) + f"/providers/{ns}/{type_names[0]}/{pairs[1]}"
    elif len(segs) != 2:
        raise uri_not_found(ctx)
    ctx.scope = "".join(parts)
    return top_resource


def _resolve_kind(ctx: Ctx, ns: str, rest: list[str]) -> tuple[Kind, str]:
    types, names = tuple(rest[0::2]), tuple(rest[1::2])
    kind, mode = ctx.registry.kind_for(ns, types), ("item" if len(rest) % 2 == 0 else "collection")
    if kind is None and mode == "collection" and len(types) > 1:
        parent = ctx.registry.kind_for(ns, types[:-1])
        verb = types[-1].lower()
        known = {v.lower(): v for v in (*parent.actions, *parent.views)} if parent else {}
        if verb in known:
            kind, mode, ctx.verb = parent, "verb", known[verb]
    if kind is None:
        raise ArmError(400, "InvalidResourceType",
                       f"The resource type '{'/'.join(types)}' could not be found in the "
                       f"namespace '{ns}' for api version '{ctx.api_version}'.")
    ctx.ns, ctx.types, ctx.names = kind.ns, kind.types, names
    return kind, mode


def _authorize(ctx: Ctx, kind: Kind, mode: str, segs: list[str]) -> None:
    if not kind.check_rbac:
        return
    if mode == "collection" and ctx.method == "GET" and kind.filtered_listing(ctx) and \
            rbac.has_any_access_in_subscription(ctx.cloud, ctx.oid, ctx.sub or ""):
        return  # the kind lists only what the caller may read
    target = "/" + "/".join(segs if mode == "item" else segs[:-1])
    action = kind.rbac_action(ctx, mode)
    if not rbac.is_allowed(ctx.cloud, ctx.oid, action, target):
        raise forbidden(ctx, action, target)


def _check_scope_exists(ctx: Ctx, top_resource: str | None) -> None:
    """After authorisation: a missing group or scope resource is a 404 (“Resolve errors for resource not found”)."""
    if ctx.rg and arm_key(ctx.rg_id) not in ctx.cloud.resource_groups:
        raise group_not_found(ctx.rg)
    if top_resource and arm_key(top_resource) not in ctx.cloud.resources:
        what = top_resource.split("/providers/", 1)[1]
        raise ArmError(404, "ResourceNotFound",
                       f"The Resource '{what}' under resource group '{ctx.rg}' was not found. "
                       f"{RESOURCE_NOT_FOUND_TAIL}", {"x-ms-failure-cause": "gateway"})


def provider_route(ctx: Ctx, segs: list[str], idx: int) -> Response:
    top_resource = _parse_scope(ctx, segs[:idx])
    if idx + 1 >= len(segs):
        raise uri_not_found(ctx)
    ns = ctx.registry.known_namespace(segs[idx + 1])
    if ns is None:
        # Real ARM answers an unknown namespace this way rather than with InvalidResourceType.
        raise ArmError(400, "InvalidResourceNamespace",
                       f"The resource namespace '{segs[idx + 1]}' is invalid.")
    rest = segs[idx + 2:]
    if not rest:
        raise uri_not_found(ctx)
    kind, mode = _resolve_kind(ctx, ns, rest)
    return dispatch(ctx, kind, mode, segs, top_resource)


def dispatch(ctx: Ctx, kind: Kind, mode: str, segs: list[str],
             top_resource: str | None = None) -> Response:
    """The one path every request takes once its kind is known (the caller is already
    authenticated and not throttled): api-version, authorisation, scope, then the kind."""
    if kind.api_versions is not None:
        need_version(ctx, kind.api_versions)
    else:
        need_provider_version(ctx, kind)
    _authorize(ctx, kind, mode, segs)
    if kind.scope_must_exist:
        _check_scope_exists(ctx, top_resource)
    return kind.invoke(ctx, mode)


# -- response headers -----------------------------------------------------------------------------
class RateLimits:
    """The decrementing `x-ms-ratelimit-remaining-*` counters, per caller and clock hour."""

    def __init__(self) -> None:
        self._used: dict[tuple[str, str, str, int], int] = {}

    def take(self, oid: str, level: str, kind: str) -> int:
        key = (oid, level, kind, int(time.time() // 3600))
        self._used[key] = self._used.get(key, 0) + 1
        return max(0, (11999 if kind == "reads" else 1199) - self._used[key] + 1)


def _decorate(resp: Response, request: Request, oid: str | None, limits: RateLimits,
              verdict: Verdict | None = None) -> None:
    rid = new_guid()
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    headers = {
        "x-ms-request-id": rid,
        "x-ms-correlation-request-id": request.headers.get("x-ms-correlation-request-id") or rid,
        "x-ms-routing-request-id": f"UKSOUTH:{stamp}:{rid}",
        "Cache-Control": "no-cache", "Pragma": "no-cache", "Expires": "-1",
        "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
        "X-Content-Type-Options": "nosniff",
    }
    if oid:
        level = "subscription" if request.url.path.lower().startswith("/subscriptions/") \
            else "tenant"
        kind = "reads" if request.method in ("GET", "HEAD") else "writes"
        remaining = verdict.remaining if verdict else limits.take(oid, level, kind)
        headers[f"x-ms-ratelimit-remaining-{level}-{kind}"] = str(remaining)
    for key, value in headers.items():
        resp.headers.setdefault(key, value)


def build_app(cloud: Cloud, tokens: TokenIssuer) -> Starlette:
    limits = RateLimits()
    registry = providers()
    throttle = ArmThrottle(cloud.knobs)

    async def endpoint(request: Request) -> Response:
        body = await request.body()
        oid: str | None = None
        ctx: Ctx | None = None
        verdict: Verdict | None = None
        try:
            try:
                claims = tokens.verify_header(request.headers.get("authorization"),
                                              audiences=ARM_AUDIENCES)
            except TokenRejected as exc:
                raise auth_error(exc, cloud.now()) from None
            oid = str(claims.get("oid") or claims.get("sub") or "")
            set_caller(request, oid)
            verdict = throttle.check(oid, request.method, request.url.path)
            if verdict is not None and not verdict.allowed:
                raise ArmError(429, *verdict.refusal())
            query = {k.lower(): v for k, v in request.query_params.items()}
            api_version = query.get("api-version")
            if not api_version:
                raise ArmError(400, "MissingApiVersionParameter", "The api-version query "
                               "parameter (?api-version=) is required for all requests.")
            ctx = Ctx(cloud=cloud, method=request.method, path=request.url.path.rstrip("/"),
                      query=query, query_items=tuple(request.query_params.multi_items()),
                      host=request.url.hostname or ARM_HOST, oid=oid,
                      api_version=api_version, registry=registry, body_bytes=body)
            resp = route(ctx)
        except ArmError as exc:
            resp = exc.response(request.method)
        except Exception:  # a bug here must still answer like ARM, and be visible in the log
            log.exception("ARM request %s %s failed", request.method, request.url.path)
            resp = ArmError(500, "InternalServerError",
                            "Encountered internal server error.").response(request.method)
        _decorate(resp, request, oid, limits, verdict)
        for event, resource in (ctx.events if ctx else []):
            try:
                cloud.emit(event, resource)
            except Exception:  # a listener's failure is not the ARM caller's
                log.exception("listener failed on %s", event)
        return resp

    return Starlette(routes=[Route("/{path:path}", endpoint, methods=METHODS)])
