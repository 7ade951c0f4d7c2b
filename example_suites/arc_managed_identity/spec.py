"""The Arc lab's constants: the managed-identity lab's promised next step, "do the same with one
of our on prem machines", on a server outside Azure onboarded with Azure Arc. Another variant of
the lab is another `ArcSpec`, returned from the suite's `pytest_milab_spec` hook.

Where the server is. Azure does not know how to reach an on-premises server: the Connected
Machine agent reports the server's own addresses (`properties.networkProfile` of
`Microsoft.HybridCompute/machines/<machine_name>`), which are private to its site. The suite
SSHes to the first one it finds there, as `user`. A real grader points the suite at the real
server with the roster's `ssh_host` (an address or a Host alias of the grader's `~/.ssh/config`,
so a jump host works) and `ssh_user` (or `--milab-ssh-user`), which win over what the suite
finds. Provision mode on real Azure builds on the server named by `host` and `user` here (it
must exist, reachable with the grader's SSH key, with passwordless sudo); against a local Azure
(`MILAB_LOCAL_AZURE=1`) it racks one through the local Azure's control endpoint.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ArcSpec:
    group: str = "arc_identity_lab"  # the group the demo builds
    location: str = "uksouth"
    machine_name: str = "onprem1"  # the Arc resource's name (`azcmagent connect --resource-name`)
    host: str | None = None  # provision mode on real Azure: the server's address
    user: str = "azureuser"  # the server's admin user, who may sudo
    vault_prefix: str = "keyvault-"
    retention_days: int = 7
    secret_name: str = "onprem-phrase"
    # The value is compared on the grader with the probe's keyed digest; never printed.
    secret_value: str = field(default="StillAliveOnPrem", repr=False)

    def vault_name(self, group_id: str) -> str:
        """The managed-identity lab's formula, `keyvault-$(md5sum <<< $resourceGroupId | cut
        -c1-8)`: a here-string appends a newline before hashing."""
        return self.vault_prefix + hashlib.md5((group_id + "\n").encode()).hexdigest()[:8]
