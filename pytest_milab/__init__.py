"""pytest-milab: verify deployed Azure identity labs.

The engine gathers, grades, reports, schedules and provisions; a suite (a folder of checks and
a conftest implementing the hooks in `pytest_milab.hookspecs`) says what its lab is. A check
marks the lab step it proves and judges the lab through fixtures::

    import pytest

    @pytest.mark.milab_step("vm-identity", title="The VM has a system identity", needs=("vm",))
    def test_vm_identity(lab):
        assert lab.read("vm").get("identity"), "enable the VM's system-assigned identity"

Fixtures: `lab` (a `Lab`; a suite returns its own subclass), `vm` (a `Vm` over SSH),
`evidence` (`LabEvidence`), `milab_spec` (the suite's spec). A check ends `failed` on an
assertion, `unverified` with `Unverified`, `error` with `CouldNotDecide`, `not-propagated` with `NotPropagated`, `skipped` with
`pytest.skip`.
"""

from . import probe, shapes
from .azure.builtins import API, ROLES, role_definition_id, role_name
from .azure.reads import Read
from .errors import (
    AzureError,
    ConfigError,
    CouldNotDecide,
    CredentialError,
    MilabError,
    NotPropagated,
    ReadFailed,
    ReadPending,
    RosterError,
    SshError,
    StepMarkerError,
    StepOutcome,
    SuiteError,
    Unverified,
)
from .evidence import LabEvidence
from .lab import Lab, NeedsStep
from .probe import Probe
from .provision import Defect, ProvisionContext, Stage
from .vm.probe import Vm
from .vm.reach import Machine
from .vm.ssh import CommandResult

__version__ = "0.2.0"
__all__ = [
    "API", "ROLES", "AzureError", "CommandResult", "ConfigError", "CouldNotDecide",
    "CredentialError", "Defect", "Lab", "LabEvidence", "Machine", "MilabError", "NeedsStep",
    "NotPropagated", "Probe", "ProvisionContext", "Read", "ReadFailed", "ReadPending",
    "RosterError", "SshError", "Stage", "StepMarkerError", "StepOutcome", "SuiteError",
    "Unverified", "Vm",
    "probe", "role_definition_id", "role_name", "shapes",
]
