"""The Instance Metadata Service (“Azure Instance Metadata Service for virtual machines”, “How to use managed identities for Azure resources on an Azure VM to acquire an access token”): instance metadata and managed-identity tokens.

One plain-HTTP app serves every VM. Requests arrive through a VM's own egress proxy, which stamps
them with that VM's key (`network.VM_KEY_HEADER`); the key says which VM is asking, so a VM sees
only its own metadata and identities. The VM's ARM JSON is read on every request.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import uuid
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import faults
from ..entra.tokens import KNOWN_RESOURCES, Token, TokenIssuer
from ..responses import set_caller
from ..state import Cloud
from ..wire.network import VM_KEY_HEADER
from . import attested, topology

# Documented versions (“Azure Instance Metadata Service for virtual machines”) plus the newer ones real IMDS reports; the 2021-08-01 and
# 2021-11-15 entries follow the doc's field table (UNCONFIRMED as separate releases).
API_VERSIONS = (
    "2017-03-01", "2017-04-02", "2017-08-01", "2017-10-01", "2017-12-01", "2018-02-01",
    "2018-04-02", "2018-10-01", "2019-02-01", "2019-03-11", "2019-04-30", "2019-06-01",
    "2019-06-04", "2019-08-01", "2019-08-15", "2019-11-01", "2020-06-01", "2020-07-15",
    "2020-09-01", "2020-10-01", "2020-12-01", "2021-01-01", "2021-02-01", "2021-03-01",
    "2021-05-01", "2021-08-01", "2021-10-01", "2021-11-01", "2021-11-15", "2021-12-13",
    "2023-07-01", "2024-03-15", "2024-07-17", "2025-04-07",
)
NEWEST_VERSIONS = ["2025-04-07", "2024-07-17", "2024-03-15"]
IDENTITY_MIN_VERSION = "2018-02-01"
TOKEN_LIFETIME = 86399
TOKEN_REUSE_MARGIN = 600  # a cached token is handed out again while it has this much life left
SERVER = "IMDS/150.870.65.1015"

# The api-version that introduced each field (“Azure Instance Metadata Service for virtual machines”); a request for an older version
# does not see it. Fields not listed exist in every version.
SINCE = {
    "compute.azEnvironment": "2018-10-01",
    "compute.additionalCapabilities": "2021-11-01",
    "compute.customData": "2019-02-01",
    "compute.evictionPolicy": "2020-12-01",
    "compute.extendedLocation": "2021-03-01",
    "compute.host": "2021-11-15",
    "compute.hostGroup": "2021-11-15",
    "compute.isHostCompatibilityLayerVm": "2020-06-01",
    "compute.licenseType": "2020-09-01",
    "compute.location": "2017-04-02",
    "compute.name": "2017-04-02",
    "compute.offer": "2017-04-02",
    "compute.osProfile": "2020-07-15",
    "compute.osProfile.disablePasswordAuthentication": "2020-10-01",
    "compute.osType": "2017-04-02",
    "compute.placementGroupId": "2017-08-01",
    "compute.plan": "2018-04-02",
    "compute.platformFaultDomain": "2017-04-02",
    "compute.platformSubFaultDomain": "2021-10-01",
    "compute.platformUpdateDomain": "2017-04-02",
    "compute.priority": "2020-12-01",
    "compute.provider": "2018-10-01",
    "compute.publicKeys": "2018-04-02",
    "compute.publisher": "2017-04-02",
    "compute.resourceGroupName": "2017-08-01",
    "compute.resourceId": "2019-03-11",
    "compute.securityProfile": "2020-06-01",
    "compute.securityProfile.encryptionAtHost": "2021-11-01",
    "compute.securityProfile.securityType": "2021-12-13",
    "compute.sku": "2017-04-02",
    "compute.storageProfile": "2019-06-01",
    "compute.storageProfile.imageReference.communityGalleryImageId": "2023-07-01",
    "compute.storageProfile.imageReference.exactVersion": "2023-07-01",
    "compute.storageProfile.imageReference.sharedGalleryImageId": "2023-07-01",
    "compute.storageProfile.resourceDisk": "2021-02-01",
    "compute.subscriptionId": "2017-08-01",
    "compute.tags": "2017-08-01",
    "compute.tagsList": "2019-06-04",
    "compute.userData": "2021-01-01",
    "compute.version": "2017-04-02",
    "compute.virtualMachineScaleSet": "2021-03-01",
    "compute.vmId": "2017-04-02",
    "compute.vmScaleSetName": "2017-12-01",
    "compute.vmSize": "2017-04-02",
    "compute.zone": "2017-12-01",
}

# -- error bodies (“Azure Instance Metadata Service for virtual machines” for instance endpoints, “How to use managed identities for Azure resources on an Azure VM to acquire an access token” for identity endpoints) ---
METADATA_HEADER_INSTANCE = {"error": "Bad request. Required metadata header not specified"}
METADATA_HEADER_IDENTITY = {"error": "invalid_request",
                            "error_description": "Required metadata header not specified"}
BAD_API_VERSION = {
    "error": "Bad request. api-version is invalid or was not specified in the request. "
             "For more information refer to aka.ms/azureimds",
    "newest-versions": NEWEST_VERSIONS,
}
IDENTITY_NOT_FOUND = {"error": "invalid_request", "error_description": "Identity not found"}
MULTIPLE_IDENTITIES = {
    "error": "invalid_request",
    "error_description": "Multiple user assigned identities exist, please specify the clientId / "
                         "resourceId of the identity in the token request",
}
# UNCONFIRMED bodies: no public capture shows them; these follow the documented shapes.
FORWARDED = {"error": "Bad request. Requests with an X-Forwarded-For header are not allowed"}
LEAF_NEEDS_TEXT = {"error": "Bad request. Leaf nodes require format=text"}
BAD_FORMAT = {"error": "Bad request. Query parameter format is invalid"}
REPEATED_PARAM = {"error": "Bad request. Query parameters must not be repeated"}
NOT_FOUND = {"error": "Not found"}
METHOD_NOT_ALLOWED = {"error": "Method not allowed"}
NO_RESOURCE = {"error": "invalid_request",
               "error_description": "Required audience parameter not specified"}
TOO_MANY_SELECTORS = {"error": "invalid_request",
                      "error_description": "Only one of client_id, object_id or msi_res_id may "
                                           "be specified"}
NOT_FROM_A_VM = {"error": "forbidden",
                 "error_description": "IMDS answers only requests made from inside a VM"}

ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def _json(body: Any, status: int = 200) -> Response:
    data = json.dumps(body, separators=(",", ":")).encode()
    return Response(data, status_code=status, media_type="application/json; charset=utf-8",
                    headers={"Server": SERVER})


def _text(body: str, status: int = 200) -> Response:
    return Response(body.encode(), status_code=status, media_type="text/plain; charset=utf-8",
                    headers={"Server": SERVER})


def _s(value: Any) -> str:
    """IMDS prints every primitive as a string; absent values are ""."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# -- the instance document ---------------------------------------------------------------------


