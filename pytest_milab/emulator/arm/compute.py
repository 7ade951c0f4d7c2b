"""Microsoft.Compute virtual machines and disks, and Microsoft.ManagedIdentity identities.

A VM's system-assigned identity is a service principal of kind ManagedIdentity whose object id
is `identity.principalId` (“Virtual Machines - Get (Compute REST API)”); user-assigned identities are resources with their own
service principal. Power state lives in `cloud.vm_power`; lifecycle changes emit `vm.changed`
and `vm.deleted` so the live VMs can follow.
"""

from __future__ import annotations

import copy
import re
import secrets

from starlette.responses import Response

from ..responses import iso, json_response
from ..state import arm_key, new_guid
from .kinds import (
    ArmError,
    Ctx,
    Registry,
    Tracked,
    invalid_reference,
)
from .network import NICS

NS = "Microsoft.Compute"
VM_TYPE = f"{NS}/virtualMachines"
DISK_TYPE = f"{NS}/disks"
NIC_TYPE = "Microsoft.Network/networkInterfaces"
UAI_TYPE = "Microsoft.ManagedIdentity/userAssignedIdentities"
# Properties the platform computes, or never returns (userData only with $expand=userData).
VM_COMPUTED = {"vmId", "provisioningState", "instanceView", "timeCreated", "userData"}
POWER_AFTER = {"start": "running", "powerOff": "stopped", "deallocate": "deallocated",
               "restart": "running"}


def invalid_parameter(message: str) -> ArmError:
    return ArmError(400, "InvalidParameter", message)


def disk_tier(sku: str) -> str:
    s = sku.lower()
    if s.startswith("premiumv2"):
        return "PremiumV2"
    if s.startswith("premium"):
        return "Premium"
    if s.startswith("ultra"):
        return "Ultra"
    return "Standard"


# -- managed identities ---------------------------------------------------------------------------
def _identity_kinds(text: object) -> set[str]:
    parts = {p.strip().lower() for p in str(text or "None").split(",") if p.strip()}
    if parts - {"systemassigned", "userassigned", "none"} or ("none" in parts and len(parts) > 1):
        raise invalid_parameter(f"The value '{text}' of parameter 'identity.type' is invalid.")
    return parts - {"none"}


def _user_identities(ctx: Ctx, wanted: dict) -> dict[str, dict]:
    out = {}
    for uid in wanted:
        res = ctx.cloud.resources.get(arm_key(uid))
        if res is None or res["type"].lower() != UAI_TYPE.lower():
            # Code as ARM reports identity failures; the wording is UNCONFIRMED.
            raise ArmError(400, "FailedIdentityOperation",
                           f"Identity operation for resource '{ctx.resource_id()}' failed with "
                           f"error 'Resource '{uid}' was not found.'.")
        out[uid] = {"principalId": res["properties"]["principalId"],
                    "clientId": res["properties"]["clientId"]}
    return out


def resolve_identity(ctx: Ctx, wanted: dict | None, current: dict | None, resource_id: str,
                     display_name: str) -> dict | None:
    """The identity block to store; creates or deletes the system identity's principal.

    A body without `identity` leaves the identity as it is (PUT and PATCH alike).
    """
    if wanted is None:
        return current
    kinds = _identity_kinds(wanted.get("type"))
    users = {}
    if "userassigned" in kinds:
        if not wanted.get("userAssignedIdentities"):
            raise invalid_parameter("The identity type 'UserAssigned' needs at least one entry "
                                    "in 'userAssignedIdentities'.")
        users = _user_identities(ctx, wanted["userAssignedIdentities"])
    principal = (current or {}).get("principalId")
    out: dict = {}
    if "systemassigned" in kinds:
        if principal is None:
            sp = ctx.cloud.add_service_principal(new_guid(), display_name, kind="ManagedIdentity",
                                                 mi_resource_id=resource_id)
            principal = sp.object_id
        out.update(principalId=principal, tenantId=ctx.cloud.tenant_id)
    elif principal is not None:
        ctx.cloud.service_principals.pop(principal, None)
    if not kinds:
        return None
    names = [n for k, n in (("systemassigned", "SystemAssigned"), ("userassigned", "UserAssigned"))
             if k in kinds]
    out = {"type": ", ".join(names), **out}
    if users:
        out["userAssignedIdentities"] = users
    return out


