"""`Lab`: the read-only view of one lab's evidence that checks judge.

It knows no lab: a suite reads its declared reads with `lab.read(name)` and its probe parts
with `lab.probe(name)`, and usually subclasses `Lab` with properties in its own words
(`lab.vault`, `lab.identity_principal_id`), returned from its own `lab` fixture."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from .errors import CouldNotDecide, SuiteError, Unverified
from .evidence import LabEvidence, SshOutcome
from .provenance import CONTROL_PLANE, REFUTING, SIGNED, VM_REPORTED, note
from .vm.probe import part_result


class NeedsStep(AssertionError):
    """A prerequisite of this check failed: the check fails with "needs <step>"."""


class Lab:
    """One lab as gathered: its names, the reads the suite declared and the probe's results.

    Reading something Azure could not be asked about raises `CouldNotDecide`, so the check
    ends `error` rather than `failed`; a missing machine fails with "needs ssh: ..."."""

    def __init__(self, evidence: LabEvidence, spec: Any = None) -> None:
        self.evidence = evidence
        self.spec = spec

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label} group={self.group_name}>"

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

    # -- control plane -------------------------------------------------------------------------
    def read(self, name: str) -> Any:
        """The JSON of a declared read (None when ARM said 404)."""
        ev = self.evidence
        note(CONTROL_PLANE)
        if ev.problem:
            raise CouldNotDecide(ev.problem)
        if ev.declared_reads is not None and name not in ev.declared_reads:
            raise SuiteError(f"lab.read({name!r}): no read is named {name!r}; declare it in "
                             "pytest_milab_reads")
        if name in ev.not_made:
            raise SuiteError(f"lab.read({name!r}): that read is made only when the machine "
                             "refuses SSH (on_refusal=True), and it did not: a check cannot "
                             "rely on it")
        if name in ev.errors:
            raise CouldNotDecide(f"could not read the {name.replace('_', ' ')}: "
                                 f"{ev.errors[name]}")
        return ev.control.get(name)

    def arrived(self, name: str) -> bool:
        """Whether the read `name` is in (answered or failed). Always, once the lab is
        gathered; while it is being read, the engine asks the suite's machine as the reads
        come in (to log in to it sooner), and `read` of one still in flight raises
        `ReadPending` (the engine asks again later)."""
        return name not in getattr(self.evidence.control, "pending", ())

    @property
    def group(self) -> dict | None:
        return self.read("group")

    @property
    def group_id(self) -> str | None:
        return (self.group or {}).get("id")

    @property
    def cli_unavailable_reason(self) -> str | None:
        """Why the Azure CLI cannot be in the machine at all (a local Azure without one)."""
        return self.evidence.cli_unavailable

    # -- inside the machine ----------------------------------------------------------------------
    @property
    def ssh(self) -> SshOutcome:
        """How SSH to the machine went (`ok`, `refused`, `error`, `target`, `host_key`).
        Cannot decide when SSH failed for a reason the lab does not explain."""
        ssh = self.evidence.ssh or SshOutcome(refused=True, error="the lab has no machine")
        if ssh.error and not ssh.ok and not ssh.refused:
            raise (Unverified if ssh.unverified else CouldNotDecide)(ssh.error)
        return ssh

    def probe(self, name: str) -> dict:
        """One part's result. Fails with "needs ssh" when the machine did not answer, and
        cannot decide when the grader's side of SSH failed."""
        note(VM_REPORTED)
        return self._part(name)

    def refute_with(self, name: str) -> dict:
        """A part's result for a check that uses it only to *fail* (its pass rests on signed or
        control-plane evidence): the machine's word can then cost the student, never earn a
        pass, so a step that passes keeps its provenance; one that does not pass is
        `vm-reported` (the machine's word may be what failed it). Use `probe` for anything a
        pass needs."""
        note(REFUTING)
        return self._part(name)

    def signed(self, name: str) -> dict | None:
        """The verified content of a signed part (`probe.attested`, `probe.signed_token`):
        notes `signed`. None when the grader did not ask for the part in this run (a signed
        token without --milab-evidence-audience), whatever the machine answered under its name.
        Fails with the grader's reason when the document or token is not genuine (forged,
        replayed, another VM's) or the machine's answer left it out, or when the machine got
        none; unverified when it could not run in the machine."""
        ev = self.evidence
        answered = ev.probe is not None and not ev.problem
        declared = ev.declared_parts is None or name in ev.declared_parts
        if answered and declared and ev.signed_parts is not None \
                and name not in ev.signed_parts:
            return None
        if answered and declared and name not in ev.probe:
            note(SIGNED)  # asked for, and left out of the machine's answer
            raise AssertionError(f"the machine's answer leaves out {name}, which the grader "
                                 "asked for: the probe's answer was altered")
        result = self._part(name)
        if "unverified" in result:
            raise Unverified(result["unverified"])
        if "verified" in result:
            note(SIGNED)
            return result["verified"]
        if "undecided" in result:
            raise CouldNotDecide(result["undecided"])
        if "refused" in result:
            note(SIGNED)
            raise AssertionError(result["refused"])
        note(VM_REPORTED)
        if result.get("skipped"):
            raise AssertionError(f"{name} was not asked for: {result['skipped']}")
        raise AssertionError(f"{name}: the machine got none ({result.get('status')} "
                             f"{result.get('code') or ''}: {result.get('message') or ''})"
                             .replace(" : ", ": ").strip())

    def _part(self, name: str) -> dict:
        ev = self.evidence
        if ev.problem:
            raise CouldNotDecide(ev.problem)
        if ev.declared_parts is not None and name not in ev.declared_parts:
            raise SuiteError(f"lab.probe({name!r}): no probe part is named {name!r}; declare "
                             "it in pytest_milab_probe")
        ssh = ev.ssh or SshOutcome(refused=True, error="the lab has no machine")
        if ev.probe is None:
            if ssh.refused:
                raise NeedsStep(f"needs ssh: {ssh.error or 'the machine was not reached'}")
            if ssh.unverified:
                raise Unverified(f"the machine did not let the grader see: {ssh.error}")
            raise CouldNotDecide(ssh.error or "the in-machine probe did not run")
        # The machine writes the probe's answer: a part it left out or says could not run is
        # the machine not letting the grader see (counted, no points), never the grader's
        # trouble. (Read past `ProbeResults`' note: the caller notes what it relies on.)
        return part_result(name, dict.get(ev.probe, name))

    def same_secret(self, found: Any, expected: str) -> bool:
        """Whether a keyed digest the probe returned is that of `expected` (compared here, on
        the grader: the machine is never told what is expected)."""
        if not isinstance(found, dict) or not isinstance(found.get("hmac"), str):
            return False
        want = hmac.new(self.evidence.digest_key, expected.encode("utf-8"),
                        hashlib.sha256).hexdigest()
        return hmac.compare_digest(found["hmac"], want)
