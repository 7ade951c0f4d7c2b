"""The frame every ARM resource type fits in: the request context, errors, and the resource
kinds (a table of types over one generic store in `cloud.resources`).

A `Kind` answers the HTTP methods of one resource type. `Tracked` is a top-level resource kept
in `cloud.resources`; subclasses only say how a PUT body becomes the stored JSON (`build`) and
what deleting one does (`on_delete`). `InlineChild` is a child kept inside its parent's
properties (subnets, security rules), as the Network RP does.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import Response

from .. import rbac
from ..responses import arm_error, json_response
from ..state import Cloud, arm_key, new_guid
from . import lro
from .versions import LOCATION_NAMES, normalize_location

RESOURCE_NOT_FOUND_TAIL = "For more details please go to https://aka.ms/ARMResourceNotFoundFix"


class ArmError(Exception):
    """An ARM error answer: `{"error": {"code", "message"}}` with a status."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}

    def response(self, method: str = "GET") -> Response:
        if method == "HEAD":
            return Response(b"", self.status, headers=self.headers)
        return arm_error(self.status, self.code, self.message, self.headers)


@dataclass
class Ctx:
    """One ARM request, parsed. Ids built from it use ARM's segment names and the caller's names."""

    cloud: Cloud
    method: str
    path: str  # as received, decoded, without trailing slash
    query: dict[str, str]  # keys lower-cased
    query_items: tuple[tuple[str, str], ...]  # as received, for nextLink
    host: str
    oid: str
    api_version: str
    registry: Registry  # the resource types this ARM serves
    body_bytes: bytes = b""
    sub: str | None = None  # canonical subscription id
    rg: str | None = None  # resource group name as in the path
    scope: str = ""  # canonical scope before `/providers/{ns}`; "" is the root
    ns: str = ""
    types: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    verb: str | None = None
    events: list[tuple[str, dict]] = field(default_factory=list)
    _body: Any = None

    def q(self, name: str, default: str | None = None) -> str | None:
        return self.query.get(name.lower(), default)

    def json(self) -> dict:
        """The request body as a JSON object, or 400 InvalidRequestContent."""
        if self._body is None:
            try:
                self._body = json.loads(self.body_bytes or b"{}")
            except ValueError as exc:
                raise ArmError(400, "InvalidRequestContent", "The request content was invalid "
                               f"and could not be deserialized: '{exc}'.") from None
            if not isinstance(self._body, dict):
                raise ArmError(400, "InvalidRequestContent", "The request content was invalid "
                               "and could not be deserialized: 'expected a JSON object'.")
        return self._body

    def resource_id(self, depth: int | None = None) -> str:
        """The id of the item this request names (or of its ancestor at `depth` type levels)."""
        pairs = list(zip(self.types, self.names, strict=False))[:depth]
        tail = "/".join(f"{t}/{n}" for t, n in pairs)
        return f"{self.scope}/providers/{self.ns}/{tail}"

    def at_depth(self, depth: int) -> Ctx:
        """This request seen as addressing its ancestor (shares the event list)."""
        return dataclasses.replace(self, types=self.types[:depth], names=self.names[:depth])

    def emit(self, event: str, body: dict) -> None:
        """Tell listeners after the request's changes are stored and the lock released."""
        self.events.append((event, copy.deepcopy(body)))

    @property
    def rg_id(self) -> str:
        return f"/subscriptions/{self.sub}/resourceGroups/{self.rg}"


# -- errors ARM answers with ------------------------------------------------------------------
def method_not_allowed(ctx: Ctx) -> ArmError:
    # The exact body of ARM's 405 is UNCONFIRMED; the code and text are plausible.
    return ArmError(405, "HttpMethodNotAllowed",
                    f"The requested resource does not support http method '{ctx.method}'.")


def forbidden(ctx: Ctx, action: str, scope: str) -> ArmError:
    return ArmError(403, "AuthorizationFailed",
                    f"The client '{ctx.oid}' with object id '{ctx.oid}' does not have "
                    f"authorization to perform action '{action}' over scope '{scope}' or the scope "
                    "is invalid. If access was recently granted, please refresh your credentials.")


def require_allowed(ctx: Ctx, action: str, scope: str) -> None:
    if not rbac.is_allowed(ctx.cloud, ctx.oid, action, scope):
        raise forbidden(ctx, action, scope)


