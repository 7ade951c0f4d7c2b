"""Declared ARM reads: what a suite wants to see of a lab, read by the engine.

A suite lists `Read`s (hook `pytest_milab_reads`); the engine reads them for every lab through
its paced, retrying ARM reader, as many at once as their dependencies allow, and records each
one's JSON (None when ARM says 404) or why it could not be read. Every read is a GET: discover
mode never writes.

    Read("vm", "{group_id}/providers/Microsoft.Compute/virtualMachines/{spec.vm_name}",
         "2024-07-01")
    Read("nic", lambda r: first_nic_id(r.got("vm")), "2023-09-01", after=("vm",))

A path is a format string (fields `group_id`, `group`, `subscription`, `spec`) or a function
of the lab's reads so far (`r.got(name)`, `r.group_id`, `r.spec`, `r.subscription`) that
returns a path, several paths (`many=True`) or None (nothing to read: the value is None). The
resource group itself is always read, as `group`, alongside the reads that come after no
other; if it is not there the lab's other reads are dropped. Paths are made with the group's
id as given and made again if ARM spells it otherwise.

A read with `on_refusal=True` is made only when the lab's machine refuses SSH, to explain the
refusal (the NSGs that keep TCP 22 out): a machine that answers costs none of these reads, a
class's grading fewer of ARM's throttled reads. Its `after` may name any read; a read after it
must be `on_refusal` too. The suite's `pytest_milab_machine` sees such a read as None until
the machine refuses, then is asked again with it in; checks cannot rely on one (`lab.read` of
one not made says so).

    Read("nic_nsg", lambda r: nsg_of(r.got("nic")), "2023-09-01", after=("nic",),
         on_refusal=True)
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import dataclass
from typing import Any

from ..errors import ReadFailed, SuiteError
from .builtins import API

MAX_PAGES = 50  # of a list; a lab's group lists in one
FIELDS = ("group_id", "group", "subscription", "spec")
GROUP = "group"


@dataclass(frozen=True)
class Read:
    """One GET of a lab's control plane, recorded under `name`."""

    name: str
    path: str | Callable[..., Any]
    api_version: str
    after: tuple[str, ...] = ()
    list: bool = False  # page through `value`/`nextLink`; the value is the items
    many: bool = False  # the path function gives several paths; the value lists those found
    on_refusal: bool = False  # read only when the machine refuses SSH (to explain why)

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise SuiteError(f"Read {self.name!r}: a read needs a name")
        if not callable(self.path) and not isinstance(self.path, str):
            raise SuiteError(f"Read {self.name!r}: the path must be text or a function")
        if self.many and not callable(self.path):
            raise SuiteError(f"Read {self.name!r}: many=True needs a path function")
        if isinstance(self.path, str):
            for _, name, _, _ in string.Formatter().parse(self.path):
                root = (name or "").split(".", 1)[0].split("[", 1)[0]
                if name is not None and root not in FIELDS:
                    raise SuiteError(f"Read {self.name!r}: its path names {{{name}}}; paths may "
                                     "use {group_id}, {group}, {subscription} and "
                                     "{spec.<field>}, or be a function")


def check_reads(reads: Sequence[Read]) -> list[Read]:
    """The suite's reads, validated: unique names, known dependencies, no cycle."""
    names: dict[str, Read] = {}
    for read in reads:
        if not isinstance(read, Read):
            raise SuiteError(f"pytest_milab_reads returned {read!r}, not a pytest_milab.Read")
        if read.name in names or read.name == GROUP:
            raise SuiteError(f"two reads are named {read.name!r}"
                             + (" (the engine reads the group itself)" if read.name == GROUP
                                else ""))
        names[read.name] = read
    for read in reads:
        for need in read.after:
            if need != GROUP and need not in names:
                raise SuiteError(f"read {read.name!r} comes after {need!r}, which no read is "
                                 f"named (reads: {', '.join(names) or 'none'})")
            if need in names and names[need].on_refusal and not read.on_refusal:
                raise SuiteError(f"read {read.name!r} comes after {need!r}, which is read only "
                                 f"when the machine refuses SSH: make {read.name!r} "
                                 "on_refusal=True too")

    def visit(name: str, trail: tuple[str, ...]) -> None:
        if name in trail:
            raise SuiteError("reads come after each other in a cycle: "
                             + " -> ".join(trail + (name,)))
        for need in names[name].after if name in names else ():
            visit(need, trail + (name,))

    for read in reads:
        visit(read.name, ())
    return list(reads)


