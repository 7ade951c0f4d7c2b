"""The Marketplace VM image catalog and managed images (Microsoft.Compute).

Location-scoped publishers, offers, SKUs and versions as "Virtual Machine Images - List
Publishers / List Offers / List Skus / List / Get" (Azure REST API reference, Compute) describe
them: the lists answer a bare JSON array of `{location, name, id}`; versions honour `$expand`,
`$orderby` (`name asc|desc`) and `$top`, and a version's GET has its properties (Hyper-V
generation, architecture, OS disk image, features). The catalog holds the images labs use:
Canonical Ubuntu 22.04 and 24.04 LTS and Debian 12. `Microsoft.Compute/images/{name}` (managed
images) is a resource type like any other: a name that does not exist is 404 ResourceNotFound,
which is what the Azure CLI needs to say "Invalid image" for a retired alias such as UbuntuLTS.
"""

from __future__ import annotations

import re

from starlette.responses import Response

from ..responses import json_response
from .kinds import ArmError, Ctx, Kind, Registry, Tracked
from .versions import normalize_location

NS = "Microsoft.Compute"
_LOC_TYPES = ("locations", "publishers", "artifacttypes", "offers", "skus", "versions")
_TL = {"name": "SecurityType", "value": "TrustedLaunchSupported"}
_TL_CVM = {"name": "SecurityType", "value": "TrustedLaunchAndConfidentialVmSupported"}


def _features(gen2: bool, arm: bool) -> list[dict]:
    out = [{"name": "IsAcceleratedNetworkSupported", "value": "True"},
           {"name": "DiskControllerTypes", "value": "SCSI, NVMe" if gen2 else "SCSI"},
           {"name": "IsHibernateSupported", "value": "True"}]
    if gen2 and not arm:
        out.insert(0, _TL_CVM)
    return out


# publisher -> offer -> sku -> (hyperVGeneration, architecture, versions oldest first)
CATALOG: dict[str, dict[str, dict[str, tuple[str, str, tuple[str, ...]]]]] = {
    "Canonical": {
        "0001-com-ubuntu-server-jammy": {
            "22_04-lts": ("V1", "x64", ("22.04.202509250", "22.04.202601130", "22.04.202604010")),
            "22_04-lts-gen2": ("V2", "x64",
                               ("22.04.202509250", "22.04.202601130", "22.04.202604010")),
            "22_04-lts-arm64": ("V2", "Arm64", ("22.04.202601130", "22.04.202604010")),
        },
        "ubuntu-24_04-lts": {
            "server": ("V2", "x64", ("24.04.202509260", "24.04.202601140", "24.04.202604010")),
            "server-gen1": ("V1", "x64", ("24.04.202601140", "24.04.202604010")),
            "server-arm64": ("V2", "Arm64", ("24.04.202601140", "24.04.202604010")),
            "minimal": ("V2", "x64", ("24.04.202601140", "24.04.202604010")),
        },
    },
    "Debian": {
        "debian-12": {
            "12": ("V1", "x64", ("0.20250908.2230", "0.20260112.2354", "0.20260401.2400")),
            "12-gen2": ("V2", "x64", ("0.20250908.2230", "0.20260112.2354", "0.20260401.2400")),
            "12-arm64": ("V2", "Arm64", ("0.20260112.2354", "0.20260401.2400")),
        },
    },
}


def latest_version(publisher: str, offer: str, sku: str) -> str | None:
    """The newest catalog version of an image, or None when the catalog does not have it."""
    entry = _find(publisher, offer, sku)
    return entry[1][2][-1] if entry else None


def _find(publisher: str, offer: str, sku: str) -> tuple[tuple[str, str, str],
                                                         tuple[str, str, tuple[str, ...]]] | None:
    for pub, offers in CATALOG.items():
        if pub.lower() != publisher.lower():
            continue
        for off, skus in offers.items():
            if off.lower() != offer.lower():
                continue
            for s, entry in skus.items():
                if s.lower() == sku.lower():
                    return (pub, off, s), entry
    return None


def _version_key(name: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"[.]", name))


class _CatalogLevel(Kind):
    """One level of the catalog; answers bare JSON arrays as the Compute RP does."""

    ns = NS
    depth = 1  # how many of the location-scoped type segments this level has

    def _loc(self, ctx: Ctx) -> str:
        return normalize_location(ctx.names[0])

    def _prefix(self, ctx: Ctx) -> str:
        names = list(ctx.names) + [""] * 6
        parts = [f"/Subscriptions/{ctx.sub}/Providers/Microsoft.Compute/Locations/{names[0]}"]
        labels = ("Publishers", "ArtifactTypes", "Offers", "Skus", "Versions")
        values = (names[1], "VMImage", names[3], names[4], names[5])
        for label, value in list(zip(labels, values, strict=True))[:self.depth - 1]:
            parts.append(f"/{label}/{value}")
        return "".join(parts) + "/" + labels[self.depth - 1]

    def children(self, ctx: Ctx) -> list[str]:
        raise NotImplementedError

    def _not_found(self, ctx: Ctx, what: str) -> ArmError:
        # Compute's wording for a missing artifact ("Virtual Machine Images - Get" errors).
        return ArmError(404, "NotFound", f"Artifact: {what} was not found.")

    def list(self, ctx: Ctx) -> Response:
        loc = self._loc(ctx)
        names = self.children(ctx)
        items = [{"location": loc, "name": n, "id": f"{self._prefix(ctx)}/{n}"} for n in names]
        return json_response(items)


