"""A student who plants something in their machine for the grader's probe changes nothing the
grader read itself: a lab missing an in-VM piece (jq not installed) is graded as is, then with
(a) a fake `python3` from a line in ~/.bashrc above its early return, (b) an EXIT trap printing a
forged result line, (c) their own proxy and CA exported there, and (d) as root (sudo) a fake
`/usr/bin/python3` in their VM that forges a result with the run's nonce. In every case no step
whose evidence is `control-plane` changes outcome, and every step that changed is labelled
`vm-reported` in the JSON report."""

from __future__ import annotations

import os
import shlex
import subprocess
import textwrap

import pytest
from e2ekit import grade, suite_defects, suite_spec, suite_stages

from pytest_milab import Stage
from pytest_milab.emulator.machines import namespace
from pytest_milab.provision import build_in_local_azure

pytestmark = pytest.mark.slow

# A forger that knows the probe: reads its program line, answers with its nonce that jq is there.
FORGER = r"""#!/bin/sh
read -r line
nonce=$(printf '%s' "$line" | sed 's/.*"nonce":"\([0-9a-f]*\)".*/\1/')
echo "MILAB-PROBE-RESULT $nonce {\"jq\": {\"path\": \"/usr/bin/jq\"}}"
"""
# Lines a student puts at the top of ~/.bashrc, above its early return.
BASHRC = {
    "fake-python": ('mkdir -p ~/fake && printf %s ' + shlex.quote(FORGER) + ' > ~/fake/python3 '
                    '&& chmod +x ~/fake/python3',
                    'export PATH=$HOME/fake:$PATH; python3() { ~/fake/python3 "$@"; }'),
    "exit-trap": ("true", """trap 'echo "MILAB-PROBE-RESULT 0000 {\\"jq\\": {\\"path\\": """
                          """\\"/usr/bin/jq\\"}}"' EXIT"""),
    "own-proxy": ("printf 'not a CA' > ~/my-ca.pem",
                  "export https_proxy=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 "
                  "http_proxy=http://127.0.0.1:9 SSL_CERT_FILE=$HOME/my-ca.pem "
                  "REQUESTS_CA_BUNDLE=$HOME/my-ca.pem"),
}


def plant_in_bashrc(setup: str, line: str):
    def stage(ctx):
        result = ctx.run_in_vm(f"{setup} && printf '%s\\n' {shlex.quote(line)} | "
                               "cat - ~/.bashrc > ~/.bashrc.new && mv ~/.bashrc.new ~/.bashrc")
        assert result.ok, result.stderr
    return stage


def replace_system_python(ctx):
    result = ctx.run_in_vm("sudo sh -c 'rm -f /usr/bin/python3 && cat > /usr/bin/python3 && "
                           "chmod 755 /usr/bin/python3' <<'EOF'\n" + FORGER + "EOF\n")
    assert result.ok, result.stderr


TAMPERING = {name: plant_in_bashrc(*lines) for name, lines in BASHRC.items()}
if namespace.wanted():  # only where a VM's root changes its own /usr, never the host's
    TAMPERING["root-python"] = replace_system_python


@pytest.fixture(scope="module")
def graded(local_azure, tmp_path_factory):
    base, state = suite_defects()["jq"].apply(suite_stages())
    key = None
    labs = {"untampered": base}
    labs.update({f"tampered-{n}": [*base, Stage("tamper", fn)] for n, fn in TAMPERING.items()})
    for group, stages in labs.items():
        key, failures = build_in_local_azure(local_azure, [group], stages, suite_spec(),
                                             state=dict(state))
        assert failures == [], failures
    run = grade(local_azure, key, tmp_path_factory.mktemp("probe-isolation"), *labs)
    return {g["group"]: {s["id"]: s for s in g["steps"]} for g in run.report["groups"]}


def test_the_untampered_lab_misses_only_its_in_vm_piece(graded):
    steps = graded["untampered"]
    assert steps["jq"]["outcome"] == "failed" and steps["jq"]["evidence"] == "vm-reported"
    assert steps["ssh"]["outcome"] == "passed"


@pytest.mark.parametrize("name", sorted(TAMPERING))
def test_tampering_changes_nothing_the_grader_read_itself(graded, name):
    honest, tampered = graded["untampered"], graded[f"tampered-{name}"]
    assert set(honest) == set(tampered)
    control = {s for s, step in honest.items() if step["evidence"] == "control-plane"}
    assert len(control) >= 10
    assert {s: tampered[s]["outcome"] for s in control} == \
        {s: honest[s]["outcome"] for s in control}
    changed = {s for s in honest if tampered[s]["outcome"] != honest[s]["outcome"]}
    assert {s: tampered[s]["evidence"] for s in changed} == dict.fromkeys(changed, "vm-reported")
    if name in ("fake-python", "exit-trap", "own-proxy"):
        # The probe runs /usr/bin/python3 in a clean environment through the grader's egress:
        # a shell's PATH, functions, traps or proxy do not reach it.
        assert changed == set(), {s: tampered[s]["outcome"] for s in changed}
    else:
        # Root in the VM can make the machine say what it likes: only vm-reported steps move.
        assert tampered["jq"]["outcome"] == "passed" and "jq" in changed


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as a second user (nobody)")
def test_a_second_local_user_gets_no_token_and_no_home(local_azure, graded):
    """Another user of the machine running the local Azure asks the lab VM's egress proxy for
    its managed identity's token (407) and lists its home (permission denied)."""
    live = next(v for v in list(local_azure.vms._live.values())
                if "/resourcegroups/untampered/" in v.vm_key.lower())
    code = textwrap.dedent(f"""
        import os, socket
        s = socket.create_connection(("127.0.0.1", {live.proxy.port}), timeout=5)
        s.sendall(b"GET http://169.254.169.254/metadata/identity/oauth2/token?api-version="
                  b"2018-02-01&resource=https%3A%2F%2Fvault.azure.net HTTP/1.1\\r\\n"
                  b"Host: 169.254.169.254\\r\\nMetadata: true\\r\\n\\r\\n")
        print(s.recv(100).split()[1].decode())
        try:
            os.listdir({str(live.home)!r})
            print("listed")
        except PermissionError:
            print("denied")
    """)
    done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           "/usr/bin/python3", "-I", "-S", "-c", code],
                          capture_output=True, text=True, timeout=30, cwd="/")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["407", "denied"]
