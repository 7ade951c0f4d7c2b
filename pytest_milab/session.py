"""`MilabSession`: the state of one pytest run — settings, the local Azure when asked for,
evidence per lab, SSH connections, and the check results that become grades."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from . import grading
from .errors import CouldNotDecide, MilabError
from .evidence import Connections, Gatherer, LabEvidence
from .grading import CheckResult, LabInfo, StepInfo
from .lab import NeedsStep
from .settings import LabTarget, Settings, resolve
from .sharing import lab_share
from .spec import LabSpec
from .vm.probe import Vm

EMULATOR_GROUP = "managed_identity_lab"


class MilabSession:
    """Registered as a plugin, so it also receives the reports of every test (and of xdist
    workers, on the controller)."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.steps: list[StepInfo] = []
        self._ranks: dict[str, int] = {}
        self._local: dict[tuple[str, str], list[CheckResult]] = {}
        self._checks: list[CheckResult] = []
        self._step_infos: dict[str, tuple[int, StepInfo]] = {}
        self._lab_infos: dict[str, LabInfo] = {}
        self._evidence: dict[str, LabEvidence] | None = None
        self._evidence_lock = threading.Lock()
        self._pending: dict[str, Future] = {}
        self._labs_to_gather: list[str] | None = None  # None: every lab of the roster
        self._stale: set[str] = set()
        self._saved_env: dict[str, str | None] = {}
        self.azure = None  # the in-process local Azure (--milab-emulator)
        self.gatherer: Gatherer | None = None
        self.connections = Connections()
        self.results: list[grading.LabResult] | None = None
        self.notes: list[str] = []
        self.run_id = ""
        self.credential = None
        self.builds: dict = {}  # label -> provision.LabBuild (provision mode)
        self._stage_rank: dict[str, int] = {}

    @classmethod
    def from_config(cls, config: pytest.Config) -> MilabSession:
        from .settings import OPTIONS

        cli = {o.name: config.getoption(o.dest) for o in OPTIONS}
        ini = {}
        for o in OPTIONS:
            value = config.getini(f"milab_{o.name.replace('-', '_')}")
            ini[o.name] = value if value not in ("", []) else None
        return cls(config, resolve(cli, ini, rootdir=Path(str(config.rootpath))))

    # -- start and stop ----------------------------------------------------------------------
    def start(self) -> None:
        from .provision import new_run_id

        worker = getattr(self.config, "workerinput", None)
        given = worker.get("milab") if worker is not None else None
        if given:
            self._apply_env(given["env"])
            settings = dict(given["settings"])
            settings["targets"] = tuple(LabTarget(**t) for t in settings["targets"])
            self.settings = replace(self.settings, **settings)
            self.run_id = given["run_id"]
        else:
            self.run_id = new_run_id()
            if self.settings.emulator:
                self._start_emulator()
            if self.provisioning and not self.settings.targets:
                group = f"milab-lab-{self.run_id}"
                self.settings = replace(self.settings,
                                        targets=(LabTarget(group=group, label=group),))
        from .azure.clients import (
            ClientPool,
            check_credential,
            default_subscription,
            make_credential,
        )

        self.credential = credential = make_credential()
        if worker is None:
            check_credential(credential)
        pool = ClientPool(credential, self.settings.timeout, self.settings.concurrency * 2)
        self.gatherer = Gatherer(self.settings, LabSpec(), pool, self.connections,
                                 lambda: default_subscription(credential, self.settings.timeout))
        local = self.settings.emulator or os.environ.get("MILAB_LOCAL_AZURE") == "1"
        if local and not os.environ.get("MILAB_AZ_CLI"):
            self.gatherer.cli_unavailable = ("the local Azure has no Azure CLI configured "
                                             "(set MILAB_AZ_CLI to an `az` to check this step)")
        if self.provisioning:
            self._prepare_builds()

    @property
    def provisioning(self) -> bool:
        return self.settings.mode == "provision"

    def _stages(self):
        stages = self.config.hook.pytest_milab_stages(config=self.config)
        if not stages:
            raise MilabError(f"{'provision mode' if self.provisioning else '--milab-emulator'} "
                             "builds the lab with the suite's stages, and no conftest implements "
                             "pytest_milab_stages: run the example suite, or declare your lab's "
                             "stages (see pytest_milab.provision)")
        return stages

    def _start_emulator(self) -> None:
        try:
            from .emulator import LocalAzure
        except ImportError as exc:
            raise MilabError(f"--milab-emulator needs the emulator extra ({exc.name} is "
                             "missing): pip install 'pytest-milab[emulator]'") from None
        from .provision import build_in_local_azure, ssh_key_pair

        stages = self._stages()
        self.azure = LocalAzure().start()
        env = dict(self.azure.env)
        port = int(env.get("MILAB_SSH_PORT", "22"))
        sub = self.azure.subscription_id
        if self.provisioning:
            # Provision mode builds as the operator (Owner); the lab is built by the run itself.
            key_path, _ = ssh_key_pair(Path(self.azure.workdir) / "grader-ssh")
            self._apply_env(env)
            self.settings = replace(self.settings, ssh_key=str(key_path), ssh_port=port,
                                    subscription=sub)
            return
        groups = self.settings.groups or (EMULATOR_GROUP,)
        key_path, failures = build_in_local_azure(self.azure, groups, stages)
        # A stage the local Azure cannot play (no Azure CLI to install) still leaves a lab to
        # grade; its steps say so.
        self.notes += [f"building the demo lab: {f}" for f in failures]
        env.update({"AZURE_CLIENT_ID": self.azure.grader.client_id,
                    "AZURE_CLIENT_SECRET": self.azure.grader.client_secret})
        self._apply_env(env)
        targets = [LabTarget(group=g, label=g) for g in groups]
        self.settings = replace(self.settings, targets=tuple(targets), ssh_key=str(key_path),
                                ssh_port=port, subscription=sub)

    def _prepare_builds(self) -> None:
        """Provision mode: one `LabBuild` per lab; nothing is created until a check needs it."""
        import tempfile

        from .azure.clients import default_subscription
        from .provision import LabBuild, ProvisionContext, principal_claims, ssh_key_pair

        stages = self._stages()
        self._stage_rank = {}
        for i, stage in enumerate(stages):
            for step in stage.checks:
                self._stage_rank.setdefault(step, i)
        if self.settings.ssh_key:
            key = Path(self.settings.ssh_key)
            pub = key.with_name(key.name + ".pub")
            if not pub.exists():
                raise MilabError(f"--milab-ssh-key {key}: provision mode also needs {pub}, the "
                                 "public key the VMs will accept")
            public = pub.read_text().strip()
        else:
            key, public = ssh_key_pair(Path(tempfile.mkdtemp(prefix="milab-ssh-")))
            self.settings = replace(self.settings, ssh_key=str(key))
        subscription = (self.settings.subscription or os.environ.get("AZURE_SUBSCRIPTION_ID")
                        or default_subscription(self.credential, self.settings.timeout))
        self.settings = replace(self.settings, subscription=subscription)
        self.gatherer.settings = self.settings
        claims = principal_claims(self.credential)
        for target in self.settings.targets:
            if target.problem:
                continue
            ctx = ProvisionContext(self.credential, target.subscription or subscription,
                                   claims["tid"], claims["oid"], target.group, LabSpec(),
                                   self.run_id, public, str(key), self.settings.ssh_port,
                                   self.settings.timeout, self.settings.propagation_deadline)
            self.builds[target.label] = LabBuild(ctx, stages)

    def stage_rank(self, step_id: str) -> int:
        return self._stage_rank.get(step_id, len(self._stage_rank))

    def _apply_env(self, env: dict[str, str]) -> None:
        for key, value in env.items():
            self._saved_env.setdefault(key, os.environ.get(key))
            os.environ[key] = value

    def worker_input(self) -> dict:
        """What the controller decided that workers must share: the local Azure's env, the
        labs (with fresh group names in provision mode), the run id and SSH key."""
        if not self.settings.active:
            return {}
        s = self.settings
        return {"env": {k: os.environ[k] for k in self._saved_env}, "run_id": self.run_id,
                "settings": {"targets": [asdict(t) for t in s.targets], "ssh_key": s.ssh_key,
                             "ssh_port": s.ssh_port, "subscription": s.subscription}}

    def stop(self) -> None:
        if self.gatherer is not None:
            self.gatherer.close()  # a run that ends early gathers no more labs
        self.connections.close_all()
        if self.azure is not None:
            self.azure.stop()
            self.azure = None
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()

    # -- evidence -------------------------------------------------------------------------------
    def evidence_for(self, target: LabTarget, spec: LabSpec,
                     request: pytest.FixtureRequest) -> LabEvidence:
        if self.provisioning:
            # One evidence object per lab, refreshed in place as the lab is built.
            with self._evidence_lock:
                self.gatherer.spec = spec
                if self._evidence is None:
                    self._evidence = {}
                if target.label not in self._evidence:
                    self._evidence[target.label] = LabEvidence(
                        label=target.label, group=target.group, student=target.student,
                        subscription=self.settings.subscription, mode="provision")
                    self._stale.add(target.label)
                return self._evidence[target.label]
        with self._evidence_lock:
            if self._evidence is None:
                self._evidence, self._pending = {}, self._gather_once(spec)
            if target.label not in self._evidence:
                self.gatherer.judging(target.label)
                pending = self._pending.get(target.label)
                # This lab only: the next ones are still being gathered while it is judged.
                # A lab outside this process's share (under xdist, its worker gone) is
                # gathered now.
                self._evidence[target.label] = (pending.result() if pending is not None
                                                else self.gatherer.gather(target))
        return self._evidence[target.label]

    def set_collected_labs(self, scopes: dict[str, list[str]]) -> None:
        """The labs whose checks were collected, by scheduling scope in collection order; under
        xdist, only the labs of this worker's share of the scopes (see `sharing`)."""
        names = list(scopes)
        worker = getattr(self.config, "workerinput", None)
        if worker is not None:
            names = lab_share(names, worker.get("workerid", ""), worker.get("workercount", 1))
        labels: dict[str, None] = {}
        for name in names:
            labels.update(dict.fromkeys(scopes[name]))
        self._labs_to_gather = list(labels)

    def _gather_once(self, spec: LabSpec) -> dict[str, Future]:
        """Start gathering the evidence of every lab this process grades, at once."""
        assert self.gatherer is not None
        self.gatherer.spec = spec
        wanted = self._labs_to_gather
        targets = [t for t in self.settings.targets if not t.problem
                   and (wanted is None or t.label in wanted)]
        # Gathering runs ahead of judging by twice the labs gathered at once: enough to keep
        # the pool busy, and a bound on the labs (and SSH connections) waiting to be judged.
        return self.gatherer.start_all(targets, ahead=2 * self.settings.concurrency)

    def vm_for(self, target: LabTarget, evidence: LabEvidence) -> Vm:
        from .errors import SshError
        from .evidence import ssh_target_for

        if evidence.problem:
            raise CouldNotDecide(evidence.problem)
        if not evidence.control.get("vm"):
            raise NeedsStep("needs vm: " + (evidence.ssh.get("error") or "no VM"))
        try:
            ssh_target = ssh_target_for(evidence, target, self.settings)
        except SshError as exc:
            if exc.refused:
                raise NeedsStep(f"needs ssh: {exc}") from None
            raise CouldNotDecide(str(exc)) from None
        if evidence.ssh.get("refused"):
            raise NeedsStep(f"needs ssh: {evidence.ssh.get('error')}")
        return Vm(self.connections.get(target.label, ssh_target))

    # -- provision mode ---------------------------------------------------------------------------
    def refresh(self, target: LabTarget) -> None:
        fresh = self.gatherer.gather(target)
        fresh.mode = "provision"
        self._evidence[target.label].__dict__.update(fresh.__dict__)
        self._stale.discard(target.label)

    def run_provisioned(self, item: pytest.Function, info: StepInfo, target: LabTarget) -> None:
        """Build the lab up to this check's stage, then run the check on fresh evidence;
        a check that may need time to propagate is re-run until the deadline."""
        from .errors import NotPropagated
        from .provision import one_line

        build = self.builds[target.label]
        if build.run_until(build.stage_of(info.id)):
            self._stale.add(target.label)
        if target.label in self._stale:
            self.refresh(target)
        failure = build.failure_for(info.id)
        args = {name: item.funcargs[name] for name in item._fixtureinfo.argnames}
        deadline = time.monotonic() + self.settings.propagation_deadline
        delay = 1.0
        while True:
            try:
                item.obj(**args)
                return
            except NeedsStep:
                raise
            except AssertionError as exc:
                if failure is not None and failure.propagating:
                    raise NotPropagated(f"{failure} ({one_line(exc)})") from None
                if failure is not None:
                    raise AssertionError(f"{failure} ({one_line(exc)})") from None
                if not build.polled(info.id):
                    raise
                if time.monotonic() + delay > deadline:
                    raise NotPropagated(
                        f"not in force {self.settings.propagation_deadline:.0f}s after the "
                        f"change: {str(exc).strip().splitlines()[0] if str(exc) else exc!r}"
                    ) from None
            time.sleep(delay)
            delay = min(delay * 1.5, 10.0)
            self.refresh(target)

    def finish_provision(self) -> None:
        """Tear down what this process built, unless --milab-keep; say what remains."""
        from .provision import teardown

        for label, build in self.builds.items():
            if build.done == 0:
                continue
            ctx = build.ctx
            self.notes += [f"lab {label}: {f}" for f in build.failed.values()]
            if self.settings.keep:
                self.notes.append(f"kept lab {label}: group {ctx.group}, "
                                  f"{len(ctx.created_apps)} app registration(s); remove with "
                                  f"`milab cleanup --run {self.run_id}`")
                continue
            remains = teardown(ctx)
            if remains:
                self.notes.append(f"could not remove {'; '.join(remains)}: run "
                                  f"`milab cleanup --run {self.run_id}`")
            else:
                self.notes.append(f"removed lab {label} (group {ctx.group})")
        self.builds = {}

    def subscription_of(self, label: str) -> str:
        if self._evidence and label in self._evidence:
            return self._evidence[label].subscription or ""
        return ""

    # -- steps and results -----------------------------------------------------------------------
    def set_steps(self, steps: list[StepInfo]) -> None:
        self.steps = steps
        self._ranks = {s.id: i for i, s in enumerate(steps)}

    def step_rank(self, step_id: str) -> int:
        return self._ranks.get(step_id, len(self._ranks))

    def record_local(self, label: str, step_id: str, outcome: str) -> None:
        self._local.setdefault((label, step_id), []).append(
            CheckResult(label, step_id, outcome))

    def prerequisite(self, label: str, info: StepInfo) -> tuple[str, str] | None:
        """What this process already knows of the step's prerequisites for this lab."""
        known = {need: grading.combine(self._local[(label, need)])
                 for need in info.needs if (label, need) in self._local}
        return grading.prerequisite_outcome(info, known)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties or ())
        if report.when == "teardown" or "milab_outcome" not in props:
            return
        step = StepInfo(props["milab_step"], props["milab_title"], props["milab_points"],
                        tuple(n for n in props["milab_needs"].split(",") if n))
        self._step_infos.setdefault(step.id, (int(props["milab_step_rank"]), step))
        self._lab_infos.setdefault(props["milab_lab"], LabInfo(
            props["milab_lab"], props["milab_group"], props["milab_subscription"] or None,
            props["milab_student"] or None))
        self._checks.append(CheckResult(props["milab_lab"], step.id, props["milab_outcome"],
                                        props["milab_reason"], report.nodeid))

    def grade(self) -> tuple[list[grading.LabResult], list[StepInfo]]:
        steps = [s for _, s in sorted(self._step_infos.values(), key=lambda x: x[0])]
        labs = []
        for target in self.settings.targets:
            if target.problem:
                labs.append(LabInfo(target.label, target.group, target.subscription,
                                    target.student, target.problem))
            elif target.label in self._lab_infos:
                labs.append(self._lab_infos[target.label])
        self.results = grading.grade(labs, steps, self._checks)
        return self.results, steps
