"""Part 3 of the lab, inside the VM: IMDS, tokens, and what the identity may do with them.

Each check reads one result of the in-VM probe, which ran once per lab over SSH acting as the
VM's identity; tokens and secret values stayed in the VM. The VM is the student's: what it
reports is checked against what ARM shows (the grader's own Reader reads), and a step ARM
contradicts fails whatever the VM says."""

import pytest

from pytest_milab import shapes
from pytest_milab.azure import attest

from .probe_parts import secret_part

MANAGEMENT = "https://management.azure.com/"
VAULT = "https://vault.azure.net"


@pytest.mark.milab_step("ssh", title="The VM answers SSH", needs=("vm",))
def test_ssh(lab):
    assert lab.ssh.ok, lab.ssh.error or "the VM was not reached over SSH"


@pytest.mark.milab_step("imds-instance", title="IMDS describes this VM and its site tag",
                        needs=("ssh",))
def test_imds_instance(lab, milab_spec):
    # What the machine reports can only fail this step ...
    result = lab.refute_with("imds_instance")
    assert result["status"] == 200, f"IMDS /metadata/instance answered {result['status']}"
    compute = (result.get("json") or {}).get("compute") or {}
    assert str(compute.get("resourceId") or "").lower() == lab.vm["id"].lower(), (
        f"IMDS reports resourceId {compute.get('resourceId')!r}, not this VM")
    tags = {t.get("name"): t.get("value") for t in compute.get("tagsList") or []}
    assert tags.get("site") == milab_spec.tags["site"], (
        f"IMDS tagsList has site={tags.get('site')!r}, not {milab_spec.tags['site']!r}")
    # ... a pass rests on Azure's signature: the probe ran in this VM and reached its IMDS
    # now (the grader's nonce), and IMDS serves the tags ARM holds.
    reason = attest.matches_vm(lab.signed("attested"), lab.vm, lab.subscription)
    assert reason is None, reason
    arm_site = (lab.vm.get("tags") or {}).get("site")
    assert arm_site == milab_spec.tags["site"], f"the VM's site tag is {arm_site!r} in ARM"


@pytest.mark.milab_step("imds-tags-path", title="IMDS tagsList path gives the vault tag",
                        needs=("ssh",))
def test_imds_tags_path(lab):
    result = lab.probe("imds_tags")
    assert result["status"] == 200, f"IMDS .../compute/tagsList answered {result['status']}"
    body = result.get("json")
    assert isinstance(body, list), "IMDS .../compute/tagsList did not return a JSON array"
    vault = [t.get("value") for t in body if t.get("name") == "vault"]
    assert vault == [lab.vault_name], f"the vault tag in IMDS is {vault or 'missing'}"
    arm_vault = (lab.vm.get("tags") or {}).get("vault")
    assert arm_vault == lab.vault_name, (
        f"ARM shows the VM's vault tag as {arm_vault!r}, yet the machine reports IMDS gives "
        f"{lab.vault_name}")


@pytest.mark.milab_step("jq", title="jq is installed", needs=("ssh",))
def test_jq(lab):
    assert lab.probe("jq").get("path"), "jq is not installed: sudo apt install jq -y"


@pytest.mark.milab_step("management-token", title="IMDS gives the identity an ARM token",
                        needs=("ssh", "vm-identity"))
def test_management_token(lab):
    # With --milab-evidence-audience a pass rests on a token Entra signed for the grader's
    # audience; the machine's account of its ARM token can then only fail the step.
    evidence = lab.signed("evidence_token")
    token = lab.probe("management_token") if evidence is None else \
        lab.refute_with("management_token")
    assert token["status"] == 200, (
        f"IMDS refused a management token ({token['status']} {token.get('code')}: "
        f"{token.get('message')})")
    claims = token["claims"]
    assert claims.get("aud") == MANAGEMENT, f"the token's aud is {claims.get('aud')!r}"
    assert claims.get("oid", "").lower() == lab.identity_principal_id.lower(), (
        "the token's oid is not the VM's identity")
    if evidence is not None:
        assert str(evidence.get("oid", "")).lower() == lab.identity_principal_id.lower(), (
            "the Entra-signed evidence token is not the VM identity's (oid)")
        assert str(evidence.get("xms_mirid", "")).lower() == lab.vm["id"].lower(), (
            "the Entra-signed evidence token was not issued to this VM (xms_mirid)")


@pytest.mark.milab_step("reader-denied-before", title="The identity is refused beyond its grant",
                        needs=("management-token",))
