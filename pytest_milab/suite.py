"""`Suite`: what the lab's suite told the engine through its hooks, asked once per run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .azure.reads import Read, check_reads
from .errors import CouldNotDecide, ReadPending, SuiteError
from .probe import Probe

if TYPE_CHECKING:
    import pytest

    from .evidence import LabEvidence
    from .provision import Stage


@dataclass
class Suite:
    spec: Any = None
    reads: list[Read] = field(default_factory=list)
    machine: Callable[[Any], Any] | None = None
    probe: Probe | None = None
    _stages: Callable[[], Any] | None = None

    @property
    def read_names(self) -> frozenset[str]:
        return frozenset(r.name for r in self.reads) | {"group"}

    @property
    def part_names(self) -> frozenset[str]:
        return frozenset(self.probe.names if self.probe else ())

    @classmethod
    def from_hooks(cls, config: pytest.Config) -> Suite:
        hook = config.hook
        spec = hook.pytest_milab_spec(config=config)
        reads = hook.pytest_milab_reads(spec=spec)
        probe = hook.pytest_milab_probe(spec=spec)
        if reads is not None and not isinstance(reads, (list, tuple)):
            raise SuiteError(f"pytest_milab_reads returned {type(reads).__name__}, not a list "
                             "of pytest_milab.Read")
        if probe is not None and not isinstance(probe, Probe):
            raise SuiteError(f"pytest_milab_probe returned {type(probe).__name__}, not a "
                             "pytest_milab.Probe")
        machine = None
        if hook.pytest_milab_machine.get_hookimpls():
            def machine(lab):
                return hook.pytest_milab_machine(spec=spec, lab=lab)

        def stages():
            return hook.pytest_milab_stages(config=config, spec=spec)

        return cls(spec=spec, reads=check_reads(reads or ()), machine=machine, probe=probe,
                   _stages=stages)

    def stages(self) -> list[Stage]:
        from .provision import Stage

        stages = self._stages() if self._stages is not None else None
        if not stages:
            raise SuiteError("building a lab takes the suite's stages, and no conftest "
                             "implements pytest_milab_stages: run a suite that declares its "
                             "lab's stages (see pytest_milab.hookspecs)")
        for stage in stages:
            if not isinstance(stage, Stage):
                raise SuiteError(f"pytest_milab_stages returned {stage!r}, not a "
                                 "pytest_milab.Stage")
        return list(stages)

    @property
    def demo_group(self) -> str:
        """The group the demo builds: the spec's `group` when it has one."""
        return str(getattr(self.spec, "group", "") or "milab-demo")

    def probe_program(self, ev: LabEvidence, deadline: float,
                      evidence_audience: str | None = None) -> list[dict]:
        """The probe's parts as the machine runs them for this lab (`{deadline}`: the seconds
        one part may take, ten less than the whole probe). An attested document is asked for
        with a fresh nonce per lab; a signed token for the evidence audience, only when there
        is one."""
        import secrets

        from .lab import Lab

        assert self.probe is not None
        lab = Lab(ev, self.spec)
        fields = {"group_id": lab.group_id, "group": ev.group, "subscription": ev.subscription,
                  "spec": self.spec, "deadline": max(5.0, deadline - 10)}
        if self.probe.fields is not None:
            try:
                fields.update(self.probe.fields(lab) or {})
            except (CouldNotDecide, ReadPending):
                raise
            except Exception as exc:  # noqa: BLE001 - the suite's trouble, never the student's
                raise CouldNotDecide(f"the suite's probe fields raised {type(exc).__name__}: "
                                     f"{exc}") from None
        programs = []
        for part in self.probe.parts:
            program = part.program(fields)
            if part.op == "attested":
                program["nonce"] = f"{secrets.randbelow(10 ** 10):010d}"  # as documented
            elif part.op == "signed_token":
                if not evidence_audience:
                    continue
                program["audience"] = evidence_audience
            programs.append(program)
        return programs
