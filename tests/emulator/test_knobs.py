"""Behaviour knobs of the local Azure: latency, ARM throttling, faults and quirks, each shown with
real clients (requests through the proxy, the SDKs, curl and Fabric against a live VM).

`local_azure` is shared by the session, so every test turns its knobs back off (`knobs` fixture).
"""

from __future__ import annotations

import errno
import socket
import time
import uuid

import jwt
import pytest
import requests
from azure.identity import ClientSecretCredential
from azure.mgmt.resource.resources import ResourceManagementClient
from invoke.exceptions import CommandTimedOut, UnexpectedExit
from paramiko.ssh_exception import NoValidConnectionsError
from vmkit import make_vm, wait_until

from pytest_milab import cli
from pytest_milab.emulator import LocalAzure, faults

ARM = "https://management.azure.com"
IMDS = "http://169.254.169.254"
H = {"Metadata": "true"}
INSTANCE = f"{IMDS}/metadata/instance?api-version=2020-09-01"
READER = {"actions": ["*/read"], "notActions": [], "dataActions": [], "notDataActions": []}


@pytest.fixture
def knobs(local_azure):
    yield local_azure.knobs
    local_azure.knobs.reset()


@pytest.fixture(scope="module")
def box(local_azure):
    made = make_vm(local_azure, name="knobbox")
    yield made
    made.delete()


def credential(identity) -> ClientSecretCredential:
    return ClientSecretCredential(identity.tenant_id, identity.client_id, identity.client_secret)


def arm(method: str, path: str, token: str, api: str = "2021-04-01", **kwargs):
    return requests.request(method, f"{ARM}{path}?api-version={api}", timeout=10,
                            headers={"Authorization": f"Bearer {token}"}, **kwargs)


def arm_token(cred) -> str:
    return cred.get_token(f"{ARM}/.default").token


def imds_token(box, resource: str = "https://management.azure.com/") -> str:
    r = box.imds().get(f"{IMDS}/metadata/identity/oauth2/token", headers=H, timeout=5,
                       params={"api-version": "2018-02-01", "resource": resource})
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def timed(call) -> float:
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


# -- latency ----------------------------------------------------------------------------------
def test_latency_is_added_per_service(azure_env, knobs, operator_credential, box):
    token = arm_token(operator_credential)
    calls = {
        "arm": lambda: arm("GET", f"/subscriptions/{azure_env.subscription_id}", token),
        "keyvault": lambda: requests.get("https://kv-absent.vault.azure.net/secrets", timeout=5),
        "entra": lambda: requests.get(f"https://login.microsoftonline.com/{azure_env.tenant_id}"
                                      "/v2.0/.well-known/openid-configuration", timeout=5),
        "graph": lambda: requests.get("https://graph.microsoft.com/v1.0/applications", timeout=5),
        "imds": lambda: box.imds().get(INSTANCE, headers=H, timeout=5),
    }
    names = list(calls)
    for i, service in enumerate(names):
        other = names[(i + 1) % len(names)]
        knobs.latency.clear()
        knobs.latency[service] = 0.4
        assert timed(calls[service]) >= 0.4, service
        # The faster of two: a loaded machine may hold one call back, never both by 0.4 s.
        assert min(timed(calls[other]) for _ in range(2)) < 0.4, \
            f"{other} slowed by {service}'s latency"
    knobs.latency.clear()
    assert min(timed(calls["arm"]) for _ in range(2)) < 0.4


def test_ssh_handshake_latency_delays_login_only(knobs, box):
    def login():
        with box.connect() as conn:
            conn.open()

    fast = timed(login)
    knobs.latency["ssh_handshake"] = 0.6
    slow = timed(login)
    assert slow >= 0.6 > fast
    with box.connect() as conn:
        conn.open()
        assert timed(lambda: conn.run("true", hide=True, in_stream=False)) < 0.5


def test_a_slow_imds_makes_clients_time_out(knobs, box):
    knobs.latency["imds"] = 2.5
    with pytest.raises(requests.exceptions.ReadTimeout):
        box.imds().get(INSTANCE, headers=H, timeout=0.5)
    r = box.run(f'curl -s -m 1 -H Metadata:true "{INSTANCE}"')
    assert r.exited == 28  # curl: operation timed out
    knobs.latency.clear()
    assert box.run(f'curl -s -m 1 -H Metadata:true "{INSTANCE}"').exited == 0


