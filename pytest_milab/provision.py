"""Provisioning: a lab described as ordered stages, built with the SDKs.

A suite declares its lab's stages in its conftest with the `pytest_milab_stages` hook::

    from pytest_milab import Stage

    def create_group(ctx):
        ctx.clients.resource.resource_groups.create_or_update(
            ctx.group, {"location": ctx.spec.location, "tags": ctx.tags})

    def pytest_milab_stages(config, spec):
        return [Stage("resource group", create_group, checks=("resource-group",)), ...]

In provision mode the plugin runs the stages in order and runs each stage's `checks` (step ids)
right after it; `poll` names the checks that may need time to propagate, re-checked with a
deadline. `--milab-emulator` builds its demo lab with the same stages.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import NotPropagated, StageFailed
from .retry import backoff

RUN_TAG = "milab-run"


@dataclass(frozen=True)
class Stage:
    """One step of building a lab, and the steps checked once it is done."""

    name: str
    build: Callable[[ProvisionContext], None]
    checks: tuple[str, ...] = ()
    poll: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = set(self.poll) - set(self.checks)
        if unknown:
            raise ValueError(f"stage {self.name!r}: poll names {sorted(unknown)[0]!r}, which is "
                             "not among its checks")


@dataclass(frozen=True)
class Defect:
    """A lab with one step broken the way a student would break it: the suite's stages with
    some left out (`drop`), other starting values (`state`), or one more stage (`extra`) run
    after the stage named `after` (at the end when None). Suites declare theirs with the hook
    `pytest_milab_defects`; `milab emulator --lab NAME:DEFECT` builds one, and a suite's defect
    catalogue shows each check failing on one.

    `says`: words the broken step's reason contains. `seen_directly`: other steps that observe
    the defect's effect themselves (they fail with their own reason, not "needs ...")."""

    name: str
    says: str
    step: str = ""  # the step it breaks (default: the name)
    drop: tuple[str, ...] = ()
    state: dict[str, Any] = field(default_factory=dict)
    extra: Callable[[ProvisionContext], None] | None = None
    after: str | None = None
    seen_directly: tuple[str, ...] = ()

    @property
    def breaks(self) -> str:
        return self.step or self.name

    def apply(self, stages: list[Stage]) -> tuple[list[Stage], dict[str, Any]]:
        """The stages (checking nothing: they build, the grading judges) and initial state."""
        from dataclasses import replace

        known = {s.name for s in stages}
        for name in (*self.drop, *((self.after,) if self.after else ())):
            if name not in known:
                raise ValueError(f"defect {self.name!r} names stage {name!r}, which the suite "
                                 f"does not have ({', '.join(sorted(known))})")
        out = [replace(s, checks=(), poll=()) for s in stages if s.name not in self.drop]
        if self.extra is not None:
            stage = Stage(f"defect: {self.name}", self.extra)
            if self.after is None:
                out.append(stage)
            else:
                at = next(i for i, s in enumerate(out) if s.name == self.after)
                out.insert(at + 1, stage)
        return out, dict(self.state)


def principal_claims(credential) -> dict:
    """Who the credential is: the claims (`oid`, `tid`) of its ARM token, read not verified."""
    token = credential.get_token("https://management.azure.com/.default").token
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def new_run_id() -> str:
    return time.strftime("%Y%m%d%H%M%S") + "-" + secrets.token_hex(3)


@dataclass
class ProvisionContext:
    """What a stage needs: a credential and SDK clients, the lab's names and spec, SSH into its
    machine (once a stage has set `ssh_host` and `ssh_user`), and `state` to pass values
    between stages. Everything a stage creates carries `tags` (resources) or `app_tags` (app
    registrations), so `milab cleanup` can find leftovers."""

    credential: Any
    subscription_id: str
    tenant_id: str
    operator_object_id: str
    group: str
    spec: Any
    run_id: str
    ssh_public_key: str
    ssh_key_path: str
    ssh_port: int | None = None
    timeout: float = 60.0
    propagation_deadline: float = 120.0
    state: dict[str, Any] = field(default_factory=dict)
    created_apps: list[str] = field(default_factory=list)  # Graph object ids to delete
    ssh_host: str | None = None  # the lab's machine, for run_in_vm
    ssh_user: str | None = None
    ssh_config: str | None = None  # the grader's ssh config (--milab-ssh-config)

    def __post_init__(self) -> None:
        from .azure.clients import SubscriptionClients

        self.clients = SubscriptionClients(self.credential, self.subscription_id, self.timeout)

    @property
    def tags(self) -> dict[str, str]:
        return {RUN_TAG: self.run_id}

    @property
    def app_tags(self) -> list[str]:
        return [f"{RUN_TAG}:{self.run_id}"]

    @property
    def group_id(self) -> str:
        return f"/subscriptions/{self.subscription_id}/resourceGroups/{self.group}"

    def run_in_vm(self, command: str, *, timeout: float = 600):
        """Run a command in the lab's machine over SSH (at `ssh_host`, as `ssh_user`)."""
        from .vm.ssh import SshTarget, VmConnection

        if not self.ssh_host or not self.ssh_user:
            raise RuntimeError("run_in_vm needs the machine: set ctx.ssh_host and ctx.ssh_user "
                               "in the stage that creates it")
        conn = VmConnection(SshTarget(self.ssh_host, self.ssh_user, self.ssh_port,
                                      self.ssh_key_path, self.ssh_config), refused_for=180)
        try:
            return conn.run(command, timeout=timeout)
        finally:
            conn.close()

    def until_allowed(self, fn: Callable[[], Any], *, what: str = "") -> Any:
        """Call `fn` until Azure stops refusing it with 403 (a grant or access policy made
        moments ago has not propagated yet), up to the propagation deadline."""
        from azure.core.exceptions import HttpResponseError

        delays = backoff(time.monotonic() + self.propagation_deadline)
        while True:
            try:
                return fn()
            except HttpResponseError as exc:
                if exc.status_code != 403:
                    raise
                delay = next(delays, None)
                if delay is None:
                    raise NotPropagated(f"{what or 'a call'} was still refused "
                                        f"{self.propagation_deadline:.0f}s on: "
                                        f"{one_line(exc)}") from None
            time.sleep(delay)

    def graph(self, method: str, path: str, body: dict | None = None) -> dict:
        """A Microsoft Graph v1.0 call as the credential; creating an application records it
        for teardown."""
        from .azure.clients import graph_call

        data = graph_call(self.credential, method, path, body, timeout=self.timeout)
        if method == "POST" and path == "/applications":
            self.created_apps.append(data["id"])
        return data