def uri_not_found(ctx: Ctx) -> ArmError:
    # ARM's answer for a path no route matches; exact code and text UNCONFIRMED.
    return ArmError(404, "NotFound", "No HTTP resource was found that matches the request URI "
                    f"'https://{ctx.host}{ctx.path}?api-version={ctx.api_version}'.")


def need_version(ctx: Ctx, versions: tuple[str, ...]) -> None:
    """Microsoft.Resources' own api-version check (groups, subscriptions, resource lists)."""
    if ctx.api_version.lower() not in (v.lower() for v in versions):
        # The tail "The supported locations are ''." is what ARM prints for these; UNCONFIRMED.
        raise ArmError(400, "InvalidApiVersionParameter",
                       f"The api-version '{ctx.api_version}' is invalid. The supported versions "
                       f"are '{','.join(versions)}'. The supported locations are ''.")


def group_not_found(name: str) -> ArmError:
    return ArmError(404, "ResourceGroupNotFound", f"Resource group '{name}' could not be found.",
                    {"x-ms-failure-cause": "gateway"})


def resource_not_found(ctx: Ctx, depth: int | None = None) -> ArmError:
    pairs = list(zip(ctx.types, ctx.names, strict=False))[:depth]
    what = "/".join([ctx.ns] + [f"{t}/{n}" for t, n in pairs])
    where = f" under resource group '{ctx.rg}'" if ctx.rg else ""
    return ArmError(404, "ResourceNotFound",
                    f"The Resource '{what}'{where} was not found. {RESOURCE_NOT_FOUND_TAIL}",
                    {"x-ms-failure-cause": "gateway"})


def invalid_reference(ctx: Ctx, ref_id: str) -> ArmError:
    # Network RP wording as seen in the wild; exact text for every RP is UNCONFIRMED.
    return ArmError(400, "InvalidResourceReference",
                    f"Resource {ref_id} referenced by resource {ctx.resource_id()} was not found. "
                    "Please make sure that the referenced resource exists, and that both resources "
                    "are in the same region.")


def validate_location(value: Any, type_name: str) -> str:
    if not value or not isinstance(value, str):
        raise ArmError(400, "LocationRequired",
                       "The location property is required for this definition.")
    loc = normalize_location(value)
    if loc not in LOCATION_NAMES:
        raise ArmError(400, "LocationNotAvailableForResourceType",
                       f"The provided location '{value}' is not available for resource type "
                       f"'{type_name}'. List of available regions for the resource type is "
                       f"'{','.join(LOCATION_NAMES)}'.")
    return loc


# -- JSON helpers ---------------------------------------------------------------------------
def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch: objects merge, `null` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def patch_body(existing: dict, patch: dict) -> dict:
    """A PATCH merged onto the stored JSON; `tags` in a PATCH replace the tags, as in ARM."""
    merged = merge_patch(existing, patch)
    if isinstance(patch.get("tags"), dict):
        merged["tags"] = dict(patch["tags"])
    return merged


def etag() -> str:
    return f'W/"{new_guid()}"'


