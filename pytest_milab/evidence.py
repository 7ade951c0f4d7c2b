"""Evidence first, verdicts second: what each lab shows (control plane + one in-VM probe),
gathered once per lab and concurrently across labs, with one SSH connection per VM."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from .azure.clients import ClientPool
from .azure.discover import Discovery
from .errors import MilabError, SshError
from .settings import LabTarget, Settings
from .spec import LabSpec
from .vm.probe import run_probe
from .vm.ssh import SshTarget, VmConnection


@dataclass
class LabEvidence:
    """The standard facts of one lab. Holds no secret and no token, so it may be stored."""

    label: str
    group: str
    subscription: str | None = None
    student: str | None = None
    problem: str | None = None  # the lab could not be graded at all (bad roster line, ...)
    control: dict[str, Any] = field(default_factory=dict)  # ARM JSON by name
    errors: dict[str, str] = field(default_factory=dict)  # name -> why it could not be read
    ssh: dict[str, Any] = field(default_factory=dict)  # target, ok, refused, error
    probe: dict[str, Any] | None = None  # the in-VM probe's results
    cli_unavailable: str | None = None  # why the Azure CLI cannot be installed (local Azure)
    mode: str = "discover"  # provision: gathered as the lab is built, step by step
    seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> LabEvidence:
        return cls(**data)


class Connections:
    """The session's SSH connections, one per lab's VM, closed at the end."""

    def __init__(self, connect_timeout: float = 15.0) -> None:
        self.connect_timeout = connect_timeout
        self._by_label: dict[str, VmConnection] = {}
        self._lock = threading.Lock()

    def get(self, label: str, target: SshTarget) -> VmConnection:
        with self._lock:
            conn = self._by_label.get(label)
            if conn is None or conn.target != target:
                conn = VmConnection(target, connect_timeout=self.connect_timeout)
                self._by_label[label] = conn
            return conn

    @property
    def opened(self) -> int:
        return sum(c.connections_opened for c in self._by_label.values())

    def close_all(self) -> None:
        with self._lock:
            conns, self._by_label = list(self._by_label.values()), {}
        for conn in conns:
            try:
                conn.close()
            except Exception:  # closing is best effort at session end
                pass


def ssh_target_for(evidence: LabEvidence, target: LabTarget, settings: Settings) -> SshTarget:
    """Where the lab's VM answers SSH, from the roster, the options and ARM."""
    vm = evidence.control.get("vm") or {}
    pip = evidence.control.get("public_ip") or {}
    host = target.ssh_host or (pip.get("properties") or {}).get("ipAddress")
    if not host:
        raise SshError("the VM has no public IP address to SSH to (expected "
                       "public IP resource with an address on its NIC)", refused=True)
    user = (target.ssh_user or settings.ssh_user
            or ((vm.get("properties") or {}).get("osProfile") or {}).get("adminUsername"))
    if not user:
        raise SshError("no SSH user: the VM's admin user is not readable; pass --milab-ssh-user")
    return SshTarget(host=host, user=user, port=settings.ssh_port,
                     key_filename=target.ssh_key or settings.ssh_key)


def probe_params(spec: LabSpec, subscription: str, group: str, vault: str) -> dict:
    return {"subscription": subscription, "group": group, "vault": vault,
            "secret": spec.secret_name, "secret_sha256": spec.secret_sha256,
            "sp_secret_names": list(spec.sp_secret_names)}


class Gatherer:
    """Gathers `LabEvidence` for many labs with a bounded pool of threads."""

    def __init__(self, settings: Settings, spec: LabSpec, clients: ClientPool,
                 connections: Connections, default_subscription) -> None:
        self.settings = settings
        self.spec = spec
        self.clients = clients
        self.connections = connections
        self._default_subscription = default_subscription  # callable, resolved once on demand
        self._sub_lock = threading.Lock()
        self._sub: str | None | MilabError = None
        self.cli_unavailable: str | None = None

    def subscription_for(self, target: LabTarget) -> str:
        if target.subscription:
            return target.subscription
        if self.settings.subscription:
            return self.settings.subscription
        with self._sub_lock:
            if self._sub is None:
                try:
                    self._sub = self._default_subscription()
                except MilabError as exc:
                    self._sub = exc
        if isinstance(self._sub, MilabError):
            raise self._sub
        return self._sub

    def gather_all(self, targets: list[LabTarget]) -> dict[str, LabEvidence]:
        workers = max(1, min(self.settings.concurrency, len(targets)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="milab-lab") as pool:
            results = list(pool.map(self.gather, targets))
        return {e.label: e for e in results}

    def gather(self, target: LabTarget) -> LabEvidence:
        t0 = time.perf_counter()
        ev = LabEvidence(label=target.label, group=target.group, student=target.student,
                         problem=target.problem, cli_unavailable=self.cli_unavailable)
        if target.problem:
            return ev
        try:
            ev.subscription = self.subscription_for(target)
        except MilabError as exc:
            ev.problem = str(exc)
            return ev
        discovery = Discovery(self.clients.for_subscription(ev.subscription), target.group,
                              self.spec)
        try:
            discovery.run()
        except Exception as exc:  # an SDK surprise must not lose the rest of the class
            discovery.errors.setdefault("group", f"discovery failed: {type(exc).__name__}: {exc}")
        ev.control, ev.errors = discovery.control, discovery.errors
        self._probe(ev, target)
        ev.seconds = time.perf_counter() - t0
        return ev

    def _probe(self, ev: LabEvidence, target: LabTarget) -> None:
        if not ev.control.get("vm"):
            reason = ("the VM could not be read" if "vm" in ev.errors
                      else f"there is no VM '{self.spec.vm_name}'")
            ev.ssh = {"ok": False, "refused": "vm" not in ev.errors, "error": reason}
            return
        try:
            ssh_target = ssh_target_for(ev, target, self.settings)
        except SshError as exc:
            ev.ssh = {"ok": False, "refused": exc.refused, "error": str(exc)}
            return
        conn = self.connections.get(ev.label, ssh_target)
        ev.ssh = {"target": ssh_target.describe(), "ok": False, "refused": False, "error": None}
        try:
            conn.connect()
            ev.ssh["ok"] = True
            group_id = ev.control["group"]["id"]
            params = probe_params(self.spec, ev.subscription, ev.group,
                                  self.spec.vault_name(group_id))
            ev.probe = run_probe(conn, params, timeout=max(self.settings.timeout * 4, 120))
        except SshError as exc:
            ev.ssh["refused"] = exc.refused
            ev.ssh["error"] = str(exc)


def dump(evidence: dict[str, LabEvidence]) -> str:
    return json.dumps({k: v.to_json() for k, v in evidence.items()})


def load(text: str) -> dict[str, LabEvidence]:
    return {k: LabEvidence.from_json(v) for k, v in json.loads(text).items()}