def _resource_group(resource_id: str) -> str:
    parts = resource_id.split("/")
    for i, part in enumerate(parts[:-1]):
        if part.lower() == "resourcegroups":
            return parts[i + 1]
    return ""


def _subscription(resource_id: str) -> str:
    parts = resource_id.split("/")
    return parts[2] if len(parts) > 2 and parts[1].lower() == "subscriptions" else ""


def _storage_profile(vm: dict) -> dict:
    sp = topology.props(vm).get("storageProfile") or {}
    image = sp.get("imageReference") or {}
    disk = sp.get("osDisk") or {}
    managed = disk.get("managedDisk") or {}
    return {
        "dataDisks": [_data_disk(d) for d in sp.get("dataDisks") or []],
        "imageReference": {
            "communityGalleryImageId": _s(image.get("communityGalleryImageId")),
            "exactVersion": _s(image.get("exactVersion")),
            "id": _s(image.get("id")),
            "offer": _s(image.get("offer")),
            "publisher": _s(image.get("publisher")),
            "sharedGalleryImageId": _s(image.get("sharedGalleryImageId")),
            "sku": _s(image.get("sku")),
            "version": _s(image.get("version")),
        },
        "osDisk": {
            "caching": _s(disk.get("caching")),
            "createOption": _s(disk.get("createOption")),
            "diffDiskSettings": {"option": _s((disk.get("diffDiskSettings") or {}).get("option"))},
            "diskSizeGB": _s(disk.get("diskSizeGB")),
            "encryptionSettings": {"enabled": _s(bool((disk.get("encryptionSettings") or {})
                                                      .get("enabled", False)))},
            "image": {"uri": _s((disk.get("image") or {}).get("uri"))},
            "managedDisk": {"id": _s(managed.get("id")),
                            "storageAccountType": _s(managed.get("storageAccountType"))},
            "name": _s(disk.get("name")),
            "osType": _s(disk.get("osType") or "Linux"),
            "vhd": {"uri": _s((disk.get("vhd") or {}).get("uri"))},
            "writeAcceleratorEnabled": _s(bool(disk.get("writeAcceleratorEnabled", False))),
        },
        "resourceDisk": {"size": "0"},  # sizes without a temp disk (today's v5 default)
    }


