"""The local Azure misbehaving on purpose: faults, ARM throttling and quirks, all off by default.

`Knobs` (knobs.py) holds one `Faults` and one `Quirks`; the services ask them one question per
request (a hook of a line or two each), and tests switch them at run time from any thread:

    knobs.faults.error_burst("arm", status=503, count=2)   # the next 2 ARM requests get 503
    knobs.faults.reset_connections(1)                      # the next proxy tunnel is reset
    knobs.faults.ssh_refuse(3)                             # SSH refuses connections for 3 s
    knobs.faults.hang_commands("ubuntu", 5)                # commands there start 5 s late
    knobs.faults.himds_down(5, machine="onprem1")          # an Arc agent's HIMDS stops for 5 s
    knobs.quirks.add("imds-no-tags-path")                  # Azure gets one thing wrong
    knobs.reset()                                          # everything back to normal

Faults are transient trouble a client should ride out; quirks are Azure answering *wrongly*, so
a grader that checks Azure's own behaviour can be shown failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import math
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.responses import Response

from .hosts import CLASSIC_MANAGEMENT, MANAGEMENT_RESOURCES
from .responses import json_response

if TYPE_CHECKING:
    from .knobs import Knobs
    from .state import Cloud

# The services the front door routes (error bursts and latency apply to these), and the latency
# that is not HTTP: the pause before a VM's SSH server accepts a login.
SERVICES = ("arm", "keyvault", "entra", "graph", "imds", "himds")
LATENCY_SERVICES = (*SERVICES, "aka.ms", "ssh_handshake")
PROXIES = ("any", "host", "vm")  # which forward proxies reset_connections applies to

QUIRKS = {
    "imds-wrong-resource-id":
        "IMDS /metadata/instance reports compute.resourceId with '-old' appended to the VM name",
    "imds-no-tags-path":
        "IMDS answers 404 for /metadata/instance/compute/tagsList (the full document keeps it)",
    "imds-token-audience-mismatch":
        "IMDS (and an Arc machine's HIMDS) tokens asked for "
        f"{MANAGEMENT_RESOURCES[0]} carry aud {CLASSIC_MANAGEMENT} (ARM still accepts them)",
    "arm-permissions-too-wide":
        "ARM's subscription-level permissions list shows */read to a managed identity even "
        "without an assignment there",
    "arm-list-denied":
        "ARM answers 403 AuthorizationFailed to a managed identity listing a resource group's "
        "resources, even when it may",
    "keyvault-accepts-any-audience":
        "Key Vault does not check the token audience (a management token gets 403/200, not 401)",
}


# -- faults -------------------------------------------------------------------------------------
@dataclass
class _Burst:
    service: str
    status: int
    left: int
    path: str | None
    retry_after: int | None


@dataclass
class _Resets:
    left: int
    proxy: str
    host: str | None


@dataclass
class _Hang:
    vm: str | None
    seconds: float  # math.inf: until the client gives up
    left: float  # commands still to hang; math.inf: all


class Faults:
    """Transient trouble, switched on and off at run time; thread-safe.

    Counts are consumed by the requests they hit, so a burst of 2 fails exactly two requests.
    `subscribe` lets the live VMs hear of changes (SSH refusal opens and closes listeners).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bursts: list[_Burst] = []
        self._resets: list[_Resets] = []
        self._ssh_refused: dict[str | None, float] = {}  # vm selector -> monotonic deadline
        self._hangs: list[_Hang] = []
        self._himds_down: dict[str | None, float] = {}  # machine selector -> monotonic deadline
        self._listeners: list[Callable[[], None]] = []

    # -- switched by tests ------------------------------------------------------------------------
    def error_burst(self, service: str, status: int = 503, count: int = 1, *,
                    path: str | None = None, retry_after: int | None = None) -> None:
        """The next `count` requests to `service` (whose path contains `path`, if given) get
        `status` with that service's error body. 503 carries `Retry-After: 1` unless told."""
        if service not in SERVICES:
            raise ValueError(f"unknown service {service!r}; one of {', '.join(SERVICES)}")
        if retry_after is None and status == 503:
            retry_after = 1
        with self._lock:
            self._bursts.append(_Burst(service, status, count, path and path.lower(),
                                       retry_after))

    def reset_connections(self, count: int = 1, *, proxy: str = "any",
                          host: str | None = None) -> None:
        """The next `count` CONNECT tunnels through the forward proxies (`host`: the one in the
        test process's HTTPS_PROXY; `vm`: a VM's egress proxy) are reset right after the proxy
        answers 200, before any TLS byte: the client sees ECONNRESET in its TLS handshake.
        `host` limits it to tunnels to that hostname."""
        if proxy not in PROXIES:
            raise ValueError(f"proxy must be one of {', '.join(PROXIES)}")
        with self._lock:
            self._resets.append(_Resets(count, proxy, host and host.lower()))

    def ssh_refuse(self, seconds: float, *, vm: str | None = None) -> None:
        """For `seconds`, SSH connections to the VM (name or ARM id; None: every VM) are refused
        (ECONNREFUSED, as before sshd is up); connections already open stay open."""
        with self._lock:
            self._ssh_refused[_selector(vm)] = time.monotonic() + seconds
        self._notify()

    def hang_commands(self, vm: str | None, seconds: float | None = None, *,
                      count: int | None = None) -> None:
        """Commands on the VM (name or ARM id; None: every VM) start only after `seconds`
        (None: never; the command is dropped when the client closes its channel). The SSH
        connection itself stays healthy. `count` limits how many commands hang."""
        with self._lock:
            self._hangs.append(_Hang(_selector(vm), math.inf if seconds is None else seconds,
                                     math.inf if count is None else count))

    def himds_down(self, seconds: float, *, machine: str | None = None) -> None:
        """For `seconds`, the HIMDS of the on-premises machine (name or Arc resource id; None:
        every machine) does not answer: connections to localhost:40342 close unanswered, and the
        machine shows Disconnected in ARM."""
        with self._lock:
            self._himds_down[_selector(machine)] = time.monotonic() + seconds

    def clear(self) -> None:
        """Every fault off."""
        with self._lock:
            listeners_care = bool(self._ssh_refused)  # only SSH refusal changes listeners
            self._bursts.clear()
            self._resets.clear()
            self._ssh_refused.clear()
            self._hangs.clear()
            self._himds_down.clear()
        if listeners_care:
            self._notify()

    def errors_left(self, service: str | None = None) -> int:
        with self._lock:
            return sum(b.left for b in self._bursts if service in (None, b.service))

    def resets_left(self) -> int:
        with self._lock:
            return sum(r.left for r in self._resets)

    # -- asked by the services ------------------------------------------------------------------
    def take_error(self, service: str, path: str) -> _Burst | None:
        """The burst this request falls into, counting it; None when it is served normally."""
        if not self._bursts:
            return None
        with self._lock:
            for burst in self._bursts:
                if burst.service == service and (burst.path is None
                                                 or burst.path in path.lower()):
                    burst.left -= 1
                    if burst.left <= 0:
                        self._bursts.remove(burst)
                    return burst
        return None

    def take_reset(self, proxy: str, host: str) -> bool:
        if not self._resets:
            return False
        with self._lock:
            for resets in self._resets:
                if resets.proxy in ("any", proxy) and resets.host in (None, host.lower()):
                    resets.left -= 1
                    if resets.left <= 0:
                        self._resets.remove(resets)
                    return True
        return False

    def ssh_refused_for(self, vm: dict) -> float:
        """Seconds the VM's SSH listener stays closed from now; 0 when it accepts."""
        if not self._ssh_refused:
            return 0.0
        now = time.monotonic()
        with self._lock:
            return max([until - now for sel, until in self._ssh_refused.items()
                        if until > now and _matches(sel, vm)], default=0.0)

    def himds_is_down(self, machine: dict) -> bool:
        if not self._himds_down:
            return False
        now = time.monotonic()
        with self._lock:
            return any(until > now and _matches(sel, machine)
                       for sel, until in self._himds_down.items())

    def hang_for(self, vm: dict) -> float:
        """How long the next command on this VM hangs (counting it); 0 when it runs at once."""
        if not self._hangs:
            return 0.0
        with self._lock:
            for hang in self._hangs:
                if _matches(hang.vm, vm):
                    hang.left -= 1
                    if hang.left <= 0:
                        self._hangs.remove(hang)
                    return hang.seconds
        return 0.0

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def _notify(self) -> None:
        for listener in list(self._listeners):
            listener()


