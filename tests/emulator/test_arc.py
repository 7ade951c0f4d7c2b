"""On-premises machines with Azure Arc over real SSH (Fabric): the machine, `azcmagent`, HIMDS's
challenge with curl and azure-identity, RBAC and Key Vault for the machine's identity, ARM's
Microsoft.HybridCompute/machines, and the knobs.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass

import fabric
import jwt
import paramiko
import pytest
import requests
from test_vms import insert_vault
from vmkit import client_key, wait_until

from pytest_milab.emulator.state import arm_key

HIMDS_TOKEN = ("http://localhost:40342/metadata/identity/oauth2/token?api-version=2020-06-01"
               "&resource={}")
ARM_RESOURCE = "https%3A%2F%2Fmanagement.azure.com%2F"
VAULT_RESOURCE = "https%3A%2F%2Fvault.azure.net"
# The documented two-step request: the first answer names the key file, sudo reads it.
TWO_STEP = ('url="' + HIMDS_TOKEN + '"; '
            'realm=$(curl -s -D - -o /dev/null -H Metadata:true "$url" '
            "| grep -i '^www-authenticate:' | cut -d= -f2 | tr -d '\\r'); "
            'key=$(sudo cat "$realm"); '
            'curl -s -H Metadata:true -H "Authorization: Basic $key" "$url"')
READER = "acdd72a7-3385-48ef-bd42-f606fba81ae7"
# Only a local Azure running as root can keep the key file from the machine's sessions (they run
# without capabilities) and write it where azure-identity looks for it.
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the local Azure is not running as "
                                "root: its machines' sessions cannot be kept from the key file")


@dataclass
class Box:
    """An on-premises machine as a student reaches it."""

    azure: object
    name: str
    address: str
    port: int
    user: str
    pkey: paramiko.PKey

    def connect(self, pkey=None, timeout: float = 5) -> fabric.Connection:
        return fabric.Connection(
            self.address, user=self.user, port=self.port, connect_timeout=timeout,
            connect_kwargs={"pkey": pkey or self.pkey, "look_for_keys": False,
                            "allow_agent": False},
            config=fabric.Config(overrides={"load_ssh_configs": False}))

    def run(self, command: str):
        with self.connect() as conn:
            return conn.run(command, hide=True, warn=True, in_stream=False)

    def token(self, resource: str = ARM_RESOURCE) -> dict:
        r = self.run(TWO_STEP.format(resource))
        return json.loads(r.stdout or "{}")


def add_box(azure, name: str, *keys: str) -> Box:
    pkey, public_key = client_key()
    made = azure.add_machine(name, public_keys=[public_key, *keys])
    return Box(azure, name, made.address, made.port, made.user, pkey)


def add_group(azure, name: str) -> str:
    gid = f"/subscriptions/{azure.subscription_id}/resourceGroups/{name}"
    with azure.cloud.lock:
        azure.cloud.resource_groups[arm_key(gid)] = {
            "id": gid, "name": name, "type": "Microsoft.Resources/resourceGroups",
            "location": "uksouth", "properties": {"provisioningState": "Succeeded"}}
    return gid


def connect_cmd(azure, group: str, sp, *, sudo: bool = True) -> str:
    return (f"{'sudo ' if sudo else ''}azcmagent connect --resource-group {group} "
            f"--tenant-id {azure.tenant_id} --location uksouth "
            f"--subscription-id {azure.subscription_id} "
            f"--service-principal-id {sp.client_id} --service-principal-secret {sp.client_secret}")


def arm(azure, method: str, path: str, token: str | None = None, *,
        version: str = "2024-07-10", **kwargs) -> requests.Response:
    """ARM through the host's proxy, as any client outside the machine."""
    session = requests.Session()
    session.trust_env = False
    session.proxies = {"https": f"http://127.0.0.1:{azure.proxy.port}"}
    session.verify = str(azure.ca_path)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return session.request(method, f"https://management.azure.com{path}?api-version={version}",
                           headers=headers, timeout=10, **kwargs)


@pytest.fixture(scope="module")
def grader_key():
    return client_key()


