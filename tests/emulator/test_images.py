"""The VM image catalog and managed images, as the Azure CLI and the compute SDK read them."""

from __future__ import annotations

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.mgmt.compute import ComputeManagementClient
from test_arm import arm


@pytest.fixture
def compute(azure_env, operator_credential):
    return ComputeManagementClient(operator_credential, azure_env.subscription_id)


def test_catalog_levels_with_the_sdk(compute):
    assert {"Canonical", "Debian"} <= {p.name for p in
                                       compute.virtual_machine_images.list_publishers("uksouth")}
    offers = {o.name for o in compute.virtual_machine_images.list_offers("westus", "Canonical")}
    assert {"0001-com-ubuntu-server-jammy", "ubuntu-24_04-lts"} <= offers
    skus = {s.name for s in compute.virtual_machine_images.list_skus(
        "uksouth", "Canonical", "ubuntu-24_04-lts")}
    assert {"server", "server-gen1"} <= skus
    assert "12-gen2" in {s.name for s in compute.virtual_machine_images.list_skus(
        "uksouth", "Debian", "debian-12")}
    versions = compute.virtual_machine_images.list("uksouth", "Canonical",
                                                   "0001-com-ubuntu-server-jammy",
                                                   "22_04-lts-gen2")
    names = [v.name for v in versions]
    assert names == sorted(names) and len(names) >= 2


def test_versions_expand_orderby_top_and_get(azure_env, operator_credential, compute):
    base = (f"/subscriptions/{azure_env.subscription_id}/providers/Microsoft.Compute/locations/"
            "uksouth/publishers/Canonical/artifacttypes/vmimage/offers/"
            "0001-com-ubuntu-server-jammy/skus/22_04-lts-gen2/versions")
    # What `az vm create --image Ubuntu2204` asks first.
    r = arm("GET", base + "?$expand=properties&$orderby=name%20desc&$top=1", operator_credential,
            api="2024-11-01")
    assert r.status_code == 200, r.text
    [latest] = r.json()
    assert latest["properties"]["hyperVGeneration"] == "V2"
    assert latest["id"].startswith(f"/Subscriptions/{azure_env.subscription_id}/Providers/"
                                   "Microsoft.Compute/Locations/uksouth/Publishers/Canonical/")
    all_versions = arm("GET", base, operator_credential, api="2024-11-01").json()
    assert "properties" not in all_versions[0]
    assert latest["name"] == max((v["name"] for v in all_versions),
                                 key=lambda n: [int(p) for p in n.split(".")])
    image = compute.virtual_machine_images.get("uksouth", "Canonical",
                                               "0001-com-ubuntu-server-jammy", "22_04-lts-gen2",
                                               latest["name"])
    assert image.os_disk_image.operating_system == "Linux"
    assert image.architecture == "x64"
    with pytest.raises(ResourceNotFoundError):
        compute.virtual_machine_images.get("uksouth", "Canonical", "UbuntuServer",
                                           "18.04-LTS", "latest")
    r = arm("GET", base + "?$orderby=date", operator_credential, api="2024-11-01")
    assert r.status_code == 400


def test_a_missing_managed_image_is_404(azure_env, operator_credential, unique_group):
    sub = azure_env.subscription_id
    arm("PUT", f"/subscriptions/{sub}/resourcegroups/{unique_group}", operator_credential,
        json={"location": "uksouth"})
    r = arm("GET", f"/subscriptions/{sub}/resourceGroups/{unique_group}/providers/"
            "Microsoft.Compute/images/UbuntuLTS", operator_credential, api="2024-11-01")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "ResourceNotFound"
    assert "Microsoft.Compute/images/UbuntuLTS" in r.json()["error"]["message"]
    arm("DELETE", f"/subscriptions/{sub}/resourcegroups/{unique_group}", operator_credential)