def _selector(vm: str | None) -> str | None:
    return vm.rstrip("/").lower() if vm else None


def _matches(selector: str | None, vm: dict | None) -> bool:
    if selector is None:
        return True
    vm = vm or {}
    return selector in (str(vm.get("name", "")).lower(), str(vm.get("id", "")).rstrip("/").lower())


# -- what a fault looks like on the wire ----------------------------------------------------------
_ARM_CODES = {500: "InternalServerError", 502: "BadGateway", 503: "ServiceUnavailable",
              504: "GatewayTimeout"}
_OAUTH_CODES = {500: "server_error", 503: "temporarily_unavailable"}


def error_response(burst: _Burst) -> Response:
    """The service's own error shape for a transient failure (wording UNCONFIRMED throughout)."""
    status, service = burst.status, burst.service
    headers = {"x-ms-request-id": str(uuid.uuid4())}
    if burst.retry_after is not None:
        headers["Retry-After"] = str(burst.retry_after)
    if service in ("imds", "himds"):
        # The identity endpoint's documented error codes include server_error and
        # service_unavailable (“How to use managed identities for Azure resources on an Azure VM to acquire an access token”).
        code = "service_unavailable" if status == 503 else "server_error"
        return json_response({"error": code, "error_description": f"IMDS returned {status}"},
                             status, headers)
    if service == "entra":
        code = _OAUTH_CODES.get(status, "server_error")
        now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
        return json_response({"error": code, "error_description":
                              f"AADSTS90033: A transient error has occurred. Please try again."
                              f"\r\nTimestamp: {now}", "error_codes": [90033]}, status, headers)
    code = _ARM_CODES.get(status, "InternalServerError")
    if service == "graph":
        code = "serviceNotAvailable" if status == 503 else "generalException"
    message = ("The service is temporarily unavailable. Please retry the request."
               if status == 503 else "Encountered internal server error.")
    return json_response({"error": {"code": code, "message": message}}, status, headers)


