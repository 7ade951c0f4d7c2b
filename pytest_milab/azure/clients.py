"""The grader's view of Azure: one credential, SDK clients per subscription, retries that honour
`Retry-After` within a deadline. Read-only by construction in discover mode: nothing here writes."""

from __future__ import annotations

import functools
import threading
import time
from concurrent.futures import Future
from functools import cached_property
from urllib.parse import quote

from ..errors import AzureError, CredentialError
from .builtins import API

ARM_SCOPE = "https://management.azure.com/.default"
ARM = "https://management.azure.com"


def make_credential():
    """azure-identity's chain: environment, workload identity, managed identity (a grader VM's
    own), Azure CLI, ... — whatever the grader is signed in with."""
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(exclude_interactive_browser_credential=True)


_UNREACHED = ("connection", "reset", "timed out", "timeout", "temporarily", "unreachable",
              "name resolution", "remote end closed")


def check_credential(credential, attempts: int = 3) -> None:
    """Fail early, in one line, when no credential works. A credential that could not reach
    Entra (a reset, a timeout) is asked again before that is said, and said as such: it is
    not a missing sign-in."""
    import time

    from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError

    for attempt in range(attempts):
        try:
            credential.get_token(ARM_SCOPE)
            return
        except (ClientAuthenticationError, ServiceRequestError) as exc:
            text = str(exc).strip()
            first = text.splitlines()[0] if text else type(exc).__name__
            unreached = isinstance(exc, ServiceRequestError) or any(
                word in text.lower() for word in _UNREACHED)
            if unreached and attempt + 1 < attempts:
                time.sleep(0.5 * 2 ** attempt)
                continue
            if unreached:
                raise CredentialError(f"could not reach Microsoft Entra to sign in ({first}): "
                                      "check the network or proxy, then run again") from None
            raise CredentialError(
                "no Azure credentials: sign in with `az login`, or set AZURE_TENANT_ID, "
                f"AZURE_CLIENT_ID and AZURE_CLIENT_SECRET, or run on a VM with a managed "
                f"identity ({first})") from None


def _client_kwargs(timeout: float, transport=None) -> dict:
    # azure-core's RetryPolicy retries 408/429/5xx and honours Retry-After; bound it in time.
    kwargs = {"retry_total": 6, "retry_backoff_factor": 0.5, "retry_backoff_max": 20,
              "timeout": timeout, "connection_timeout": min(timeout, 20), "read_timeout": timeout}
    if transport is not None:
        kwargs["transport"] = transport
    return kwargs


def shared_transport(pool_size: int) -> ArmTransport:
    """One HTTP connection pool for the session's ARM reads, sized for the labs gathered at
    once (see `ArmTransport`)."""
    return ArmTransport(pool_size)


def sdk_transport(pool_size: int):
    """The azure-mgmt-* clients' transport (provision mode's writes, polls): azure-core's
    requests transport, with the environment's proxy and CA bundle read once, as
    `ArmTransport`'s. Reading `os.environ` on every call, from many threads, while pytest
    rewrites PYTEST_CURRENT_TEST in it for each test, would be a KeyError when a lab is built
    while another is judged."""
    import requests
    from azure.core.pipeline.transport import RequestsTransport

    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=max(10, pool_size))
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.trust_env = False
    session.proxies = requests.utils.get_environ_proxies(ARM)
    return RequestsTransport(session=session, session_owner=False, use_env_settings=False,
                             connection_verify=_environ_verify())


def _environ_verify():
    """The CA bundle requests would verify with: REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, else its
    own (True)."""
    import os

    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True