def ref_ids(value: Any, skip: tuple[str, ...] = ()) -> Iterator[str]:
    """Every `{"id": ...}` reference inside a JSON value, except under the keys in `skip`."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in skip:
                continue
            if key == "id" and isinstance(item, str):
                yield item
            else:
                yield from ref_ids(item, skip)
    elif isinstance(value, list):
        for item in value:
            yield from ref_ids(item, skip)


# Back-references the platform keeps (PIP -> NIC, NIC -> VM, disk -> VM) are not uses.
BACK_REFERENCES = ("ipConfiguration", "virtualMachine", "managedBy")


def referrers(cloud: Cloud, target_id: str) -> list[tuple[dict, str]]:
    """(resource, referencing id) for every stored resource that refers to `target_id` or below."""
    target = arm_key(target_id)
    out = []
    for key, res in cloud.resources.items():
        if key == target:
            continue
        for ref in ref_ids(res.get("properties", {}), BACK_REFERENCES):
            ref_key = arm_key(ref)
            if (ref_key == target or ref_key.startswith(target + "/")) and \
                    not ref_key.startswith(key + "/"):
                out.append((res, ref))
                break
    return out


# -- kinds ----------------------------------------------------------------------------------
class Kind:
    """One resource type's HTTP surface. Unimplemented methods answer 405."""

    ns: str = ""
    types: tuple[str, ...] = ()
    check_rbac = True  # False: any signed-in caller may use it (permissions, roleDefinitions)
    # None: the provider's api-versions (versions.provider_versions, NoRegisteredProviderFound);
    # Microsoft.Resources' own types name theirs (InvalidApiVersionParameter).
    api_versions: tuple[str, ...] | None = None
    scope_must_exist = True  # the group (and scope resource) must exist before the handler runs
    actions: tuple[str, ...] = ()  # POST `{item}/{verb}`
    views: tuple[str, ...] = ()  # GET `{item}/{view}`

    @property
    def type_name(self) -> str:
        return f"{self.ns}/{'/'.join(self.types)}"

    def rbac_action(self, ctx: Ctx, mode: str) -> str:
        base = f"{ctx.ns}/{'/'.join(ctx.types)}"
        if mode == "verb":
            return f"{base}/{ctx.verb}/{'action' if ctx.method == 'POST' else 'read'}"
        if mode == "collection" and ctx.method == "POST":
            return f"{base}/action"
        suffix = {"GET": "read", "HEAD": "read", "PUT": "write", "PATCH": "write",
                  "DELETE": "delete", "POST": "action"}.get(ctx.method, "read")
        return f"{base}/{suffix}"

    def filtered_listing(self, ctx: Ctx) -> bool:
        """Lists at subscription scope show what the caller may read instead of failing."""
        return False

    def invoke(self, ctx: Ctx, mode: str) -> Response:
        """Answer a request already authorised: `mode` is item, collection or verb."""
        m = ctx.method
        if mode == "item":
            handler = {"GET": self.get, "HEAD": self.head, "PUT": self.put, "PATCH": self.patch,
                       "DELETE": self.delete}.get(m)
            if handler:
                return handler(ctx)
        elif mode == "collection":
            if m == "GET":
                return self.list(ctx)
            if m == "POST":
                return self.post_collection(ctx)
        elif m == "POST" and ctx.verb in self.actions:
            return self.action(ctx, ctx.verb)
        elif m == "GET" and ctx.verb in self.views:
            return self.view(ctx, ctx.verb)
        raise method_not_allowed(ctx)

    def get(self, ctx: Ctx) -> Response:
        raise method_not_allowed(ctx)

    def head(self, ctx: Ctx) -> Response:
        raise method_not_allowed(ctx)

    def put(self, ctx: Ctx) -> Response:
        raise method_not_allowed(ctx)

    def patch(self, ctx: Ctx) -> Response:
        raise method_not_allowed(ctx)

    def delete(self, ctx: Ctx) -> Response:
        raise method_not_allowed(ctx)

    def list(self, ctx: Ctx) -> Response:
        raise method_not_allowed(ctx)

    def post_collection(self, ctx: Ctx) -> Response:
        raise method_not_allowed(ctx)

    def action(self, ctx: Ctx, verb: str) -> Response:
        raise method_not_allowed(ctx)

    def view(self, ctx: Ctx, verb: str) -> Response:
        raise method_not_allowed(ctx)


def visible(ctx: Ctx, items: list[dict], sub_action: str,
            item_action: Callable[[dict], str]) -> list[dict]:
    """The items of a subscription-wide list the caller may read.

    ARM filters such lists by the caller's assignments rather than refusing them when the caller
    has roles only on some groups (UNCONFIRMED in detail; it is what the portal and CLI show).
    """
    if ctx.sub and rbac.is_allowed(ctx.cloud, ctx.oid, sub_action, f"/subscriptions/{ctx.sub}"):
        return items
    return [i for i in items if rbac.is_allowed(ctx.cloud, ctx.oid, item_action(i), i["id"])]