async def reset_tunnel(writer: asyncio.StreamWriter) -> None:
    """Accept the CONNECT, then drop the connection with a TCP RST (SO_LINGER 0)."""
    writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
    await writer.drain()
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def hang(seconds: float, closed: Any) -> bool:
    """Wait `seconds` (inf: forever) or until `closed` (an awaitable) completes. True when the
    client went away meanwhile, so the command must not run."""
    waiter = asyncio.ensure_future(closed)
    try:
        done, _ = await asyncio.wait({waiter}, timeout=None if math.isinf(seconds) else seconds)
        return bool(done)
    finally:
        waiter.cancel()


async def after(seconds: float, value: Any) -> Any:
    await asyncio.sleep(seconds)
    return value


# -- ARM throttling (“Understand how Azure Resource Manager throttles requests”) ------------------
@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass(frozen=True)
class Verdict:
    """What the throttle says about one ARM request."""

    allowed: bool
    remaining: int  # whole tokens left in the bucket, for x-ms-ratelimit-remaining-*
    retry_after: int  # seconds until a token is available (refused requests only)
    kind: str  # "read" | "write"
    subscription: str
    oid: str

    def refusal(self) -> tuple[str, str, dict[str, str]]:
        """(code, message, headers) of ARM's 429; the message's tail is UNCONFIRMED."""
        return ("SubscriptionRequestsThrottled",
                f"Number of '{self.kind}' requests for subscription '{self.subscription}' actor "
                f"'{self.oid}' exceeded. Please try again after '{self.retry_after}' seconds "
                "after additional tokens are available. Refer to https://aka.ms/arm-throttling",
                {"Retry-After": str(self.retry_after)})


