"""The ASGI front door: routes each request to its service by Host and writes the audit log."""

from __future__ import annotations

import asyncio
import json

from .. import faults
from ..audit import AuditEntry
from ..state import Cloud
from .network import host_matches


class FrontDoor:
    """One ASGI app for the TLS listener (routed by Host) or for a single service."""

    def __init__(self, cloud: Cloud, routes: dict[str, tuple[str, object]]) -> None:
        # host pattern -> (service name, ASGI app)
        self.cloud = cloud
        self.routes = routes

    def _route(self, host: str):
        for pattern, target in self.routes.items():
            if pattern == "*" or host_matches(host, (pattern,)):
                return target
        return None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        host = ""
        for name, value in scope.get("headers", []):
            if name == b"host":
                host = value.decode("latin-1").rsplit(":", 1)[0].lower()
                break
        scope.setdefault("state", {})
        status_box = [0]
        recorded = [False]
        target = self._route(host)
        service = target[0] if target else ""

        def record() -> None:
            recorded[0] = True
            query = scope.get("query_string", b"").decode("latin-1")
            self.cloud.audit.record(AuditEntry(
                time=self.cloud.now(), caller_oid=scope["state"].get("caller_oid"),
                method=scope["method"], host=host, path=scope["path"], status=status_box[0],
                query=query, service=service))

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status_box[0] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                record()  # before the client can have the whole answer (and look at the log)
            await send(message)

        delay = self.cloud.knobs.latency.get(service, 0.0)
        if delay:
            await asyncio.sleep(delay)
        burst = self.cloud.knobs.faults.take_error(service, scope["path"]) if target else None
        if burst is not None:
            await faults.error_response(burst)(scope, receive, send_wrapper)
        elif target is None:
            body = json.dumps({"error": {"code": "HostNotFound",
                                         "message": f"The local Azure does not serve '{host}'."}})
            await send_wrapper({"type": "http.response.start", "status": 404,
                                "headers": [(b"content-type", b"application/json")]})
            await send_wrapper({"type": "http.response.body", "body": body.encode()})
        else:
            await target[1](scope, receive, send_wrapper)
        if not recorded[0]:
            record()
