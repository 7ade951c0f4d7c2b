"""The grader's checks of signed evidence, without a local Azure running: IMDS's attested
document made as the local Azure makes it (its CA, its signer), then forged every way a student
could, and how `lab.signed` turns the verdict into a step's outcome and provenance."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time

import pytest
import trustme
from cryptography import x509

from pytest_milab import provenance
from pytest_milab.azure import attest
from pytest_milab.azure.signed import verify_parts
from pytest_milab.emulator.machines.attested import (
    SIGNER_NAMES,
    AttestationSigner,
    answer,
    document,
)
from pytest_milab.emulator.wire.network import CertificateAuthority
from pytest_milab.errors import CouldNotDecide, Unverified
from pytest_milab.evidence import LabEvidence, SshOutcome
from pytest_milab.lab import Lab

NONCE = "0123456789"
VM_ID = "9d3bd1bc-52cc-4a6e-9e8e-1c2f3a4b5c6d"
SUB = "11111111-2222-3333-4444-555555555555"
COMPUTE = {"vmId": VM_ID, "subscriptionId": SUB, "sku": "22_04-lts-gen2", "plan": {}}


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return CertificateAuthority(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def anchors(ca):
    return x509.load_pem_x509_certificates(ca.ca_path.read_bytes())


@pytest.fixture(scope="module")
def signer(ca):
    return AttestationSigner(*ca.issue(*SIGNER_NAMES))


def made(signer, nonce=NONCE, when=None, compute=COMPUTE):
    return answer(signer, document(compute, nonce=nonce, now=when or time.time(),
                                   api_version="2020-09-01"))


def test_a_genuine_document_gives_its_signed_content(signer, anchors):
    doc = attest.verify(made(signer), nonce=NONCE, anchors=anchors)
    assert doc["vmId"] == VM_ID and doc["subscriptionId"] == SUB and doc["nonce"] == NONCE
    assert attest.matches_vm(doc, {"properties": {"vmId": VM_ID.upper()}}, SUB) is None


def test_a_self_signed_document_is_refused(anchors):
    # The student's own "CA" and a metadata.azure.com certificate from it.
    own = trustme.CA()
    cert = own.issue_cert(*SIGNER_NAMES)
    forged = AttestationSigner(cert.cert_chain_pems[0].bytes(), cert.private_key_pem.bytes())
    with pytest.raises(attest.AttestationRefused, match="does not chain to a CA the grader"):
        attest.verify(made(forged), nonce=NONCE, anchors=anchors)


def test_a_certificate_of_another_name_is_refused(ca, anchors):
    other = AttestationSigner(*ca.issue("login.microsoftonline.com"))
    with pytest.raises(attest.AttestationRefused, match="not by a metadata.azure.com"):
        attest.verify(made(other), nonce=NONCE, anchors=anchors)


def test_altered_content_is_refused(signer, anchors):
    from asn1crypto import cms

    genuine = made(signer)
    info = cms.ContentInfo.load(base64.b64decode(genuine["signature"]))
    content = json.loads(info["content"]["encap_content_info"]["content"].native)
    content["vmId"] = "00000000-0000-0000-0000-000000000000"
    info["content"]["encap_content_info"]["content"] = json.dumps(content).encode()
    altered = {"encoding": "pkcs7", "signature": base64.b64encode(info.dump(force=True)).decode()}
    with pytest.raises(attest.AttestationRefused, match="not what was signed"):
        attest.verify(altered, nonce=NONCE, anchors=anchors)


def test_a_replayed_document_is_refused_for_its_nonce_and_its_age(signer, anchors):
    with pytest.raises(attest.AttestationRefused, match="not the one the grader sent"):
        attest.verify(made(signer, nonce="9999999999"), nonce=NONCE, anchors=anchors)
    old = made(signer, when=time.time() - 7 * 3600)  # expired an hour ago
    with pytest.raises(attest.AttestationRefused, match="stale"):
        attest.verify(old, nonce=NONCE, anchors=anchors)
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=7)
    with pytest.raises(attest.AttestationRefused):
        attest.verify(made(signer), nonce=NONCE, anchors=anchors, now=later)


def test_another_vm_s_document_is_not_this_lab_s(signer, anchors):
    other = dict(COMPUTE, vmId="aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee")
    doc = attest.verify(made(signer, compute=other), nonce=NONCE, anchors=anchors)
    reason = attest.matches_vm(doc, {"properties": {"vmId": VM_ID}}, SUB)
    assert reason and "not this lab's" in reason
    reason = attest.matches_vm(attest.verify(made(signer), nonce=NONCE, anchors=anchors),
                               {"properties": {"vmId": VM_ID}}, "another-subscription")
    assert reason and "subscription" in reason


@pytest.mark.parametrize("garbage", [None, "text", {"encoding": "pkcs7"},
                                     {"encoding": "pkcs7", "signature": "bm90IERFUg=="},
                                     {"encoding": "pkcs7", "signature": "%%%"}])
def test_garbage_is_refused_not_an_error(garbage, anchors):
    with pytest.raises(attest.AttestationRefused):
        attest.verify(garbage, nonce=NONCE, anchors=anchors)


# -- from the probe's answer to a step -----------------------------------------------------------
def lab_with(probe: dict, declared=None, signed=None) -> Lab:
    ev = LabEvidence(label="lab", group="g", subscription=SUB, ssh=SshOutcome(ok=True),
                     probe=probe, declared_parts=declared, signed_parts=signed)
    return Lab(ev)


def verified(results, programs, monkeypatch, anchors):
    monkeypatch.setattr(attest, "trust_anchors", lambda: anchors)
    verify_parts(results, programs, None)
    return results


def test_the_grader_checks_the_document_as_the_probe_answers(signer, anchors, monkeypatch):
    programs = [{"name": "attested", "op": "attested", "nonce": NONCE},
                {"name": "replayed", "op": "attested", "nonce": "1111111111"}]
    doc = made(signer)
    results = verified({"attested": {"status": 200, "json": doc},
                        "replayed": {"status": 200, "json": doc}}, programs, monkeypatch,
                       anchors)
    assert results["attested"] == {"status": 200, "verified": attest.verify(
        doc, nonce=NONCE, anchors=anchors)}
    lab = lab_with(results)
    with provenance.tracking() as used:
        assert lab.signed("attested")["vmId"] == VM_ID
    assert used == {provenance.SIGNED}
    with provenance.tracking() as used, pytest.raises(AssertionError, match="nonce"):
        lab.signed("replayed")
    assert provenance.weakest(used) == provenance.SIGNED


def test_a_token_is_dropped_even_when_it_cannot_be_checked():
    programs = [{"name": "evidence", "op": "signed_token"}]
    results = {"evidence": {"status": 200, "code": None, "message": "", "token": "eyJh.eyJi.c2ln"}}
    verify_parts(results, programs, None)
    assert "token" not in results["evidence"] and "eyJ" not in json.dumps(results)
    with pytest.raises(AssertionError, match="no token to verify"):
        lab_with(results).signed("evidence")


def test_what_the_machine_could_not_get_fails_and_is_its_word(monkeypatch, anchors):
    results = verified({"attested": {"status": 404, "code": "Not found", "message": ""}},
                       [{"name": "attested", "op": "attested", "nonce": NONCE}], monkeypatch,
                       anchors)
    with provenance.tracking() as used, pytest.raises(AssertionError, match="404"):
        lab_with(results).signed("attested")
    assert used == {provenance.VM_REPORTED}


def test_undecided_and_not_asked_for(monkeypatch):
    lab = lab_with({"evidence": {"status": 200, "undecided": "the tenant's keys: 503"}})
    with pytest.raises(CouldNotDecide, match="503"):
        lab.signed("evidence")
    # Without --milab-evidence-audience the part is not run: nothing to judge, no provenance.
    lab = lab_with({"other": {"status": 200}}, declared=frozenset({"other", "evidence"}),
                   signed=frozenset())
    with provenance.tracking() as used:
        assert lab.signed("evidence") is None
    assert used == set()


SIGNED_PROGRAMS = [{"name": "attested", "op": "attested", "nonce": NONCE},
                   {"name": "evidence", "op": "signed_token", "audience": "api://e"},
                   {"name": "other", "op": "imds"}]
ASKED = frozenset({"attested", "evidence"})


@pytest.mark.parametrize("answer", [{}, {"attested": None, "evidence": "eyJh.eyJi.c2ln"},
                                    {"attested": [], "evidence": {}},
                                    {"attested": {"verified": {"vmId": VM_ID}},
                                     "evidence": {"refused": "x", "verified": {"oid": "o"}}}])
def test_signed_parts_the_answer_leaves_out_or_garbles_are_refused(answer, monkeypatch,
                                                                    anchors):
    """A fake python3 that drops (or garbles) the signed parts from the probe's answer: the
    grader asked for them, so their absence is a refusal, never "not asked for"."""
    results = verified({"other": {"status": 200}, **answer}, SIGNED_PROGRAMS, monkeypatch,
                       anchors)
    assert all("verified" not in results[name] for name in ASKED)
    lab = lab_with(results, declared=frozenset({"attested", "evidence", "other"}), signed=ASKED)
    for name in ASKED:
        with provenance.tracking() as used, pytest.raises(AssertionError, match="altered"):
            lab.signed(name)
        assert used == {provenance.SIGNED}


def test_a_signed_part_left_out_of_evidence_without_a_record_is_refused():
    # Evidence that does not record what was asked (made by hand): a missing signed part is
    # still a refusal, not "not asked for".
    lab = lab_with({"other": {"status": 200}}, declared=frozenset({"other", "evidence"}))
    with pytest.raises(AssertionError, match="leaves out evidence"):
        lab.signed("evidence")


def test_a_signed_part_that_could_not_run_is_unverified(monkeypatch, anchors):
    results = verified({"attested": {"error": "OSError: \x1b[2Kboom"}, "evidence": {"error": "x"}},
                       SIGNED_PROGRAMS, monkeypatch, anchors)
    for name in ASKED:
        with pytest.raises(Unverified, match="could not run") as info:
            lab_with(results, signed=ASKED).signed(name)
        assert "\x1b" not in str(info.value)


def test_what_the_machine_puts_under_a_part_not_asked_for_is_ignored():
    """Without --milab-evidence-audience no token is asked for: a "verified" result the fake
    python3 adds under its name is not taken for signed evidence."""
    forged = {"status": 200, "verified": {"oid": "00000000-0000-0000-0000-000000000001"}}
    results = {"other": {"status": 200}, "evidence": dict(forged)}
    verify_parts(results, [{"name": "other", "op": "imds"}], None)  # nothing signed asked for
    lab = lab_with(results, declared=frozenset({"evidence", "other"}), signed=frozenset())
    with provenance.tracking() as used:
        assert lab.signed("evidence") is None
    assert used == set()


def test_refuting_with_the_machine_s_word_keeps_the_provenance():
    lab = lab_with({"imds": {"status": 200, "json": {}}})
    with provenance.tracking() as used:
        assert lab.refute_with("imds")["status"] == 200
    assert provenance.settle(used, passed=True) == provenance.CONTROL_PLANE
    assert provenance.settle(used, passed=False) == provenance.VM_REPORTED
    with provenance.tracking() as used:
        lab.probe("imds")
    assert used == {provenance.VM_REPORTED}


def test_a_digest_named_by_its_signature_algorithm_is_understood(signer, anchors):
    # IMDS's own documents name the digest sha256WithRSAEncryption, not sha256 (the
    # documentation's sample): the same digest, named by its signature algorithm.
    from asn1crypto import cms

    info = cms.ContentInfo.load(base64.b64decode(made(signer)["signature"]))
    signer_info = info["content"]["signer_infos"][0]
    signer_info["digest_algorithm"] = {"algorithm": "1.2.840.10045.4.3.2"}  # ecdsa-with-SHA256
    renamed = {"encoding": "pkcs7", "signature": base64.b64encode(info.dump(force=True)).decode()}
    assert attest.verify(renamed, nonce=NONCE, anchors=anchors)["vmId"] == VM_ID
    signer_info["digest_algorithm"] = {"algorithm": "1.2.840.113549.2.5"}  # md5
    weak = {"encoding": "pkcs7", "signature": base64.b64encode(info.dump(force=True)).decode()}
    with pytest.raises(attest.AttestationRefused, match="not a SHA-2 digest"):
        attest.verify(weak, nonce=NONCE, anchors=anchors)


# -- CA Issuers addresses a forged certificate names ---------------------------------------------
def _cert(subject, key, issuer, issuer_key, *, ca=False, issuers=(), names=SIGNER_NAMES):
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name(subject))
               .issuer_name(name(issuer)).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(hours=1))
               .not_valid_after(now + dt.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(False, False, False, False, False, True,
                                                      True, False, False), critical=True)
    else:
        builder = (builder.add_extension(x509.KeyUsage(True, False, False, False, False, False,
                                                       False, False, False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                                  critical=False)
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                                  critical=False))
    if issuer_key is not key:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False)
    if issuers:
        builder = builder.add_extension(x509.AuthorityInformationAccess([
            x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS,
                                   x509.UniformResourceIdentifier(u)) for u in issuers]),
            critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _signer_under_intermediate(issuers):
    """A metadata.azure.com signer issued by an intermediate the document does not carry, the
    intermediate by a root (the grader's anchor): (signer, intermediate, root)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    root_key, mid_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _cert("Test Root", root_key, "Test Root", root_key, ca=True)
    mid = _cert("Test Issuing CA", mid_key, "Test Root", root_key, ca=True)
    leaf = _cert(SIGNER_NAMES[0], leaf_key, "Test Issuing CA", mid_key, issuers=issuers)
    signer = AttestationSigner(
        leaf.public_bytes(serialization.Encoding.PEM),
        leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption()))
    return signer, mid, root


