"""ARM through the proxy with unchanged SDK clients and plain requests (“Azure Resource Manager REST API reference”, “Troubleshoot Azure RBAC”, “Azure CLI release notes”)."""

from __future__ import annotations

import re
import time
import uuid

import pytest
import requests
from azure.core.exceptions import HttpResponseError
from azure.identity import ClientSecretCredential
from azure.mgmt.authorization import AuthorizationManagementClient
from azure.mgmt.authorization.models import RoleAssignmentCreateParameters
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.keyvault import KeyVaultManagementClient
from azure.mgmt.msi import ManagedServiceIdentityClient
from azure.mgmt.network import NetworkManagementClient
from azure.mgmt.resource.resources import ResourceManagementClient
from azure.mgmt.subscription import SubscriptionClient

from pytest_milab.emulator import rbac

ARM = "https://management.azure.com"
IMAGE = {"publisher": "Canonical", "offer": "0001-com-ubuntu-server-jammy",
         "sku": "22_04-lts-gen2", "version": "latest"}
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB0test milab"


def credential(identity) -> ClientSecretCredential:
    return ClientSecretCredential(identity.tenant_id, identity.client_id, identity.client_secret)


def arm(method: str, path: str, cred=None, api: str | None = "2021-04-01",
        token: str | None = None, **kwargs) -> requests.Response:
    """One raw ARM call, to check exact bodies and headers."""
    if cred is not None:
        token = cred.get_token(f"{ARM}/.default").token
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    sep = "&" if "?" in path else "?"
    url = f"{ARM}{path}" + (f"{sep}api-version={api}" if api else "")
    return requests.request(method, url, headers=headers, timeout=10, **kwargs)


def role_id(sub: str, guid: str) -> str:
    return f"/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/{guid}"


def vault_name() -> str:
    return f"kv-{uuid.uuid4().hex[:12]}"


def forbidden_message(oid: str, action: str, scope: str) -> str:
    return (f"The client '{oid}' with object id '{oid}' does not have authorization to perform "
            f"action '{action}' over scope '{scope}' or the scope is invalid. If access was "
            "recently granted, please refresh your credentials.")


