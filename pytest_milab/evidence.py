"""Evidence first, verdicts second: what each lab shows (the suite's declared ARM reads and one
in-machine probe), gathered once per lab and concurrently across labs, with one SSH connection
per machine. Knows no lab: the suite's `reads`, `machine` and `probe` say what to gather."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .digests import new_key
from .errors import CouldNotDecide, MilabError, ReadPending, SshError
from .provenance import VM_REPORTED, note
from .settings import LabTarget, Settings
from .vm.reach import Machine
from .vm.ssh import SshTarget, VmConnection

if TYPE_CHECKING:
    from .azure.clients import ClientPool
    from .azure.reads import LabReads
    from .suite import Suite


@dataclass
class SshOutcome:
    """How reaching the lab's machine went."""

    ok: bool = False
    refused: bool = False  # the machine did not answer and the lab explains why (the student's)
    unverified: bool = False  # the machine misbehaved: answered garbage, hung, refused unexplained
    error: str | None = None
    target: str | None = None  # user@host:port
    host_key: dict | None = None  # {"type", "sha256", "known"}: known when in known_hosts


class ProbeResults(dict):
    """The probe's results by part, as the machine wrote them. A check reading them directly
    (`lab.evidence.probe[...]`) relies on the machine's word, so reading a result notes
    `vm-reported`, as `lab.probe` does; part names (`in`, iterating) note nothing."""

    def __getitem__(self, name):
        note(VM_REPORTED)
        return super().__getitem__(name)

    def get(self, name, default=None):
        note(VM_REPORTED)
        return super().get(name, default)

    def values(self):
        note(VM_REPORTED)
        return super().values()

    def items(self):
        note(VM_REPORTED)
        return super().items()

    def copy(self):
        note(VM_REPORTED)
        return dict(super().items())

    def __reduce__(self):
        return ProbeResults, (dict(super().items()),)


@dataclass(repr=False)
class LabEvidence:
    """The facts of one lab. Holds no secret and no token, so it may be stored; its repr (what
    `-l` and `--debug` show) names the lab and what was gathered, not the probe's digests."""

    label: str
    group: str
    subscription: str | None = None
    student: str | None = None
    problem: str | None = None  # the lab could not be graded at all (bad roster line, ...)
    control: dict[str, Any] = field(default_factory=dict)  # read name -> ARM JSON (None: 404)
    errors: dict[str, str] = field(default_factory=dict)  # read name -> why it could not be read
    machine: Machine | None = None  # the suite's machine for this lab
    ssh: SshOutcome | None = None  # None: no machine was tried
    probe: dict[str, Any] | None = None  # the in-machine probe's results by part
    cli_unavailable: str | None = None  # why the Azure CLI cannot be installed (local Azure)
    mode: str = "discover"  # provision: gathered as the lab is built, step by step
    seconds: float = 0.0
    declared_reads: frozenset[str] | None = None  # None: anything may be read (tests)
    declared_parts: frozenset[str] | None = None
    # The signed parts the grader asked the machine for in this run (None: not recorded, so
    # every declared one counts as asked). What the machine puts under another name is ignored.
    signed_parts: frozenset[str] | None = None
    # The suite's `on_refusal` reads not made: the machine answered SSH, nothing to explain.
    not_made: frozenset[str] = frozenset()
    digest_key: bytes = field(default=b"", repr=False)  # keys the probe's digests

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "probe" and isinstance(value, dict) and not isinstance(value, ProbeResults):
            value = ProbeResults(value)
        super().__setattr__(name, value)

    def __repr__(self) -> str:
        parts = [f"group={self.group!r}", f"reads={sorted(self.control)}"]
        if self.errors:
            parts.append(f"unread={sorted(self.errors)}")
        if self.probe is not None:
            parts.append(f"probe={sorted(self.probe)}")
        if self.problem:
            parts.append(f"problem={self.problem!r}")
        return f"<LabEvidence {self.label} {' '.join(parts)}>"

    def to_json(self) -> dict:
        out = asdict(self)
        out.pop("digest_key")
        for name in ("declared_reads", "declared_parts", "signed_parts", "not_made"):
            out[name] = sorted(out[name]) if out[name] is not None else None
        return out


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

    def discard(self, label: str, target: SshTarget) -> None:
        """Close and forget the lab's connection if it goes to `target` (one made for a
        machine the lab, read in full, does not name)."""
        with self._lock:
            conn = self._by_label.get(label)
            if conn is None or conn.target != target:
                return
            del self._by_label[label]
        _close_quietly([conn])

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


