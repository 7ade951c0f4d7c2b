"""Long-running ARM operations: the `Azure-AsyncOperation` protocol of "Track asynchronous Azure
operations" (Azure Resource Manager docs).

A long-running PUT answers 201 (or 200) with `provisioningState` Creating/Updating and an
`Azure-AsyncOperation` URL; the status there is `InProgress` until the operation ends, then
`Succeeded` (or `Failed` with an `error`). `knobs.lro_delay` is how long an operation stays in
progress (seconds; 0 ends it at once); the poll hint follows it. ARM's `Retry-After` is whole
seconds (the SDKs read it as an integer), so a shorter delay is hinted with
`x-ms-retry-after-ms`, which azure-core's pollers also read.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from ..state import new_guid

DEFAULT_DELAY = 0.05


def delay(cloud) -> float:
    return max(0.0, float(getattr(cloud.knobs, "lro_delay", DEFAULT_DELAY)))


def retry_headers(cloud) -> dict[str, str]:
    """How soon to poll again: `Retry-After` in whole seconds, or milliseconds when shorter."""
    step = delay(cloud)
    if step >= 1:
        return {"Retry-After": str(int(step))}
    return {"x-ms-retry-after-ms": str(max(10, int(step * 1000)))}


def later(seconds: float, fn: Callable[[], None]) -> None:
    """Run `fn` after `seconds`: on the emulator's loop when called there, else on a timer."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        timer = threading.Timer(seconds, fn)
        timer.daemon = True
        timer.start()
        return
    loop.call_later(seconds, fn)


def operations(cloud) -> dict[str, dict]:
    """Operation id -> {"status", "startTime", "endTime"?, "error"?}."""
    with cloud.lock:
        if not hasattr(cloud, "async_operations"):
            cloud.async_operations = {}
        return cloud.async_operations


def start(cloud) -> str:
    op_id = new_guid()
    from ..responses import iso

    operations(cloud)[op_id] = {"name": op_id, "status": "InProgress",
                                "startTime": iso(cloud.now())}
    return op_id


def finish(cloud, op_id: str, error: dict | None = None) -> None:
    from ..responses import iso

    with cloud.lock:
        op = operations(cloud).get(op_id)
        if op is None:
            return
        op["status"] = "Failed" if error else "Succeeded"
        op["endTime"] = iso(cloud.now())
        if error:
            op["error"] = error


# -- long-running PUTs of tracked resources ------------------------------------------------------
def _state_while(ns: str, existing: bool) -> str:
    """Compute says Creating then Updating; the Network RP says Updating for both
    ("Track asynchronous Azure operations"; the RPs' REST API references)."""
    if ns.lower() == "microsoft.network":
        return "Updating"
    return "Updating" if existing else "Creating"


def begin_put(ctx, res: dict, existing: dict | None) -> dict[str, str]:
    """Mark a just-stored resource in progress and finish it after the delay; the headers that
    tell the client where to poll. Nothing to do when the delay is 0."""
    step = delay(ctx.cloud)
    props = res.get("properties")
    if step <= 0 or not isinstance(props, dict):
        return {}
    from ..state import arm_key

    props["provisioningState"] = _state_while(ctx.ns, existing is not None)
    op_id = start(ctx.cloud)
    key = arm_key(res["id"])

    def done() -> None:
        with ctx.cloud.lock:
            if ctx.cloud.resources.get(key) is res:
                res["properties"]["provisioningState"] = "Succeeded"
        finish(ctx.cloud, op_id)

    later(step, done)
    location = res.get("location") or "global"
    url = (f"https://{ctx.host}/subscriptions/{ctx.sub}/providers/{ctx.ns}/locations/{location}"
           f"/operations/{op_id}?api-version={ctx.api_version}")
    return {"Azure-AsyncOperation": url, **retry_headers(ctx.cloud)}


def status_body(ns: str, op: dict) -> dict:
    """Compute's status names the operation and its times; Network's has the status alone."""
    if ns.lower() == "microsoft.network":
        return {k: v for k, v in op.items() if k in ("status", "error")}
    return dict(op)
