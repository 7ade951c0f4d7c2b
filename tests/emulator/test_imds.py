"""IMDS through a VM's own egress proxy, as curl inside the VM reaches it (“Azure Instance Metadata Service for virtual machines”, “How to use managed identities for Azure resources on an Azure VM to acquire an access token”, “Microsoft identity platform access token claims reference”).

Most checks talk HTTP through the VM's proxy from the test process (fast); the lab's curl
commands verbatim inside the VM are in test_vms.py.
"""

from __future__ import annotations

import time

import jwt
import pytest
import requests
from vmkit import make_vm

IMDS = "http://169.254.169.254"
H = {"Metadata": "true"}


# Not named `vm`: the milab plugin claims the fixture names `lab`, `vm` and `evidence`.
@pytest.fixture(scope="module")
def ubuntu(local_azure):
    made = make_vm(local_azure, user_assigned=1)
    yield made
    made.delete()


@pytest.fixture(scope="module")
def imds(ubuntu):
    return ubuntu.imds()


def instance(imds, version="2020-09-01", path="", **params):
    return imds.get(f"{IMDS}/metadata/instance{path}", headers=H,
                    params={"api-version": version, **params})


def token(imds, resource="https://management.azure.com/", **params):
    return imds.get(f"{IMDS}/metadata/identity/oauth2/token", headers=H,
                    params={"api-version": "2018-02-01", "resource": resource, **params})


def all_primitives_are_strings(node) -> bool:
    if isinstance(node, dict):
        return all(all_primitives_are_strings(v) for v in node.values())
    if isinstance(node, list):
        return all(all_primitives_are_strings(v) for v in node)
    return isinstance(node, str)


# -- “Azure Instance Metadata Service for virtual machines” the instance document -----------------
def test_instance_at_the_labs_version_describes_this_vm(ubuntu, imds):
    r = instance(imds)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    doc = r.json()
    compute = doc["compute"]
    assert compute["resourceId"] == ubuntu.id
    assert compute["name"] == "ubuntu" and compute["resourceGroupName"] == ubuntu.group
    assert compute["subscriptionId"] == ubuntu.azure.subscription_id
    assert compute["tagsList"] == [{"name": "lab", "value": "identity"},
                                   {"name": "site", "value": "citadel"},
                                   {"name": "vault", "value": "keyvault-1a2b3c4d"}]
    assert compute["tags"] == "lab:identity;site:citadel;vault:keyvault-1a2b3c4d"
    assert compute["osProfile"] == {"adminUsername": "azureuser", "computerName": "ubuntu"}
    assert compute["storageProfile"]["osDisk"]["name"] == "ubuntu-os"
    assert compute["storageProfile"]["osDisk"]["diskSizeGB"] == "30"
    assert compute["vmSize"] == "Standard_D2s_v5" and compute["osType"] == "Linux"
    assert all_primitives_are_strings(doc)
    nic = doc["network"]["interface"][0]
    assert nic["macAddress"] == "000D3A123456"
    assert nic["ipv4"]["ipAddress"] == [{"privateIpAddress": "10.0.0.4",
                                         "publicIpAddress": ubuntu.address}]
    assert nic["ipv4"]["subnet"] == [{"address": "10.0.0.0", "prefix": "24"}]


def test_fields_appear_only_from_the_version_that_introduced_them(imds):
    old = instance(imds, "2017-08-01").json()["compute"]
    assert "resourceId" not in old and "tagsList" not in old and "storageProfile" not in old
    assert old["tags"] and old["resourceGroupName"]
    mid = instance(imds, "2019-06-04").json()["compute"]
    assert "tagsList" in mid and "osProfile" not in mid
    newer = instance(imds, "2020-10-01").json()["compute"]
    assert newer["osProfile"]["disablePasswordAuthentication"] == "true"
    newest = instance(imds, "2021-12-13").json()["compute"]
    assert newest["securityProfile"]["securityType"] == ""
    assert newest["storageProfile"]["resourceDisk"] == {"size": "0"}


def test_standard_sku_public_ip_is_not_shown(local_azure):
    standard = make_vm(local_azure, name="std", sku="Standard")
    try:
        nic = instance(standard.imds()).json()["network"]["interface"][0]
        assert nic["ipv4"]["ipAddress"][0]["publicIpAddress"] == ""
    finally:
        standard.delete()


