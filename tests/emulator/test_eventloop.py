"""The event loop the local Azure runs on (eventloop.py): uvloop's where it is installed, asyncio's
where it is not or when MILAB_EMULATOR_LOOP=asyncio says so; either one serves a tunneled HTTPS
request (the proxy's socket handed over to the TLS listener)."""

from __future__ import annotations

import asyncio
import sys

import pytest
import requests

from pytest_milab.emulator import eventloop
from pytest_milab.emulator.localazure import LocalAzure


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def _serves_a_tunneled_request(azure: LocalAzure) -> None:
    before = azure.tls.adopted
    with requests.Session() as session:
        session.trust_env = False
        session.proxies = {"https": azure.env["HTTPS_PROXY"]}
        session.verify = azure.env["REQUESTS_CA_BUNDLE"]
        r = session.get(f"https://login.microsoftonline.com/{azure.tenant_id}"
                        "/v2.0/.well-known/openid-configuration", timeout=10)
    assert r.status_code == 200 and "token_endpoint" in r.json()
    assert azure.tls.adopted == before + 1


@pytest.mark.parametrize("switch", ["", "auto", "uvloop"])
def test_the_local_azure_runs_on_uvloop_where_installed(switch, tmp_path, monkeypatch):
    uvloop = pytest.importorskip("uvloop")
    monkeypatch.setenv(eventloop.ENV, switch)
    with LocalAzure(workdir=tmp_path) as azure:
        assert isinstance(azure.run(_running_loop()), uvloop.Loop)
        _serves_a_tunneled_request(azure)


def test_the_switch_forces_asyncio_s_own_loop(tmp_path, monkeypatch):
    monkeypatch.setenv(eventloop.ENV, "asyncio")
    with LocalAzure(workdir=tmp_path) as azure:
        loop = azure.run(_running_loop())
        assert isinstance(loop, asyncio.BaseEventLoop)
        assert type(loop).__module__.startswith("asyncio.")
        _serves_a_tunneled_request(azure)


def test_without_uvloop_asyncio_s_loop_serves_unless_uvloop_is_insisted_on(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as where it cannot be imported (Windows)
    monkeypatch.setenv(eventloop.ENV, "auto")
    loop = eventloop.new_event_loop()
    try:
        assert type(loop).__module__.startswith("asyncio.")
    finally:
        loop.close()
    monkeypatch.setenv(eventloop.ENV, "uvloop")
    with pytest.raises(ImportError):
        eventloop.new_event_loop()


def test_an_unknown_switch_is_refused_by_name(monkeypatch):
    monkeypatch.setenv(eventloop.ENV, "trio")
    with pytest.raises(ValueError, match="MILAB_EMULATOR_LOOP='trio'.*auto, uvloop, asyncio"):
        eventloop.new_event_loop()
