"""The ARM template language: parameters, variables, expressions and their functions.

Following "Understand the structure and syntax of ARM templates", "Syntax and expressions in ARM
templates" and "ARM template functions" (Microsoft Learn). A string that starts with `[` and ends
with `]` is an expression (`[[` escapes a literal bracket); an expression is a literal, a function
call, or either followed by `.property` and `[index]` accessors. Function names are
case-insensitive. Anything this engine does not know is a `TemplateError` (ARM's
`InvalidTemplate`), never a crash.

`uniqueString` and `guid` are deterministic hashes of their arguments as documented; ARM's own hash
is not published, so the values differ from real Azure's (same length and alphabet).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..hosts import ARM_ENDPOINT, CLASSIC_MANAGEMENT, LOGIN_ENDPOINT, VAULT_SUFFIX


class TemplateError(Exception):
    """A template ARM refuses: `InvalidTemplate` with this message."""


# -- parsing ----------------------------------------------------------------------------------
_TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>-?\d+)|(?P<name>[A-Za-z_][\w]*)"
                    r"|(?P<punct>[()\[\],.]))")


def _tokens(text: str) -> list[tuple[str, Any]]:
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m:
            raise TemplateError(f"The template language expression '{text}' is not valid: "
                                f"unexpected character at position {pos}.")
        pos = m.end()
        if m.group("str") is not None:
            out.append(("str", m.group("str")[1:-1].replace("''", "'")))
        elif m.group("num") is not None:
            out.append(("num", int(m.group("num"))))
        elif m.group("name") is not None:
            out.append(("name", m.group("name")))
        else:
            out.append(("punct", m.group("punct")))
    return out


@dataclass
class _Call:
    name: str
    args: list


@dataclass
class _Access:
    target: Any
    key: Any  # a node evaluating to a property name or index


@dataclass
class _Lit:
    value: Any


class _Parser:
    def __init__(self, text: str) -> None:
        self.text, self.toks, self.i = text, _tokens(text), 0

    def fail(self, what: str) -> TemplateError:
        return TemplateError(f"The template language expression '{self.text}' is not valid: "
                             f"{what}.")

    def peek(self) -> tuple[str, Any] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, kind: str, value: Any = None) -> Any:
        tok = self.peek()
        if tok is None or tok[0] != kind or (value is not None and tok[1] != value):
            raise self.fail(f"expected {value or kind}")
        self.i += 1
        return tok[1]

    def parse(self) -> Any:
        node = self.expr()
        if self.peek() is not None:
            raise self.fail("unexpected text after the expression")
        return node

    def expr(self) -> Any:
        tok = self.peek()
        if tok is None:
            raise self.fail("the expression is empty")
        if tok[0] in ("str", "num"):
            self.i += 1
            node: Any = _Lit(tok[1])
        elif tok[0] == "name":
            self.i += 1
            self.take("punct", "(")
            args = []
            if self.peek() != ("punct", ")"):
                args.append(self.expr())
                while self.peek() == ("punct", ","):
                    self.i += 1
                    args.append(self.expr())
            self.take("punct", ")")
            node = _Call(tok[1], args)
        else:
            raise self.fail(f"unexpected '{tok[1]}'")
        while self.peek() in (("punct", "."), ("punct", "[")):
            if self.take("punct") == ".":
                node = _Access(node, _Lit(self.take("name")))
            else:
                key = self.expr()
                self.take("punct", "]")
                node = _Access(node, key)
        return node


def is_expression(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("[") and value.endswith("]") \
        and not value.startswith("[[")


# -- values -----------------------------------------------------------------------------------
def _hash(*parts: str) -> bytes:
    return hashlib.sha256("-".join(parts).encode()).digest()


def unique_string(*parts: str) -> str:
    """13 characters of a-z and 2-7, deterministic per input ("ARM template functions - string")."""
    return base64.b32encode(_hash(*parts)[:8]).decode().lower()[:13]


def template_guid(*parts: str) -> str:
    """A name-based GUID of the arguments ("ARM template functions - string": guid)."""
    return str(uuid.UUID(bytes=_hash("guid", *parts)[:16], version=5))


def to_string(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "True" if value else "False"  # ARM prints booleans the .NET way
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    if value is None:
        return ""
    return str(value)


def _format(fmt: str, *args: Any) -> str:
    """.NET composite formatting, the part templates use: `{0}`, `{1:N2}`, `{{` and `}}`."""
    def one(m: re.Match) -> str:
        if m.group(0) in ("{{", "}}"):
            return m.group(0)[0]
        idx, spec = int(m.group(1)), m.group(2)
        if idx >= len(args):
            raise TemplateError(f"The format string '{fmt}' refers to argument {idx} but only "
                                f"{len(args)} were given.")
        value = args[idx]
        if spec and isinstance(value, (int, float)) and not isinstance(value, bool):
            if spec[0] in "Nn":
                return f"{value:,.{int(spec[1:] or 2)}f}"
            if spec[0] in "Dd":
                return str(int(value)).zfill(int(spec[1:] or 0))
            if spec[0] in "Xx":
                return format(int(value), "x" if spec[0] == "x" else "X").zfill(int(spec[1:] or 0))
        return to_string(value)
    return re.sub(r"\{\{|\}\}|\{(\d+)(?::([^}]*))?\}", one, fmt)


def _need(name: str, args: tuple, low: int, high: int | None = None) -> None:
    high = low if high is None else high
    if not low <= len(args) <= (high if high >= 0 else len(args)):
        want = f"{low}" if low == high else (f"at least {low}" if high < 0 else
                                              f"{low} to {high}")
        raise TemplateError(f"The template function '{name}' expects {want} argument(s) but "
                            f"received {len(args)}.")


def _concat(*args: Any) -> Any:
    if args and all(isinstance(a, list) for a in args):
        return [x for a in args for x in a]
    return "".join(to_string(a) for a in args)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise TemplateError(f"The value '{value}' cannot be converted to an integer.") from None


def _union(*args: Any) -> Any:
    if all(isinstance(a, dict) for a in args):
        out: dict = {}
        for a in args:
            out.update(a)
        return out
    out_list: list = []
    for a in args:
        for x in a:
            if x not in out_list:
                out_list.append(x)
    return out_list


def _contains(container: Any, item: Any) -> bool:
    if isinstance(container, str):
        return to_string(item).lower() in container.lower()
    if isinstance(container, dict):
        return any(k.lower() == str(item).lower() for k in container)
    return item in container


def _equals(a: Any, b: Any) -> bool:
    return a == b


# Pure functions: name (lower) -> (callable, min args, max args; -1 for any).
PURE: dict[str, tuple[Callable, int, int]] = {
    "concat": (_concat, 1, -1),
    "format": (lambda f, *a: _format(to_string(f), *a), 1, -1),
    "tolower": (lambda s: to_string(s).lower(), 1, 1),
    "toupper": (lambda s: to_string(s).upper(), 1, 1),
    "string": (to_string, 1, 1),
    "json": (lambda s: json.loads(to_string(s)), 1, 1),
    "int": (_int, 1, 1),
    "bool": (lambda v: v if isinstance(v, bool) else str(v).lower() == "true", 1, 1),
    "if": (None, 3, 3),  # evaluated lazily
    "equals": (_equals, 2, 2),
    "not": (lambda v: not v, 1, 1),
    "and": (lambda *a: all(a), 2, -1),
    "or": (lambda *a: any(a), 2, -1),
    "true": (lambda: True, 0, 0),
    "false": (lambda: False, 0, 0),
    "null": (lambda: None, 0, 0),
    "empty": (lambda v: v is None or len(v) == 0, 1, 1),
    "length": (lambda v: len(v), 1, 1),
    "add": (lambda a, b: _int(a) + _int(b), 2, 2),
    "sub": (lambda a, b: _int(a) - _int(b), 2, 2),
    "mul": (lambda a, b: _int(a) * _int(b), 2, 2),
    "div": (lambda a, b: int(_int(a) / _int(b)), 2, 2),
    "mod": (lambda a, b: _int(a) % _int(b), 2, 2),
    "less": (lambda a, b: a < b, 2, 2),
    "lessorequals": (lambda a, b: a <= b, 2, 2),
    "greater": (lambda a, b: a > b, 2, 2),
    "greaterorequals": (lambda a, b: a >= b, 2, 2),
    "min": (lambda *a: min(a[0] if len(a) == 1 else a), 1, -1),
    "max": (lambda *a: max(a[0] if len(a) == 1 else a), 1, -1),
    "contains": (_contains, 2, 2),
    "union": (_union, 1, -1),
    "createarray": (lambda *a: list(a), 0, -1),
    "array": (lambda v: v if isinstance(v, list) else [v], 1, 1),
    "createobject": (lambda *a: {a[i]: a[i + 1] for i in range(0, len(a) - 1, 2)}, 0, -1),
    "first": (lambda v: v[0] if len(v) else None, 1, 1),
    "last": (lambda v: v[-1] if len(v) else None, 1, 1),
    "split": (lambda s, d: to_string(s).split(d) if isinstance(d, str)
              else re.split("|".join(map(re.escape, d)), s), 2, 2),
    "join": (lambda a, d: d.join(to_string(x) for x in a), 2, 2),
    "replace": (lambda s, old, new: to_string(s).replace(old, new), 3, 3),
    "substring": (lambda s, start, n=None: s[start:] if n is None else s[start:start + n], 2, 3),
    "trim": (lambda s: to_string(s).strip(), 1, 1),
    "startswith": (lambda s, p: to_string(s).lower().startswith(to_string(p).lower()), 2, 2),
    "endswith": (lambda s, p: to_string(s).lower().endswith(to_string(p).lower()), 2, 2),
    "indexof": (lambda s, p: to_string(s).lower().find(to_string(p).lower()), 2, 2),
    "take": (lambda v, n: v[:max(0, _int(n))], 2, 2),
    "skip": (lambda v, n: v[max(0, _int(n)):], 2, 2),
    "range": (lambda start, n: list(range(_int(start), _int(start) + _int(n))), 2, 2),
    "coalesce": (lambda *a: next((x for x in a if x is not None), None), 1, -1),
    "base64": (lambda s: base64.b64encode(to_string(s).encode()).decode(), 1, 1),
    "base64tostring": (lambda s: base64.b64decode(s).decode(), 1, 1),
    "padleft": (lambda v, n, c=" ": to_string(v).rjust(_int(n), c), 2, 3),
    "uniquestring": (lambda *a: unique_string(*map(to_string, a)), 1, -1),
    "guid": (lambda *a: template_guid(*map(to_string, a)), 1, -1),
    "newguid": (lambda: str(uuid.uuid4()), 0, 0),
    "items": (lambda o: [{"key": k, "value": v} for k, v in o.items()], 1, 1),
}


@dataclass
class Scope:
    """What a template's functions see: its inputs and the deployment's place in Azure."""

    subscription_id: str
    tenant_id: str
    group: dict | None  # the resource group's ARM JSON, None at subscription scope
    deployment_name: str
    parameters: dict[str, Any] = field(default_factory=dict)
    variables: dict[str, Any] = field(default_factory=dict)
    raw_variables: dict[str, Any] = field(default_factory=dict)
    copy_index: dict[str, int] = field(default_factory=dict)  # loop name ("" = current) -> index
    # reference(id, apiVersion, full) -> the resource (full) or its properties
    reference: Callable[[str, str | None, bool], Any] | None = None
    resolving: set[str] = field(default_factory=set)


def _resource_id(scope: Scope, args: tuple) -> str:
    """`resourceId([subscriptionId], [resourceGroupName], type, name1, [name2], ...)`."""
    args = tuple(to_string(a) for a in args)
    type_at = next((i for i, a in enumerate(args) if "/" in a and "." in a.split("/")[0]), None)
    if type_at is None or type_at > 2:
        raise TemplateError(f"The template function 'resourceId' got no resource type among "
                            f"'{', '.join(args)}'.")
    before, rtype, names = args[:type_at], args[type_at], args[type_at + 1:]
    sub = scope.subscription_id
    group = (scope.group or {}).get("name")
    if len(before) == 2:
        sub, group = before
    elif len(before) == 1:
        group = before[0]
    ns, *types = rtype.split("/")
    if len(types) != len(names) or not names:
        raise TemplateError(f"Unable to evaluate template language function 'resourceId': the "
                            f"type '{rtype}' requires {len(types)} resource name argument(s).")
    if rtype.lower() == "microsoft.resources/resourcegroups":  # a group's own id
        return f"/subscriptions/{sub}/resourceGroups/{names[0]}"
    tail = "/".join(f"{t}/{n}" for t, n in zip(types, names, strict=True))
    prefix = f"/subscriptions/{sub}" + (f"/resourceGroups/{group}" if group else "")
    return f"{prefix}/providers/{ns}/{tail}"


def _subscription_resource_id(scope: Scope, args: tuple) -> str:
    args = tuple(to_string(a) for a in args)
    sub, rest = (args[0], args[1:]) if args and "/" not in args[0] else \
        (scope.subscription_id, args)
    ns, *types = rest[0].split("/")
    names = rest[1:]
    if len(types) != len(names):
        raise TemplateError(f"Unable to evaluate template language function "
                            f"'subscriptionResourceId': the type '{rest[0]}' requires "
                            f"{len(types)} resource name argument(s).")
    tail = "/".join(f"{t}/{n}" for t, n in zip(types, names, strict=True))
    return f"/subscriptions/{sub}/providers/{ns}/{tail}"


def _extension_resource_id(args: tuple) -> str:
    base, rtype, *names = (to_string(a) for a in args)
    ns, *types = rtype.split("/")
    tail = "/".join(f"{t}/{n}" for t, n in zip(types, names, strict=True))
    return f"{base}/providers/{ns}/{tail}"


class Evaluator:
    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    # -- public -----------------------------------------------------------------------------
    def value(self, value: Any) -> Any:
        """A template value with every expression in it evaluated (strings, objects, arrays)."""
        if isinstance(value, str):
            if is_expression(value):
                return self.expression(value[1:-1])
            if value.startswith("[["):
                return value[1:]
            return value
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if isinstance(value, dict):
            return {self.value(k) if is_expression(k) else k: self.value(v)
                    for k, v in value.items()}
        return value

    def expression(self, text: str) -> Any:
        return self.node(_Parser(text).parse(), text)

    # -- evaluation ----------------------------------------------------------------------------
    def node(self, node: Any, text: str) -> Any:
        if isinstance(node, _Lit):
            return node.value
        if isinstance(node, _Access):
            target = self.node(node.target, text)
            key = self.node(node.key, text)
            return self._access(target, key, text)
        return self.call(node, text)

    @staticmethod
    def _access(target: Any, key: Any, text: str) -> Any:
        if isinstance(target, dict):
            for k, v in target.items():
                if isinstance(key, str) and k.lower() == key.lower():
                    return v
            raise TemplateError(f"The template language expression '{text}' is not valid: the "
                                f"language expression property '{key}' doesn't exist, available "
                                f"properties are '{', '.join(target)}'.")
        if isinstance(target, list) and isinstance(key, int) and not isinstance(key, bool):
            if 0 <= key < len(target):
                return target[key]
            raise TemplateError(f"The template language expression '{text}' is not valid: the "
                                f"index {key} is out of range of an array of {len(target)}.")
        raise TemplateError(f"The template language expression '{text}' is not valid: cannot "
                            f"select '{key}' from a value of type '{type(target).__name__}'.")

    def call(self, node: _Call, text: str) -> Any:
        name = node.name.lower()
        if name == "if":
            _need("if", tuple(node.args), 3)
            cond = self.node(node.args[0], text)
            return self.node(node.args[1] if cond else node.args[2], text)
        args = tuple(self.node(a, text) for a in node.args)
        special = getattr(self, f"fn_{name}", None)
        if special is not None:
            return special(args)
        if name not in PURE:
            raise TemplateError(f"The template function '{node.name}' is not expected. The "
                                "local Azure does not know this template function.")
        fn, low, high = PURE[name]
        _need(node.name, args, low, high)
        try:
            return fn(*args)
        except TemplateError:
            raise
        except Exception as exc:  # wrong argument types: ARM answers InvalidTemplate
            raise TemplateError(f"Unable to evaluate template language function "
                                f"'{node.name}': {exc}.") from None

    # -- functions that read the deployment ----------------------------------------------------
    def fn_parameters(self, args: tuple) -> Any:
        _need("parameters", args, 1)
        for key, value in self.scope.parameters.items():
            if key.lower() == str(args[0]).lower():
                return copy.deepcopy(value)
        raise TemplateError(f"The template parameter '{args[0]}' is not found.")

    def fn_variables(self, args: tuple) -> Any:
        _need("variables", args, 1)
        want = str(args[0]).lower()
        for key, value in self.scope.variables.items():
            if key.lower() == want:
                return copy.deepcopy(value)
        for key, raw in self.scope.raw_variables.items():
            if key.lower() == want:
                if want in self.scope.resolving:
                    raise TemplateError(f"The template variable '{key}' refers to itself.")
                self.scope.resolving.add(want)
                try:
                    value = self.value(raw)
                finally:
                    self.scope.resolving.discard(want)
                self.scope.variables[key] = value
                return copy.deepcopy(value)
        raise TemplateError(f"The template variable '{args[0]}' is not found.")

    def fn_resourceid(self, args: tuple) -> str:
        return _resource_id(self.scope, args)

    def fn_subscriptionresourceid(self, args: tuple) -> str:
        return _subscription_resource_id(self.scope, args)

    def fn_extensionresourceid(self, args: tuple) -> str:
        _need("extensionResourceId", args, 3, -1)
        return _extension_resource_id(args)

    def fn_resourcegroup(self, args: tuple) -> dict:
        _need("resourceGroup", args, 0)
        if self.scope.group is None:
            raise TemplateError("The template function 'resourceGroup' is not expected at "
                                "subscription scope.")
        g = self.scope.group
        return {"id": g["id"], "name": g["name"], "type": g["type"], "location": g["location"],
                "tags": g.get("tags", {}), "properties": g.get("properties", {})}

    def fn_subscription(self, args: tuple) -> dict:
        _need("subscription", args, 0)
        sid = self.scope.subscription_id
        return {"id": f"/subscriptions/{sid}", "subscriptionId": sid,
                "tenantId": self.scope.tenant_id, "displayName": "Local Azure subscription"}

    def fn_tenant(self, args: tuple) -> dict:
        _need("tenant", args, 0)
        return {"tenantId": self.scope.tenant_id, "countryCode": "GB",
                "displayName": "Local Azure"}

    def fn_deployment(self, args: tuple) -> dict:
        _need("deployment", args, 0)
        return {"name": self.scope.deployment_name, "properties": {}}

    def fn_environment(self, args: tuple) -> dict:
        _need("environment", args, 0)
        return {"name": "AzureCloud", "resourceManager": f"{ARM_ENDPOINT}/",
                "authentication": {"loginEndpoint": f"{LOGIN_ENDPOINT}/",
                                   "audiences": [CLASSIC_MANAGEMENT, f"{ARM_ENDPOINT}/"]},
                "suffixes": {"keyvaultDns": VAULT_SUFFIX,
                             "storage": "core.windows.net"}}

    def fn_copyindex(self, args: tuple) -> int:
        _need("copyIndex", args, 0, 2)
        loop, offset = "", 0
        for a in args:
            if isinstance(a, int) and not isinstance(a, bool):
                offset = a
            else:
                loop = str(a).lower()
        if loop not in self.scope.copy_index:
            raise TemplateError("The template function 'copyIndex' is not expected at this "
                                "location. The function can only be used within a copy loop"
                                + (f" named '{loop}'." if loop else "."))
        return self.scope.copy_index[loop] + offset

    def fn_reference(self, args: tuple) -> Any:
        _need("reference", args, 1, 3)
        if self.scope.reference is None:
            raise TemplateError("The template function 'reference' is not expected at this "
                                "location.")
        target = to_string(args[0])
        api_version = to_string(args[1]) if len(args) > 1 else None
        full = len(args) > 2 and to_string(args[2]).lower() == "full"
        return self.scope.reference(target, api_version, full)

    def fn_list(self, args: tuple) -> Any:  # pragma: no cover - named for the error only
        raise TemplateError("The template function 'list' is not supported by the local Azure.")


# -- parameters -----------------------------------------------------------------------------
_TYPES = {"string": str, "securestring": str, "int": int, "bool": bool, "object": dict,
          "secureobject": dict, "array": list}


def resolve_parameters(template: dict, given: dict, scope: Scope) -> dict[str, Any]:
    """Template parameters from the deployment's `parameters` ({name: {"value": ...}}) and the
    defaults, checked against type and allowedValues ("Parameters in ARM templates")."""
    declared = template.get("parameters") or {}
    if not isinstance(declared, dict):
        raise TemplateError("The template 'parameters' section must be an object.")
    given_low = {k.lower(): (k, v) for k, v in (given or {}).items()}
    for key, (name, _) in given_low.items():
        if not any(d.lower() == key for d in declared):
            raise TemplateError(f"The following parameters were supplied, but do not correspond "
                                f"to any parameters defined in the template: '{name}'.")
    evaluator = Evaluator(scope)
    out: dict[str, Any] = {}
    for name, spec in declared.items():
        spec = spec or {}
        ptype = str(spec.get("type", "")).lower()
        if ptype not in _TYPES:
            raise TemplateError(f"The template parameter '{name}' has an invalid type "
                                f"'{spec.get('type')}'.")
        if name.lower() in given_low:
            entry = given_low[name.lower()][1]
            if not isinstance(entry, dict) or ("value" not in entry and "reference" not in entry):
                raise TemplateError(f"The value of deployment parameter '{name}' is null. "
                                    "Please specify the value or use the parameter reference.")
            if "reference" in entry:
                raise TemplateError(f"The deployment parameter '{name}' uses a Key Vault "
                                    "reference, which the local Azure does not resolve.")
            value = entry["value"]
        elif "defaultValue" in spec:
            scope.parameters = out
            value = evaluator.value(spec["defaultValue"])
        else:
            raise TemplateError(f"Deployment template validation failed: 'The value for the "
                                f"template parameter '{name}' is not provided. Please see "
                                "https://aka.ms/arm-create-parameter-file for usage details.'.")
        if ptype == "int" and isinstance(value, str) and value.lstrip("-").isdigit():
            value = int(value)
        if ptype == "bool" and isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        expected = _TYPES[ptype]
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise TemplateError(f"Deployment template validation failed: 'Template parameter "
                                f"JToken type is not valid. Expected '{spec.get('type')}'. "
                                f"Actual '{type(value).__name__}'.'.")
        allowed = spec.get("allowedValues")
        if allowed is not None and value not in allowed:
            shown = "******" if ptype.startswith("secure") else json.dumps(value)
            raise TemplateError(f"Deployment template validation failed: 'The provided value "
                                f"'{shown}' for the template parameter '{name}' is not valid. "
                                f"The parameter value is not part of the allowed value(s): "
                                f"'{','.join(map(to_string, allowed))}'.'.")
        for bound, check in (("minLength", lambda v, b: len(v) >= b),
                             ("maxLength", lambda v, b: len(v) <= b),
                             ("minValue", lambda v, b: v >= b), ("maxValue", lambda v, b: v <= b)):
            if bound in spec and not check(value, spec[bound]):
                raise TemplateError(f"Deployment template validation failed: 'The provided "
                                    f"value for the template parameter '{name}' is not valid. "
                                    f"It does not satisfy '{bound}' {spec[bound]}.'.")
        out[name] = value
    scope.parameters = out
    return out


def secure_names(template: dict) -> set[str]:
    return {n for n, s in (template.get("parameters") or {}).items()
            if str((s or {}).get("type", "")).lower().startswith("secure")}


def echoed_parameters(template: dict, values: dict[str, Any]) -> dict:
    """The parameters a deployment shows: `{name: {type, value}}`, secure ones without a value
    ("Parameters in ARM templates - secure parameters")."""
    declared = template.get("parameters") or {}
    out = {}
    for name, value in values.items():
        ptype = (declared.get(name) or {}).get("type", "String")
        ptype = ptype[0].upper() + ptype[1:]
        if ptype.lower() == "securestring":
            out[name] = {"type": "SecureString"}
        elif ptype.lower() == "secureobject":
            out[name] = {"type": "SecureObject"}
        else:
            out[name] = {"type": ptype, "value": value}
    return out


# -- JSONC --------------------------------------------------------------------------------------
_JSONC = re.compile(r'(?P<str>"(?:[^"\\]|\\.)*")|(?P<comment>//[^\n]*|/\*.*?\*/)'
                    r"|(?P<key>[A-Za-z_$][\w$]*)(?=\s*:)|(?P<trail>,)(?=\s*[}\]])|(?P<other>.)",
                    re.S)


def loads_jsonc(data: bytes | str) -> Any:
    """JSON with comments, unquoted keys and trailing commas, which ARM's deployment endpoints
    accept ("ARM template best practices - comments"; the Azure CLI sends the template this way to
    keep its whitespace)."""
    text = data.decode("utf-8-sig") if isinstance(data, bytes) else data
    try:
        return json.loads(text)
    except ValueError:
        pass
    out = []
    for m in _JSONC.finditer(text):
        if m.group("comment") is not None or m.group("trail") is not None:
            out.append(" ")
        elif m.group("key") is not None:
            out.append(json.dumps(m.group("key")))
        else:
            out.append(m.group(0))
    return json.loads("".join(out))
