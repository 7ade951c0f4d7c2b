"""A grading run never leaks a secret or a token, and never writes to a student's resources."""

from __future__ import annotations

import hashlib
import json
import re
import uuid

import pytest
from e2ekit import engine_suite, grade, outcomes, suite_spec, suite_stages

from pytest_milab.provision import build_in_local_azure

SPEC = suite_spec()

JWT = re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}")
# A keyed digest's HMAC (hex of SHA-256): a student who sees it can test guesses against it.
HMAC_HEX = re.compile(r"(?<![0-9a-fA-F])[0-9a-f]{64}(?![0-9a-fA-F])")


@pytest.fixture(scope="module")
def canary_run(local_azure, tmp_path_factory):
    """A lab whose portal-phrase is a unique canary (so secret-read fails), graded with
    tracebacks showing locals."""
    canary = f"canary-{uuid.uuid4().hex}"
    key, _ = build_in_local_azure(local_azure, ["canary-lab"], suite_stages(), SPEC,
                                  state={"secret_value": canary})
    from azure.identity import ClientSecretCredential
    from azure.keyvault.secrets import SecretClient

    op = local_azure.operator
    with local_azure.environment():
        vault = SPEC.vault_name(
            f"/subscriptions/{local_azure.subscription_id}/resourceGroups/canary-lab")
        client = SecretClient(f"https://{vault}.vault.azure.net",
                              ClientSecretCredential(op.tenant_id, op.client_id, op.client_secret))
        sp_password = client.get_secret("client-secret").value
    start = len(local_azure.audit)
    run = grade(local_azure, key, tmp_path_factory.mktemp("canary"), "canary-lab",
                extra=("-vv", "-l", "--tb=long", "-rA", "--debug"))
    return run, (canary, sp_password), local_azure.audit.entries()[start:]


def test_the_canary_lab_fails_secret_read(canary_run):
    run, _, _ = canary_run
    got = outcomes(run.report, "canary-lab")
    assert got["secret-read"][0] == "failed"
    assert got["sp-login"][0] == "passed"  # the stored password was used, inside the VM


@pytest.mark.parametrize("where", ["output", "junit.xml", "grades.json", "grades.csv",
                                   "pytestdebug.log"])
def test_no_secret_or_token_in_any_output(canary_run, where):
    """Under -vv -l --tb=long --debug: no secret, no digest of one (keyed or not), no token
    anywhere; the failed secret-read's locals and assertion are shown all the same."""
    run, secrets, _ = canary_run
    text = run.output if where == "output" else run.file(where)
    for secret in secrets:
        assert secret not in text
        assert hashlib.sha256(secret.encode()).hexdigest() not in text
    assert not JWT.search(text)
    found = HMAC_HEX.search(text)
    assert found is None, f"an HMAC's hex in {where}: ...{text[found.start() - 80:found.end()]}"
    if where == "output":
        assert "<keyed digest of" in text  # the check's locals, with the digest's HMAC hidden


def test_discover_mode_writes_nothing(canary_run, local_azure):
    _, _, entries = canary_run
    assert entries, "the grading run made no request at all"
    grader = local_azure.grader.object_id
    assert any(e.caller_oid == grader for e in entries)
    token_hosts = ("login.microsoftonline.com", "login.windows.net")
    writes = [e for e in entries if e.is_write and e.host not in token_hosts]
    assert writes == []


def test_gathered_evidence_holds_no_secret_or_token(canary_run, local_azure):
    """What the probe brings back from the VM, before any check judges it."""
    from azure.identity import ClientSecretCredential

    from pytest_milab.azure.clients import ClientPool
    from pytest_milab.evidence import Connections, Gatherer
    from pytest_milab.settings import LabTarget, Settings

    _, secrets, _ = canary_run
    gr = local_azure.grader
    key = local_azure.workdir / "grader-ssh" / "id_ed25519"
    settings = Settings(ssh_key=str(key), ssh_port=int(local_azure.env["MILAB_SSH_PORT"]),
                        subscription=local_azure.subscription_id)
    with local_azure.environment():
        cred = ClientSecretCredential(gr.tenant_id, gr.client_id, gr.client_secret)
        connections = Connections()
        gatherer = Gatherer(settings, engine_suite(), ClientPool(cred), connections,
                            lambda: None)
        try:
            evidence = gatherer.gather_all([LabTarget("canary-lab", label="canary-lab")])
        finally:
            connections.close_all()
    text = json.dumps({label: ev.to_json() for label, ev in evidence.items()})
    assert evidence["canary-lab"].probe["secret_read"]["status"] == 200
    for secret in secrets:
        assert secret not in text
        # Digests are keyed per run: no bare hash of a secret to look up or compare.
        assert hashlib.sha256(secret.encode()).hexdigest() not in text
    assert not JWT.search(text)
