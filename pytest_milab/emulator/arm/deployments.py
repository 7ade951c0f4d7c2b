"""Microsoft.Resources/deployments: ARM template deployments at resource-group and subscription
scope, as "Deployments - Create Or Update", "Deployments - Validate" and "Deployment Operations -
List" (Azure REST API reference, Resource Management) describe them.

A PUT checks the template at once (a bad template is 400 `InvalidTemplate`), stores the deployment
`Accepted` and answers 201 with `Azure-AsyncOperation`; the deployment then runs on the emulator's
loop: `Running`, each resource in `dependsOn` order sent as a PUT through the local ARM's own
routing **as the deploying principal** (its RBAC, its api-versions, its handlers), then `Succeeded`
or `Failed`. A failed resource does not stop resources that do not depend on it; the deployment
ends `DeploymentFailed` with one detail per failed resource, as "Troubleshoot common Azure
deployment errors" shows them.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import Response

from ..responses import iso, json_response
from ..state import arm_key, new_guid
from . import lro
from .kinds import ArmError, Ctx, Kind, Registry, method_not_allowed, validate_location
from .templates import (
    PURE,
    Evaluator,
    Scope,
    TemplateError,
    _Access,
    _Call,
    _Parser,
    echoed_parameters,
    is_expression,
    loads_jsonc,
    resolve_parameters,
    secure_names,
    to_string,
)

log = logging.getLogger(__name__)
NS = "Microsoft.Resources"
DEPLOYMENT_TYPE = f"{NS}/deployments"
FAILED_MESSAGE = ("At least one resource deployment operation failed. Please list deployment "
                  "operations for details. Please see https://aka.ms/arm-deployment-operations "
                  "for usage details.")
TERMINAL = ("succeeded", "failed", "canceled")
# Keys of a template resource that are the template's, not the resource provider's.
TEMPLATE_ONLY = ("name", "type", "apiVersion", "dependsOn", "copy", "condition", "comments",
                 "resources", "scope", "resourceGroup", "subscriptionId", "metadata")


def _store(cloud) -> dict[str, dict]:
    """Deployments by arm_key(id): {"json", "operations", "status", "template", "secure"}."""
    with cloud.lock:
        if not hasattr(cloud, "deployments"):
            cloud.deployments = {}
        return cloud.deployments


def _step(cloud) -> float:
    return lro.delay(cloud)


def invalid_template(message: str) -> ArmError:
    return ArmError(400, "InvalidTemplate", message)


def _known_function(name: str) -> bool:
    return name.lower() in PURE or hasattr(Evaluator, f"fn_{name.lower()}")


def _walk_calls(node: Any) -> Iterator[_Call]:
    if isinstance(node, _Call):
        yield node
        for arg in node.args:
            yield from _walk_calls(arg)
    elif isinstance(node, _Access):
        yield from _walk_calls(node.target)
        yield from _walk_calls(node.key)


def check_expressions(value: Any, where: str = "") -> None:
    """Every expression in the template parses and names known functions (ARM checks this before
    it deploys anything)."""
    if isinstance(value, str) and is_expression(value):
        node = _Parser(value[1:-1]).parse()
        for call in _walk_calls(node):
            if not _known_function(call.name):
                raise TemplateError(f"The template function '{call.name}' is not expected"
                                    f"{' at ' + where if where else ''}. The local Azure does "
                                    "not know this template function.")
    elif isinstance(value, list):
        for item in value:
            check_expressions(item, where)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_expressions(key, where)
            check_expressions(item, where)


# -- the plan: template resources expanded ---------------------------------------------------
@dataclass
class Planned:
    index: int
    raw: dict  # the template resource (children flattened)
    copy_index: dict[str, int]
    name: str
    type: str
    api_version: str
    id: str
    loop: str | None
    depends_raw: list[str]
    depends: list[int] = field(default_factory=list)
    state: str = "pending"  # pending | succeeded | failed | skipped
    operation: dict | None = None


def _type_tail(rtype: str, name: str) -> str:
    """`Microsoft.Network/virtualNetworks/subnets` + `vnet/default` as id segments."""
    ns, *types = rtype.split("/")
    names = name.split("/")
    if len(types) != len(names):
        raise TemplateError(f"The template resource '{name}' for type '{rtype}' has incorrect "
                            f"segment lengths. A nested resource type must have identical "
                            "number of segments as its resource name. A root resource type must "
                            "have segment length one greater than its resource name.")
    return f"{ns}/" + "/".join(f"{t}/{n}" for t, n in zip(types, names, strict=True))


def resource_id_of(rtype: str, name: str, *, sub: str, group: str | None,
                   scope: str | None = None) -> str:
    if scope:
        return f"{scope.rstrip('/')}/providers/{_type_tail(rtype, name)}"
    if rtype.lower() == "microsoft.resources/resourcegroups":
        return f"/subscriptions/{sub}/resourceGroups/{name}"
    prefix = f"/subscriptions/{sub}" + (f"/resourceGroups/{group}" if group else "")
    if "/providers/" in rtype:  # `Microsoft.Compute/virtualMachines/providers/roleAssignments`
        base_type, ext_type = rtype.split("/providers/", 1)
        depth = len(base_type.split("/")) - 1
        parts = name.split("/")
        base = f"{prefix}/providers/{_type_tail(base_type, '/'.join(parts[:depth]))}"
        ext_ns, ext_names = parts[depth], "/".join(parts[depth + 1:])
        return f"{base}/providers/{_type_tail(f'{ext_ns}/{ext_type}', ext_names)}"
    return f"{prefix}/providers/{_type_tail(rtype, name)}"


def _flatten(resources: list, parent: dict | None = None) -> Iterator[dict]:
    """Child resources declared inside their parent get the parent's type and name prefixed and
    an implicit dependency on it ("Set name and type for child resources in ARM templates")."""
    for res in resources:
        if not isinstance(res, dict):
            raise TemplateError("Each template resource must be a JSON object.")
        res = dict(res)
        children = res.pop("resources", None) or []
        if parent is not None:
            ptype, pname = parent["type"], parent["name"]
            rtype = str(res.get("type", ""))
            if "." not in rtype.split("/")[0]:  # short: `subnets` under its parent
                res["type"] = f"{ptype}/{rtype}"
                res["name"] = _join_names(pname, res.get("name"))
            res["dependsOn"] = list(res.get("dependsOn") or []) + [_join_names(ptype, pname)]
        yield res
        if children:
            yield from _flatten(children, res)


def _join_names(parent: Any, child: Any) -> str:
    p, c = str(parent), str(child)
    if is_expression(p) or is_expression(c):
        left = p[1:-1] if is_expression(p) else "'" + p.replace("'", "''") + "'"
        right = c[1:-1] if is_expression(c) else "'" + c.replace("'", "''") + "'"
        return f"[concat({left}, '/', {right})]"
    return f"{p}/{c}"


def _canonical(ref: str) -> str:
    """An id or name for comparison: lower case; a group as `/subscriptions/{s}/resourcegroups/
    {name}` also when written with `/providers/Microsoft.Resources/`."""
    return ref.lower().rstrip("/").replace("/providers/microsoft.resources/resourcegroups/",
                                           "/resourcegroups/")


class Plan:
    """The template's resources expanded (copy loops, conditions) and ordered by `dependsOn`."""

    def __init__(self, template: dict, scope: Scope, *, sub: str, group: str | None) -> None:
        self.template, self.scope, self.sub, self.group = template, scope, sub, group
        self.items: list[Planned] = []
        self.loops: dict[str, list[int]] = {}
        resources = template.get("resources") or []
        if isinstance(resources, dict):  # languageVersion 2.0 symbolic names
            resources = list(resources.values())
        if not isinstance(resources, list):
            raise TemplateError("The template 'resources' section must be an array.")
        for raw in _flatten(resources):
            self._expand(raw)
        self._link()
        self.order = self._sort()

    def _evaluate(self, value: Any, copy_index: dict[str, int]) -> Any:
        saved = self.scope.copy_index
        self.scope.copy_index = copy_index
        try:
            return Evaluator(self.scope).value(value)
        finally:
            self.scope.copy_index = saved

    def _expand(self, raw: dict) -> None:
        for key in ("type", "name", "apiVersion"):
            if not raw.get(key):
                raise TemplateError(f"The template resource is missing the required property "
                                    f"'{key}'.")
        loop = raw.get("copy")
        if loop is None:
            self._add(raw, {}, None)
            return
        if not isinstance(loop, dict) or not loop.get("name"):
            raise TemplateError("The template 'copy' property must be an object with a 'name'.")
        loop_name = str(loop["name"])
        count = self._evaluate(loop.get("count"), {})
        if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= 800:
            raise TemplateError(f"The template copy loop '{loop_name}' has an invalid count "
                                f"'{count}': it must be an integer from 0 to 800.")
        self.loops.setdefault(loop_name.lower(), [])
        for i in range(count):
            self._add(raw, {"": i, loop_name.lower(): i}, loop_name)

    def _add(self, raw: dict, copy_index: dict[str, int], loop: str | None) -> None:
        if "condition" in raw and not self._evaluate(raw["condition"], copy_index):
            return
        name = to_string(self._evaluate(raw["name"], copy_index))
        rtype = to_string(self._evaluate(raw["type"], copy_index))
        api = to_string(self._evaluate(raw["apiVersion"], copy_index))
        scope = raw.get("scope")
        scope = to_string(self._evaluate(scope, copy_index)) if scope else None
        group = self.group
        sub = self.sub
        if raw.get("subscriptionId"):
            sub = to_string(self._evaluate(raw["subscriptionId"], copy_index))
        if raw.get("resourceGroup"):
            group = to_string(self._evaluate(raw["resourceGroup"], copy_index))
        rid = resource_id_of(rtype, name, sub=sub, group=group, scope=scope)
        depends = self._evaluate(raw.get("dependsOn") or [], copy_index)
        if not isinstance(depends, list):
            raise TemplateError(f"The 'dependsOn' of resource '{name}' must be an array.")
        item = Planned(len(self.items), raw, copy_index, name, rtype, api, rid, loop,
                       [to_string(d) for d in depends])
        if any(arm_key(other.id) == arm_key(rid) for other in self.items):
            raise TemplateError(f"The resource '{rid}' is defined multiple times in a template. "
                                "Please see https://aka.ms/arm-syntax-resources for usage "
                                "details.")
        self.items.append(item)
        if loop:
            self.loops[loop.lower()].append(item.index)

    def find(self, ref: str) -> list[int]:
        """Template resources a `dependsOn` or `reference` entry names: a copy loop, a resource
        id, `Type/name` (`Microsoft.Network/virtualNetworks/vnet`) or a bare name."""
        low = _canonical(ref)
        if low in self.loops:
            return list(self.loops[low])
        out = []
        for item in self.items:
            short_forms = {
                f"{item.type}/{item.name}".lower(),
                item.id.lower().split("/providers/", 1)[-1],
                item.name.lower(),
            }
            rid = _canonical(item.id)
            if low == rid or low in short_forms or (low.startswith("/") and rid.endswith(low)):
                out.append(item.index)
        return out

    def _link(self) -> None:
        for item in self.items:
            for ref in item.depends_raw:
                found = [i for i in self.find(ref) if i != item.index]
                if not found:
                    raise TemplateError(f"Deployment template validation failed: 'The resource "
                                        f"'{ref}' is not defined in the template. Please see "
                                        "https://aka.ms/arm-syntax for usage details.'.")
                item.depends.extend(i for i in found if i not in item.depends)

    def _sort(self) -> list[Planned]:
        done: list[int] = []
        state: dict[int, str] = {}

        def visit(i: int, path: list[int]) -> None:
            if state.get(i) == "done":
                return
            if state.get(i) == "visiting":
                cycle = " -> ".join(self.items[j].name for j in path + [i])
                raise TemplateError(f"Deployment template validation failed: 'Circular "
                                    f"dependency detected on resource: '{self.items[i].id}'. "
                                    f"The dependency chain: {cycle}.'.")
            state[i] = "visiting"
            for dep in self.items[i].depends:
                visit(dep, path + [i])
            state[i] = "done"
            done.append(i)

        for item in self.items:
            visit(item.index, [])
        return [self.items[i] for i in done]