def _failure(status: int, body: Any) -> ReadFailed:
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    if status == 403:
        return ReadFailed(f"the grader may not read this ({code or 403}); give it Reader on "
                          "the lab's subscription or group")
    return ReadFailed(f"Azure answered {status} {code or ''}".strip())


def get_json(arm, path: str, api_version: str | None, *, paged: bool = False) -> Any:
    """One read through the engine's `ArmReader`: the JSON (the items of every page when
    `paged`), None on 404, `ReadFailed` when it could not decide."""
    from azure.core.exceptions import AzureError

    try:
        status, body = arm.get(path, api_version)
        if not paged:
            if status == 404:
                return None
            if status != 200 or not isinstance(body, dict):
                raise _failure(status, body)
            return body
        items: list = []
        for _ in range(MAX_PAGES):
            if status == 404:
                return None
            if status != 200 or not isinstance(body, dict):
                raise _failure(status, body)
            value = body.get("value") or []
            if not isinstance(value, list):
                raise ReadFailed(f"Azure's answer is malformed: its value is "
                                 f"{type(value).__name__}, not a list")
            items += value
            if not body.get("nextLink"):
                break
            status, body = arm.get(body["nextLink"])
        return items
    except AzureError as exc:  # not reached, reset, timed out, retries spent
        raise ReadFailed(f"Azure could not be reached ({type(exc).__name__})") from None


class _Fields(dict):
    """Format fields of a path; a missing one is the suite's mistake, said as such."""

    def __missing__(self, key: str) -> Any:
        raise SuiteError(f"a read's path names {{{key}}}; paths may use {{group_id}}, "
                         "{group}, {subscription} and {spec.<field>}")


