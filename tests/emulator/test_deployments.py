"""Template deployments (Microsoft.Resources/deployments) with the SDK's poller and raw requests:
the long-running PUT, the template language, dependsOn, failures, RBAC of the deploying principal.
"""

from __future__ import annotations

import time

import pytest
from azure.core.exceptions import HttpResponseError
from azure.mgmt.resource.resources import ResourceManagementClient
from test_arm import ARM, arm, credential

from pytest_milab.emulator import rbac
from pytest_milab.emulator.arm.templates import (
    Evaluator,
    Scope,
    TemplateError,
    loads_jsonc,
    resolve_parameters,
)

SCHEMA = "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#"


def template(resources: list, **sections) -> dict:
    return {"$schema": SCHEMA, "contentVersion": "1.0.0.0", "resources": resources, **sections}


def pip(name: str, **extra) -> dict:
    return {"type": "Microsoft.Network/publicIPAddresses", "apiVersion": "2024-05-01",
            "name": name, "location": "[resourceGroup().location]", "sku": {"name": "Standard"},
            "properties": {"publicIPAllocationMethod": "Static"}, **extra}


def nsg(name: str, **extra) -> dict:
    return {"type": "Microsoft.Network/networkSecurityGroups", "apiVersion": "2015-06-15",
            "name": name, "location": "[resourceGroup().location]", **extra}


def deployment_path(azure, group: str, name: str) -> str:
    return (f"/subscriptions/{azure.subscription_id}/resourcegroups/{group}/providers/"
            f"Microsoft.Resources/deployments/{name}")


