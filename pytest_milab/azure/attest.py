"""Verifying IMDS's attested document on the grader (“Azure Instance Metadata Service for
virtual machines”, section “Attested data”).

The machine fetches `/metadata/attested/document` with a nonce the grader made for this lab and
returns it as it came; here the grader checks, before any step reads it:

- the PKCS#7 SignedData: its one signer's signature over the content (through the signed
  attributes' message digest when there are some), parsed with asn1crypto and checked with
  cryptography;
- the signer's certificate: a name in `metadata.azure.com` or one of its subdomains (the
  documentation asks to accept any subdomain) and a chain to the grader's trust anchors (the
  CA bundle its own HTTPS trusts: the local Azure's CA there, the system's or certifi's
  against Azure); intermediates missing from the document are fetched from the certificate's
  "CA Issuers" address, as the documentation's own sample does, only from Microsoft's and
  DigiCert's PKI hosts, a few addresses within a few seconds (a forged certificate names
  whatever it likes);
- the content: the grader's nonce, and a time window (`timeStamp`) that includes now.

What it returns is the signed content; comparing `vmId` and `subscriptionId` with what ARM says
of the lab's VM is the check's (`matches_vm`). A forged, replayed, stale or foreign document is
refused with a reason a student can read (`AttestationRefused`).

Every VM of a run carries the same certificates (IMDS's signer and its intermediates): a set of
certificates, byte for byte one already read whole, is not parsed again, and its chain, once
verified, holds for later documents while every certificate of the chain is valid and the trust
anchors are the same. The signature, the nonce and the time are checked for every document."""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import json
import os
import threading
import time
from collections.abc import Callable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtensionOID

from ..text import clean

DOMAIN = "metadata.azure.com"
STAMP = "%m/%d/%y %H:%M:%S -0000"
SKEW = _dt.timedelta(minutes=5)  # clocks of grader and Azure may differ this much
MAX_SIGNATURE = 64 * 1024  # base64 characters: Azure's is a few kilobytes
HASHES = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}
# IMDS names its digest by the signature algorithm's OID (sha256WithRSAEncryption), as the
# documentation's sample shows: those OIDs stand for their digest.
SIGNATURE_OIDS = {"1.2.840.113549.1.1.11": "sha256", "1.2.840.113549.1.1.12": "sha384",
                  "1.2.840.113549.1.1.13": "sha512", "1.2.840.10045.4.3.2": "sha256",
                  "1.2.840.10045.4.3.3": "sha384", "1.2.840.10045.4.3.4": "sha512"}


class AttestationRefused(Exception):
    """The document is not one the grader can trust for this lab; the message says why."""


class IssuerUnavailable(Exception):
    """A CA Issuers address on a PKI host could not be read (the grader's network, or the
    host's): the chain cannot be judged without it, and that is never the student's doing."""


# -- trust anchors -----------------------------------------------------------------------------
_ANCHORS: dict[str, list[x509.Certificate]] = {}
_ANCHORS_LOCK = threading.Lock()


def trust_anchors() -> list[x509.Certificate]:
    """The CA certificates the grader's HTTPS trusts: the bundle REQUESTS_CA_BUNDLE or
    SSL_CERT_FILE names (a local Azure's env file sets them to its CA), else certifi's."""
    path = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE")
    if not path:
        import certifi

        path = certifi.where()
    with _ANCHORS_LOCK:
        if path not in _ANCHORS:
            with open(path, "rb") as f:
                _ANCHORS[path] = x509.load_pem_x509_certificates(f.read())
        return _ANCHORS[path]


# -- what a run verified once -------------------------------------------------------------------
MAX_KNOWN = 64  # certificate sets, chains and stores kept per run (IMDS's signers are few)
# A `certificates` field's DER (one that parsed whole, with every certificate) -> its
# certificates, as cryptography loads them.
_CERT_SETS: dict[bytes, list[x509.Certificate]] = {}
# (the anchors' list, the certificates field's DER, the signer's place in it, fetch) -> the name
# the chain was verified for and when every certificate of that chain is valid.
_CHAINS: dict[tuple, tuple[str, _dt.datetime, _dt.datetime]] = {}
# id(anchors) -> (anchors, their Store): the list is held, so its id is not another's.
_STORES: dict[int, tuple[object, object]] = {}
_KNOWN_LOCK = threading.Lock()


