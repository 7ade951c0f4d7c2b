"""The probe starts clean in a VM of the local Azure: `env -i`, `/usr/bin/python3 -I -S`, its
program over stdin (no secret in any process's argv), and its own HTTP through the egress the
grader names, whatever proxy or CA the student's environment says; the suite's `command` parts
still run in the student's environment."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import asyncssh
import paramiko
import pytest
from vmkit import make_vm

from pytest_milab import probe
from pytest_milab.errors import SshError
from pytest_milab.vm.probe import probe_command, run_probe
from pytest_milab.vm.ssh import CommandResult, SshTarget, VmConnection

ARM = "https://management.azure.com/"
# What a student may put in ~/.bashrc above its early return: their own proxy and CA.
STUDENT_LINES = ("export https_proxy=http://127.0.0.1:9 http_proxy=http://127.0.0.1:9 "
                 "HTTPS_PROXY=http://127.0.0.1:9 SSL_CERT_FILE=/nonexistent/ca.pem "
                 "REQUESTS_CA_BUNDLE=/nonexistent/ca.pem\n")


class Recording:
    """A connection that records what it was asked to run."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []

    def run(self, command: str, *, timeout=None, stdin: bytes = b"") -> CommandResult:
        self.calls.append((command, stdin))
        return CommandResult(0, "", "")


def test_the_program_travels_on_stdin_as_one_line():
    conn, key = Recording(), os.urandom(32)
    egress = {"proxy": "http://milab:s3cret-value@127.0.0.1:1", "ca": "/x/ca.pem"}
    with pytest.raises(SshError, match="did not report"):  # the recording answers nothing
        run_probe(conn, [probe.token("t", ARM).program({})], key, egress=egress)
    command, stdin = conn.calls[0]
    assert command == probe_command()
    assert key.hex() not in command and "s3cret-value" not in command
    assert "/usr/bin/env -i PATH=/usr/bin:/bin LANG=C.UTF-8 /usr/bin/python3 -I -S -c" in command
    assert stdin.endswith(b"\n") and stdin.count(b"\n") == 1
    program = json.loads(stdin)
    assert program["key"] == key.hex() and program["egress"] == egress
    assert len(program["nonce"]) == 16


def test_the_kit_s_source_is_the_c_program_itself():
    """The kit travels as its own source (a warm interpreter's compile cache can serve it; a
    fresh one only compiles it): ASCII, one argument well under Linux's 128 KiB."""
    import shlex
    from importlib import resources

    command = probe_command()
    words = shlex.split(command)
    program = words[words.index("-c") + 1]
    kit = resources.files("pytest_milab.vm").joinpath("probe_kit.py").read_text()
    assert program == kit
    assert command.isascii() and len(command.encode()) < 64 * 1024
    compile(program, "<string>", "exec")


@pytest.fixture(scope="module")
def student_vm(local_azure, tmp_path_factory):
    key_file = tmp_path_factory.mktemp("probe-key") / "id"
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(str(key_file))
    vm = make_vm(local_azure, name="probed", pkey=paramiko.Ed25519Key(filename=str(key_file)),
                 public_key=key.export_public_key().decode().strip())
    rc = vm.run("cat ~/.bashrc").stdout
    assert vm.run(f"printf %s '{STUDENT_LINES}' | cat - ~/.bashrc > ~/.b && "
                  "mv ~/.b ~/.bashrc").exited == 0
    assert "*) return;;" in rc
    conn = VmConnection(SshTarget(vm.address, vm.user, vm.port, str(key_file)))
    yield vm, conn
    conn.close()
    vm.delete()


def _cmdlines() -> list[str]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out.append(entry.joinpath("cmdline").read_bytes().replace(b"\0", b" ").decode(
                    "utf-8", "replace"))
            except OSError:
                pass
    return out


def test_the_kit_uses_the_grader_s_egress_not_the_student_s_proxy(local_azure, student_vm):
    vm, conn = student_vm
    live = local_azure.vms.live(vm.id)
    key = os.urandom(32)
    seen: list[str] = []
    done = threading.Event()

    def watch() -> None:  # every process's argv while the probe runs (the host is the VM's)
        while not done.is_set():
            seen.extend(line for line in _cmdlines() if "python3 -I -S" in line)
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        parts = [probe.token("token", ARM).program({}),
                 probe.command("env", ["python3", "-c",
                                       "import json, os; print(json.dumps("
                                       "[os.environ.get('https_proxy'), os.environ.get('HOME')]))"]
                               ).program({})]
        result = run_probe(conn, parts, key, timeout=60, egress=local_azure.egress_for(vm.address))
    finally:
        done.set()
        watcher.join()
    assert result["token"]["status"] == 200, result["token"]
    assert result["token"]["claims"]["aud"].rstrip("/") == ARM.rstrip("/")
    # The suite's command ran as the student, in their environment.
    assert result["env"]["json"] == ["http://127.0.0.1:9", str(live.home)]
    # The kit was seen running, and no argv held the key or the VM's proxy secret.
    assert seen, "the probe's python3 was never seen running"
    assert not any(key.hex() in line or live.proxy_secret in line for line in seen)


def test_the_egress_is_found_for_a_grader_in_another_process(local_azure, student_vm):
    from pytest_milab.evidence import published_egress

    vm, _ = student_vm
    egress = published_egress(local_azure.egress_dir)
    assert egress(vm.address) == local_azure.egress_for(vm.address)
    assert egress("127.0.0.1") is None and egress("../x") is None
