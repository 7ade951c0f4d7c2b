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

from .text import clean_tree, strip_controls


def new_key() -> bytes:
    """A fresh digest key, for one lab."""
    return secrets.token_bytes(32)


class Digest(dict):
    """A keyed digest as the probe returns it, {"hmac", "length"}: still a dict for the code
    that reads it (`lab.same_secret` compares it), but its repr and str hide the HMAC."""

    def __repr__(self) -> str:
        return f"<keyed digest of {self.get('length', '?')} bytes>"

    __str__ = __repr__


def received(data: Any) -> Any:
    """A machine's answer as the grader keeps it: every string, keys too, stripped of control
    characters (`text.strip_controls`, as `text.clean_tree` does), every keyed digest a
    `Digest` (a dict that is {"hmac": text, "length": ...} once its keys are stripped). One
    pass over the answer."""
    if isinstance(data, str):
        return strip_controls(data)
    if isinstance(data, dict):
        items = {(strip_controls(k) if isinstance(k, str) else clean_tree(k)): v
                 for k, v in data.items()}
        if len(items) == 2 and "hmac" in items and "length" in items \
                and isinstance(items["hmac"], str):
            return Digest({k: clean_tree(v) for k, v in items.items()})
        return {k: received(v) for k, v in items.items()}
    if isinstance(data, list):
        return [received(v) for v in data]
    return data