class ArmTransport:
    """azure-core's transport for ARM reads, on urllib3 directly: what requests did for them
    (it is built on urllib3) at half the CPU per read, the pipeline's policies (retries
    honouring Retry-After, the bearer token, pacing) unchanged.

    Same as azure-core's requests transport over a session with the same settings:
    - the environment's proxy (HTTPS_PROXY, ALL_PROXY, NO_PROXY for management.azure.com, as
      requests reads them; a SOCKS one too) and CA bundle (REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE,
      else certifi's) read once, here: requests would otherwise walk `os.environ` on every
      call, from many threads, while pytest rewrites PYTEST_CURRENT_TEST in it for each test;
    - `pool_size` connections kept (at least 10), no redirects followed, no urllib3 retries
      (the pipeline's retry policy retries), the same default request headers;
    - a connection timeout and a read timeout from the pipeline's options;
    - the same azure-core errors for the same failures: not connected (refused, DNS, TLS
      refused, proxy refused) ServiceRequestError, timed out connecting
      ServiceRequestTimeoutError, no answer in time ServiceResponseTimeoutError, connection
      reset or closed before the answer ServiceResponseError, an answer cut short
      IncompleteReadError.

    The CA bundle is loaded once into one TLS context, not for every new connection. Its
    requests are azure-core's `rest` ones (`ArmReader`'s); the azure-mgmt-* clients keep
    requests' transport (`sdk_transport`)."""

    def __init__(self, pool_size: int = 10) -> None:
        import requests
        import urllib3
        from azure.core.configuration import ConnectionConfiguration

        self.pool_size = max(10, pool_size)
        self.verify = _environ_verify()
        self.connection_config = ConnectionConfiguration(connection_verify=self.verify)
        proxies = requests.utils.get_environ_proxies(ARM)
        # As requests' session.proxies: the https proxy (or all's) for https URLs.
        self.proxy = {scheme: proxies.get(scheme) or proxies.get("all")
                      for scheme in ("https", "http")}
        self._headers = dict(requests.utils.default_headers())
        self._retries = urllib3.Retry(total=False, redirect=False, raise_on_status=False)
        self._context_error: OSError | None = None
        self._managers: dict[str | None, object] = {}
        self._lock = threading.Lock()
        self._context = self._tls_context()

    def _tls_context(self):
        import os

        from urllib3.util.ssl_ import create_urllib3_context

        cert_loc = self.verify if self.verify is not True else None
        if not cert_loc:
            import certifi

            cert_loc = certifi.where()
        if not cert_loc or not os.path.exists(cert_loc):
            # As requests: every request fails so, the transport is still made.
            self._context_error = OSError(f"Could not find a suitable TLS CA certificate "
                                          f"bundle, invalid path: {cert_loc}")
            return None
        context = create_urllib3_context()
        if os.path.isdir(cert_loc):
            context.load_verify_locations(capath=cert_loc)
        else:
            context.load_verify_locations(cafile=cert_loc)
        return context

    def manager(self, url: str):
        """The urllib3 pool manager for `url`'s scheme (through its proxy, if any)."""
        scheme = "http" if url[:5].lower() == "http:" else "https"
        proxy = self.proxy.get(scheme)
        manager = self._managers.get(proxy)
        if manager is not None:
            return manager
        with self._lock:
            if proxy not in self._managers:
                self._managers[proxy] = self._make_manager(proxy)
            return self._managers[proxy]

    def _make_manager(self, proxy: str | None):
        import urllib3
        from requests.utils import get_auth_from_url, prepend_scheme_if_needed

        kwargs = {"num_pools": 4, "maxsize": self.pool_size, "block": False,
                  "cert_reqs": "CERT_REQUIRED", "ssl_context": self._context}
        if proxy is None:
            return urllib3.PoolManager(**kwargs)
        proxy = prepend_scheme_if_needed(proxy, "http")
        username, password = get_auth_from_url(proxy)
        if proxy.lower().startswith("socks"):
            from urllib3.contrib.socks import SOCKSProxyManager

            return SOCKSProxyManager(proxy, username=username, password=password, **kwargs)
        headers = {}
        if username:
            from requests.auth import _basic_auth_str

            headers["Proxy-Authorization"] = _basic_auth_str(username, password)
        return urllib3.proxy_from_url(proxy, proxy_headers=headers, **kwargs)

    def pool(self, url: str = ARM):
        """The connection pool `url`'s requests take their connections from."""
        return self.manager(url).connection_from_url(url)

    def __enter__(self) -> ArmTransport:
        return self

    def __exit__(self, *args) -> None:
        pass  # shared by the session's clients: closed with the process

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def sleep(self, duration: float) -> None:
        time.sleep(duration)

    def send(self, request, **kwargs):
        """One request, its answer read in full (an azure-core `rest` response)."""
        import urllib3
        from azure.core.exceptions import (
            HttpResponseError,
            IncompleteReadError,
            ServiceRequestError,
            ServiceRequestTimeoutError,
            ServiceResponseError,
            ServiceResponseTimeoutError,
        )
        from urllib3 import exceptions as u3

        if self._context_error is not None:
            raise self._context_error
        config = self.connection_config
        connect = kwargs.get("connection_timeout", config.timeout)
        read = kwargs.get("read_timeout", config.read_timeout)
        # As requests merges them: the request's over the defaults whatever their case, a
        # header set to None not sent.
        headers = urllib3.HTTPHeaderDict(self._headers)
        for name, value in request.headers.items():
            if value is None:
                headers.pop(name, None)
            else:
                headers[name] = value
        body = request.content if hasattr(request, "content") else request.data
        if isinstance(body, str):
            body = body.encode("utf-8")
        options = {"body": body, "headers": headers, "redirect": False,
                   "assert_same_host": False, "preload_content": False,
                   "decode_content": False, "retries": self._retries,
                   "timeout": urllib3.Timeout(connect=connect, read=read)}
        url = request.url
        try:
            manager = self.manager(url)
            if url[:6].lower() == "https:":
                # What the manager's urlopen does for an https URL (through a proxy's tunnel
                # or directly), with the URL parsed once, not twice.
                parts = urllib3.util.parse_url(url)
                pool = manager.connection_from_host(parts.host, port=parts.port,
                                                    scheme=parts.scheme)
                raw = pool.urlopen(request.method, parts.request_uri, **options)
            else:
                raw = manager.urlopen(request.method, url, **options)
        except u3.LocationValueError as err:  # as requests' InvalidURL
            raise ServiceResponseError(err, error=err) from err
        except u3.NewConnectionError as err:
            raise ServiceRequestError(err, error=err) from err
        except u3.ConnectTimeoutError as err:
            raise ServiceRequestTimeoutError(err, error=err) from err
        except u3.ReadTimeoutError as err:
            raise ServiceResponseTimeoutError(err, error=err) from err
        except u3.ProtocolError as err:  # reset, closed before the answer
            raise ServiceResponseError(err, error=err) from err
        except (OSError, u3.ClosedPoolError, u3.ProxyError, u3.SSLError) as err:
            raise ServiceRequestError(err, error=err) from err
        except u3.InvalidHeader as err:
            raise ServiceResponseError(err, error=err) from err
        try:
            content = raw.read(decode_content=True)
        except u3.ProtocolError as err:
            if "IncompleteRead" in str(err):
                raise IncompleteReadError(err, error=err) from err
            raise HttpResponseError(err, error=err) from err
        except u3.DecodeError as err:
            raise ServiceResponseError(err, error=err) from err
        except (u3.ReadTimeoutError, u3.SSLError) as err:
            raise ServiceRequestError(err, error=err) from err
        finally:
            raw.release_conn()
        return _response_class()(request, raw, content)


