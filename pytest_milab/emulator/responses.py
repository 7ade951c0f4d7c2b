"""Small helpers every service uses to answer the way Azure does."""

from __future__ import annotations

import datetime as _dt
import json

from starlette.responses import Response


def json_response(body, status: int = 200, headers: dict[str, str] | None = None,
                  content_type: str = "application/json; charset=utf-8") -> Response:
    data = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
    return Response(data, status_code=status, headers=headers or {}, media_type=content_type)


def arm_error(status: int, code: str, message: str, headers: dict[str, str] | None = None,
              **extra) -> Response:
    err = {"code": code, "message": message}
    err.update(extra)
    return json_response({"error": err}, status, headers)


def iso(ts: float) -> str:
    """ARM's timestamp form, e.g. 2024-05-01T10:11:12.1234567Z."""
    t = _dt.datetime.fromtimestamp(ts, _dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond:06d}0Z"


def set_caller(request, oid: str | None) -> None:
    """Tell the front door (and so the audit log) who made this request."""
    request.scope.setdefault("state", {})["caller_oid"] = oid


async def read_form(request) -> dict[str, str]:
    """An urlencoded body as a dict (what Entra's token endpoints receive)."""
    from urllib.parse import parse_qsl

    body = (await request.body()).decode("utf-8", "replace")
    return dict(parse_qsl(body, keep_blank_values=True))
