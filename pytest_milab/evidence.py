"""Evidence first, verdicts second: what each lab shows (control plane + one in-VM probe),
gathered once per lab and concurrently across labs, with one SSH connection per VM."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
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
    ssh: dict[str, Any] = field(default_factory=dict)  # target, ok, refused, error, host_key
    probe: dict[str, Any] | None = None  # the in-VM probe's results
    cli_unavailable: str | None = None  # why the Azure CLI cannot be installed (local Azure)
    mode: str = "discover"  # provision: gathered as the lab is built, step by step
    seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


class Connections:
    """The session's SSH connections, one per lab's VM, closed at the end.

    `refused_for`: how long a VM refusing connections is retried (booting, sshd restarting)
    before the grader concludes it does not answer."""

    def __init__(self, connect_timeout: float = 15.0, refused_for: float = 10.0) -> None:
        self.connect_timeout = connect_timeout
        self.refused_for = refused_for
        self._by_label: dict[str, VmConnection] = {}
        self._lock = threading.Lock()

    def get(self, label: str, target: SshTarget) -> VmConnection:
        with self._lock:
            conn = self._by_label.get(label)
            if conn is None or conn.target != target:
                conn = VmConnection(target, connect_timeout=self.connect_timeout,
                                    refused_for=self.refused_for)
                self._by_label[label] = conn
            return conn

    def close(self, label: str) -> None:
        """Close one lab's connection (opened again if that lab needs its VM later)."""
        with self._lock:
            conn = self._by_label.get(label)
        _close_quietly([conn] if conn is not None else [])

    @property
    def open_now(self) -> int:
        """How many of the connections are open at the moment (a class holds few)."""
        with self._lock:
            conns = list(self._by_label.values())
        return sum(c.is_connected for c in conns)

    def close_all(self) -> None:
        with self._lock:
            conns, self._by_label = list(self._by_label.values()), {}
        _close_quietly(conns)


def _close_quietly(conns: list[VmConnection]) -> None:
    for conn in conns:
        try:
            conn.close()
        except Exception:  # closing is best effort
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
                     key_filename=target.ssh_key or settings.ssh_key,
                     ssh_config=settings.ssh_config)


_ANY_SOURCE = ("*", "any", "internet", "0.0.0.0/0", "::/0")


def _ssh_rule(rule: dict) -> bool:
    """An inbound rule that covers TCP 22."""
    props = rule.get("properties") or rule
    if str(props.get("direction", "")).lower() != "inbound":
        return False
    if str(props.get("protocol", "*")).lower() not in ("*", "tcp", "any"):
        return False
    ranges = list(props.get("destinationPortRanges") or [])
    if props.get("destinationPortRange"):
        ranges.append(props["destinationPortRange"])
    for text in ranges:
        low, _, high = str(text).strip().partition("-")
        if low == "*":
            return True
        try:
            if int(low) <= 22 <= int(high or low):
                return True
        except ValueError:
            continue
    return False


def nsg_blocking_ssh(control: dict) -> str | None:
    """Why the lab's own NSGs keep SSH out, or None when they let it in (or may: an allow
    rule for some sources only may well include the grader). As Azure: by priority, the first
    inbound rule that covers TCP 22 decides; without one, DenyAllInBound does."""
    for nsg in control.get("nsgs") or []:
        rules = [r for r in (nsg.get("properties") or {}).get("securityRules") or []
                 if _ssh_rule(r)]
        rules.sort(key=lambda r: int((r.get("properties") or r).get("priority", 65000)))
        verdict = None
        for rule in rules:
            props = rule.get("properties") or rule
            sources = [str(s).strip().lower() for s in
                       [props.get("sourceAddressPrefix"), *(props.get("sourceAddressPrefixes")
                                                            or [])] if s]
            if str(props.get("access", "")).lower() == "allow":
                verdict = "allowed"
                break
            if any(s in _ANY_SOURCE for s in sources):
                verdict = f"its rule {rule.get('name')!r} denies inbound TCP 22"
                break
        if verdict is None:
            verdict = "no rule allows inbound TCP 22"
        if verdict != "allowed":
            return f"NSG {nsg.get('name')!r} on the VM's network path: {verdict}"
    return None


