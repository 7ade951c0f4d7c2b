"""Microsoft.Resources: subscriptions, tenants, locations, providers, resource groups and the
generic resource lists (“Resources - List By Resource Group”, “Resolve errors for resource not found”, “Subscriptions - List”)."""

from __future__ import annotations

import base64
import re
from urllib.parse import urlencode

from starlette.responses import Response

from .. import faults, rbac
from ..hosts import TENANT_DOMAIN
from ..responses import json_response
from ..state import Subscription, arm_key
from .kinds import (
    ArmError,
    Ctx,
    Kind,
    Registry,
    Tracked,
    drop_role_assignments,
    forbidden,
    group_not_found,
    method_not_allowed,
    require_allowed,
    visible,
)
from .versions import (
    LOCATION_NAMES,
    LOCATIONS,
    RESOURCES,
    SUBSCRIPTIONS,
    normalize_location,
    provider_versions,
)

NS = "Microsoft.Resources"

# ARM prints the resource-group actions with a lower-case `resourcegroups` [OBS, “Troubleshoot Azure RBAC”].
RG_ACTION = "Microsoft.Resources/subscriptions/resourcegroups"
RG_RESOURCES_READ = "Microsoft.Resources/subscriptions/resourceGroups/resources/read"
SUB_RESOURCES_READ = "Microsoft.Resources/subscriptions/resources/read"
LIST_FIELDS = ("id", "name", "type", "sku", "kind", "location", "extendedLocation", "managedBy",
               "plan", "tags", "identity")


# -- subscriptions and tenants ------------------------------------------------------------------
def subscription_json(ctx: Ctx, sub: Subscription) -> dict:
    sid = sub.subscription_id
    return {
        "id": f"/subscriptions/{sid}", "authorizationSource": "RoleBased", "managedByTenants": [],
        "subscriptionId": sid, "tenantId": ctx.cloud.tenant_id, "displayName": sub.display_name,
        "state": sub.state,
        "subscriptionPolicies": {"locationPlacementId": "Public_2014-09-01",
                                 "quotaId": "PayAsYouGo_2014-09-01", "spendingLimit": "Off"},
    }


def list_subscriptions(ctx: Ctx) -> Response:
    """Only subscriptions where the caller has some role in force (an MI with none gets [])."""
    subs = [subscription_json(ctx, s) for s in list(ctx.cloud.subscriptions.values())
            if rbac.has_any_access_in_subscription(ctx.cloud, ctx.oid, s.subscription_id)]
    return json_response({"value": subs, "count": {"type": "Total", "value": len(subs)}})


def _accessible(ctx: Ctx) -> Subscription:
    sub = ctx.cloud.subscription(ctx.sub or "")
    if sub is None or not rbac.has_any_access_in_subscription(ctx.cloud, ctx.oid,
                                                              sub.subscription_id):
        raise ArmError(404, "SubscriptionNotFound",
                       f"The subscription '{ctx.sub}' could not be found.")
    return sub


def get_subscription(ctx: Ctx) -> Response:
    if ctx.method != "GET":
        raise method_not_allowed(ctx)
    return json_response(subscription_json(ctx, _accessible(ctx)))


def list_tenants(ctx: Ctx) -> Response:
    tid = ctx.cloud.tenant_id
    tenant = {"id": f"/tenants/{tid}", "tenantId": tid, "countryCode": "GB",
              "displayName": "Local Azure", "domains": [TENANT_DOMAIN],
              "tenantCategory": "Home", "defaultDomain": TENANT_DOMAIN,
              "tenantType": "AAD"}
    return json_response({"value": [tenant], "count": {"type": "Total", "value": 1}})


def list_locations(ctx: Ctx) -> Response:
    """Readable by anyone with some role in the subscription (the exact rule is UNCONFIRMED)."""
    sid = _accessible(ctx).subscription_id
    value = [{
        "id": f"/subscriptions/{sid}/locations/{name}", "name": name, "type": "Region",
        "displayName": display, "regionalDisplayName": regional,
        "metadata": {"regionType": "Physical", "regionCategory": "Recommended",
                     "geographyGroup": geo, "latitude": lat, "longitude": lon,
                     "pairedRegion": [{"name": pair,
                                       "id": f"/subscriptions/{sid}/locations/{pair}"}]
                     if pair else []},
    } for name, display, regional, geo, lat, lon, pair in LOCATIONS]
    return json_response({"value": value})