_ARM_JSON = "application/json; charset=utf-8"  # ARM's content type


@functools.cache
def _response_class():
    """azure-core's `rest` response for an answer read in full (made on first use: azure-core
    is imported when the first read goes out, not with this module)."""
    from azure.core.rest._http_response_impl import HttpResponseImpl

    class ArmResponse(HttpResponseImpl):
        def __init__(self, request, raw, content: bytes) -> None:
            # urllib3's headers: case-insensitive, a repeated header's values joined by
            # ", " (as requests' copy of them had them).
            headers = raw.headers
            content_type = headers.get("content-type")
            super().__init__(request=request, internal_response=raw,
                             status_code=raw.status, reason=raw.reason, headers=headers,
                             content_type=content_type, stream_download_generator=None)
            self._content = content
            self._is_stream_consumed = True
            self._is_closed = True
            if content_type is not None and content_type.lower() == _ARM_JSON:
                self._encoding = "utf-8"  # what azure-core makes of it, found faster

    return ArmResponse


def preconnect(transport, count: int, timeout: float = 10.0) -> int:
    """Open up to `count` HTTPS connections to ARM in the transport's pool (through the proxy,
    TLS verified as every read's), sending nothing: done while the grader still signs in, the
    first reads then go out at once instead of each opening its connection first. Best effort
    (a urllib3 without these calls, ARM not reachable: the reads connect as before); returns
    how many were opened."""
    opened = 0
    try:
        if transport._context_error is not None:
            return 0
        pool = transport.pool(ARM)
        conns = []  # (connection, seconds its handshake took, when it ended)
        try:
            for _ in range(count):
                conn = pool._get_conn()
                began = time.monotonic()
                conns.append((conn, 0.0, began))
                conn.timeout = timeout
                try:
                    if pool.proxy is not None:
                        pool._prepare_proxy(conn)  # the proxy's CONNECT, then TLS, as urllib3
                    else:
                        conn.connect()
                except Exception:
                    conn.close()  # half open (TLS refused, ...): to the pool closed
                    raise
                done = time.monotonic()
                conns[-1] = (conn, done - began, done)
                opened += 1
        except Exception:  # noqa: BLE001 - see above
            pass
        _settle(pool, conns)
    except Exception:  # noqa: BLE001 - see above
        pass
    return opened


