"""Part 2 of the lab: the Ubuntu VM, its system-assigned identity, tags and network."""

import pytest


@pytest.mark.milab_step("vm", title="VM 'ubuntu' with the lab's image, disk and network",
                        needs=("resource-group",))
def test_vm(lab, milab_spec):
    vm = lab.vm
    assert vm is not None, f"no VM named {milab_spec.vm_name!r} in the group"
    storage = vm["properties"].get("storageProfile") or {}
    image = storage.get("imageReference") or {}
    offer = str(image.get("offer", ""))
    assert image.get("publisher", "").lower() == "canonical" and (
        offer in milab_spec.image_offers or "ubuntu" in offer.lower()), (
        f"the VM runs {image.get('publisher')}:{offer}, not an Ubuntu image (use Ubuntu2204)")
    disk = (storage.get("osDisk") or {}).get("name")
    assert disk == milab_spec.os_disk, f"the OS disk is {disk!r}, not {milab_spec.os_disk!r}"
    subnet = (lab.subnet_id or "").lower()
    want = f"/virtualnetworks/{milab_spec.vnet}/subnets/{milab_spec.subnet}".lower()
    assert subnet.endswith(want), (
        f"the NIC is not in {milab_spec.vnet}/{milab_spec.subnet} (it is in "
        f"{subnet.split('/virtualnetworks/')[-1] or 'no subnet'})")
    pip = lab.public_ip
    assert pip is not None and pip["name"] == milab_spec.public_ip, (
        f"the NIC has no public IP named {milab_spec.public_ip!r}")


@pytest.mark.milab_step("vm-identity", title="The VM has a system-assigned identity",
                        needs=("vm",))
def test_vm_identity(lab):
    assert lab.identity_principal_id, (
        "the VM has no system-assigned identity: create it with --assign-identity '[system]'")


@pytest.mark.milab_step("vm-tags", title="The VM carries the lab's tags", needs=("vm",))
def test_vm_tags(lab, milab_spec):
    tags = lab.vm.get("tags") or {}
    expected = milab_spec.expected_tags(lab.vault_name)
    wrong = {k: v for k, v in expected.items() if tags.get(k) != v}
    assert not wrong, "missing or wrong tags: " + ", ".join(
        f"{k}={v} (found {tags.get(k)!r})" for k, v in wrong.items())
