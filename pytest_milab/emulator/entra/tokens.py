"""Access tokens: RS256 JWTs signed with a key made per run, with Entra's v1 claims (“Microsoft identity platform access token claims reference”)."""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from ..hosts import ARM_AUDIENCES, GRAPH_AUDIENCES, VAULT_AUDIENCES

KNOWN_RESOURCES = ARM_AUDIENCES + VAULT_AUDIENCES + GRAPH_AUDIENCES


class TokenRejected(Exception):
    """A bearer token that a service must refuse; `kind` says why."""

    def __init__(self, kind: str, detail: str = "", claims: dict | None = None) -> None:
        super().__init__(kind)
        self.kind = kind  # "missing" | "malformed" | "expired" | "audience"
        self.detail = detail
        self.claims = claims or {}


def _b64url_uint(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


VERIFIED_KEPT = 4096  # tokens whose signature was checked, remembered


@dataclass(frozen=True)
class Token:
    value: str
    claims: dict

    @property
    def expires_on(self) -> int:
        return int(self.claims["exp"])


class TokenIssuer:
    """Signs and verifies the tokens of one tenant."""

    def __init__(self, tenant_id: str, *, clock=time.time) -> None:
        self.tenant_id = tenant_id
        self._clock = clock
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._public = self._key.public_key()
        thumb = hashlib.sha1(self._public.public_numbers().n.to_bytes(256, "big")).digest()
        self.kid = base64.urlsafe_b64encode(thumb).rstrip(b"=").decode()
        self._verified: dict[str, dict] = {}  # token -> claims, signature already checked

    @property
    def issuer(self) -> str:
        return f"https://sts.windows.net/{self.tenant_id}/"

    def issue(self, *, aud: str, oid: str, appid: str, appidacr: str = "1",
              lifetime: int = 3599, extra: dict | None = None) -> Token:
        now = int(self._clock())
        claims = {
            "aud": aud,
            "iss": self.issuer,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "aio": uuid.uuid4().hex,
            "appid": appid,
            "appidacr": appidacr,
            "idp": self.issuer,
            "idtyp": "app",
            "oid": oid,
            "rh": "0." + uuid.uuid4().hex,
            "sub": oid,
            "tid": self.tenant_id,
            "uti": uuid.uuid4().hex[:22],
            "ver": "1.0",
        }
        if extra:
            claims.update(extra)
        headers = {"typ": "JWT", "x5t": self.kid, "kid": self.kid}
        value = jwt.encode(claims, self._key, algorithm="RS256", headers=headers)
        return Token(value, claims)

    def verify(self, value: str, *, audiences: tuple[str, ...] | None = None) -> dict:
        """Return the claims of a token this tenant signed, or raise TokenRejected."""
        claims = self._verified.get(value)
        if claims is None:
            try:
                claims = jwt.decode(
                    value, self._public, algorithms=["RS256"],
                    options={"verify_aud": False, "verify_exp": False},
                )
            except jwt.PyJWTError as exc:
                raise TokenRejected("malformed", str(exc)) from None
            # A client sends the same token many times: check its signature once. (Expiry,
            # issuer and audience are still checked on every call.)
            if len(self._verified) >= VERIFIED_KEPT:
                self._verified.clear()
            self._verified[value] = claims
        claims = dict(claims)
        if claims.get("iss") != self.issuer:
            raise TokenRejected("malformed", "issuer", claims)
        if int(claims.get("exp", 0)) <= self._clock():
            raise TokenRejected("expired", "", claims)
        if audiences is not None and claims.get("aud") not in audiences:
            raise TokenRejected("audience", "", claims)
        return claims

    def verify_header(self, authorization: str | None, *,
                      audiences: tuple[str, ...] | None = None) -> dict:
        if not authorization:
            raise TokenRejected("missing")
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise TokenRejected("malformed", "not a bearer token")
        return self.verify(value.strip(), audiences=audiences)

    def jwks(self) -> dict:
        numbers = self._public.public_numbers()
        return {"keys": [{
            "kty": "RSA", "use": "sig", "kid": self.kid, "x5t": self.kid,
            "n": _b64url_uint(numbers.n), "e": _b64url_uint(numbers.e),
        }]}


def audience_for_scope(scope: str) -> str:
    """The `aud` Entra puts in a v1 token asked for with a v2 scope.

    Strips `/.default` and nothing else, so `https://management.core.windows.net//.default`
    gives `https://management.core.windows.net/` and `https://vault.azure.net/.default` gives
    `https://vault.azure.net` (“Microsoft identity platform access token claims reference”). For `https://management.azure.com/.default` the exact
    string Azure prints is UNCONFIRMED (“Microsoft identity platform access token claims reference”); ARM accepts either form, so both work.
    """
    first = scope.split()[0] if scope.split() else ""
    if first.endswith("/.default"):
        return first[: -len("/.default")]
    return first
