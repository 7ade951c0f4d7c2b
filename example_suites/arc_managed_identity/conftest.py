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


@pytest.fixture
def lab(evidence, milab_spec):
    return ArcLab(evidence, milab_spec)