class Tracked(Kind):
    """A top-level resource stored in `cloud.resources` under its id."""

    long_running = False  # PUT answers Creating/Updating and finishes later (lro.py)

    def build(self, ctx: Ctx, body: dict, existing: dict | None) -> dict:
        """The stored JSON for a PUT body (or a PATCH merged onto `existing`)."""
        return self.base(ctx, body, existing)

    def after_put(self, ctx: Ctx, res: dict, existing: dict | None) -> None:
        """Side effects once `res` is stored (under the lock)."""

    def check_delete(self, ctx: Ctx, res: dict) -> None:
        """Raise ArmError when this resource may not be deleted now."""

    def on_delete(self, ctx: Ctx, res: dict) -> None:
        """Side effects of deleting `res` (under the lock); also run by a group delete."""

    def present(self, ctx: Ctx, res: dict) -> dict:
        """What GET answers for a stored resource (e.g. with `$expand`)."""
        return res

    # -- shared pieces ------------------------------------------------------------------------
    def base(self, ctx: Ctx, body: dict, existing: dict | None) -> dict:
        loc = validate_location(body.get("location") or (existing or {}).get("location"),
                                self.type_name)
        if existing and loc != existing["location"]:
            raise ArmError(400, "InvalidResourceLocation",
                           f"The resource '{ctx.names[-1]}' already exists in location "
                           f"'{existing['location']}' in resource group '{ctx.rg}'. A resource "
                           f"with the same name cannot be created in location '{loc}'. Please "
                           "select a new resource name.")
        out: dict = {"id": existing["id"] if existing else ctx.resource_id(),
                     "name": existing["name"] if existing else ctx.names[-1],
                     "type": self.type_name, "location": loc}
        if isinstance(body.get("tags"), dict):
            out["tags"] = {str(k): str(v) for k, v in body["tags"].items()}
        for key in ("zones", "sku", "kind", "plan", "extendedLocation"):
            if body.get(key) is not None:
                out[key] = copy.deepcopy(body[key])
        return out

    def load(self, ctx: Ctx) -> dict | None:
        return ctx.cloud.resources.get(arm_key(ctx.resource_id()))

    def require(self, ctx: Ctx) -> dict:
        res = self.load(ctx)
        if res is None:
            raise resource_not_found(ctx)
        return res

    def store(self, ctx: Ctx, res: dict) -> None:
        ctx.cloud.resources[arm_key(res["id"])] = res

    def remove(self, ctx: Ctx, res: dict) -> None:
        """Delete without checks: the item, its side effects, and role assignments on it."""
        ctx.cloud.resources.pop(arm_key(res["id"]), None)
        self.on_delete(ctx, res)
        drop_role_assignments(ctx.cloud, res["id"])

    def items(self, ctx: Ctx) -> list[dict]:
        """This type's resources in the request's scope (subscription or group)."""
        prefix = arm_key(ctx.scope) + "/"
        return [r for k, r in ctx.cloud.resources.items()
                if k.startswith(prefix) and r["type"].lower() == self.type_name.lower()]

    # -- HTTP ---------------------------------------------------------------------------------
    def get(self, ctx: Ctx) -> Response:
        return json_response(self.present(ctx, self.require(ctx)))

    def head(self, ctx: Ctx) -> Response:
        return Response(b"", 204 if self.load(ctx) is not None else 404)

    def put(self, ctx: Ctx) -> Response:
        body = ctx.json()
        with ctx.cloud.lock:
            existing = self.load(ctx)
            res = self.build(ctx, body, existing)
            self.store(ctx, res)
            self.after_put(ctx, res, existing)
            headers = lro.begin_put(ctx, res, existing) if self.long_running else {}
            out = self.present(ctx, res)
        return json_response(out, 200 if existing else 201, headers)

    def patch(self, ctx: Ctx) -> Response:
        body = ctx.json()
        with ctx.cloud.lock:
            existing = self.require(ctx)
            res = self.build(ctx, patch_body(existing, body), existing)
            self.store(ctx, res)
            self.after_put(ctx, res, existing)
            out = self.present(ctx, res)
        return json_response(out)

    def delete(self, ctx: Ctx) -> Response:
        with ctx.cloud.lock:
            res = self.load(ctx)
            if res is None:
                return Response(b"", 204)
            self.check_delete(ctx, res)
            self.remove(ctx, res)
        return Response(b"", 200)

    def filtered_listing(self, ctx: Ctx) -> bool:
        return ctx.rg is None

    def list(self, ctx: Ctx) -> Response:
        with ctx.cloud.lock:
            items = [self.present(ctx, r) for r in self.items(ctx)]
        if ctx.rg is None:
            action = f"{self.type_name}/read"
            items = visible(ctx, items, action, lambda _r: action)
        return json_response({"value": items})


