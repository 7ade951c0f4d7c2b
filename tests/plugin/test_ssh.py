"""The plugin's SSH over Fabric, against the local Azure's VMs: the ssh config honoured (aliases,
explicit values winning, ProxyJump through another VM), host keys checked against known_hosts and
recorded, and what a command may return capped."""

from __future__ import annotations

import socket
import sys
import tracemalloc
from pathlib import Path

import paramiko
import pytest

from pytest_milab.errors import ConfigError, SshError
from pytest_milab.vm.keys import generate_key_pair
from pytest_milab.vm.ssh import OUTPUT_CAP, CommandResult, SshTarget, VmConnection, _no_delay

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "emulator"))
from vmkit import make_vm, wait_until  # noqa: E402


def vm_with_key(azure, tmp: Path, name: str):
    key = tmp / f"{name}_ed25519"
    public = generate_key_pair(key)
    vm = make_vm(azure, name=name, pkey=paramiko.Ed25519Key.from_private_key_file(str(key)),
                 public_key=public)
    return vm, key


@pytest.fixture(scope="module")
def lab(local_azure, tmp_path_factory):
    vm, key = vm_with_key(local_azure, tmp_path_factory.mktemp("lab"), "labvm")
    yield vm, key
    vm.delete()


@pytest.fixture(scope="module")
def jump(local_azure, tmp_path_factory):
    vm, key = vm_with_key(local_azure, tmp_path_factory.mktemp("jump"), "jumpvm")
    yield vm, key
    vm.delete()


@pytest.fixture
def no_known_hosts(tmp_path, monkeypatch):
    """A home of the grader's with no ~/.ssh at all."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


def host_entry(vm) -> str:
    name = vm.address if vm.port == 22 else f"[{vm.address}]:{vm.port}"
    return name


def host_public_key(azure, vm) -> str:
    """The VM's host key as a known_hosts key field ("ssh-ed25519 AAAA...")."""
    key = azure.vms.live(vm.id).host_key
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


def host_fingerprint(azure, vm) -> str:
    return azure.vms.live(vm.id).host_key.get_fingerprint("sha256")


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def direct(vm, key, **kw) -> SshTarget:
    return SshTarget(vm.address, vm.user, vm.port, str(key), **kw)


# -- the connection ------------------------------------------------------------------------------
def test_commands_run_on_one_connection(lab, no_known_hosts):
    vm, key = lab
    conn = VmConnection(direct(vm, key))
    try:
        assert conn.run("echo out; echo err >&2; exit 3") == CommandResult(3, "out\n", "err\n")
        assert conn.run("hostname").stdout.strip() == "labvm"
        assert conn.connections_opened == 1 and conn.is_connected
        assert conn._fabric.gateway is None  # a fabric.Connection, no jump host
    finally:
        conn.close()
    assert not conn.is_connected
    assert conn.run("true").ok and conn.connections_opened == 2  # opened again on demand
    conn.close()


def test_the_login_goes_over_tcp_without_nagle(lab, no_known_hosts):
    """paramiko writes the handshake's messages one by one: with Nagle's algorithm on, the
    second of two waits for the server's delayed acknowledgement of the first."""
    vm, key = lab
    conn = VmConnection(direct(vm, key))
    try:
        conn.connect()
        sock = conn._fabric.client.get_transport().sock
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        conn.close()
    # Not a TCP socket (a jump host's channel, a ProxyCommand, here a Unix pair): left alone.
    a, b = socket.socketpair()
    with a, b:
        _no_delay(a)
        _no_delay(object())


def test_refusal_and_login_failure_are_told_apart(lab, no_known_hosts):
    vm, key = lab
    with socket.socket() as s:  # a port nobody listens on
        s.bind((vm.address, 0))
        port = s.getsockname()[1]
    conn = VmConnection(SshTarget(vm.address, vm.user, port, str(key)), refused_for=1.0)
    with pytest.raises(SshError) as refused:
        conn.connect()
    assert refused.value.refused and conn.refused_seconds > 0.5
    other = no_known_hosts / "other"
    generate_key_pair(other)
    with pytest.raises(SshError, match="login") as login:
        VmConnection(direct(vm, other)).connect()
    assert not login.value.refused


# -- the ssh config ------------------------------------------------------------------------------
def test_an_alias_of_the_ssh_config_is_used(lab, tmp_path, no_known_hosts, local_azure):
    vm, key = lab
    config = write(tmp_path / "config", f"""
Host labalias
    HostName {vm.address}
    User {vm.user}
    Port {vm.port}
    IdentityFile {key}
""")
    before = len(local_azure.vms.forwarded)
    conn = VmConnection(SshTarget("labalias", ssh_config=config))
    try:
        r = conn.run("echo $USER; hostname")
        assert r.stdout.split() == [vm.user, "labvm"]
        assert conn._fabric.host == vm.address and conn._fabric.gateway is None
    finally:
        conn.close()
    assert len(local_azure.vms.forwarded) == before  # straight to the VM