def wait_for(predicate, timeout: float = 10.0, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(step)


def build_lab(azure, cred, group: str, vault: str) -> dict:
    """The lab's control plane (“Azure Citadel: Managed Identities” steps 1-5 and 9) built with the real SDKs."""
    sub, tid = azure.subscription_id, azure.tenant_id
    ResourceManagementClient(cred, sub).resource_groups.create_or_update(
        group, {"location": "uksouth"})
    kv = KeyVaultManagementClient(cred, sub)
    kv.vaults.begin_create_or_update(group, vault, {"location": "uksouth", "properties": {
        "tenantId": tid, "sku": {"family": "A", "name": "standard"},
        "enableRbacAuthorization": False, "softDeleteRetentionInDays": 7,
        "accessPolicies": []}}).result()
    kv.vaults.update_access_policy(group, vault, "add", {"properties": {"accessPolicies": [{
        "tenantId": tid, "objectId": azure.operator.object_id,
        "permissions": {"secrets": ["get", "list", "set"]}}]}})
    net = NetworkManagementClient(cred, sub)
    pip = net.public_ip_addresses.begin_create_or_update(
        group, "ubuntu-pip", {"location": "uksouth", "sku": {"name": "Standard"}}).result()
    vnet = net.virtual_networks.begin_create_or_update(group, "myVnet", {
        "location": "uksouth", "properties": {
            "addressSpace": {"addressPrefixes": ["10.0.0.0/16"]},
            "subnets": [{"name": "mySubnet", "properties": {"addressPrefix": "10.0.0.0/24"}}]},
    }).result()
    nsg = net.network_security_groups.begin_create_or_update(group, "ubuntuNSG", {
        "location": "uksouth", "properties": {"securityRules": [{"name": "default-allow-ssh",
            "properties": {"protocol": "Tcp", "sourcePortRange": "*",
                           "destinationPortRange": "22", "sourceAddressPrefix": "*",
                           "destinationAddressPrefix": "*", "access": "Allow", "priority": 1000,
                           "direction": "Inbound"}}]},
    }).result()
    nic = net.network_interfaces.begin_create_or_update(group, "ubuntuVMNic", {
        "location": "uksouth", "properties": {
            "networkSecurityGroup": {"id": nsg.id},
            "ipConfigurations": [{"name": "ipconfigubuntu", "properties": {
                "subnet": {"id": vnet.properties.subnets[0].id},
                "publicIPAddress": {"id": pip.id}}}]},
    }).result()
    vm = ComputeManagementClient(cred, sub).virtual_machines.begin_create_or_update(
        group, "ubuntu", {
            "location": "uksouth", "identity": {"type": "SystemAssigned"},
            "tags": {"site": "citadel", "lab": "identity", "vault": vault},
            "properties": {
                "hardwareProfile": {"vmSize": "Standard_D2s_v5"},
                "storageProfile": {"imageReference": IMAGE,
                                   "osDisk": {"name": "ubuntu-os", "createOption": "FromImage"}},
                "osProfile": {"computerName": "ubuntu", "adminUsername": "azureuser",
                              "adminPassword": "never-returned-1A!",
                              "linuxConfiguration": {"disablePasswordAuthentication": True,
                                                     "ssh": {"publicKeys": [{
                                                         "path": "/home/azureuser/.ssh/"
                                                                 "authorized_keys",
                                                         "keyData": SSH_KEY}]}}},
                "networkProfile": {"networkInterfaces": [{"id": nic.id}]}}}).result()
    group_id = f"/subscriptions/{sub}/resourceGroups/{group}"
    AuthorizationManagementClient(cred, sub).role_assignments.create(
        group_id, str(uuid.uuid4()), RoleAssignmentCreateParameters(
            role_definition_id=role_id(sub, rbac.READER), principal_id=vm.identity.principal_id,
            principal_type="ServicePrincipal"))
    return {"group_id": group_id, "vm": vm, "nic": nic, "pip": pip, "vnet": vnet, "nsg": nsg}


@pytest.fixture(scope="module")
def lab(local_azure) -> dict:
    """One lab shared by the tests that only read it."""
    group, vault = f"rg-{uuid.uuid4().hex[:10]}", vault_name()
    with local_azure.environment():
        built = build_lab(local_azure, credential(local_azure.operator), group, vault)
    return {**built, "group": group, "vault": vault}


# -- “Resources - List By Resource Group”, “Azure Resource Manager REST API reference”: the lab's control plane ---
def test_operator_builds_the_lab_control_plane(azure_env, operator_credential, lab):
    """“Resources - List By Resource Group” resources list, “Vaults - Create Or Update (Key Vault management REST API)” vault, “Virtual Machines - Get (Compute REST API)” VM, “Role Assignments - Create (Authorization REST API)” assignment, “Public IP Addresses - Get (Network REST API)” public IP."""
    vault, unique_group = lab["vault"], lab["group"]
    cloud, sub = azure_env.cloud, azure_env.subscription_id

    vm = arm("GET", f"{lab['group_id']}/providers/Microsoft.Compute/virtualMachines/ubuntu",
             operator_credential, api="2024-07-01").json()
    props = vm["properties"]
    assert vm["tags"] == {"site": "citadel", "lab": "identity", "vault": vault}
    assert vm["identity"]["type"] == "SystemAssigned"
    assert vm["identity"]["tenantId"] == azure_env.tenant_id
    assert props["storageProfile"]["imageReference"]["sku"] == "22_04-lts-gen2"
    assert props["storageProfile"]["imageReference"]["exactVersion"].startswith("22.04.")
    os_disk = props["storageProfile"]["osDisk"]
    assert os_disk["name"] == "ubuntu-os" and os_disk["osType"] == "Linux"
    assert os_disk["managedDisk"]["storageAccountType"] == "Premium_LRS"
    assert props["osProfile"]["linuxConfiguration"]["ssh"]["publicKeys"][0]["keyData"] == SSH_KEY
    assert "adminPassword" not in props["osProfile"]
    assert props["provisioningState"] == "Succeeded" and uuid.UUID(props["vmId"])
    sp = cloud.principal(vm["identity"]["principalId"])
    assert sp.kind == "ManagedIdentity" and sp.mi_resource_id == vm["id"]
    assert cloud.vm_power[vm["id"].lower()] == "running"

    kv = arm("GET", f"{lab['group_id']}/providers/Microsoft.KeyVault/vaults/{vault}",
             operator_credential, api="2023-07-01").json()["properties"]
    assert kv["vaultUri"] == f"https://{vault}.vault.azure.net/"
    assert kv["enableRbacAuthorization"] is False and kv["softDeleteRetentionInDays"] == 7
    assert kv["enableSoftDelete"] is True and kv["tenantId"] == azure_env.tenant_id
    assert kv["accessPolicies"] == [{"tenantId": azure_env.tenant_id,
                                     "objectId": azure_env.operator.object_id,
                                     "permissions": {"keys": [], "secrets": ["get", "list", "set"],
                                                     "certificates": [], "storage": []}}]
    recorded = cloud.access_policies[vault].at(cloud.now())
    assert recorded[0]["objectId"] == azure_env.operator.object_id

    pip = lab["pip"]
    assert pip.sku.name == "Standard"
    assert pip.properties.public_ip_allocation_method == "Static"
    assert re.fullmatch(r"127\.10\.\d+\.\d+", pip.properties.ip_address)
    nic = lab["nic"].properties.ip_configurations[0].properties
    assert nic.private_ip_address == "10.0.0.4"
    assert nic.public_ip_address.id == pip.id
    nsg = lab["nsg"].properties
    assert [r.properties.priority for r in nsg.default_security_rules] == [
        65000, 65001, 65500, 65000, 65001, 65500]
    stored_pip = cloud.resources[pip.id.lower()]["properties"]
    assert stored_pip["ipConfiguration"]["id"].endswith("/ipConfigurations/ipconfigubuntu")

    listed = arm("GET", f"{lab['group_id']}/resources", operator_credential, api="2020-06-01")
    assert listed.status_code == 200 and "nextLink" not in listed.json()
    by_type = {r["type"]: r for r in listed.json()["value"]}
    assert set(by_type) == {"Microsoft.KeyVault/vaults", "Microsoft.Network/publicIPAddresses",
                            "Microsoft.Network/virtualNetworks",
                            "Microsoft.Network/networkSecurityGroups",
                            "Microsoft.Network/networkInterfaces",
                            "Microsoft.Compute/virtualMachines", "Microsoft.Compute/disks"}
    assert by_type["Microsoft.Compute/virtualMachines"]["identity"]["principalId"] == \
        vm["identity"]["principalId"]
    disk = by_type["Microsoft.Compute/disks"]
    assert disk["name"] == "ubuntu-os" and disk["managedBy"] == vm["id"]
    assert disk["sku"] == {"name": "Premium_LRS", "tier": "Premium"}
    assert f"/resourceGroups/{unique_group.upper()}/" in disk["id"]
    assert set(by_type["Microsoft.KeyVault/vaults"]) == {"id", "name", "type", "location"}

    assignments = AuthorizationManagementClient(operator_credential, sub).role_assignments
    found = [a for a in assignments.list_for_scope(lab["group_id"], filter="atScope()")
             if a.principal_id == vm["identity"]["principalId"]]
    assert [a.role_definition_id.rsplit("/", 1)[1] for a in found] == [rbac.READER]


def test_sdk_list_clients_see_the_lab(azure_env, operator_credential, lab):
    """“Resources - List By Resource Group” and “Subscriptions - List” through each SDK's own list calls (paging, subscription client)."""
    vault, unique_group = lab["vault"], lab["group"]
    sub = azure_env.subscription_id
    assert vault in [v.name for v in
                     KeyVaultManagementClient(operator_credential, sub).vaults.list()]
    compute = ComputeManagementClient(operator_credential, sub)
    assert [v.name for v in compute.virtual_machines.list(unique_group)] == ["ubuntu"]
    net = NetworkManagementClient(operator_credential, sub)
    assert [s.name for s in net.subnets.list(unique_group, "myVnet")] == ["mySubnet"]
    rule = net.security_rules.get(unique_group, "ubuntuNSG", "default-allow-ssh")
    assert rule.properties.destination_port_range == "22"
    paged = ResourceManagementClient(operator_credential, sub).resources.list_by_resource_group(
        unique_group, top=2)
    assert len(list(paged)) == 7
    subs = list(SubscriptionClient(operator_credential).subscriptions.list())
    assert sub in [s.subscription_id for s in subs]
    provider = ResourceManagementClient(operator_credential, sub).providers.get(
        "Microsoft.KeyVault")
    assert provider.registration_state == "Registered"
    assert "2026-05-15" in next(t for t in provider.resource_types
                                if t.resource_type == "vaults").api_versions
    reader = AuthorizationManagementClient(operator_credential, sub).role_definitions.get(
        f"/subscriptions/{sub}/resourceGroups/{unique_group}", rbac.READER)
    assert reader.role_name == "Reader" and reader.permissions[0].actions == ["*/read"]


# -- “Troubleshoot Azure RBAC”: the lab's 403, then Reader, then the propagation delay ------------
def test_student_is_refused_until_reader_is_assigned(azure_env, operator_credential,
                                                     unique_group):
    sub = azure_env.subscription_id
    rc = ResourceManagementClient(operator_credential, sub)
    rc.resource_groups.create_or_update(unique_group, {"location": "uksouth"})
    student = azure_env.add_service_principal("student-sp")
    cred = credential(student)
    path = f"/subscriptions/{sub}/resourceGroups/{unique_group}/resources"

    refused = arm("GET", path, cred, api="2020-06-01")
    assert refused.status_code == 403
    assert refused.headers["Content-Type"] == "application/json; charset=utf-8"
    assert refused.json() == {"error": {"code": "AuthorizationFailed", "message": forbidden_message(
        student.object_id, "Microsoft.Resources/subscriptions/resourceGroups/resources/read",
        f"/subscriptions/{sub}/resourceGroups/{unique_group}")}}
    assert azure_env.audit.find(path_contains=path, caller_oid=student.object_id, status=403)

    assignments = AuthorizationManagementClient(operator_credential, sub).role_assignments
    group_id = f"/subscriptions/{sub}/resourceGroups/{unique_group}"
    assignments.create(group_id, str(uuid.uuid4()), RoleAssignmentCreateParameters(
        role_definition_id=role_id(sub, rbac.READER), principal_id=student.object_id,
        principal_type="ServicePrincipal"))
    allowed = arm("GET", path, cred, api="2020-06-01")
    assert allowed.status_code == 200 and allowed.json() == {"value": []}

    # With a propagation delay the same grant on another group takes a while (“Troubleshoot Azure RBAC”).
    other = f"{unique_group}-2"
    rc.resource_groups.create_or_update(other, {"location": "uksouth"})
    azure_env.knobs.propagation_delay = 1.5
    assignments.create(f"/subscriptions/{sub}/resourceGroups/{other}", str(uuid.uuid4()),
                       RoleAssignmentCreateParameters(
                           role_definition_id=role_id(sub, rbac.READER),
                           principal_id=student.object_id, principal_type="ServicePrincipal"))
    granted_at = time.monotonic()
    other_path = f"/subscriptions/{sub}/resourceGroups/{other}/resources"
    assert arm("GET", other_path, cred, api="2020-06-01").status_code == 403
    assert wait_for(lambda: arm("GET", other_path, cred, api="2020-06-01").status_code == 200,
                    timeout=5)
    assert time.monotonic() - granted_at >= 1.0


def test_grader_reads_everything_but_cannot_write(azure_env, grader_credential, lab):
    """“Troubleshoot Azure RBAC”: the grader holds Reader at the subscription."""
    vault, unique_group = lab["vault"], lab["group"]
    sub = azure_env.subscription_id
    vm = ComputeManagementClient(grader_credential, sub).virtual_machines.get(
        unique_group, "ubuntu", expand="instanceView")
    assert vm.identity.principal_id == lab["vm"].identity.principal_id
    assert vm.properties.instance_view.statuses[1].code == "PowerState/running"
    assert KeyVaultManagementClient(grader_credential, sub).vaults.get(unique_group, vault)
    assert len(list(ResourceManagementClient(grader_credential, sub)
                    .resources.list_by_resource_group(unique_group))) == 7
    assert list(AuthorizationManagementClient(grader_credential, sub)
                .role_assignments.list_for_scope(lab["group_id"]))

    with pytest.raises(HttpResponseError) as err:
        ResourceManagementClient(grader_credential, sub).resource_groups.create_or_update(
            unique_group, {"location": "uksouth", "tags": {"x": "y"}})
    assert err.value.status_code == 403 and err.value.error.code == "AuthorizationFailed"
    assert "'Microsoft.Resources/subscriptions/resourcegroups/write'" in err.value.error.message
    with pytest.raises(HttpResponseError) as err:
        ComputeManagementClient(grader_credential, sub).virtual_machines.begin_power_off(
            unique_group, "ubuntu").result()
    assert err.value.status_code == 403
    assert "'Microsoft.Compute/virtualMachines/powerOff/action'" in err.value.error.message


def test_contributor_cannot_assign_roles_but_owner_can(azure_env, operator_credential,
                                                       unique_group):
    """“Role Assignments - Create (Authorization REST API)”: roleAssignments/write is in Contributor's notActions."""
    sub = azure_env.subscription_id
    ResourceManagementClient(operator_credential, sub).resource_groups.create_or_update(
        unique_group, {"location": "uksouth"})
    group_id = f"/subscriptions/{sub}/resourceGroups/{unique_group}"
    contributor = azure_env.add_service_principal("contributor", role="Contributor",
                                                  scope=group_id)
    target = azure_env.add_service_principal("target")
    params = RoleAssignmentCreateParameters(role_definition_id=role_id(sub, rbac.READER),
                                            principal_id=target.object_id,
                                            principal_type="ServicePrincipal")
    name = str(uuid.uuid4())
    with pytest.raises(HttpResponseError) as err:
        AuthorizationManagementClient(credential(contributor), sub).role_assignments.create(
            group_id, name, params)
    assert err.value.status_code == 403
    assert err.value.error.message == forbidden_message(
        contributor.object_id, "Microsoft.Authorization/roleAssignments/write",
        f"{group_id}/providers/Microsoft.Authorization/roleAssignments/{name}")

    created = AuthorizationManagementClient(operator_credential, sub).role_assignments.create(
        group_id, name, params)
    assert created.scope == group_id and created.principal_type == "ServicePrincipal"
    admin = azure_env.add_service_principal("uaa", role="User Access Administrator",
                                            scope=group_id)
    made = AuthorizationManagementClient(credential(admin), sub).role_assignments.create(
        group_id, str(uuid.uuid4()), RoleAssignmentCreateParameters(
            role_definition_id=role_id(sub, rbac.KEY_VAULT_SECRETS_USER),
            principal_id=target.object_id, principal_type="ServicePrincipal"))
    assert made.created_by is None and made.updated_by == admin.object_id


def test_role_assignment_errors_and_lookups(azure_env, operator_credential, unique_group):
    """“Role Assignments - Create (Authorization REST API)”: RoleAssignmentExists, PrincipalNotFound, RoleDefinitionDoesNotExist, get, delete."""
    sub = azure_env.subscription_id
    ResourceManagementClient(operator_credential, sub).resource_groups.create_or_update(
        unique_group, {"location": "uksouth"})
    group_id = f"/subscriptions/{sub}/resourceGroups/{unique_group}"
    target = azure_env.add_service_principal("assignee")
    ra_path = f"{group_id}/providers/Microsoft.Authorization/roleAssignments"

    def put(name: str, **props):
        body = {"properties": {"roleDefinitionId": role_id(sub, rbac.READER),
                               "principalId": target.object_id, **props}}
        return arm("PUT", f"{ra_path}/{name}", operator_credential, api="2022-04-01", json=body)

    first = str(uuid.uuid4())
    created = put(first)
    assert created.status_code == 201
    body = created.json()
    assert body["properties"]["principalType"] == "ServicePrincipal"
    assert body["properties"]["scope"] == group_id and body["name"] == first
    assert set(body["properties"]) >= {"createdOn", "updatedOn", "createdBy", "updatedBy",
                                       "condition", "conditionVersion", "description"}
    dup = put(str(uuid.uuid4()))
    assert dup.status_code == 409 and dup.json()["error"] == {
        "code": "RoleAssignmentExists", "message": "The role assignment already exists."}
    missing = str(uuid.uuid4())
    unknown = arm("PUT", f"{ra_path}/{uuid.uuid4()}", operator_credential, api="2022-04-01",
                  json={"properties": {"roleDefinitionId": role_id(sub, rbac.READER),
                                       "principalId": missing}})
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "PrincipalNotFound"
    assert f"does not exist in the directory {azure_env.tenant_id}" in \
        unknown.json()["error"]["message"]
    bad_role = arm("PUT", f"{ra_path}/{uuid.uuid4()}", operator_credential, api="2022-04-01",
                   json={"properties": {"roleDefinitionId": role_id(sub, str(uuid.uuid4())),
                                        "principalId": target.object_id}})
    assert bad_role.json()["error"]["code"] == "RoleDefinitionDoesNotExist"

    client = AuthorizationManagementClient(operator_credential, sub).role_assignments
    assert client.get_by_id(f"{ra_path}/{first}").principal_id == target.object_id
    mine = list(client.list_for_subscription(filter=f"principalId eq '{target.object_id}'"))
    assert [a.name for a in mine] == [first]
    assert arm("GET", f"{ra_path}/{first}", operator_credential,
               api="2022-04-01").json()["properties"]["createdBy"] == azure_env.operator.object_id
    client.delete(group_id, first)
    assert arm("GET", f"{ra_path}/{first}", operator_credential, api="2022-04-01").status_code \
        == 404
    assert arm("DELETE", f"{ra_path}/{first}", operator_credential,
               api="2022-04-01").status_code == 204
    reader = AuthorizationManagementClient(operator_credential, sub).role_definitions.list(
        group_id, filter="roleName eq 'Reader'")
    assert [r.id for r in reader] == [role_id(sub, rbac.READER)]


# -- “Azure REST API reference” authentication, “Resolve errors for resource not found” errors ----
def test_authentication_failures(azure_env):
    sub = azure_env.subscription_id
    path = f"/subscriptions/{sub}/resourcegroups"
    missing = arm("GET", path)
    assert missing.status_code == 401
    assert missing.json() == {"error": {"code": "AuthenticationFailed", "message":
                                        "Authentication failed. The 'Authorization' header is "
                                        "missing."}}
    assert missing.headers["WWW-Authenticate"] == (
        'Bearer authorization_uri="https://login.windows.net/", error="invalid_token", '
        'error_description="The authentication failed because of missing \'Authorization\' '
        'header."')

    malformed = arm("GET", path, token="not-a-jwt")
    assert malformed.status_code == 401
    assert malformed.json()["error"] == {"code": "InvalidAuthenticationToken",
                                         "message": "The access token is invalid."}
    assert 'error="invalid_token"' in malformed.headers["WWW-Authenticate"]

    op = azure_env.operator
    expired = azure_env.tokens.issue(aud="https://management.azure.com/", oid=op.object_id,
                                     appid=op.client_id, lifetime=-10)
    late = arm("GET", path, token=expired.value)
    assert late.status_code == 401
    assert late.json()["error"]["code"] == "ExpiredAuthenticationToken"
    stamp = r"\d{1,2}/\d{1,2}/\d{4} \d{1,2}:\d{2}:\d{2} [AP]M"
    assert re.fullmatch(rf"The access token expiry UTC time '{stamp}' is earlier than current "
                        rf"UTC time '{stamp}'\.", late.json()["error"]["message"])

    vault_token = azure_env.tokens.issue(aud="https://vault.azure.net", oid=op.object_id,
                                         appid=op.client_id)
    wrong = arm("GET", path, token=vault_token.value)
    assert wrong.status_code == 401
    assert wrong.json()["error"] == {
        "code": "InvalidAuthenticationTokenAudience",
        "message": "The access token has been obtained for wrong audience or resource "
                   "'https://vault.azure.net'. It should exactly match with one of the allowed "
                   "audiences 'https://management.core.windows.net/',"
                   "'https://management.core.windows.net','https://management.azure.com/',"
                   "'https://management.azure.com'."}
    cli_token = azure_env.tokens.issue(aud="https://management.core.windows.net/",
                                       oid=op.object_id, appid=op.client_id)
    assert arm("GET", path, token=cli_token.value).status_code == 200


def test_api_version_errors(azure_env, operator_credential, unique_group):
    sub = azure_env.subscription_id
    group = f"/subscriptions/{sub}/resourceGroups/{unique_group}"
    assert arm("PUT", group, operator_credential, json={"location": "uksouth"}).status_code == 201

    missing = arm("GET", group, operator_credential, api=None)
    assert missing.status_code == 400
    assert missing.json()["error"] == {
        "code": "MissingApiVersionParameter",
        "message": "The api-version query parameter (?api-version=) is required for all "
                   "requests."}
    bad = arm("GET", group, operator_credential, api="2001-01-01")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "InvalidApiVersionParameter"
    assert bad.json()["error"]["message"].startswith(
        "The api-version '2001-01-01' is invalid. The supported versions are '2025-04-01,")
    for version in ("2025-04-01", "2024-11-01", "2022-09-01", "2020-06-01", "2019-10-01"):
        assert arm("GET", group, operator_credential, api=version).status_code == 200

    vaults = f"{group}/providers/Microsoft.KeyVault/vaults"
    stale = arm("GET", f"{vaults}/nope", operator_credential, api="2001-01-01")
    assert stale.status_code == 400
    assert stale.json()["error"]["message"].startswith(
        "No registered resource provider found for location 'uksouth' and API version "
        "'2001-01-01' for type 'vaults'. The supported api-versions are '")
    for version in ("2019-09-01", "2023-07-01", "2026-02-01", "2026-05-15"):
        assert arm("GET", vaults, operator_credential, api=version).status_code == 200

    odd = arm("GET", f"{group}/providers/Microsoft.Compute/spaceships", operator_credential,
              api="2024-07-01")
    assert odd.status_code == 400 and odd.json()["error"] == {
        "code": "InvalidResourceType",
        "message": "The resource type 'spaceships' could not be found in the namespace "
                   "'Microsoft.Compute' for api version '2024-07-01'."}


def test_not_found_and_existence(azure_env, operator_credential, unique_group):
    """“Resolve errors for resource not found”: 404s after authorisation, 403 before it; HEAD check_existence."""
    sub = azure_env.subscription_id
    group = f"/subscriptions/{sub}/resourceGroups/{unique_group}"
    gone = arm("GET", f"{group}/resources", operator_credential, api="2020-06-01")
    assert gone.status_code == 404
    assert gone.json()["error"] == {"code": "ResourceGroupNotFound",
                                    "message": f"Resource group '{unique_group}' could not be "
                                               "found."}
    assert gone.headers["x-ms-failure-cause"] == "gateway"
    rc = ResourceManagementClient(operator_credential, sub)
    assert rc.resource_groups.check_existence(unique_group) is False
    outsider = credential(azure_env.add_service_principal("outsider"))
    assert arm("GET", group, outsider).status_code == 403  # no read: 403 even though absent

    rc.resource_groups.create_or_update(unique_group, {"location": "uksouth"})
    assert rc.resource_groups.check_existence(unique_group) is True
    vault = arm("GET", f"{group}/providers/Microsoft.KeyVault/vaults/kv-none",
                operator_credential, api="2023-07-01")
    assert vault.status_code == 404
    assert vault.json()["error"] == {
        "code": "ResourceNotFound",
        "message": f"The Resource 'Microsoft.KeyVault/vaults/kv-none' under resource group "
                   f"'{unique_group}' was not found. For more details please go to "
                   "https://aka.ms/ARMResourceNotFoundFix"}
    assert arm("DELETE", f"{group}/providers/Microsoft.Network/publicIPAddresses/none",
               operator_credential, api="2024-05-01").status_code == 204
    assert arm("POST", f"{group}/providers/Microsoft.Network/publicIPAddresses",
               operator_credential, api="2024-05-01").status_code == 405


def test_arm_headers_and_case_insensitive_paths(azure_env, operator_credential, unique_group):
    """“Resolve errors for resource not found” response headers; paths are case-insensitive and keep the creator's casing."""
    sub = azure_env.subscription_id
    put = arm("PUT", f"/subscriptions/{sub}/resourcegroups/{unique_group}", operator_credential,
              json={"location": "UK South", "tags": {"env": "test"}})
    assert put.status_code == 201
    assert put.json() == {"id": f"/subscriptions/{sub}/resourceGroups/{unique_group}",
                          "name": unique_group, "type": "Microsoft.Resources/resourceGroups",
                          "location": "uksouth", "tags": {"env": "test"},
                          "properties": {"provisioningState": "Succeeded"}}
    assert int(put.headers["x-ms-ratelimit-remaining-subscription-writes"]) > 0
    got = arm("GET", f"/SUBSCRIPTIONS/{sub}/RESOURCEGROUPS/{unique_group.upper()}",
              operator_credential)
    assert got.status_code == 200 and got.json()["name"] == unique_group
    for header in ("x-ms-request-id", "x-ms-correlation-request-id",
                   "x-ms-ratelimit-remaining-subscription-reads"):
        assert got.headers[header]
    assert got.headers["Cache-Control"] == "no-cache"
    patched = arm("PATCH", f"/subscriptions/{sub}/resourceGroups/{unique_group}",
                  operator_credential, json={"tags": {"owner": "milab"}})
    assert patched.json()["tags"] == {"owner": "milab"}


# -- “Resources - List By Resource Group” paging and filters --------------------------------------
def test_resource_list_paging_and_filters(azure_env, operator_credential, unique_group):
    sub = azure_env.subscription_id
    group = f"/subscriptions/{sub}/resourceGroups/{unique_group}"
    arm("PUT", group, operator_credential, json={"location": "uksouth"})
    for i in range(3):
        made = arm("PUT", f"{group}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/"
                          f"id{i}", operator_credential, api="2023-01-31",
                   json={"location": "uksouth", "tags": {"n": str(i)}})
        assert made.status_code == 201
    first = arm("GET", f"{group}/resources?$top=2", operator_credential, api="2020-06-01").json()
    assert [r["name"] for r in first["value"]] == ["id0", "id1"]
    nxt = requests.get(first["nextLink"], headers={
        "Authorization": f"Bearer {operator_credential.get_token(ARM + '/.default').token}"},
        timeout=10).json()
    assert [r["name"] for r in nxt["value"]] == ["id2"] and "nextLink" not in nxt

    tagged = arm("GET", f"{group}/resources?$filter=tagName eq 'n' and tagValue eq '1'",
                 operator_credential, api="2021-04-01").json()["value"]
    assert [r["name"] for r in tagged] == ["id1"]
    typed = arm("GET", f"/subscriptions/{sub}/resources?$filter=resourceType eq "
                       f"'Microsoft.ManagedIdentity/userAssignedIdentities'",
                operator_credential, api="2021-04-01").json()["value"]
    assert {f"{group}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id{i}"
            for i in range(3)} <= {r["id"] for r in typed}
    identity = ManagedServiceIdentityClient(operator_credential, sub).user_assigned_identities \
        .get(unique_group, "id0")
    assert azure_env.cloud.principal(identity.principal_id).mi_resource_id == identity.id


# -- “Role Assignments - Create (Authorization REST API)” permissions, “Subscriptions - List” subscriptions ---
def test_permissions_endpoint_and_subscription_listing(azure_env, operator_credential,
                                                       grader_credential, unique_group):
    sub = azure_env.subscription_id
    group = f"/subscriptions/{sub}/resourceGroups/{unique_group}"
    arm("PUT", group, operator_credential, json={"location": "uksouth"})
    perms = f"{group}/providers/Microsoft.Authorization/permissions"
    reader = {"actions": ["*/read"], "notActions": [], "dataActions": [], "notDataActions": []}
    assert arm("GET", perms, grader_credential, api="2022-04-01").json() == {"value": [reader]}

    student = azure_env.add_service_principal("perm-student", role="Reader", scope=group)
    cred = credential(student)
    assert arm("GET", perms, cred, api="2022-04-01").json() == {"value": [reader]}
    at_sub = arm("GET", f"/subscriptions/{sub}/providers/Microsoft.Authorization/permissions",
                 cred, api="2022-04-01")
    assert at_sub.status_code == 200 and at_sub.json() == {"value": []}

    listed = arm("GET", "/subscriptions", cred, api="2022-12-01").json()
    assert listed["count"] == {"type": "Total", "value": 1}
    entry = listed["value"][0]
    assert entry["subscriptionId"] == sub and entry["tenantId"] == azure_env.tenant_id
    assert entry["state"] == "Enabled" and entry["authorizationSource"] == "RoleBased"
    assert entry["managedByTenants"] == [] and "subscriptionPolicies" in entry

    nobody = credential(azure_env.add_service_principal("no-roles"))
    assert arm("GET", "/subscriptions", nobody, api="2022-12-01").json() == {
        "value": [], "count": {"type": "Total", "value": 0}}
    lost = arm("GET", f"/subscriptions/{sub}", nobody, api="2022-12-01")
    assert lost.status_code == 404 and lost.json()["error"]["code"] == "SubscriptionNotFound"
    tenants = list(SubscriptionClient(nobody).tenants.list())
    assert [t.tenant_id for t in tenants] == [azure_env.tenant_id]
    names = [loc.name for loc in SubscriptionClient(cred).subscriptions.list_locations(sub)]
    assert "uksouth" in names


# -- “Vaults - Create Or Update (Key Vault management REST API)”, “Azure CLI release notes” Key Vault ---
def test_vault_permission_model_default_depends_on_api_version(azure_env, operator_credential,
                                                               unique_group):
    sub, tid = azure_env.subscription_id, azure_env.tenant_id
    group = f"/subscriptions/{sub}/resourceGroups/{unique_group}"
    arm("PUT", group, operator_credential, json={"location": "uksouth"})
    body = {"location": "uksouth",
            "properties": {"tenantId": tid, "sku": {"family": "A", "name": "standard"}}}
    new = KeyVaultManagementClient(operator_credential, sub).vaults.begin_create_or_update(
        unique_group, vault_name(), body).result()  # the SDK sends 2026-05-15
    assert new.properties.enable_rbac_authorization is True
    assert new.properties.soft_delete_retention_in_days == 90
    old_name = vault_name()
    old = arm("PUT", f"{group}/providers/Microsoft.KeyVault/vaults/{old_name}",
              operator_credential, api="2023-07-01", json=body)
    assert old.status_code == 200  # Key Vault answers a create with 200, not 201
    assert old.json()["properties"]["enableRbacAuthorization"] is False
    assert old.json()["properties"]["accessPolicies"] == []


def test_access_policy_add_remove_and_propagation(azure_env, operator_credential, unique_group):
    sub, tid, cloud = azure_env.subscription_id, azure_env.tenant_id, azure_env.cloud
    name = vault_name()
    kv = KeyVaultManagementClient(operator_credential, sub)
    arm("PUT", f"/subscriptions/{sub}/resourceGroups/{unique_group}", operator_credential,
        json={"location": "uksouth"})
    kv.vaults.begin_create_or_update(unique_group, name, {"location": "uksouth", "properties": {
        "tenantId": tid, "sku": {"family": "A", "name": "standard"},
        "enableRbacAuthorization": False}}).result()
    oid = str(uuid.uuid4())

    def change(kind: str, secrets: list[str]) -> None:
        kv.vaults.update_access_policy(unique_group, name, kind, {"properties": {
            "accessPolicies": [{"tenantId": tid, "objectId": oid,
                                "permissions": {"secrets": secrets}}]}})

    change("add", ["get"])
    change("add", ["list", "get"])
    policies = kv.vaults.get(unique_group, name).properties.access_policies
    assert [(p.object_id, p.permissions.secrets) for p in policies] == [(oid, ["get", "list"])]
    azure_env.knobs.propagation_delay = 60
    change("remove", ["get", "list"])
    assert kv.vaults.get(unique_group, name).properties.access_policies == []
    assert cloud.access_policies[name].at(cloud.now())[0]["objectId"] == oid  # not yet in force
    assert cloud.access_policies[name].at(cloud.now() + 61) == []


def test_soft_deleted_vault_conflicts_recovers_and_purges(azure_env, operator_credential,
                                                          unique_group):
    sub, tid, cloud = azure_env.subscription_id, azure_env.tenant_id, azure_env.cloud
    kv = KeyVaultManagementClient(operator_credential, sub)
    rc = ResourceManagementClient(operator_credential, sub)
    other = f"{unique_group}-b"
    for group in (unique_group, other):
        rc.resource_groups.create_or_update(group, {"location": "uksouth"})
    name = vault_name()
    body = {"location": "uksouth", "tags": {"k": "v"}, "properties": {
        "tenantId": tid, "sku": {"family": "A", "name": "standard"},
        "enableRbacAuthorization": False, "softDeleteRetentionInDays": 7}}
    kv.vaults.begin_create_or_update(unique_group, name, body).result()
    with pytest.raises(HttpResponseError) as err:
        kv.vaults.begin_create_or_update(other, name, body).result()
    assert err.value.status_code == 409 and err.value.error.code == "VaultAlreadyExists"

    cloud.vault_data[name] = {"secrets": "kept until purge"}
    kv.vaults.delete(unique_group, name)
    deleted = kv.vaults.get_deleted(name, "uksouth")
    assert deleted.properties.vault_id.endswith(f"/vaults/{name}")
    assert (deleted.properties.scheduled_purge_date - deleted.properties.deletion_date).days == 7
    assert deleted.properties.tags == {"k": "v"}
    assert name in [d.name for d in kv.vaults.list_deleted()]
    assert name in cloud.vault_data

    again = arm("PUT", f"/subscriptions/{sub}/resourceGroups/{unique_group}/providers/"
                       f"Microsoft.KeyVault/vaults/{name}", operator_credential,
                api="2023-07-01", json=body)
    assert again.status_code == 409 and again.json()["error"]["code"] == "ConflictError"
    assert "already exists in deleted state" in again.json()["error"]["message"]

    recover = {**body, "properties": {**body["properties"], "createMode": "recover"}}
    back = kv.vaults.begin_create_or_update(unique_group, name, recover).result()
    assert back.properties.soft_delete_retention_in_days == 7 and name not in cloud.deleted_vaults

    kv.vaults.delete(unique_group, name)
    kv.vaults.begin_purge_deleted(name, "uksouth").result()
    assert name not in cloud.deleted_vaults and name not in cloud.vault_data
    assert kv.vaults.begin_create_or_update(unique_group, name, body).result().name == name


# -- “Virtual Machines - Get (Compute REST API)” VMs, identities, power, group delete -------------
def test_vm_power_and_identity_changes(azure_env, operator_credential, unique_group):
    vault = vault_name()
    lab = build_lab(azure_env, operator_credential, unique_group, vault)
    cloud, sub = azure_env.cloud, azure_env.subscription_id
    compute = ComputeManagementClient(operator_credential, sub)
    events: list[tuple[str, str]] = []
    listener = lambda event, res: events.append((event, res["id"]))  # noqa: E731
    cloud.listeners.append(listener)
    try:
        compute.virtual_machines.begin_deallocate(unique_group, "ubuntu").result()
        view = compute.virtual_machines.instance_view(unique_group, "ubuntu")
        assert [s.code for s in view.statuses] == ["ProvisioningState/succeeded",
                                                   "PowerState/deallocated"]
        with pytest.raises(HttpResponseError) as err:
            compute.virtual_machines.begin_restart(unique_group, "ubuntu").result()
        assert err.value.status_code == 409
        compute.virtual_machines.begin_start(unique_group, "ubuntu").result()
        assert cloud.vm_power[lab["vm"].id.lower()] == "running"
    finally:
        cloud.listeners.remove(listener)
    assert events == [("vm.changed", lab["vm"].id)] * 2

    old_principal = lab["vm"].identity.principal_id
    uai = ManagedServiceIdentityClient(operator_credential, sub).user_assigned_identities \
        .create_or_update(unique_group, "extra", {"location": "uksouth"})
    both = compute.virtual_machines.begin_update(unique_group, "ubuntu", {"identity": {
        "type": "SystemAssigned, UserAssigned", "userAssignedIdentities": {uai.id: {}}}}).result()
    assert both.identity.principal_id == old_principal
    assert both.identity.user_assigned_identities[uai.id].client_id == uai.client_id
    none = compute.virtual_machines.begin_update(unique_group, "ubuntu",
                                                 {"identity": {"type": "None"}}).result()
    assert none.identity is None and cloud.principal(old_principal) is None
    again = compute.virtual_machines.begin_update(unique_group, "ubuntu",
                                                  {"identity": {"type": "SystemAssigned"}}).result()
    assert again.identity.principal_id not in (None, old_principal)

    net = NetworkManagementClient(operator_credential, sub)
    events.clear()
    cloud.listeners.append(listener)
    try:
        net.security_rules.begin_create_or_update(unique_group, "ubuntuNSG", "allow-https", {
            "properties": {"protocol": "Tcp", "sourcePortRange": "*", "destinationPortRange": "443",
                           "sourceAddressPrefix": "*", "destinationAddressPrefix": "*",
                           "access": "Allow", "priority": 1010, "direction": "Inbound"}}).result()
    finally:
        cloud.listeners.remove(listener)
    assert events == [("network.changed", lab["nsg"].id)]
    assert [r.name for r in net.network_security_groups.get(
        unique_group, "ubuntuNSG").properties.security_rules] == ["default-allow-ssh",
                                                                  "allow-https"]
    clash = arm("PUT", f"{lab['nsg'].id}/securityRules/again", operator_credential,
                api="2024-05-01", json={"properties": {"priority": 1010, "direction": "Inbound",
                                                       "access": "Deny", "protocol": "*"}})
    assert clash.status_code == 400
    subnet = net.subnets.begin_create_or_update(unique_group, "myVnet", "second", {
        "properties": {"addressPrefix": "10.0.1.0/24"}}).result()
    assert subnet.id == f"{lab['vnet'].id}/subnets/second"
    in_use = arm("DELETE", f"{lab['vnet'].id}/subnets/mySubnet", operator_credential,
                 api="2024-05-01")
    assert in_use.status_code == 400 and in_use.json()["error"]["code"] == \
        "InUseSubnetCannotBeDeleted"

    bad = arm("PATCH", f"{lab['group_id']}/providers/Microsoft.Compute/virtualMachines/ubuntu",
              operator_credential, api="2024-07-01", json={"identity": {
                  "type": "UserAssigned", "userAssignedIdentities": {f"{uai.id}x": {}}}})
    assert bad.status_code == 400
    nic = arm("PUT", f"{lab['group_id']}/providers/Microsoft.Network/networkInterfaces/nic2",
              operator_credential, api="2024-05-01", json={"location": "uksouth", "properties": {
                  "ipConfigurations": [{"name": "c", "properties": {"subnet": {
                      "id": f"{lab['vnet'].id}/subnets/nope"}}}]}})
    assert nic.status_code == 400 and nic.json()["error"]["code"] == "InvalidResourceReference"
    nic_in_use = arm("DELETE", lab["nic"].id, operator_credential, api="2024-05-01")
    assert nic_in_use.status_code == 400 and nic_in_use.json()["error"]["code"] == "NicInUse"


def test_group_delete_cascades(azure_env, operator_credential, unique_group):
    vault = vault_name()
    lab = build_lab(azure_env, operator_credential, unique_group, vault)
    cloud, sub = azure_env.cloud, azure_env.subscription_id
    principal = lab["vm"].identity.principal_id
    events: list[tuple[str, dict]] = []
    listener = lambda event, res: events.append((event, res))  # noqa: E731
    cloud.listeners.append(listener)
    try:
        ResourceManagementClient(operator_credential, sub).resource_groups.begin_delete(
            unique_group).result()
    finally:
        cloud.listeners.remove(listener)
    assert [r["id"] for e, r in events if e == "vm.deleted"] == [lab["vm"].id]
    assert {r["type"] for e, r in events if e == "network.changed"} >= {
        "Microsoft.Network/networkInterfaces", "Microsoft.Network/networkSecurityGroups",
        "Microsoft.Network/publicIPAddresses"}
    assert cloud.principal(principal) is None
    assert lab["vm"].id.lower() not in cloud.vm_power
    prefix = lab["group_id"].lower() + "/"
    assert not [k for k in cloud.resources if k.startswith(prefix)]
    assert not [ra for ra in cloud.visible_role_assignments()
                if ra.scope.lower().startswith(lab["group_id"].lower())]
    assert vault in cloud.deleted_vaults
    gone = arm("GET", lab["group_id"], operator_credential)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "ResourceGroupNotFound"
