"""Read-only discovery of one lab's control plane: group, vault, VM and its network, identity,
role assignments and access policies. Every call is a GET; discover mode never writes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..spec import LabSpec
from .clients import SubscriptionClients, to_json

MISSING = object()


class ReadFailed(Exception):
    """A read that could not decide (not a 404): the message says why."""


def _read(fn: Callable[[], Any]) -> Any:
    """Run one SDK read: a value, None when Azure says 404, ReadFailed otherwise."""
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError, ServiceRequestError

    try:
        return fn()
    except ResourceNotFoundError:
        return None
    except HttpResponseError as exc:
        if exc.status_code == 404:
            return None
        code = getattr(exc.error, "code", None) if exc.error else None
        if exc.status_code == 403:
            raise ReadFailed(f"the grader may not read this ({code or 403}); give it Reader on "
                             "the lab's subscription or group") from None
        raise ReadFailed(f"Azure answered {exc.status_code} {code or ''}".strip()) from None
    except ServiceRequestError as exc:
        raise ReadFailed(f"Azure could not be reached ({type(exc).__name__})") from None


def _parse_id(resource_id: str) -> dict[str, str]:
    parts = resource_id.strip("/").split("/")
    out = {}
    for i in range(0, len(parts) - 1, 2):
        out[parts[i].lower()] = parts[i + 1]
    return out


class Discovery:
    """Collects `control` (name -> ARM JSON) and `errors` (name -> why it could not be read)."""

    def __init__(self, clients: SubscriptionClients, group: str, spec: LabSpec) -> None:
        self.c = clients
        self.group = group
        self.spec = spec
        self.control: dict[str, Any] = {}
        self.errors: dict[str, str] = {}

    def _get(self, name: str, fn: Callable[[], Any]) -> Any:
        try:
            value = _read(fn)
        except ReadFailed as exc:
            self.errors[name] = str(exc)
            return MISSING
        self.control[name] = value
        return value

    def run(self) -> None:
        c, g = self.c, self.group
        group = self._get("group", lambda: to_json(c.resource.resource_groups.get(g)))
        if not group or group is MISSING:
            return
        self._get("resources", lambda: [to_json(r) for r in
                                        c.resource.resources.list_by_resource_group(g)])
        vault_name = self.spec.vault_name(group["id"])
        self.control["vault_name"] = vault_name
        self._get("vault", lambda: to_json(c.keyvault.vaults.get(g, vault_name)))
        self._get("vm", lambda: to_json(c.compute.virtual_machines.get(g, self.spec.vm_name)))
        self._network()
        self._get("role_assignments", lambda: [
            to_json(ra) for ra in c.authorization.role_assignments.list_for_scope(group["id"])])

    def _network(self) -> None:
        vm = self.control.get("vm")
        if not vm:
            return
        nics = (vm.get("properties", {}).get("networkProfile", {}) or {}).get(
            "networkInterfaces", []) or []
        if not nics:
            return
        nic_id = _parse_id(nics[0]["id"])
        nic = self._get("nic", lambda: to_json(self.c.network.network_interfaces.get(
            nic_id["resourcegroups"], nic_id["networkinterfaces"])))
        if not nic or nic is MISSING:
            return
        configs = nic.get("properties", {}).get("ipConfigurations", []) or []
        config = (configs[0].get("properties", {}) if configs else {}) or {}
        pip_ref = (config.get("publicIPAddress") or {}).get("id")
        if pip_ref:
            pid = _parse_id(pip_ref)
            self._get("public_ip", lambda: to_json(self.c.network.public_ip_addresses.get(
                pid["resourcegroups"], pid["publicipaddresses"])))
        subnet_ref = (config.get("subnet") or {}).get("id")
        if subnet_ref:
            sid = _parse_id(subnet_ref)
            self._get("vnet", lambda: to_json(self.c.network.virtual_networks.get(
                sid["resourcegroups"], sid["virtualnetworks"])))
            self.control["subnet_id"] = subnet_ref
        nsg_refs = [(nic.get("properties", {}).get("networkSecurityGroup") or {}).get("id")]
        vnet = self.control.get("vnet")
        if vnet and subnet_ref:
            for subnet in vnet.get("properties", {}).get("subnets", []) or []:
                if subnet.get("id", "").lower() == subnet_ref.lower():
                    nsg_refs.append((subnet.get("properties", {}).get("networkSecurityGroup")
                                     or {}).get("id"))
        nsgs = []
        for ref in filter(None, nsg_refs):
            nid = _parse_id(ref)
            nsg = self._get("nsg", lambda nid=nid: to_json(
                self.c.network.network_security_groups.get(
                    nid["resourcegroups"], nid["networksecuritygroups"])))
            if nsg and nsg is not MISSING:
                nsgs.append(nsg)
        self.control["nsgs"] = nsgs
        self.control.pop("nsg", None)
