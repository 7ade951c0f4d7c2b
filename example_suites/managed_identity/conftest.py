"""The managed-identity lab (Azure Citadel) as a pytest-milab suite: its spec, what to read,
where its VM is, what the probe runs inside it and how the lab is built, through the hooks of
`pytest_milab.hookspecs`. Grade a variant of the lab by returning another spec."""

import pytest

from .probe_parts import build
from .reads import READS, machine
from .spec import ManagedIdentitySpec
from .view import ManagedIdentityLab


def pytest_milab_spec(config):
    return ManagedIdentitySpec()


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
    # VMAccess adds the account with the key (and sudo); the student's own stays untouched.
    return [f"az vm user update --resource-group {group} --name {spec.vm_name} \\",
            f"    --username {user} --ssh-key-value '{public_key}'"]


def pytest_milab_defects(spec):
    from .defects import DEFECTS

    return DEFECTS


@pytest.fixture
def lab(evidence, milab_spec):
    return ManagedIdentityLab(evidence, milab_spec)