# -- “Azure Instance Metadata Service for virtual machines” route filtering and format ------------
def test_leaf_needs_format_text(ubuntu, imds):
    assert instance(imds, path="/compute/vmId").status_code == 400
    assert instance(imds, path="/compute/vmId", format="json").status_code == 400
    r = instance(imds, path="/compute/name", format="text")
    assert r.status_code == 200 and r.text == "ubuntu"
    assert r.headers["content-type"].startswith("text/plain")


def test_paths_with_array_indexes(ubuntu, imds):
    r = instance(imds, path="/network/interface/0/ipv4/ipAddress/0/publicIpAddress",
                 format="text")
    assert r.text == ubuntu.address
    assert instance(imds, path="/network/interface/0").json()["macAddress"] == "000D3A123456"
    assert instance(imds, path="/network/interface/1").status_code == 404


def test_tagslist_is_a_bare_array_and_tags_text_a_string(imds):
    r = instance(imds, path="/compute/tagsList")
    assert r.status_code == 200
    assert [t["value"] for t in r.json() if t["name"] == "vault"] == ["keyvault-1a2b3c4d"]
    r = instance(imds, path="/compute/tags", format="text")
    assert r.text == "lab:identity;site:citadel;vault:keyvault-1a2b3c4d"


def test_unknown_and_case_mismatched_paths_are_404(imds):
    assert instance(imds, path="/compute/nosuch").status_code == 404
    assert instance(imds, path="/compute/tagslist").status_code == 404  # case-sensitive
    assert imds.get(f"{IMDS}/metadata/nosuch", headers=H,
                    params={"api-version": "2020-09-01"}).status_code == 404


def test_versions_need_no_api_version(imds):
    r = imds.get(f"{IMDS}/metadata/versions", headers=H)
    assert r.status_code == 200
    versions = r.json()["apiVersions"]
    assert "2020-09-01" in versions and "2018-02-01" in versions


# -- “Azure Instance Metadata Service for virtual machines” errors --------------------------------
def test_missing_or_wrong_metadata_header_is_400(imds):
    expected = {"error": "Bad request. Required metadata header not specified"}
    for headers in ({}, {"Metadata": "True"}, {"Metadata": "yes"}):
        r = imds.get(f"{IMDS}/metadata/instance", headers=headers,
                     params={"api-version": "2020-09-01"})
        assert r.status_code == 400 and r.json() == expected


def test_missing_or_unsupported_api_version_lists_the_newest(imds):
    for params in ({}, {"api-version": "2016-01-01"}, {"api-version": "latest"}):
        r = imds.get(f"{IMDS}/metadata/instance", headers=H, params=params)
        assert r.status_code == 400
        body = r.json()
        assert body["error"].startswith("Bad request. api-version is invalid or was not "
                                        "specified in the request.")
        assert body["newest-versions"][0] == "2025-04-07"


def test_x_forwarded_for_is_refused(imds):
    r = imds.get(
        f"{IMDS}/metadata/instance", params={"api-version": "2020-09-01"},
        headers={**H, "X-Forwarded-For": "10.0.0.9"})
    assert r.status_code == 400 and "error" in r.json()


def test_wrong_verb_is_405(imds):
    r = imds.post(f"{IMDS}/metadata/instance", headers=H, params={"api-version": "2020-09-01"})
    assert r.status_code == 405


def test_only_requests_from_a_vm_are_answered(local_azure, ubuntu, imds):
    # Straight at the listener (no proxy, no key): refused.
    r = requests.get(f"http://127.0.0.1:{local_azure.vms.imds_port}/metadata/instance",
                     headers=H, params={"api-version": "2020-09-01"})
    assert r.status_code == 403
    # A key a client makes up is replaced by the proxy with its own VM's.
    r = imds.get(f"{IMDS}/metadata/instance/compute/name", headers={**H, "x-milab-vm-key": "x"},
                 params={"api-version": "2020-09-01", "format": "text"})
    assert r.text == "ubuntu"


