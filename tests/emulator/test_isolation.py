"""What keeps a local Azure's VMs to themselves: each VM's egress proxy (and so its IMDS) asks for
the VM's own secret, its folders are its user's alone, every process it started ends when it
stops, and an SSH command reads `~/.bashrc` as on Ubuntu, where the default one returns early for
commands. A local Azure stopped by SIGTERM or Ctrl-C leaves no work directory behind."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from vmkit import make_vm, wait_until

from pytest_milab.emulator.machines import namespace

ROOT = Path(__file__).resolve().parents[2]
IMDS_GET = ("GET http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01"
            "&resource=https%3A%2F%2Fmanagement.azure.com%2F HTTP/1.1\r\n"
            "Host: 169.254.169.254\r\nMetadata: true\r\n{auth}\r\n")


@pytest.fixture(scope="module")
def box(local_azure):
    made = make_vm(local_azure, name="isolated")
    yield made
    made.delete()


def _ask_proxy(port: int, auth: str = "") -> tuple[int, str]:
    """A token request through the proxy: its status and the whole head of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(IMDS_GET.format(auth=auth).encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    head = data.split(b"\r\n\r\n")[0].decode("latin-1")
    return int(head.split()[1]), head


def _basic(password: str) -> str:
    return "Proxy-Authorization: Basic " + base64.b64encode(f"milab:{password}".encode()).decode()


# -- the egress proxy ---------------------------------------------------------------------------
def test_the_vm_s_proxy_asks_for_its_own_secret(local_azure, box):
    live = local_azure.vms.live(box.id)
    status, head = _ask_proxy(live.proxy.port)
    assert status == 407 and 'Proxy-Authenticate: Basic realm="milab"' in head
    assert _ask_proxy(live.proxy.port, _basic("not-the-secret") + "\r\n")[0] == 407
    # Another VM's secret is no better.
    other = make_vm(local_azure, name="neighbour")
    try:
        neighbour = local_azure.vms.live(other.id)
        assert _ask_proxy(live.proxy.port, _basic(neighbour.proxy_secret) + "\r\n")[0] == 407
    finally:
        other.delete()
    assert _ask_proxy(live.proxy.port, _basic(live.proxy_secret) + "\r\n")[0] == 200
    # CONNECT (HTTPS) is refused the same way without the secret.
    with socket.create_connection(("127.0.0.1", live.proxy.port), timeout=5) as sock:
        sock.sendall(b"CONNECT management.azure.com:443 HTTP/1.1\r\n"
                     b"Host: management.azure.com:443\r\n\r\n")
        assert sock.recv(4096).split()[1] == b"407"


@pytest.mark.parametrize("client", ["curl", "urllib", "requests"])
def test_the_vm_s_own_clients_get_through(box, client):
    """Inside the VM the proxy URLs carry the credential: curl, urllib and requests (what the
    Azure CLI and SDKs use) reach IMDS and ARM without being told."""
    url = ("http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01"
           "&resource=https%3A%2F%2Fmanagement.azure.com%2F")
    commands = {
        "curl": f"curl -s -o /dev/null -w '%{{http_code}}' -H Metadata:true '{url}'",
        "urllib": "python3 -c " + repr(
            "import urllib.request as u; r=u.Request('" + url + "', headers={'Metadata': 'true'}); "
            "print(u.urlopen(r).status, end='')"),
        "requests": "python3 -c " + repr(
            "import requests; print(requests.get('" + url + "', headers={'Metadata': 'true'})"
            ".status_code, end='')"),
    }
    assert box.run(commands[client]).stdout == "200"
    # HTTPS through the proxy (CONNECT with the credential): ARM answers, 401 without a token.
    https = box.run("curl -s -o /dev/null -w '%{http_code}' "
                    "'https://management.azure.com/subscriptions?api-version=2020-01-01'")
    assert https.stdout == "401"


# -- folders ---------------------------------------------------------------------------------------
def test_work_directory_and_vm_folders_are_the_user_s_alone(local_azure, box):
    live = local_azure.vms.live(box.id)
    for path in (local_azure.workdir, local_azure.vms.workdir, live.root, live.home):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    published = local_azure.egress_dir / f"{live.address}.json"
    assert stat.S_IMODE(published.stat().st_mode) == 0o600
    assert json.loads(published.read_text()) == live.egress()


# -- SSH commands read ~/.bashrc, as Ubuntu's bash does under sshd ---------------------------------
def test_a_command_reads_bashrc_down_to_its_early_return(box):
    rc = box.run("cat ~/.bashrc").stdout
    assert "*) return;;" in rc
    assert box.run("printf 'export ABOVE=1\\n' | cat - ~/.bashrc > ~/.b && mv ~/.b ~/.bashrc && "
                   "echo 'export BELOW=1' >> ~/.bashrc").exited == 0
    try:
        assert box.run("echo ${ABOVE:-unset} ${BELOW:-unset}").stdout == "1 unset\n"
        client = box.run("echo $SSH_CLIENT").stdout.split()
        assert len(client) == 3 and client[2] == str(box.port)
    finally:
        box.run(f"printf %s {_shell_quote(rc)} > ~/.bashrc")


def _shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


# -- processes ------------------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_every_process_a_vm_started_ends_when_it_stops(local_azure):
    vm = make_vm(local_azure, name="daemons")
    try:
        started = vm.run(
            "nohup sleep 1001 >/dev/null 2>&1 & echo $!; "
            "( sleep 1002 </dev/null >/dev/null 2>&1 & echo $! ); "
            "python3 -c 'import os; os.setsid(); os.execvp(\"sleep\", [\"sleep\", \"1003\"])' "
            "</dev/null >/dev/null 2>&1 & echo $!")
        pids = [int(p) for p in started.stdout.split()]
        assert len(pids) == 3 and all(_alive(p) for p in pids)
        # Orphans (a double fork, a session of its own) came back to the local Azure's
        # process, a child subreaper.
        time.sleep(0.3)
        parents = {int(Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()[1])
                   for p in pids}
        assert parents == {os.getpid()}
        vm.set_power("deallocated")
        assert wait_until(lambda: not any(_alive(p) for p in pids), timeout=5)
        # Reaped, not left as zombies of this process.
        assert wait_until(lambda: not any(Path(f"/proc/{p}").exists() for p in pids), timeout=5)
    finally:
        vm.delete()


# -- another local user -----------------------------------------------------------------------------
def _as_nobody(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           "/usr/bin/python3", "-I", "-S", "-c", code],
                          capture_output=True, text=True, timeout=30, cwd="/")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as a second user (nobody)")
