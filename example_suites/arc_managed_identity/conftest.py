"""The managed-identity lab's on-premises part as a pytest-milab suite: a server outside Azure
onboarded with Azure Arc, whose system-assigned identity reads the group and a Key Vault secret
through HIMDS. Its spec, what to read, where the server is, what the probe runs inside it and how
the lab is built, through the hooks of `pytest_milab.hookspecs`; no change to the engine."""

import pytest

from .probe_parts import build
from .reads import READS, machine
from .spec import ArcSpec
from .view import ArcLab


def pytest_milab_spec(config):
    return ArcSpec()


def pytest_milab_reads(spec):
    return READS


def pytest_milab_machine(spec, lab):
    return machine(spec, lab)


def pytest_milab_probe(spec):
    return build(spec)


def pytest_milab_stages(config, spec):
    from .stages import STAGES

    return STAGES


def pytest_milab_onboard(spec, group, public_key, user):
    # On the server (it is not Azure's to reach): the grader's own account, in the himds group
    # so it can answer HIMDS's challenge; the grader's roster then names the server's address.
    return [f"sudo adduser --disabled-password --gecos '' {user}",
            f"sudo usermod -aG himds {user}",
            f"sudo install -d -m 700 -o {user} -g {user} /home/{user}/.ssh",
            f"echo '{public_key}' | sudo tee -a /home/{user}/.ssh/authorized_keys",
            f"sudo chown {user}: /home/{user}/.ssh/authorized_keys",
            "# and tell the grader the server's address (the roster's ssh_host)"]


def pytest_milab_defects(spec):
    from .defects import DEFECTS

    return DEFECTS


@pytest.fixture
def lab(evidence, milab_spec):
    return ArcLab(evidence, milab_spec)
