"""The managed-identity lab (Azure Citadel): constants shared by its checks.

The lab's names and values are those of `pytest_milab.LabSpec`; override `milab_spec` here to
grade a variant of the lab (another region, another secret)."""

import pytest

from pytest_milab import LabSpec


@pytest.fixture(scope="session")
def milab_spec():
    return LabSpec()


def pytest_milab_stages(config):
    """The lab's stages, for provision mode and the --milab-emulator demo."""
    from lab_stages import STAGES

    return STAGES
