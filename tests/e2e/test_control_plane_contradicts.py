"""A student who is root in their machine rewrites the probe's answer (a fake python3 first on
PATH) to pass steps the lab does not meet. The keyed digest of a secret is forgeable (the
student knows the value; the machine holds the key), so what the machine reports is checked
against what ARM shows the grader: a step ARM contradicts fails, in both suites, whatever the
machine says.

The labs: no Reader assignment and no access policy for the identity, with `secret-read`,
`reader-allowed` and `reader-denied-before` forged; and (managed identity) an identity
whose access policy grants list, with `vault-denied-before`'s 403 forged."""

from __future__ import annotations

import json

import pytest
from e2ekit import ARC_SUITE, grade, outcomes, suite_defects, suite_spec, suite_stages

from pytest_milab import Stage
from pytest_milab.emulator.machines import namespace
from pytest_milab.provision import build_in_local_azure

# Runs the real probe and rewrites its one result line with the student's values; a value
# {"hmac_of": text} becomes the keyed digest of text, made with the key the grader sent.
FORGER = r'''
import hashlib, hmac, json, sys
forged, program = json.loads(sys.argv[1]), json.loads(sys.argv[2])
key = bytes.fromhex(program["key"])

def made(value):
    if isinstance(value, dict) and set(value) == {"hmac_of"}:
        data = value["hmac_of"].encode()
        return {"hmac": hmac.new(key, data, hashlib.sha256).hexdigest(), "length": len(data)}
    if isinstance(value, dict):
        return {k: made(v) for k, v in value.items()}
    return value

for line in sys.stdin:
    if line.startswith("MILAB-PROBE-RESULT "):
        nonce, _, rest = line[len("MILAB-PROBE-RESULT "):].partition(" ")
        data = json.loads(rest)
        data.update({k: made(v) for k, v in forged.items() if k in data})
        line = "MILAB-PROBE-RESULT " + nonce + " " + json.dumps(data) + "\n"
    sys.stdout.write(line)
'''

ROLE_STAGES = ("reader assignment", "identity access policy")
PERMISSIONS_SUB = {"status": 200, "json": {"value": [{"actions": [], "notActions": []}]}}
PERMISSIONS_GROUP = {"status": 200, "json": {"value": [{"actions": ["*/read"],
                                                         "notActions": []}]}}


# The VM's python3 as its root replaces it: the real probe runs on the program it reads from
# stdin, and FORGER rewrites its answer with that program (for the run's digest key).
WRAPPER = """#!/bin/sh
IFS= read -r prog
printf '%s\\n' "$prog" | /usr/bin/python3.real "$@" | \\
  /usr/bin/python3.real /usr/local/lib/forge.py "$(cat /usr/local/lib/forge.json)" "$prog"
"""


def forging_python(forged):
    """A stage: the VM's /usr/bin/python3 (which the probe runs) becomes a wrapper passing the
    real probe's output, and the program it was given on stdin, through FORGER. Only where each
    VM has its own /usr (the local Azure runs as root); elsewhere nothing is forged and the
    tests skip."""
    def stage(ctx):
        if not namespace.wanted():
            return
        values = forged(ctx) if callable(forged) else forged
        script = ("set -e\nsudo cp /usr/bin/python3 /usr/bin/python3.real\n"
                  "sudo rm -f /usr/bin/python3\nsudo mkdir -p /usr/local/lib\n"
                  f"sudo tee /usr/local/lib/forge.py >/dev/null <<'EOF1'\n{FORGER}\nEOF1\n"
                  f"sudo tee /usr/local/lib/forge.json >/dev/null <<'EOF2'\n"
                  f"{json.dumps(values)}\nEOF2\n"
                  f"sudo tee /usr/bin/python3 >/dev/null <<'EOF3'\n{WRAPPER}EOF3\n"
                  "sudo chmod 755 /usr/bin/python3\n")
        result = ctx.run_in_vm(script)
        assert result.ok, result.stderr
    return stage


needs_own_usr = pytest.mark.skipif(
    not namespace.wanted(), reason="a VM's root has its own /usr only when the local Azure runs "
                                   "as root")