def _keep(cache: dict, key, value) -> None:
    with _KNOWN_LOCK:
        if key not in cache and len(cache) >= MAX_KNOWN:
            cache.pop(next(iter(cache)))
        cache[key] = value


def _store(anchors: Sequence[x509.Certificate]):
    """A verification store of the anchors, made once for each list of them."""
    from cryptography.x509.verification import Store

    with _KNOWN_LOCK:
        known = _STORES.get(id(anchors))
    if known is not None and known[0] is anchors:
        return known[1]
    store = Store(list(anchors))
    _keep(_STORES, id(anchors), (anchors, store))
    return store


# -- the PKCS#7 envelope -----------------------------------------------------------------------
def _signed_data(answer: object):
    """The document's SignedData, every field parsed (damage shows here)."""
    return _read_signed_data(answer)[0]


def _read_signed_data(answer: object):
    """The document's SignedData, every field parsed (damage shows here), and its certificates
    as cryptography loads them when they are a set already read (else None)."""
    from asn1crypto import cms

    if not isinstance(answer, dict) or answer.get("encoding") != "pkcs7" \
            or not isinstance(answer.get("signature"), str):
        raise AttestationRefused("the attested document is not IMDS's {encoding: pkcs7, "
                                 "signature} answer")
    text = answer["signature"]
    if len(text) > MAX_SIGNATURE:
        raise AttestationRefused("the attested document's signature is far larger than IMDS's")
    try:
        der = base64.b64decode(text, validate=True)
        info = cms.ContentInfo.load(der, strict=True)
        if info["content_type"].native != "signed_data":
            raise ValueError("not SignedData")
        known = _with_known_certificates(der)
        if known is not None:
            return known
        signed = info["content"]
        signed.native  # noqa: B018 - parses every field now, so damage shows here
    except AttestationRefused:
        raise
    except (binascii.Error, ValueError, TypeError, KeyError) as exc:
        raise AttestationRefused(f"the attested document is not PKCS#7 SignedData "
                                 f"({clean(exc, 250)})") from None
    return signed, None


def _with_known_certificates(der: bytes):
    """(SignedData, certificates) when the document's certificates field is byte for byte one
    already read whole and every other field parses as the whole would; else None (the whole
    is then parsed, and tells any damage as it always does)."""
    from asn1crypto import cms

    try:
        signed = cms.ContentInfo.load(der, strict=True)["content"]
        field = signed["certificates"]
        if not field.contents:
            return None
        with _KNOWN_LOCK:
            certs = _CERT_SETS.get(field.dump())
        if certs is None:
            return None
        for name, *_ in cms.SignedData._fields:
            if name != "certificates":
                signed[name].native  # noqa: B018 - parses that field whole
        return signed, certs
    except Exception:  # noqa: BLE001 - the whole parse reports the damage
        return None


def _certificates(signed) -> list[x509.Certificate]:
    """The certificates the document carries, as cryptography loads them; a set that loads is
    kept by its DER (the next documents of the run carry the same)."""
    certs = [x509.load_der_x509_certificate(choice.chosen.dump())
             for choice in signed["certificates"] or [] if choice.name == "certificate"]
    field = signed["certificates"]
    if field.contents:
        _keep(_CERT_SETS, field.dump(), certs)
    return certs


def _signer_certificate(signed, certs: list[x509.Certificate]):
    infos = signed["signer_infos"]
    if len(infos) != 1:
        raise AttestationRefused(f"the attested document has {len(infos)} signers, not one")
    info = infos[0]
    sid = info["sid"]
    for cert in certs:
        if sid.name == "issuer_and_serial_number":
            wanted = sid.chosen
            if (cert.serial_number == wanted["serial_number"].native
                    and cert.issuer.public_bytes() == wanted["issuer"].dump()):
                return info, cert
        elif sid.name == "subject_key_identifier":
            try:
                ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            except x509.ExtensionNotFound:
                continue
            if ski.value.digest == sid.chosen.native:
                return info, cert
    raise AttestationRefused("the attested document does not carry its signer's certificate")


