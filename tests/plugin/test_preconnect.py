"""While the grader signs in, the HTTPS connections of the first reads are opened (the proxy's
CONNECT and TLS, verified as every read's), so the reads go out at once."""

from __future__ import annotations

import pytest
import urllib3.util.connection

from pytest_milab.azure.clients import ArmReader, preconnect, shared_transport


@pytest.fixture
def connects(monkeypatch):
    made = []
    original = urllib3.util.connection.create_connection

    def counting(*args, **kwargs):
        made.append(args[0] if args else kwargs.get("address"))
        return original(*args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", counting)
    return made


def test_reads_take_the_connections_opened_beforehand(azure_env, grader_credential, connects):
    transport = shared_transport(16)
    assert preconnect(transport, 3) == 3
    assert len(connects) == 3
    arm = ArmReader(grader_credential, 30, transport)
    grader_credential.get_token("https://management.azure.com/.default")  # (Entra's own)
    before = len(connects)
    for _ in range(2):
        status, _ = arm.get(f"/subscriptions/{azure_env.subscription_id}?api-version=2022-12-01")
        assert status == 200
    assert len(connects) == before  # no new connection: the ones opened first


def test_a_server_the_bundle_does_not_trust_opens_nothing(azure_env, monkeypatch, connects):
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    transport = shared_transport(16)
    assert transport.verify is True  # certifi's CAs: not the local Azure's
    assert preconnect(transport, 2) == 0
    assert len(connects) == 1  # tried once, refused by TLS verification, nothing kept
    idle = [conn for conn in list(transport.pool().pool.queue) if conn is not None]
    assert idle and all(conn.sock is None for conn in idle)


@pytest.fixture(params=[2, 0], ids=["tickets", "no-tickets"])
def tls_server(request, tmp_path):
    """A TLS 1.3 server holding each connection open, issuing two session tickets after the
    handshake (as Python's and many servers do) or none."""
    import socket
    import ssl
    import threading

    import trustme

    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(context)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.num_tickets = request.param
    listener = socket.create_server(("127.0.0.1", 0))
    held, stop = [], threading.Event()

    def serve():
        while not stop.is_set():
            try:
                sock, _ = listener.accept()
                held.append(context.wrap_socket(sock, server_side=True))
            except OSError:
                return

    threading.Thread(target=serve, daemon=True).start()
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    yield listener.getsockname()[1], str(bundle)
    stop.set()
    listener.close()
    for sock in held:
        sock.close()


def test_each_connection_reaches_the_pool_usable_without_waiting_out_the_limit(tls_server):
    """Tickets or none, a connection is handed over about a round trip after its handshake
    (not after `wait`, here far longer than any handshake), and urllib3 sees it alive."""
    import time

    import urllib3

    from pytest_milab.azure.clients import _settle

    port, bundle = tls_server
    pool = urllib3.HTTPSConnectionPool("localhost", port, maxsize=2, ca_certs=bundle)
    conns = []
    for _ in range(2):
        conn = pool._get_conn()
        began = time.monotonic()
        conn.connect()
        done = time.monotonic()
        conns.append((conn, done - began, done))
    began = time.monotonic()
    _settle(pool, conns, wait=60.0)
    assert time.monotonic() - began < 30.0  # bounded by the handshakes, not by `wait`
    idle = [conn for conn in list(pool.pool.queue) if conn is not None]
    assert len(idle) == 2
    assert all(conn.is_connected for conn in idle)  # not taken for dropped: used, not reopened