# -- the stored deployment ----------------------------------------------------------------
def template_hash(template: dict) -> str:
    """A number per template, as ARM's templateHash is (its hash function is not published)."""
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).digest()
    return str(int.from_bytes(digest[:8], "big") % 10 ** 19)


def _duration(seconds: float) -> str:
    return f"PT{seconds:.7f}".rstrip("0").rstrip(".") + "S"


def _providers(items: list[Planned], location: str) -> list[dict]:
    by_ns: dict[str, dict[str, set]] = {}
    for item in items:
        ns, _, rest = item.type.partition("/")
        locs = by_ns.setdefault(ns, {}).setdefault(rest, set())
        if location:
            locs.add(location)
    return [{"namespace": ns, "resourceTypes": [
        {"resourceType": t, "locations": sorted(locs)} for t, locs in types.items()]}
        for ns, types in by_ns.items()]


def _dependencies(items: list[Planned]) -> list[dict]:
    out = []
    for item in items:
        if not item.depends:
            continue
        out.append({
            "dependsOn": [{"id": items[d].id, "resourceType": items[d].type,
                           "resourceName": items[d].name} for d in item.depends],
            "id": item.id, "resourceType": item.type, "resourceName": item.name})
    return out


def _output_type(decl: str) -> str:
    low = decl.lower()
    return {"string": "String", "securestring": "SecureString", "int": "Int", "bool": "Bool",
            "object": "Object", "secureobject": "SecureObject", "array": "Array"}.get(low, decl)