def run_stages(ctx: ProvisionContext, stages: Iterable[Stage]) -> list[StageFailed]:
    """Run stages in order; a failing stage is recorded and the next ones still run."""
    failures = []
    for stage in stages:
        try:
            stage.build(ctx)
        except NotPropagated as exc:
            failures.append(StageFailed(stage.name, str(exc), propagating=True))
        except Exception as exc:  # noqa: BLE001 - reported as the stage's one-line reason
            failures.append(StageFailed(stage.name, one_line(exc)))
    return failures


def one_line(exc: BaseException) -> str:
    """An SDK error in one line: ARM's code and message when there is one."""
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    message = getattr(error, "message", None)
    if code and message:
        return f"{code}: {message.splitlines()[0]}"[:400]
    text = str(exc).strip().splitlines()
    return (f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__)[:400]


def teardown(ctx: ProvisionContext) -> list[str]:
    """Delete what the run created (the group, app registrations); return what remains."""
    remains = []
    try:
        poller = ctx.clients.resource.resource_groups.begin_delete(ctx.group)
        poller.result()
    except Exception as exc:  # noqa: BLE001
        if "ResourceGroupNotFound" not in str(exc) and "could not be found" not in str(exc):
            remains.append(f"resource group {ctx.group} ({one_line(exc)})")
    for app in ctx.created_apps:
        try:
            ctx.graph("DELETE", f"/applications/{app}")
        except Exception as exc:  # noqa: BLE001
            if "404" not in str(exc):
                remains.append(f"app registration {app} ({one_line(exc)})")
    return remains


def cleanup(credential, subscription_id: str, run_id: str | None = None,
            timeout: float = 60.0) -> list[str]:
    """Delete every resource group and app registration tagged by a provision run (`run_id`,
    or any run); return what was deleted."""
    ctx = ProvisionContext(credential, subscription_id, "", "", "", None, run_id or "",
                           "", "", timeout=timeout)
    deleted = []
    for group in ctx.clients.resource.resource_groups.list():
        tag = (group.tags or {}).get(RUN_TAG)
        if tag and (run_id is None or tag == run_id):
            ctx.clients.resource.resource_groups.begin_delete(group.name).result()
            deleted.append(f"resource group {group.name}")
    apps = ctx.graph("GET", "/applications").get("value", [])
    for app in apps:
        tags = [t for t in app.get("tags") or [] if t.startswith(RUN_TAG + ":")]
        if tags and (run_id is None or f"{RUN_TAG}:{run_id}" in tags):
            ctx.graph("DELETE", f"/applications/{app['id']}")
            deleted.append(f"app registration {app['displayName']} ({app['appId']})")
    return deleted


def ssh_key_pair(directory: Path) -> tuple[Path, str]:
    """The key pair provisioned VMs accept: reused from `directory` or made there."""
    from .vm.keys import generate_key_pair

    key = directory / "id_ed25519"
    pub = key.with_name(key.name + ".pub")
    if pub.exists() and key.exists():
        return key, pub.read_text().strip()
    return key, generate_key_pair(key)