# -- ARM throttling ---------------------------------------------------------------------------
def test_the_read_bucket_refuses_after_capacity_and_refills(azure_env, knobs,
                                                            grader_credential):
    sub = azure_env.subscription_id
    student = azure_env.add_service_principal(f"throttled-{uuid.uuid4().hex[:6]}",
                                              role="Reader")
    token = arm_token(credential(student))
    # A slow refill (2/s) keeps the test steady on a busy machine; Retry-After is still 1 s.
    knobs.throttle, knobs.arm_read_bucket, knobs.arm_read_refill = True, 5, 2
    before = azure_env.arm_requests
    answers = []
    while len(answers) < 20 and (not answers or answers[-1].status_code != 429):
        answers.append(arm("GET", f"/subscriptions/{sub}/resourcegroups", token))
    *served, refused = answers
    assert len(served) >= 5 and all(r.status_code == 200 for r in served)
    remaining = [int(r.headers["x-ms-ratelimit-remaining-subscription-reads"]) for r in served]
    assert remaining[0] == 4 and remaining == sorted(remaining, reverse=True)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
    assert refused.headers["x-ms-ratelimit-remaining-subscription-reads"] == "0"
    assert refused.json() == {"error": {
        "code": "SubscriptionRequestsThrottled",
        "message": f"Number of 'read' requests for subscription '{sub}' actor "
                   f"'{student.object_id}' exceeded. Please try again after '1' seconds after "
                   "additional tokens are available. Refer to https://aka.ms/arm-throttling"}}
    assert azure_env.arm_requests - before == len(answers)

    # Writes have their own bucket, and other callers their own buckets.
    write = arm("PUT", f"/subscriptions/{sub}/resourcegroups/rg-never", token,
                json={"location": "uksouth"})
    assert write.status_code == 403
    assert write.headers["x-ms-ratelimit-remaining-subscription-writes"] == "199"
    assert arm("GET", f"/subscriptions/{sub}", arm_token(grader_credential)).status_code == 200

    time.sleep(int(refused.headers["Retry-After"]))
    assert arm("GET", f"/subscriptions/{sub}/resourcegroups", token).status_code == 200
    knobs.throttle = False
    unthrottled = arm("GET", f"/subscriptions/{sub}/resourcegroups", token)
    assert int(unthrottled.headers["x-ms-ratelimit-remaining-subscription-reads"]) > 11000


def test_the_sdk_waits_out_throttling(azure_env, knobs):
    student = azure_env.add_service_principal(f"sdk-throttled-{uuid.uuid4().hex[:6]}",
                                              role="Reader")
    client = ResourceManagementClient(credential(student), azure_env.subscription_id)
    knobs.throttle, knobs.arm_read_bucket, knobs.arm_read_refill = True, 3, 5
    t0 = time.perf_counter()
    for _ in range(7):
        list(client.resource_groups.list())
    assert time.perf_counter() - t0 >= 1  # it waited for Retry-After at least once
    answers = azure_env.audit.find(caller_oid=student.object_id, host="management.azure.com")
    assert [a.status for a in answers].count(200) == 7 and 429 in [a.status for a in answers]