def test_the_targets_own_values_win_over_the_config(lab, tmp_path, no_known_hosts):
    vm, key = lab
    wrong_key = tmp_path / "wrong"
    generate_key_pair(wrong_key)
    config = write(tmp_path / "config", f"""
Host {vm.address}
    User nobody
    Port 1
    IdentityFile {wrong_key}
""")
    conn = VmConnection(direct(vm, key, ssh_config=config))
    try:
        assert conn.run("echo $USER").stdout.strip() == vm.user
    finally:
        conn.close()
    # Without them, the config's (wrong) values are used: nothing answers on port 1.
    with pytest.raises(SshError) as exc:
        VmConnection(SshTarget(vm.address, ssh_config=config), refused_for=0).connect()
    assert exc.value.refused and f"nobody@{vm.address}:1 " in str(exc.value)


def test_a_missing_ssh_config_is_a_config_error(lab, tmp_path):
    vm, key = lab
    with pytest.raises(ConfigError, match=r"ssh config .*missing: no such file$"):
        VmConnection(direct(vm, key, ssh_config=str(tmp_path / "missing"))).connect()


def test_the_ssh_config_option(tmp_path):
    from pytest_milab.settings import resolve

    config = write(tmp_path / "config", "Host x\n    Port 2\n")
    assert resolve({"ssh-config": config}, {}, {}).ssh_config == config
    assert resolve({}, {}, {"MILAB_SSH_CONFIG": config}).ssh_config == config
    assert resolve({}, {}, {}).ssh_config is None and resolve({}, {}, {}).ssh_port is None
    with pytest.raises(ConfigError, match="^--milab-ssh-config .*nope: no such file$"):
        resolve({"ssh-config": str(tmp_path / "nope")}, {}, {})


def test_evidence_targets_carry_the_ssh_config(tmp_path):
    from pytest_milab.evidence import Gatherer, LabEvidence
    from pytest_milab.settings import LabTarget, Settings
    from pytest_milab.suite import Suite
    from pytest_milab.vm.reach import Machine

    ev = LabEvidence(label="a", group="g", machine=Machine("203.0.113.9", "azureuser"))
    gatherer = Gatherer(Settings(ssh_config="/x/config"), Suite(), None, None, None)
    target = gatherer.ssh_target(ev, LabTarget(group="g"))
    assert target == SshTarget("203.0.113.9", "azureuser", None, None, "/x/config")


# -- ProxyJump -----------------------------------------------------------------------------------
def jump_config(tmp_path, lab, jump, known_hosts: str = "/dev/null") -> str:
    (vm, key), (jvm, jkey) = lab, jump
    return write(tmp_path / "config", f"""
Host lab
    HostName {vm.address}
    User {vm.user}
    Port {vm.port}
    IdentityFile {key}
    ProxyJump jump
Host jump
    HostName {jvm.address}
    User {jvm.user}
    Port {jvm.port}
    IdentityFile {jkey}
Host *
    UserKnownHostsFile {known_hosts}
""")


def test_a_vm_in_front_of_the_lab_vm_as_jump_host(lab, jump, tmp_path, local_azure,
                                                  no_known_hosts):
    (vm, _), (jvm, _) = lab, jump
    fleet = local_azure.vms
    before = len(fleet.forwarded)
    conn = VmConnection(SshTarget("lab", ssh_config=jump_config(tmp_path, lab, jump)))
    try:
        r = conn.run("hostname; echo $USER")
        assert r.stdout.split() == ["labvm", vm.user]
        # The lab VM's connection came through the jump VM...
        assert fleet.forwarded[before:] == [(jvm.address, vm.address, vm.port)]
        assert len(fleet.live(jvm.id)._connections) == 1
        assert isinstance(conn._client.get_transport().sock, paramiko.Channel)
        assert conn.run("true").ok and conn.connections_opened == 1  # and stays open
        assert conn.host_key["sha256"] == host_fingerprint(local_azure, vm)
    finally:
        conn.close()
    # ...and closing the lab's connection closes the jump host's too.
    assert wait_until(lambda: not fleet.live(jvm.id)._connections, 5)


def test_a_lab_vm_not_answering_behind_the_jump_host_is_a_refusal(lab, jump, tmp_path,
                                                                   local_azure, no_known_hosts):
    (vm, _), _ = lab, jump
    vm.set_power("stopped")
    try:
        conn = VmConnection(SshTarget("lab", ssh_config=jump_config(tmp_path, lab, jump)),
                            refused_for=0)
        with pytest.raises(SshError, match="does not answer") as exc:
            conn.connect()
        assert exc.value.refused
    finally:
        vm.set_power("running")