def wait_done(azure, cred, path: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = arm("GET", path, cred).json()
        if body["properties"]["provisioningState"] in ("Succeeded", "Failed", "Canceled"):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


@pytest.fixture
def group(azure_env, operator_credential, unique_group):
    client = ResourceManagementClient(operator_credential, azure_env.subscription_id)
    client.resource_groups.create_or_update(unique_group, {"location": "uksouth"})
    yield unique_group
    client.resource_groups.begin_delete(unique_group).result()


# -- the template language on its own ---------------------------------------------------------------
def scope(**kw) -> Scope:
    group = {"id": "/subscriptions/s1/resourceGroups/rg", "name": "rg", "location": "uksouth",
             "type": "Microsoft.Resources/resourceGroups"}
    return Scope(subscription_id="s1", tenant_id="t1", group=group, deployment_name="d", **kw)


def test_expressions_and_functions():
    ev = Evaluator(scope(parameters={"name": "Web", "n": 3},
                         raw_variables={"lower": "[toLower(parameters('name'))]",
                                        "obj": {"a": [1, "[variables('lower')]"]}}))
    assert ev.value("[concat(variables('lower'), '-', string(parameters('n')))]") == "web-3"
    assert ev.value("[format('{0}-{1:D3}', 'vm', 7)]") == "vm-007"
    assert ev.value("[variables('obj').a[1]]") == "web"
    assert ev.value("[if(equals(parameters('n'), 3), 'three', 'other')]") == "three"
    assert ev.value("[json('{\"k\": [1, 2]}').k[1]]") == 2
    assert ev.value("[resourceId('Microsoft.Network/virtualNetworks/subnets', 'v', 's')]") == \
        "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/s"
    assert ev.value("[subscription().subscriptionId]") == "s1"
    assert ev.value("[[not an expression]") == "[not an expression]"
    unique = ev.value("[uniqueString(resourceGroup().id)]")
    assert len(unique) == 13 and unique == ev.value("[uniqueString(resourceGroup().id)]")
    guid = ev.value("[guid('a', 'b')]")
    assert len(guid) == 36 and guid != ev.value("[guid('a', 'c')]")
    with pytest.raises(TemplateError, match="'frobnicate' is not expected"):
        ev.value("[frobnicate(1)]")
    with pytest.raises(TemplateError, match="not valid"):
        ev.value("[concat('a',]")
    with pytest.raises(TemplateError, match="copyIndex"):
        ev.value("[copyIndex()]")


def test_parameters_defaults_allowed_values_and_types():
    t = {"parameters": {"size": {"type": "string", "allowedValues": ["S", "M"],
                                 "defaultValue": "S"},
                        "count": {"type": "int"}, "pw": {"type": "securestring"}}}
    got = resolve_parameters(t, {"count": {"value": 2}, "pw": {"value": "x"}}, scope())
    assert got == {"size": "S", "count": 2, "pw": "x"}
    with pytest.raises(TemplateError, match="not part of the allowed value"):
        resolve_parameters(t, {"size": {"value": "L"}, "count": {"value": 1},
                               "pw": {"value": "x"}}, scope())
    with pytest.raises(TemplateError, match="'count' is not provided"):
        resolve_parameters(t, {"pw": {"value": "x"}}, scope())
    with pytest.raises(TemplateError, match="do not correspond"):
        resolve_parameters(t, {"count": {"value": 1}, "pw": {"value": "x"},
                               "other": {"value": 1}}, scope())


def test_jsonc_bodies_as_the_cli_sends_them():
    body = b'{"properties": {"mode": "Incremental", template:{\r\n  // note\n  "a": [1,],}}}'
    assert loads_jsonc(body) == {"properties": {"mode": "Incremental", "template": {"a": [1]}}}


# -- deployments through ARM -----------------------------------------------------------------------
def test_deployment_is_long_running_and_uses_parameters_copy_and_reference(
        azure_env, operator_credential, group):
    t = template(
        [pip("[concat(parameters('prefix'), copyIndex(1))]",
             copy={"name": "ips", "count": "[parameters('count')]"}),
         nsg("[variables('nsgName')]", dependsOn=["ips"], properties={"securityRules": [
             {"name": "ssh", "properties": {
                 "priority": 1000, "protocol": "Tcp", "access": "Allow", "direction": "Inbound",
                 "sourceAddressPrefix": "*", "sourcePortRange": "*",
                 "destinationAddressPrefix": "*", "destinationPortRange": "22"}}]})],
        parameters={"prefix": {"type": "string", "defaultValue": "ip"},
                    "count": {"type": "int", "allowedValues": [1, 2, 3]},
                    "token": {"type": "securestring"}},
        variables={"nsgName": "[concat(parameters('prefix'), '-nsg')]"},
        outputs={"first": {"type": "string", "value": "[reference(resourceId("
                           "'Microsoft.Network/publicIPAddresses', 'ip1')).ipAddress]"},
                 "nsgType": {"type": "string",
                             "value": "[reference('ip-nsg', '2024-05-01', 'Full').type]"},
                 "count": {"type": "int", "value": "[length(variables('nsgName'))]"}})
    path = deployment_path(azure_env, group, "d1")
    r = arm("PUT", path, operator_credential, json={"properties": {
        "mode": "Incremental", "template": t,
        "parameters": {"count": {"value": 2}, "token": {"value": "s3cr3t"}}}})
    assert r.status_code == 201, r.text
    assert r.json()["properties"]["provisioningState"] == "Accepted"
    status_url = r.headers["Azure-AsyncOperation"]
    assert "/operationStatuses/" in status_url
    assert r.headers.get("Retry-After") or r.headers.get("x-ms-retry-after-ms")
    assert "s3cr3t" not in r.text
    seen = set()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        token = operator_credential.get_token(f"{ARM}/.default").token
        import requests
        s = requests.get(status_url, headers={"Authorization": f"Bearer {token}"},
                         timeout=10).json()["status"]
        seen.add(s)
        if s in ("Succeeded", "Failed"):
            break
        time.sleep(0.01)
    assert "Succeeded" in seen and seen <= {"Accepted", "Running", "Succeeded"}
    done = arm("GET", path, operator_credential).json()
    props = done["properties"]
    assert props["provisioningState"] == "Succeeded"
    assert props["parameters"]["token"] == {"type": "SecureString"}
    assert props["parameters"]["count"] == {"type": "Int", "value": 2}
    assert props["outputs"]["first"]["value"].startswith("127.10.")
    assert props["outputs"]["nsgType"]["value"] == "Microsoft.Network/networkSecurityGroups"
    assert props["outputs"]["count"] == {"type": "Int", "value": 6}
    ids = [o["id"].rsplit("/", 1)[1] for o in props["outputResources"]]
    assert sorted(ids) == ["ip-nsg", "ip1", "ip2"]
    assert ids[-1] == "ip-nsg"  # after the loop it depends on
    assert "s3cr3t" not in arm("GET", path, operator_credential).text
    ops = arm("GET", f"/subscriptions/{azure_env.subscription_id}/resourcegroups/{group}/"
              "deployments/d1/operations", operator_credential).json()["value"]
    assert {o["properties"]["targetResource"]["resourceName"] for o in ops} == \
        {"ip1", "ip2", "ip-nsg"}
    assert all(o["properties"]["provisioningState"] == "Succeeded" for o in ops)
    listed = arm("GET", path.rsplit("/", 1)[0], operator_credential).json()["value"]
    assert [d["name"] for d in listed] == ["d1"]
    nsg_json = arm("GET", f"/subscriptions/{azure_env.subscription_id}/resourceGroups/{group}/"
                   "providers/Microsoft.Network/networkSecurityGroups/ip-nsg",
                   operator_credential, api="2024-05-01").json()
    assert nsg_json["properties"]["securityRules"][0]["name"] == "ssh"
    assert arm("DELETE", path, operator_credential).status_code in (200, 202, 204)
    assert arm("GET", path, operator_credential).json()["error"]["code"] == "DeploymentNotFound"
    # The resources stay: deleting a deployment removes only its history.
    assert arm("GET", nsg_json["id"], operator_credential, api="2024-05-01").status_code == 200


def test_sdk_poller_deploys_and_validates(azure_env, operator_credential, group):
    """azure-mgmt-resource 26 has no deployments client: its generic resources client's poller
    follows the same Azure-AsyncOperation protocol."""
    client = ResourceManagementClient(operator_credential, azure_env.subscription_id)
    t = template([nsg("a"), nsg("b", dependsOn=["[resourceId('Microsoft.Network/"
                                                 "networkSecurityGroups', 'a')]"])],
                 outputs={"id": {"type": "string", "value": "[resourceId("
                                 "'Microsoft.Network/networkSecurityGroups', 'b')]"}})
    body = {"properties": {"mode": "Incremental", "template": t}}
    path = deployment_path(azure_env, group, "sdk")
    valid = arm("POST", path + "/validate", operator_credential, json=body)
    assert valid.status_code == 200, valid.text
    assert [r["id"].rsplit("/", 1)[1] for r in valid.json()["properties"]["validatedResources"]] \
        == ["a", "b"]
    result = client.resources.begin_create_or_update_by_id(
        path.lstrip("/"), {"properties": body["properties"]}, api_version="2021-04-01",
        polling_interval=0.05).result()
    assert result.properties["provisioningState"] == "Succeeded"
    assert result.properties["outputs"]["id"]["value"].endswith("/networkSecurityGroups/b")


def test_template_errors_are_invalid_template(azure_env, operator_credential, group):
    path = deployment_path(azure_env, group, "bad")
    cases = [
        (template([nsg("[nosuchfunction('x')]")]), "nosuchfunction"),
        (template([nsg("a", dependsOn=["missing"])]), "'missing' is not defined"),
        (template([nsg("a", dependsOn=["b"]), nsg("b", dependsOn=["a"])]), "Circular"),
        (template([nsg("a")], parameters={"p": {"type": "string", "allowedValues": ["x"]}}),
         "'p' is not provided"),
    ]
    for t, text in cases:
        r = arm("PUT", path, operator_credential,
                json={"properties": {"mode": "Incremental", "template": t}})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "InvalidTemplate" and text in r.json()["error"]["message"]
    r = arm("POST", path + "/validate", operator_credential,
            json={"properties": {"mode": "Incremental", "template": cases[0][0]}})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "InvalidTemplate")
    assert arm("GET", path, operator_credential).status_code == 404


