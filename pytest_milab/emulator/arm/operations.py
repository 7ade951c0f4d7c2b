"""`{provider}/locations/{location}/operations/{id}`: where the Compute and Network providers'
long-running PUTs tell clients to poll (`Azure-AsyncOperation`, see lro.py).

Readable by any signed-in caller: the id is unguessable and the caller that started the
operation may lack any role at subscription scope (a group-scoped Contributor polls here too).
"""

from __future__ import annotations

from starlette.responses import Response

from ..responses import json_response
from . import lro
from .kinds import ArmError, Ctx, Kind, Registry


class LocationOperations(Kind):
    types = ("locations", "operations")
    check_rbac = False

    def __init__(self, ns: str) -> None:
        self.ns = ns

    def get(self, ctx: Ctx) -> Response:
        with ctx.cloud.lock:
            op = lro.operations(ctx.cloud).get(ctx.names[-1])
            body = dict(op) if op else None
        if body is None:
            raise ArmError(404, "OperationNotFound",
                           f"The operation '{ctx.names[-1]}' could not be found.")
        headers = lro.retry_headers(ctx.cloud) if body["status"] == "InProgress" else {}
        return json_response(lro.status_body(self.ns, body), 200, headers)


KINDS = tuple(LocationOperations(ns) for ns in ("Microsoft.Compute", "Microsoft.Network"))


def register(registry: Registry) -> None:
    """Add this provider's resource types to an ARM's registry (arm.PROVIDERS lists the order)."""
    for kind in KINDS:
        registry.add(kind)