# -- providers ------------------------------------------------------------------------------
def _provider_json(ctx: Ctx, ns: str, prefix: str) -> dict:
    types = sorted({"/".join(kind.types) for (n, _), kind in ctx.registry.kinds.items() if n == ns.lower()})
    if ns.lower() == "microsoft.resources":
        types = ["resourceGroups", "subscriptions", "resources", "locations", "tenants"]
    displays = [loc[1] for loc in LOCATIONS]
    return {
        "id": f"{prefix}/providers/{ns}", "namespace": ns, "registrationState": "Registered",
        "registrationPolicy": "RegistrationRequired",
        "resourceTypes": [{"resourceType": t, "locations": displays,
                           "apiVersions": list(provider_versions(ns, t.split("/")[0])),
                           "capabilities": "None"} for t in types],
    }


def providers(ctx: Ctx, rest: list[str], *, tenant_level: bool) -> Response:
    """`[/subscriptions/{sub}]/providers[/{ns}[/register]]`: every provider here is registered."""
    prefix = "" if tenant_level else f"/subscriptions/{ctx.sub}"
    if not tenant_level:
        if len(rest) == 2:
            require_allowed(ctx, f"{ctx.registry.known_namespace(rest[0]) or rest[0]}/register/action",
                            prefix)
        else:
            _accessible(ctx)
    if not rest:
        if ctx.method != "GET":
            raise method_not_allowed(ctx)
        return json_response({"value": [_provider_json(ctx, ns, prefix)
                                         for ns in sorted(set(ctx.registry.namespaces.values()))]})
    ns = ctx.registry.known_namespace(rest[0])
    if ns is None:
        raise ArmError(404, "InvalidResourceNamespace",
                       f"The resource namespace '{rest[0]}' is invalid.")
    if (len(rest) == 1 and ctx.method != "GET") or (len(rest) == 2 and ctx.method != "POST"):
        raise method_not_allowed(ctx)
    return json_response(_provider_json(ctx, ns, prefix))


# -- resource groups --------------------------------------------------------------------------
def _group_json(ctx: Ctx, body: dict, existing: dict | None) -> dict:
    loc = body.get("location") or (existing or {}).get("location")
    if not loc or not isinstance(loc, str):
        raise ArmError(400, "LocationRequired",
                       "The location property is required for this definition.")
    loc = normalize_location(loc)
    if loc not in LOCATION_NAMES:
        raise ArmError(400, "LocationNotAvailableForResourceGroup",
                       f"The provided location '{body.get('location')}' is not available for "
                       f"resource group. List of available regions is '{','.join(LOCATION_NAMES)}'.")
    if existing and loc != existing["location"]:
        raise ArmError(409, "InvalidResourceGroupLocation",
                       f"Invalid resource group location '{loc}'. The Resource group already "
                       f"exists in location '{existing['location']}'.")
    out: dict = {"id": existing["id"] if existing else ctx.rg_id,
                 "name": existing["name"] if existing else ctx.rg,
                 "type": "Microsoft.Resources/resourceGroups", "location": loc}
    if isinstance(body.get("tags"), dict):
        out["tags"] = {str(k): str(v) for k, v in body["tags"].items()}
    if body.get("managedBy"):
        out["managedBy"] = body["managedBy"]
    out["properties"] = {"provisioningState": "Succeeded"}
    return out


def group_item(ctx: Ctx) -> Response:
    verb = {"GET": "read", "HEAD": "read", "PUT": "write", "PATCH": "write",
            "DELETE": "delete"}.get(ctx.method)
    if verb is None:
        raise method_not_allowed(ctx)
    # Authorisation comes before existence: without read at the group a caller gets 403 whether
    # or not it exists, so group names don't leak (what ARM does within an accessible
    # subscription, UNCONFIRMED).
    require_allowed(ctx, f"{RG_ACTION}/{verb}", ctx.path)
    key = arm_key(ctx.rg_id)
    with ctx.cloud.lock:
        existing = ctx.cloud.resource_groups.get(key)
        if ctx.method == "HEAD":
            return Response(b"", 204 if existing else 404)
        if ctx.method == "PUT":
            group = _group_json(ctx, ctx.json(), existing)
            ctx.cloud.resource_groups[key] = group
            return json_response(group, 200 if existing else 201)
        if existing is None:
            raise group_not_found(ctx.rg or "")
        if ctx.method == "GET":
            return json_response(existing)
        if ctx.method == "PATCH":
            body = ctx.json()
            merged = dict(existing)
            if isinstance(body.get("tags"), dict):
                merged["tags"] = body["tags"]
            if "managedBy" in body:
                merged["managedBy"] = body["managedBy"]
            group = _group_json(ctx, merged, existing)
            ctx.cloud.resource_groups[key] = group
            return json_response(group)
        delete_group(ctx, existing)
    return Response(b"", 200)