def _on_a_pki_host(url):
    """Independently of the grader's own test: http(s)://www.microsoft.com/pkiops/... or
    /pki/..., or cacerts.digicert.com, on the default port, without credentials."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return (parts.scheme in ("http", "https") and parts.netloc in ("www.microsoft.com",
                                                                    "cacerts.digicert.com")
            and (parts.netloc != "www.microsoft.com" or parts.path.startswith(("/pkiops/",
                                                                               "/pki/"))))


class _Answer:
    def __init__(self, body=b"", status=200):
        self.status_code, self.content, self._body = status, body, body

    def iter_content(self, size):
        yield from (self._body[i:i + size] for i in range(0, len(self._body), size))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


ATTACKER_ISSUERS = [u.format(i) for i in range(10) for u in (
    "http://203.0.113.7:8080/ca{}.crt", "https://grader-stall.example/pkiops/ca{}.crt",
    "http://www.microsoft.com.evil.example/pkiops/ca{}.crt",
    "http://www.microsoft.com:8080/pkiops/ca{}.crt", "http://u@www.microsoft.com/pkiops/{}.crt",
    "http://www.microsoft.com/en-us/ca{}.crt")]
PKI_ISSUERS = [f"http://www.microsoft.com/pkiops/certs/Issuing%20CA%20{i:02d}.crt"
               for i in range(10)]


def test_a_forged_certificate_s_ca_issuers_cannot_send_the_grader_anywhere_or_stall_it(
        monkeypatch):
    """A forged certificate names 70 CA Issuers addresses, 60 of them the student's own: the
    grader asks none of those, and of Microsoft's at most a few, within a bounded time (each
    address here hangs until its timeout, as an address that never answers does)."""
    import requests

    asked = []

    def hanging(url, timeout=None, **kwargs):
        asked.append((url, timeout, kwargs))
        time.sleep(min(timeout or 10, 0.4))
        raise requests.ConnectTimeout(url)

    monkeypatch.setattr(requests, "get", hanging)
    monkeypatch.setattr(attest, "_ISSUERS", {})
    monkeypatch.setattr(attest, "ISSUER_BUDGET", 1.0, raising=False)
    signer, _, root = _signer_under_intermediate(ATTACKER_ISSUERS + PKI_ISSUERS)
    start = time.monotonic()
    # Microsoft's addresses not answering is nobody's fault the grader can prove: undecided.
    with pytest.raises(attest.IssuerUnavailable, match="ConnectTimeout"):
        attest.verify(made(signer), nonce=NONCE, anchors=[root])
    elapsed = time.monotonic() - start
    urls = [u for u, _, _ in asked]
    assert urls and all(_on_a_pki_host(u) for u in urls), urls[:5]
    assert len(urls) <= 4 and elapsed < 1.8, (len(urls), elapsed)
    assert all(t <= 5 for _, t, _ in asked)
    assert all(kw.get("allow_redirects") is False for _, _, kw in asked)  # nowhere else
    results = verified({"attested": {"status": 200, "json": made(signer)}},
                       [{"name": "attested", "op": "attested", "nonce": NONCE}], monkeypatch,
                       [root])
    assert "undecided" in results["attested"] and "refused" not in results["attested"]


def test_what_microsoft_s_pki_answered_is_kept_what_failed_is_asked_again(monkeypatch):
    import requests

    signer, _, root = _signer_under_intermediate(PKI_ISSUERS[:2])
    asked, answers = [], iter([requests.ConnectionError("down"), _Answer(status=404),
                               _Answer(b"not a certificate")])

    def pki(url, timeout=None, **kwargs):
        asked.append(url)
        reply = next(answers)
        if isinstance(reply, Exception):
            raise reply
        return reply

    monkeypatch.setattr(requests, "get", pki)
    monkeypatch.setattr(attest, "_ISSUERS", {})
    # The first address fails to answer, the second says 404: the chain cannot be judged.
    with pytest.raises(attest.IssuerUnavailable, match="ConnectionError"):
        attest.verify(made(signer), nonce=NONCE, anchors=[root])
    assert asked == PKI_ISSUERS[:2]
    # Again: the failed one is asked again (it answers no certificate), the 404 is kept.
    with pytest.raises(attest.AttestationRefused, match="does not chain"):
        attest.verify(made(signer), nonce=NONCE, anchors=[root])
    assert asked == [*PKI_ISSUERS[:2], PKI_ISSUERS[0]]


def test_an_intermediate_from_microsoft_s_pki_completes_the_chain(monkeypatch):
    import requests
    from cryptography.hazmat.primitives import serialization

    url = "http://www.microsoft.com/pkiops/certs/Test%20Issuing%20CA.crt"
    signer, mid, root = _signer_under_intermediate(["http://203.0.113.7/mid.crt", url])
    asked = []

    def pki(u, timeout=None, **kwargs):
        asked.append(u)
        return _Answer(mid.public_bytes(serialization.Encoding.DER))

    monkeypatch.setattr(requests, "get", pki)
    monkeypatch.setattr(attest, "_ISSUERS", {})
    assert attest.verify(made(signer), nonce=NONCE, anchors=[root])["vmId"] == VM_ID
    assert asked == [url]
    # Without it, the same document does not chain.
    with pytest.raises(attest.AttestationRefused, match="does not chain"):
        attest.verify(made(signer), nonce=NONCE, anchors=[root], fetch=None)


@pytest.mark.parametrize("url, allowed", [
    ("http://www.microsoft.com/pkiops/certs/Microsoft%20Azure%20RSA%20TLS%20Issuing%20CA%2003"
     "%20-%20xsign.crt", True),
    ("https://www.microsoft.com/pki/mscorp/Microsoft%20RSA%20TLS%20CA%2001.crt", True),
    ("http://cacerts.digicert.com/DigiCertGlobalRootG2.crt", True),
    ("http://WWW.Microsoft.COM/pkiops/certs/x.crt", True),
    ("http://www.microsoft.com:80/pkiops/certs/x.crt", True),
    ("http://www.microsoft.com/en-us/x.crt", False),
    ("http://www.microsoft.com:8080/pkiops/x.crt", False),
    ("http://user:pw@www.microsoft.com/pkiops/x.crt", False),
    ("http://www.microsoft.com.evil.example/pkiops/x.crt", False),
    ("http://evil.example/?www.microsoft.com/pkiops/", False),
    ("ftp://www.microsoft.com/pkiops/x.crt", False),
    ("http://[::1/pkiops/x.crt", False),
    ("http://169.254.169.254/metadata/instance", False)])
def test_which_ca_issuers_addresses_are_fetched(url, allowed):
    assert attest.allowed_issuer(url) is allowed


def test_an_issuer_answer_that_drips_or_floods_is_cut_off(monkeypatch):
    import requests

    class Dripping(_Answer):
        def iter_content(self, size):
            while True:
                time.sleep(0.1)
                yield b"\x30"

    class Flooding(_Answer):
        def iter_content(self, size):
            while True:
                yield b"\x30" * size

    for reply in (Dripping(), Flooding()):
        monkeypatch.setattr(requests, "get", lambda u, timeout=None, _a=reply, **kw: _a)
        monkeypatch.setattr(attest, "_ISSUERS", {})
        start = time.monotonic()
        assert attest.fetch_issuer("http://www.microsoft.com/pkiops/certs/x.crt",
                                   timeout=0.5) is None
        assert time.monotonic() - start < 2


# -- documents whose certificate the parsers refuse ------------------------------------------------
def _with_extensions_altered(alter):
    """A signer whose certificate (issued by a root, the grader's anchor) has its extensions
    altered by `alter` (asn1crypto's list of them) and is signed again: what a student with
    their own CA can make; cryptography does not build such certificates itself."""
    from asn1crypto import x509 as asn1_x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    root_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    root = _cert("Test Root", root_key, "Test Root", root_key, ca=True)
    leaf = _cert(SIGNER_NAMES[0], leaf_key, "Test Root", root_key)
    parsed = asn1_x509.Certificate.load(leaf.public_bytes(serialization.Encoding.DER))
    tbs = parsed["tbs_certificate"]
    extensions = list(tbs["extensions"])
    alter(extensions)
    tbs["extensions"] = asn1_x509.Extensions(extensions)
    parsed["tbs_certificate"] = tbs
    parsed["signature_value"] = root_key.sign(tbs.dump(), ec.ECDSA(hashes.SHA256()))
    pem = (b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(parsed.dump())
           + b"-----END CERTIFICATE-----\n")
    key_pem = leaf_key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
    return AttestationSigner(pem, key_pem), root


def _duplicate_san(extensions):
    extensions.append(next(e for e in extensions if e["extn_id"].native == "subject_alt_name"))


def _garbled_san(extensions):
    from asn1crypto.core import ParsableOctetString

    san = next(e for e in extensions if e["extn_id"].native == "subject_alt_name")
    san["extn_value"] = ParsableOctetString(b"\x30\x05\x82\x09abc")  # a name longer than it is


@pytest.mark.parametrize("alter, reason", [(_duplicate_san, "cannot be read: DuplicateExtension"),
                                           (_garbled_san, "not PKCS#7")],
                         ids=["duplicate", "garbled"])
def test_a_certificate_the_parsers_refuse_is_refused_not_an_error(alter, reason, monkeypatch):
    """The machine's document is the machine's: a certificate cryptography cannot parse (a
    duplicate extension raises DuplicateExtension) fails imds-instance, never ends it `error`."""
    signer, root = _with_extensions_altered(alter)
    with pytest.raises(attest.AttestationRefused, match=reason) as info:
        attest.verify(made(signer), nonce=NONCE, anchors=[root])
    results = verified({"attested": {"status": 200, "json": made(signer)}},
                       [{"name": "attested", "op": "attested", "nonce": NONCE}], monkeypatch,
                       [root])
    assert "\n" not in str(info.value)
    assert "refused" in results["attested"] and "undecided" not in results["attested"]
    with provenance.tracking() as used, pytest.raises(AssertionError, match=reason):
        lab_with(results, signed=frozenset({"attested"})).signed("attested")
    assert used == {provenance.SIGNED}


def test_the_grader_s_own_trust_anchors_failing_is_undecided(signer, monkeypatch, tmp_path):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not a certificate")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    results = {"attested": {"status": 200, "json": made(signer)}}
    verify_parts(results, [{"name": "attested", "op": "attested", "nonce": NONCE}], None)
    assert "undecided" in results["attested"], results
    with pytest.raises(CouldNotDecide):
        lab_with(results, signed=frozenset({"attested"})).signed("attested")


# -- what a run verifies once ----------------------------------------------------------------------
def _counting(monkeypatch):
    """How often a certificate is loaded and a chain verifier is built, from now on."""
    from cryptography.x509 import verification

    counts = {"loaded": 0, "verifiers": 0}
    load, builder = x509.load_der_x509_certificate, verification.PolicyBuilder

    def loading(data, *args):
        counts["loaded"] += 1
        return load(data, *args)

    class Counting:
        def __init__(self):
            self._inner = builder()

        def __getattr__(self, name):
            attr = getattr(self._inner, name)

            def step(*args, **kwargs):
                result = attr(*args, **kwargs)
                if name == "build_server_verifier":
                    counts["verifiers"] += 1
                    return result
                self._inner = result
                return self

            return step

    monkeypatch.setattr(x509, "load_der_x509_certificate", loading)
    monkeypatch.setattr(verification, "PolicyBuilder", Counting)
    return counts


def test_a_signer_s_certificates_are_read_and_chained_once_each_document_checked_in_full(
        tmp_path, monkeypatch):
    """Every VM of a run carries IMDS's same certificates: the second document's are neither
    parsed nor chained again, yet its signature, nonce and time are checked as the first's."""
    ca = CertificateAuthority(tmp_path)
    anchors = x509.load_pem_x509_certificates(ca.ca_path.read_bytes())
    signer = AttestationSigner(*ca.issue(*SIGNER_NAMES))
    counts = _counting(monkeypatch)
    assert attest.verify(made(signer, nonce="first"), nonce="first", anchors=anchors)
    assert counts == {"loaded": 1, "verifiers": 1}
    assert attest.verify(made(signer, nonce="second"), nonce="second", anchors=anchors)
    assert counts == {"loaded": 1, "verifiers": 1}
    # Still per document: a replayed nonce, a stale document, altered content.
    with pytest.raises(attest.AttestationRefused, match="not the one the grader sent"):
        attest.verify(made(signer, nonce="first"), nonce="third", anchors=anchors)
    with pytest.raises(attest.AttestationRefused, match="stale"):
        attest.verify(made(signer, when=time.time() - 7 * 3600), nonce=NONCE, anchors=anchors)
    with pytest.raises(attest.AttestationRefused, match="signature does not verify"):
        attest.verify(_resigned_by(made(signer), trustme.CA()), nonce=NONCE, anchors=anchors)
    # Other anchors (a grader trusting another CA) ask the question anew: it does not chain.
    other = x509.load_pem_x509_certificates(trustme.CA().cert_pem.bytes())
    with pytest.raises(attest.AttestationRefused, match="does not chain"):
        attest.verify(made(signer), nonce=NONCE, anchors=other)
    assert counts["verifiers"] == 2


def _resigned_by(genuine: dict, other) -> dict:
    """The genuine document with its signer's signature replaced by another key's: the same
    certificates, a signature they did not make."""
    from asn1crypto import cms
    from cryptography.hazmat.primitives import hashes, serialization

    info = cms.ContentInfo.load(base64.b64decode(genuine["signature"]))
    signer_info = info["content"]["signer_infos"][0]
    key = serialization.load_pem_private_key(
        other.issue_cert("x.example").private_key_pem.bytes(), None)
    from cryptography.hazmat.primitives.asymmetric import ec

    data = b"\x31" + signer_info["signed_attrs"].dump()[1:]
    signer_info["signature"] = key.sign(data, ec.ECDSA(hashes.SHA256()))
    return {"encoding": "pkcs7", "signature": base64.b64encode(info.dump(force=True)).decode()}


def test_a_chain_verified_before_is_not_trusted_past_its_certificates_validity(tmp_path):
    ca = CertificateAuthority(tmp_path)
    anchors = x509.load_pem_x509_certificates(ca.ca_path.read_bytes())
    signer = AttestationSigner(*ca.issue(*SIGNER_NAMES))
    assert attest.verify(made(signer), nonce=NONCE, anchors=anchors)
    after = signer.certificate.not_valid_after_utc + dt.timedelta(minutes=10)
    with pytest.raises(attest.AttestationRefused, match="does not chain"):
        attest.verify(made(signer, when=after.timestamp()), nonce=NONCE, anchors=anchors,
                      now=after)


def test_a_damaged_document_reads_the_same_whether_its_certificates_are_known_or_not(
        tmp_path, monkeypatch):
    """Damage outside the certificates is told in the same words before and after a genuine
    document carrying the same certificates was read."""
    ca = CertificateAuthority(tmp_path)
    anchors = x509.load_pem_x509_certificates(ca.ca_path.read_bytes())
    signer = AttestationSigner(*ca.issue(*SIGNER_NAMES))
    der = base64.b64decode(made(signer)["signature"])
    sha256 = bytes.fromhex("0609608648016503040201")  # the signer's digest algorithm's OID
    at = der.rindex(sha256)
    damaged = {"encoding": "pkcs7",
               "signature": base64.b64encode(der[:at] + b"\x0c" + der[at + 1:]).decode()}
    monkeypatch.setattr(attest, "_CERT_SETS", {})
    with pytest.raises(attest.AttestationRefused, match="not PKCS#7") as cold:
        attest.verify(damaged, nonce=NONCE, anchors=anchors)
    assert attest.verify(made(signer), nonce=NONCE, anchors=anchors)
    assert attest._CERT_SETS  # the certificates are known now
    with pytest.raises(attest.AttestationRefused, match="not PKCS#7") as warm:
        attest.verify(damaged, nonce=NONCE, anchors=anchors)
    assert str(warm.value) == str(cold.value)
