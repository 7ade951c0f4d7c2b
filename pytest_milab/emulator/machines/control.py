"""The local Azure's control endpoint: what real Azure has no API for, asked of the local Azure.

`https://control.localazure.test` (a reserved test name, reached through the local Azure's proxy
like Azure's own hosts) is the local Azure's stand-in for racking a server: on real Azure an
on-premises server exists before the lab starts; in the local Azure someone has to switch one on.

    POST /machines   {"name": "onprem1", "user": "azureuser", "publicKeys": ["ssh-ed25519 ..."],
                      "siteAddress": "10.1.0.4"}
      201 {"name", "address", "port", "user"}   a new machine (see machines/arc.py), reachable over SSH
                                                at `address`; `siteAddress` (optional) is the
                                                address it sees as its own behind its site's
                                                NAT (what `hostname -I` and so its agent report)
      409 {"error": {"code": "MachineExists"}}  that name is taken: pick another
    GET  /machines/<name>                       200 as above, or 404
    PATCH /machines/<name>  {"sudo": false}     the admin user may no longer sudo without a
                                                password (as an administrator editing
                                                /etc/sudoers.d); true gives it back

Only the local Azure's Owner principal (its operator, `AZURE_CLIENT_ID` of its environment) may
call it, with an ARM token (`https://management.azure.com/.default`): 401 without one, 403 for
anyone else. Nothing of real Azure's surface changes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..entra.tokens import ARM_AUDIENCES, TokenIssuer, TokenRejected
from ..hosts import CONTROL_HOST
from ..responses import set_caller

HOST = CONTROL_HOST
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")  # a hostname label
ADDRESS = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body).encode(), status_code=status,
                    media_type="application/json; charset=utf-8")


def _error(status: int, code: str, message: str) -> Response:
    return _json({"error": {"code": code, "message": message}}, status)


async def _body(request: Request) -> Any:
    """The request's JSON body, or None when it is not JSON."""
    try:
        return await request.json()
    except ValueError:
        return None


def build_app(tokens: TokenIssuer, owner_oid: str, fleet: Callable[[], Any]) -> Starlette:
    """The control app; `fleet()` gives the ArcFleet (it starts after the network)."""

    def caller(request: Request) -> Response | None:
        try:
            claims = tokens.verify_header(request.headers.get("authorization"),
                                          audiences=ARM_AUDIENCES)
        except TokenRejected:
            return _error(401, "Unauthorized", "an ARM token of the local Azure's Owner "
                                               "principal is required")
        set_caller(request, claims.get("oid"))
        if claims.get("oid") != owner_oid:
            return _error(403, "Forbidden", "only the local Azure's Owner principal (its "
                                            "operator) may rack machines")
        return None

    def describe(machine) -> dict:
        return {"name": machine.name, "address": machine.host_address,
                "port": fleet().ssh_port, "user": machine.user, "sudo": machine.sudo_allowed}

    async def rack(request: Request) -> Response:
        refused = caller(request)
        if refused is not None:
            return refused
        body = await _body(request)
        if not isinstance(body, dict):
            return _error(400, "InvalidRequest", "the body is a JSON object")
        name, user = body.get("name"), body.get("user") or "azureuser"
        keys = body.get("publicKeys") or []
        site = body.get("siteAddress")
        if site is not None and not (isinstance(site, str) and ADDRESS.match(site)):
            return _error(400, "InvalidAddress", f"not an IPv4 address: {site!r}")
        if not isinstance(name, str) or not NAME.match(name):
            return _error(400, "InvalidName", f"not a host name: {name!r}")
        if not isinstance(user, str) or not NAME.match(user):
            return _error(400, "InvalidUser", f"not a user name: {user!r}")
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
            return _error(400, "InvalidKeys", "publicKeys is a list of OpenSSH public keys")
        if fleet().live(name) is not None:
            return _error(409, "MachineExists", f"there is already a machine named {name!r}")
        machine = await fleet().add(name, user=user, public_keys=keys, site_address=site)
        return _json(describe(machine), 201)

    def named(request: Request):
        """The machine the path names, or the answer that refuses the request."""
        refused = caller(request)
        if refused is not None:
            return None, refused
        machine = fleet().live(request.path_params["name"])
        if machine is None:
            return None, _error(404, "MachineNotFound", "no such machine")
        return machine, None

    async def show(request: Request) -> Response:
        machine, refused = named(request)
        return refused or _json(describe(machine))

    async def change(request: Request) -> Response:
        machine, refused = named(request)
        if refused is not None:
            return refused
        body = await _body(request)
        if not isinstance(body, dict) or not isinstance(body.get("sudo"), bool):
            return _error(400, "InvalidRequest", 'the body is {"sudo": true|false}')
        machine.set_sudo(body["sudo"])
        return _json(describe(machine))

    return Starlette(routes=[Route("/machines", rack, methods=["POST"]),
                             Route("/machines/{name}", show, methods=["GET"]),
                             Route("/machines/{name}", change, methods=["PATCH"])])
