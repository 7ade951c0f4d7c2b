from __future__ import annotations

import os
import uuid

import pytest

pytest_plugins = ["pytester"]

# pytester's in-process runs restore sys.modules afterwards: modules first imported inside such a
# run would be imported twice, and the SDKs' isinstance checks (requests' CookieJar) then fail.
# Import what the plugin uses once, up front.
import azure.identity  # noqa: E402,F401
import azure.keyvault.secrets  # noqa: E402,F401
import azure.mgmt.authorization  # noqa: E402,F401
import azure.mgmt.compute  # noqa: E402,F401
import azure.mgmt.keyvault  # noqa: E402,F401
import azure.mgmt.network  # noqa: E402,F401
import azure.mgmt.resource  # noqa: E402,F401
import azure.mgmt.subscription  # noqa: E402,F401
import fabric  # noqa: E402,F401
import msal  # noqa: E402,F401
import requests  # noqa: E402,F401


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (the default here): two workers a core, at most 8. Most of these tests wait on
    the local Azure's simulated latency, timeouts and subprocesses, not on a core (on 2 cores:
    2 workers 4 min, 4 workers 2.6 min)."""
    return max(2, min(8, 2 * (os.cpu_count() or 1)))


def pytest_configure(config):
    # Under pytest-xdist, a worker's environment names it (PYTEST_XDIST_WORKER and friends); the
    # pytest runs these tests start must not inherit that and believe they are workers too.
    if hasattr(config, "workerinput"):
        for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
            os.environ.pop(name, None)


@pytest.fixture(scope="session")
def local_azure():
    """One local Azure for the whole test session; tests use their own resource groups."""
    from pytest_milab.emulator import LocalAzure

    with LocalAzure() as azure:
        yield azure


@pytest.fixture
def azure_env(local_azure, monkeypatch):
    """The local Azure's environment applied to this process (proxy, CA bundle, operator)."""
    for key, value in local_azure.env.items():
        monkeypatch.setenv(key, value)
    yield local_azure
    local_azure.knobs.propagation_delay = 0.0


@pytest.fixture
def operator_credential(azure_env):
    from azure.identity import ClientSecretCredential

    op = azure_env.operator
    return ClientSecretCredential(op.tenant_id, op.client_id, op.client_secret)


@pytest.fixture
def grader_credential(azure_env):
    from azure.identity import ClientSecretCredential

    gr = azure_env.grader
    return ClientSecretCredential(gr.tenant_id, gr.client_id, gr.client_secret)


@pytest.fixture
def unique_group():
    return f"rg-{uuid.uuid4().hex[:10]}"