class Publishers(_CatalogLevel):
    types, depth = ("locations", "publishers"), 1

    def children(self, ctx: Ctx) -> list[str]:
        return sorted(CATALOG)


class ArtifactTypes(_CatalogLevel):
    types, depth = ("locations", "publishers", "artifacttypes"), 2

    def children(self, ctx: Ctx) -> list[str]:
        return ["VMImage"] if any(p.lower() == ctx.names[1].lower() for p in CATALOG) else []


def _offers(publisher: str) -> dict:
    return next((o for p, o in CATALOG.items() if p.lower() == publisher.lower()), {})


def _skus(publisher: str, offer: str) -> dict:
    return next((s for o, s in _offers(publisher).items() if o.lower() == offer.lower()), {})


def _check_vmimage(ctx: Ctx) -> None:
    if ctx.names[2].lower() != "vmimage":
        raise ArmError(400, "InvalidParameter", f"The value '{ctx.names[2]}' of parameter "
                       "'artifactType' is invalid.")


class Offers(_CatalogLevel):
    types, depth = ("locations", "publishers", "artifacttypes", "offers"), 3

    def children(self, ctx: Ctx) -> list[str]:
        _check_vmimage(ctx)
        return sorted(_offers(ctx.names[1]))


class Skus(_CatalogLevel):
    types, depth = ("locations", "publishers", "artifacttypes", "offers", "skus"), 4

    def children(self, ctx: Ctx) -> list[str]:
        _check_vmimage(ctx)
        skus = _skus(ctx.names[1], ctx.names[3])
        if not skus:
            raise self._not_found(ctx, f"VMImage Publisher: {ctx.names[1]}, Offer: "
                                  f"{ctx.names[3]}")
        return sorted(skus)


class Versions(_CatalogLevel):
    types, depth = _LOC_TYPES, 5

    def _entry(self, ctx: Ctx):
        _check_vmimage(ctx)
        found = _find(ctx.names[1], ctx.names[3], ctx.names[4])
        if found is None:
            raise self._not_found(ctx, f"VMImage Publisher: {ctx.names[1]}, Offer: "
                                  f"{ctx.names[3]}, Sku: {ctx.names[4]}")
        return found

    def _properties(self, found, version: str) -> dict:
        (_pub, _off, _sku), (gen, arch, _versions) = found
        return {
            "hyperVGeneration": gen, "architecture": arch, "replicaType": "Unmanaged",
            "disallowed": {"vmDiskType": "Unmanaged"},
            "automaticOSUpgradeProperties": {"automaticOSUpgradeSupported": False},
            "imageDeprecationStatus": {"imageState": "Active"},
            "features": _features(gen == "V2", arch == "Arm64"),
            "osDiskImage": {"operatingSystem": "Linux", "sizeInBytes": 32213303808,
                            "sizeInGb": 31},
            "dataDiskImages": [],
        }

    def list(self, ctx: Ctx) -> Response:
        found = self._entry(ctx)
        versions = list(found[1][2])
        order = (ctx.q("$orderby") or "name asc").strip().lower()
        if not re.fullmatch(r"name(\s+(asc|desc))?", order):
            raise ArmError(400, "InvalidParameter", f"The value '{ctx.q('$orderby')}' of "
                           "parameter '$orderby' is invalid. Only 'name asc' and 'name desc' "
                           "are supported.")
        versions.sort(key=_version_key, reverse=order.endswith("desc"))
        if ctx.q("$top"):
            try:
                top = int(ctx.q("$top") or "")
            except ValueError:
                raise ArmError(400, "InvalidParameter", f"The value '{ctx.q('$top')}' of "
                               "parameter '$top' is invalid.") from None
            versions = versions[:max(top, 0)]
        expand = "properties" in (ctx.q("$expand") or "").lower()
        loc = self._loc(ctx)
        out = []
        for v in versions:
            item: dict = {"location": loc, "name": v, "id": f"{self._prefix(ctx)}/{v}"}
            if expand:
                item["properties"] = self._properties(found, v)
            out.append(item)
        return json_response(out)

    def get(self, ctx: Ctx) -> Response:
        found = self._entry(ctx)
        version = ctx.names[5]
        if version.lower() == "latest":
            version = found[1][2][-1]
        if version not in found[1][2]:
            raise self._not_found(ctx, f"VMImage Publisher: {ctx.names[1]}, Offer: "
                                  f"{ctx.names[3]}, Sku: {ctx.names[4]}, Version: {version}")
        return json_response({"properties": self._properties(found, version),
                              "location": self._loc(ctx), "name": version,
                              "id": f"{self._prefix(ctx)}/{version}"})


class Images(Tracked):
    """Managed images: none are made here, so a GET is 404 ResourceNotFound as in Azure."""

    ns, types = NS, ("images",)

    def put(self, ctx: Ctx) -> Response:
        raise ArmError(400, "InvalidParameter", "The local Azure does not capture managed "
                       "images; use a Marketplace image.")

    patch = put


KINDS = (Publishers(), ArtifactTypes(), Offers(), Skus(), Versions(), Images())


def register(registry: Registry) -> None:
    """Add this provider's resource types to an ARM's registry (arm.PROVIDERS lists the order)."""
    for kind in KINDS:
        registry.add(kind)
