"""Signed evidence end to end: IMDS's attested document and, with --milab-evidence-audience,
Entra-signed tokens. A complete lab scores full marks with verification on and off, the steps
those prove say `signed`, and a student who is root in their VM and rewrites the probe's answer
(a fake python3 first on PATH) cannot pass `management-token` or `sp-login` on a lab where they
are broken once verification is on (without it, the same forgery passes: the tests show the
difference)."""

from __future__ import annotations

import json
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from e2ekit import ARC_SUITE, grade, outcomes, suite_defects, suite_spec, suite_stages

from pytest_milab import Stage
from pytest_milab.emulator.machines import namespace
from pytest_milab.provision import build_in_local_azure

AUDIENCE = "api://milab-evidence-e2e"
ON = ("--milab-evidence-audience", AUDIENCE)
AZ_STEPS = {"az-cli", "az-login-identity"}
MANAGEMENT = "https://management.azure.com/"

# Runs the real probe and rewrites its one result line with the student's own values (and
# leaves out the parts named in "-drop").
FORGER = r'''
import json, sys
forged = json.loads(sys.argv[1])
for line in sys.stdin:
    if line.startswith("MILAB-PROBE-RESULT "):
        nonce, _, rest = line[len("MILAB-PROBE-RESULT "):].partition(" ")
        data = json.loads(rest)
        data.update({k: v for k, v in forged.items() if k in data})
        for k in forged.get("-drop", ()):
            data.pop(k, None)
        line = "MILAB-PROBE-RESULT " + nonce + " " + json.dumps(data) + "\n"
    sys.stdout.write(line)
'''


def forging_python(forged):
    """A stage: the VM's /usr/bin/python3 (which the probe runs), replaced by its root, becomes
    a wrapper that forges the probe's answer (`forged`: the parts' results to put in, or a
    function of the stage's context giving them). Only where each VM has its own /usr (the
    local Azure runs as root): elsewhere the host's python3 would be the one replaced, so
    nothing is forged (and the tests of forgeries skip)."""
    def stage(ctx):
        if not namespace.wanted():
            return
        values = forged(ctx) if callable(forged) else forged
        payload = json.dumps(values).replace("'", "'\\''")
        script = (
            f"cat > \"$HOME/.forge.py\" <<'EOF'\n{FORGER}\nEOF\n"
            'p=/usr/bin/python3 && sudo cp "$p" "$p.real" && sudo rm -f "$p" && '
            'printf \'#!/bin/sh\\n"%s.real" "$@" | "%s.real" "%s" \'"\'"\'%s\'"\'"\'\\n\' '
            f'"$p" "$p" "$HOME/.forge.py" \'{payload}\' | sudo tee "$p" >/dev/null && '
            'sudo chmod 755 "$p"')
        result = ctx.run_in_vm(script)
        assert result.ok, result.stderr
    return stage


def forged_token(local_azure, **claims) -> str:
    """A token with the claims a student wants, signed by a key of their own under Entra's key
    id: what a student can make without Entra."""
    now = int(time.time())
    body = {"aud": AUDIENCE, "iss": f"https://sts.windows.net/{local_azure.tenant_id}/",
            "tid": local_azure.tenant_id, "iat": now, "nbf": now, "exp": now + 3600,
            "ver": "1.0", **claims}
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": local_azure.tokens.kid})


@pytest.fixture(scope="module")
def evidence_app(local_azure):
    cloud = local_azure.cloud
    app = cloud.add_application("milab evidence")
    app.identifier_uris = [AUDIENCE]
    cloud.add_service_principal(app.app_id, app.display_name)
    return app


@pytest.fixture(scope="module")
def labs(local_azure, evidence_app):
    """A complete lab, and one whose stored credentials no longer sign in (the sp-login
    defect) with a forging python3."""
    spec = suite_spec()
    key, failures = build_in_local_azure(local_azure, ["signed-complete"], suite_stages(), spec)
    assert failures == []
    stages, state = suite_defects()["sp-login"].apply(suite_stages())
    forged = {"sp_login": {"status": 200, "code": None, "message": "", "inner": None},
              "sp_evidence_token": {"status": 200, "token": forged_token(
                  local_azure, oid=str(uuid.uuid4()), appid=str(uuid.uuid4()))}}
    _, failures = build_in_local_azure(local_azure, ["signed-forged-sp"],
                                       [*stages, Stage("forge", forging_python(forged))], spec,
                                       state=state)
    assert failures == []
    return key


def _graded(local_azure, labs, tmp_path, *extra, groups=("signed-complete", "signed-forged-sp")):
    return grade(local_azure, labs, tmp_path, *groups, extra=extra)


def evidence_of(report, group):
    lab = next(g for g in report["groups"] if g["group"] == group)
    return {s["id"]: s["evidence"] for s in lab["steps"]}