class LabReads:
    """Runs one lab's reads: `control` (name -> JSON or None) and `errors` (name -> why)."""

    def __init__(self, arm, subscription: str, group: str, reads: Sequence[Read], spec: Any,
                 executor: Executor | None = None,
                 on_progress: Callable[[LabReads], None] | None = None) -> None:
        self.arm = arm
        self.subscription = subscription
        self.group = group
        self.group_id = f"/subscriptions/{subscription}/resourceGroups/{group}"
        self.reads = {r.name: r for r in reads if not r.on_refusal}
        # Made only if the machine refuses SSH (`run_on_refusal`); until then, not made.
        self.on_refusal = {r.name: r for r in reads if r.on_refusal}
        self.spec = spec
        self.executor = executor
        self.control: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self._paths: dict[str, Any] = {}
        # Called (in the thread running `run`) each time reads have come in and the next ones
        # have gone out, while some are still in flight.
        self.on_progress = on_progress

    def pending(self) -> frozenset[str]:
        """The reads (the group's too) not in yet: neither answered nor failed."""
        names = {GROUP, *self.reads}
        return frozenset(n for n in names if n not in self.control and n not in self.errors)

    def got(self, name: str) -> Any:
        """The value of an earlier read (None when absent or unreadable)."""
        return self.control.get(name)

    def _paths_of(self, read: Read) -> Any:
        if callable(read.path):
            try:
                return read.path(self)
            except SuiteError:
                raise
            except Exception as exc:  # noqa: BLE001 - malformed JSON of an earlier read
                # Azure's answers are data: an earlier read shaped otherwise than the suite
                # expects fails this read alone (its steps end `error`), never the whole lab.
                raise ReadFailed(f"its path could not be made from the lab's other reads "
                                 f"({type(exc).__name__}: {exc})") from None
        fields = _Fields(group_id=self.group_id, group=self.group,
                         subscription=self.subscription, spec=self.spec)
        return read.path.format_map(fields)

    def _fetch(self, read: Read, paths: Any) -> Any:
        if paths is None:
            return None
        if not read.many:
            return get_json(self.arm, _as_path(paths), read.api_version, paged=read.list)
        found, seen = [], set()
        for path in paths or ():
            key = _as_path(path).lower()
            if key in seen:
                continue
            seen.add(key)
            value = get_json(self.arm, _as_path(path), read.api_version, paged=read.list)
            if value is not None:
                found.append(value)
        return found

    def _submit(self, read: Read) -> Future:
        try:
            paths = self._paths_of(read)
        except ReadFailed as exc:
            self._paths[read.name] = None
            failed: Future = Future()
            failed.set_exception(exc)
            return failed
        self._paths[read.name] = paths
        if self.executor is None:
            future: Future = Future()
            try:
                future.set_result(self._fetch(read, paths))
            except BaseException as exc:  # noqa: BLE001 - recorded below
                future.set_exception(exc)
            return future
        return self.executor.submit(self._fetch, read, paths)

    def run(self) -> None:
        """The group and every read but the `on_refusal` ones."""
        group_read = Read(GROUP, "{group_id}", API["Microsoft.Resources"])
        pending = dict(self.reads)
        started: dict[Future, Read] = {self._submit(group_read): group_read}
        ready = [r for r in pending.values() if not r.after]
        for read in ready:  # what needs no other read goes out with the group
            started[self._submit(read)] = read
            del pending[read.name]
        self._drain(started, pending, group_seen=False, progress=self.on_progress)

    def run_on_refusal(self) -> None:
        """The `on_refusal` reads, once the others are in (the machine refused SSH)."""
        pending, self.on_refusal = self.on_refusal, {}
        if self.control.get(GROUP) is None:
            return  # no group: nothing of the lab is there (and nothing refused)
        self.reads.update(pending)
        self._drain({}, dict(pending), group_seen=True, progress=None)

    def _drain(self, started: dict[Future, Read], pending: dict[str, Read], group_seen: bool,
               progress: Callable[[LabReads], None] | None) -> None:
        """Wait for the reads in flight, sending each pending one once those it comes after
        are in."""
        first = True
        while started or first:
            first = False
            done, _ = wait(list(started), return_when=FIRST_COMPLETED) if started else ((), ())
            for future in done:
                read = started.pop(future)
                try:
                    self.control[read.name] = future.result()
                except ReadFailed as exc:
                    self.errors[read.name] = str(exc)
                except SuiteError:
                    raise
                except Exception as exc:  # noqa: BLE001 - this read's alone (paths not text...)
                    self.errors[read.name] = (f"Azure's answer could not be read "
                                              f"({type(exc).__name__}: {exc})")
                if read.name == GROUP:
                    group_seen = True
            if group_seen and self.control.get(GROUP) is None:
                self._abandon(started)  # no group: nothing else of this lab can be there
                return
            if group_seen and self._group_renamed(started):
                continue
            for name in list(pending):
                read = pending[name]
                if not all(n in self.control or n in self.errors for n in read.after):
                    continue
                del pending[name]
                failed = [n for n in read.after if n in self.errors]
                if failed:
                    self.errors[name] = f"needs {failed[0]}, which could not be read"
                    self.control.pop(name, None)
                    continue
                started[self._submit(read)] = read
            if started and progress is not None:
                progress(self)
        for name in pending:  # after a read that never finished
            self.errors.setdefault(name, "not read")

    def _group_renamed(self, started: dict[Future, Read]) -> bool:
        """The group's id as ARM spells it may differ in case from the name given: reads whose
        path depends on it are made again with the real id (the id was guessed to start them
        at once)."""
        real = (self.control.get(GROUP) or {}).get("id")
        if not real or real == self.group_id:
            return False
        self.group_id, self.group = real, real.rsplit("/", 1)[-1]
        again = False
        for read in [r for r in self.reads.values() if r.name in self._paths]:
            try:
                paths = self._paths_of(read)
            except ReadFailed:
                paths = None  # made again below, where it fails the same way
            if paths != self._paths[read.name]:
                for future, other in list(started.items()):
                    if other is read:
                        future.cancel()
                        del started[future]
                self.control.pop(read.name, None)
                self.errors.pop(read.name, None)
                started[self._submit(read)] = read
                again = True
        return again

    def _abandon(self, started: dict[Future, Read]) -> None:
        for future in started:
            future.cancel()
        started.clear()
        for name in list(self.control):
            if name != GROUP:
                del self.control[name]
        for name in list(self.errors):
            if name != GROUP:
                del self.errors[name]


def _as_path(value: Any) -> str:
    text = str(value)
    return text if text.startswith(("/", "https://")) else "/" + text.strip("/")

