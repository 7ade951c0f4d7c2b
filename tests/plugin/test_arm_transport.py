"""The ARM reads' transport (urllib3 directly) behaves as azure-core's requests transport did:
the same request on the wire, the same answer, and for each way a server can fail the same
azure-core error (which the retry policy and the reads' messages go by). Each case is sent
through both transports to a small local server misbehaving on purpose."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time

import pytest
from azure.core.exceptions import (
    IncompleteReadError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.core.rest import HttpRequest

from pytest_milab.azure.clients import ArmTransport, sdk_transport, shared_transport

BODY = json.dumps({"id": "/subscriptions/x", "tags": {"k": "é"}}).encode()


class Server:
    """Accepts connections on 127.0.0.1 and answers each request as `behave` says; keeps
    every request's head as received."""

    def __init__(self, behave, at_once: bool = False) -> None:
        self.behave = behave
        self.at_once = at_once  # behave as soon as connected, not after a request
        self.heads: list[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/subscriptions/x?api-version=1"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            if self.at_once:
                self.behave(conn)
                time.sleep(0.5)
                return
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            self.heads.append(data.split(b"\r\n\r\n", 1)[0])
            self.behave(conn)

    def close(self) -> None:
        self.sock.close()


def answer(status: int = 200, body: bytes = BODY, headers: str = "", length: int | None = None):
    def behave(conn: socket.socket) -> None:
        conn.sendall(f"HTTP/1.1 {status} X\r\nContent-Type: application/json; charset=utf-8\r\n"
                     f"Content-Length: {len(body) if length is None else length}\r\n{headers}"
                     f"\r\n".encode() + body)
    return behave


def close_at_once(conn: socket.socket) -> None:
    conn.close()


def hang(conn: socket.socket) -> None:
    time.sleep(2)


def not_http(conn: socket.socket) -> None:
    conn.sendall(b"SSH-2.0-OpenSSH_9\r\n")


@pytest.fixture
def no_proxy_env(monkeypatch):
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                 "all_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


def send(transport, url: str):
    return transport.send(HttpRequest("GET", url, headers={"Accept": "application/json"}),
                          connection_timeout=1, read_timeout=0.5)


def raised_by_both(url: str, error: type[BaseException] = Exception) -> list[BaseException]:
    """The error each transport (requests', then ours) raises for the same request, each
    asserted to be an `error`."""
    raised = []
    for transport in (sdk_transport(10), shared_transport(10)):
        with pytest.raises(error) as info:
            send(transport, url)
        raised.append(info.value)
    return raised


def both(behave, url: str | None = None):
    """(error type or answer) of each transport for the same request to the same server."""
    server = Server(behave)
    try:
        results, heads = [], []
        for transport in (sdk_transport(10), shared_transport(10)):
            before = len(server.heads)
            try:
                response = send(transport, url or server.url)
                results.append((response.status_code, dict(response.headers), response.content,
                                response.json() if response.content else None))
            except Exception as exc:  # noqa: BLE001 - compared below
                results.append(type(exc))
            heads.append(server.heads[before:])
        return results, heads
    finally:
        server.close()


def test_an_answer_and_the_request_on_the_wire_are_the_same(no_proxy_env):
    (old, new), (old_heads, new_heads) = both(answer(headers="Retry-After: 3\r\n"))
    assert isinstance(new, tuple) and new == old
    assert new[0] == 200 and new[1]["Retry-After"] == "3" and new[3]["tags"]["k"] == "é"
    # Same request line and headers (their order aside).
    assert sorted(new_heads[0].split(b"\r\n")) == sorted(old_heads[0].split(b"\r\n"))
    assert b"accept: application/json" in new_heads[0].lower()


def test_a_compressed_answer_is_decompressed_as_before(no_proxy_env):
    packed = gzip.compress(BODY)
    (old, new), _ = both(answer(body=packed, headers="Content-Encoding: gzip\r\n"))
    assert isinstance(new, tuple) and new == old and new[2] == BODY


def test_an_error_answer_is_an_answer(no_proxy_env):
    body = json.dumps({"error": {"code": "ResourceGroupNotFound"}}).encode()
    (old, new), _ = both(answer(status=404, body=body))
    assert isinstance(new, tuple) and new == old and new[0] == 404


@pytest.mark.parametrize("behave,error", [
    (close_at_once, ServiceResponseError),  # reset / closed before the answer
    (hang, ServiceResponseTimeoutError),  # no answer in time
    (answer(length=len(BODY) + 50), IncompleteReadError),  # cut short
    (not_http, ServiceResponseError),  # not HTTP at all
])
def test_each_failure_is_the_same_azure_error(no_proxy_env, behave, error):
    (old, new), _ = both(behave)
    assert old is new, (old, new)
    assert issubclass(new, error), new


def test_nothing_listening_is_a_request_error(no_proxy_env):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    results = [type(e) for e in raised_by_both(f"http://127.0.0.1:{port}/", ServiceRequestError)]
    assert results[0] is results[1]
    assert not issubclass(results[1], ServiceRequestTimeoutError)


def test_tls_to_a_server_that_does_not_speak_it_is_a_request_error(no_proxy_env):
    server = Server(not_http, at_once=True)
    try:
        url = server.url.replace("http://", "https://")
        results = [type(e) for e in raised_by_both(url, ServiceRequestError)]
        assert results[0] is results[1]
    finally:
        server.close()


def test_the_environment_is_read_once(monkeypatch, tmp_path):
    bundle = tmp_path / "ca.pem"
    import certifi

    bundle.write_bytes(open(certifi.where(), "rb").read())
    monkeypatch.setenv("HTTPS_PROXY", "http://user:p%40ss@proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "localhost")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    transport = ArmTransport(16)
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    assert transport.verify == str(bundle)
    pool = transport.pool()
    assert pool.proxy is not None and pool.proxy.host == "proxy.example"
    assert pool.proxy_headers["Proxy-Authorization"].startswith("Basic ")
    assert pool.pool.maxsize == 16


def test_no_proxy_for_arm_goes_directly(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "management.azure.com")
    assert ArmTransport(4).pool().proxy is None


def test_a_missing_ca_bundle_fails_each_request_as_before(monkeypatch, no_proxy_env, tmp_path):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "missing.pem"))
    server = Server(answer())
    try:
        url = server.url.replace("http://", "https://")
        errors = [str(e) for e in raised_by_both(url, OSError)]
        assert errors[0] == errors[1] and "invalid path" in errors[1]
    finally:
        server.close()


def test_the_request_headers_replace_the_defaults_whatever_their_case(no_proxy_env):
    server = Server(answer())
    try:
        for transport in (sdk_transport(10), shared_transport(10)):
            transport.send(HttpRequest("GET", server.url, headers={
                "accept": "application/json", "user-agent": "pytest-milab", "Connection": None}),
                connection_timeout=1, read_timeout=1)
        old, new = ([line.lower() for line in head.split(b"\r\n")[1:]] for head in server.heads)
        assert sorted(new) == sorted(old)
        assert new.count(b"accept: application/json") == 1
        assert not any(line.startswith(b"accept: */*") for line in new)
        assert not any(line.startswith(b"connection:") for line in new)
    finally:
        server.close()


@pytest.mark.parametrize("url", ["https://management.azure.com:port/x", "https:///x"])
def test_a_malformed_url_is_the_same_error(no_proxy_env, url):
    results = [type(e) for e in raised_by_both(url)]
    assert results[0] is results[1], results
