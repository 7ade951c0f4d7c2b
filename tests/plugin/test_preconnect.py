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