def _settle(pool, conns: list, wait: float = 0.25) -> None:
    """Hand the connections to the pool once a TLS 1.3 server's session tickets are processed:
    unread, they make an idle connection look dropped to urllib3 (readable before any
    request), which would open it again. A server sends them as soon as it has the client's
    last handshake message, so they arrive about a round trip after the handshake ended: each
    connection waits twice as long as its own handshake took (at least 20 ms, at most
    `wait`), then goes to the pool as it is (a server that issues no tickets holds nothing
    back). A connection with anything else to read (there is nothing before a request) is
    closed, and opened again when needed. `conns`: (connection, seconds its handshake took,
    monotonic time it ended)."""
    import selectors

    waiting = {}  # socket -> (connection, its deadline)
    for conn, took, done in conns:
        sock = conn.sock
        if sock is not None and getattr(sock, "version", lambda: None)() == "TLSv1.3":
            waiting[sock] = (conn, done + min(wait, max(0.02, 2 * took)))
        else:
            pool._put_conn(conn)
    try:
        with selectors.DefaultSelector() as selector:
            for sock in waiting:
                selector.register(sock, selectors.EVENT_READ)
            while waiting:
                now = time.monotonic()
                for sock, (conn, deadline) in list(waiting.items()):
                    if deadline <= now:  # nothing came: to the pool as it is
                        selector.unregister(sock)
                        del waiting[sock]
                        pool._put_conn(conn)
                if not waiting:
                    break
                left = min(deadline for _, deadline in waiting.values()) - now
                for key, _ in selector.select(max(0.0, left)):
                    selector.unregister(key.fileobj)
                    conn, _ = waiting.pop(key.fileobj)
                    _drain(conn)
                    pool._put_conn(conn)
    finally:
        for conn, _ in waiting.values():
            pool._put_conn(conn)


def _drain(conn) -> None:
    """Process what a TLS 1.3 server sends after the handshake (its session tickets), so the
    idle connection does not look dropped to urllib3 (readable before any request) and is
    used, not opened again. Anything else on it (there is nothing to read before a request):
    the connection is closed, and opened again when needed."""
    import ssl

    sock = conn.sock
    if sock is None:
        return
    timeout = sock.gettimeout()
    try:
        sock.settimeout(0.0)
        data = sock.recv(1)
    except (ssl.SSLWantReadError, BlockingIOError):
        data = None  # nothing but the tickets, if anything
    except OSError:
        data = b"!"
    finally:
        if conn.sock is not None:
            sock.settimeout(timeout)
    if data is not None:
        conn.close()


