"""IMDS's attested document (“Azure Instance Metadata Service for virtual machines”, section
“Attested data”): a few facts about the VM, signed as PKCS#7 SignedData by a certificate for
`metadata.azure.com`.

Here the certificate is issued by the local Azure's per-run CA (the one its TLS chains to), so
a grader that trusts what its HTTPS trusts can verify the document as it would Azure's.

What the documentation says and this follows:
- `GET /metadata/attested/document?api-version=...[&nonce=...]`, `Metadata: true`;
  the answer is `{"encoding": "pkcs7", "signature": "<base64 DER>"}`.
- The signed content is JSON: `nonce` (the request's, else the UTC time as `YYYYMMDD-HHMMSS`),
  `plan` {name, product, publisher}, `timeStamp` {createdOn, expiresOn} as `MM/DD/YY HH:MM:SS
  -0000` (the documented sample expires six hours after it was made), `vmId`,
  `subscriptionId` (from 2019-04-30), `sku` (from 2019-11-01), `licenseType` (from 2020-09-01,
  only for a VM with Azure Hybrid Benefit).
- The nonce is documented as "an optional 10-digit string"; the REST specification allows up to
  32 alphanumeric characters: this accepts the latter. The body answered for any other nonce is
  UNCONFIRMED (no public capture shows it); it has the shape of IMDS's other 400s.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import re

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7

ATTESTED_MIN_VERSION = "2018-10-01"
LIFETIME = _dt.timedelta(hours=6)
SIGNER_NAMES = ("metadata.azure.com", "localazure.metadata.azure.com")
NONCE = re.compile(r"^[A-Za-z0-9]{1,32}$")
BAD_NONCE = {"error": "Bad request. Nonce must be a string of up to 32 alphanumeric characters"}
STAMP = "%m/%d/%y %H:%M:%S -0000"
SINCE = {"subscriptionId": "2019-04-30", "sku": "2019-11-01", "licenseType": "2020-09-01"}


class AttestationSigner:
    """Signs attested documents with one certificate and key (PEM)."""

    def __init__(self, cert_pem: bytes, key_pem: bytes) -> None:
        self.certificate = x509.load_pem_x509_certificate(cert_pem)
        self._key = serialization.load_pem_private_key(key_pem, password=None)

    def sign(self, content: bytes) -> str:
        """Base64 of DER PKCS#7 SignedData carrying `content` and the signer's certificate."""
        der = (pkcs7.PKCS7SignatureBuilder().set_data(content)
               .add_signer(self.certificate, self._key, hashes.SHA256())
               .sign(serialization.Encoding.DER, []))
        return base64.b64encode(der).decode("ascii")


def document(compute: dict, *, nonce: str | None, now: float, api_version: str) -> dict:
    """The signed content for a VM whose instance document's `compute` is given."""
    created = _dt.datetime.fromtimestamp(now, _dt.timezone.utc).replace(microsecond=0)
    plan = compute.get("plan") or {}
    doc = {
        "licenseType": compute.get("licenseType") or "",
        "nonce": nonce if nonce else created.strftime("%Y%m%d-%H%M%S"),
        "plan": {"name": plan.get("name", ""), "product": plan.get("product", ""),
                 "publisher": plan.get("publisher", "")},
        "sku": compute.get("sku", ""),
        "subscriptionId": compute.get("subscriptionId", ""),
        "timeStamp": {"createdOn": created.strftime(STAMP),
                      "expiresOn": (created + LIFETIME).strftime(STAMP)},
        "vmId": compute.get("vmId", ""),
    }
    if not doc["licenseType"]:
        del doc["licenseType"]  # present only for a VM with Azure Hybrid Benefit
    return {k: v for k, v in doc.items() if SINCE.get(k, "") <= api_version}


def answer(signer: AttestationSigner, content: dict) -> dict:
    data = json.dumps(content, separators=(",", ":")).encode()
    return {"encoding": "pkcs7", "signature": signer.sign(data)}