def test_a_jump_host_that_does_not_let_the_grader_in_is_the_graders_side(lab, jump, tmp_path,
                                                                        no_known_hosts):
    config = Path(jump_config(tmp_path, lab, jump))
    text = config.read_text()
    config.write_text(text.replace(f"IdentityFile {jump[1]}", f"IdentityFile {lab[1]}"))
    assert config.read_text() != text  # the jump host now gets the lab VM's key
    config = str(config)
    with pytest.raises(SshError, match="failed at the jump host") as exc:
        VmConnection(SshTarget("lab", ssh_config=config)).connect()
    assert not exc.value.refused


def test_the_jump_vm_forwards_only_to_the_fleets_vms(jump, local_azure):
    jvm, jkey = jump
    with socket.socket() as listener:  # something on loopback that is not a VM
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # in memory only
        client.connect(jvm.address, jvm.port, jvm.user, key_filename=str(jkey),
                       look_for_keys=False, allow_agent=False)
        try:
            with pytest.raises(paramiko.ChannelException) as exc:
                client.get_transport().open_channel("direct-tcpip", listener.getsockname(),
                                                    ("", 0), timeout=5)
            assert exc.value.code == paramiko.common.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
            listener.settimeout(0.3)
            with pytest.raises(TimeoutError):
                listener.accept()  # nothing was connected to it
        finally:
            client.close()


# -- what the connections of a run share ---------------------------------------------------------
def test_the_ssh_config_is_read_once_and_again_when_it_changes(lab, tmp_path, no_known_hosts,
                                                               monkeypatch):
    import fabric

    vm, key = lab
    made = []
    load = fabric.Config.load_ssh_config

    def counting(self):
        made.append(self._runtime_ssh_path)
        return load(self)

    monkeypatch.setattr(fabric.Config, "load_ssh_config", counting)
    path = tmp_path / "config"
    config = write(path, f"Host labalias\n    HostName {vm.address}\n    User {vm.user}\n"
                         f"    Port {vm.port}\n    IdentityFile {key}\n")
    for _ in range(3):
        conn = VmConnection(SshTarget("labalias", ssh_config=config))
        try:
            assert conn.run("hostname").stdout.strip() == "labvm"
        finally:
            conn.close()
    assert made == [config]
    # Changed: read again, and what it says now is what is used (nothing answers on port 1).
    write(path, f"Host labalias\n    HostName {vm.address}\n    User nobody\n    Port 1\n")
    with pytest.raises(SshError) as exc:
        VmConnection(SshTarget("labalias", ssh_config=config), refused_for=0).connect()
    assert exc.value.refused and f"nobody@{vm.address}:1 " in str(exc.value)
    assert made == [config, config]


def test_a_private_key_is_read_once_and_again_when_it_changes(lab, tmp_path, no_known_hosts,
                                                              monkeypatch):
    vm, key = lab
    own = tmp_path / "grader_ed25519"
    own.write_bytes(key.read_bytes())
    own.chmod(0o600)
    read = []
    original = paramiko.SSHClient._key_from_filepath

    def reading(self, filename, klass, password):
        read.append(klass.__name__)
        return original(self, filename, klass, password)

    monkeypatch.setattr(paramiko.SSHClient, "_key_from_filepath", reading)
    for _ in range(3):
        conn = VmConnection(direct(vm, own))
        try:
            assert conn.run("true").ok
        finally:
            conn.close()
    # paramiko tries the key types in turn: each once, whatever the number of connections.
    assert sorted(read) == ["ECDSAKey", "Ed25519Key", "RSAKey"]
    generate_key_pair(tmp_path / "other")
    own.write_bytes((tmp_path / "other").read_bytes())  # another key the VM does not accept
    with pytest.raises(SshError, match="login"):
        VmConnection(direct(vm, own)).connect()
    assert len(read) == 6


def test_the_transport_prefers_aead_and_offers_what_paramiko_offers(lab, no_known_hosts):
    from pytest_milab.vm.ssh import _transport_class

    transport = _transport_class()
    assert set(transport._preferred_ciphers) == set(paramiko.Transport._preferred_ciphers)
    assert set(transport._preferred_macs) == set(paramiko.Transport._preferred_macs)
    assert set(transport._preferred_kex) == set(paramiko.Transport._preferred_kex)
    vm, key = lab
    conn = VmConnection(direct(vm, key))
    try:
        conn.connect()
        used = conn._client.get_transport()
        assert isinstance(used, transport)
        assert used.local_cipher == used.remote_cipher == "aes128-gcm@openssh.com"
    finally:
        conn.close()