def _data_disk(disk: dict) -> dict:
    managed = disk.get("managedDisk") or {}
    return {
        "bytesPerSecondThrottle": "", "caching": _s(disk.get("caching")),
        "createOption": _s(disk.get("createOption")), "diskCapacityBytes": "",
        "diskSizeGB": _s(disk.get("diskSizeGB")), "image": {"uri": ""},
        "isSharedDisk": "false", "isUltraDisk": "false", "lun": _s(disk.get("lun")),
        "managedDisk": {"id": _s(managed.get("id")),
                        "storageAccountType": _s(managed.get("storageAccountType"))},
        "name": _s(disk.get("name")), "opsPerSecondThrottle": "", "vhd": {"uri": ""},
        "writeAcceleratorEnabled": _s(bool(disk.get("writeAcceleratorEnabled", False))),
    }


def _compute(vm: dict) -> dict:
    p = topology.props(vm)
    image = (p.get("storageProfile") or {}).get("imageReference") or {}
    os_profile = p.get("osProfile") or {}
    linux = os_profile.get("linuxConfiguration") or {}
    security = p.get("securityProfile") or {}
    uefi = security.get("uefiSettings") or {}
    plan = vm.get("plan") or {}
    tags = vm.get("tags") or {}
    rid = vm["id"]
    return {
        "additionalCapabilities": {"hibernationEnabled": _s(bool(
            (p.get("additionalCapabilities") or {}).get("hibernationEnabled", False)))},
        "azEnvironment": "AzurePublicCloud",
        "customData": "",
        "evictionPolicy": _s(p.get("evictionPolicy")),
        "extendedLocation": {"type": _s((vm.get("extendedLocation") or {}).get("type")),
                             "name": _s((vm.get("extendedLocation") or {}).get("name"))},
        "host": {"id": ""},
        "hostGroup": {"id": ""},
        "isHostCompatibilityLayerVm": "false",
        "licenseType": _s(p.get("licenseType")),
        "location": _s(vm.get("location")),
        "name": _s(vm.get("name")),
        "offer": _s(image.get("offer")),
        "osProfile": {
            "adminUsername": _s(os_profile.get("adminUsername")),
            "computerName": _s(os_profile.get("computerName") or vm.get("name")),
            "disablePasswordAuthentication": _s(bool(
                linux.get("disablePasswordAuthentication", False))),
        },
        "osType": _s(((p.get("storageProfile") or {}).get("osDisk") or {}).get("osType")
                     or "Linux"),
        "placementGroupId": "",
        "plan": {"name": _s(plan.get("name")), "product": _s(plan.get("product")),
                 "publisher": _s(plan.get("publisher"))},
        "platformFaultDomain": "0",
        "platformSubFaultDomain": "",
        "platformUpdateDomain": "0",
        "priority": _s(p.get("priority") or "Regular"),
        "provider": "Microsoft.Compute",
        "publicKeys": [{"keyData": _s(k.get("keyData")), "path": _s(k.get("path"))}
                       for k in (linux.get("ssh") or {}).get("publicKeys") or []],
        "publisher": _s(image.get("publisher")),
        "resourceGroupName": _resource_group(rid),
        "resourceId": rid,
        "securityProfile": {
            "encryptionAtHost": _s(bool(security.get("encryptionAtHost", False))),
            "secureBootEnabled": _s(bool(uefi.get("secureBootEnabled", False))),
            "securityType": _s(security.get("securityType")),
            "virtualTpmEnabled": _s(bool(uefi.get("vTpmEnabled", False))),
        },
        "sku": _s(image.get("sku")),
        "storageProfile": _storage_profile(vm),
        "subscriptionId": _subscription(rid),
        # Sorted pairs, as in every documented sample (ordering UNCONFIRMED, “Azure Instance Metadata Service for virtual machines”).
        "tags": ";".join(f"{k}:{_s(v)}" for k, v in sorted(tags.items())),
        "tagsList": [{"name": k, "value": _s(v)} for k, v in sorted(tags.items())],
        "userData": _s(p.get("userData")),
        "version": _s(image.get("exactVersion") or image.get("version")),
        "virtualMachineScaleSet": {"id": ""},
        "vmId": _s(p.get("vmId")),
        "vmScaleSetName": "",
        "vmSize": _s((p.get("hardwareProfile") or {}).get("vmSize")),
        "zone": _s((vm.get("zones") or [""])[0]),
    }