def preload(probe, logged_in: threading.Event | None = None) -> None:
    """Import what reaching a machine and checking its answer take (paramiko and Fabric for
    SSH; asn1crypto and cryptography, and the CA bundle, for an attested document): a tenth of
    a second of CPU or more, done while the first lab's ARM reads are in flight instead of
    after them, on that lab's way to its SSH login. What checks the answer waits for the first
    login (`logged_in`, or 3 s) and is imported while the probe runs: sooner, it would hold
    the GIL in slices the SSH handshake's thread waits for.
    Best effort: whatever fails here is imported, and fails, where it is used."""
    import importlib

    try:
        for name in ("paramiko", "fabric", "pytest_milab.vm.probe"):
            importlib.import_module(name)
        if probe is not None and any(part.op == "attested" for part in probe.parts):
            if logged_in is not None:
                logged_in.wait(3)
            from asn1crypto import cms  # noqa: F401

            from .azure import attest

            attest.trust_anchors()
    except Exception:  # noqa: BLE001 - see above
        pass


def published_egress(directory: Path):
    """A local Azure's machines' egress as it publishes them for graders in other processes
    (`<address>.json` in MILAB_EGRESS_DIR, readable by its user only)."""

    def egress(host: str) -> dict | None:
        if not host or "/" in host or host.startswith("."):
            return None
        try:
            found = json.loads((directory / f"{host}.json").read_text())
        except (OSError, ValueError):
            return None
        return found if isinstance(found, dict) else None
    return egress


