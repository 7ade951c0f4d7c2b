"""Part 3, inside the server: HIMDS's challenge, tokens, and what the identity may do with them.

Each check reads one result of the in-machine probe, which ran once per lab over SSH acting as
the server's identity through HIMDS (localhost:40342); tokens and secret values stayed there.
The server is the student's: what it reports is checked against what ARM shows (the grader's
own Reader reads), and a step ARM contradicts fails whatever the server says."""

import pytest

from pytest_milab import shapes

MANAGEMENT = "https://management.azure.com/"
KEY_DIR = "/var/opt/azcmagent/tokens/"


@pytest.mark.milab_step("ssh", title="The server answers SSH", needs=("machine",))
def test_ssh(lab):
    assert lab.ssh.ok, lab.ssh.error or "the server was not reached over SSH"


@pytest.mark.milab_step("himds-challenge", title="HIMDS's key-file challenge is answered",
                        needs=("ssh", "machine-identity"))
def test_himds_challenge(lab):
    token = lab.probe("management_token")
    challenge = token.get("challenge") or {}
    assert challenge.get("status") == 401, (
        f"HIMDS answered {challenge.get('status')} to a token request without the key, not 401 "
        "with a key file to read")
    realm = str(challenge.get("realm") or "")
    assert realm.startswith(KEY_DIR) and realm.endswith(".key"), (
        f"HIMDS's challenge names {realm or 'no file'}, not a key file under {KEY_DIR}")
    assert challenge.get("key") in ("read", "read with sudo"), (
        f"{lab.ssh.target or 'the SSH user'} {challenge.get('key')}: add the user to the "
        "himds group (sudo usermod -aG himds <user>) or allow it sudo")
    assert token["status"] == 200, (
        f"with the key, HIMDS answered {token['status']} {token.get('code')}: "
        f"{token.get('message')}")


# On an Arc-enabled server every token comes through HIMDS's challenge: without it, nothing
# can be checked as the identity.
@pytest.mark.milab_step("management-token", title="HIMDS gives the identity an ARM token",
                        needs=("himds-challenge",))
def test_management_token(lab):
    # With --milab-evidence-audience a pass rests on a token Entra signed for the grader's
    # audience; the machine's account of its ARM token can then only fail the step.
    evidence = lab.signed("evidence_token")
    token = lab.probe("management_token") if evidence is None else \
        lab.refute_with("management_token")
    assert token["status"] == 200, (
        f"HIMDS refused a management token ({token['status']} {token.get('code')}: "
        f"{token.get('message')})")
    claims = token["claims"]
    assert claims.get("aud") == MANAGEMENT, f"the token's aud is {claims.get('aud')!r}"
    assert claims.get("oid", "").lower() == lab.identity_principal_id.lower(), (
        "the token's oid is not the server's identity")
    if evidence is not None:
        assert str(evidence.get("oid", "")).lower() == lab.identity_principal_id.lower(), (
            "the Entra-signed evidence token is not the server identity's (oid)")
        assert str(evidence.get("xms_mirid", "")).lower() == lab.machine["id"].lower(), (
            "the Entra-signed evidence token was not issued to this server (xms_mirid)")


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
    # Discover mode cannot replay the denial that came before the grant; what remains
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
    # What ARM shows of the identity's roles must agree with a read-only grant on the group.
    problem = lab.read_only_grant_problem()
    assert problem is None, problem


# Judged on what the identity was seen to do: a Reader grant at another scope that still lets
# it list the group passes here (reader-assignment says where the grant should be).
@pytest.mark.milab_step("reader-allowed", title="The identity lists the group's resources",
                        needs=("management-token",))
def test_reader_allowed(lab):
    result = lab.probe("list_group")
    assert result["status"] == 200, (
        f"listing the group's resources as the identity gave {result['status']} "
        f"{result.get('code')}")
    seen = {str(r.get("id", "")).lower() for r in shapes.values(result)}
    assert lab.machine["id"].lower() in seen, (
        "the identity's listing does not include the server's own Arc resource")
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


# Judged on the read itself: an RBAC-model vault with "Key Vault Secrets User" for the
# identity reads the secret too (identity-access-policy says what the lab asked for).
@pytest.mark.milab_step("secret-read", title="The server's identity reads the secret",
                        needs=("himds-challenge", "key-vault"))
def test_secret_read(lab, milab_spec):
    result = lab.probe("secret_read")
    assert result["status"] == 200, (
        f"reading {milab_spec.secret_name} as the server's identity gave {result['status']} "
        f"{result.get('code')}")
    # Compared here, on the grader: the server is never told the expected value.
    assert lab.same_secret(result.get("value"), milab_spec.secret_value), (
        f"{milab_spec.secret_name} does not hold the lab's value")
    # ARM must show the secret and a grant that lets the identity read it (the digest alone
    # proves nothing: the student knows the value).
    assert milab_spec.secret_name.lower() in lab.vault_secret_names, (
        f"ARM lists no secret {milab_spec.secret_name} in the vault, yet the machine reports "
        "reading it")
    assert lab.identity_may_get_secrets(), (
        "ARM shows no access policy granting the identity get on the vault's secrets, yet the "
        "machine reports reading them")