def _mac(nic: dict) -> str:
    """Upper-case hex without separators; a stable made-up one when ARM has none yet."""
    mac = str(topology.props(nic).get("macAddress") or "")
    mac = "".join(c for c in mac if c.isalnum()).upper()
    if len(mac) == 12:
        return mac
    return "000D3A" + hashlib.sha256(nic.get("id", "").lower().encode()).hexdigest()[:6].upper()


def _network(cloud: Cloud, vm: dict) -> dict:
    interfaces = []
    for nic in topology.nics(cloud, vm):
        addresses, subnets = [], []
        for cfg in topology.ip_configurations(nic):
            pip = topology.public_ip(cloud, cfg)
            # Only a Basic-SKU public IP shows here; Standard gives "" (“Azure Instance Metadata Service for virtual machines”).
            basic = str(((pip or {}).get("sku") or {}).get("name", "Basic")).lower() == "basic"
            addresses.append({
                "privateIpAddress": _s(cfg.get("privateIPAddress")),
                "publicIpAddress": _s(topology.props(pip).get("ipAddress")) if basic else "",
            })
            sub = topology.subnet(cloud, (cfg.get("subnet") or {}).get("id"))
            prefix = topology.props(sub).get("addressPrefix") or (sub or {}).get("addressPrefix")
            if prefix:
                address, _, bits = str(prefix).partition("/")
                entry = {"address": address, "prefix": bits or "32"}
                if entry not in subnets:
                    subnets.append(entry)
        interfaces.append({"ipv4": {"ipAddress": addresses, "subnet": subnets},
                           "ipv6": {"ipAddress": []}, "macAddress": _mac(nic)})
    return {"interface": interfaces}


def _prune(node: Any, version: str, path: str) -> Any:
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        child = f"{path}.{key}" if path else key
        if SINCE.get(child, "") > version:
            continue
        out[key] = _prune(value, version, child)
    return out


def instance_document(cloud: Cloud, vm: dict, api_version: str) -> dict:
    """`/metadata/instance` for this VM as that api-version shows it."""
    doc = faults.imds_document(cloud.knobs, {"compute": _compute(vm),
                                             "network": _network(cloud, vm)})
    return _prune(doc, api_version, "")


def _walk(doc: Any, parts: list[str]) -> Any:
    """Route filtering: keys are case-sensitive, array elements are addressed by index."""
    node = doc
    for part in parts:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise KeyError(part)
    return node


def _as_text(node: Any) -> str:
    """format=text: a leaf's bare value; for an object or array, its child names or indexes one a
    line (the layout for non-leaves is UNCONFIRMED, “Azure Instance Metadata Service for virtual machines”)."""
    if isinstance(node, dict):
        return "\n".join(node)
    if isinstance(node, list):
        return "\n".join(str(i) for i in range(len(node)))
    return _s(node)


# -- the app -----------------------------------------------------------------------------------