class ArmThrottle:
    """Token buckets per (caller, subscription, read|write), sized by the knobs at each request.

    Only subscription-level requests are counted (tenant-level calls such as `GET /subscriptions`
    have their own, unmodelled limits). A refused request takes no token.
    """

    def __init__(self, knobs: Knobs, clock: Callable[[], float] = time.monotonic) -> None:
        self.knobs = knobs
        self.clock = clock
        self._buckets: dict[tuple[str, str, str], _Bucket] = {}
        self._lock = threading.Lock()

    def check(self, oid: str | None, method: str, path: str) -> Verdict | None:
        """None when throttling is off or the request is not subscription-level."""
        if not self.knobs.throttle or not oid:
            return None
        parts = path.split("/")
        if len(parts) < 3 or parts[1].lower() != "subscriptions" or not parts[2]:
            return None
        sub, kind = parts[2], ("read" if method in ("GET", "HEAD") else "write")
        knobs = self.knobs
        capacity, refill = ((knobs.arm_read_bucket, knobs.arm_read_refill) if kind == "read"
                            else (knobs.arm_write_bucket, knobs.arm_write_refill))
        with self._lock:
            now = self.clock()
            bucket = self._buckets.setdefault((oid.lower(), sub.lower(), kind),
                                              _Bucket(float(capacity), now))
            bucket.tokens = min(float(capacity), bucket.tokens + (now - bucket.at) * refill)
            bucket.at = now
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return Verdict(True, int(bucket.tokens), 0, kind, sub, oid)
            wait = (1 - bucket.tokens) / refill if refill > 0 else 3600
            return Verdict(False, 0, max(1, math.ceil(wait)), kind, sub, oid)


# -- quirks -------------------------------------------------------------------------------------
class Quirks:
    """The named quirks in force (see QUIRKS); unknown names are refused, so typos show."""

    def __init__(self, names: tuple[str, ...] | list[str] = ()) -> None:
        self._on: set[str] = set()
        for name in names:
            self.add(name)

    def add(self, name: str) -> None:
        if name not in QUIRKS:
            raise ValueError(f"unknown quirk {name!r}; known: {', '.join(sorted(QUIRKS))}")
        self._on.add(name)

    def discard(self, name: str) -> None:
        self._on.discard(name)

    def clear(self) -> None:
        self._on.clear()

    @contextlib.contextmanager
    def enabled(self, *names: str) -> Iterator[None]:
        """The quirks on for the block, off again after it."""
        for name in names:
            self.add(name)
        try:
            yield
        finally:
            for name in names:
                self.discard(name)

    def __contains__(self, name: object) -> bool:
        return name in self._on

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._on))

    def __len__(self) -> int:
        return len(self._on)

    def __repr__(self) -> str:
        return f"Quirks({sorted(self._on)!r})"


def is_managed_identity(cloud: Cloud, oid: str | None) -> bool:
    sp = cloud.principal(oid) if oid else None
    return sp is not None and sp.kind == "ManagedIdentity"


def imds_document(knobs: Knobs, doc: dict) -> dict:
    """imds-wrong-resource-id: the instance document names another VM."""
    compute = doc.get("compute") or {}
    if "imds-wrong-resource-id" in knobs.quirks and compute.get("resourceId"):
        compute["resourceId"] += "-old"
    return doc


def imds_hides(knobs: Knobs, parts: list[str]) -> bool:
    """imds-no-tags-path: route filtering to compute/tagsList (or below) finds nothing."""
    return "imds-no-tags-path" in knobs.quirks and parts[:2] == ["compute", "tagsList"]


def token_audience(knobs: Knobs, resource: str) -> str:
    """imds-token-audience-mismatch: a management.azure.com token names the classic audience."""
    if "imds-token-audience-mismatch" in knobs.quirks and resource in MANAGEMENT_RESOURCES:
        return CLASSIC_MANAGEMENT
    return resource


def widened_permissions(cloud: Cloud, oid: str | None, scope: str, value: list[dict]) -> list:
    """arm-permissions-too-wide: a managed identity reads everything in the subscription."""
    reader = {"actions": ["*/read"], "notActions": [], "dataActions": [], "notDataActions": []}
    at_subscription = scope.count("/") == 2 and scope.lower().startswith("/subscriptions/")
    if ("arm-permissions-too-wide" in cloud.knobs.quirks and at_subscription
            and is_managed_identity(cloud, oid) and reader not in value):
        return [*value, reader]
    return value


def denies_group_listing(cloud: Cloud, oid: str | None) -> bool:
    """arm-list-denied: listing a group's resources is refused to managed identities."""
    return "arm-list-denied" in cloud.knobs.quirks and is_managed_identity(cloud, oid)


def vault_audiences(knobs: Knobs, audiences: tuple[str, ...]) -> tuple[str, ...] | None:
    """keyvault-accepts-any-audience: None tells the verifier to accept any `aud`."""
    return None if "keyvault-accepts-any-audience" in knobs.quirks else audiences
