"""`Lab`: the public, read-only view of one lab's evidence that checks judge."""

from __future__ import annotations

from typing import Any

from .errors import CouldNotDecide
from .evidence import LabEvidence
from .spec import LabSpec

ROLE_NAMES = {
    "8e3af657-a8ff-443c-a75c-2fe8c4bcb635": "Owner",
    "b24988ac-6180-42a0-ab88-20f7382dd24c": "Contributor",
    "acdd72a7-3385-48ef-bd42-f606fba81ae7": "Reader",
    "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9": "User Access Administrator",
    "4633458b-17de-408a-b874-0445c86b69e6": "Key Vault Secrets User",
    "b86a8fe4-44ce-4948-aee5-eccb2c155cd7": "Key Vault Secrets Officer",
}


class NeedsStep(AssertionError):
    """A prerequisite of this check failed: the check fails with "needs <step>"."""


def _props(resource: dict | None) -> dict:
    return (resource or {}).get("properties") or {}


class Lab:
    """One lab as discovered: names, ids, the ARM resources, the vault, the VM and its identity.

    Reading something that Azure could not be asked about raises `CouldNotDecide`, so the check
    ends `error` rather than `failed`.
    """

    def __init__(self, evidence: LabEvidence, spec: LabSpec) -> None:
        self.evidence = evidence
        self.spec = spec

    def __repr__(self) -> str:
        return f"<Lab {self.label} group={self.group_name} subscription={self.subscription}>"

    # -- identity of the lab -------------------------------------------------------------------
    @property
    def label(self) -> str:
        return self.evidence.label

    @property
    def group_name(self) -> str:
        return self.evidence.group

    @property
    def subscription(self) -> str | None:
        return self.evidence.subscription

    @property
    def student(self) -> str | None:
        return self.evidence.student

    @property
    def mode(self) -> str:
        """"discover" (a finished lab, read-only) or "provision" (built step by step: a check
        sees the lab as it is when its stage is done)."""
        return self.evidence.mode

    def _get(self, name: str) -> Any:
        if self.evidence.problem:
            raise CouldNotDecide(self.evidence.problem)
        if name in self.evidence.errors:
            raise CouldNotDecide(f"could not read the {name.replace('_', ' ')}: "
                                 f"{self.evidence.errors[name]}")
        return self.evidence.control.get(name)

    # -- control plane -------------------------------------------------------------------------
    @property
    def group(self) -> dict | None:
        return self._get("group")

    @property
    def group_id(self) -> str | None:
        return (self.group or {}).get("id")

    @property
    def resources(self) -> list[dict]:
        return self._get("resources") or []

    @property
    def vault_name(self) -> str | None:
        """The vault name the lab's formula gives for this group."""
        return self.spec.vault_name(self.group_id) if self.group_id else None

    @property
    def vault(self) -> dict | None:
        return self._get("vault")

    @property
    def vaults_in_group(self) -> list[dict]:
        return [r for r in self.resources
                if r.get("type", "").lower() == "microsoft.keyvault/vaults"]

    @property
    def access_policies(self) -> list[dict]:
        return _props(self.vault).get("accessPolicies") or []

    def access_policy_for(self, object_id: str | None) -> dict | None:
        for policy in self.access_policies:
            if object_id and policy.get("objectId", "").lower() == object_id.lower():
                return policy
        return None

    @property
    def vm(self) -> dict | None:
        return self._get("vm")

    @property
    def identity_principal_id(self) -> str | None:
        """The VM's system-assigned identity (None without one)."""
        identity = (self.vm or {}).get("identity") or {}
        if "systemassigned" not in str(identity.get("type", "")).lower().replace(" ", ""):
            return None
        return identity.get("principalId")

    @property
    def nic(self) -> dict | None:
        return self._get("nic")

    @property
    def public_ip(self) -> dict | None:
        return self._get("public_ip")

    @property
    def vnet(self) -> dict | None:
        return self._get("vnet")

    @property
    def subnet_id(self) -> str | None:
        return self.evidence.control.get("subnet_id")

    @property
    def role_assignments(self) -> list[dict]:
        """Assignments at, above and below the group, each with `roleName` added."""
        out = []
        for ra in self._get("role_assignments") or []:
            props = dict(ra.get("properties") or ra)
            guid = str(props.get("roleDefinitionId", "")).rsplit("/", 1)[-1].lower()
            props["roleName"] = ROLE_NAMES.get(guid, guid)
            out.append(props)
        return out

    def assignments_for(self, principal_id: str | None, role: str | None = None) -> list[dict]:
        return [ra for ra in self.role_assignments
                if principal_id and str(ra.get("principalId", "")).lower() == principal_id.lower()
                and (role is None or ra["roleName"].lower() == role.lower())]

    @property
    def cli_unavailable_reason(self) -> str | None:
        """Why the Azure CLI cannot be in this VM at all (a local Azure without one), else None."""
        return self.evidence.cli_unavailable

    # -- inside the VM ---------------------------------------------------------------------------
    @property
    def ssh(self) -> dict:
        """How SSH to the VM went: `ok`, `target`, `error`, `refused` (the lab itself keeps SSH
        out). Cannot decide when SSH failed for another reason: the grader's login, a broken
        connection, or a refusal nothing in the lab explains."""
        ssh = self.evidence.ssh or {}
        if ssh.get("error") and not ssh.get("ok") and not ssh.get("refused"):
            raise CouldNotDecide(ssh["error"])
        return ssh

    def probe(self, name: str) -> dict:
        """One result of the in-VM probe. Fails with "needs ssh" when the VM did not answer,
        and cannot decide when the grader's side of SSH failed."""
        if self.evidence.problem:
            raise CouldNotDecide(self.evidence.problem)
        ssh = self.evidence.ssh or {}
        if self.evidence.probe is None:
            if ssh.get("refused") or not ssh:
                raise NeedsStep(f"needs ssh: {ssh.get('error') or 'the VM was not reached'}")
            raise CouldNotDecide(ssh.get("error") or "the in-VM probe did not run")
        result = self.evidence.probe.get(name)
        if result is None:
            raise CouldNotDecide(f"the in-VM probe has no result for {name}")
        if set(result) == {"error"}:
            raise CouldNotDecide(f"in the VM, {name} could not run: {result['error']}")
        return result