class ArmPacer:
    """Keeps a grader's ARM reads under the subscription's throttling bucket, so a class does
    not stampede into 429s (each of which costs a round trip, a Retry-After sleep and one of
    its few retries).

    ARM refills a caller's read bucket per subscription at `rate` tokens a second and reports
    what is left in `x-ms-ratelimit-remaining-subscription-reads`. The pacer keeps an estimate:
    the least ARM told it, minus the reads sent since, plus the refill. Once ARM has throttled
    the subscription (a 429), a read that would overdraw the estimate waits its turn, so reads
    go out at the refill rate instead of in bursts of refusals. Until then nothing waits: a
    low count alone (an hourly counter ARM does not enforce) does not slow a class down.
    """

    def __init__(self, rate: float = 25.0) -> None:
        self.rate = rate
        self._lock = threading.Lock()
        self._tokens: dict[str, float] = {}  # subscription -> estimated tokens (may be < 0)
        self._at: dict[str, float] = {}
        self._in_flight: dict[str, int] = {}
        self._throttled: set[str] = set()  # subscriptions ARM has answered 429 for

    def before(self, subscription: str) -> None:
        """Take a token for one read, waiting for it if the bucket is spent."""
        wait = 0.0
        with self._lock:
            self._in_flight[subscription] = self._in_flight.get(subscription, 0) + 1
            if subscription in self._throttled:
                now = time.monotonic()
                tokens = self._tokens[subscription] + (now - self._at[subscription]) * self.rate
                self._tokens[subscription], self._at[subscription] = tokens - 1, now
                if tokens < 1:
                    wait = (1 - tokens) / self.rate
        if wait:
            time.sleep(wait)

    def after(self, subscription: str, status: int | None, headers) -> None:
        """Learn from ARM's answer: the tokens it says remain, or none on a 429."""
        remaining = None
        for name in ("x-ms-ratelimit-remaining-subscription-reads",
                     "x-ms-ratelimit-remaining-subscription-global-reads"):
            text = headers.get(name) if headers is not None else None
            try:
                told = float(text) if text is not None else None
            except ValueError:
                told = None
            if told is not None:
                remaining = told if remaining is None else min(remaining, told)
        with self._lock:
            in_flight = self._in_flight.get(subscription, 1) - 1
            self._in_flight[subscription] = max(0, in_flight)
            if status == 429:
                remaining = 0.0
                self._throttled.add(subscription)
            if remaining is None:
                return
            now = time.monotonic()
            known = self._tokens.get(subscription)
            if known is not None:
                known += (now - self._at[subscription]) * self.rate
            # Reads still in flight will take tokens ARM has not counted yet.
            told = remaining - in_flight
            self._tokens[subscription] = told if known is None else min(known, told)
            self._at[subscription] = now


def _pacing_policy(pacer: ArmPacer):
    from azure.core.pipeline.policies import HTTPPolicy

    class PacingPolicy(HTTPPolicy):
        def send(self, request):
            path = request.http_request.url.split("://", 1)[-1].split("?", 1)[0]
            parts = path.split("/")
            sub = parts[2].lower() if len(parts) > 2 and parts[1].lower() == "subscriptions" \
                else ""
            if request.http_request.method not in ("GET", "HEAD") or not sub:
                return self.next.send(request)
            pacer.before(sub)
            response = None
            try:
                response = self.next.send(request)
                return response
            finally:
                http = response.http_response if response is not None else None
                pacer.after(sub, http.status_code if http is not None else None,
                            http.headers if http is not None else None)

    return PacingPolicy()