def power_state(view: dict | None) -> str | None:
    """`running`, `deallocated`, ... from a VM's instance view."""
    for status in (view or {}).get("statuses") or []:
        code = str(status.get("code", ""))
        if code.startswith("PowerState/"):
            return code.split("/", 1)[1]
    return None


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
        self._reads: ThreadPoolExecutor | None = None  # ARM reads, while start_all runs
        self._labs: ThreadPoolExecutor | None = None
        # How far gathering may run ahead of judging (start_all's `ahead`).
        self._turn = threading.Condition()
        self._position: dict[str, int] = {}
        self._judged = 0  # the furthest lab (by position) being judged
        self._ahead: int | None = None
        self._closed = False

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
        futures = self.start_all(targets)
        try:
            return {label: future.result() for label, future in futures.items()}
        finally:
            self.close()

    def start_all(self, targets: list[LabTarget], ahead: int | None = None) -> dict[str, Future]:
        """Start gathering every lab (in the targets' order) and return at once: a future of
        `LabEvidence` per label, so a lab can be judged while the next ones are gathered. The
        threads go when the last lab is done; `close()` stops a run that ends early.

        `ahead`: at most this many labs past the one being judged (`judging`) are gathered,
        so a slow lab at the front does not leave hundreds of SSH connections open behind it.
        None: no limit (nobody judges as the labs come in)."""
        labs = max(1, min(self.settings.concurrency, len(targets)))
        self._position = {t.label: i for i, t in enumerate(targets)}
        self._judged, self._ahead, self._closed = 0, ahead, False  # the first is judged first
        # Each lab reads up to five things at once; the reads share the HTTP connection pool.
        self._reads = ThreadPoolExecutor(max_workers=max(4, min(labs * 5, self.clients.pool_size)),
                                         thread_name_prefix="milab-read")
        self._labs = ThreadPoolExecutor(max_workers=labs, thread_name_prefix="milab-lab")
        self.clients.warm()
        futures = {t.label: self._labs.submit(self._gather_in_turn, i, t)
                   for i, t in enumerate(targets)}
        left, lock = [len(futures)], threading.Lock()

        def one_done(_) -> None:
            with lock:
                left[0] -= 1
                last = left[0] == 0
            if last:
                self.finish(wait=False)

        for future in futures.values():
            future.add_done_callback(one_done)
        if not futures:
            self.finish(wait=False)
        return futures

    def finish(self, wait: bool = True, cancel: bool = False) -> None:
        labs, reads, self._labs, self._reads = self._labs, self._reads, None, None
        for pool in (labs, reads):
            if pool is not None:
                pool.shutdown(wait=wait, cancel_futures=cancel)

    def judging(self, label: str) -> None:
        """The session judges this lab now: the labs up to `ahead` after it may be gathered."""
        position = self._position.get(label)
        if position is None:
            return
        with self._turn:
            if position > self._judged:
                self._judged = position
                self._turn.notify_all()

    def _gather_in_turn(self, position: int, target: LabTarget) -> LabEvidence:
        with self._turn:
            while (self._ahead is not None and not self._closed
                   and position > self._judged + self._ahead):
                self._turn.wait()
            if self._closed:
                return LabEvidence(label=target.label, group=target.group,
                                   student=target.student,
                                   problem="not gathered: the run ended first")
        return self.gather(target)

    def close(self) -> None:
        """The session ends: labs not begun are not gathered, those begun finish on their own."""
        with self._turn:
            self._closed = True
            self._turn.notify_all()
        self.finish(wait=False, cancel=True)

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
        clients = self.clients.for_subscription(ev.subscription)
        reads = self._reads
        own = ThreadPoolExecutor(5, thread_name_prefix="milab-read") if reads is None else None
        discovery = Discovery(clients, target.group, self.spec, reads or own)
        try:
            try:
                discovery.run()
            except Exception as exc:  # an SDK surprise must not lose the rest of the class
                discovery.errors.setdefault("group",
                                            f"discovery failed: {type(exc).__name__}: {exc}")
            ev.control, ev.errors = discovery.control, discovery.errors
            self._probe(ev, target, clients)
        finally:
            if own is not None:
                own.shutdown(wait=False)
        ev.seconds = time.perf_counter() - t0
        return ev

    def _probe(self, ev: LabEvidence, target: LabTarget, clients=None) -> None:
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
            ev.ssh.update(ok=True, host_key=conn.host_key)  # known: listed in known_hosts
            group_id = ev.control["group"]["id"]
            params = probe_params(self.spec, ev.subscription, ev.group,
                                  self.spec.vault_name(group_id))
            # The probe is one SSH call: within twice the timeout of a call (it makes a dozen,
            # a few at a time), `az login` within that too.
            deadline = max(2 * self.settings.timeout, 10)
            params["az_timeout"] = max(5, deadline - 10)
            ev.probe = run_probe(conn, params, timeout=deadline)
        except SshError as exc:
            ev.ssh["error"] = str(exc)
            if exc.refused:
                self._explain_refusal(ev, conn, clients)

    def _explain_refusal(self, ev: LabEvidence, conn: VmConnection, clients) -> None:
        """The VM did not answer SSH for as long as the grader waited. That is the student's
        doing only when the lab itself explains it: an NSG keeps TCP 22 out, or the VM is not
        running. Otherwise (running, port open, still refused: rebooting, sshd restarting,
        trouble between grader and VM) nobody can tell from outside, so the steps inside the
        VM end `error` rather than cost points; grading again later decides them."""
        blocked = nsg_blocking_ssh(ev.control)
        if blocked:
            ev.ssh.update(refused=True, error=f"{ev.ssh['error']}; {blocked}")
            return
        state = None
        if clients is not None:
            vm_id = ev.control["vm"].get("id", "")
            try:
                status, body = clients.arm.get(f"{vm_id}/instanceView", "2024-07-01")
                state = power_state(body) if status == 200 else None
            except Exception:  # noqa: BLE001 - then the power state is unknown
                state = None
        if state is not None and state != "running":
            ev.ssh.update(refused=True, error=f"{ev.ssh['error']}; the VM is {state}: start it")
            return
        running = "is running" if state == "running" else "is not known to be stopped"
        ev.ssh.update(refused=False, error=(
            f"{ev.ssh['error']} for {conn.refused_seconds:.0f}s although the VM {running} and "
            "its NSGs let SSH in: could not decide (grade again later)"))