class Gatherer:
    """Gathers `LabEvidence` for many labs with a bounded pool of threads."""

    def __init__(self, settings: Settings, suite: Suite, clients: ClientPool,
                 connections: Connections, default_subscription) -> None:
        self.settings = settings
        self.suite = suite
        self.clients = clients
        self.connections = connections
        self._default_subscription = default_subscription  # callable, asked until it answers
        self._sub_lock = threading.Lock()
        self._sub: str | None = None
        self.cli_unavailable: str | None = None
        # How the probe reaches Azure from a machine at an address (grader-side knowledge: the
        # local Azure's egress proxy and CA, as its env file names where it publishes them;
        # None: directly, as on Azure).
        published = os.environ.get("MILAB_EGRESS_DIR") \
            if os.environ.get("MILAB_LOCAL_AZURE") == "1" else None
        self.egress: Callable[[str], dict | None] | None = \
            published_egress(Path(published)) if published else None
        # Verifies tokens for --milab-evidence-audience (None: no such tokens are asked for).
        self.token_verifier = None
        # Each lab's key for the probe's digests: its own, never another lab's, and the same
        # when the lab is gathered again (provision mode), so a `vm` fixture made before
        # still agrees with `lab.same_secret`.
        self._digest_keys: dict[str, bytes] = {}
        self._reads: ThreadPoolExecutor | None = None  # ARM reads, while start_all runs
        self._labs: ThreadPoolExecutor | None = None
        # How far gathering may run ahead of judging (start_all's `ahead`).
        self._turn = threading.Condition()
        self._position: dict[str, int] = {}
        self._judged = 0  # the furthest lab (by position) being judged
        self._ahead: int | None = None
        self._closed = False
        self._preloading = False
        self._logged_in = threading.Event()  # a machine of this run was logged in to

    def prepare(self) -> None:
        """What gathering can do before the grader's sign-in is done: open the HTTPS
        connections the first lab's first reads will take (`clients.preconnect`). (Importing
        what reaching the machines takes waits for the reads: sooner, it would slow the
        sign-in's own steps more than it gains.)"""
        from .azure.clients import preconnect

        transport = getattr(self.clients, "transport", None)
        if transport is not None:
            preconnect(transport, self._first_round)

    def _preload(self) -> None:
        """`preload` in a thread of its own, once, when there are machines to reach."""
        if self._preloading or self.suite.machine is None:
            return
        self._preloading = True
        threading.Thread(target=preload, args=(self.suite.probe, self._logged_in),
                         name="milab-preload",
                         daemon=True).start()

    @property
    def _first_round(self) -> int:
        """How many reads a lab sends at once first: its group and the reads needing no other."""
        return 1 + sum(not read.after and not read.on_refusal for read in self.suite.reads)

    def subscription_for(self, target: LabTarget) -> str:
        """The lab's subscription: the roster's, the option's, else the credential's only one
        (looked up once it answers; a failed look-up is tried again for the next lab)."""
        if target.subscription:
            return target.subscription
        if self.settings.subscription:
            return self.settings.subscription
        with self._sub_lock:
            if self._sub is None:
                self._sub = self._default_subscription()
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
        # A lab's first round of reads (the group and every read that needs no other) goes out
        # at once; the reads share the HTTP connection pool.
        self._reads = ThreadPoolExecutor(
            max_workers=max(4, min(labs * self._first_round, self.clients.pool_size)),
            thread_name_prefix="milab-read")
        self._labs = ThreadPoolExecutor(max_workers=labs, thread_name_prefix="milab-lab")
        self.clients.warm()
        if targets:
            self._preload()
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

    def _new_evidence(self, target: LabTarget) -> LabEvidence:
        return LabEvidence(label=target.label, group=target.group, student=target.student,
                           problem=target.problem, cli_unavailable=self.cli_unavailable,
                           declared_reads=self.suite.read_names,
                           declared_parts=self.suite.part_names,
                           digest_key=self._digest_keys.setdefault(target.label, new_key()))

    def gather(self, target: LabTarget) -> LabEvidence:
        from .azure.reads import LabReads

        t0 = time.perf_counter()
        ev = self._new_evidence(target)
        if target.problem:
            return ev
        try:
            ev.subscription = self.subscription_for(target)
        except MilabError as exc:
            ev.problem = str(exc)
            return ev
        clients = self.clients.for_subscription(ev.subscription)
        reads = self._reads
        own = (ThreadPoolExecutor(max(5, self._first_round), thread_name_prefix="milab-read")
               if reads is None else None)
        early = _EarlyReach(self, ev, target) if self.suite.machine is not None else None
        lab_reads = LabReads(clients.arm, ev.subscription, target.group, self.suite.reads,
                             self.suite.spec, reads or own,
                             on_progress=early.consider if early is not None else None)
        try:
            try:
                lab_reads.run()
            except Exception as exc:  # an SDK surprise must not lose the rest of the class
                lab_reads.errors.setdefault("group", f"reading the lab failed: "
                                                     f"{type(exc).__name__}: {exc}")
            ev.control, ev.errors = lab_reads.control, lab_reads.errors
            if self._closed:  # the run ended (a usage error, Ctrl-C): no machine is reached
                ev.problem = "not gathered: the run ended first"
            else:
                self._probe(ev, target, clients, early, lab_reads)
            # Said only now: the suite's machine hook saw them as None (nothing to explain).
            ev.not_made = frozenset(lab_reads.on_refusal)
        finally:
            if early is not None:
                early.drop()  # unless `_probe` took what it found
            if own is not None:
                own.shutdown(wait=False)
        ev.seconds = time.perf_counter() - t0
        return ev

    def _machine(self, ev: LabEvidence):
        """The suite's machine for this lab, or why there is none to reach."""
        from .lab import Lab

        if self.suite.machine is None or ev.control.get("group") is None:
            return None
        try:
            return self.suite.machine(Lab(ev, self.suite.spec))
        except CouldNotDecide as exc:
            ev.ssh = SshOutcome(error=str(exc))
        except Exception as exc:  # noqa: BLE001 - the suite's trouble, never the student's
            ev.ssh = SshOutcome(error=f"the suite's pytest_milab_machine raised "
                                      f"{type(exc).__name__}: {exc}")
        return None

    def ssh_target(self, ev: LabEvidence, target: LabTarget) -> SshTarget:
        """Where the lab's machine answers SSH: the roster and options win over the suite."""
        machine = ev.machine or Machine()
        host = target.ssh_host or machine.host
        if not host:
            raise SshError("the machine has no address to SSH to", refused=True)
        user = target.ssh_user or self.settings.ssh_user or machine.user
        if not user:
            raise SshError("no SSH user: the machine's admin user is not readable; pass "
                           "--milab-ssh-user")
        return SshTarget(host=host, user=user, port=self.settings.ssh_port,
                         key_filename=target.ssh_key or self.settings.ssh_key,
                         ssh_config=self.settings.ssh_config)

    def egress_for(self, conn: VmConnection) -> dict | None:
        """The probe's egress from the machine this connection reaches."""
        if self.egress is None:
            return None
        return self.egress(conn.resolved_host) or self.egress(conn.target.host)

    def _probe(self, ev: LabEvidence, target: LabTarget, clients=None,
               early: _EarlyReach | None = None, lab_reads: LabReads | None = None) -> None:
        machine = self._machine(ev)
        if machine is None:
            if ev.ssh is None and ev.control.get("group") is None:
                unread = "group" in ev.errors
                ev.ssh = SshOutcome(refused=not unread, error="the group could not be read"
                                    if unread else "the lab has no resource group")
            return
        if machine.absent:
            ev.ssh = SshOutcome(refused=True, error=machine.absent)
            return
        ev.machine = machine
        try:
            ssh_target = self.ssh_target(ev, target)
        except SshError as exc:
            ev.ssh = SshOutcome(refused=exc.refused, error=str(exc))
            return
        # Reached already, while the lab's last reads were in flight: what was found there
        # stands when the lab, read in full, names the same machine (same host, user, key).
        found = early.take(ssh_target) if early is not None else None
        conn = self.connections.get(ev.label, ssh_target)
        if found is None:
            ev.ssh = SshOutcome(target=ssh_target.describe())
            refused = self._reach(ev, conn)
        else:
            ev.ssh, ev.probe, ev.signed_parts = found.ssh, found.probe, found.signed_parts
            refused = early.refused
            if refused is None:  # the probe needed a read that was still in flight
                refused = self._reach(ev, conn)
        if refused:
            self._explain_refusal(ev, machine, conn, clients, lab_reads)

    def _nsgs_again(self, ev: LabEvidence, machine: Machine):
        """The suite's NSGs for its machine, asked again once every read is in (the machine
        refused SSH); the ones it gave before if it cannot say now."""
        from .lab import Lab

        try:
            again = self.suite.machine(Lab(ev, self.suite.spec))
        except Exception:  # noqa: BLE001 - the machine was found before: its NSGs stand
            return machine.nsgs
        return again.nsgs if isinstance(again, Machine) else machine.nsgs

    def _reach(self, ev: LabEvidence, conn: VmConnection) -> bool | None:
        """Log in to the lab's machine and run the probe, into `ev.ssh` and `ev.probe`. True
        when the machine refused SSH (the caller explains it, from the lab's reads); None when
        the probe's program needs a read still in flight (reached early: the login is done,
        the probe runs once the reads are in)."""
        from .azure.signed import verify_parts
        from .probe import SIGNED_OPS
        from .vm.probe import run_probe

        try:
            conn.connect()
            self._logged_in.set()
            # The machine's host key: known (listed in known_hosts) or first seen now.
            ev.ssh.ok, ev.ssh.host_key = True, conn.host_key
            if self.suite.probe is None:
                return False
            # The probe is one SSH call: within twice the timeout of a call (it makes a dozen,
            # a few at a time).
            deadline = max(2 * self.settings.timeout, 10)
            audience = self.settings.evidence_audience if self.token_verifier else None
            try:
                parts = self.suite.probe_program(ev, deadline, audience)
            except ReadPending:
                return None
            ev.signed_parts = frozenset(p["name"] for p in parts if p.get("op") in SIGNED_OPS)
            results = run_probe(conn, parts, ev.digest_key, timeout=deadline,
                                egress=self.egress_for(conn))
            # Signed evidence is checked now: tokens go, verified claims stay.
            verify_parts(results, parts, self.token_verifier)
            ev.probe = results
        except CouldNotDecide as exc:  # the probe's fields could not be read
            ev.ssh.error = str(exc)
        except SshError as exc:
            ev.ssh.error = str(exc)
            if exc.refused:
                return True
            if exc.machine:  # the machine answered, but not as a machine that lets us see
                ev.ssh.unverified = True
        except Exception as exc:  # noqa: BLE001 - the grader's own trouble: never the student's
            ev.ssh.error = f"reading the machine failed: {type(exc).__name__}: {exc}"
        return False

    def _explain_refusal(self, ev: LabEvidence, machine, conn: VmConnection, clients,
                         lab_reads: LabReads | None = None) -> None:
        """The machine did not answer SSH for as long as the grader waited. That is the
        student's doing only when the lab itself explains it: an NSG keeps TCP 22 out, or the
        VM is not running. Otherwise (running, port open, still refused: rebooting, sshd
        restarting, trouble between grader and machine) nobody can tell from outside, so the
        in-machine steps end `error` rather than cost points; grading again decides them.
        The suite's `on_refusal` reads are made now, and its machine asked again for its NSGs
        with them in."""
        from .azure.builtins import API
        from .vm.reach import nsg_blocking_ssh, power_state

        if lab_reads is not None and lab_reads.on_refusal:
            lab_reads.run_on_refusal()
            machine = replace(machine, nsgs=self._nsgs_again(ev, machine))
        blocked = nsg_blocking_ssh(machine.nsgs)
        if blocked:
            ev.ssh.refused, ev.ssh.error = True, f"{ev.ssh.error}; {blocked}"
            return
        state = None
        if clients is not None and machine.instance_view:
            try:
                status, body = clients.arm.get(machine.instance_view, API["Microsoft.Compute"])
                state = power_state(body) if status == 200 else None
            except Exception:  # noqa: BLE001 - then the power state is unknown
                state = None
        if state is not None and state != "running":
            ev.ssh.refused, ev.ssh.error = True, f"{ev.ssh.error}; the VM is {state}: start it"
            return
        # It runs (or is not known to be stopped) and nothing in the lab keeps SSH out, yet it
        # refuses: the grader cannot see inside. Not a failure it can prove, and never a free
        # pass: the in-machine steps are unverified (counted, no points) until it answers.
        running = "is running" if state == "running" else "is not known to be stopped"
        ev.ssh.refused = False
        ev.ssh.unverified = True
        ev.ssh.error = (f"{ev.ssh.error} for {conn.refused_seconds:.0f}s although the machine "
                        f"{running} and nothing in the lab keeps SSH out: let the grader in "
                        "and grade again")