class InlineChild(Kind):
    """A child resource stored in a list inside its parent's `properties`."""

    parent: Tracked
    prop: str = ""
    writable = True

    def _parent(self, ctx: Ctx) -> tuple[Ctx, dict]:
        pctx = ctx.at_depth(len(ctx.types) - 1)
        res = self.parent.load(pctx)
        if res is None:
            raise resource_not_found(pctx)
        return pctx, res

    def _find(self, res: dict, name: str) -> dict | None:
        for child in res.get("properties", {}).get(self.prop, []):
            if child["name"].lower() == name.lower():
                return child
        return None

    def get(self, ctx: Ctx) -> Response:
        with ctx.cloud.lock:
            _, res = self._parent(ctx)
            child = self._find(res, ctx.names[-1])
        if child is None:
            raise resource_not_found(ctx)
        return json_response(child)

    def list(self, ctx: Ctx) -> Response:
        pctx = ctx.at_depth(len(ctx.types) - 1)
        res = self.parent.load(pctx)
        if res is None:
            raise resource_not_found(pctx)
        return json_response({"value": res.get("properties", {}).get(self.prop, [])})

    def _rebuild(self, ctx: Ctx, pctx: Ctx, res: dict, children: list[dict]) -> dict:
        body = copy.deepcopy(res)
        body["properties"][self.prop] = children
        new = self.parent.build(pctx, body, res)
        self.parent.store(pctx, new)
        self.parent.after_put(pctx, new, res)
        return new

    def put(self, ctx: Ctx) -> Response:
        if not self.writable:
            raise method_not_allowed(ctx)
        body = ctx.json()
        name = ctx.names[-1]
        with ctx.cloud.lock:
            pctx, res = self._parent(ctx)
            old = self._find(res, name)
            children = [c for c in res["properties"].get(self.prop, [])
                        if c["name"].lower() != name.lower()]
            child = {"name": old["name"] if old else name,
                     "properties": copy.deepcopy(body.get("properties") or {})}
            if old is None:
                children.append(child)
            else:
                children.insert(res["properties"][self.prop].index(old), child)
            new = self._rebuild(ctx, pctx, res, children)
            out = self._find(new, name)
        return json_response(out, 200 if old else 201)

    def delete(self, ctx: Ctx) -> Response:
        if not self.writable:
            raise method_not_allowed(ctx)
        with ctx.cloud.lock:
            pctx, res = self._parent(ctx)
            old = self._find(res, ctx.names[-1])
            if old is None:
                return Response(b"", 204)
            children = [c for c in res["properties"][self.prop] if c is not old]
            self._rebuild(ctx, pctx, res, children)
        return Response(b"", 200)


# -- the registry -----------------------------------------------------------------------------
class Registry:
    """The resource providers one ARM serves: namespaces and their resource types.

    Empty when made; each provider module's `register(registry)` adds its kinds, called by
    `arm.providers()` in the order `arm.PROVIDERS` lists them. Importing a module adds nothing.
    """

    def __init__(self) -> None:
        self.namespaces: dict[str, str] = {}  # lower -> canonical
        self.kinds: dict[tuple[str, tuple[str, ...]], Kind] = {}
        # Microsoft.Resources' own paths, without `/providers/{ns}` (`/subscriptions/{s}`,
        # `/subscriptions/{s}/resourceGroups/{g}`, ...): by their type segments.
        self.builtins: dict[tuple[str, ...], Kind] = {}

    def add_namespace(self, ns: str) -> None:
        self.namespaces.setdefault(ns.lower(), ns)

    def add(self, kind: Kind) -> Kind:
        self.namespaces[kind.ns.lower()] = kind.ns
        self.kinds[(kind.ns.lower(), tuple(t.lower() for t in kind.types))] = kind
        return kind

    def add_builtin(self, kind: Kind) -> Kind:
        self.add_namespace(kind.ns)
        self.builtins[tuple(t.lower() for t in kind.types)] = kind
        return kind

    def builtin(self, types: tuple[str, ...]) -> Kind | None:
        return self.builtins.get(tuple(t.lower() for t in types))

    def known_namespace(self, ns: str) -> str | None:
        return self.namespaces.get(ns.lower())

    def kind_for(self, ns: str, types: tuple[str, ...]) -> Kind | None:
        return self.kinds.get((ns.lower(), tuple(t.lower() for t in types)))

    def kind_for_type(self, type_name: str) -> Kind | None:
        ns, _, rest = type_name.partition("/")
        return self.kind_for(ns, tuple(rest.split("/")))


def drop_role_assignments(cloud: Cloud, scope: str) -> None:
    """Assignments at or under a deleted scope go with it (listing at once, enforcement later)."""
    for ra in cloud.visible_role_assignments():
        if rbac.scope_covers(scope, ra.scope):
            cloud.remove_role_assignment(ra.id)


GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