def test_reader_denied_before(lab):
    if lab.mode == "provision":
        # Checked before the Reader assignment: listing the group must be refused.
        result = lab.probe("list_group")
        assert result["status"] == 403 and result.get("code") == "AuthorizationFailed", (
            f"before the Reader assignment, listing the group gave {result['status']} "
            f"{result.get('code')}, not 403 AuthorizationFailed")
        roles = lab.identity_roles_on_group()
        assert not roles, (f"ARM shows the identity already holds {roles[0]['roleName']} on the "
                           "group, yet the machine reports being refused")
        return
    # Discover mode cannot replay the denial that happened before the grant; what remains
    # observable is that the identity's effective permissions stop at the group, read-only.
    sub = lab.probe("permissions_subscription")
    group = lab.probe("permissions_group")
    assert sub["status"] == 200 and group["status"] == 200, (
        f"the permissions API answered {sub['status']}/{group['status']}")
    sub_actions = shapes.actions(sub)
    assert not sub_actions, (f"the identity may {sub_actions} on the whole subscription: "
                             "remove role assignments wider than the group")
    group_actions = shapes.actions(group)
    writes = [a for a in group_actions if not a.lower().endswith("/read")]
    assert group_actions and not writes, (
        f"on the group the identity may {writes or 'nothing'}: it should be read-only (Reader)")
    _roles_agree_read_only(lab)


def _roles_agree_read_only(lab):
    """What ARM shows of the identity's roles must agree with a read-only grant on the group."""
    problem = lab.read_only_grant_problem()
    assert problem is None, problem


# Judged on what the identity was seen to do: a Reader assignment at another scope that still
# lets it list the group passes here (reader-assignment says where the grant should be).
@pytest.mark.milab_step("reader-allowed", title="The identity lists the group's resources",
                        needs=("management-token",))
def test_reader_allowed(lab):
    result = lab.probe("list_group")
    assert result["status"] == 200, (
        f"listing the group's resources as the identity gave {result['status']} "
        f"{result.get('code')}")
    seen = {str(r.get("id", "")).lower() for r in shapes.values(result)}
    expected = [("the VM", lab.vm)] + [(f"the vault {v['name']}", v) for v in lab.vaults_in_group]
    missing = [name for name, res in expected if res is None or res["id"].lower() not in seen]
    assert not missing, f"the identity's listing does not include {' and '.join(missing)}"
    assert lab.identity_roles_on_group(), (
        "ARM shows no role for the identity on the group or above, yet the machine reports "
        "listing the group's resources")


@pytest.mark.milab_step("wrong-audience", title="Key Vault rejects the management token",
                        needs=("management-token", "key-vault"))
def test_wrong_audience(lab):
    result = lab.probe("vault_with_management_token")
    assert result["status"] == 401 and "AKV10022" in (result.get("message") or ""), (
        f"Key Vault answered {result['status']} {result.get('message') or ''} to a management "
        "token, not 401 AKV10022 (invalid audience)")


@pytest.mark.milab_step("vault-denied-before", title="A vault token alone is not enough",
                        needs=("ssh", "vm-identity", "key-vault"))
def test_vault_denied_before(lab):
    token = lab.probe("vault_token")
    assert token["status"] == 200, f"IMDS refused a vault token ({token['status']})"
    assert token["claims"].get("aud") == VAULT, f"the vault token's aud is {token['claims']}"
    if lab.mode == "provision":
        # Checked before the identity's access policy: reading the secret must be refused.
        read = lab.probe("secret_read")
        assert read["status"] == 403, (
            f"before the identity's access policy, reading the secret gave {read['status']}, "
            "not 403")
        assert not lab.identity_may_get_secrets(), (
            "ARM shows the vault already lets the identity get secrets, yet the machine reports "
            "being refused")
        return
    listing = lab.probe("vault_list")
    assert listing["status"] == 403, (
        f"listing secrets as the identity gave {listing['status']}, not 403: its access policy "
        "should grant get only")
    granted = shapes.secret_permissions(lab.access_policy_for(lab.identity_principal_id))
    assert not granted & {"list", "all"}, (
        f"ARM shows the identity's access policy grants secrets {sorted(granted)}, yet the "
        "machine reports listing them refused")


# Judged on the read itself: an RBAC-model vault with "Key Vault Secrets User" for the
# identity reads the secret too (identity-access-policy says what the lab asked for).
@pytest.mark.milab_step("secret-read", title="The identity reads portal-phrase",
                        needs=("ssh", "vm-identity", "key-vault"))