# -- “How to use managed identities for Azure resources on an Azure VM to acquire an access token” the token endpoint ---
def test_system_identity_token_has_the_contract_claims(ubuntu, imds):
    r = token(imds)
    assert r.status_code == 200
    body = r.json()
    assert all(isinstance(v, str) for v in body.values())
    assert body["resource"] == "https://management.azure.com/"
    assert body["token_type"] == "Bearer" and body["client_id"] == ubuntu.client_id
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["aud"] == "https://management.azure.com/"
    assert claims["oid"] == claims["sub"] == ubuntu.principal_id
    assert claims["appid"] == ubuntu.client_id and claims["appidacr"] == "2"
    assert claims["tid"] == ubuntu.azure.tenant_id and claims["ver"] == "1.0"
    assert claims["exp"] - claims["iat"] == 86399
    assert claims["xms_mirid"] == ubuntu.id.replace("/resourceGroups/", "/resourcegroups/")
    assert "xms_az_rid" not in claims


def test_resource_is_echoed_exactly(imds):
    body = token(imds, "https://vault.azure.net").json()
    assert body["resource"] == "https://vault.azure.net"
    assert jwt.decode(body["access_token"],
                      options={"verify_signature": False})["aud"] == "https://vault.azure.net"


def test_cached_token_counts_down(imds):
    first = token(imds, "https://graph.microsoft.com/").json()
    time.sleep(1.1)
    second = token(imds, "https://graph.microsoft.com/").json()
    assert second["access_token"] == first["access_token"]
    assert int(second["expires_in"]) < int(first["expires_in"]) <= 86399


def test_user_assigned_identity_by_each_selector(ubuntu, imds):
    ua = ubuntu.user_assigned[0]
    for params in ({"client_id": ua["clientId"]}, {"object_id": ua["principalId"]},
                   {"msi_res_id": ua["id"]}, {"mi_res_id": ua["id"]}):
        r = token(imds, **params)
        assert r.status_code == 200, (params, r.text)
        claims = jwt.decode(r.json()["access_token"], options={"verify_signature": False})
        assert claims["oid"] == ua["principalId"] and claims["appid"] == ua["clientId"]
        assert claims["xms_mirid"] == ua["id"].replace("/resourceGroups/", "/resourcegroups/")
        assert claims["xms_az_rid"] == ubuntu.id.replace("/resourceGroups/", "/resourcegroups/")
    assert token(imds, client_id="00000000-0000-0000-0000-000000000000").json() == {
        "error": "invalid_request", "error_description": "Identity not found"}


def test_unknown_resource_is_invalid_resource(local_azure, imds):
    r = token(imds, "https://nosuch.example.com/")
    assert r.status_code == 400
    body = r.json()
    assert body["error"] == "invalid_resource"
    assert body["error_description"].startswith(
        "AADSTS500011: The resource principal named https://nosuch.example.com/ was not found in "
        f"the tenant named {local_azure.tenant_id}.")


def test_identity_errors(imds):
    r = imds.get(f"{IMDS}/metadata/identity/oauth2/token",
                 params={"api-version": "2018-02-01", "resource": "https://management.azure.com/"})
    assert r.status_code == 400 and r.json() == {
        "error": "invalid_request", "error_description": "Required metadata header not specified"}
    r = imds.get(
        f"{IMDS}/metadata/identity/oauth2/token", headers=H,
        params={"api-version": "2017-12-01", "resource": "https://management.azure.com/"})
    assert r.status_code == 400 and "newest-versions" in r.json()


def test_identity_info(local_azure, imds):
    r = imds.get(f"{IMDS}/metadata/identity/info", headers=H, params={"api-version": "2018-02-01"})
    assert r.json() == {"tenantId": local_azure.tenant_id}


def test_vm_without_identity_and_identity_removed_later(local_azure):
    bare = make_vm(local_azure, name="bare", identity="")
    withid = make_vm(local_azure, name="loses")
    try:
        expected = {"error": "invalid_request", "error_description": "Identity not found"}
        r = token(bare.imds())
        assert r.status_code == 400 and r.json() == expected
        assert token(withid.imds()).status_code == 200

        def remove(cloud):
            body = cloud.resources[withid.key]
            body["identity"] = {"type": "None"}
            return body
        withid.mutate(remove)
        assert token(withid.imds()).json() == expected
    finally:
        bare.delete()
        withid.delete()