def _check_signature(info, cert: x509.Certificate, content: bytes) -> None:
    digest_name = str(info["digest_algorithm"]["algorithm"].native)
    digest_name = SIGNATURE_OIDS.get(digest_name, digest_name)
    algorithm = next((h() for name, h in HASHES.items() if name in digest_name), None)
    if algorithm is None:
        raise AttestationRefused(f"the attested document is signed with {digest_name}, not a "
                                 "SHA-2 digest")
    attrs = info["signed_attrs"]
    if attrs.native is not None and len(attrs):
        found = {a["type"].native: a["values"] for a in attrs}
        if "message_digest" not in found or found.get("content_type") is None \
                or found["content_type"][0].native != "data":
            raise AttestationRefused("the attested document's signed attributes lack its "
                                     "content type or digest")
        h = hashes.Hash(algorithm)
        h.update(content)
        if found["message_digest"][0].native != h.finalize():
            raise AttestationRefused("the attested document's content is not what was signed")
        # The signature covers the attributes as a DER SET (tag 0x31), not as the [0] they
        # are carried in.
        data = b"\x31" + attrs.dump()[1:]
    else:
        data = content
    signature = info["signature"].native
    key = cert.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            if info["signature_algorithm"].signature_algo != "rsassa_pkcs1v15":
                raise AttestationRefused("the attested document's signature scheme is not "
                                         "PKCS#1 v1.5")
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(algorithm))
        else:
            raise AttestationRefused("the attested document's signer has an unsupported key")
    except InvalidSignature:
        raise AttestationRefused("the attested document's signature does not verify: it was "
                                 "not signed by the certificate it carries") from None


