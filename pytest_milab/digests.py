"""The probe's keyed digests on the grader: one key per lab, and a digest type that never
shows its HMAC.

A secret comes back from a machine as HMAC-SHA256 under a key the grader sends it. That key is
the lab's own (never another lab's): a student who reads it on their machine can test guesses
against their own digests only. And since a student could test guesses against any HMAC they
see, a digest never prints it: not in a check's locals (`-l`), an assertion's explanation,
`--tb=long` or the debug log."""

from __future__ import annotations

import secrets
from typing import Any

from .text import clean_tree


def new_key() -> bytes:
    """A fresh digest key, for one lab."""
    return secrets.token_bytes(32)


class Digest(dict):
    """A keyed digest as the probe returns it, {"hmac", "length"}: still a dict for the code
    that reads it (`lab.same_secret` compares it), but its repr and str hide the HMAC."""

    def __repr__(self) -> str:
        return f"<keyed digest of {self.get('length', '?')} bytes>"

    __str__ = __repr__


def _is_digest(value: Any) -> bool:
    return (isinstance(value, dict) and set(value) == {"hmac", "length"}
            and isinstance(value["hmac"], str))


def received(data: Any) -> Any:
    """A machine's answer as the grader keeps it: every string stripped of control characters
    (`text.clean_tree`), every keyed digest a `Digest`."""
    data = clean_tree(data)

    def wrap(value: Any) -> Any:
        if _is_digest(value):
            return Digest(value)
        if isinstance(value, dict):
            return {k: wrap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [wrap(v) for v in value]
        return value

    return wrap(data)