@pytest.fixture(scope="module")
def onprem(local_azure, grader_key):
    """A machine onboarded into its own group by a service principal with the onboarding role."""
    group = f"rg-arc-{uuid.uuid4().hex[:8]}"
    gid = add_group(local_azure, group)
    box = add_box(local_azure, f"onprem-{uuid.uuid4().hex[:6]}", grader_key[1])
    onboarder = local_azure.add_service_principal(
        "arc-onboarding", role="Azure Connected Machine Onboarding", scope=gid)
    r = box.run(connect_cmd(local_azure, group, onboarder))
    assert r.exited == 0, r.stderr
    box.group, box.group_id, box.onboarder = group, gid, onboarder
    box.resource_id = f"{gid}/providers/Microsoft.HybridCompute/machines/{box.name}"
    with local_azure.cloud.lock:
        box.principal_id = local_azure.cloud.resources[arm_key(box.resource_id)][
            "identity"]["principalId"]
    yield box
    local_azure.remove_machine(box.name)


def operator_token(credential) -> str:
    return credential.get_token("https://management.azure.com/.default").token


# -- the machine itself ---------------------------------------------------------------------------
def test_a_machine_outside_azure(local_azure, grader_key):
    box = add_box(local_azure, "plain-server")
    try:
        assert box.run("hostname").stdout == "plain-server\n"
        assert box.run("echo out; exit 3").exited == 3
        # No IMDS on-premises: the connection closes unanswered (curl 52), no JSON comes back.
        r = box.run("curl -sS -m 5 -H Metadata:true "
                    "'http://169.254.169.254/metadata/instance?api-version=2021-02-01'")
        assert r.exited != 0 and r.stdout == ""
        assert "IDENTITY_ENDPOINT" not in box.run("env").stdout
        # Nothing of it is in ARM until it is onboarded.
        with local_azure.cloud.lock:
            assert not [k for k in local_azure.cloud.resources if k.endswith("/plain-server")]
        other, _ = client_key()
        with pytest.raises(paramiko.AuthenticationException):
            box.connect(pkey=other).open()
    finally:
        local_azure.remove_machine("plain-server")


def test_the_grader_key_logs_in_too(onprem, grader_key):
    with onprem.connect(pkey=grader_key[0]) as conn:
        assert conn.run("echo $USER", hide=True, in_stream=False).stdout == "azureuser\n"


# -- azcmagent ------------------------------------------------------------------------------------
def test_connect_created_the_resource_and_set_the_environment(local_azure, onprem):
    env = onprem.run("env").stdout
    assert "IDENTITY_ENDPOINT=http://localhost:40342/metadata/identity/oauth2/token\n" in env
    assert "IMDS_ENDPOINT=http://localhost:40342\n" in env
    shown = onprem.run("azcmagent show")
    assert shown.exited == 0
    assert "Agent Status                            : Connected" in shown.stdout
    assert f"Resource Group Name                     : {onprem.group}" in shown.stdout
    assert f": {local_azure.subscription_id}" in shown.stdout
    as_json = json.loads(onprem.run("azcmagent show --json").stdout)
    assert (as_json["resourceId"], as_json["status"]) == (onprem.resource_id, "Connected")
    sp = local_azure.cloud.principal(onprem.principal_id)
    assert sp is not None and sp.kind == "ManagedIdentity"


def test_connect_refuses_bad_arguments_missing_rights_and_no_sudo(local_azure):
    box = add_box(local_azure, "refuser")
    group = f"rg-arc-{uuid.uuid4().hex[:8]}"
    gid = add_group(local_azure, group)
    try:
        reader = local_azure.add_service_principal("arc-reader", role="Reader", scope=gid)
        for command, needle in (
                ("sudo azcmagent connect --resource-group g --tenant-id t", '"location"'),
                ("sudo azcmagent connect --nope", "unknown flag: --nope"),
                ("sudo azcmagent frobnicate", 'unknown command "frobnicate"'),
                (connect_cmd(local_azure, group, reader, sudo=False), "elevated privileges"),
                (connect_cmd(local_azure, group, reader), "AuthorizationFailed")):
            r = box.run(command)
            assert r.exited != 0, command
            assert len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr, r.stderr
        assert "Disconnected" in box.run("azcmagent show").stdout
        bad = type(reader)(reader.tenant_id, reader.client_id, "wrong-secret", reader.object_id)
        r = box.run(connect_cmd(local_azure, group, bad))
        assert r.exited != 0 and "AZCM0041" in r.stderr
    finally:
        local_azure.remove_machine("refuser")