class Imds:
    """IMDS for every VM; `resolve_vm(key)` maps a proxy-stamped key to the VM's ARM key."""

    def __init__(self, cloud: Cloud, tokens: TokenIssuer,
                 resolve_vm: Callable[[str], str | None],
                 signer: attested.AttestationSigner | None = None) -> None:
        self.cloud = cloud
        self.tokens = tokens
        self.resolve_vm = resolve_vm
        self.signer = signer  # signs attested documents (None: the endpoint is not offered)
        self._cache: dict[tuple[str, str, str], Token] = {}

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self.dispatch, methods=ALL_METHODS)])

    def _vm(self, request: Request) -> dict | None:
        key = request.headers.get(VM_KEY_HEADER)
        vm_key = self.resolve_vm(key) if key else None
        if vm_key is None:
            return None
        with self.cloud.lock:
            return self.cloud.resources.get(vm_key)

    async def dispatch(self, request: Request) -> Response:
        path = "/" + request.path_params["path"].strip("/")
        vm = self._vm(request)
        if vm is None:
            return _json(NOT_FROM_A_VM, 403)
        if path == "/metadata/versions":
            return self._checked(request, identity=False, versioned=False) or _json(
                {"apiVersions": list(API_VERSIONS)})
        if path == "/metadata/instance" or path.startswith("/metadata/instance/"):
            return self._checked(request, identity=False) or self._instance(request, vm, path)
        if path == "/metadata/identity/oauth2/token":
            return (self._checked(request, identity=True)
                    or self._token(request, vm))
        if path == "/metadata/identity/info":
            return (self._checked(request, identity=True)
                    or _json({"tenantId": self.cloud.tenant_id}))
        if path == "/metadata/attested/document" and self.signer is not None:
            return self._checked(request, identity=False) or self._attested(request, vm)
        if path.startswith("/metadata/identity"):
            return _json({"error": "not_found", "error_description": "Not found"}, 404)
        return _json(NOT_FOUND, 404)

    def _checked(self, request: Request, *, identity: bool,
                 versioned: bool = True) -> Response | None:
        """The checks every endpoint makes, in order; None when the request may proceed."""
        if request.method != "GET":
            return _json(METHOD_NOT_ALLOWED if not identity else
                         {"error": "method_not_allowed", "error_description": "Method not allowed"},
                         405)
        if "x-forwarded-for" in request.headers:
            return _json(FORWARDED if not identity else
                         {"error": "bad_request", "error_description": FORWARDED["error"]}, 400)
        if request.headers.get("metadata") != "true":
            return _json(METADATA_HEADER_IDENTITY if identity else METADATA_HEADER_INSTANCE, 400)
        names = [k for k, _ in request.query_params.multi_items()]
        if len(names) != len(set(names)):
            return _json(REPEATED_PARAM if not identity else
                         {"error": "invalid_request", "error_description": REPEATED_PARAM["error"]},
                         400)
        if versioned:
            version = request.query_params.get("api-version", "")
            if version not in API_VERSIONS or (identity and version < IDENTITY_MIN_VERSION):
                return _json(BAD_API_VERSION, 400)
        return None

    def _instance(self, request: Request, vm: dict, path: str) -> Response:
        fmt = request.query_params.get("format", "json")
        if fmt not in ("json", "text"):
            return _json(BAD_FORMAT, 400)
        doc = instance_document(self.cloud, vm, request.query_params["api-version"])
        parts = [p for p in path[len("/metadata/instance"):].split("/") if p]
        if faults.imds_hides(self.cloud.knobs, parts):  # the imds-no-tags-path quirk
            return _json(NOT_FOUND, 404)
        try:
            node = _walk(doc, parts)
        except KeyError:
            return _json(NOT_FOUND, 404)
        if fmt == "text":
            return _text(_as_text(node))
        if not isinstance(node, (dict, list)):
            return _json(LEAF_NEEDS_TEXT, 400)
        return _json(node)

    def _attested(self, request: Request, vm: dict) -> Response:
        version = request.query_params["api-version"]
        if version < attested.ATTESTED_MIN_VERSION:
            return _json(BAD_API_VERSION, 400)
        nonce = request.query_params.get("nonce")
        if nonce is not None and not attested.NONCE.match(nonce):
            return _json(attested.BAD_NONCE, 400)
        content = attested.document(_compute(vm), nonce=nonce, now=self.cloud.now(),
                                    api_version=version)
        return _json(attested.answer(self.signer, content))

    # -- tokens --------------------------------------------------------------------------------
    def _select(self, vm: dict, params) -> topology.ManagedIdentity | dict:
        """The identity a token request names, or the error body to answer with."""
        system = topology.system_identity(self.cloud, vm)
        users = topology.user_identities(self.cloud, vm)
        given = {k: params[k] for k in ("client_id", "object_id", "msi_res_id", "mi_res_id")
                 if params.get(k)}
        if len(given) > 1:
            return TOO_MANY_SELECTORS
        if not given:
            if system is not None:
                return system
            if len(users) == 1:  # the only identity is the default (UNCONFIRMED)
                return users[0]
            return MULTIPLE_IDENTITIES if users else IDENTITY_NOT_FOUND
        (kind, value), = given.items()
        value = value.lower()
        candidates = ([system] if system else []) + users
        for mi in candidates:
            if kind == "client_id" and mi.client_id.lower() == value:
                return mi
            if kind == "object_id" and mi.principal_id.lower() == value:
                return mi
            if kind in ("msi_res_id", "mi_res_id") and mi.user_assigned \
                    and mi.resource_id.rstrip("/").lower() == value.rstrip("/"):
                return mi
        return IDENTITY_NOT_FOUND

    def _token(self, request: Request, vm: dict) -> Response:
        params = request.query_params
        resource = params.get("resource")
        if not resource:
            return _json(NO_RESOURCE, 400)
        chosen = self._select(vm, params)
        if isinstance(chosen, dict):
            return _json(chosen, 400)
        if resource not in KNOWN_RESOURCES and self.cloud.resource_application(resource) is None:
            return _json(self._invalid_resource(resource), 400)
        token = self._token_for(chosen, vm, resource, bypass=params.get("bypass_cache") == "true")
        set_caller(request, chosen.principal_id)
        now = int(self.cloud.now())
        remaining = str(max(token.expires_on - now, 0))
        body = {
            "access_token": token.value,
            "client_id": chosen.client_id,
            "expires_in": remaining,
            "expires_on": str(token.expires_on),
            "ext_expires_in": remaining,
            "not_before": str(token.claims["nbf"]),
            "resource": resource,
            "token_type": "Bearer",
        }
        for echoed in ("object_id", "msi_res_id"):
            if params.get(echoed):
                body[echoed] = params[echoed]
        return _json(body)

    def _token_for(self, mi: topology.ManagedIdentity, vm: dict, resource: str, *,
                   bypass: bool) -> Token:
        """IMDS hands back its cached token per (identity, resource), so expires_in counts down."""
        aud = faults.token_audience(self.cloud.knobs, resource)  # a quirk may change it
        key = (mi.principal_id.lower(), resource, aud)
        cached = self._cache.get(key)
        if cached and not bypass and cached.expires_on - self.cloud.now() > TOKEN_REUSE_MARGIN:
            return cached
        extra = {"xms_mirid": topology.mirid(mi.resource_id)}
        if mi.user_assigned:
            extra["xms_az_rid"] = topology.mirid(vm["id"])  # absent for system-assigned (“Microsoft identity platform access token claims reference”)
        token = self.tokens.issue(aud=aud, oid=mi.principal_id, appid=mi.client_id,
                                  appidacr="2", lifetime=TOKEN_LIFETIME, extra=extra)
        self._cache[key] = token
        return token

    def _invalid_resource(self, resource: str) -> dict:
        now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
        return {
            "error": "invalid_resource",
            "error_description": (
                f"AADSTS500011: The resource principal named {resource} was not found in the "
                f"tenant named {self.cloud.tenant_id}. This can happen if the application has "
                "not been installed by the administrator of the tenant or consented to by any "
                "user in the tenant. You might have sent your authentication request to the "
                f"wrong tenant.\r\nTrace ID: {uuid.uuid4()}\r\nCorrelation ID: {uuid.uuid4()}"
                f"\r\nTimestamp: {now}"),
        }