# -- host keys -----------------------------------------------------------------------------------
def test_an_unknown_host_key_is_accepted_recorded_and_not_saved(lab, no_known_hosts,
                                                                local_azure):
    vm, key = lab
    conn = VmConnection(direct(vm, key))
    try:
        conn.connect()
    finally:
        conn.close()
    assert conn.host_key == {"type": "ssh-ed25519", "known": False,
                             "sha256": host_fingerprint(local_azure, vm)}
    assert not (no_known_hosts / ".ssh").exists()  # nothing written


def test_a_host_key_listed_in_known_hosts_is_known(lab, no_known_hosts, local_azure):
    vm, key = lab
    (no_known_hosts / ".ssh").mkdir()
    line = f"{host_entry(vm)} {host_public_key(local_azure, vm)}\n"
    write(no_known_hosts / ".ssh" / "known_hosts", line)  # the grader's own known_hosts
    conn = VmConnection(direct(vm, key))
    try:
        conn.connect()
        assert conn.host_key["known"] is True
    finally:
        conn.close()
    assert (no_known_hosts / ".ssh" / "known_hosts").read_text() == line


def test_a_corrupt_known_hosts_line_is_a_login_problem(lab, tmp_path, no_known_hosts):
    vm, key = lab
    known = write(tmp_path / "known_hosts", f"{host_entry(vm)} ssh-ed25519 AAAA!notbase64\n")
    config = write(tmp_path / "config", f"Host *\n    UserKnownHostsFile {known}\n")
    with pytest.raises(SshError, match="known_hosts file .* cannot be read") as exc:
        VmConnection(direct(vm, key, ssh_config=config)).connect()
    assert not exc.value.refused


def test_a_changed_host_key_is_refused(lab, jump, tmp_path, no_known_hosts, local_azure):
    vm, key = lab
    other = paramiko.Ed25519Key.from_private_key_file(str(jump[1]))  # any other ed25519 key
    known = write(tmp_path / "known_hosts",
                  f"{host_entry(vm)} {other.get_name()} {other.get_base64()}\n")
    config = write(tmp_path / "config", f"Host *\n    UserKnownHostsFile {known}\n")
    conn = VmConnection(direct(vm, key, ssh_config=config), refused_for=5)
    with pytest.raises(SshError, match=rf"host key of \[?{vm.address}.* changed") as exc:
        conn.connect()
    assert not exc.value.refused and not conn.is_connected
    # Through the jump host, the lab VM's key is checked the same way.
    with pytest.raises(SshError, match="changed") as exc:
        VmConnection(SshTarget("lab", ssh_config=jump_config(tmp_path, lab, jump, known)))\
            .connect()
    assert not exc.value.refused


# -- what a command may return -------------------------------------------------------------------
def test_output_over_the_cap_is_cut_and_memory_stays_bounded(lab, no_known_hosts):
    vm, key = lab
    conn = VmConnection(direct(vm, key))
    size = 24 * OUTPUT_CAP
    try:
        conn.connect()
        tracemalloc.start()
        try:
            r = conn.run(f"head -c {size} /dev/zero | tr '\\0' o; "
                         f"head -c {size} /dev/zero | tr '\\0' e >&2; exit 4", timeout=120)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert (r.exit_code, r.truncated) == (4, True)
        assert r.stdout == "o" * OUTPUT_CAP and r.stderr == "e" * OUTPUT_CAP
        assert peak < 12 * OUTPUT_CAP, peak  # not the 48 MiB printed
        small = conn.run("echo fine")
        assert (small.stdout, small.truncated) == ("fine\n", False)
    finally:
        conn.close()


def test_stdout_and_stderr_interleaved_all_arrive_in_order(lab, no_known_hosts):
    vm, key = lab
    conn = VmConnection(direct(vm, key))
    try:
        r = conn.run("for i in $(seq 1 300); do echo out$i; echo err$i >&2; done; exit 2",
                     stdin=b"unused\n")
        assert r.exit_code == 2 and not r.truncated
        assert r.stdout.split() == [f"out{i}" for i in range(1, 301)]
        assert r.stderr.split() == [f"err{i}" for i in range(1, 301)]
        assert conn.run("cat", stdin=b"in\n").stdout == "in\n"
    finally:
        conn.close()


def test_a_command_past_its_timeout_is_the_machines_and_the_connection_stays(lab,
                                                                            no_known_hosts):
    import time

    vm, key = lab
    conn = VmConnection(direct(vm, key))
    try:
        start = time.monotonic()
        with pytest.raises(SshError, match="did not finish in 1s") as exc:
            conn.run("echo started; echo noted >&2; sleep 30", timeout=1)
        assert exc.value.machine and time.monotonic() - start < 5
        assert conn.run("echo again").stdout == "again\n" and conn.connections_opened == 1
    finally:
        conn.close()