class UserAssignedIdentities(Tracked):
    ns, types = "Microsoft.ManagedIdentity", ("userAssignedIdentities",)

    def build(self, ctx: Ctx, body: dict, existing: dict | None) -> dict:
        out = self.base(ctx, body, existing)
        old = (existing or {}).get("properties")
        if old is None:
            sp = ctx.cloud.add_service_principal(new_guid(), out["name"], kind="ManagedIdentity",
                                                 mi_resource_id=out["id"])
            old = {"tenantId": ctx.cloud.tenant_id, "principalId": sp.object_id,
                   "clientId": sp.app_id}
        props = {k: old[k] for k in ("tenantId", "principalId", "clientId")}
        if ctx.api_version >= "2024-11-30":  # isolationScope arrived with that version
            given = (body.get("properties") or {}).get("isolationScope")
            props["isolationScope"] = given or old.get("isolationScope") or "None"
        out["properties"] = props
        return out

    def on_delete(self, ctx: Ctx, res: dict) -> None:
        ctx.cloud.service_principals.pop(res["properties"]["principalId"], None)


# -- disks ----------------------------------------------------------------------------------------
class Disks(Tracked):
    ns, types = NS, ("disks",)
    long_running = True

    def build(self, ctx: Ctx, body: dict, existing: dict | None) -> dict:
        out = self.base(ctx, body, existing)
        props = body.get("properties") or {}
        old = (existing or {}).get("properties", {})
        sku = (body.get("sku") or {}).get("name") or "Standard_LRS"
        out["sku"] = {"name": sku, "tier": disk_tier(sku)}
        creation = props.get("creationData") or old.get("creationData")
        if not creation:
            raise invalid_parameter("Required parameter 'creationData' is missing (null).")
        size = props.get("diskSizeGB") or old.get("diskSizeGB")
        if not size:
            raise invalid_parameter("Required parameter 'diskSizeGB' is missing (null).")
        if existing and existing.get("managedBy"):
            out["managedBy"] = existing["managedBy"]
        out["properties"] = {
            **{k: copy.deepcopy(v) for k, v in props.items()
               if k not in ("provisioningState", "diskState", "uniqueId", "timeCreated")},
            "creationData": creation, "diskSizeGB": size, "diskSizeBytes": int(size) * 1024 ** 3,
            "encryption": {"type": "EncryptionAtRestWithPlatformKey"},
            "networkAccessPolicy": "AllowAll", "publicNetworkAccess": "Enabled",
            "timeCreated": old.get("timeCreated") or iso(ctx.cloud.now()),
            "provisioningState": "Succeeded",
            "diskState": old.get("diskState") or "Unattached",
            "uniqueId": old.get("uniqueId") or new_guid(),
        }
        return out

    def check_delete(self, ctx: Ctx, res: dict) -> None:
        if res.get("managedBy"):
            raise ArmError(409, "OperationNotAllowed",
                           f"Disk {res['name']} is attached to VM {res['managedBy']}.")


DISKS = Disks()


# -- virtual machines (“Virtual Machines - Get (Compute REST API)”) -------------------------------
def _exact_version(image: dict) -> str:
    version = str(image.get("version") or "latest")
    if version.lower() != "latest":
        return version
    m = re.search(r"(\d+)[_.](\d+)", str(image.get("sku", "")))
    return f"{m.group(1)}.{m.group(2)}.202604010" if m else "1.0.202604010"


def _default_storage_type(vm_size: str) -> str:
    """Premium SSD when the size supports it (an `s` after the family digits), as Azure picks."""
    return "Premium_LRS" if re.match(r"^Standard_[A-Za-z]+\d+[a-z]*s", vm_size) else "Standard_LRS"


def _os_profile(given: dict | None, old: dict | None, name: str) -> dict | None:
    """Fixed once created; never keeps `adminPassword` or `customData` (Azure does not return them)."""
    if old is not None:
        return old
    if not given:
        return None
    profile = {k: copy.deepcopy(v) for k, v in given.items()
               if k not in ("adminPassword", "customData")}
    profile.setdefault("computerName", name)
    if "windowsConfiguration" not in profile:
        linux = profile.setdefault("linuxConfiguration", {})
        linux.setdefault("disablePasswordAuthentication", not given.get("adminPassword"))
        linux.setdefault("provisionVMAgent", True)
        linux.setdefault("patchSettings", {"patchMode": "ImageDefault",
                                           "assessmentMode": "ImageDefault"})
    profile.setdefault("secrets", [])
    profile.setdefault("allowExtensionOperations", True)
    profile.setdefault("requireGuestProvisionSignal", True)
    return profile


