"""The wire: a CA made per run, the TLS listener that serves every emulated host, and forward
proxies that tunnel to it only for those hosts.

Clients reach the local Azure with Azure's real hostnames: `HTTPS_PROXY` points at a
`ForwardProxy`, which answers `CONNECT management.azure.com:443` (and the other emulated names) by
tunnelling to one TLS listener whose certificate names them all, and refuses every other host
with 403. No byte leaves the machine. A VM's egress proxy also carries plain-HTTP requests for
169.254.169.254 to IMDS, stamped with that VM's key so IMDS knows who is asking. Both kinds of
tunnel are handed, socket and all, to the listener's server in this process
(`HttpListener.adopt`) rather than copied over a second loopback connection.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hmac
import socket
import ssl
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path

import trustme
import uvicorn

from ..faults import Faults, reset_tunnel
from ..hosts import CONTROL_HOSTS, EMULATED_HOSTS, VM_EXTRA_HOSTS

VM_KEY_HEADER = "x-milab-vm-key"
# A `plain_http` route for a host nothing answers on (169.254.169.254 outside Azure, a stopped
# agent's port): the proxy closes the client's connection without a response.
UNREACHABLE: tuple[int, dict[str, str]] = (0, {})


def host_matches(host: str, patterns: tuple[str, ...]) -> bool:
    host = host.lower().rstrip(".")
    for pattern in patterns:
        if pattern.startswith("*."):
            suffix = pattern[1:]
            if host.endswith(suffix) and host.count(".") == pattern.count("."):
                return True
        elif host == pattern:
            return True
    return False


class CertificateAuthority:
    """A CA made for this run, and one server certificate naming every emulated host."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._ca = trustme.CA(organization_name="pytest-milab local Azure")
        self.ca_path = directory / "ca.pem"
        self._ca.cert_pem.write_to_path(str(self.ca_path))
        cert = self._ca.issue_cert(*EMULATED_HOSTS, *VM_EXTRA_HOSTS, *CONTROL_HOSTS, "localhost",
                                   "127.0.0.1")
        self.cert_path = directory / "server.pem"
        self.key_path = directory / "server.key"
        cert.cert_chain_pems[0].write_to_path(str(self.cert_path))
        for extra in cert.cert_chain_pems[1:]:
            extra.write_to_path(str(self.cert_path), append=True)
        cert.private_key_pem.write_to_path(str(self.key_path))

    def issue(self, *names: str) -> tuple[bytes, bytes]:
        """A certificate for `names` issued by this run's CA, and its private key (PEM both):
        what IMDS signs attested documents with, as `metadata.azure.com`. Made as a public CA
        makes one (subject and a non-critical subjectAltName, serverAuth, key identifiers), so
        a strict web-PKI verifier accepts it."""
        import datetime as dt

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        ca_cert = x509.load_pem_x509_certificate(self._ca.cert_pem.bytes())
        ca_key = serialization.load_pem_private_key(self._ca.private_key_pem.bytes(), None)
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False,
                                         False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return (cert.public_bytes(serialization.Encoding.PEM),
                key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    # IPPROTO_TCP, so asyncio turns on TCP_NODELAY for accepted connections (no 40 ms stalls).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class HttpListener:
    """An ASGI app served by uvicorn on a loopback socket, with TLS when given a certificate."""

    _serving: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # port -> listener

    @classmethod
    def serving(cls, port: int) -> HttpListener | None:
        """The listener of this process on that loopback port, if one is serving there."""
        return cls._serving.get(port)

    def __init__(self, app, *, cert: CertificateAuthority | None = None,
                 host: str = "127.0.0.1") -> None:
        self.sock = bind_socket(host)
        self.port = self.sock.getsockname()[1]
        kwargs = {}
        if cert is not None:
            kwargs = {"ssl_certfile": str(cert.cert_path), "ssl_keyfile": str(cert.key_path)}
        # Every client is on loopback, behind the forward proxy: no X-Forwarded-* is trusted
        # (uvicorn's proxy headers middleware off). HTTP is parsed by httptools where it is
        # installed (the emulator extra), h11 otherwise.
        config = uvicorn.Config(app, log_level="error", access_log=False, lifespan="off",
                                timeout_keep_alive=75, proxy_headers=False, **kwargs)
        self.server = uvicorn.Server(config)
        self._task: asyncio.Task | None = None
        self._factory = None  # uvicorn's protocol for this server (adopt)
        self.adopted = 0  # connections served through adopt (counted for tests)

    async def adopt(self, sock: socket.socket, first: bytes = b"") -> None:
        """Serve a connection accepted elsewhere as if it had been accepted here: a forward
        proxy's tunnel once its CONNECT is answered goes straight to this server's TLS and HTTP
        in this process, with no second loopback connection and no bytes copied between two.
        `first`: what the connection said before (a plain-HTTP request the proxy read and
        rewrote), taken before anything more from the socket (no TLS then).
        Returns once the TLS handshake is done (the connection then lives on in the server);
        raises if it fails (the socket is closed)."""
        loop = asyncio.get_running_loop()
        try:
            if self._factory is None:
                config = self.server.config  # loaded by serve(): its protocol and SSL context
                self._factory = functools.partial(
                    config.http_protocol_class, config=config,
                    server_state=self.server.server_state, app_state=self.server.lifespan.state)
            if first and self.server.config.ssl is not None:
                raise ValueError("bytes before TLS")
            sock.setblocking(False)
            _, protocol = await loop.connect_accepted_socket(self._factory, sock,
                                                             ssl=self.server.config.ssl)
        except BaseException:
            sock.close()
            raise
        if first:
            # The socket's own bytes come from the loop's next poll, after this runs.
            protocol.data_received(first)
        self.adopted += 1

    async def start(self) -> None:
        self._task = asyncio.ensure_future(self.server.serve(sockets=[self.sock]))
        while not self.server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.005)
        if self.server.config.ssl is not None:
            # One TLS 1.3 session ticket per handshake, not Python's two (no client of the
            # local Azure resumes a session; each ticket is a sixth of the server's handshake
            # CPU), and not none: the ticket is what the server sends as the handshake ends, as
            # Azure's front ends do, and it carries the TCP acknowledgement of the client's
            # Finished. With none, a client that leaves Nagle's algorithm on (urllib3 through a
            # proxy, http.client: the grader's sign-in, the Azure SDKs, the probe) held its first
            # request back until the delayed acknowledgement came, 40 ms on every connection.
            self.server.config.ssl.num_tickets = 1
        HttpListener._serving[self.port] = self

    async def stop(self) -> None:
        if HttpListener._serving.get(self.port) is self:
            del HttpListener._serving[self.port]
        self.server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 5)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()
        with contextlib.suppress(Exception):
            writer.close()