# -- HIMDS ----------------------------------------------------------------------------------------
def test_himds_is_only_for_the_machine_s_own_processes(local_azure, onprem):
    """The machine's egress proxy (its only way to HIMDS) asks for the machine's secret."""
    live = local_azure.machines.live(onprem.name)
    session = requests.Session()
    session.trust_env = False
    url = "http://localhost:40342/metadata/instance?api-version=2021-02-01"
    session.proxies = {"http": f"http://127.0.0.1:{live.proxy.port}"}
    refused = session.get(url, headers={"Metadata": "true"}, timeout=10)
    assert refused.status_code == 407 and "Basic" in refused.headers["Proxy-Authenticate"]
    session.proxies = {"http": live.proxy_url()}
    assert session.get(url, headers={"Metadata": "true"}, timeout=10).status_code == 200


def test_the_two_step_challenge_gets_a_management_token(onprem):
    body = onprem.token()
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["aud"] == "https://management.azure.com/"
    assert claims["oid"] == onprem.principal_id
    assert claims["xms_mirid"] == onprem.resource_id.replace("/resourceGroups/",
                                                             "/resourcegroups/")
    assert body["token_type"] == "Bearer" and int(body["expires_in"]) > 3600


@needs_root
def test_without_the_key_it_is_401_and_the_key_file_is_root_and_himds_only(onprem):
    r = onprem.run("curl -s -D - -H Metadata:true '" + HIMDS_TOKEN.format(ARM_RESOURCE) + "'")
    head, _, _ = r.stdout.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 401")
    realm = [ln.split("=", 1)[1] for ln in head.split("\r\n")
             if ln.lower().startswith("www-authenticate: basic realm=")][0]
    assert realm.startswith("/var/opt/azcmagent/tokens/") and realm.endswith(".key")
    denied = onprem.run(f"cat {realm}")
    assert denied.exited != 0 and "Permission denied" in denied.stderr
    assert onprem.run(f"stat -c %a {realm}").stdout == "640\n"
    key = onprem.run(f"sudo cat {realm}").stdout
    assert len(key) == 64
    def fetch(key: str) -> str:
        return onprem.run("curl -s -o /dev/null -w '%{http_code}' -H Metadata:true "
                          f"-H 'Authorization: Basic {key}' "
                          f"'{HIMDS_TOKEN.format(ARM_RESOURCE)}'").stdout
    assert fetch("not-the-key") == "401"
    assert fetch(key) == "200"
    assert fetch(key) == "401"  # each key works once
    assert onprem.run(f"sudo test -e {realm}").exited == 1  # and is gone once used
    # Nor can a session rewrite the agent's state to borrow another identity.
    for variable, file in (("STATE", "agentconfig.json"), ("ETC", "environment")):
        r = onprem.run(f"f=$(sed -n 's/^export AZCMAGENT_{variable}_DIR=//p' "
                       f"$(command -v azcmagent))/{file}; cat $f >/dev/null && echo X=1 >> $f")
        assert r.exited != 0 and "Permission denied" in r.stderr, file


def test_instance_metadata(local_azure, onprem):
    r = onprem.run("curl -s -H Metadata:true "
                   "'http://localhost:40342/metadata/instance?api-version=2020-06-01'")
    compute = json.loads(r.stdout)["compute"]
    assert compute["resourceId"] == onprem.resource_id
    assert (compute["name"], compute["location"]) == (onprem.name, "uksouth")
    assert compute["subscriptionId"] == local_azure.subscription_id
    assert compute["resourceGroupName"] == onprem.group
    assert compute["tags"] == ""
    r = onprem.run("curl -s -o /dev/null -w '%{http_code}' "
                   "'http://localhost:40342/metadata/instance?api-version=2020-06-01'")
    assert r.stdout == "400"  # the Metadata header is required


