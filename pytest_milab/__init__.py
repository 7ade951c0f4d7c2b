"""pytest-milab: verify deployed Azure managed-identity labs.

A suite marks each check with the lab step it proves and reads the lab through fixtures::

    import pytest

    @pytest.mark.milab_step("vm-identity", title="The VM has a system identity", needs=("vm",))
    def test_vm_identity(lab):
        assert lab.identity_principal_id, "enable the VM's system-assigned identity"

Fixtures: `lab` (a `Lab`), `vm` (a `Vm` over SSH), `evidence` (`LabEvidence`), `milab_spec`
(a `LabSpec`; override it to change the lab's constants). A check ends `failed` on an
assertion, `error` with `CouldNotDecide`, `not-propagated` with `NotPropagated`, `skipped` with
`pytest.skip`.
"""

from .errors import CouldNotDecide, MilabError, NotPropagated
from .evidence import LabEvidence
from .lab import Lab, NeedsStep
from .provision import ProvisionContext, Stage
from .spec import LabSpec
from .vm.probe import Vm
from .vm.ssh import CommandResult

__version__ = "0.1.0"
__all__ = ["CommandResult", "CouldNotDecide", "Lab", "LabEvidence", "LabSpec", "MilabError",
           "NeedsStep", "NotPropagated", "ProvisionContext", "Stage", "Vm"]