def test_several_user_assigned_and_no_system_identity_needs_a_selector(local_azure):
    multi = make_vm(local_azure, name="multi", identity="", user_assigned=2)
    try:
        r = token(multi.imds())
        assert r.status_code == 400
        assert r.json()["error_description"].startswith("Multiple user assigned identities exist")
        assert token(multi.imds(), client_id=multi.user_assigned[1]["clientId"]).status_code == 200
    finally:
        multi.delete()


# -- “Azure Instance Metadata Service for virtual machines”, “Attested data” ----------------------
def attested_doc(imds, version="2020-09-01", **params):
    return imds.get(f"{IMDS}/metadata/attested/document", headers=H,
                    params={"api-version": version, **params})


def test_attested_document_is_pkcs7_signed_by_metadata_azure_com(local_azure, ubuntu, imds):
    from cryptography import x509

    from pytest_milab.azure import attest

    r = attested_doc(imds, nonce="0123456789")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"encoding", "signature"} and body["encoding"] == "pkcs7"
    anchors = x509.load_pem_x509_certificates(local_azure.ca.ca_path.read_bytes())
    doc = attest.verify(body, nonce="0123456789", anchors=anchors)  # raises unless genuine
    vm = local_azure.cloud.resources[ubuntu.key]
    assert doc["vmId"] == vm["properties"]["vmId"]
    assert doc["subscriptionId"] == local_azure.subscription_id
    assert doc["sku"] == instance(imds).json()["compute"]["sku"] != ""
    assert set(doc) == {"nonce", "plan", "sku", "subscriptionId", "timeStamp", "vmId"}
    assert doc["plan"] == {"name": "", "product": "", "publisher": ""}
    created = time.strptime(doc["timeStamp"]["createdOn"], "%m/%d/%y %H:%M:%S -0000")
    expires = time.strptime(doc["timeStamp"]["expiresOn"], "%m/%d/%y %H:%M:%S -0000")
    assert time.mktime(expires) - time.mktime(created) == 6 * 3600
    assert attest.matches_vm(doc, vm, local_azure.subscription_id) is None


def test_attested_document_without_nonce_uses_the_time_and_older_versions_sign_less(imds):
    from pytest_milab.azure import attest

    body = attested_doc(imds, "2018-10-01").json()
    # Read the signed content without the chain (checked above): the fields of that version.
    signed = attest._signed_data(body)
    doc = __import__("json").loads(signed["encap_content_info"]["content"].native)
    assert set(doc) == {"nonce", "plan", "timeStamp", "vmId"}
    assert len(doc["nonce"]) == 15 and doc["nonce"][8] == "-"  # YYYYMMDD-HHMMSS


def test_attested_document_refuses_bad_nonce_old_version_and_no_header(imds):
    r = attested_doc(imds, nonce="not a nonce!")
    assert r.status_code == 400 and "Nonce" in r.json()["error"]
    r = attested_doc(imds, nonce="x" * 33)
    assert r.status_code == 400
    r = attested_doc(imds, "2018-04-02")
    assert r.status_code == 400 and "newest-versions" in r.json()
    r = imds.get(f"{IMDS}/metadata/attested/document", params={"api-version": "2020-09-01"})
    assert r.status_code == 400 and r.json() == {
        "error": "Bad request. Required metadata header not specified"}
    r = imds.post(f"{IMDS}/metadata/attested/document", headers=H,
                  params={"api-version": "2020-09-01"})
    assert r.status_code == 405


def test_tokens_for_an_app_id_uri_or_app_id_with_a_service_principal(local_azure, ubuntu, imds):
    cloud = local_azure.cloud
    app = cloud.add_application("milab evidence")
    app.identifier_uris = ["api://milab-evidence-imds"]
    r = token(imds, "api://milab-evidence-imds")
    assert r.status_code == 400 and "AADSTS500011" in r.json()["error_description"]
    cloud.add_service_principal(app.app_id, app.display_name)
    for resource in ("api://milab-evidence-imds", app.app_id):
        r = token(imds, resource)
        assert r.status_code == 200, r.text
        claims = jwt.decode(r.json()["access_token"], options={"verify_signature": False})
        assert claims["aud"] == resource and claims["oid"] == ubuntu.principal_id
        assert claims["xms_mirid"].lower() == ubuntu.id.lower()
