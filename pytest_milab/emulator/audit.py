"""The audit log: one entry per request the local Azure answered, readable from Python."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class AuditEntry:
    time: float
    caller_oid: str | None
    method: str
    host: str
    path: str
    status: int
    query: str = ""
    service: str = ""

    @property
    def is_write(self) -> bool:
        return self.method not in ("GET", "HEAD", "OPTIONS")


class AuditLog:
    """Append-only and safe to read from any thread while the emulator serves."""

    def __init__(self) -> None:
        self._entries: list[AuditEntry] = []
        self._lock = threading.Lock()

    def record(self, entry: AuditEntry) -> None:
        with self._lock:
            self._entries.append(entry)

    def entries(self) -> list[AuditEntry]:
        with self._lock:
            return list(self._entries)

    def __iter__(self) -> Iterator[AuditEntry]:
        return iter(self.entries())

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def find(self, *, method: str | None = None, host: str | None = None,
             path_contains: str | None = None, caller_oid: str | None = None,
             status: int | None = None) -> list[AuditEntry]:
        out = []
        for e in self.entries():
            if method and e.method != method:
                continue
            if host and e.host != host and not e.host.endswith("." + host.lstrip("*.")):
                continue
            if path_contains and path_contains.lower() not in e.path.lower():
                continue
            if caller_oid and e.caller_oid != caller_oid:
                continue
            if status is not None and e.status != status:
                continue
            out.append(e)
        return out

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