def _refusal(status: str, message: str, extra: str = "") -> bytes:
    body = (message + "\n").encode()
    return (f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            f"{extra}Connection: close\r\n\r\n").encode() + body


_PROXY_AUTH_REQUIRED = _refusal(
    "407 Proxy Authentication Required",
    "milab proxy: this machine's egress needs its credentials",
    'Proxy-Authenticate: Basic realm="milab"\r\n')


class ForwardProxy:
    """An HTTP forward proxy on loopback that only knows the local Azure.

    `allowed` names the hosts CONNECT may reach (all tunnel to the TLS listener on port 443).
    `plain_http` maps a host to (port, extra headers) for absolute-form plain-HTTP requests
    (`UNREACHABLE`: drop the connection; None: refuse with 403).
    `faults` (the knobs' Faults) may reset tunnels through it, see Faults.reset_connections.
    `tunnel`, when given, serves a CONNECT tunnel's socket in this process (HttpListener.adopt
    of the TLS listener) instead of a connection to `tls_port` with the bytes copied both ways;
    a client that sent bytes before the proxy's answer still gets the copying tunnel.
    `secret`, when given, is required of every request as Basic proxy credentials (any user
    name, this password: `http://milab:<secret>@127.0.0.1:<port>`); without it the answer is
    407 with `Proxy-Authenticate`, as an authenticating proxy says (RFC 9110, "Proxy-
    Authenticate" and "407 Proxy Authentication Required"). A VM's proxy carries its IMDS, so
    only processes that know the VM's secret, its own, may use it.
    """

    def __init__(self, *, tls_port: int, allowed: tuple[str, ...],
                 plain_http: Callable[[str], tuple[int, dict[str, str]] | None] | None = None,
                 on_refused: Callable[[str], None] | None = None,
                 host: str = "127.0.0.1", faults: Faults | None = None,
                 name: str = "host", secret: str | None = None,
                 tunnel: Callable[[socket.socket], Awaitable[None]] | None = None) -> None:
        self.tls_port = tls_port
        self.tunnel = tunnel
        self.secret = secret
        self.faults = faults  # reset_connections applies to proxies of this `name` (host | vm)
        self.name = name
        self.allowed = allowed
        self.plain_http = plain_http
        self.on_refused = on_refused
        self.host = host
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self, port: int = 0) -> int:
        self._server = await asyncio.start_server(self._handle, self.host, port, limit=1 << 16)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        for task in list(self._tasks):
            task.cancel()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._serve_one(reader, writer)
        except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                asyncio.CancelledError):
            # Cancelled at shutdown: end quietly so asyncio does not report the task.
            pass
        finally:
            if task is not None:
                self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _serve_one(self, reader, writer) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, _, rest = head.partition(b"\r\n")
        try:
            method, target, version = request_line.decode("latin-1").split(" ", 2)
        except ValueError:
            writer.write(_refusal("400 Bad Request", "milab proxy: malformed request line"))
            return
        if self.secret is not None and not self._authorized(rest):
            writer.write(_PROXY_AUTH_REQUIRED)
            return
        if method.upper() == "CONNECT":
            host, _, port = target.rpartition(":")
            host = host.strip("[]")
            if port == "443" and host_matches(host, self.allowed):
                if self.faults is not None and self.faults.take_reset(self.name, host):
                    await reset_tunnel(writer)
                    return
                if self.tunnel is not None and await self._hand_over(reader, writer):
                    return
                upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", self.tls_port)
                writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                await writer.drain()
                await asyncio.gather(_pipe(reader, upstream_w), _pipe(upstream_r, writer))
                return
            self._refuse(writer, host)
            return
        await self._forward_plain(method, target, version, rest, reader, writer)

    async def _hand_over(self, reader, writer, serve=None) -> bool:
        """Give the client's socket to a server of this process: after answering its CONNECT,
        to `tunnel` (False, nothing done: the client already sent more than its CONNECT, which
        only the copying tunnel keeps); or, for a plain-HTTP request, to `serve(socket, what
        the client sent past the request's head)`."""
        transport = writer.transport
        transport.pause_reading()  # from here on the client's bytes stay in the socket
        pending = getattr(reader, "_buffer", None)
        if pending is None or (pending and serve is None):
            transport.resume_reading()
            return False
        rest = bytes(pending)
        if serve is None:
            writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            await writer.drain()
        sock = writer.get_extra_info("socket").dup()
        # Closing this transport closes its descriptor only: the duplicate keeps the
        # connection open (no FIN is sent while one descriptor remains).
        transport.abort()
        with contextlib.suppress(ConnectionError, OSError, ssl.SSLError, asyncio.TimeoutError):
            await (self.tunnel(sock) if serve is None else serve(sock, rest))
        return True

    def _authorized(self, head: bytes) -> bool:
        for raw in head.decode("latin-1").split("\r\n"):
            name, _, value = raw.partition(":")
            if name.strip().lower() != "proxy-authorization":
                continue
            scheme, _, encoded = value.strip().partition(" ")
            if scheme.lower() != "basic":
                return False
            try:
                _user, _, password = base64.b64decode(encoded.strip(), validate=True) \
                    .decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                return False
            return hmac.compare_digest(password.encode(), self.secret.encode())
        return False

    def _refuse(self, writer, host: str) -> None:
        if self.on_refused:
            self.on_refused(host)
        writer.write(_refusal("403 Forbidden",
                              f"milab proxy: the local Azure does not answer for {host}; "
                              "no other host is reachable"))

    async def _forward_plain(self, method, target, version, rest, reader, writer) -> None:
        if not target.lower().startswith("http://"):
            writer.write(_refusal("400 Bad Request", "milab proxy: expected an absolute URL"))
            return
        hostport, _, path = target[len("http://"):].partition("/")
        host = hostport.rsplit(":", 1)[0] if ":" in hostport else hostport
        route = self.plain_http(host) if self.plain_http else None
        if route is None:
            self._refuse(writer, host)
            return
        port, extra = route
        if port == UNREACHABLE[0]:
            return  # nothing listens there: the connection closes without an answer
        lines = []
        for raw in rest.decode("latin-1").split("\r\n"):
            if not raw:
                continue
            name = raw.split(":", 1)[0].strip().lower()
            if name in ("connection", "proxy-connection", "keep-alive",
                        "proxy-authorization") or name in extra:
                continue
            lines.append(raw)
        lines += [f"{k}: {v}" for k, v in extra.items()]
        lines.append("Connection: close")
        out = f"{method} /{path} {version}\r\n" + "\r\n".join(lines) + "\r\n\r\n"
        listener = HttpListener.serving(port) if self.tunnel is not None else None
        if listener is not None and await self._hand_over(
                reader, writer, lambda sock, rest: listener.adopt(
                    sock, out.encode("latin-1") + rest)):
            return
        upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", port)
        upstream_w.write(out.encode("latin-1"))
        await upstream_w.drain()
        await asyncio.gather(_pipe(reader, upstream_w), _pipe(upstream_r, writer))