def build_in_local_azure(azure, groups: Iterable[str], stages: list[Stage], spec: Any, *,
                         state: dict | None = None,
                         run_id: str = "demo") -> tuple[Path, list[StageFailed]]:
    """Build labs in a started `LocalAzure` as its operator, with the suite's stages; return
    the SSH key that reaches their VMs and any stage that failed."""
    from azure.identity import ClientSecretCredential

    key_path, public = ssh_key_pair(Path(azure.workdir) / "grader-ssh")
    op = azure.operator
    failures: list[StageFailed] = []
    with azure.environment():
        credential = ClientSecretCredential(op.tenant_id, op.client_id, op.client_secret)
        for group in groups:
            ctx = ProvisionContext(credential, azure.subscription_id, azure.tenant_id,
                                   op.object_id, group, spec, run_id, public,
                                   str(key_path), int(azure.env.get("MILAB_SSH_PORT", "22")),
                                   state=dict(state or {}))
            failures += run_stages(ctx, stages)
    return key_path, failures


class LabBuild:
    """Provision mode's progress on one lab: the stages run so far and those that failed."""

    def __init__(self, ctx: ProvisionContext, stages: list[Stage]) -> None:
        self.ctx = ctx
        self.stages = stages
        self.done = 0  # stages run
        self.failed: dict[int, StageFailed] = {}
        self.lock = threading.Lock()

    def stage_of(self, step_id: str) -> int:
        """The index of the stage after which `step_id` is checked (the last one if none)."""
        for i, stage in enumerate(self.stages):
            if step_id in stage.checks:
                return i
        return len(self.stages) - 1

    def polled(self, step_id: str) -> bool:
        return any(step_id in stage.poll for stage in self.stages)

    def run_until(self, index: int) -> bool:
        """Run the stages up to `index`; return whether any ran."""
        ran = False
        with self.lock:
            while self.done <= index and self.done < len(self.stages):
                stage = self.stages[self.done]
                failure = run_stages(self.ctx, [stage])
                if failure:
                    self.failed[self.done] = failure[0]
                self.done += 1
                ran = True
        return ran

    def failure_for(self, step_id: str) -> StageFailed | None:
        """The failure that explains a failing check: its own stage's, else that of an earlier
        stage that no check watches (its effect shows only later)."""
        index = self.stage_of(step_id)
        if index in self.failed:
            return self.failed[index]
        for i in range(index):
            if i in self.failed and not self.stages[i].checks:
                return self.failed[i]
        return None


class ProvisionDriver:
    """Provision mode for one process: a `LabBuild` per lab, each built up to the stage of the
    check about to run, checks re-run until a grant propagates, teardown at the end."""

    def __init__(self, stages: list[Stage], *, keep: bool, propagation_deadline: float,
                 run_id: str) -> None:
        self.stages = stages
        self.keep = keep
        self.deadline = propagation_deadline
        self.run_id = run_id
        self.builds: dict[str, LabBuild] = {}
        self._rank: dict[str, int] = {}
        for i, stage in enumerate(stages):
            for step in stage.checks:
                self._rank.setdefault(step, i)

    def add(self, label: str, ctx: ProvisionContext) -> None:
        self.builds[label] = LabBuild(ctx, self.stages)

    def stage_rank(self, step_id: str) -> int:
        """The stage after which a step is checked (steps of no stage: after the last)."""
        return self._rank.get(step_id, len(self.stages))

    def check(self, label: str, step_id: str, run: Callable[[], None],
              refresh: Callable[[bool], None],
              waiting: Callable[[float], None] | None = None) -> None:
        """Build the lab up to this step's stage, then run its check on fresh evidence
        (`refresh(stages_ran)`); a polled check is re-run, with fresh evidence, until the
        deadline. A failing check that a failed stage explains says so."""
        build = self.builds[label]
        refresh(build.run_until(build.stage_of(step_id)))
        failure = build.failure_for(step_id)
        deadline = time.monotonic() + self.deadline
        delays = backoff(deadline)
        while True:
            try:
                run()
                return
            except AssertionError as exc:
                from .lab import NeedsStep

                if isinstance(exc, NeedsStep):
                    raise
                if failure is not None and failure.propagating:
                    raise NotPropagated(f"{failure} ({one_line(exc)})") from None
                if failure is not None:
                    raise AssertionError(f"{failure} ({one_line(exc)})") from None
                if not build.polled(step_id):
                    raise
                delay = next(delays, None)
                if delay is None:
                    text = str(exc).strip().splitlines()
                    raise NotPropagated(f"not in force {self.deadline:.0f}s after the change: "
                                        f"{text[0] if text else repr(exc)}") from None
                if waiting is not None:
                    waiting(deadline - time.monotonic())
            time.sleep(delay)
            refresh(True)

    def finish(self) -> list[str]:
        """Tear down what this process built, unless kept; the notes that say what remains."""
        notes: list[str] = []
        for label, build in self.builds.items():
            if build.done == 0:
                continue
            ctx = build.ctx
            notes += [f"lab {label}: {f}" for f in build.failed.values()]
            if self.keep:
                notes.append(f"kept lab {label}: group {ctx.group}, {len(ctx.created_apps)} app "
                             f"registration(s); remove with `milab cleanup --run {self.run_id}`")
                continue
            remains = teardown(ctx)
            if remains:
                notes.append(f"could not remove {'; '.join(remains)}: run "
                             f"`milab cleanup --run {self.run_id}`")
            else:
                notes.append(f"removed lab {label} (group {ctx.group})")
        self.builds = {}
        return notes