def listing(*ids: str) -> dict:
    return {"status": 200, "code": None, "json": {"value": [{"id": i} for i in ids]}}


def mi_forgery(ctx):
    vm = ctx.clients.compute.virtual_machines.get(ctx.group, ctx.spec.vm_name)
    vault = ctx.clients.keyvault.vaults.get(ctx.group, ctx.state["vault_name"])
    secret = {"status": 200, "code": None, "value": {"hmac_of": ctx.spec.secret_value}}
    return {"secret_read": secret, "list_group": listing(vm.id, vault.id),
            "permissions_subscription": PERMISSIONS_SUB, "permissions_group": PERMISSIONS_GROUP}


def arc_forgery(ctx):
    machine = f"{ctx.group_id}/providers/Microsoft.HybridCompute/machines/{ctx.spec.machine_name}"
    secret = {"status": 200, "code": None, "value": {"hmac_of": ctx.spec.secret_value}}
    # The forging python3 is not the one HIMDS's key file lets in: the challenge is forged too.
    token = {"status": 200, "code": None, "claims": {"aud": "https://management.azure.com/",
                                                     "oid": ctx.state["identity"]},
             "challenge": {"status": 401, "key": "read",
                           "realm": "/var/opt/azcmagent/tokens/forged.key"}}
    return {"secret_read": secret, "list_group": listing(machine), "management_token": token,
            "permissions_subscription": PERMISSIONS_SUB, "permissions_group": PERMISSIONS_GROUP}


def without(stages, names):
    return [s for s in stages if s.name not in names]


@pytest.fixture(scope="module")
def graded(local_azure, tmp_path_factory):
    spec = suite_spec()
    key, failures = build_in_local_azure(
        local_azure, ["forged-no-grants"],
        [*without(suite_stages(), ROLE_STAGES), Stage("forge", forging_python(mi_forgery))],
        spec)
    assert failures == [], failures
    stages, state = suite_defects()["vault-denied-before"].apply(suite_stages())
    _, failures = build_in_local_azure(
        local_azure, ["forged-list-403"],
        [*stages, Stage("forge", forging_python({"vault_list": {"status": 403, "code":
                                                                 "Forbidden"}}))],
        spec, state=state)
    assert failures == [], failures
    arc_key, failures = build_in_local_azure(
        local_azure, ["forged-arc"],
        [*without(suite_stages(ARC_SUITE), ROLE_STAGES),
         Stage("forge", forging_python(arc_forgery))], suite_spec(ARC_SUITE))
    assert failures == [], failures
    mi = grade(local_azure, key, tmp_path_factory.mktemp("mi"), "forged-no-grants",
               "forged-list-403")
    arc = grade(local_azure, arc_key, tmp_path_factory.mktemp("arc"), "forged-arc",
                suite=ARC_SUITE)
    return mi, arc


FORGED = ("secret-read", "reader-allowed", "reader-denied-before")


@pytest.mark.slow
@pytest.mark.parametrize("suite", ["managed_identity", "arc_managed_identity"])
@needs_own_usr
def test_the_control_plane_fails_what_the_machine_forged(graded, suite):
    run = graded[0] if suite == "managed_identity" else graded[1]
    group = "forged-no-grants" if suite == "managed_identity" else "forged-arc"
    got = outcomes(run.report, group)
    # ARM's own view of the lab fails the control-plane steps ...
    assert got["reader-assignment"][0] == got["identity-access-policy"][0] == "failed"
    # ... and the forged steps with them, saying what ARM shows.
    for step in FORGED:
        assert got[step][0] == "failed", (step, got)
        assert got[step][1].startswith("ARM shows") or got[step][1].startswith("ARM lists"), (
            step, got[step])
        assert "yet the machine reports" in got[step][1]
    assert "no access policy granting the identity get" in got["secret-read"][1]
    assert "no role for the identity" in got["reader-allowed"][1]


@pytest.mark.slow
@needs_own_usr
def test_a_forged_refusal_fails_when_arm_shows_the_grant(graded):
    got = outcomes(graded[0].report, "forged-list-403")
    assert got["vault-denied-before"][0] == "failed", got["vault-denied-before"]
    assert "access policy grants secrets ['get', 'list']" in got["vault-denied-before"][1]
