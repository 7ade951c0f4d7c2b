"""Read-only discovery of one lab's control plane: group, vault, VM and its network, identity,
role assignments and access policies. Every call is a GET; discover mode never writes.

Reads are plain ARM GETs (`ArmReader`): the JSON as ARM returned it, no SDK models."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from ..spec import LabSpec
from .clients import SubscriptionClients

MISSING = object()
MAX_PAGES = 50  # of a list; a lab's group lists in one

# api-versions of the GETs: stable ones every ARM region (and the local Azure) serves.
RESOURCES_API = "2021-04-01"
KEYVAULT_API = "2023-07-01"
COMPUTE_API = "2024-07-01"
NETWORK_API = "2023-09-01"
AUTHORIZATION_API = "2022-04-01"


class ReadFailed(Exception):
    """A read that could not decide (not a 404): the message says why."""


def _failure(status: int, body: Any) -> ReadFailed:
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    if status == 403:
        return ReadFailed(f"the grader may not read this ({code or 403}); give it Reader on "
                          "the lab's subscription or group")
    return ReadFailed(f"Azure answered {status} {code or ''}".strip())


def _read(fn: Callable[[], Any]) -> Any:
    """Run one read: its value, None when ARM says 404, ReadFailed when it could not decide."""
    from azure.core.exceptions import AzureError

    try:
        return fn()
    except ReadFailed:
        raise
    except AzureError as exc:  # not reached, reset, timed out, retries spent
        raise ReadFailed(f"Azure could not be reached ({type(exc).__name__})") from None


def _get(clients: SubscriptionClients, path: str, api_version: str) -> dict | None:
    status, body = clients.arm.get(path, api_version)
    if status == 404:
        return None
    if status != 200 or not isinstance(body, dict):
        raise _failure(status, body)
    return body


def _list(clients: SubscriptionClients, path: str, api_version: str) -> list | None:
    """Every page of a list; None when ARM says 404 (the group is not there)."""
    status, body = clients.arm.get(path, api_version)
    items: list = []
    for _ in range(MAX_PAGES):
        if status == 404:
            return None
        if status != 200 or not isinstance(body, dict):
            raise _failure(status, body)
        items += body.get("value") or []
        if not body.get("nextLink"):
            return items
        status, body = clients.arm.get(body["nextLink"])
    return items


def _parse_id(resource_id: str) -> dict[str, str]:
    parts = resource_id.strip("/").split("/")
    out = {}
    for i in range(0, len(parts) - 1, 2):
        out[parts[i].lower()] = parts[i + 1]
    return out


def _resource_path(ref: str) -> str:
    """The ARM path of a resource id a resource refers to (ids are paths already)."""
    return "/" + ref.strip("/")


class _Done:
    """A finished future, for running reads inline when no executor is given."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        try:
            self._value, self._exc = fn(), None
        except BaseException as exc:  # noqa: BLE001 - re-raised by result()
            self._value, self._exc = None, exc

    def result(self) -> Any:
        if self._exc is not None:
            raise self._exc
        return self._value


