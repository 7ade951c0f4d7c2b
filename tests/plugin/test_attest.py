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
from pytest_milab.errors import CouldNotDecide
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
def lab_with(probe: dict, declared=None) -> Lab:
    ev = LabEvidence(label="lab", group="g", subscription=SUB, ssh=SshOutcome(ok=True),
                     probe=probe, declared_parts=declared)
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
    lab = lab_with({"other": {"status": 200}}, declared=frozenset({"other", "evidence"}))
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