def test_a_failing_resource_fails_the_deployment_with_details(azure_env, operator_credential,
                                                              group):
    bad_rule = {"name": "r", "properties": {"priority": 5, "protocol": "Tcp", "access": "Allow",
                                            "direction": "Inbound", "sourceAddressPrefix": "*",
                                            "sourcePortRange": "*", "destinationPortRange": "22",
                                            "destinationAddressPrefix": "*"}}
    t = template([nsg("broken", properties={"securityRules": [bad_rule]}),
                  nsg("after", dependsOn=["broken"]), nsg("independent")])
    path = deployment_path(azure_env, group, "fails")
    r = arm("PUT", path, operator_credential,
            json={"properties": {"mode": "Incremental", "template": t}})
    assert r.status_code == 201
    done = wait_done(azure_env, operator_credential, path)
    error = done["properties"]["error"]
    assert done["properties"]["provisioningState"] == "Failed"
    assert error["code"] == "DeploymentFailed"
    assert "At least one resource deployment operation failed" in error["message"]
    [detail] = error["details"]
    assert detail["code"] == "SecurityRuleInvalidPriority"
    assert detail["target"].endswith("/networkSecurityGroups/broken")
    names = {r["name"] for r in arm("GET", f"/subscriptions/{azure_env.subscription_id}/"
                                    f"resourceGroups/{group}/resources",
                                    operator_credential).json()["value"]}
    assert names == {"independent"}  # the dependent one never started