@pytest.mark.slow
@pytest.mark.parametrize("verification", ["off", "on"])
def test_a_complete_lab_scores_full_marks_and_says_what_is_signed(local_azure, labs, tmp_path,
                                                                  verification):
    run = _graded(local_azure, labs, tmp_path, *(ON if verification == "on" else ()))
    got = outcomes(run.report, "signed-complete")
    not_passed = {s: o for s, o in got.items() if o[0] != "passed"}
    assert set(not_passed) <= AZ_STEPS and {o[0] for o in not_passed.values()} <= {"skipped"}
    lab = next(g for g in run.report["groups"] if g["group"] == "signed-complete")
    assert lab["score"] == lab["max_score"] == len(got) - len(not_passed)
    evidence = evidence_of(run.report, "signed-complete")
    assert evidence["imds-instance"] == "signed"  # the attested document, always asked for
    signed = "signed" if verification == "on" else "vm-reported"
    assert evidence["management-token"] == evidence["sp-login"] == signed
    # The evidence token itself reaches no report or output; its claims are not kept there.
    text = run.output + json.dumps(run.report) + run.file("grades.csv") + run.file("junit.xml")
    assert "eyJ" not in text


needs_own_usr = pytest.mark.skipif(
    not namespace.wanted(), reason="a VM's root has its own /usr only when the local Azure runs "
                                   "as root")


@pytest.mark.slow
@needs_own_usr
def test_forging_the_sign_in_passes_without_verification_and_fails_with_it(local_azure, labs,
                                                                           tmp_path):
    off = outcomes(_graded(local_azure, labs, tmp_path / "off").report, "signed-forged-sp")
    assert off["sp-login"][0] == "passed"  # the machine's word alone: the forgery works
    on = outcomes(_graded(local_azure, labs, tmp_path / "on", *ON).report, "signed-forged-sp")
    assert on["sp-login"][0] == "failed", on["sp-login"]
    assert "does not verify" in on["sp-login"][1]


@pytest.mark.slow
@needs_own_usr
def test_forging_the_identity_s_tokens_fails_with_verification(local_azure, labs, tmp_path):
    """IMDS refuses this VM's identity tokens (it answers 500 to everything); the student's
    python3 reports a management token and an evidence token anyway."""
    def forged(ctx):
        vm = ctx.clients.compute.virtual_machines.get(ctx.group, ctx.spec.vm_name)
        principal = vm.identity.principal_id
        return {"management_token": {"status": 200, "claims": {"aud": MANAGEMENT,
                                                               "oid": principal}},
                "evidence_token": {"status": 200, "token": forged_token(
                    local_azure, oid=principal, xms_mirid=vm.id)}}

    _, failures = build_in_local_azure(local_azure, ["signed-forged-mi"],
                                       [*suite_stages(), Stage("forge", forging_python(forged))],
                                       suite_spec())
    assert failures == []
    local_azure.knobs.faults.error_burst("imds", status=500, count=100000)
    try:
        off = outcomes(_graded(local_azure, labs, tmp_path / "off",
                               groups=("signed-forged-mi",)).report, "signed-forged-mi")
        on = outcomes(_graded(local_azure, labs, tmp_path / "on", *ON,
                              groups=("signed-forged-mi",)).report, "signed-forged-mi")
    finally:
        local_azure.knobs.reset()
    assert off["management-token"][0] == "passed"  # the machine's word alone
    assert on["management-token"][0] == "failed", on["management-token"]
    assert "does not verify" in on["management-token"][1]
    # The attested document could not be had (IMDS fails): imds-instance does not pass.
    assert on["imds-instance"][0] != "passed"


@pytest.mark.slow
@needs_own_usr
def test_leaving_the_signed_tokens_out_of_the_answer_fails_with_verification(local_azure,
                                                                             evidence_app,
                                                                             tmp_path):
    """The student's python3 forges the sign-in and drops both evidence tokens from the answer,
    as if the grader had not asked for them: the steps they would prove fail, never fall back
    on the machine's word."""
    stages, state = suite_defects()["sp-login"].apply(suite_stages())
    forged = {"sp_login": {"status": 200, "code": None, "message": "", "inner": None},
              "-drop": ["sp_evidence_token", "evidence_token"]}
    key, failures = build_in_local_azure(local_azure, ["signed-dropped"],
                                         [*stages, Stage("forge", forging_python(forged))],
                                         suite_spec(), state=state)
    assert failures == []
    off = outcomes(grade(local_azure, key, tmp_path / "off", "signed-dropped").report,
                   "signed-dropped")
    assert off["sp-login"][0] == "passed"  # the machine's word alone: the forgery works
    on = outcomes(grade(local_azure, key, tmp_path / "on", "signed-dropped", extra=ON).report,
                  "signed-dropped")
    for step in ("sp-login", "management-token"):
        assert on[step][0] == "failed", (step, on[step])
        assert "leaves out" in on[step][1] and "altered" in on[step][1], on[step]


@pytest.mark.slow
def test_an_arc_server_s_token_is_signed_evidence_too(local_azure, evidence_app, tmp_path):
    """HIMDS issues the evidence token through its challenge (it documents no attested
    document, so the Arc suite asks for none)."""
    key, failures = build_in_local_azure(local_azure, ["signed-arc"], suite_stages(ARC_SUITE),
                                         suite_spec(ARC_SUITE))
    assert failures == []
    run = grade(local_azure, key, tmp_path, "signed-arc", extra=ON, suite=ARC_SUITE)
    got = outcomes(run.report, "signed-arc")
    assert {o for o, _ in got.values()} == {"passed"}, got
    assert evidence_of(run.report, "signed-arc")["management-token"] == "signed"