@needs_root
def test_azure_identity_inside_the_machine_gets_a_token_unchanged(onprem):
    script = ("from azure.identity import ManagedIdentityCredential\n"
              "import jwt\n"
              "t = ManagedIdentityCredential().get_token('https://management.azure.com/.default')\n"
              "print(jwt.decode(t.token, options={'verify_signature': False})['oid'])\n")
    r = onprem.run(f"sudo python3 -c \"{script}\"")
    assert r.exited == 0, r.stderr
    assert r.stdout.strip() == onprem.principal_id
    # Without root (or the himds group) the key file is out of reach, as Azure documents.
    r = onprem.run(f"python3 -c \"{script}\"")
    assert r.exited != 0 and "Permission denied" in r.stderr


# -- the identity in RBAC and Key Vault -------------------------------------------------------------
def list_group(box: Box) -> tuple[str, str]:
    url = (f"https://management.azure.com/subscriptions/{box.azure.subscription_id}/"
           f"resourceGroups/{box.group}/resources?api-version=2021-04-01")
    r = box.run(f"token=$({TWO_STEP.format(ARM_RESOURCE)} | python3 -c "
                "'import json,sys; print(json.load(sys.stdin)[\"access_token\"])'); "
                f"curl -s -o out.json -w '%{{http_code}}' -H \"Authorization: Bearer $token\" "
                f"'{url}'; echo; cat out.json")
    status, _, body = r.stdout.partition("\n")
    return status, body


def test_listing_the_group_needs_a_reader_assignment(azure_env, operator_credential, onprem):
    from azure.mgmt.authorization import AuthorizationManagementClient

    status, body = list_group(onprem)
    assert status == "403" and json.loads(body)["error"]["code"] == "AuthorizationFailed"
    sub = azure_env.subscription_id
    AuthorizationManagementClient(operator_credential, sub).role_assignments.create(
        onprem.group_id, str(uuid.uuid4()), {"properties": {
            "roleDefinitionId": f"/subscriptions/{sub}/providers/Microsoft.Authorization/"
                                f"roleDefinitions/{READER}",
            "principalId": onprem.principal_id, "principalType": "ServicePrincipal"}})
    status, body = list_group(onprem)
    assert status == "200"
    assert onprem.name in {item["name"] for item in json.loads(body)["value"]}


def test_a_key_vault_secret_needs_an_access_policy(azure_env, operator_credential, onprem):
    from azure.keyvault.secrets import SecretClient
    from azure.mgmt.keyvault import KeyVaultManagementClient

    name = f"kv-{os.urandom(4).hex()}"
    insert_vault(azure_env, name, onprem.group)
    SecretClient(f"https://{name}.vault.azure.net", operator_credential).set_secret(
        "portal-phrase", "TheCakeIsALie")
    read = (f"token=$({TWO_STEP.format(VAULT_RESOURCE)} | python3 -c "
            "'import json,sys; print(json.load(sys.stdin)[\"access_token\"])'); "
            "curl -s -H \"Authorization: Bearer $token\" "
            f"https://{name}.vault.azure.net/secrets/portal-phrase?api-version=7.4")
    assert json.loads(onprem.run(read).stdout)["error"]["code"] == "Forbidden"
    KeyVaultManagementClient(operator_credential, azure_env.subscription_id) \
        .vaults.update_access_policy(onprem.group, name, "add", {"properties": {"accessPolicies": [{
            "tenantId": azure_env.tenant_id, "objectId": onprem.principal_id,
            "permissions": {"secrets": ["get"]}}]}})
    assert json.loads(onprem.run(read).stdout)["value"] == "TheCakeIsALie"


@pytest.mark.skipif(not os.environ.get("MILAB_AZ_CLI"),
                    reason="no Azure CLI configured: set MILAB_AZ_CLI to an `az` in its own venv "
                           "(tox -e azcli does)")
