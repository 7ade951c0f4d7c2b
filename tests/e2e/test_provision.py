"""Provision mode: the lab built step by step in the local Azure, each step checked when the
lab reaches it; denials observed before the grants; teardown and cleanup."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from e2ekit import SUITE, provision

AZ = {"az-cli", "az-login-identity"}


def only_group(report):
    [lab] = report["groups"]
    return lab, {s["id"]: (s["outcome"], s["reason"]) for s in lab["steps"]}


def group_exists(azure, group: str) -> bool:
    return any(k.endswith(f"/resourcegroups/{group.lower()}") for k in azure.cloud.resource_groups)


@pytest.mark.parametrize("delay", [0, 3])
def test_provision_passes_and_observes_each_denial_before_its_grant(local_azure, tmp_path, delay):
    local_azure.knobs.propagation_delay = delay
    start = len(local_azure.audit)
    try:
        run = provision(local_azure, tmp_path)
    finally:
        local_azure.knobs.propagation_delay = 0
    lab, steps = only_group(run.report)
    assert {k for k, (o, _) in steps.items() if o != "passed"} <= AZ, steps
    assert run.returncode == 0, run.output[-3000:]
    entries = local_azure.audit.entries()[start:]
    group = lab["group"]
    # Reader: the identity's listing was refused, then the assignment was made, then allowed.
    listing = [e for e in entries if e.path.lower().endswith(f"/resourcegroups/{group}/resources")
               and e.caller_oid != local_azure.operator.object_id]
    grant = next(e for e in entries if e.method == "PUT" and "roleassignments" in e.path.lower()
                 and e.path.lower().startswith(f"/subscriptions/{local_azure.subscription_id}"
                                               f"/resourcegroups/{group}/"))
    refused = [e for e in listing if e.status == 403]
    assert refused and refused[0].time < grant.time
    assert any(e.status == 200 and e.time > grant.time for e in listing)
    # Key Vault: reading the secret was refused before the identity's access policy.
    policy = next(e for e in entries if e.method == "PUT" and e.path.endswith("/accessPolicies/add"))
    reads = [e for e in entries if e.service == "keyvault" and e.path == "/secrets/portal-phrase"
             and e.caller_oid not in (None, local_azure.operator.object_id)]
    assert any(e.status == 403 and e.time < policy.time for e in reads)
    assert any(e.status == 200 and e.time > policy.time for e in reads)
    if delay:  # the checks waited for the grants to take effect, then passed
        assert [e for e in listing if e.status == 403 and e.time > grant.time]
    assert "removed lab" in run.output
    assert not group_exists(local_azure, group)


def test_beyond_the_deadline_is_not_propagated(local_azure, tmp_path):
    local_azure.knobs.propagation_delay = 60
    try:
        run = provision(local_azure, tmp_path, extra=("--milab-propagation-deadline", "2"))
    finally:
        local_azure.knobs.propagation_delay = 0
    _, steps = only_group(run.report)
    assert steps["reader-allowed"][0] == "not-propagated"
    assert steps["secret-read"][0] == "not-propagated"
    assert not [k for k, (o, _) in steps.items() if o == "failed"], steps


def test_contributor_cannot_assign_roles_and_the_run_still_tears_down(local_azure, tmp_path):
    contributor = local_azure.add_service_principal("milab-contributor", role="Contributor")
    run = provision(local_azure, tmp_path, credentials=contributor)
    lab, steps = only_group(run.report)
    outcome, reason = steps["reader-assignment"]
    assert outcome == "failed"
    assert "stage 'reader assignment' failed: AuthorizationFailed" in reason
    # Judged on what the identity could do, and told why: the stage that should grant it failed.
    assert steps["reader-allowed"][0] == "failed"
    assert steps["reader-allowed"][1].startswith("stage 'reader assignment' failed: "
                                                 "AuthorizationFailed")
    assert steps["service-principal"][0] == "failed"  # no right to register applications
    assert steps["vm"][0] == "passed" and steps["key-vault"][0] == "passed"
    assert not group_exists(local_azure, lab["group"])


def test_cleanup_removes_the_leftovers_of_a_killed_run(tmp_path):
    """A provision run killed mid-way (SIGKILL: no teardown) leaves tagged resources behind;
    `milab cleanup` finds and deletes them."""
    env_file = tmp_path / "azure.env"
    emulator = subprocess.Popen([sys.executable, "-m", "pytest_milab.cli", "emulator",
                                 "--env-file", str(env_file)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while not env_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        env = dict(os.environ)
        env.update(line.split("=", 1) for line in env_file.read_text().splitlines())
        env.pop("PYTEST_ADDOPTS", None)
        run = subprocess.Popen(
            [sys.executable, "-m", "pytest", str(SUITE), "-p", "no:cacheprovider", "-q",
             "--rootdir", str(tmp_path), "-c", os.devnull, "--milab-mode", "provision",
             "--milab-ssh-port", env["MILAB_SSH_PORT"], "-x", "-k", "not sp_login"],
            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # Kill it once the service principal's app registration exists (late in the lab).
        apps = []
        deadline = time.monotonic() + 120
        while not apps and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.3)
            apps = _tagged_apps(env)
        run.send_signal(signal.SIGKILL)
        run.wait(30)
        assert apps, "the run ended before it registered an application"
        assert _tagged_groups(env), "the killed run left no group behind"
        clean = subprocess.run([sys.executable, "-m", "pytest_milab.cli", "cleanup",
                                "--env-file", str(env_file)], capture_output=True, text=True,
                               timeout=120, env={k: v for k, v in os.environ.items()
                                                 if not k.startswith("AZURE_")})
        assert clean.returncode == 0, clean.stderr
        assert "deleted resource group milab-lab-" in clean.stdout
        assert "deleted app registration" in clean.stdout
        assert _tagged_groups(env) == [] and _tagged_apps(env) == []
    finally:
        emulator.send_signal(signal.SIGTERM)
        emulator.wait(30)


def _credential(env):
    from azure.identity import ClientSecretCredential

    return ClientSecretCredential(env["AZURE_TENANT_ID"], env["AZURE_CLIENT_ID"],
                                  env["AZURE_CLIENT_SECRET"])


def _with_env(env, fn):
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        return fn()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _tagged_groups(env):
    from pytest_milab.azure.clients import SubscriptionClients

    def read():
        clients = SubscriptionClients(_credential(env), env["AZURE_SUBSCRIPTION_ID"])
        return [g.name for g in clients.resource.resource_groups.list()
                if (g.tags or {}).get("milab-run")]
    return _with_env(env, read)


def _tagged_apps(env):
    import requests

    def read():
        token = _credential(env).get_token("https://graph.microsoft.com/.default").token
        apps = requests.get("https://graph.microsoft.com/v1.0/applications",
                            headers={"Authorization": f"Bearer {token}"}, timeout=30).json()
        return [a["appId"] for a in apps.get("value", [])
                if any(t.startswith("milab-run:") for t in a.get("tags") or [])]
    return _with_env(env, read)


def test_under_xdist_each_lab_is_built_and_checked_on_one_worker(local_azure, tmp_path):
    run = provision(local_azure, tmp_path, extra=("-n", "2", "--milab-group", "prov-xdist-a",
                                                  "--milab-group", "prov-xdist-b"))
    assert run.returncode == 0, run.output[-3000:]
    for lab in run.report["groups"]:
        outcomes = {s["id"]: s["outcome"] for s in lab["steps"]}
        assert {k for k, o in outcomes.items() if o != "passed"} <= AZ, outcomes
    assert {lab["group"] for lab in run.report["groups"]} == {"prov-xdist-a", "prov-xdist-b"}
    assert "removed lab prov-xdist-a" in run.output and "removed lab prov-xdist-b" in run.output
    assert not group_exists(local_azure, "prov-xdist-a")