def test_secret_read(lab, milab_spec):
    result = lab.probe("secret_read")
    assert result["status"] == 200, (
        f"reading {milab_spec.secret_name} as the identity gave {result['status']} "
        f"{result.get('code')}")
    # Compared here, on the grader: the VM is never told the expected value.
    assert lab.same_secret(result.get("value"), milab_spec.secret_value), (
        f"{milab_spec.secret_name} does not hold the lab's value")
    _secrets_readable_in_arm(lab, [milab_spec.secret_name])


def _secrets_readable_in_arm(lab, names):
    """ARM must show the secrets the machine reports reading, and a grant that lets the
    identity read them (the digests alone prove nothing: the student knows the values)."""
    absent = [n for n in names if n.lower() not in lab.vault_secret_names]
    assert not absent, (f"ARM lists no secret {', '.join(absent)} in the vault, yet the machine "
                        "reports reading it")
    assert lab.identity_may_get_secrets(), (
        "ARM shows no access policy granting the identity get on the vault's secrets, yet the "
        "machine reports reading them")


SP_FIELDS = {"appId": "client-id", "password": "client-secret", "tenant": "tenant-id"}


@pytest.mark.milab_step("sp-secrets", title="The vault holds the service principal's credentials",
                        needs=("ssh", "vm-identity", "key-vault"))
def test_sp_secrets(lab, milab_spec):
    results = {n: lab.probe(secret_part(n)) for n in milab_spec.sp_secret_names}
    missing = [n for n, r in results.items() if r["status"] != 200]
    assert not missing, f"secrets not readable: {', '.join(missing)}"
    sp = results["service-principal"]
    fields = sp.get("fields")
    assert fields is not None, "service-principal is not a JSON object"
    lacking = sorted(set(SP_FIELDS) - set(fields))
    assert not lacking, f"service-principal lacks {lacking}"
    assert sp.get("compact"), "service-principal is not compact JSON (jq -c)"
    # Keyed digests of the same run: equal exactly when the values are.
    wrong = [secret for field, secret in SP_FIELDS.items()
             if fields[field].get("hmac") != (results[secret].get("value") or {}).get("hmac")]
    assert not wrong, f"service-principal disagrees with {', '.join(sorted(wrong))}"
    _secrets_readable_in_arm(lab, milab_spec.sp_secret_names)


@pytest.mark.milab_step("sp-login", title="The stored credentials sign in", needs=("sp-secrets",))
def test_sp_login(lab):
    # With --milab-evidence-audience a pass rests on a token Entra signed for the stored
    # credentials; the machine's account of its sign-in can then only fail the step.
    evidence = lab.signed("sp_evidence_token")
    result = lab.probe("sp_login") if evidence is None else lab.refute_with("sp_login")
    assert result["status"] == 200, (
        f"Entra refused the stored credentials ({result['status']} {result.get('code')}: "
        f"{result.get('message')})")
    if evidence is not None:
        # ARM shows who holds Contributor by object id; the token names both ids, and its
        # appid must be the client-id the vault stores (keyed digests, compared here).
        contributors = {r["principalId"].lower() for r in lab.role_assignments
                        if r["roleName"] == "Contributor" and r["scope"].lower()
                        == lab.group_id.lower()}
        assert str(evidence.get("oid", "")).lower() in contributors, (
            "the stored credentials sign in as a principal that is not Contributor on the group")
        stored = lab.refute_with(secret_part("client-id")).get("value")
        assert lab.same_secret(stored, str(evidence.get("appid", ""))), (
            "the Entra-signed token's appid is not the client-id the vault stores")


def _skip_without_local_cli(lab):
    if lab.cli_unavailable_reason:
        pytest.skip(lab.cli_unavailable_reason)


@pytest.mark.milab_step("az-cli", title="The Azure CLI is installed", needs=("ssh",))
def test_az_cli(lab):
    _skip_without_local_cli(lab)
    assert lab.probe("az").get("path"), (
        "the Azure CLI is not installed: curl -sL https://aka.ms/InstallAzureCLIDeb | sudo bash")


@pytest.mark.milab_step("az-login-identity", title="az login --identity sees the subscription",
                        needs=("az-cli",))
def test_az_login_identity(lab):
    _skip_without_local_cli(lab)
    result = lab.probe("az_login")
    assert result.get("exit_code") == 0, f"az login --identity failed: {result.get('stderr')}"
    accounts = result.get("json") if isinstance(result.get("json"), list) else []
    assert lab.subscription in [a.get("id") for a in accounts if isinstance(a, dict)], (
        "az login --identity does not list the lab's subscription: give the identity a role "
        "on the group (Reader)")