class ArmReader:
    """ARM GETs as JSON, as ARM returned them: one azure-core pipeline (token cached once,
    retries honouring Retry-After within `timeout`, pacing under the read bucket) on a shared
    connection pool. No SDK models: nothing to import per resource type, nothing dropped or
    re-serialised."""

    def __init__(self, credential, timeout: float = 60.0, transport=None,
                 pacer: ArmPacer | None = None) -> None:
        from azure.core import PipelineClient
        from azure.core.pipeline import policies

        self.timeout = timeout
        self.pacer = pacer or ArmPacer()
        self._client = PipelineClient(ARM, transport=transport or shared_transport(10), policies=[
            policies.HeadersPolicy({"Accept": "application/json"}),
            policies.UserAgentPolicy(base_user_agent="pytest-milab"),
            # Up to 5 retries on 429/5xx (azure-core's default is 3): a burst of throttling or
            # server errors is ridden out; a longer one ends the read "could not decide".
            policies.RetryPolicy(retry_total=6, retry_status=5, retry_backoff_factor=0.5,
                                 retry_backoff_max=20, timeout=timeout),
            policies.BearerTokenCredentialPolicy(credential, ARM_SCOPE),
            # Each attempt, retries too, waits its turn: refused reads retried all at once
            # after their Retry-After would only be refused again.
            _pacing_policy(self.pacer),
        ])

    def get(self, url: str, api_version: str | None = None):
        """(status, JSON body or None) of one GET; `url` is a path or ARM's own nextLink.
        Raises azure-core's errors when ARM cannot be reached."""
        from azure.core.rest import HttpRequest

        if api_version is not None:
            url = f"{url}{'&' if '?' in url else '?'}api-version={api_version}"
        if url.startswith("/"):
            url = ARM + quote(url, safe="/:@!$&'()*+,;=-._~?")
        response = self._client.send_request(
            HttpRequest("GET", url), connection_timeout=min(self.timeout, 20),
            read_timeout=self.timeout)
        try:
            body = response.json() if response.content else None
        except ValueError:
            body = None
        return response.status_code, body


def default_subscription(credential, timeout: float = 60.0) -> str:
    """The credential's only subscription, or a one-line error naming what to pass."""
    from azure.core.exceptions import AzureError as Unreachable

    reader = ArmReader(credential, timeout)
    subs: list[str] = []
    url: str | None = f"/subscriptions?api-version={API['subscriptions']}"
    while url:
        try:
            status, body = reader.get(url)
        except Unreachable as exc:
            raise AzureError(f"could not list subscriptions: ARM could not be reached "
                             f"({type(exc).__name__})") from None
        if status != 200 or not isinstance(body, dict):
            error = body.get("error") if isinstance(body, dict) else None
            detail = (f"({error.get('code')}) {error.get('message')}"
                      if isinstance(error, dict) else f"ARM answered {status}")
            raise AzureError(f"could not list subscriptions: {detail}")
        subs += [s["subscriptionId"] for s in body.get("value") or []]
        url = body.get("nextLink")
    if len(subs) == 1:
        return subs[0]
    if not subs:
        raise CredentialError("the Azure credential sees no subscription: give it Reader on the "
                              "labs' subscriptions, or pass --milab-subscription")
    raise CredentialError(f"the Azure credential sees {len(subs)} subscriptions: pass "
                          "--milab-subscription or a roster `subscription` column")


class SubscriptionClients:
    """Lazily built azure-mgmt-* clients for one subscription, shared by threads. `transport`
    is theirs (`sdk_transport`'s, or a function giving it when first needed; azure-core's
    default when None); `arm` the ARM reader of the session, else one of their own."""

    def __init__(self, credential, subscription_id: str, timeout: float = 60.0,
                 transport=None, arm: ArmReader | None = None) -> None:
        self.credential = credential
        self.subscription_id = subscription_id
        self.timeout = timeout
        self._transport = transport
        self._arm = arm

    @cached_property
    def _kwargs(self) -> dict:
        transport = self._transport() if callable(self._transport) else self._transport
        return _client_kwargs(self.timeout, transport)

    @cached_property
    def arm(self) -> ArmReader:
        """Plain ARM GETs (discovery's), shared by all subscriptions of a `ClientPool`."""
        return self._arm or ArmReader(self.credential, self.timeout)

    @cached_property
    def resource(self):
        try:  # azure-mgmt-resource 24+ moved it into a subpackage
            from azure.mgmt.resource.resources import ResourceManagementClient
        except ImportError:
            from azure.mgmt.resource import ResourceManagementClient

        return ResourceManagementClient(self.credential, self.subscription_id, **self._kwargs)

    @cached_property
    def keyvault(self):
        from azure.mgmt.keyvault import KeyVaultManagementClient

        return KeyVaultManagementClient(self.credential, self.subscription_id, **self._kwargs)

    @cached_property
    def compute(self):
        from azure.mgmt.compute import ComputeManagementClient

        return ComputeManagementClient(self.credential, self.subscription_id, **self._kwargs)

    @cached_property
    def network(self):
        from azure.mgmt.network import NetworkManagementClient

        return NetworkManagementClient(self.credential, self.subscription_id, **self._kwargs)

    @cached_property
    def authorization(self):
        from azure.mgmt.authorization import AuthorizationManagementClient

        return AuthorizationManagementClient(self.credential, self.subscription_id,
                                             **self._kwargs)