def test_az_login_identity_on_the_machine(local_azure, onprem):
    r = onprem.run("curl -sL https://aka.ms/InstallAzureCLIDeb | sudo bash")
    assert r.exited == 0, r.stderr
    # `az login --identity` lists the subscriptions the identity can see: give it one.
    local_azure.cloud.assign_role(
        scope=onprem.group_id, principal_id=onprem.principal_id, immediate=True,
        role_definition_id=f"/subscriptions/{local_azure.subscription_id}/providers/"
                           f"Microsoft.Authorization/roleDefinitions/{READER}")
    r = onprem.run("sudo az login --identity")
    assert r.exited == 0, r.stderr
    account = json.loads(r.stdout)[0]
    assert account["user"]["assignedIdentityInfo"] == "MSI"
    assert account["id"] == local_azure.subscription_id
    r = onprem.run(f"sudo az resource list -g {onprem.group} --query [].name -o tsv")
    assert r.exited == 0 and onprem.name in r.stdout.split(), r.stderr


# -- ARM ------------------------------------------------------------------------------------------
def test_arm_machines_get_list_patch(azure_env, operator_credential, onprem):
    token = operator_token(operator_credential)
    sub = azure_env.subscription_id
    for version in ("2025-01-13", "2024-07-10", "2022-12-27"):
        r = arm(azure_env, "GET", onprem.resource_id, token, version=version)
        assert r.status_code == 200
    got = r.json()
    assert got["type"] == "Microsoft.HybridCompute/machines"
    assert got["properties"]["status"] == "Connected"
    assert got["identity"] == {"type": "SystemAssigned", "principalId": onprem.principal_id,
                               "tenantId": azure_env.tenant_id}
    assert got["properties"]["osProfile"]["computerName"] == onprem.name
    in_group = arm(azure_env, "GET", f"{onprem.group_id}/providers/Microsoft.HybridCompute/"
                   "machines", token).json()["value"]
    assert [m["id"] for m in in_group] == [onprem.resource_id]
    in_sub = arm(azure_env, "GET", f"/subscriptions/{sub}/providers/Microsoft.HybridCompute/"
                 "machines", token).json()["value"]
    assert onprem.resource_id in [m["id"] for m in in_sub]
    patched = arm(azure_env, "PATCH", onprem.resource_id, token, json={"tags": {"site": "hq"}})
    assert patched.status_code == 200 and patched.json()["tags"] == {"site": "hq"}
    r = onprem.run("curl -s -H Metadata:true 'http://localhost:40342/metadata/instance/compute/"
                   "tags?api-version=2020-06-01&format=text'")
    assert r.stdout == "site:hq"
    bad = arm(azure_env, "GET", onprem.resource_id, token, version="2020-01-01")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "NoRegisteredProviderFound"
    assert arm(azure_env, "GET", onprem.resource_id, None).status_code == 401
    provider = arm(azure_env, "GET", f"/subscriptions/{sub}/providers/Microsoft.HybridCompute",
                   token, version="2021-04-01").json()
    assert provider["registrationState"] == "Registered"
    machines = [t for t in provider["resourceTypes"] if t["resourceType"] == "machines"]
    assert "2024-07-10" in machines[0]["apiVersions"]


def test_disconnect_deletes_the_resource_and_the_identity(azure_env, operator_credential):
    azure = azure_env
    group = f"rg-arc-{uuid.uuid4().hex[:8]}"
    gid = add_group(azure, group)
    box = add_box(azure, "leaver")
    try:
        onboarder = azure.add_service_principal("arc-onboarder", scope=gid,
                                                role="Azure Connected Machine Onboarding")
        assert box.run(connect_cmd(azure, group, onboarder)).exited == 0
        rid = f"{gid}/providers/Microsoft.HybridCompute/machines/leaver"
        with azure.cloud.lock:
            principal = azure.cloud.resources[arm_key(rid)]["identity"]["principalId"]
        azure.cloud.assign_role(scope=gid, principal_id=principal, immediate=True,
                                role_definition_id=f"/subscriptions/{azure.subscription_id}/"
                                f"providers/Microsoft.Authorization/roleDefinitions/{READER}")
        box.group = group
        assert list_group(box)[0] == "200"
        creds = (f"--service-principal-id {onboarder.client_id} "
                 f"--service-principal-secret {onboarder.client_secret}")
        # The onboarding role may create machines, not delete them.
        r = box.run(f"sudo azcmagent disconnect {creds}")
        assert r.exited != 0 and "Microsoft.HybridCompute/machines/delete" in r.stderr
        token = operator_token(operator_credential)  # the operator is Owner
        r = box.run(f"sudo azcmagent disconnect --access-token {token}")
        assert r.exited == 0, r.stderr
        assert arm(azure, "GET", rid, token).status_code == 404
        assert azure.cloud.principal(principal) is None
        assert "IDENTITY_ENDPOINT" not in box.run("env").stdout
        assert "Disconnected" in box.run("azcmagent show").stdout
        # No token any more, so the Reader assignment no longer lets the machine list the group.
        assert box.run(TWO_STEP.format(ARM_RESOURCE)).stdout == ""
        assert list_group(box)[0] != "200"
    finally:
        azure.remove_machine("leaver")