def test_another_local_user_gets_no_token_and_no_home(local_azure, box):
    live = local_azure.vms.live(box.id)
    code = textwrap.dedent(f"""
        import os, socket, sys
        s = socket.create_connection(("127.0.0.1", {live.proxy.port}), timeout=5)
        s.sendall({IMDS_GET.format(auth="").encode()!r})
        print(s.recv(100).split()[1].decode())
        for path in ({str(live.home)!r}, {str(local_azure.workdir)!r}):
            try:
                os.listdir(path)
                print("listed")
            except PermissionError:
                print("denied")
    """)
    done = _as_nobody(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["407", "denied", "denied"]


# -- stopping on signals ---------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_removes_the_work_directory(sig, tmp_path):
    script = textwrap.dedent("""
        import time
        from pytest_milab.emulator import LocalAzure
        azure = LocalAzure().start()
        print(azure.workdir, flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        workdir = Path(proc.stdout.readline().strip())
        assert workdir.is_dir()
        proc.send_signal(sig)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not workdir.exists()
    if sig == signal.SIGTERM:
        assert proc.returncode == -signal.SIGTERM  # it still ends as SIGTERM ends a process


def test_milab_emulator_removes_its_work_directory_on_sigterm(tmp_path):
    env_file = tmp_path / "azure.env"
    milab = Path(sys.executable).with_name("milab")
    proc = subprocess.Popen([str(milab), "emulator", "--env-file", str(env_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:
            if "ready in" in line:
                break
        env = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
        workdir = Path(env["MILAB_EGRESS_DIR"].strip()).parent
        assert workdir.is_dir()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not workdir.exists()


# -- root's changes stay in the VM (a mount namespace per VM, when running as root) ------------------
needs_namespaces = pytest.mark.skipif(
    not namespace.wanted(), reason="VMs get a private /usr, /etc and /tmp only as root")


@needs_namespaces
def test_sudo_changes_to_usr_etc_and_tmp_stay_in_the_vm(local_azure, box):
    assert local_azure.vms.live(box.id).namespace is not None
    other = make_vm(local_azure, name="bystander")
    marker = f"/usr/bin/milab-{os.urandom(4).hex()}"
    try:
        done = box.run(f"echo 'echo forged' | sudo tee {marker} >/dev/null && sudo chmod +x "
                       f"{marker} && echo 'export PLANTED=1' | sudo tee -a /etc/bash.bashrc "
                       f">/dev/null && echo mine > /tmp/only-here && {marker}")
        assert (done.exited, done.stdout) == (0, "forged\n"), done.stderr
        assert not Path(marker).exists()
        assert "PLANTED" not in Path("/etc/bash.bashrc").read_text()
        assert not Path("/tmp/only-here").exists()
        seen = other.run(f"test -e {marker}; echo $?; grep -c PLANTED /etc/bash.bashrc; "
                         "test -e /tmp/only-here; echo $?")
        assert seen.stdout.split() == ["1", "0", "1"]
        # The VM keeps its changes across a restart, as its disk would.
        box.set_power("deallocated")
        box.set_power("running")
        assert wait_until(lambda: box.run(f"{marker}").stdout == "forged\n", timeout=10)
    finally:
        other.delete()
        box.run(f"sudo rm -f {marker}")


@needs_namespaces
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_grading_run_that_started_a_local_azure_removes_it_on_a_signal(sig, tmp_path):
    """`pytest --milab-emulator` interrupted while it builds or grades its lab: the local Azure it
    started goes, work directory and VM processes with it."""
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AZURE_", "MILAB_")) and k.lower() not in (
               "https_proxy", "http_proxy", "no_proxy", "requests_ca_bundle", "ssl_cert_file",
               "curl_ca_bundle", "pytest_addopts")}
    env["TMPDIR"] = str(private_tmp)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "--milab-emulator",
         str(ROOT / "example_suites" / "managed_identity"), "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "-c", os.devnull],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        started = wait_until(lambda: list(private_tmp.glob("milab-azure-*/vms/*/home")),
                             timeout=60, interval=0.05)
        assert started, "the run never started a VM"
        proc.send_signal(sig)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert list(private_tmp.glob("milab-azure-*")) == []


def test_a_vm_s_private_tmp_still_shows_this_package_wherever_it_lies(tmp_path):
    """Shims in a VM start this package's own scripts (sudo's client on Arc machines, the warm
    interpreter): installed or checked out under /tmp, it must stay visible in a VM's /tmp."""
    import pytest_milab
    from pytest_milab.emulator.machines.namespace import kept_paths

    package = Path(pytest_milab.__file__).resolve().parent
    kept = kept_paths(tmp_path / "work", tmp_path / "work" / "ca.pem", None)
    assert any(package == p or package.is_relative_to(p) for p in kept), kept