# -- error bursts -----------------------------------------------------------------------------
def test_error_bursts_answer_in_each_services_shape(azure_env, knobs, box):
    sub = f"/subscriptions/{azure_env.subscription_id}"
    kv = "https://kv-absent.vault.azure.net/secrets?api-version=7.4"
    entra = (f"https://login.microsoftonline.com/{azure_env.tenant_id}/v2.0/"
             ".well-known/openid-configuration")
    cases = [
        ("arm", 503, lambda: requests.get(f"{ARM}{sub}?api-version=2022-12-01", timeout=5),
         {"error": {"code": "ServiceUnavailable", "message":
                    "The service is temporarily unavailable. Please retry the request."}}),
        ("arm", 500, lambda: requests.get(f"{ARM}{sub}?api-version=2022-12-01", timeout=5),
         {"error": {"code": "InternalServerError",
                    "message": "Encountered internal server error."}}),
        ("keyvault", 503, lambda: requests.get(kv, timeout=5), None),
        ("entra", 500, lambda: requests.get(entra, timeout=5), None),
        ("imds", 500, lambda: box.imds().get(INSTANCE, headers=H, timeout=5),
         {"error": "server_error", "error_description": "IMDS returned 500"}),
    ]
    for service, status, call, body in cases:
        knobs.faults.error_burst(service, status)
        r = call()
        assert r.status_code == status, service
        assert r.headers.get("Retry-After") == ("1" if status == 503 else None)
        if body is not None:
            assert r.json() == body
        assert call().status_code != status, f"{service}: the burst outlived its count"
    assert azure_env.audit.find(host="management.azure.com", status=503)
    knobs.faults.error_burst("entra", 503)
    assert requests.get(entra, timeout=5).json()["error"] == "temporarily_unavailable"


def test_a_burst_only_hits_matching_paths(azure_env, operator_credential, knobs):
    token = arm_token(operator_credential)
    sub = f"/subscriptions/{azure_env.subscription_id}"
    knobs.faults.error_burst("arm", 500, count=1, path="/resourcegroups")
    assert arm("GET", sub, token).status_code == 200
    assert knobs.faults.errors_left("arm") == 1
    assert arm("GET", f"{sub}/resourceGroups", token).status_code == 500
    assert knobs.faults.errors_left() == 0


def test_a_503_burst_of_two_is_absorbed_by_sdk_retries(azure_env, operator_credential, knobs):
    client = ResourceManagementClient(operator_credential, azure_env.subscription_id)
    list(client.resource_groups.list())  # token cached: the burst meets only the list calls
    knobs.faults.error_burst("arm", 503, count=2, path="/resourcegroups")
    before = len(azure_env.audit.find(host="management.azure.com", status=503))
    list(client.resource_groups.list())
    assert len(azure_env.audit.find(host="management.azure.com", status=503)) - before == 2
    assert knobs.faults.errors_left() == 0


# -- connection resets --------------------------------------------------------------------------
def test_a_reset_tunnel_fails_a_plain_client_and_is_retried_by_the_sdk(
        azure_env, operator_credential, knobs):
    sub = azure_env.subscription_id
    token = arm_token(operator_credential)
    knobs.faults.reset_connections(1, proxy="host", host="management.azure.com")
    with pytest.raises(requests.exceptions.ConnectionError):
        arm("GET", f"/subscriptions/{sub}", token)
    assert knobs.faults.resets_left() == 0
    assert arm("GET", f"/subscriptions/{sub}", token).status_code == 200

    # A new client opens a new connection, so the resets meet it; azure-core retries them.
    knobs.faults.reset_connections(2, host="management.azure.com")
    client = ResourceManagementClient(operator_credential, sub)
    assert isinstance(list(client.resource_groups.list()), list)
    assert knobs.faults.resets_left() == 0


def test_a_vm_proxy_reset_fails_curl_in_the_vm(knobs, box):
    url = f"{ARM}/subscriptions?api-version=2022-12-01"
    knobs.faults.reset_connections(1, proxy="host")  # not the VM's proxy: curl is unaffected
    assert box.run(f"curl -s -o /dev/null {url}").exited == 0
    knobs.faults.clear()
    knobs.faults.reset_connections(1, proxy="vm")
    r = box.run(f"curl -sS -o /dev/null {url}")
    assert r.exited in (35, 56) and "reset" in r.stderr.lower()  # SSL connect / recv failure
    assert box.run(f"curl -s -o /dev/null {url}").exited == 0


# -- SSH ----------------------------------------------------------------------------------------
def connect_errno(box) -> int:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((box.address, box.port))


def test_ssh_refuses_for_a_while_then_accepts_again(knobs, box):
    with box.connect() as kept:
        kept.open()
        knobs.faults.ssh_refuse(1.5, vm=box.name)
        assert wait_until(lambda: connect_errno(box) == errno.ECONNREFUSED, timeout=2)
        with pytest.raises(NoValidConnectionsError):
            box.connect().open()
        # A connection opened before stays usable.
        assert kept.run("echo still", hide=True, in_stream=False).stdout == "still\n"
    t0 = time.monotonic()
    for _ in range(30):  # a client that retries, as a grader should
        try:
            assert box.run("echo back").stdout == "back\n"
            break
        except NoValidConnectionsError:
            time.sleep(0.2)
    else:
        pytest.fail("SSH did not come back")
    assert time.monotonic() - t0 < 3