def delete_group(ctx: Ctx, group: dict) -> None:
    """Delete every resource in the group with its side effects, then the group's assignments."""
    prefix = arm_key(group["id"]) + "/"
    keys = [k for k in ctx.cloud.resources if k.startswith(prefix)]
    # Virtual machines first, as ARM orders a group delete: that frees their disks and NICs.
    keys.sort(key=lambda k: 0 if "/microsoft.compute/virtualmachines/" in k else 1)
    for key in keys:
        res = ctx.cloud.resources.get(key)
        if res is None:
            continue
        kind = ctx.registry.kind_for_type(res["type"])
        if isinstance(kind, Tracked):
            kind.remove(ctx, res)
        else:
            ctx.cloud.resources.pop(key, None)
    drop_role_assignments(ctx.cloud, group["id"])
    ctx.cloud.resource_groups.pop(arm_key(group["id"]), None)


def list_groups(ctx: Ctx) -> Response:
    if ctx.method != "GET":
        raise method_not_allowed(ctx)
    action = f"{RG_ACTION}/read"
    if not rbac.has_any_access_in_subscription(ctx.cloud, ctx.oid, ctx.sub or ""):
        raise forbidden(ctx, action, ctx.path.rsplit("/", 1)[0])
    prefix = f"/subscriptions/{ctx.sub}/".lower()
    with ctx.cloud.lock:
        groups = [g for k, g in ctx.cloud.resource_groups.items() if k.startswith(prefix)]
    groups = [g for g in visible(ctx, groups, action, lambda _g: action)
              if _matches(g, parse_filter(ctx.q("$filter")))]
    return json_response(page(ctx, groups))


# -- the generic resource lists -------------------------------------------------------------
_CLAUSE = re.compile(r"^\s*(\w+)\s+eq\s+'((?:[^']|'')*)'\s*$", re.I)
_FILTER_KEYS = ("resourcetype", "name", "location", "resourcegroup", "tagname", "tagvalue")


def parse_filter(text: str | None) -> dict[str, str]:
    """`resourceType eq '…'`, `tagName eq '…' and tagValue eq '…'` and the like."""
    if not text:
        return {}
    out = {}
    for clause in re.split(r"\s+and\s+", text.strip(), flags=re.I):
        m = _CLAUSE.match(clause)
        if not m or m.group(1).lower() not in _FILTER_KEYS:
            # Code and text UNCONFIRMED.
            raise ArmError(400, "InvalidFilterInQueryString",
                           f"Invalid $filter '{text}' specified in the query string.")
        out[m.group(1).lower()] = m.group(2).replace("''", "'")
    return out


def _matches(item: dict, flt: dict[str, str]) -> bool:
    if "resourcetype" in flt and item["type"].lower() != flt["resourcetype"].lower():
        return False
    if "name" in flt and item["name"].lower() != flt["name"].lower():
        return False
    if "location" in flt and item.get("location", "") != normalize_location(flt["location"]):
        return False
    if "resourcegroup" in flt and \
            item["id"].split("/")[4].lower() != flt["resourcegroup"].lower():
        return False
    if "tagname" in flt:
        tags = {k.lower(): v for k, v in (item.get("tags") or {}).items()}
        if flt["tagname"].lower() not in tags:
            return False
        if "tagvalue" in flt and tags[flt["tagname"].lower()] != flt["tagvalue"]:
            return False
    return True


def _skip(token: str | None) -> int:
    if not token:
        return 0
    try:
        return int(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode())
    except (ValueError, UnicodeDecodeError):
        raise ArmError(400, "InvalidSkipToken",
                       f"The skip token '{token}' is invalid.") from None


def page(ctx: Ctx, items: list[dict]) -> dict:
    """Apply `$top`/`$skiptoken`; `nextLink` only when another page exists (“Resources - List By Resource Group”)."""
    top_text = ctx.q("$top")
    start = _skip(ctx.q("$skiptoken"))
    if not top_text:
        return {"value": items[start:]}
    try:
        top = int(top_text)
        if top < 1:
            raise ValueError
    except ValueError:
        raise ArmError(400, "InvalidTopValue",
                       f"The value '{top_text}' of the query parameter '$top' is invalid.") from None
    out: dict = {"value": items[start:start + top]}
    if start + top < len(items):
        token = base64.urlsafe_b64encode(str(start + top).encode()).decode().rstrip("=")
        params = [(k, v) for k, v in ctx.query_items if k.lower() != "$skiptoken"]
        params.append(("$skiptoken", token))
        out["nextLink"] = f"https://{ctx.host}{ctx.path}?{urlencode(params)}"
    return out