# -- the kinds ---------------------------------------------------------------------------
class Deployments(Kind):
    ns, types = NS, ("deployments",)
    actions = ("validate", "cancel", "exportTemplate", "whatIf")

    # -- reading ------------------------------------------------------------------------------
    def _key(self, ctx: Ctx) -> str:
        return arm_key(ctx.resource_id())

    def _record(self, ctx: Ctx) -> dict:
        rec = _store(ctx.cloud).get(self._key(ctx))
        if rec is None:
            raise ArmError(404, "DeploymentNotFound",
                           f"Deployment '{ctx.names[0]}' could not be found.")
        return rec

    def get(self, ctx: Ctx) -> Response:
        with ctx.cloud.lock:
            return json_response(copy.deepcopy(self._record(ctx)["json"]))

    def head(self, ctx: Ctx) -> Response:
        return Response(b"", 204 if self._key(ctx) in _store(ctx.cloud) else 404)

    def list(self, ctx: Ctx) -> Response:
        prefix = arm_key(ctx.scope) + "/providers/microsoft.resources/deployments/"
        with ctx.cloud.lock:
            items = [copy.deepcopy(r["json"]) for k, r in _store(ctx.cloud).items()
                     if k.startswith(prefix) and "/" not in k[len(prefix):]]
        return json_response({"value": items})

    def delete(self, ctx: Ctx) -> Response:
        """Deleting a deployment removes its history, never the resources it made."""
        with ctx.cloud.lock:
            rec = _store(ctx.cloud).get(self._key(ctx))
            if rec is None:
                return Response(b"", 204)
            if rec["json"]["properties"]["provisioningState"].lower() not in TERMINAL:
                raise ArmError(409, "DeploymentActive",
                               f"The deployment '{ctx.names[0]}' cannot be deleted because it "
                               "is still active.")
            _store(ctx.cloud).pop(self._key(ctx), None)
        return Response(b"", 204)

    # -- checking -----------------------------------------------------------------------------
    def _scope_info(self, ctx: Ctx) -> tuple[dict | None, str | None]:
        group = None
        if ctx.rg:
            group = ctx.cloud.resource_groups.get(arm_key(ctx.rg_id))
        return group, (group or {}).get("name") if ctx.rg else None

    def _prepare(self, ctx: Ctx) -> dict:
        """The checked request: template, parameter values, plan. Raises 400 like ARM."""
        body = _jsonc_body(ctx)
        props = body.get("properties")
        if not isinstance(props, dict):
            raise ArmError(400, "InvalidRequestContent", "The request content was invalid and "
                           "could not be deserialized: 'Required property 'properties' not "
                           "found in JSON.'.")
        mode = str(props.get("mode") or "")
        if mode.lower() not in ("incremental", "complete"):
            raise ArmError(400, "InvalidDeploymentMode" if mode else "InvalidRequestContent",
                           f"The deployment mode '{mode}' is not valid. Allowed values are "
                           "'Incremental' and 'Complete'.")
        if mode.lower() == "complete":
            raise ArmError(400, "InvalidDeploymentMode", "The local Azure deploys in "
                           "'Incremental' mode only; 'Complete' would delete resources the "
                           "template does not list.")
        if props.get("templateLink") or props.get("parametersLink"):
            raise ArmError(400, "InvalidContentLink", "The local Azure cannot download linked "
                           "templates or parameter files: send them inline as 'template' and "
                           "'parameters'.")
        template = props.get("template")
        if not isinstance(template, dict):
            raise invalid_template("Deployment template validation failed: 'The template is "
                                   "missing or is not a JSON object.'.")
        location = None
        if ctx.rg is None:
            if not body.get("location"):
                raise ArmError(400, "InvalidDeploymentLocation", "The 'location' property "
                               "must be specified for the deployment at subscription scope.")
            location = validate_location(body["location"], DEPLOYMENT_TYPE)
        group, group_name = self._scope_info(ctx)
        scope = Scope(subscription_id=ctx.sub or "", tenant_id=ctx.cloud.tenant_id,
                      group=group, deployment_name=ctx.names[0],
                      raw_variables=dict(template.get("variables") or {}))
        try:
            check_expressions(template)
            params = resolve_parameters(template, props.get("parameters") or {}, scope)
            for key in scope.raw_variables:  # evaluated now, so a bad variable fails the PUT
                Evaluator(scope).fn_variables((key,))
            plan = Plan(template, scope, sub=ctx.sub or "", group=group_name)
        except TemplateError as exc:
            raise invalid_template(str(exc)) from None
        except RecursionError:
            raise invalid_template("Deployment template validation failed: 'The template is "
                                   "nested too deeply.'.") from None
        return {"body": body, "props": props, "template": template, "params": params,
                "scope": scope, "plan": plan, "mode": "Incremental", "location": location}

    def _json(self, ctx: Ctx, prep: dict, state: str, started: float) -> dict:
        props = {
            "templateHash": template_hash(prep["template"]),
            "parameters": echoed_parameters(prep["template"], prep["params"]),
            "mode": prep["mode"], "provisioningState": state, "timestamp": iso(started),
            "duration": "PT0S", "correlationId": new_guid(),
            "providers": _providers(prep["plan"].items, (prep["scope"].group or {}).get(
                "location", prep["location"] or "")),
            "dependencies": _dependencies(prep["plan"].items),
        }
        if prep["props"].get("debugSetting"):
            props["debugSetting"] = prep["props"]["debugSetting"]
        out = {"id": ctx.resource_id(), "name": ctx.names[0], "type": DEPLOYMENT_TYPE,
               "properties": props}
        if prep["location"]:
            out["location"] = prep["location"]
        if isinstance(prep["body"].get("tags"), dict):
            out["tags"] = dict(prep["body"]["tags"])
        return out

    # -- writing ------------------------------------------------------------------------------
    def put(self, ctx: Ctx) -> Response:
        if len(ctx.names[0]) > 64:
            raise ArmError(400, "InvalidDeploymentName", f"The deployment name "
                           f"'{ctx.names[0]}' is invalid: it may have at most 64 characters.")
        prep = self._prepare(ctx)
        key = self._key(ctx)
        started = ctx.cloud.now()
        with ctx.cloud.lock:
            old = _store(ctx.cloud).get(key)
            if old is not None and \
                    old["json"]["properties"]["provisioningState"].lower() not in TERMINAL:
                raise ArmError(409, "DeploymentActive",
                               f"Unable to edit or replace deployment '{ctx.names[0]}': previous "
                               "deployment from '" + old["json"]["properties"]["timestamp"] +
                               "' is still active. Please see https://aka.ms/arm-deploy for "
                               "usage details.")
            op_id = str(int(time.time() * 1e7))[-17:] + str(len(_store(ctx.cloud)) % 100)
            rec = {"json": self._json(ctx, prep, "Accepted", started), "operations": [],
                   "status": {"id": op_id, "status": "Accepted"},
                   "secure": secure_names(prep["template"])}
            _store(ctx.cloud)[key] = rec
            out = copy.deepcopy(rec["json"])
        runner = _Runner(ctx, prep, rec, started)
        runner.start()
        status_url = (f"https://{ctx.host}{ctx.resource_id()}/operationStatuses/{op_id}"
                      f"?api-version={ctx.api_version}")
        return json_response(out, 201, {"Azure-AsyncOperation": status_url,
                                        **lro.retry_headers(ctx.cloud)})

    def action(self, ctx: Ctx, verb: str) -> Response:
        if verb == "validate":
            prep = self._prepare(ctx)
            out = self._json(ctx, prep, "Succeeded", ctx.cloud.now())
            out["properties"]["validatedResources"] = [{"id": i.id} for i in prep["plan"].order]
            return json_response(out)
        if verb == "cancel":
            with ctx.cloud.lock:
                rec = self._record(ctx)
                if rec["json"]["properties"]["provisioningState"].lower() in TERMINAL:
                    raise ArmError(409, "DeploymentCannotBeCancelled",
                                   f"The deployment '{ctx.names[0]}' cannot be cancelled "
                                   "because it has completed.")
                rec["cancel"] = True
            return Response(b"", 204)
        if verb == "exportTemplate":
            with ctx.cloud.lock:
                rec = self._record(ctx)
                return json_response({"template": copy.deepcopy(rec.get("template") or {})})
        raise method_not_allowed(ctx)