# -- knobs ---------------------------------------------------------------------------------------
def test_himds_latency_faults_and_audit(local_azure, onprem):
    knobs = local_azure.knobs
    instance = ("curl -s -o /dev/null -w '%{http_code}' -H Metadata:true "
                "'http://localhost:40342/metadata/instance?api-version=2020-06-01'")
    try:
        knobs.latency["himds"] = 1.0
        started = time.monotonic()
        assert onprem.run(instance).stdout == "200"
        assert time.monotonic() - started >= 1.0
        knobs.latency.pop("himds")
        knobs.faults.error_burst("himds", 503, count=1)
        assert onprem.run(instance).stdout == "503"
        assert onprem.run(instance).stdout == "200"
        knobs.faults.himds_down(30, machine=onprem.name)
        assert onprem.run(instance.replace("curl -s", "curl")).stdout == "000"
        with local_azure.cloud.lock:
            res = local_azure.cloud.resources[arm_key(onprem.resource_id)]
        assert local_azure.cloud.arc_status(res) == "Disconnected"
    finally:
        knobs.reset()
    assert onprem.run(instance).stdout == "200"
    # The audit log names the machine's identity as the caller of its token requests.
    token_calls = local_azure.audit.find(host="localhost", path_contains="/oauth2/token",
                                         status=200, caller_oid=onprem.principal_id)
    assert token_calls and {e.service for e in token_calls} == {"himds"}
    assert local_azure.audit.find(host="localhost", path_contains="/metadata/instance",
                                  status=503)


def test_ssh_refusal_applies_to_machines(local_azure, onprem):
    def refused() -> bool:
        with socket.socket() as sock:
            sock.settimeout(2)
            return sock.connect_ex((onprem.address, onprem.port)) != 0
    try:
        local_azure.knobs.faults.ssh_refuse(1.5, vm=onprem.name)
        assert wait_until(refused, 2)
        assert wait_until(lambda: not refused(), 5)
        assert onprem.run("echo back").stdout == "back\n"
    finally:
        local_azure.knobs.faults.clear()


# -- the control endpoint: racking a server ---------------------------------------------------
def control(azure, method: str, path: str, token: str | None = None, **kwargs):
    """The local Azure's control endpoint through the host's proxy."""
    session = requests.Session()
    session.trust_env = False
    session.proxies = {"https": f"http://127.0.0.1:{azure.proxy.port}"}
    session.verify = str(azure.ca_path)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return session.request(method, f"https://control.localazure.test{path}", headers=headers,
                           timeout=10, **kwargs)