def _generic(res: dict, expand: str) -> dict:
    out = {k: res[k] for k in LIST_FIELDS if k in res}
    wanted = {e.strip().lower() for e in expand.split(",") if e.strip()}
    if "provisioningstate" in wanted:
        out["provisioningState"] = res.get("properties", {}).get("provisioningState", "Succeeded")
    created = res.get("properties", {}).get("timeCreated") or \
        res.get("systemData", {}).get("createdAt")
    if created and "createdtime" in wanted:
        out["createdTime"] = created
    if created and "changedtime" in wanted:
        out["changedTime"] = res.get("systemData", {}).get("lastModifiedAt", created)
    return out


def list_resources(ctx: Ctx, group: str | None) -> Response:
    if ctx.method != "GET":
        raise method_not_allowed(ctx)
    sub_scope = f"/subscriptions/{ctx.sub}"
    if group is not None:
        require_allowed(ctx, RG_RESOURCES_READ, ctx.path.rsplit("/", 1)[0])
        if faults.denies_group_listing(ctx.cloud, ctx.oid):  # the arm-list-denied quirk
            raise forbidden(ctx, RG_RESOURCES_READ, ctx.path.rsplit("/", 1)[0])
        if arm_key(ctx.rg_id) not in ctx.cloud.resource_groups:
            raise group_not_found(group)
        prefix = arm_key(ctx.rg_id) + "/"
    else:
        if not rbac.has_any_access_in_subscription(ctx.cloud, ctx.oid, ctx.sub or ""):
            raise forbidden(ctx, SUB_RESOURCES_READ, ctx.path.rsplit("/", 1)[0])
        prefix = arm_key(sub_scope) + "/"
    flt = parse_filter(ctx.q("$filter"))
    expand = ctx.q("$expand") or ""
    with ctx.cloud.lock:
        items = [_generic(r, expand) for k, r in ctx.cloud.resources.items()
                 if k.startswith(prefix) and _matches(r, flt)]
    if group is None:
        items = visible(ctx, items, SUB_RESOURCES_READ, lambda r: f"{r['type']}/read")
    return json_response(page(ctx, items))


# -- Microsoft.Resources' own paths as kinds ----------------------------------------------------
class _Builtin(Kind):
    """A path of Microsoft.Resources without `/providers/{ns}/` (arm.route finds it).

    It passes through arm.dispatch like every kind: its own api-version list
    (InvalidApiVersionParameter), then its handler, which authorises the caller in ARM's order
    for these (method, role, then whether the group exists) and so checks the group itself.
    """

    ns = NS
    check_rbac = False
    scope_must_exist = False
    api_versions = RESOURCES


class Subscriptions(_Builtin):
    types, api_versions = ("subscriptions",), SUBSCRIPTIONS

    def invoke(self, ctx: Ctx, mode: str) -> Response:
        # The list answers whatever the method, as it always has here.
        return list_subscriptions(ctx) if mode == "collection" else get_subscription(ctx)


class Tenants(_Builtin):
    types, api_versions = ("tenants",), SUBSCRIPTIONS

    def invoke(self, ctx: Ctx, mode: str) -> Response:
        return list_tenants(ctx)


class Locations(_Builtin):
    types, api_versions = ("locations",), SUBSCRIPTIONS

    def invoke(self, ctx: Ctx, mode: str) -> Response:
        return list_locations(ctx)


class Providers(_Builtin):
    types = ("providers",)

    def invoke(self, ctx: Ctx, mode: str) -> Response:
        return providers(ctx, list(ctx.names), tenant_level=ctx.sub is None)


class ResourceGroups(_Builtin):
    types = ("resourceGroups",)

    def invoke(self, ctx: Ctx, mode: str) -> Response:
        return list_groups(ctx) if mode == "collection" else group_item(ctx)


class SubscriptionResources(_Builtin):
    types = ("resources",)

    def invoke(self, ctx: Ctx, mode: str) -> Response:
        return list_resources(ctx, None)


class GroupResources(_Builtin):
    types = ("resourceGroups", "resources")

    def invoke(self, ctx: Ctx, mode: str) -> Response:
        return list_resources(ctx, ctx.rg)


BUILTINS = (Subscriptions(), Tenants(), Locations(), Providers(), ResourceGroups(),
            SubscriptionResources(), GroupResources())


def register(registry: Registry) -> None:
    """Microsoft.Resources' own paths (its deployments are arm_deployments')."""
    for kind in BUILTINS:
        registry.add_builtin(kind)
