"""`EvidenceStore`: each lab's evidence for its checks, gathered ahead of judging.

In discover mode every lab this process grades is gathered at once (at most twice the
concurrency ahead of the lab being judged); in provision mode a lab's evidence is gathered
again, in place, as the lab is built."""

from __future__ import annotations

import threading
from concurrent.futures import Future

from .errors import CouldNotDecide, SshError
from .evidence import Connections, Gatherer, LabEvidence, SshOutcome
from .settings import LabTarget, Settings
from .sharing import lab_share


class EvidenceStore:
    def __init__(self, settings: Settings, gatherer: Gatherer, connections: Connections, *,
                 provisioning: bool = False) -> None:
        self.settings = settings
        self.gatherer = gatherer
        self.connections = connections
        self.provisioning = provisioning
        self._evidence: dict[str, LabEvidence] = {}
        self._pending: dict[str, Future] | None = None
        self._lock = threading.Lock()
        self._labs_to_gather: list[str] | None = None  # None: every lab of the roster
        self._stale: set[str] = set()
        self._closed = False

    def gather_early(self, signed_in) -> None:
        """Begin gathering every lab now, in the background once `signed_in()` returns, for a
        run sure to grade every lab it has (see `run.grades_every_lab`): the first lab's reads
        go out while pytest still collects the suite. A failed sign-in starts nothing here:
        the end of the collection says it, in one line."""
        def begin() -> None:
            try:
                self.gatherer.prepare()  # while the sign-in is under way
            except Exception:  # noqa: BLE001 - best effort: the reads connect as they go
                pass
            try:
                signed_in()
            except Exception:  # noqa: BLE001 - said at the end of the collection
                return
            with self._lock:
                if self._pending is None and not self._closed:
                    self._pending = self._gather_all()

        threading.Thread(target=begin, name="milab-early", daemon=True).start()

    def set_collected_labs(self, scopes: dict[str, list[str]], worker: dict | None) -> None:
        """The labs whose checks were collected, by scheduling scope in collection order; under
        xdist, only the labs of this worker's share of the scopes (see `sharing`)."""
        names = list(scopes)
        if worker is not None:
            names = lab_share(names, worker.get("workerid", ""), worker.get("workercount", 1))
        labels: dict[str, None] = {}
        for name in names:
            labels.update(dict.fromkeys(scopes[name]))
        self._labs_to_gather = list(labels)

    def evidence_for(self, target: LabTarget) -> LabEvidence:
        with self._lock:
            if self.provisioning:
                # One evidence object per lab, refreshed in place as the lab is built.
                if target.label not in self._evidence:
                    self._evidence[target.label] = LabEvidence(
                        label=target.label, group=target.group, student=target.student,
                        subscription=self.settings.subscription, mode="provision")
                    self._stale.add(target.label)
                return self._evidence[target.label]
            if self._pending is None:
                self._pending = self._gather_all()
            if target.label not in self._evidence:
                self.gatherer.judging(target.label)
                pending = self._pending.get(target.label)
                # This lab only: the next ones are still being gathered while it is judged.
                # A lab outside this process's share (under xdist, its worker gone) is
                # gathered now.
                self._evidence[target.label] = (pending.result() if pending is not None
                                                else self.gatherer.gather(target))
        return self._evidence[target.label]

    def _gather_all(self) -> dict[str, Future]:
        wanted = self._labs_to_gather
        targets = [t for t in self.settings.targets if not t.problem
                   and (wanted is None or t.label in wanted)]
        # Gathering runs ahead of judging by twice the labs gathered at once: enough to keep
        # the pool busy, and a bound on the labs (and SSH connections) waiting to be judged.
        return self.gatherer.start_all(targets, ahead=2 * self.settings.concurrency)

    def refresh(self, target: LabTarget, changed: bool) -> None:
        """Provision mode: gather the lab again if it changed since it was last gathered."""
        if changed:
            self._stale.add(target.label)
        if target.label not in self._stale:
            return
        fresh = self.gatherer.gather(target)
        fresh.mode = "provision"
        self._evidence[target.label].__dict__.update(fresh.__dict__)
        self._stale.discard(target.label)

    @property
    def gathered(self) -> tuple[int, int] | None:
        """(labs gathered, labs to gather) by this process, once gathering has begun."""
        if self._pending is None:
            return None
        return sum(f.done() for f in self._pending.values()), len(self._pending)

    def subscription_of(self, label: str) -> str | None:
        ev = self._evidence.get(label)
        return ev.subscription if ev is not None else None

    def machine_for(self, target: LabTarget, evidence: LabEvidence):
        """The `vm` fixture's connection to the lab's machine."""
        from .lab import NeedsStep
        from .vm.probe import Vm

        if evidence.problem:
            raise CouldNotDecide(evidence.problem)
        ssh = evidence.ssh or SshOutcome(refused=True, error="the lab has no machine")
        if evidence.machine is None:
            if ssh.refused:
                raise NeedsStep(f"needs ssh: {ssh.error}")
            raise CouldNotDecide(ssh.error or "the machine could not be found")
        try:
            ssh_target = self.gatherer.ssh_target(evidence, target)
        except SshError as exc:
            if exc.refused:
                raise NeedsStep(f"needs ssh: {exc}") from None
            raise CouldNotDecide(str(exc)) from None
        if ssh.refused:
            raise NeedsStep(f"needs ssh: {ssh.error}")
        conn = self.connections.get(target.label, ssh_target)
        return Vm(conn, evidence.digest_key, evidence.machine.source,
                  egress=lambda: self.gatherer.egress_for(conn))

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.gatherer.close()