def _jsonc_body(ctx: Ctx) -> dict:
    """The request body; ARM reads deployment bodies as JSONC (the Azure CLI relies on it)."""
    if ctx._body is None:
        try:
            ctx._body = loads_jsonc(ctx.body_bytes or b"{}")
        except ValueError as exc:
            raise ArmError(400, "InvalidRequestContent", "The request content was invalid and "
                           f"could not be deserialized: '{exc}'.") from None
    return ctx.json()


class OperationStatuses(Kind):
    ns, types = NS, ("deployments", "operationStatuses")

    def get(self, ctx: Ctx) -> Response:
        key = arm_key(ctx.at_depth(1).resource_id())
        with ctx.cloud.lock:
            rec = _store(ctx.cloud).get(key)
            if rec is None or rec["status"]["id"] != ctx.names[1]:
                raise ArmError(404, "DeploymentNotFound",
                               f"Deployment '{ctx.names[0]}' could not be found.")
            body = copy.deepcopy(rec["status"])
        headers = {} if body["status"].lower() in TERMINAL else \
            lro.retry_headers(ctx.cloud)
        return json_response(body, 200, headers)


class DeploymentOperations(Kind):
    ns, types = NS, ("deployments", "operations")

    def _ops(self, ctx: Ctx) -> list[dict]:
        key = arm_key(ctx.at_depth(1).resource_id())
        rec = _store(ctx.cloud).get(key)
        if rec is None:
            raise ArmError(404, "DeploymentNotFound",
                           f"Deployment '{ctx.names[0]}' could not be found.")
        return copy.deepcopy(rec["operations"])

    def list(self, ctx: Ctx) -> Response:
        with ctx.cloud.lock:
            return json_response({"value": self._ops(ctx)})

    def get(self, ctx: Ctx) -> Response:
        with ctx.cloud.lock:
            for op in self._ops(ctx):
                if op["operationId"] == ctx.names[1]:
                    return json_response(op)
        raise ArmError(404, "DeploymentOperationNotFound",
                       f"Deployment operation '{ctx.names[1]}' could not be found.")