def test_ssh_refusal_is_per_vm(local_azure, knobs, box):
    other = make_vm(local_azure, name="otherbox")
    try:
        knobs.faults.ssh_refuse(5, vm=other.id)
        assert wait_until(lambda: connect_errno(other) == errno.ECONNREFUSED, timeout=2)
        assert box.run("true").exited == 0
        knobs.faults.clear()
        assert wait_until(lambda: connect_errno(other) == 0, timeout=2)
    finally:
        other.delete()


def test_a_hanging_command_times_out_and_the_connection_survives(knobs, box):
    with box.connect() as conn:
        conn.open()
        knobs.faults.hang_commands(box.name)  # until the client gives up
        # invoke says CommandTimedOut, or, on a loaded machine where the channel closes before
        # its timer is read, UnexpectedExit with no exit status: either way, nothing ran.
        with pytest.raises((CommandTimedOut, UnexpectedExit)) as info:
            conn.run("echo never", hide=True, in_stream=False, timeout=1)
        assert info.value.result.stdout == ""
        if isinstance(info.value, UnexpectedExit):
            assert info.value.result.exited == -1
        assert conn.is_connected
        knobs.faults.clear()
        assert conn.run("echo fine", hide=True, in_stream=False).stdout == "fine\n"
        # Held once, for 2 s; the next command is not held (margins wide enough for a loaded
        # machine, where one SSH round trip can take a few hundred ms).
        knobs.faults.hang_commands(box.id, 2.0, count=1)
        slow = timed(lambda: conn.run("echo late", hide=True, in_stream=False))
        assert slow >= 2.0
        assert timed(lambda: conn.run("true", hide=True, in_stream=False)) < 1.5


# -- quirks -------------------------------------------------------------------------------------
def test_quirk_imds_wrong_resource_id(knobs, box):
    imds = box.imds()
    with knobs.quirks.enabled("imds-wrong-resource-id"):
        doc = imds.get(INSTANCE, headers=H, timeout=5).json()
        leaf = imds.get(f"{IMDS}/metadata/instance/compute/resourceId", headers=H, timeout=5,
                        params={"api-version": "2020-09-01", "format": "text"}).text
    assert doc["compute"]["resourceId"] == leaf == box.id + "-old"
    assert doc["compute"]["name"] == box.name  # only the id is wrong
    assert imds.get(INSTANCE, headers=H, timeout=5).json()["compute"]["resourceId"] == box.id


def test_quirk_imds_no_tags_path(knobs, box):
    imds = box.imds()
    tags = f"{IMDS}/metadata/instance/compute/tagsList?api-version=2020-09-01"
    knobs.quirks.add("imds-no-tags-path")
    r = imds.get(tags, headers=H, timeout=5)
    assert (r.status_code, r.json()) == (404, {"error": "Not found"})
    assert imds.get(INSTANCE, headers=H, timeout=5).json()["compute"]["tagsList"]
    assert imds.get(tags.replace("tagsList", "tags"), headers=H, timeout=5,
                    params={"format": "text"}).status_code == 200
    knobs.quirks.discard("imds-no-tags-path")
    assert imds.get(tags, headers=H, timeout=5).status_code == 200


def test_quirk_imds_token_audience_mismatch(azure_env, knobs, box):
    claims = lambda token: jwt.decode(token, options={"verify_signature": False})  # noqa: E731
    with knobs.quirks.enabled("imds-token-audience-mismatch"):
        token = imds_token(box)
        vault_token = imds_token(box, "https://vault.azure.net")
    assert claims(token)["aud"] == "https://management.core.windows.net/"
    assert claims(vault_token)["aud"] == "https://vault.azure.net"
    assert arm("GET", "/subscriptions", token, api="2022-12-01").status_code == 200
    assert claims(imds_token(box))["aud"] == "https://management.azure.com/"