@pytest.mark.slow
def test_an_arc_server_leaving_its_token_out_fails_with_verification(local_azure, evidence_app,
                                                                     tmp_path):
    """A working Arc server whose python3 drops the evidence token from the answer: the step
    it would prove fails (the answer was altered), it does not pass on the machine's word."""
    forged = {"-drop": ["evidence_token"]}
    key, failures = build_in_local_azure(
        local_azure, ["signed-arc-dropped"],
        [*suite_stages(ARC_SUITE), Stage("forge", forging_python(forged))],
        suite_spec(ARC_SUITE))
    assert failures == []
    run = grade(local_azure, key, tmp_path, "signed-arc-dropped", extra=ON, suite=ARC_SUITE)
    got = outcomes(run.report, "signed-arc-dropped")
    assert got["management-token"][0] == "failed", got["management-token"]
    assert "leaves out evidence_token" in got["management-token"][1]
    assert evidence_of(run.report, "signed-arc-dropped")["management-token"] == "signed"


def _own_document(*, issuers=(), duplicate=False) -> dict:
    """IMDS's answer signed by a metadata.azure.com certificate of the student's own, naming
    `issuers` as its CA Issuers addresses and, `duplicate`, carrying its subjectAltName twice
    (re-signed with asn1crypto: cryptography builds no such certificate, and raises
    DuplicateExtension reading one)."""
    import base64
    import datetime as dt

    from asn1crypto import x509 as asn1_x509
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

    from pytest_milab.emulator.machines.attested import AttestationSigner, answer, document

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "metadata.azure.com")])
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(hours=1))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName("metadata.azure.com")]),
                              critical=False))
    if issuers:
        builder = builder.add_extension(x509.AuthorityInformationAccess([
            x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS,
                                   x509.UniformResourceIdentifier(u)) for u in issuers]),
            critical=False)
    cert = builder.sign(key, hashes.SHA256())
    pem = cert.public_bytes(serialization.Encoding.PEM)
    if duplicate:
        parsed = asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))
        tbs = parsed["tbs_certificate"]
        tbs["extensions"] = asn1_x509.Extensions([*tbs["extensions"], tbs["extensions"][0]])
        parsed["tbs_certificate"] = tbs
        parsed["signature_value"] = key.sign(tbs.dump(), ec.ECDSA(hashes.SHA256()))
        pem = (b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(parsed.dump())
               + b"-----END CERTIFICATE-----\n")
    signer = AttestationSigner(pem, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return answer(signer, document({"vmId": str(uuid.uuid4())}, nonce="0000000000",
                                   now=time.time(), api_version="2020-09-01"))


@pytest.mark.slow
def test_an_attested_document_the_grader_cannot_parse_fails_the_step(local_azure, tmp_path):
    """The student's python3 answers an attested document whose certificate has a duplicate
    extension: imds-instance fails with the grader's reason, it does not end `error`."""
    forged = {"attested": {"status": 200, "code": None, "message": "",
                           "json": _own_document(duplicate=True)}}
    key, failures = build_in_local_azure(local_azure, ["signed-dup-extension"],
                                         [*suite_stages(), Stage("forge", forging_python(forged))],
                                         suite_spec())
    assert failures == []
    run = grade(local_azure, key, tmp_path, "signed-dup-extension")
    got = outcomes(run.report, "signed-dup-extension")
    assert got["imds-instance"][0] == "failed", got["imds-instance"]
    assert "DuplicateExtension" in got["imds-instance"][1]
    assert run.returncode == 1, run.output[-2000:]  # every step decided


@pytest.mark.slow
def test_a_forged_certificate_s_ca_issuers_addresses_are_not_fetched(local_azure, tmp_path):
    """The student's python3 answers an attested document whose certificate names 50 CA
    Issuers addresses of the student's choosing (here a listener that counts who calls): the
    grader calls none of them, and refuses the document."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.2)
    port, calls, done = listener.getsockname()[1], [], threading.Event()

    def count():
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            calls.append(1)
            conn.close()

    threading.Thread(target=count, daemon=True).start()
    issuers = [f"http://127.0.0.1:{port}/ca{i}.crt" for i in range(50)]
    forged = {"attested": {"status": 200, "code": None, "message": "",
                           "json": _own_document(issuers=issuers)}}
    try:
        key, failures = build_in_local_azure(
            local_azure, ["signed-many-issuers"],
            [*suite_stages(), Stage("forge", forging_python(forged))], suite_spec())
        assert failures == []
        start = time.monotonic()
        run = grade(local_azure, key, tmp_path, "signed-many-issuers")
        seconds = time.monotonic() - start
    finally:
        done.set()
    got = outcomes(run.report, "signed-many-issuers")
    assert got["imds-instance"][0] == "failed", got["imds-instance"]
    assert "does not chain" in got["imds-instance"][1]
    assert calls == [] and seconds < 120, (len(calls), seconds)