def instance_view(ctx: Ctx, vm: dict) -> dict:
    state = ctx.cloud.vm_power.get(arm_key(vm["id"]), "running")
    props = vm["properties"]
    created = props.get("timeCreated")
    ok = {"code": "ProvisioningState/succeeded", "level": "Info",
          "displayStatus": "Provisioning succeeded", "time": created}
    view: dict = {}
    if state == "running":
        image = props.get("storageProfile", {}).get("imageReference", {})
        m = re.search(r"(\d+)[_.](\d+)", str(image.get("sku", "")))
        view.update(
            computerName=(props.get("osProfile") or {}).get("computerName", vm["name"]),
            osName="ubuntu" if "ubuntu" in str(image.get("offer", "")).lower() else "linux",
            osVersion=f"{m.group(1)}.{m.group(2)}" if m else "",
            vmAgent={"vmAgentVersion": "2.13.1.1", "extensionHandlers": [], "statuses": [{
                "code": "ProvisioningState/succeeded", "level": "Info", "displayStatus": "Ready",
                "message": "Guest Agent is running", "time": iso(ctx.cloud.now())}]})
    view["disks"] = [{"name": props["storageProfile"]["osDisk"]["name"], "statuses": [ok]}]
    view["hyperVGeneration"] = "V2"
    view["statuses"] = [ok, {"code": f"PowerState/{state}", "level": "Info",
                             "displayStatus": f"VM {state}"}]
    return view