def test_quirk_arm_permissions_too_wide(azure_env, knobs, box, grader_credential,
                                        operator_credential, unique_group):
    sub = f"/subscriptions/{azure_env.subscription_id}"
    perms = f"{sub}/providers/Microsoft.Authorization/permissions"
    group = f"{sub}/resourceGroups/{unique_group}"
    op_token = arm_token(operator_credential)
    assert arm("PUT", group, op_token, json={"location": "uksouth"}).status_code == 201
    token = imds_token(box)
    assert arm("GET", perms, token, api="2022-04-01").json() == {"value": []}
    nobody = azure_env.add_service_principal(f"no-roles-{uuid.uuid4().hex[:6]}")
    with knobs.quirks.enabled("arm-permissions-too-wide"):
        assert arm("GET", perms, token, api="2022-04-01").json() == {"value": [READER]}
        # Service principals are not affected, nor is a narrower scope.
        assert arm("GET", perms, arm_token(credential(nobody)),
                   api="2022-04-01").json() == {"value": []}
        group_perms = f"{group}/providers/Microsoft.Authorization/permissions"
        assert arm("GET", group_perms, token, api="2022-04-01").json() == {"value": []}
        # Granted reads are still reported once.
        assert arm("GET", perms, arm_token(grader_credential),
                   api="2022-04-01").json() == {"value": [READER]}
    assert arm("GET", perms, token, api="2022-04-01").json() == {"value": []}
    arm("DELETE", group, op_token)


def test_quirk_arm_list_denied(azure_env, knobs, box, operator_credential, unique_group):
    sub = azure_env.subscription_id
    group = f"/subscriptions/{sub}/resourceGroups/{unique_group}"
    op_token = arm_token(operator_credential)
    assert arm("PUT", group, op_token, json={"location": "uksouth"}).status_code == 201
    azure_env.cloud.assign_role(
        scope=group, principal_id=box.principal_id, immediate=True,
        role_definition_id=f"/subscriptions/{sub}/providers/Microsoft.Authorization/"
                           "roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7")
    token = imds_token(box)
    try:
        assert arm("GET", f"{group}/resources", token).status_code == 200
        with knobs.quirks.enabled("arm-list-denied"):
            denied = arm("GET", f"{group}/resources", token)
            assert denied.status_code == 403
            assert denied.json()["error"] == {
                "code": "AuthorizationFailed",
                "message": f"The client '{box.principal_id}' with object id "
                           f"'{box.principal_id}' does not have authorization to perform action "
                           "'Microsoft.Resources/subscriptions/resourceGroups/resources/read' "
                           f"over scope '{group}' or the scope is invalid. If access was "
                           "recently granted, please refresh your credentials."}
            assert arm("GET", group, token).status_code == 200  # the group itself is readable
            assert arm("GET", f"{group}/resources", op_token).status_code == 200
        assert arm("GET", f"{group}/resources", token).status_code == 200
    finally:
        arm("DELETE", group, op_token)


def test_quirk_keyvault_accepts_any_audience(azure_env, knobs, box, operator_credential,
                                             unique_group):
    from pytest_milab.emulator.state import arm_key

    name = f"kv-{uuid.uuid4().hex[:10]}"
    vid = (f"/subscriptions/{azure_env.subscription_id}/resourceGroups/{unique_group}/providers/"
           f"Microsoft.KeyVault/vaults/{name}")
    with azure_env.cloud.lock:
        azure_env.cloud.resources[arm_key(vid)] = {
            "id": vid, "name": name, "type": "Microsoft.KeyVault/vaults", "location": "uksouth",
            "properties": {"tenantId": azure_env.tenant_id, "sku": {"name": "standard"},
                           "accessPolicies": [{"tenantId": azure_env.tenant_id,
                                               "objectId": azure_env.operator.object_id,
                                               "permissions": {"secrets": ["list"]}}]}}
    url = f"https://{name}.vault.azure.net/secrets?api-version=7.4"

    def get(token):
        return requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5)

    mi_token, op_token = imds_token(box), arm_token(operator_credential)
    try:
        normal = get(mi_token)
        assert normal.status_code == 401 and "AKV10022" in normal.json()["error"]["message"]
        with knobs.quirks.enabled("keyvault-accepts-any-audience"):
            denied = get(mi_token)
            assert denied.status_code == 403
            assert denied.json()["error"]["innererror"]["code"] == "AccessDenied"
            assert get(op_token).status_code == 200
        assert get(op_token).status_code == 401
    finally:
        with azure_env.cloud.lock:
            azure_env.cloud.resources.pop(arm_key(vid), None)


