"""The forward proxy's CONNECT tunnels (wire/network.py): a client's tunnel is served by the TLS
listener in the same process, its socket handed over once the proxy has answered; a client
that sent bytes before that answer still gets through, by the copying tunnel."""

from __future__ import annotations

import socket
import ssl

import pytest
import requests


def test_a_tunnel_is_served_in_process_with_the_run_s_certificate(azure_env):
    before = azure_env.tls.adopted
    r = requests.get(f"https://login.microsoftonline.com/{azure_env.tenant_id}"
                     "/v2.0/.well-known/openid-configuration", timeout=10)
    assert r.status_code == 200 and "token_endpoint" in r.json()
    assert azure_env.tls.adopted == before + 1
    # The same connection carries the next request (keep-alive through the handed-over socket).
    session = requests.Session()
    for _ in range(3):
        assert session.get(f"https://login.microsoftonline.com/{azure_env.tenant_id}"
                           "/discovery/v2.0/keys", timeout=10).status_code == 200
    assert azure_env.tls.adopted == before + 2


def _until(sock, incoming, outgoing, step):
    """Run a TLS step of a memory-BIO client over the socket until it completes."""
    while True:
        try:
            return step()
        except ssl.SSLWantReadError:
            if outgoing.pending:
                sock.sendall(outgoing.read())
            data = sock.recv(65536)
            if not data:
                raise
            incoming.write(data)


def test_a_client_hello_sent_with_the_connect_still_reaches_the_service(local_azure):
    context = ssl.create_default_context(cafile=str(local_azure.ca_path))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="management.azure.com")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    before = local_azure.tls.adopted
    with socket.create_connection(("127.0.0.1", local_azure.proxy.port), timeout=10) as sock:
        sock.sendall(b"CONNECT management.azure.com:443 HTTP/1.1\r\n"
                     b"Host: management.azure.com:443\r\n\r\n" + hello)
        answer = b""
        while not answer.endswith(b"\r\n\r\n"):
            answer += sock.recv(1)  # one byte at a time: the server's TLS bytes stay unread
        assert answer.startswith(b"HTTP/1.1 200 ")
        _until(sock, incoming, outgoing, tls.do_handshake)  # the run's CA verifies it
        tls.write(b"GET /subscriptions?api-version=2022-12-01 HTTP/1.1\r\n"
                  b"Host: management.azure.com\r\nConnection: close\r\n\r\n")
        sock.sendall(outgoing.read())
        response = _until(sock, incoming, outgoing, lambda: tls.read(65536))
    assert response.startswith(b"HTTP/1.1 401 ")  # ARM itself answered: no token
    assert local_azure.tls.adopted == before  # not handed over: the copying tunnel


def test_a_tunnel_s_handshake_ends_with_a_session_ticket(local_azure):
    """The server sends as the handshake ends (a TLS 1.3 session ticket, as Azure's front ends
    do), before any request: that is what acknowledges the client's Finished at once. A client
    with Nagle's algorithm on (urllib3 through a proxy, http.client) would otherwise hold its
    first request back until the server's delayed acknowledgement, 40 ms a connection."""
    import select

    context = ssl.create_default_context(cafile=str(local_azure.ca_path))
    with socket.create_connection(("127.0.0.1", local_azure.proxy.port), timeout=10) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
        raw.sendall(b"CONNECT management.azure.com:443 HTTP/1.1\r\n"
                    b"Host: management.azure.com:443\r\n\r\n")
        answer = b""
        while not answer.endswith(b"\r\n\r\n"):
            answer += raw.recv(1)
        assert answer.startswith(b"HTTP/1.1 200 ")
        with context.wrap_socket(raw, server_hostname="management.azure.com") as tls:
            assert tls.version() == "TLSv1.3"
            readable, _, _ = select.select([tls], [], [], 5)
            assert readable, "the server sent nothing after the handshake"
            tls.sendall(b"GET /subscriptions?api-version=2022-12-01 HTTP/1.1\r\n"
                        b"Host: management.azure.com\r\nConnection: close\r\n\r\n")
            response = b""
            while chunk := tls.recv(65536):
                response += chunk
            assert response.startswith(b"HTTP/1.1 401 ")  # ARM itself answered: no token
            assert tls.session is not None and tls.session.has_ticket


def test_a_vm_s_plain_http_to_imds_is_served_in_process_with_the_vm_s_key(local_azure):
    """A VM's proxy rewrites an IMDS request (its own key stamped, the client's dropped) and
    hands the socket, with the rewritten head and any body already read, to IMDS's server."""
    from vmkit import make_vm

    made = make_vm(local_azure, name="plain")
    try:
        imds = made.imds()
        listener = local_azure.vms._listener
        before = listener.adopted
        r = imds.get("http://169.254.169.254/metadata/instance",
                     params={"api-version": "2021-02-01"},
                     headers={"Metadata": "true", "x-milab-vm-key": "forged"}, timeout=10)
        assert r.status_code == 200 and r.json()["compute"]["name"] == "plain"
        assert r.headers.get("connection") == "close"
        token = imds.post("http://169.254.169.254/metadata/identity/oauth2/token",
                          params={"api-version": "2018-02-01",
                                  "resource": "https://management.azure.com/"},
                          headers={"Metadata": "true"}, data=b"x" * 100_000, timeout=10)
        assert token.status_code == 405  # IMDS's own answer to a POST with a body
        assert token.json()["error"] == "method_not_allowed"
        assert listener.adopted == before + 2
    finally:
        made.delete()


def test_an_answer_is_in_the_audit_log_by_the_time_the_client_has_it(azure_env):
    url = (f"https://login.microsoftonline.com/{azure_env.tenant_id}"
           "/v2.0/.well-known/openid-configuration")
    session = requests.Session()
    for _ in range(30):
        before = len(azure_env.audit.find(host="login.microsoftonline.com"))
        assert session.get(url, timeout=10).status_code == 200
        assert len(azure_env.audit.find(host="login.microsoftonline.com")) == before + 1