class ClientPool:
    """One `SubscriptionClients` per subscription for the whole session.

    `credential` may be a `concurrent.futures.Future` of one (a sign-in still under way,
    see `run.SignIn`): it is waited for when a client first needs it."""

    def __init__(self, credential, timeout: float = 60.0, pool_size: int = 16) -> None:
        self._credential = credential
        self.timeout = timeout
        self.pool_size = max(10, pool_size)  # HTTP connections kept, and so reads at once
        self._transport: ArmTransport | None = None
        self._sdk_transport = None
        self._arm: ArmReader | None = None
        self._clients: dict[str, SubscriptionClients] = {}
        self._lock = threading.Lock()

    @property
    def credential(self):
        if isinstance(self._credential, Future):
            self._credential = self._credential.result()
        return self._credential

    @property
    def transport(self) -> ArmTransport:
        """The session's HTTP connection pool for ARM reads, made on first use."""
        with self._lock:
            if self._transport is None:
                self._transport = shared_transport(self.pool_size)
            return self._transport

    @property
    def sdk_transport(self):
        """The azure-mgmt-* clients' connection pool (provision mode), made on first use."""
        with self._lock:
            if self._sdk_transport is None:
                self._sdk_transport = sdk_transport(self.pool_size)
            return self._sdk_transport

    @property
    def arm(self) -> ArmReader:
        """The session's ARM reader, made on first use (an xdist worker that reads another's
        evidence never needs one)."""
        transport = self.transport
        credential = self.credential  # (waits for a sign-in still under way)
        with self._lock:
            if self._arm is None:
                self._arm = ArmReader(credential, self.timeout, transport)
            return self._arm

    def warm(self) -> None:
        """Get the ARM token once, before many threads all find the cache empty."""
        from azure.core.exceptions import AzureError

        try:
            self.credential.get_token(ARM_SCOPE)
        except AzureError:  # each read will say why
            pass

    def for_subscription(self, subscription_id: str) -> SubscriptionClients:
        arm = self.arm
        with self._lock:
            key = subscription_id.lower()
            if key not in self._clients:
                self._clients[key] = SubscriptionClients(
                    self.credential, subscription_id, self.timeout,
                    lambda: self.sdk_transport, arm)
            return self._clients[key]


def graph_call(credential, method: str, path: str, body: dict | None = None, *,
               timeout: float = 60.0) -> dict:
    """One Microsoft Graph v1.0 call as the credential: its JSON answer ({} when empty); an
    error answer as a RuntimeError naming Graph's code and message."""
    import requests

    token = credential.get_token("https://graph.microsoft.com/.default").token
    r = requests.request(method, f"https://graph.microsoft.com/v1.0{path}", json=body,
                         headers={"Authorization": f"Bearer {token}"}, timeout=timeout)
    if r.status_code >= 400:
        try:
            err = r.json()["error"]
            detail = f"{err.get('code')}: {err.get('message')}"
        except (ValueError, KeyError, TypeError):
            detail = r.text[:200]
        raise RuntimeError(f"Graph {method} {path} answered {r.status_code} {detail}")
    return r.json() if r.content else {}