def test_unknown_quirks_are_refused(knobs):
    with pytest.raises(ValueError, match="unknown quirk"):
        knobs.quirks.add("imds-wrong-resourceid")
    assert list(knobs.quirks) == []


# -- configuration ------------------------------------------------------------------------------
def test_constructor_options(tmp_path):
    azure = LocalAzure(workdir=tmp_path, latency={"arm": 0.08, "ssh_handshake": 0.2},
                       throttle=True, quirks=["arm-list-denied"])
    assert azure.knobs.latency == {"arm": 0.08, "ssh_handshake": 0.2}
    assert azure.knobs.throttle and "arm-list-denied" in azure.knobs.quirks
    assert (azure.knobs.arm_read_bucket, azure.knobs.arm_read_refill) == (250, 25)
    assert (azure.knobs.arm_write_bucket, azure.knobs.arm_write_refill) == (200, 10)
    with pytest.raises(ValueError, match="latency"):
        LocalAzure(workdir=tmp_path, latency={"storage": 1})
    with pytest.raises(ValueError, match="quirk"):
        LocalAzure(workdir=tmp_path, quirks=["no-such-quirk"])


def test_cli_flags_reach_the_local_azure(monkeypatch, tmp_path, capsys):
    import pytest_milab.emulator as emulator

    seen = {}

    class Fake:
        def __init__(self, **kwargs):
            seen.update(kwargs)

        def start(self):
            raise OSError("not really")

    monkeypatch.setattr(emulator, "LocalAzure", Fake)
    rc = cli.main(["emulator", "--env-file", str(tmp_path / "env"), "--latency", "arm=0.08",
                   "--latency", "imds=2", "--throttle", "--quirk", "arm-list-denied",
                   "--quirk", "imds-no-tags-path"])
    assert rc == 1
    assert seen["latency"] == {"arm": 0.08, "imds": 2.0} and seen["throttle"] is True
    assert seen["quirks"] == ["arm-list-denied", "imds-no-tags-path"]
    with pytest.raises(SystemExit):
        cli.main(["emulator", "--env-file", "x", "--latency", "arm"])
    with pytest.raises(SystemExit):
        cli.main(["emulator", "--env-file", "x", "--quirk", "nope"])
    assert set(cli.LATENCY_SERVICES) == set(faults.LATENCY_SERVICES)
    assert set(cli.QUIRK_NAMES) == set(faults.QUIRKS)


def test_cli_operator_user_flag(monkeypatch, tmp_path):
    import pytest_milab.emulator as emulator

    made = []

    class Stop(Exception):
        pass

    class Fake:
        started_in = 0.0

        def __init__(self, **kwargs):
            pass

        def start(self):
            return self

        def make_operator_user(self, upn):
            made.append(upn)

        def write_env_file(self, path):
            raise Stop

        def stop(self):
            made.append("stopped")

    monkeypatch.setattr(emulator, "LocalAzure", Fake)
    with pytest.raises(Stop):
        cli.main(["emulator", "--env-file", str(tmp_path / "env"),
                  "--operator-user", "ops@localazure.onmicrosoft.com"])
    assert made == ["ops@localazure.onmicrosoft.com", "stopped"]


def test_an_operator_user_reaches_the_env(tmp_path):
    with LocalAzure(workdir=tmp_path) as azure:
        user = azure.make_operator_user("ops@localazure.onmicrosoft.com", "S3cret!pass")
        assert azure.env["MILAB_OPERATOR_USER"] == "ops@localazure.onmicrosoft.com"
        assert azure.env["MILAB_OPERATOR_PASSWORD"] == "S3cret!pass"
        assert [ra.principal_type for ra in azure.cloud.visible_role_assignments()
                if ra.principal_id == user.object_id] == ["User"]