class Discovery:
    """Collects `control` (name -> ARM JSON) and `errors` (name -> why it could not be read).

    Reads that do not depend on each other go out together (on `executor`, when given): the
    group, its resources, the vault, the VM and the role assignments at once (the group's id,
    and so the vault's name, guessed from the group's name and checked against the group), then
    the VM's NIC, then its public IP, virtual network and NSG at once, then the subnet's NSG if
    it is another one. Three or four round trips instead of nine, and still nine reads.
    """

    def __init__(self, clients: SubscriptionClients, group: str, spec: LabSpec,
                 executor: Executor | None = None) -> None:
        self.c = clients
        self.group = group
        self.spec = spec
        self.executor = executor
        self.control: dict[str, Any] = {}
        self.errors: dict[str, str] = {}

    def _start(self, fn: Callable[[], Any]):
        """Start one read: a future of its value (None on 404) or of ReadFailed."""
        if self.executor is None:
            return _Done(lambda: _read(fn))
        return self.executor.submit(_read, fn)

    def _take(self, name: str, future) -> Any:
        """Record a started read under `name`; MISSING when it could not be read."""
        try:
            value = future.result()
        except ReadFailed as exc:
            self.errors[name] = str(exc)
            return MISSING
        self.control[name] = value
        return value

    def run(self) -> None:
        c, g = self.c, self.group
        base = f"/subscriptions/{c.subscription_id}/resourceGroups/{g}"
        guessed_vault = self.spec.vault_name(base)
        group_f = self._start(lambda: _get(c, base, RESOURCES_API))
        resources_f = self._start(lambda: _list(c, f"{base}/resources", RESOURCES_API))
        vault_f = self._start(lambda: self._vault(base, guessed_vault))
        vm_f = self._start(lambda: _get(
            c, f"{base}/providers/Microsoft.Compute/virtualMachines/{self.spec.vm_name}",
            COMPUTE_API))
        assignments_f = self._start(lambda: self._assignments(base))
        group = self._take("group", group_f)
        if not group or group is MISSING:
            return  # the other reads are of a group that is not there (or not readable)
        self._take("resources", resources_f)
        vault_name = self.spec.vault_name(group["id"])
        self.control["vault_name"] = vault_name
        if vault_name != guessed_vault:  # the group's id is not spelled as its name was given
            vault_f = self._start(lambda: self._vault(base, vault_name))
        self._take("vault", vault_f)
        self._take("vm", vm_f)
        self._network()
        self._take("role_assignments", assignments_f)

    def _vault(self, base: str, name: str) -> dict | None:
        return _get(self.c, f"{base}/providers/Microsoft.KeyVault/vaults/{name}", KEYVAULT_API)

    def _assignments(self, scope: str) -> list | None:
        """Assignments at, above and below the group (ARM's list for a scope)."""
        found = _list(self.c, f"{scope}/providers/Microsoft.Authorization/roleAssignments",
                      AUTHORIZATION_API)
        return [] if found is None else found

    def _network(self) -> None:
        vm = self.control.get("vm")
        if not vm:
            return
        nics = (vm.get("properties", {}).get("networkProfile", {}) or {}).get(
            "networkInterfaces", []) or []
        if not nics:
            return
        c = self.c
        nic = self._take("nic", self._start(lambda: _get(
            c, _resource_path(nics[0]["id"]), NETWORK_API)))
        if not nic or nic is MISSING:
            return
        configs = nic.get("properties", {}).get("ipConfigurations", []) or []
        config = (configs[0].get("properties", {}) if configs else {}) or {}
        pip_f = vnet_f = None
        pip_ref = (config.get("publicIPAddress") or {}).get("id")
        if pip_ref:
            pip_f = self._start(lambda: _get(c, _resource_path(pip_ref), NETWORK_API))
        subnet_ref = (config.get("subnet") or {}).get("id")
        if subnet_ref:
            vnet = _parse_id(subnet_ref)
            vnet_path = (f"/subscriptions/{vnet['subscriptions']}/resourceGroups/"
                         f"{vnet['resourcegroups']}/providers/Microsoft.Network/virtualNetworks/"
                         f"{vnet['virtualnetworks']}")
            vnet_f = self._start(lambda: _get(c, vnet_path, NETWORK_API))
            self.control["subnet_id"] = subnet_ref
        nsg_fs: dict[str, Any] = {}
        self._start_nsg(nsg_fs, (nic.get("properties", {}).get("networkSecurityGroup")
                                 or {}).get("id"))
        if pip_f is not None:
            self._take("public_ip", pip_f)
        if vnet_f is not None:
            self._take("vnet", vnet_f)
        vnet = self.control.get("vnet")
        if vnet and subnet_ref:
            for subnet in vnet.get("properties", {}).get("subnets", []) or []:
                if subnet.get("id", "").lower() == subnet_ref.lower():
                    self._start_nsg(nsg_fs, (subnet.get("properties", {}).get(
                        "networkSecurityGroup") or {}).get("id"))
        nsgs = []
        for future in nsg_fs.values():
            nsg = self._take("nsg", future)
            if nsg and nsg is not MISSING:
                nsgs.append(nsg)
        self.control["nsgs"] = nsgs
        self.control.pop("nsg", None)

    def _start_nsg(self, started: dict[str, Any], ref: str | None) -> None:
        """Read an NSG once, however many places refer to it."""
        if not ref or ref.lower() in started:
            return
        started[ref.lower()] = self._start(lambda: _get(self.c, _resource_path(ref), NETWORK_API))