def test_the_owner_racks_a_server_that_reports_its_address_once_onboarded(
        azure_env, operator_credential, grader_credential, grader_key):
    token = operator_token(operator_credential)
    name = f"racked-{uuid.uuid4().hex[:6]}"
    body = {"name": name, "user": "azureuser", "publicKeys": [grader_key[1]]}
    assert control(azure_env, "POST", "/machines", json=body).status_code == 401
    assert control(azure_env, "POST", "/machines", operator_token(grader_credential),
                   json=body).status_code == 403
    assert control(azure_env, "POST", "/machines", token,
                   json={**body, "name": "no/slash"}).status_code == 400
    r = control(azure_env, "POST", "/machines", token, json=body)
    assert r.status_code == 201, r.text
    made = r.json()
    try:
        assert made["user"] == "azureuser" and made["port"] == azure_env.machines.ssh_port
        assert control(azure_env, "POST", "/machines", token, json=body).status_code == 409
        assert control(azure_env, "GET", f"/machines/{name}", token).json() == made
        box = Box(azure_env, name, made["address"], made["port"], made["user"], grader_key[0])
        assert box.run("hostname; hostname -I").stdout == f"{name}\n{made['address']}\n"
        group = f"rg-arc-{uuid.uuid4().hex[:8]}"
        add_group(azure_env, group)
        r = box.run(f"sudo azcmagent connect --resource-group {group} --tenant-id "
                    f"{azure_env.tenant_id} --location uksouth --subscription-id "
                    f"{azure_env.subscription_id} --resource-name onprem1 --access-token {token}")
        assert r.exited == 0, r.stderr
        path = (f"/subscriptions/{azure_env.subscription_id}/resourceGroups/{group}/providers/"
                "Microsoft.HybridCompute/machines/onprem1")
        res = arm(azure_env, "GET", path, token).json()
        assert res["properties"]["networkProfile"] == {"networkInterfaces": [{"ipAddresses": [
            {"address": made["address"], "ipAddressVersion": "IPv4"}]}]}
        # An administrator takes the admin's passwordless sudo away: HIMDS's key is out of reach.
        r = control(azure_env, "PATCH", f"/machines/{name}", token, json={"sudo": False})
        assert r.status_code == 200 and r.json()["sudo"] is False
        refused = box.run("sudo -n true")
        assert refused.exited == 1 and "a password is required" in refused.stderr
        assert control(azure_env, "PATCH", f"/machines/{name}", token,
                       json={"sudo": True}).json()["sudo"] is True
        assert box.run("sudo -n true").exited == 0
        # Read-only: a PATCH cannot move the server elsewhere.
        arm(azure_env, "PATCH", path, token, json={"properties": {"networkProfile": {}}})
        assert arm(azure_env, "GET", path, token).json()["properties"]["networkProfile"] == \
            res["properties"]["networkProfile"]
    finally:
        azure_env.remove_machine(name)


def test_a_server_behind_nat_reports_its_site_address(azure_env, operator_credential,
                                                      grader_key):
    token = operator_token(operator_credential)
    name = f"natted-{uuid.uuid4().hex[:6]}"
    r = control(azure_env, "POST", "/machines", token, json={
        "name": name, "publicKeys": [grader_key[1]], "siteAddress": "10.1.0.4"})
    assert r.status_code == 201, r.text
    try:
        box = Box(azure_env, name, r.json()["address"], r.json()["port"], "azureuser",
                  grader_key[0])
        assert box.run("hostname -I").stdout == "10.1.0.4\n"
    finally:
        azure_env.remove_machine(name)


def test_cli_adds_machines(monkeypatch, tmp_path, capsys):
    import signal

    import pytest_milab.emulator as emulator
    from pytest_milab import cli

    added = []

    class Fake:
        started_in = 0.0

        def __init__(self, **kwargs):
            pass

        def start(self):
            return self

        def add_machine(self, name, *, user, public_keys):
            added.append((name, user, public_keys))
            return emulator.Machine(name, "127.10.0.9", 22, user)

        def write_env_file(self, path):
            os.kill(os.getpid(), signal.SIGTERM)  # the emulator's own handler stops it

        def stop(self):
            pass

    key = tmp_path / "student.pub"
    key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMilab student@laptop\n")
    monkeypatch.setattr(emulator, "LocalAzure", Fake)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM,
                                                    signal.SIGUSR1, signal.SIGUSR2)}
    try:
        rc = cli.main(["emulator", "--env-file", str(tmp_path / "env"), "--machine", "onprem1",
                       "--machine-key", str(key), "--machine-user", "admin"])
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert rc == 0
    assert added == [("onprem1", "admin", [key.read_text().strip()])]
    assert "machine onprem1: ssh -p 22 admin@127.10.0.9" in capsys.readouterr().out
    assert cli.main(["emulator", "--env-file", "x", "--machine", "onprem1"]) == 2
