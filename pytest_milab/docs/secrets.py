"""A document's secrets kept out of every output: passwords and client secrets it is given or
types, secrets and tokens its commands print, and the values of variables it names as secret."""

from __future__ import annotations

import re

MASK = "***"
# Values commands print that are secrets wherever they appear.
_PRINTED = (
    re.compile(r'"(?:password|clientSecret|client_secret|accessToken|access_token|'
               r'refresh_token|secret|secretText)"\s*:\s*"([^"]{6,})"', re.I),
    re.compile(r"\b(eyJ[\w-]{10,}\.[\w-]{10,}\.[\w-]*)"),  # a JWT
)
# Secrets typed on a command line.
_TYPED = re.compile(r"(?:--password|--client-secret|--secret|-p)[ =]+(?!\$)(['\"]?)([^\s'\"]{4,})\1")
_SECRET_NAME = re.compile(r"(password|secret|token|passwd|pwd|credential)", re.I)


class Masker:
    def __init__(self, known: list[str] | None = None) -> None:
        self.values: set[str] = {v for v in (known or []) if v and len(v) >= 4}

    def add(self, value: str | None) -> None:
        if value and len(value) >= 4:
            self.values.add(value)

    def learn(self, text: str) -> None:
        """Remember the secrets `text` shows (a command's output or a command typed)."""
        for pattern in _PRINTED:
            for found in pattern.finditer(text):
                self.add(found.group(1))
        for found in _TYPED.finditer(text):
            self.add(found.group(2))

    def learn_variables(self, state: str, extra: tuple[str, ...] = ()) -> None:
        """Values of the session's variables whose names say they are secret (`clientSecret`,
        `vaultToken`) or that the document names (`secret=`)."""
        for found in re.finditer(r"^declare -\S* ([A-Za-z_]\w*)=\"?(.*?)\"?$", state, re.M | re.S):
            name, value = found.group(1), found.group(2).replace('\\"', '"')
            if _SECRET_NAME.search(name) or name in extra:
                self.add(value)
            self.learn(value)

    def __call__(self, text: str) -> str:
        for value in sorted(self.values, key=len, reverse=True):
            text = text.replace(value, MASK)
        for pattern in _PRINTED:
            text = pattern.sub(lambda m: m.group(0).replace(m.group(1), MASK), text)
        return text
