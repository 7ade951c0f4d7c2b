"""Part 2, on the control plane: the server onboarded with Azure Arc, its identity and grants."""

import pytest

from pytest_milab import shapes

CONNECT = ("sudo azcmagent connect --resource-group <group> --tenant-id <tenant> "
           "--location <location> --subscription-id <subscription>")


@pytest.mark.milab_step("machine", title="The server is onboarded to Azure Arc and connected",
                        needs=("resource-group",))
def test_machine(lab, milab_spec):
    if lab.machine is None:
        others = [m["name"] for m in lab.in_group("Microsoft.HybridCompute/machines")]
        found = (f" (the group has {', '.join(others)}: onboard with --resource-name "
                 f"{milab_spec.machine_name})") if others else ""
        pytest.fail(f"no Arc-enabled server named {milab_spec.machine_name!r} in the group"
                    f"{found}: on the server, {CONNECT}")
    status = lab.machine["properties"].get("status")
    assert status == "Connected", (
        f"the server's agent is {status}, not Connected: on the server, check `azcmagent show` "
        "and that the himds service runs")


@pytest.mark.milab_step("machine-identity", title="The server has a system-assigned identity",
                        needs=("machine",))
def test_machine_identity(lab):
    assert lab.identity_principal_id, (
        "the Arc resource has no system-assigned identity: onboard the server again "
        "(azcmagent disconnect, then azcmagent connect)")


@pytest.mark.milab_step("reader-assignment", title="Reader for the server's identity on the group",
                        needs=("machine-identity",))
def test_reader_assignment(lab):
    readers = lab.assignments_for(lab.identity_principal_id, "Reader")
    at_group = [r for r in readers if r["scope"].lower() == lab.group_id.lower()]
    wider = [r for r in readers if lab.group_id.lower().startswith(r["scope"].lower() + "/")
             or r["scope"] in ("", "/")]
    assert not wider, (f"Reader is assigned to the server's identity at {wider[0]['scope']}, "
                       "wider than the resource group: assign it at the group's scope only")
    assert at_group, ("the server's identity has no Reader assignment on the resource group: "
                      "az role assignment create --role Reader --assignee <principalId> "
                      "--resource-group <group>")


@pytest.mark.milab_step("identity-access-policy", title="The server's identity may get secrets",
                        needs=("machine-identity", "key-vault"))
def test_identity_access_policy(lab):
    policy = lab.access_policy_for(lab.identity_principal_id)
    assert policy is not None, (
        "the vault has no access policy for the server's identity: az keyvault set-policy "
        "--secret-permissions get --object-id <principalId>")
    granted = shapes.secret_permissions(policy)
    assert granted & {"get", "all"}, (
        f"the server identity's policy grants secrets {sorted(granted)}, not get")