class VirtualMachines(Tracked):
    ns, types = NS, ("virtualMachines",)
    long_running = True
    actions = ("start", "powerOff", "deallocate", "restart")
    views = ("instanceView",)

    def build(self, ctx: Ctx, body: dict, existing: dict | None) -> dict:
        out = self.base(ctx, body, existing)
        props = body.get("properties") or {}
        old = (existing or {}).get("properties", {})
        hardware = copy.deepcopy(props.get("hardwareProfile") or old.get("hardwareProfile")
                                 or {"vmSize": "Standard_D2s_v5"})
        storage = self._storage(ctx, out, props.get("storageProfile") or {},
                                old.get("storageProfile"), hardware.get("vmSize", ""))
        os_profile = _os_profile(props.get("osProfile"), old.get("osProfile"), out["name"])
        if os_profile is None and storage["osDisk"]["createOption"] == "FromImage":
            raise invalid_parameter("Required parameter 'osProfile' is missing (null).")
        if os_profile is not None and not os_profile.get("adminUsername"):
            raise invalid_parameter("Required parameter 'adminUsername' is missing (null).")
        network = self._network(ctx, props.get("networkProfile"), old.get("networkProfile"),
                                out["id"])
        new_props = {k: copy.deepcopy(v) for k, v in props.items() if k not in VM_COMPUTED}
        new_props.update(vmId=old.get("vmId") or new_guid(), hardwareProfile=hardware,
                         storageProfile=storage, networkProfile=network,
                         provisioningState="Succeeded",
                         timeCreated=old.get("timeCreated") or iso(ctx.cloud.now()))
        if os_profile is None:
            new_props.pop("osProfile", None)
        else:
            new_props["osProfile"] = os_profile
        # Last: it may create a service principal, so nothing may fail after it.
        identity = resolve_identity(ctx, body.get("identity"), (existing or {}).get("identity"),
                                    out["id"], out["name"])
        if identity:
            out["identity"] = identity
        out["properties"] = new_props
        return out

    def _storage(self, ctx: Ctx, vm: dict, given: dict, old: dict | None, size: str) -> dict:
        if old is not None:  # the OS disk and image are fixed; data disks may change
            out = copy.deepcopy(old)
            if "dataDisks" in given:
                out["dataDisks"] = copy.deepcopy(given["dataDisks"])
            return out
        image = copy.deepcopy(given.get("imageReference") or {})
        disk_in = given.get("osDisk") or {}
        managed = disk_in.get("managedDisk") or {}
        if str(disk_in.get("createOption", "FromImage")).lower() == "attach":
            disk = ctx.cloud.resources.get(arm_key(managed.get("id", "")))
            if disk is None or disk["type"] != DISK_TYPE:
                raise invalid_reference(ctx, managed.get("id", ""))
            if disk.get("managedBy"):
                raise ArmError(409, "OperationNotAllowed",
                               f"Disk {disk['name']} is attached to VM {disk['managedBy']}.")
            create, name, disk_id = "Attach", disk["name"], disk["id"]
            kind, gb = disk["sku"]["name"], disk["properties"]["diskSizeGB"]
            os_type = disk_in.get("osType") or disk["properties"].get("osType") or "Linux"
        else:
            if not image:
                raise invalid_parameter("Required parameter 'imageReference' is missing (null).")
            if image.get("publisher"):
                image["exactVersion"] = _exact_version(image)
            create = "FromImage"
            name = disk_in.get("name") or f"{vm['name']}_OsDisk_1_{secrets.token_hex(16)}"
            # Azure spells the group in upper case in the disk ids it makes (“Resources - List By Resource Group”).
            disk_id = (f"/subscriptions/{ctx.sub}/resourceGroups/{(ctx.rg or '').upper()}"
                       f"/providers/{DISK_TYPE}/{name}")
            if arm_key(disk_id) in ctx.cloud.resources:
                raise ArmError(409, "ConflictingUserInput",
                               f"Disk {name} already exists in resource group "
                               f"{(ctx.rg or '').upper()}. Only CreateOption.Attach is supported.")
            kind = managed.get("storageAccountType") or _default_storage_type(size)
            windows = "windows" in str(image.get("publisher", "")).lower()
            gb = disk_in.get("diskSizeGB") or (127 if windows else 30)
            os_type = disk_in.get("osType") or ("Windows" if windows else "Linux")
        os_disk = {"osType": os_type, "name": name, "createOption": create,
                   "caching": disk_in.get("caching") or "ReadWrite",
                   "managedDisk": {"storageAccountType": kind, "id": disk_id},
                   "deleteOption": disk_in.get("deleteOption") or "Detach", "diskSizeGB": gb}
        out = {"osDisk": os_disk, "dataDisks": copy.deepcopy(given.get("dataDisks") or []),
               "diskControllerType": "SCSI"}
        return {"imageReference": image, **out} if image else out

    def _network(self, ctx: Ctx, given: dict | None, old: dict | None, vm_id: str) -> dict:
        if given is None:
            if old is None:
                raise invalid_parameter("Required parameter 'networkProfile' is missing (null).")
            return old
        nics = given.get("networkInterfaces") or []
        if not nics:
            raise invalid_parameter("Virtual machine must have at least one network interface.")
        out = []
        for entry in nics:
            nic_id = entry.get("id") if isinstance(entry, dict) else None
            nic = ctx.cloud.resources.get(arm_key(nic_id or ""))
            if nic is None or nic["type"] != NIC_TYPE:
                raise invalid_reference(ctx, str(nic_id))
            holder = nic["properties"].get("virtualMachine", {}).get("id")
            if holder and arm_key(holder) != arm_key(vm_id):
                raise ArmError(400, "NicInUse", f"Network Interface {nic_id} is used by existing "
                               f"resource {holder}.")
            item: dict = {"id": nic_id}
            if entry.get("properties"):
                item["properties"] = copy.deepcopy(entry["properties"])
            out.append(item)
        return {"networkInterfaces": out}

    # -- side effects ---------------------------------------------------------------------------
    def after_put(self, ctx: Ctx, res: dict, existing: dict | None) -> None:
        if existing is None:
            self._attach_os_disk(ctx, res)
            ctx.cloud.vm_power[arm_key(res["id"])] = "running"
        self._sync_nics(ctx, res, existing)
        ctx.emit("vm.changed", res)

    def _attach_os_disk(self, ctx: Ctx, vm: dict) -> None:
        storage = vm["properties"]["storageProfile"]
        os_disk = storage["osDisk"]
        key = arm_key(os_disk["managedDisk"]["id"])
        disk = ctx.cloud.resources.get(key)
        if disk is None:
            image = storage.get("imageReference", {})
            loc, sub = vm["location"], ctx.sub
            image_id = (f"/Subscriptions/{sub}/Providers/Microsoft.Compute/Locations/{loc}/"
                        f"Publishers/{image.get('publisher')}/ArtifactTypes/VMImage/Offers/"
                        f"{image.get('offer')}/Skus/{image.get('sku')}/Versions/"
                        f"{image.get('exactVersion')}")
            kind, gb = os_disk["managedDisk"]["storageAccountType"], os_disk["diskSizeGB"]
            disk = {
                "id": os_disk["managedDisk"]["id"], "name": os_disk["name"], "type": DISK_TYPE,
                "location": loc, "sku": {"name": kind, "tier": disk_tier(kind)},
                "properties": {
                    "osType": os_disk["osType"],
                    "hyperVGeneration": "V2" if "gen2" in str(image.get("sku", "")).lower()
                    else "V1",
                    "creationData": {"createOption": "FromImage",
                                     "imageReference": {"id": image_id}},
                    "diskSizeGB": gb, "diskSizeBytes": gb * 1024 ** 3,
                    "encryption": {"type": "EncryptionAtRestWithPlatformKey"},
                    "networkAccessPolicy": "AllowAll", "publicNetworkAccess": "Enabled",
                    "timeCreated": iso(ctx.cloud.now()), "provisioningState": "Succeeded",
                    "uniqueId": new_guid()},
            }
            if vm.get("zones"):
                disk["zones"] = vm["zones"]
            ctx.cloud.resources[key] = disk
        disk["managedBy"] = vm["id"]
        disk["properties"]["diskState"] = "Attached"

    def _sync_nics(self, ctx: Ctx, vm: dict, old_vm: dict | None) -> None:
        """Keep each NIC's `virtualMachine` back-reference in step with the VM."""
        def nic_keys(v: dict | None) -> list[str]:
            return [arm_key(n["id"]) for n in
                    ((v or {}).get("properties", {}).get("networkProfile", {})
                     .get("networkInterfaces", []))]
        now = nic_keys(vm)
        for key in set(nic_keys(old_vm)) - set(now):
            nic = ctx.cloud.resources.get(key)
            if nic is not None:
                nic["properties"].pop("virtualMachine", None)
                nic["properties"].pop("primary", None)
        for index, key in enumerate(now):
            nic = ctx.cloud.resources[key]
            entry = vm["properties"]["networkProfile"]["networkInterfaces"][index]
            nic["properties"]["virtualMachine"] = {"id": vm["id"]}
            nic["properties"]["primary"] = bool(
                entry.get("properties", {}).get("primary", index == 0))

    def on_delete(self, ctx: Ctx, res: dict) -> None:
        ctx.cloud.vm_power.pop(arm_key(res["id"]), None)
        principal = res.get("identity", {}).get("principalId")
        if principal:
            ctx.cloud.service_principals.pop(principal, None)
        os_disk = res["properties"]["storageProfile"]["osDisk"]
        disk = ctx.cloud.resources.get(arm_key(os_disk["managedDisk"]["id"]))
        if disk is not None:
            disk.pop("managedBy", None)
            disk["properties"]["diskState"] = "Unattached"
            if os_disk.get("deleteOption") == "Delete":
                DISKS.remove(ctx, disk)
        for entry in res["properties"]["networkProfile"]["networkInterfaces"]:
            nic = ctx.cloud.resources.get(arm_key(entry["id"]))
            if nic is None:
                continue
            nic["properties"].pop("virtualMachine", None)
            nic["properties"].pop("primary", None)
            if entry.get("properties", {}).get("deleteOption") == "Delete":
                NICS.remove(ctx, nic)
        ctx.emit("vm.deleted", res)

    # -- views and actions ------------------------------------------------------------------------
    def present(self, ctx: Ctx, res: dict) -> dict:
        if "instanceview" in (ctx.q("$expand") or "").lower():
            return {**res, "properties": {**res["properties"],
                                          "instanceView": instance_view(ctx, res)}}
        return res

    def view(self, ctx: Ctx, verb: str) -> Response:
        return json_response(instance_view(ctx, self.require(ctx)))

    def action(self, ctx: Ctx, verb: str) -> Response:
        """Power changes finish at once: 200 with no body makes SDK pollers stop immediately."""
        with ctx.cloud.lock:
            vm = self.require(ctx)
            key = arm_key(vm["id"])
            if verb == "restart" and ctx.cloud.vm_power.get(key) == "deallocated":
                raise ArmError(409, "OperationNotAllowed",
                               f"Operation 'restart' is not allowed on VM '{vm['name']}' since "
                               "the VM is deallocated or marked to be deallocated.")
            ctx.cloud.vm_power[key] = POWER_AFTER[verb]
            ctx.emit("vm.changed", vm)
        return Response(b"", 200)


KINDS = (DISKS, VirtualMachines(), UserAssignedIdentities())


def register(registry: Registry) -> None:
    """Add this provider's resource types to an ARM's registry (arm.PROVIDERS lists the order)."""
    for kind in KINDS:
        registry.add(kind)