# -- the certificate ---------------------------------------------------------------------------
def _metadata_name(cert: x509.Certificate) -> str:
    """A name of the certificate in metadata.azure.com (or a subdomain), as one to verify."""
    try:
        names = cert.extensions.get_extension_for_oid(
            ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    for name in sorted(names, key=lambda n: (n != DOMAIN, n)):
        lower = name.lower()
        if lower == DOMAIN:
            return DOMAIN
        if lower.endswith("." + DOMAIN):
            # A wildcard stands for any one label: verify with one.
            return "attested" + lower[1:] if lower.startswith("*.") else lower
    subject = ", ".join(names) or cert.subject.rfc4514_string()
    raise AttestationRefused(f"the attested document is signed by {subject[:200]}, not by a "
                             f"{DOMAIN} certificate")


def _issuer_urls(cert: x509.Certificate) -> list[str]:
    try:
        aia = cert.extensions.get_extension_for_oid(
            ExtensionOID.AUTHORITY_INFORMATION_ACCESS).value
    except x509.ExtensionNotFound:
        return []
    return [d.access_location.value for d in aia
            if d.access_method == AuthorityInformationAccessOID.CA_ISSUERS
            and isinstance(d.access_location, x509.UniformResourceIdentifier)
            and d.access_location.value.startswith(("http://", "https://"))]


# Where a missing intermediate may be fetched from: Microsoft's PKI repository and DigiCert's,
# the certificate downloads “Azure Certificate Authority details” lists for Azure's CAs.
# Whatever else a certificate names as its CA Issuers is never fetched: the certificate is the
# student's to make, so its addresses are too.
ISSUER_HOSTS = {"www.microsoft.com": ("/pkiops/", "/pki/"), "cacerts.digicert.com": ("/",)}
MAX_ISSUER_URLS = 4  # CA Issuers addresses tried for one document (IMDS's certificates name one)
ISSUER_TIMEOUT = 5.0  # seconds for one address
ISSUER_BUDGET = 10.0  # seconds for all of one document's
MAX_ISSUER_BYTES = 64 * 1024
MAX_CACHED = 64

_ISSUERS: dict[str, x509.Certificate | None] = {}
_ISSUERS_LOCK = threading.Lock()


def allowed_issuer(url: str) -> bool:
    """Whether a CA Issuers address is one the grader fetches: http(s) on a PKI host of
    Microsoft's or DigiCert's, default port, no credentials, under its certificates' path."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or parts.username is not None \
            or parts.password is not None or port not in (None, 80, 443):
        return False
    prefixes = ISSUER_HOSTS.get((parts.hostname or "").lower())
    return prefixes is not None and parts.path.startswith(prefixes)


def fetch_issuer(url: str, timeout: float = ISSUER_TIMEOUT) -> x509.Certificate | None:
    """An intermediate from a certificate's CA Issuers address (DER or PEM), kept per run;
    None for an address not on a PKI host (`allowed_issuer`), never asked, or for an answer
    that is no certificate. Raises `IssuerUnavailable` when the host could not be read."""
    if not allowed_issuer(url):
        return None
    with _ISSUERS_LOCK:
        if url in _ISSUERS:
            return _ISSUERS[url]
    import requests

    cert = None
    deadline = time.monotonic() + timeout
    try:
        # Redirects are not followed: where they lead is not checked against the hosts.
        with requests.get(url, timeout=timeout, allow_redirects=False, stream=True) as response:
            body = b""
            if response.status_code == 200:
                for chunk in response.iter_content(8192):
                    body += chunk
                    if len(body) > MAX_ISSUER_BYTES or time.monotonic() > deadline:
                        body = b""
                        break
            elif response.status_code >= 500 or response.status_code == 429:
                raise IssuerUnavailable(f"{url} answered {response.status_code}")
            if body:
                cert = (x509.load_pem_x509_certificate(body) if body.startswith(b"-----")
                        else x509.load_der_x509_certificate(body))
    except IssuerUnavailable:
        raise  # not kept: the next document asks again
    except requests.RequestException as exc:
        raise IssuerUnavailable(f"reading {url} failed: {type(exc).__name__}") from None
    except Exception:  # noqa: BLE001 - not a certificate: the chain is judged without it
        cert = None
    with _ISSUERS_LOCK:
        if len(_ISSUERS) >= MAX_CACHED:
            _ISSUERS.pop(next(iter(_ISSUERS)))
        _ISSUERS[url] = cert
    return cert


def _fetched_issuers(leaf: x509.Certificate,
                     fetch: Callable[..., x509.Certificate | None]
                     ) -> tuple[list[x509.Certificate], str | None]:
    """The intermediates the leaf's allowed CA Issuers addresses give: at most
    MAX_ISSUER_URLS of them, within ISSUER_BUDGET seconds in all; and why one of them could
    not be read, if one could not."""
    urls = list(dict.fromkeys(u for u in _issuer_urls(leaf) if allowed_issuer(u)))
    deadline = time.monotonic() + ISSUER_BUDGET
    found, unavailable = [], None
    for url in urls[:MAX_ISSUER_URLS]:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            cert = fetch(url, timeout=min(ISSUER_TIMEOUT, left))
        except IssuerUnavailable as exc:
            unavailable = unavailable or str(exc)
            continue
        if cert is not None:
            found.append(cert)
    return found, unavailable


def _check_chain(leaf: x509.Certificate, carried: list[x509.Certificate], store,
                 now: _dt.datetime, fetch: Callable[..., x509.Certificate | None] | None,
                 known: tuple | None = None) -> str:
    """The name the leaf's chain to the anchors is verified for. `known`: what identifies this
    chain's question (the store, the certificates field's DER, the leaf's place in it, fetch),
    so that a chain verified before, still valid at `now` in every certificate, is not
    verified again."""
    from cryptography.x509.verification import PolicyBuilder, VerificationError

    if known is not None and store is not None:
        key = (id(store), *known)
        with _KNOWN_LOCK:
            found = _CHAINS.get(key)
        if found is not None and found[0] is store and found[2] <= now <= found[3]:
            return found[1]
    name = _metadata_name(leaf)
    if store is None:
        raise AttestationRefused("the grader has no trust anchors to verify the attested "
                                 "document with")
    verifier = (PolicyBuilder().store(store).time(now)
                .build_server_verifier(x509.DNSName(name)))
    intermediates = [c for c in carried if c != leaf]

    def verified(chain: list[x509.Certificate]) -> str:
        if known is not None:
            # Valid while every certificate of the chain is (the policy's only use of time).
            _keep(_CHAINS, (id(store), *known),
                  (store, name, max(c.not_valid_before_utc for c in chain),
                   min(c.not_valid_after_utc for c in chain)))
        return name

    try:
        return verified(verifier.verify(leaf, intermediates))
    except VerificationError as exc:
        first = exc
    fetched, unavailable = _fetched_issuers(leaf, fetch) if fetch else ([], None)
    if fetched:
        try:
            return verified(verifier.verify(leaf, intermediates + fetched))
        except VerificationError as exc:
            first = exc
    if unavailable:
        raise IssuerUnavailable(f"the attested document's certificate ({name}) could not be "
                                f"checked: its intermediate could not be fetched ({unavailable})"
                                [:400])
    raise AttestationRefused(f"the attested document's certificate ({name}) does not chain to "
                             f"a CA the grader trusts: {first}"[:400])


# -- the content -------------------------------------------------------------------------------
def _stamp(value: object, what: str) -> _dt.datetime:
    try:
        return _dt.datetime.strptime(str(value), STAMP).replace(tzinfo=_dt.timezone.utc)
    except ValueError:
        raise AttestationRefused(f"the attested document's {what} is not a time "
                                 f"({str(value)[:40]!r})") from None


def verify(answer: object, *, nonce: str, anchors: Sequence[x509.Certificate] | None = None,
           now: _dt.datetime | None = None,
           fetch: Callable[..., x509.Certificate | None] | None = fetch_issuer) -> dict:
    """The signed content of IMDS's answer, once signature, certificate, nonce and time are
    checked; raises `AttestationRefused` otherwise, also when the document cannot be parsed
    (a certificate with a duplicate extension, a malformed name, ...): the document is the
    machine's. Raises `IssuerUnavailable` when a missing intermediate could not be fetched from
    its PKI host, and whatever loading the grader's own trust anchors raises."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    anchors = trust_anchors() if anchors is None else anchors
    store = _store(anchors) if anchors else None
    try:
        return _verify(answer, nonce, store, now, fetch)
    except (AttestationRefused, IssuerUnavailable):
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the machine's document makes the parsers raise
        raise AttestationRefused(f"the attested document cannot be read: {type(exc).__name__}: "
                                 f"{clean(exc, 200)}") from None


def _verify(answer: object, nonce: str, store, now: _dt.datetime,
            fetch: Callable[..., x509.Certificate | None] | None) -> dict:
    signed, certs = _read_signed_data(answer)
    encap = signed["encap_content_info"]
    if encap["content_type"].native != "data" or encap["content"].native is None:
        raise AttestationRefused("the attested document carries no signed content")
    content = encap["content"].native
    if certs is None:
        certs = _certificates(signed)
    info, leaf = _signer_certificate(signed, certs)
    _check_signature(info, leaf, content)
    field = signed["certificates"]
    known = (field.dump(), certs.index(leaf), fetch) if field.contents else None
    _check_chain(leaf, certs, store, now, fetch, known)
    try:
        doc = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise AttestationRefused("the attested document's content is not JSON") from None
    if not isinstance(doc, dict):
        raise AttestationRefused("the attested document's content is not a JSON object")
    if doc.get("nonce") != nonce:
        raise AttestationRefused(f"the attested document answers nonce {str(doc.get('nonce'))[:40]!r}"
                                 ", not the one the grader sent for this lab: replayed or "
                                 "fetched for another request")
    stamp = doc.get("timeStamp") if isinstance(doc.get("timeStamp"), dict) else {}
    created = _stamp(stamp.get("createdOn"), "createdOn")
    expires = _stamp(stamp.get("expiresOn"), "expiresOn")
    if created - SKEW > now:
        raise AttestationRefused(f"the attested document was made in the future ({created:%Y-%m-%d %H:%M} UTC)")
    if expires + SKEW < now:
        raise AttestationRefused(f"the attested document expired at {expires:%Y-%m-%d %H:%M} "
                                 "UTC: stale")
    return doc


def matches_vm(doc: dict | None, vm: dict | None, subscription: str | None) -> str | None:
    """Why the attested document is not the lab's VM (None when it is): its vmId and
    subscriptionId against ARM's."""
    if not isinstance(doc, dict):
        return "there is no attested document to compare with the lab's VM"
    if not vm:
        return "ARM shows no VM to compare the attested document with"
    arm_vm_id = str((vm.get("properties") or {}).get("vmId") or "")
    if not arm_vm_id or str(doc.get("vmId", "")).lower() != arm_vm_id.lower():
        return (f"the attested document is from VM {str(doc.get('vmId'))[:40]!r}, not this lab's "
                f"({arm_vm_id or 'no vmId in ARM'})")
    sub = str(doc.get("subscriptionId") or "")
    if subscription and sub.lower() != subscription.lower():
        return f"the attested document is from subscription {sub[:40]!r}, not the lab's"
    return None
