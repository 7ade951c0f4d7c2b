"""Signed evidence, checked on the grader as soon as the probe has answered, before any step
reads it: IMDS's attested document (`attest.py`) and Entra tokens for the grader's evidence
audience (`--milab-evidence-audience`: an app registration that authorizes nothing, so the
machine can hand its token over without handing over any power).

A token is verified as a resource server verifies one (“Microsoft identity platform access
tokens”, “Microsoft identity platform access token claims reference”): its RS256 signature
against the keys the tenant publishes (OpenID configuration, then `jwks_uri`, fetched through
the same HTTPS route as the grader's SDK: its proxy and CA bundle), `iss` and `tid` of the
labs' tenant, `aud` the evidence audience, `exp`/`nbf`. What stays is the claims; the token
itself is dropped here and reaches no report, log or repr.

Each signed part's result becomes `{"status", "verified": {...}}`, `{"status", "refused":
reason}` (the grader checked it and it is not genuine, or the machine's answer left it out),
`{"status", "undecided": reason}` (the grader could not check: the tenant's keys could not be
read), `{"unverified": reason}` (it could not run in the machine) or, when the machine got
nothing to check, its status, code and message."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from ..probe import SIGNED_OPS
from ..text import clean

CLAIMS = ("aud", "iss", "oid", "sub", "tid", "appid", "azp", "idtyp", "ver", "xms_mirid",
          "xms_az_rid", "iat", "nbf", "exp")
LEEWAY = 300  # seconds of clock difference tolerated on exp and nbf
DEFAULT_AUTHORITY = "https://login.microsoftonline.com"


class TokenRefused(Exception):
    """The token is not one the grader can trust; the message says why."""


class Undecided(Exception):
    """The grader could not check (its own or Entra's trouble): never the student's."""


def authority() -> str:
    host = os.environ.get("AZURE_AUTHORITY_HOST") or DEFAULT_AUTHORITY
    return (host if "://" in host else "https://" + host).rstrip("/")


class TokenVerifier:
    """Verifies tokens of one tenant for one audience; the tenant's keys are read once a run
    (again when a token names a key not among them: keys roll over)."""

    def __init__(self, audience: str, tenant: Callable[[], str], timeout: float = 30.0) -> None:
        self.audience = audience
        self._tenant = tenant
        self._tenant_id: str | None = None
        self.timeout = timeout
        self._keys: dict[str, object] | None = None
        self._lock = threading.Lock()

    @property
    def tenant_id(self) -> str:
        with self._lock:
            if self._tenant_id is None:
                try:
                    self._tenant_id = str(self._tenant()).lower()
                except Exception as exc:  # noqa: BLE001 - the grader's own sign-in
                    raise Undecided(f"the grader's tenant is not known ({exc})"[:300]) from None
            return self._tenant_id

    def _get(self, url: str) -> dict:
        import requests

        try:
            response = requests.get(url, timeout=self.timeout)
        except requests.RequestException as exc:
            raise Undecided(f"reading {url.split('?')[0]} failed: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise Undecided(f"{url.split('?')[0]} answered {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            raise Undecided(f"{url.split('?')[0]} did not answer JSON") from None
        if not isinstance(body, dict):
            raise Undecided(f"{url.split('?')[0]} did not answer a JSON object")
        return body

    def _load_keys(self) -> dict[str, object]:
        import jwt

        config = self._get(f"{authority()}/{self.tenant_id}/v2.0/.well-known/"
                           "openid-configuration")
        jwks_uri = config.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith("https://"):
            raise Undecided("the tenant's OpenID configuration names no https jwks_uri")
        try:
            keyset = jwt.PyJWKSet.from_dict(self._get(jwks_uri))
        except jwt.PyJWTError as exc:
            raise Undecided(f"the tenant's signing keys could not be read ({exc})") from None
        return {k.key_id: k.key for k in keyset.keys if k.key_id}

    def _key(self, kid: str, fresh: bool = False):
        with self._lock:
            keys = self._keys
        if keys is None or fresh:
            keys = self._load_keys()
            with self._lock:
                self._keys = keys
        return keys.get(kid)

    def verify(self, token: str, now: float | None = None) -> dict:
        """The token's claims (those in CLAIMS) once every check passed."""
        import jwt

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRefused("the evidence token is not a JWT") from None
        if header.get("alg") != "RS256":
            raise TokenRefused(f"the evidence token is signed with {header.get('alg')!r}, not "
                               "RS256")
        kid = str(header.get("kid") or "")
        key = self._key(kid) or self._key(kid, fresh=True)
        if key is None:
            raise TokenRefused("the evidence token is signed with a key the labs' tenant does "
                               "not publish: not issued by Entra for this tenant")
        tid = self.tenant_id
        try:
            claims = jwt.decode(token, key, algorithms=["RS256"],
                                audience=[self.audience, self.audience.rstrip("/")],
                                leeway=LEEWAY, options={"require": ["exp", "iss", "aud"]})
        except jwt.ExpiredSignatureError:
            raise TokenRefused("the evidence token has expired: replayed") from None
        except jwt.ImmatureSignatureError:
            raise TokenRefused("the evidence token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise TokenRefused("the evidence token is for another audience than the grader's "
                               f"{self.audience}") from None
        except jwt.InvalidSignatureError:
            raise TokenRefused("the evidence token's signature does not verify: forged or "
                               "altered") from None
        except jwt.PyJWTError as exc:
            raise TokenRefused(f"the evidence token is refused: {exc}"[:300]) from None
        issuers = {f"https://sts.windows.net/{tid}/", f"{authority()}/{tid}/v2.0"}
        if str(claims.get("iss", "")).lower() not in issuers or \
                str(claims.get("tid", "")).lower() != tid:
            raise TokenRefused(f"the evidence token was issued by {str(claims.get('iss'))[:100]},"
                               " not by the labs' tenant")
        if now is not None and int(claims["exp"]) + LEEWAY < now:
            raise TokenRefused("the evidence token has expired: replayed")
        return {k: claims[k] for k in CLAIMS if k in claims}


def _attested(result: dict, nonce: str) -> dict:
    from . import attest

    out = {k: result[k] for k in ("status", "code", "message") if k in result}
    if result.get("status") != 200:
        return out
    try:
        out["verified"] = attest.verify(result.get("json"), nonce=nonce)
    except attest.AttestationRefused as exc:
        out["refused"] = str(exc)
    except attest.IssuerUnavailable as exc:
        out["undecided"] = str(exc)
    except Exception as exc:  # noqa: BLE001 - the grader's own trouble (its CA bundle)
        out["undecided"] = f"checking the attested document failed: {type(exc).__name__}: {exc}"
    return out


def _token(result: dict, verifier: TokenVerifier | None) -> dict:
    token = result.pop("token", None)
    out = {k: result[k] for k in ("status", "code", "message", "skipped") if k in result}
    if result.get("status") != 200:
        return out
    if not isinstance(token, str) or verifier is None:
        out["refused"] = "the machine returned no token to verify"
        return out
    try:
        out["verified"] = verifier.verify(token, now=time.time())
    except TokenRefused as exc:
        out["refused"] = str(exc)
    except Undecided as exc:
        out["undecided"] = str(exc)
    return out


def verify_parts(results: dict, programs: list[dict], verifier: TokenVerifier | None) -> None:
    """Replace each signed part's result (in place) by what the grader verified of it.

    The grader knows which signed parts it asked for (`programs`): one the machine's answer
    leaves out, or gives as something the probe never answers, is refused (the answer was
    altered), never taken for a part that was not asked for. One that could not run in the
    machine is unverified: the machine did not let the grader see."""
    for program in programs:
        op, name = program.get("op"), program.get("name")
        if op not in SIGNED_OPS:
            continue
        result = results.get(name)
        if name not in results:
            results[name] = {"refused": f"the machine's answer leaves out {name}, which the "
                                        "grader asked for: the probe's answer was altered"}
            continue
        if not isinstance(result, dict) or ("status" not in result and set(result) != {"error"}):
            results[name] = {"refused": f"the machine's answer gives {name} as something the "
                                        "probe never answers: the probe's answer was altered"}
            continue
        if set(result) == {"error"}:
            results[name] = {"unverified": f"in the machine, {name} could not run: "
                                           f"{clean(result['error'])}"}
        elif op == "attested":
            results[name] = _attested(result, program.get("nonce", ""))
        else:
            results[name] = _token(result, verifier)
