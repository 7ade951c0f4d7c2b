"""The event loop the local Azure runs on (eventloop.py): asyncio's by default and with
MILAB_EMULATOR_LOOP=asyncio, uvloop's with `uvloop` or `auto` where it is installed; either one
serves a tunneled HTTPS request (the proxy's socket handed over to the TLS listener) and starts a
VM's commands alike."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

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


@pytest.mark.parametrize("switch", ["uvloop", "auto"])
def test_the_switch_runs_the_local_azure_on_uvloop_where_installed(switch, tmp_path, monkeypatch):
    uvloop = pytest.importorskip("uvloop")
    monkeypatch.setenv(eventloop.ENV, switch)
    with LocalAzure(workdir=tmp_path) as azure:
        assert isinstance(azure.run(_running_loop()), uvloop.Loop)
        _serves_a_tunneled_request(azure)


@pytest.mark.parametrize("switch", ["", "asyncio"])
def test_the_local_azure_runs_on_asyncio_s_own_loop_by_default(switch, tmp_path, monkeypatch):
    monkeypatch.setenv(eventloop.ENV, switch)
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


def test_an_unknown_switch_is_refused_by_name_before_anything_starts(monkeypatch, tmp_path):
    monkeypatch.setenv(eventloop.ENV, "trio")
    with pytest.raises(ValueError, match="MILAB_EMULATOR_LOOP='trio'.*asyncio, uvloop, auto"):
        eventloop.new_event_loop()
    with pytest.raises(ValueError, match="MILAB_EMULATOR_LOOP='trio'"):
        LocalAzure(workdir=tmp_path)


@pytest.mark.parametrize("kind", ["uvloop", "asyncio"])
def test_a_vm_command_starts_alike_on_both_loops(kind, monkeypatch):
    """machines/spawn.py: the command's output ends when it exits even if a process it left in
    the background lives on (that process keeps no descriptor of the emulator but 0-2), and
    its exit status and stdin arrive through the loop."""
    if kind == "uvloop":
        pytest.importorskip("uvloop")
    monkeypatch.setenv(eventloop.ENV, kind)
    from pytest_milab.emulator.machines import spawn

    async def session() -> tuple[bytes, bytes, int]:
        proc = await spawn.start(
            ["/bin/sh", "-c", "sleep 30 </dev/null >/dev/null 2>&1 & echo $!; cat; exit 3"],
            stdin=spawn.PIPE, stdout=spawn.PIPE, stderr=spawn.PIPE, start_new_session=True)
        proc.stdin.write(b"fed\n")
        await proc.stdin.drain()
        proc.stdin.close()
        out, err = await asyncio.wait_for(
            asyncio.gather(proc.stdout.read(), proc.stderr.read()), 10)
        return out, err, await asyncio.wait_for(proc.wait(), 10)

    loop = eventloop.new_event_loop()
    try:
        out, err, rc = loop.run_until_complete(session())
    finally:
        loop.close()
    pid_text, fed = out.decode().split("\n", 1)
    background = int(pid_text)
    try:
        assert (fed, err, rc) == ("fed\n", b"", 3)
        # Until it runs `sleep`, the background shell may still be setting up its redirections
        # (/dev/null opened as fd 3, then moved to 0-2): its descriptors are those after exec.
        deadline = time.monotonic() + 10
        while Path(f"/proc/{background}/comm").read_text().strip() != "sleep":
            assert time.monotonic() < deadline, "the background command never ran"
            time.sleep(0.01)
        assert sorted(int(fd) for fd in os.listdir(f"/proc/{background}/fd")) == [0, 1, 2]
    finally:
        os.kill(background, signal.SIGKILL)


@pytest.mark.parametrize("kind", ["uvloop", "asyncio"])
def test_a_jump_host_passes_on_the_destination_s_first_words(kind, tmp_path, monkeypatch):
    """A VM as a jump host (direct-tcpip): the destination's SSH banner, sent as soon as it
    accepts and so before the channel is open, reaches the client on either loop."""
    if kind == "uvloop":
        pytest.importorskip("uvloop")
    import paramiko
    from vmkit import make_vm

    monkeypatch.setenv(eventloop.ENV, kind)
    with LocalAzure(workdir=tmp_path) as azure:
        jump, target = make_vm(azure, name="jump"), make_vm(azure, name="target")
        transport = paramiko.Transport((jump.address, jump.port))
        try:
            transport.connect(username=jump.user, pkey=jump.pkey)
            channel = transport.open_channel("direct-tcpip", (target.address, target.port),
                                             ("127.0.0.1", 0))
            channel.settimeout(10)
            assert channel.recv(100).startswith(b"SSH-2.0-")
        finally:
            transport.close()