class _SoFar(dict):
    """A lab's reads while some are still in flight (`pending`): `get` of one of those raises
    `ReadPending`, so the suite's code cannot take "not in yet" for "not there"."""

    def __init__(self, control: dict[str, Any], pending: frozenset[str]) -> None:
        super().__init__(control)
        self.pending = pending

    def get(self, name, default=None):
        if name in self.pending:
            raise ReadPending(name)
        return super().get(name, default)


class _EarlyReach:
    """A lab's machine reached while the lab's last reads are still in flight.

    As the reads come in, the suite's machine is asked (`Lab.arrived`, `ReadPending`); once it
    names a host and a user, the grader logs in (and runs the probe, if its program needs no
    read still in flight) in a thread of its own, so the SSH handshake and the probe overlap
    the lab's last reads (those that need others first). When all is read, `Gatherer._probe`
    asks the machine again with every read and takes what was found here only for the very
    same SSH target; otherwise it is dropped (the connection closed) and the machine is
    reached as before."""

    def __init__(self, gatherer: Gatherer, ev: LabEvidence, target: LabTarget) -> None:
        self.gatherer = gatherer
        self.ev = ev
        self.target = target
        self.asked = False  # the machine was named (or will not be, early)
        self.found: LabEvidence | None = None  # what reaching it gave (ssh, probe)
        self.ssh_target: SshTarget | None = None
        # `_reach`'s answer there: True refused, None the probe waits for a read in flight.
        self.refused: bool | None = None
        self._thread: threading.Thread | None = None
        self._reached = False
        self._taken = False

    def consider(self, reads) -> None:
        """Called as reads come in (`LabReads.on_progress`)."""
        from .lab import Lab

        if self.asked or "group" not in reads.control or self.gatherer._closed:
            return
        if reads.control.get("group") is None:
            self.asked = True  # no group: nothing to reach
            return
        found = replace(self.ev, control=_SoFar(reads.control, reads.pending()),
                        errors=dict(reads.errors))
        try:
            machine = self.gatherer.suite.machine(Lab(found, self.gatherer.suite.spec))
        except ReadPending:
            return  # asked again when more reads are in
        except Exception:  # noqa: BLE001 - asked again with every read, and said then
            self.asked = True
            return
        self.asked = True
        if machine is None or machine.absent:
            return
        found.machine = machine
        try:
            self.ssh_target = self.gatherer.ssh_target(found, self.target)
        except SshError:
            return
        found.ssh = SshOutcome(target=self.ssh_target.describe())
        self.found = found
        self._thread = threading.Thread(target=self._reach, name="milab-reach", daemon=True)
        self._thread.start()

    def _reach(self) -> None:
        try:
            conn = self.gatherer.connections.get(self.ev.label, self.ssh_target)
            self.refused = self.gatherer._reach(self.found, conn)
            self._reached = True
        except BaseException:  # noqa: BLE001 - then the machine is reached the usual way
            pass

    def take(self, ssh_target: SshTarget) -> LabEvidence | None:
        """What reaching the machine early found, if it was this very target; else None (and
        the connection made for another target is closed)."""
        if self._thread is None:
            return None
        self._thread.join()
        if ssh_target != self.ssh_target or not self._reached:
            self.drop()
            return None
        self._taken = True
        return self.found

    def drop(self) -> None:
        """Close the connection made early when the lab, read in full, did not take it."""
        if self._thread is None or self._taken:
            return
        self._thread.join()
        self._taken = True  # once
        self.gatherer.connections.discard(self.ev.label, self.ssh_target)