def test_deployments_run_as_the_deploying_principal(azure_env, operator_credential, group):
    sub = azure_env.subscription_id
    t = template([nsg("x")])
    body = {"properties": {"mode": "Incremental", "template": t}}
    # A Reader may not deploy at all.
    reader = credential(azure_env.grader)
    r = arm("PUT", deployment_path(azure_env, group, "by-reader"), reader, json=body)
    assert (r.status_code, r.json()["error"]["code"]) == (403, "AuthorizationFailed")
    assert "Microsoft.Resources/deployments/write" in r.json()["error"]["message"]
    # May deploy, may not write networks: the deployment runs and its resource is refused.
    officer = azure_env.add_service_principal("kv-officer")
    azure_env.cloud.assign_role(
        scope=f"/subscriptions/{sub}/resourceGroups/{group}",
        role_definition_id=f"/subscriptions/{sub}/providers/Microsoft.Authorization/"
                           f"roleDefinitions/{rbac.KEY_VAULT_SECRETS_OFFICER}",
        principal_id=officer.object_id, immediate=True)
    path = deployment_path(azure_env, group, "by-officer")
    r = arm("PUT", path, credential(officer), json=body)
    assert r.status_code == 201, r.text
    done = wait_done(azure_env, operator_credential, path)
    [detail] = done["properties"]["error"]["details"]
    assert detail["code"] == "AuthorizationFailed"
    assert officer.object_id in detail["message"]
    assert "Microsoft.Network/networkSecurityGroups/write" in detail["message"]


def test_subscription_scope_deployment_creates_a_group(azure_env, operator_credential,
                                                       unique_group):
    sub = azure_env.subscription_id
    t = {"$schema": "https://schema.management.azure.com/schemas/2018-05-01/"
                    "subscriptionDeploymentTemplate.json#", "contentVersion": "1.0.0.0",
         "resources": [{"type": "Microsoft.Resources/resourceGroups", "apiVersion": "2021-04-01",
                        "name": unique_group, "location": "westus",
                        "tags": {"made": "[deployment().name]"}},
                       {"type": "Microsoft.Resources/deployments", "apiVersion": "2022-09-01",
                        "name": "in-group", "resourceGroup": unique_group,
                        "dependsOn": [f"[resourceId('Microsoft.Resources/resourceGroups', "
                                      f"'{unique_group}')]"],
                        "properties": {"mode": "Incremental",
                                       "expressionEvaluationOptions": {"scope": "inner"},
                                       "template": template([nsg("made-by-sub")])}}]}
    path = f"/subscriptions/{sub}/providers/Microsoft.Resources/deployments/sub-{unique_group}"
    r = arm("PUT", path, operator_credential,
            json={"properties": {"mode": "Incremental", "template": t}})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "InvalidDeploymentLocation")
    r = arm("PUT", path, operator_credential, json={"location": "uksouth", "properties": {
        "mode": "Incremental", "template": t}})
    assert r.status_code == 201, r.text
    done = wait_done(azure_env, operator_credential, path)
    assert done["properties"]["provisioningState"] == "Succeeded", done["properties"].get("error")
    group = arm("GET", f"/subscriptions/{sub}/resourcegroups/{unique_group}",
                operator_credential).json()
    assert (group["location"], group["tags"]) == ("westus", {"made": f"sub-{unique_group}"})
    made = arm("GET", f"/subscriptions/{sub}/resourceGroups/{unique_group}/providers/"
               "Microsoft.Network/networkSecurityGroups/made-by-sub", operator_credential,
               api="2024-05-01")
    assert made.status_code == 200
    ResourceManagementClient(operator_credential, sub).resource_groups.begin_delete(
        unique_group).result()


