"""Every api-version that the installed Azure SDKs (and, under `tox -e azcli`, the Azure CLI)
send for a resource type the local Azure emulates is one it serves. The list is read from the
installed packages' sources by `apiversions.collect`, never kept by hand."""

from __future__ import annotations

import os
import time

import pytest
from apiversions import collect, default_roots, site_packages_of

from pytest_milab.emulator.arm import app as arm
from pytest_milab.emulator.arm.versions import provider_versions

REGISTRY = arm.providers()  # every resource type the local ARM serves


def emulated(ns: str, types: tuple[str, ...]) -> bool:
    """A type the local Azure has, or an action/view of one (`virtualMachines/{vm}/start`)."""
    if REGISTRY.kind_for(ns, types) is not None:
        return True
    parent = REGISTRY.kind_for(ns, types[:-1]) if len(types) > 1 else None
    verbs = {v.lower() for v in (*parent.actions, *parent.views)} if parent else set()
    return types[-1] in verbs


@pytest.fixture(scope="module")
def sent():
    roots = default_roots()
    if os.environ.get("MILAB_AZ_CLI"):
        roots += site_packages_of(os.environ["MILAB_AZ_CLI"])
    t0 = time.monotonic()
    found = collect(roots, {k.ns for k in REGISTRY.kinds.values()})
    print(f"collected {sum(map(len, found.values()))} (type, api-version) pairs from "
          f"{len(roots)} site-packages in {time.monotonic() - t0:.1f}s")
    return {key: versions for key, versions in found.items() if emulated(*key)}


def test_the_collector_finds_the_sdks(sent):
    # azure-mgmt-network, -compute, -keyvault, -authorization, -msi and -resource are installed
    # with the project: each contributes the types the labs use.
    for key in [("microsoft.network", ("publicipaddresses",)),
                ("microsoft.compute", ("virtualmachines",)),
                ("microsoft.keyvault", ("vaults",)),
                ("microsoft.authorization", ("roleassignments",)),
                ("microsoft.managedidentity", ("userassignedidentities",))]:
        assert sent.get(key), key


def test_every_api_version_sent_is_served(sent):
    missing = {f"{ns}/{'/'.join(types)}": sorted(v for v in versions if v.lower() not in {
        s.lower() for s in provider_versions(ns, types[0])}) for (ns, types), versions in
        sent.items()}
    assert {k: v for k, v in missing.items() if v} == {}


@pytest.mark.skipif(not os.environ.get("MILAB_AZ_CLI"), reason="needs the Azure CLI's sources "
                    "(tox -e azcli sets MILAB_AZ_CLI)")
def test_the_cli_template_versions_are_among_them(sent):
    """`az vm create`'s template sends Microsoft.Network 2015-06-15; `az network public-ip`
    sends 2025-09-01."""
    assert "2015-06-15" in sent[("microsoft.network", ("virtualnetworks",))]
    assert "2025-09-01" in sent[("microsoft.network", ("publicipaddresses",))]
    assert "2015-01-01" in sent[("microsoft.resources", ("deployments",))]


def test_an_unknown_version_is_still_refused(azure_env, operator_credential, unique_group):
    from test_arm import arm as call

    r = call("GET", f"/subscriptions/{azure_env.subscription_id}/resourceGroups/{unique_group}/"
             "providers/Microsoft.Network/publicIPAddresses/x", operator_credential,
             api="2015-06-16")
    assert (r.status_code, r.json()["error"]["code"]) == (400, "NoRegisteredProviderFound")
    for version in ("2015-06-15", "2025-09-01"):
        r = call("GET", f"/subscriptions/{azure_env.subscription_id}/resourceGroups/"
                 f"{unique_group}/providers/Microsoft.Network/publicIPAddresses/x",
                 operator_credential, api=version)
        assert r.json()["error"]["code"] == "ResourceGroupNotFound", version