# -- running a deployment -------------------------------------------------------------------
def _status_text(status: int) -> str:
    return {200: "OK", 201: "Created", 202: "Accepted", 204: "NoContent", 400: "BadRequest",
            401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
            409: "Conflict", 429: "TooManyRequests", 500: "InternalServerError"}.get(
        status, str(status))


class _ResourceFailed(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class _Runner:
    """One deployment's run: on the emulator's loop when there is one, else on a thread."""

    def __init__(self, ctx: Ctx, prep: dict, rec: dict, started: float) -> None:
        self.ctx, self.prep, self.rec, self.started = ctx, prep, rec, started
        self.plan: Plan = prep["plan"]
        self.cloud = ctx.cloud
        self.oid = ctx.oid

    def start(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            threading.Thread(target=lambda: asyncio.run(self.run()), daemon=True,
                             name=f"deployment-{self.ctx.names[0]}").start()
            return
        task = loop.create_task(self.run())
        _TASKS.add(task)
        task.add_done_callback(_TASKS.discard)

    def _set(self, state: str, **extra: Any) -> None:
        with self.cloud.lock:
            props = self.rec["json"]["properties"]
            props["provisioningState"] = state
            props["duration"] = _duration(self.cloud.now() - self.started)
            props.update(extra)
            status = {"Accepted": "Accepted", "Running": "Running"}.get(state, state)
            self.rec["status"]["status"] = status
            if state == "Failed":
                self.rec["status"]["error"] = copy.deepcopy(props["error"])

    async def run(self) -> None:
        try:
            await asyncio.sleep(_step(self.cloud))
            self._set("Running")
            failures = await self._deploy()
            if self.rec.get("cancel"):
                self._set("Canceled")
                return
            if failures:
                self._set("Failed", error={"code": "DeploymentFailed",
                                           "target": self.ctx.resource_id(),
                                           "message": FAILED_MESSAGE, "details": failures})
                return
            try:
                outputs = self._outputs()
            except (TemplateError, _ResourceFailed) as exc:
                code = getattr(exc, "code", "InvalidTemplate")
                self._set("Failed", error={"code": code, "message": str(exc)})
                return
            resources = [{"id": i.id} for i in self.plan.order if i.state == "succeeded"]
            self._set("Succeeded", outputs=outputs, outputResources=resources)
        except Exception:  # a bug must end the deployment, visibly
            log.exception("deployment %s failed", self.ctx.resource_id())
            self._set("Failed", error={"code": "InternalServerError",
                                       "message": "Encountered internal server error."})

    async def _deploy(self) -> list[dict]:
        failures = []
        for item in self.plan.order:
            if self.rec.get("cancel"):
                break
            if any(self.plan.items[d].state != "succeeded" for d in item.depends):
                item.state = "skipped"
                continue
            t0 = self.cloud.now()
            try:
                status, body = await self._deploy_one(item)
            except _ResourceFailed as exc:
                item.state = "failed"
                failures.append({"code": exc.code, "target": item.id, "message": exc.message})
                self._operation(item, t0, "Failed", exc.status,
                                {"error": {"code": exc.code, "message": exc.message}})
                continue
            item.state = "succeeded"
            self._operation(item, t0, "Succeeded", status, None)
        return failures

    def _operation(self, item: Planned, t0: float, state: str, status: int,
                   message: dict | None) -> None:
        op_id = new_guid().replace("-", "")[:16].upper()
        op = {"id": f"{self.ctx.resource_id()}/operations/{op_id}", "operationId": op_id,
              "properties": {
                  "provisioningOperation": "Create", "provisioningState": state,
                  "timestamp": iso(self.cloud.now()), "duration": _duration(self.cloud.now() - t0),
                  "trackingId": new_guid(), "serviceRequestId": new_guid(),
                  "statusCode": _status_text(status),
                  "targetResource": {"id": item.id, "resourceType": item.type,
                                     "resourceName": item.name, "apiVersion": item.api_version}}}
        if message is not None:
            op["properties"]["statusMessage"] = {"status": "Failed", **message}
        with self.cloud.lock:
            self.rec["operations"].append(op)

    # -- one resource ------------------------------------------------------------------------
    def _evaluate(self, value: Any, item: Planned | None) -> Any:
        scope = self.prep["scope"]
        scope.copy_index = item.copy_index if item else {}
        scope.reference = self._reference
        try:
            return Evaluator(scope).value(value)
        finally:
            scope.copy_index = {}

    def _body(self, item: Planned) -> dict:
        raw = {k: v for k, v in item.raw.items() if k not in TEMPLATE_ONLY}
        if item.type.lower() == DEPLOYMENT_TYPE.lower():
            options = (item.raw.get("properties") or {}).get("expressionEvaluationOptions") or {}
            if str(options.get("scope", "")).lower() == "inner":
                inner = raw.get("properties", {}).get("template")
                props = {k: v for k, v in raw["properties"].items() if k != "template"}
                out = self._evaluate({**raw, "properties": props}, item)
                out["properties"]["template"] = copy.deepcopy(inner)
                return out
        return self._evaluate(raw, item)

    async def _deploy_one(self, item: Planned) -> tuple[int, dict]:
        try:
            body = self._body(item)
        except TemplateError as exc:
            raise _ResourceFailed(400, "InvalidTemplate", str(exc)) from None
        status, answer = self.request("PUT", item.id, item.api_version, body)
        if status >= 400:
            error = (answer or {}).get("error") or {}
            raise _ResourceFailed(status, error.get("code") or _status_text(status),
                                  error.get("message") or json.dumps(answer))
        deadline = time.monotonic() + 600
        while _pending(answer) and time.monotonic() < deadline:
            await asyncio.sleep(max(_step(self.cloud), 0.01))
            status_get, got = self.request("GET", item.id, item.api_version, None)
            if status_get >= 400:
                error = (got or {}).get("error") or {}
                raise _ResourceFailed(status_get, error.get("code") or _status_text(status_get),
                                      error.get("message") or "")
            answer = got
        state = str(((answer or {}).get("properties") or {}).get("provisioningState", ""))
        if state.lower() in ("failed", "canceled"):
            error = (answer.get("properties") or {}).get("error") or {
                "code": "ResourceDeploymentFailure",
                "message": f"The resource write operation failed to complete successfully, "
                           f"because it reached terminal provisioning state '{state}'."}
            raise _ResourceFailed(status, error.get("code", "ResourceDeploymentFailure"),
                                  error.get("message", ""))
        return status, answer or {}

    def request(self, method: str, rid: str, api_version: str,
                body: dict | None) -> tuple[int, Any]:
        """One request through the local ARM's routing, as the deploying principal."""
        from . import app as arm  # arm.app lists this module among its providers

        query = {"api-version": api_version}
        ctx = Ctx(cloud=self.cloud, method=method, path=rid.rstrip("/"), query=query,
                  query_items=tuple(query.items()), host=self.ctx.host, oid=self.oid,
                  api_version=api_version, registry=self.ctx.registry,
                  body_bytes=json.dumps(body).encode() if body is not None else b"")
        try:
            resp = arm.route(ctx)
        except ArmError as exc:
            return exc.status, {"error": {"code": exc.code, "message": exc.message}}
        except Exception:
            log.exception("deployment request %s %s failed", method, rid)
            return 500, {"error": {"code": "InternalServerError",
                                   "message": "Encountered internal server error."}}
        finally:
            for event, resource in ctx.events:
                try:
                    self.cloud.emit(event, resource)
                except Exception:
                    log.exception("listener failed on %s", event)
        data = bytes(resp.body or b"")
        try:
            answer = json.loads(data) if data else {}
        except ValueError:
            answer = {}
        return resp.status_code, answer

    def _reference(self, target: str, api_version: str | None, full: bool) -> Any:
        """`reference()`: the resource as its provider answers GET now, read as the deployer."""
        rid = target
        item = None
        if not target.startswith("/"):
            found = self.plan.find(target)
            if not found:
                raise TemplateError(f"The template reference '{target}' is not valid: could not "
                                    "find template resource or resource copy with this name.")
            item = self.plan.items[found[0]]
            rid = item.id
        else:
            idx = self.plan.find(target)
            item = self.plan.items[idx[0]] if idx else None
        version = api_version or (item.api_version if item else None)
        if not version:
            raise TemplateError(f"The template reference '{target}' needs an api-version: the "
                                "resource is not declared in this template.")
        status, answer = self.request("GET", rid, version, None)
        if status >= 400:
            error = (answer or {}).get("error") or {}
            raise _ResourceFailed(status, error.get("code") or _status_text(status),
                                  error.get("message") or "")
        if full:
            return {**answer, "apiVersion": version}
        return answer.get("properties", answer)

    def _outputs(self) -> dict:
        out = {}
        for name, spec in (self.prep["template"].get("outputs") or {}).items():
            spec = spec or {}
            if "condition" in spec and not self._evaluate(spec["condition"], None):
                continue
            if "copy" in spec:
                loop = spec["copy"]
                count = self._evaluate(loop.get("count"), None)
                value = []
                for i in range(int(count)):
                    self.prep["scope"].copy_index = {"": i}
                    value.append(Evaluator(self.prep["scope"]).value(loop.get("input")))
                self.prep["scope"].copy_index = {}
            else:
                value = self._evaluate(spec.get("value"), None)
            otype = _output_type(str(spec.get("type", "string")))
            out[name] = {"type": otype} if otype.startswith("Secure") else \
                {"type": otype, "value": value}
        return out


_TASKS: set = set()


def _pending(answer: Any) -> bool:
    state = str(((answer or {}).get("properties") or {}).get("provisioningState", "Succeeded"))
    return state.lower() not in (*TERMINAL, "")


KINDS = (Deployments(), OperationStatuses(), DeploymentOperations())


def register(registry: Registry) -> None:
    """Add this provider's resource types to an ARM's registry (arm.PROVIDERS lists the order)."""
    for kind in KINDS:
        registry.add(kind)