def test_sdk_poller_sees_failure(azure_env, operator_credential, group):
    client = ResourceManagementClient(operator_credential, azure_env.subscription_id)
    t = template([pip("p", properties={"publicIPAllocationMethod": "Dynamic"})])
    poller = client.resources.begin_create_or_update_by_id(
        deployment_path(azure_env, group, "sdk-fail").lstrip("/"),
        {"properties": {"mode": "Incremental", "template": t}}, api_version="2021-04-01",
        polling_interval=0.05)
    with pytest.raises(HttpResponseError) as info:
        poller.result()
    assert "DeploymentFailed" in str(info.value)
    assert "StandardSkuPublicIPAddressesCannotBeDynamic" in str(info.value)


def test_nested_children_extension_resources_and_nested_deployments(azure_env,
                                                                    operator_credential, group):
    sub = azure_env.subscription_id
    sp = azure_env.add_service_principal("reader-by-template")
    reader = f"/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/" \
             f"{rbac.READER}"
    inner = template([nsg("[parameters('name')]")],
                     parameters={"name": {"type": "string"}},
                     outputs={"made": {"type": "string", "value": "[parameters('name')]"}})
    t = template([
        {"type": "Microsoft.Network/virtualNetworks", "apiVersion": "2015-06-15", "name": "vnet",
         "location": "[resourceGroup().location]",
         "properties": {"addressSpace": {"addressPrefixes": ["10.0.0.0/16"]}},
         "resources": [{"type": "subnets", "apiVersion": "2024-05-01", "name": "default",
                        "dependsOn": ["vnet"],
                        "properties": {"addressPrefix": "10.0.1.0/24"}}]},
        {"type": "Microsoft.Authorization/roleAssignments", "apiVersion": "2022-04-01",
         "name": "[guid(resourceGroup().id, 'reader')]",
         "scope": "[resourceId('Microsoft.Network/virtualNetworks', 'vnet')]",
         "dependsOn": ["vnet"],
         "properties": {"roleDefinitionId": reader, "principalId": sp.object_id,
                        "principalType": "ServicePrincipal"}},
        {"type": "Microsoft.Resources/deployments", "apiVersion": "2015-01-01", "name": "inner",
         "properties": {"mode": "Incremental", "expressionEvaluationOptions": {"scope": "inner"},
                        "parameters": {"name": {"value": "from-inner"}}, "template": inner}},
    ], outputs={"innerMade": {"type": "string",
                              "value": "[reference('inner').outputs.made.value]"}})
    path = deployment_path(azure_env, group, "outer")
    r = arm("PUT", path, operator_credential, json={"properties": {"mode": "Incremental",
                                                                   "template": t}})
    assert r.status_code == 201, r.text
    done = wait_done(azure_env, operator_credential, path)
    assert done["properties"]["provisioningState"] == "Succeeded", done["properties"].get("error")
    assert done["properties"]["outputs"]["innerMade"]["value"] == "from-inner"
    rg = f"/subscriptions/{sub}/resourceGroups/{group}"
    subnet = arm("GET", f"{rg}/providers/Microsoft.Network/virtualNetworks/vnet/subnets/default",
                 operator_credential, api="2024-05-01").json()
    assert subnet["properties"]["addressPrefix"] == "10.0.1.0/24"
    assignments = arm("GET", f"{rg}/providers/Microsoft.Network/virtualNetworks/vnet/providers/"
                      "Microsoft.Authorization/roleAssignments", operator_credential,
                      api="2022-04-01").json()["value"]
    assert sp.object_id in {a["properties"]["principalId"] for a in assignments}
    nested = arm("GET", deployment_path(azure_env, group, "inner"), operator_credential).json()
    assert nested["properties"]["provisioningState"] == "Succeeded"
