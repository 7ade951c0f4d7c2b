"""Part 3 of the lab, on the control plane: who may do what."""

import pytest

from pytest_milab import shapes


@pytest.mark.milab_step("reader-assignment", title="Reader for the VM identity on the group",
                        needs=("vm-identity",))
def test_reader_assignment(lab):
    readers = lab.assignments_for(lab.identity_principal_id, "Reader")
    at_group = [r for r in readers if r["scope"].lower() == lab.group_id.lower()]
    wider = [r for r in readers if lab.group_id.lower().startswith(r["scope"].lower() + "/")
             or r["scope"] in ("", "/")]
    assert not wider, (f"Reader is assigned to the VM identity at {wider[0]['scope']}, wider "
                       "than the resource group: assign it at the group's scope only")
    assert at_group, ("the VM identity has no Reader assignment on the resource group: "
                      "az role assignment create --role Reader --resource-group <group>")


@pytest.mark.milab_step("identity-access-policy", title="The VM identity may get secrets",
                        needs=("vm-identity", "key-vault"))
def test_identity_access_policy(lab):
    policy = lab.access_policy_for(lab.identity_principal_id)
    assert policy is not None, ("the vault has no access policy for the VM identity: "
                                "az keyvault set-policy --secret-permissions get --object-id <id>")
    secrets = shapes.secret_permissions(policy)
    assert secrets & {"get", "all"}, (
        f"the VM identity's policy grants secrets {sorted(secrets)}, not get")


@pytest.mark.milab_step("service-principal", title="A service principal is Contributor on the group",
                        needs=("resource-group",))
def test_service_principal(lab):
    identity = (lab.identity_principal_id or "").lower() if lab.vm else ""
    contributors = [r for r in lab.role_assignments
                    if r["roleName"] == "Contributor"
                    and r.get("principalType") == "ServicePrincipal"
                    and r["principalId"].lower() != identity
                    and r["scope"].lower() == lab.group_id.lower()]
    assert contributors, ("no service principal holds Contributor on the resource group: "
                          "az ad sp create-for-rbac --role Contributor --scopes <group id>")
