"""pytest hooks and fixtures: options, the `milab_step` marker, one test case per lab, outcomes
and reports. The work is done elsewhere (`run`, `store`, `results`, `grading`, `reports`);
this module only wires it into pytest."""

from __future__ import annotations

import atexit
import functools
import gc
import inspect
import os
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from . import feedback, grading, reports
from .errors import ConfigError, CouldNotDecide, MilabError, NotPropagated, StepOutcome, SuiteError
from .grading import CheckResult, LabInfo, StepInfo
from .lab import Lab, NeedsStep
from .progress import Progress
from .provenance import CONTROL_PLANE, settle, tracking
from .results import Reported
from .run import Run, settings_from
from .settings import OPTIONS
from .sharing import lab_scope
from .steps import MARKER, MARKER_DOC, StepRegistry, step_from_marker
from .suite import Suite
from .text import clean, clean_in_place, strip_controls

_RUN_KEY = pytest.StashKey[Run]()
_STEP_KEY = pytest.StashKey[StepInfo]()
_PROVENANCE_KEY = pytest.StashKey[str]()
# The exit status of a run in which some step could not be decided (Azure throttled or failed,
# SSH broke, a grant had not propagated): the grade book is not final, grade again later.
EXIT_UNDECIDED = 10  # apart from pytest's own exit codes (0-6)
_OUTCOME_WORDS = {
    grading.FAILED: ("failed", "F", "FAILED"),
    grading.UNVERIFIED: ("unverified", "U", "UNVERIFIED"),
    grading.ERROR: ("error", "E", "ERROR"),
    grading.NOT_PROPAGATED: ("not-propagated", "P", "NOT-PROPAGATED"),
}


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("milab", "identity labs (pytest-milab)")
    for option in OPTIONS:
        kwargs: dict = {"dest": option.dest, "help": f"{option.help} [env {option.env}]"}
        if option.kind == "flag":
            kwargs.update(action="store_true", default=None)
        elif option.kind == "list":
            kwargs.update(action="append", default=None, metavar=option.metavar)
        else:
            kwargs.update(default=None, metavar=option.metavar)
            if option.choices:
                kwargs["choices"] = option.choices
        group.addoption(option.flag, **kwargs)
        parser.addini(f"milab_{option.name.replace('-', '_')}", option.help,
                      type="linelist" if option.kind == "list" else "string")
    parser.addini("milab_docs", "lab documents (Markdown) to run block by block, one a line",
                  type="linelist")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_DOC)
    try:
        settings = settings_from(config)
        if docs_wanted(config, settings):
            # Lab documents: their own run (docs/), not a grading run.
            settings = replace(settings, emulator=False, mode="discover", targets=(), groups=())
        run = Run(config, settings, Suite.from_hooks(config))
    except (ConfigError, SuiteError) as exc:
        raise pytest.UsageError(f"milab: {exc}") from None
    config.stash[_RUN_KEY] = run
    config.pluginmanager.register(run, "milab-run")
    config.pluginmanager.register(Progress(config, run), "milab-progress")
    config.pluginmanager.register(run.results, "milab-results")
    config.pluginmanager.register(ShortReports(), "milab-short-reports")
    config.pluginmanager.register(LabFixtures(run), "milab-fixtures")
    if run.settings.active:
        # Registered before pytest's own clean-ups, so it runs after them: their final
        # collector passes still skip what `pytest_collection_finish` froze.
        config.add_cleanup(gc.unfreeze)
        _freeze_at_exit()
        _pause_collector(config)
        _one_debug_writer_at_a_time(config)
        if run.settings.emulator and not _is_worker(config) and sys.stderr.isatty():
            # Before pytest prints anything: the few seconds this takes are not silent.
            print(f"milab: starting a local Azure and building "
                  f"{'the lab' if run.provisioning else 'its lab(s)'} with the suite's "
                  "stages...", file=sys.stderr, flush=True)
        try:
            run.start()
            if getattr(config.option, "numprocesses", None) and not _is_worker(config):
                # An xdist controller collects nothing: bad credentials are said now, before
                # any worker starts. (Elsewhere the sign-in goes on while pytest collects.)
                run.signed_in()
        except MilabError as exc:
            run.stop()
            raise pytest.UsageError(f"milab: {exc}") from None


@functools.cache
def _freeze_at_exit() -> None:
    """When the grading process exits, what is still alive is kept out of the collector's last
    passes (the process's end frees it all): the interpreter's exit, with the Azure SDK,
    paramiko and cryptography loaded, takes about half as long (one lab graded on a 2-core
    machine: 0.07 s less of its 1.3 to 1.4). Registered once a run grades labs, so it runs
    after what is registered later (a local Azure's stop). Finalizers of objects left in
    reference cycles may then not run at exit, as Python never promised they would; what the
    plugin writes is closed before."""
    atexit.register(gc.freeze)


def _one_debug_writer_at_a_time(config: pytest.Config) -> None:
    """Under `--debug`, pytest writes its trace (every hook call, every import its assertion
    rewriter is asked about) to one text file, from whichever thread calls or imports; a text
    stream written from two threads at once can interleave into bytes that are not UTF-8 at
    all (seen: bytecode in the log). A grading run's threads import as they gather (SSH, the
    attested document's parsers): the trace's writer takes a lock."""
    root = getattr(getattr(config, "trace", None), "root", None)
    write = getattr(root, "_writer", None)  # pluggy's TagTracer: set by pytest's --debug
    if write is None:
        return
    lock = threading.Lock()

    def one_at_a_time(text: str) -> None:
        with lock:
            write(text)

    root.setwriter(one_at_a_time)


_GC_PAUSED = pytest.StashKey[bool]()


def _pause_collector(config: pytest.Config) -> None:
    """No automatic garbage collection from here (a grading run's configure) until the suite is
    collected and what is alive then frozen (`pytest_collection_finish`): start-up (importing
    azure-identity, msal and requests, the sign-in, the collection) allocates mostly objects
    that live to the end, and the collector's fifty-odd passes over them took 30-40 ms of one
    lab's start-up, holding the interpreter while the sign-in waited. What little garbage
    start-up leaves (under a thousand objects for the example suite) is frozen with the rest.
    Left alone when the collector is already off (the caller's choice)."""
    if not gc.isenabled():
        return
    gc.disable()
    config.stash[_GC_PAUSED] = True
    config.add_cleanup(functools.partial(_resume_collector, config))


def _resume_collector(config: pytest.Config) -> None:
    """The collector back on, once (a run that stops before its collection ends, or an xdist
    controller that collects nothing, resumes it in `pytest_runtestloop` or at its end)."""
    if config.stash.get(_GC_PAUSED, False):
        config.stash[_GC_PAUSED] = False
        gc.enable()


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    _resume_collector(session.config)


def docs_wanted(config: pytest.Config, settings) -> bool:
    """Whether this run has lab documents; if so, their plugin is registered."""
    docs = tuple(settings.docs) + tuple(config.getini("milab_docs"))
    if not docs and not any(str(a).split("::")[0].lower().endswith(".md") for a in config.args):
        return False  # (and the documents' machinery is not even imported)
    from .docs.collect import DocsPlugin, docs_of

    settings = replace(settings, docs=docs)
    found = docs_of(config, settings)
    if not found:
        return False
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        raise pytest.UsageError("milab: a lab document runs block by block in one shell: drop "
                                "-n (pytest-xdist) for lab documents")
    config.pluginmanager.register(DocsPlugin(config, settings, found), "milab-docs")
    return True


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    if _run(session.config).settings.active:
        _index_teardown_reports(session.config)


def _index_teardown_reports(config: pytest.Config) -> None:
    """pytest's terminal summary finds each failure's teardown report by scanning every passed
    report again (`TerminalReporter._get_teardown_reports`): quadratic in the checks, 20 CPU-s
    and more for the 4,800 failing checks of 200 labs not started. The same lookup from an
    index built once, when the summary first asks (every report is in by then)."""
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if tr is None or not callable(getattr(tr, "_get_teardown_reports", None)):
        return  # another pytest: left as it is
    index: dict | None = None

    def teardown_reports(node_id) -> list:
        nonlocal index
        if index is None:
            index = {}
            for report in tr.getreports(""):
                if report.when == "teardown":
                    # pytest 9 looks them up by `id`, pytest 8 by `nodeid`.
                    for key in {getattr(report, "id", report.nodeid), report.nodeid}:
                        index.setdefault(key, []).append(report)
        return list(index.get(node_id, ()))

    tr._get_teardown_reports = teardown_reports


def pytest_unconfigure(config: pytest.Config) -> None:
    run = config.stash.get(_RUN_KEY, None)
    if run is not None:
        run.stop()


def pytest_report_header(config: pytest.Config) -> list[str]:
    run = config.stash.get(_RUN_KEY, None)
    if run is None or not run.settings.active:
        return []
    return [f"milab: {run.settings.mode} mode, {len(run.settings.targets)} lab(s)"
            + (" in a local Azure" if run.azure is not None else "")]


def _run(config: pytest.Config) -> Run:
    return config.stash[_RUN_KEY]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # A test grades a lab when `_milab_target` is in its closure: it uses `lab`, `vm`,
    # `evidence` or a fixture of its own built on them.
    if "_milab_target" not in metafunc.fixturenames:
        return
    run = _run(metafunc.config)
    targets = [t for t in run.settings.targets if not t.problem]
    if not targets:
        shard = run.settings.shard
        reason = (f"shard {shard[0]}/{shard[1]} has no lab of the class" if shard and not
                  run.settings.targets else "no lab to grade: pass --milab-group, "
                  "--milab-roster or --milab-emulator" if not run.settings.targets
                  else "no valid lab in the roster")
        metafunc.parametrize("_milab_target", [pytest.param(None, marks=pytest.mark.skip(
            reason=reason))], ids=["no-lab"], indirect=True, scope="session")
        return
    metafunc.parametrize("_milab_target", targets, ids=[t.label for t in targets],
                         indirect=True, scope="session")


def _check_suite(run: Run, items: list[pytest.Item]) -> None:
    """Reads and probe parts the suite's code uses but never declared."""
    from .suitecheck import check_uses, suite_files

    suite = run.suite
    if suite.spec is None and not suite.reads and suite.probe is None:
        return  # no suite hooks: checks judge evidence a test made itself
    modules = {Path(str(item.path)) for item in items if item.stash.get(_STEP_KEY, None)}
    check_uses(suite_files(modules), suite.read_names, suite.part_names)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    registry = StepRegistry()
    run = _run(config)
    try:
        for item in items:
            markers = list(item.iter_markers(MARKER))
            if not markers:
                continue
            if len(markers) > 1:
                raise SuiteError(f"{item.nodeid}: one milab_step marker per test")
            info = registry.add(step_from_marker(markers[0], item.nodeid), item.nodeid)
            item.stash[_STEP_KEY] = info
        registry.check_needs()
        ordered = grading.order_steps(list(registry.steps.values()))
        _check_suite(run, items)
    except (SuiteError, ValueError) as exc:
        raise pytest.UsageError(f"milab: {exc}") from None
    if not run.settings.targets and run.settings.shard is None and any(_lab_of(item) is None and hasattr(item, "callspec")
                                        and "_milab_target" in item.callspec.params
                                        for item in items):
        raise pytest.UsageError("milab: no lab to grade: pass --milab-group NAME, "
                                "--milab-roster FILE or --milab-emulator")
    run.results.set_steps(ordered)
    rank = {s.id: i for i, s in enumerate(ordered)}
    lab_rank = {t.label: i for i, t in enumerate(run.settings.targets)}

    def key(indexed):
        index, item = indexed
        info = item.stash.get(_STEP_KEY, None)
        if info is None or not hasattr(item, "callspec"):
            return (0, 0, 0, 0, index)
        target = item.callspec.params.get("_milab_target")
        # Provision mode checks each step when the lab reaches its stage.
        stage = run.driver.stage_rank(info.id) if run.driver is not None else 0
        return (1, lab_rank.get(getattr(target, "label", ""), -1), stage, rank[info.id], index)

    # Labs one after another, each lab's steps with prerequisites first.
    items[:] = [item for _, item in sorted(enumerate(items), key=key)]
    _share_locations(items)


def _share_locations(items: list[pytest.Item]) -> None:
    """pytest finds a test's location (file, line, name) from its function's source, test by
    test: a class's labs run the same few functions, so it is found once per function here
    and each lab's check gets it with its own name, as pytest would have given it.

    pytest's `Item.location` is a cached property, which this fills in; with another pytest,
    or a test whose class reports its location its own way, pytest finds it as usual."""
    if not isinstance(inspect.getattr_static(pytest.Item, "location", None),
                      functools.cached_property):
        return
    found: dict[object, tuple | None] = {}
    for item in items:
        if (type(item).reportinfo is not pytest.Function.reportinfo
                or item.stash.get(_STEP_KEY, None) is None or "location" in vars(item)
                or getattr(item, "obj", None) is not getattr(item, "function", None)):
            continue
        first = found.get(item.obj, False)
        if first is False:
            location = item.location
            # Used for the others only where pytest's name is the test's own path.
            found[item.obj] = location if location[2] == item.getmodpath() else None
        elif first is not None:
            item.location = (first[0], first[1], item.getmodpath())


def pytest_collection_finish(session: pytest.Session) -> None:
    """The labs this process grades, in order: evidence is gathered for these only (not for
    labs that `-k` deselected, nor under xdist for another worker's share)."""
    run = _run(session.config)
    if run.store is None:
        return
    try:
        run.signed_in()  # before any lab is gathered: a failed sign-in is one line
    except MilabError as exc:
        raise pytest.UsageError(f"milab: {exc}") from None
    # Scopes as the xdist scheduler sees them (from the test ids, in collection order), each
    # with the labs its checks grade: worker and scheduler then count the same way.
    scopes: dict[str, list[str]] = {}
    for item in session.items:
        target = _lab_of(item)
        scope = lab_scope(item.nodeid)
        if scope is not None:
            labels = scopes.setdefault(scope, [])
            if target is not None and target.label not in labels:
                labels.append(target.label)
    run.store.set_collected_labs(scopes, getattr(session.config, "workerinput", None))
    # What is alive now (modules, SDK clients, the collected items) lives until the end:
    # keep it out of the collector's full passes, which otherwise rescan it again and again
    # as a class's evidence and reports pile up (a second or more per 50 labs).
    gc.freeze()
    _resume_collector(session.config)


@pytest.fixture(scope="session")
def milab_spec(request: pytest.FixtureRequest):
    """The lab's constants, as the suite's `pytest_milab_spec` hook gives them."""
    return _run(request.config).suite.spec


@pytest.fixture(scope="session")
def _milab_target(request: pytest.FixtureRequest):
    target = request.param
    yield target
    # pytest moves on to the next lab (labs run one after another): this one's SSH connection
    # is no longer needed. A class of hundreds does not keep hundreds open.
    if target is not None:
        _run(request.config).connections.close(target.label)


class LabFixtures:
    """The plugin's per-check fixtures, bound to the run (registered as a plugin by
    `pytest_configure`), so that they need not ask pytest for `request`: pytest makes a fixture
    definition for `request` each time a fixture that asks for it is set up or found in its
    cache (five per check when these asked for it, three now). The session's fixtures above
    stay functions: pytest deprecates session-scoped fixtures that are methods."""

    def __init__(self, run: Run) -> None:
        self.run = run

    @pytest.fixture
    def evidence(self, _milab_target, milab_spec):
        """What the lab shows (the suite's reads and the in-machine probe), gathered once."""
        run = self.run
        if milab_spec is not run.suite.spec and milab_spec != run.suite.spec:
            raise SuiteError("the milab_spec fixture was overridden: give the lab's spec with "
                             "the pytest_milab_spec hook instead, so gathering and building "
                             "use it too")
        return run.store.evidence_for(_milab_target)

    @pytest.fixture
    def lab(self, evidence, milab_spec) -> Lab:
        """One lab as gathered; a suite overrides this fixture to return its own `Lab`
        subclass."""
        return Lab(evidence, milab_spec)

    @pytest.fixture
    def vm(self, _milab_target, evidence):
        """The lab's machine over SSH: `run(cmd)`, `imds(path)`, `token(resource)` (claims
        only) and `http(method, url, resource=...)`, acting as its managed identity."""
        return self.run.store.machine_for(_milab_target, evidence)


def _lab_of(item: pytest.Item):
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("_milab_target") if callspec else None


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function):
    """Short-circuit a check whose prerequisite already did not pass for this lab; in
    provision mode, build the lab up to the check's stage first."""
    info = pyfuncitem.stash.get(_STEP_KEY, None)
    target = _lab_of(pyfuncitem)
    if info is None or target is None:
        return None
    run = _run(pyfuncitem.config)
    inherited = run.results.prerequisite(target.label, info)
    if inherited is None:
        if run.driver is None:
            return None
        params = inspect.signature(pyfuncitem.obj).parameters
        args = {name: value for name, value in pyfuncitem.funcargs.items() if name in params}
        progress = pyfuncitem.config.pluginmanager.get_plugin("milab-progress")
        run.driver.check(target.label, info.id, lambda: pyfuncitem.obj(**args),
                         lambda changed: run.store.refresh(target, changed),
                         lambda left: progress.waiting(target.label, info.id, left))
        return True
    outcome, reason = inherited
    if outcome == grading.FAILED:
        raise NeedsStep(reason)
    if outcome == grading.SKIPPED:
        pytest.skip(reason)
    raise (CouldNotDecide if outcome == grading.ERROR else NotPropagated)(reason)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """Note where the check's evidence comes from while it runs (see `provenance`)."""
    with tracking() as used:
        passed = False
        try:
            result = yield
            passed = True
            return result
        finally:
            if item.stash.get(_STEP_KEY, None) is not None:
                item.stash[_PROVENANCE_KEY] = settle(used, passed)


def _outcome_of(call: pytest.CallInfo, report: pytest.TestReport) -> tuple[str, str]:
    if report.passed:
        return grading.PASSED, ""
    if report.skipped:
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        return grading.SKIPPED, reason.removeprefix("Skipped: ")
    exc = call.excinfo.value if call.excinfo else None
    message = _first_line(exc)
    if isinstance(exc, StepOutcome):
        return exc.outcome, message
    if isinstance(exc, (AssertionError, pytest.fail.Exception)):
        return grading.FAILED, message or "the check failed"
    # Anything else is the check's own trouble, never the student's.
    return grading.ERROR, f"the check raised {type(exc).__name__}: {message}".rstrip(": ")


def _first_line(exc: BaseException | None) -> str:
    if exc is None:
        return ""
    text = str(getattr(exc, "msg", None) or exc).strip()
    return clean(text.splitlines()[0], 300) if text else ""


def _clean_report(report: pytest.TestReport) -> None:
    """A lab's check report shows text from the student's machine (in messages, locals,
    captured output): every style of it (--tb=auto/short/line/long/native, -rA, JUnit) without
    control characters, so no escape sequence reaches a terminal or a report."""
    longrepr = report.longrepr
    if isinstance(longrepr, str):
        report.longrepr = strip_controls(longrepr)
    elif longrepr is not None:
        report.longrepr = clean_in_place(longrepr)
    report.sections = [(title, strip_controls(content)) for title, content in report.sections]


class ShortReports:
    """A check that failed its step, or ended it another way, needs no traceback: its reason
    says it all, and building one per failing check would make a class of labs not yet started
    cost twice a complete one. With --tb=long (or native) a suite author gets it all.

    A plugin object of its own: its report comes first (tryfirst), and the module's wrapper
    below still completes it."""

    @staticmethod
    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
        return _short_report(item, call)


def _short_report(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport | None:
    if (call.excinfo is None or item.stash.get(_STEP_KEY, None) is None
            or _lab_of(item) is None
            or item.config.getoption("tbstyle", "auto") not in ("auto", "short", "line", "no")
            or not isinstance(call.excinfo.value, (AssertionError, pytest.fail.Exception,
                                                   StepOutcome))):
        return None
    return pytest.TestReport(item.nodeid, item.location, dict.fromkeys(item.keywords, 1),
                             "failed", f"{item.nodeid}: {_first_line(call.excinfo.value)}",
                             call.when,
                             [(f"Captured {key} {when}", content)
                              for when, key, content in item._report_sections],
                             call.duration, call.start, call.stop,
                             user_properties=item.user_properties)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    info = item.stash.get(_STEP_KEY, None)
    target = _lab_of(item)
    if target is not None:
        _clean_report(report)
    if info is None or target is None:
        return report
    if call.when == "call" or (call.when == "setup" and not report.passed):
        outcome, reason = _outcome_of(call, report)
        report.milab_outcome = outcome
        exc = call.excinfo.value if call.excinfo else None
        if isinstance(exc, (StepOutcome, NeedsStep)):
            # The plugin's own outcomes need no traceback: the reason says it all.
            report.longrepr = f"{item.nodeid}: {outcome}: {reason}"
        run = _run(item.config)
        check = CheckResult(target.label, info.id, outcome, reason, item.nodeid,
                            item.stash.get(_PROVENANCE_KEY, CONTROL_PLANE))
        run.results.record_local(check)
        lab = LabInfo(target.label, target.group,
                      target.subscription or run.store.subscription_of(target.label),
                      target.student)
        # Plain data on the report: pytest-xdist carries it to the controller as it is.
        report.milab = Reported(info, run.results.step_rank(info.id), lab, check).to_data()
        # JUnit XML writes the properties of the teardown report, which come from the item.
        item.user_properties.extend([("milab_step", info.id), ("milab_points", info.points),
                                     ("milab_outcome", outcome), ("milab_lab", target.label),
                                     ("milab_provenance", check.provenance)])
    return report


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config):
    outcome = getattr(report, "milab_outcome", None)
    if outcome in _OUTCOME_WORDS and report.failed:
        return _OUTCOME_WORDS[outcome]
    return None


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_sessionfinish(session: pytest.Session, exitstatus) -> None:
    config = session.config
    run = _run(config)
    if not run.settings.active:
        return
    # What is alive now (evidence, reports) lives until the end: out of the final collector
    # passes (the xdist controller, which collects nothing, froze nothing before).
    gc.freeze()
    run.finish_provision()  # in the process that built the labs (a worker, under xdist)
    if _is_worker(config):
        config.workeroutput["milab_notes"] = list(run.notes)
        return
    if config.option.collectonly or config.option.setuponly or config.option.setupplan:
        return  # nothing was graded: no report is written (an old one stays as it was)
    why = _stopped_early(session, exitstatus)
    stopped = "the run stopped early" if why else None
    results, steps = run.results.grade(run.settings.targets, stopped, _planned_labs(session))
    if why:
        run.notes.append(f"the run stopped early ({clean(why, 100)}): labs and steps not "
                         "reached are not graded; grade again")
    for path in run.settings.reports:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        reports.write(path, results, steps)
    if run.settings.feedback:
        feedback.write(run.settings.feedback, results, steps)
    if exitstatus == pytest.ExitCode.INTERRUPTED and why == "interrupted":
        pass  # Ctrl-C: pytest's own word stands
    elif any(reports.undecided(lab) for lab in results) or stopped:
        session.exitstatus = EXIT_UNDECIDED
    elif any(t.problem for t in run.settings.targets) and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _stopped_early(session: pytest.Session, exitstatus) -> str | None:
    """Why the run ended before every check ran, if it did: -x or --maxfail ("stopping after
    N failures": pytest's `shouldfail`, or under xdist its controller's), else "interrupted"
    (Ctrl-C)."""
    if session.shouldfail or session.shouldstop:
        return str(session.shouldfail or session.shouldstop)
    if exitstatus == pytest.ExitCode.INTERRUPTED:
        dsession = session.config.pluginmanager.get_plugin("dsession")  # pytest-xdist's
        why = getattr(dsession, "shouldstop", None)
        return why if isinstance(why, str) and why.startswith("stopping after") \
            else "interrupted"
    return None


def _planned_labs(session: pytest.Session) -> dict[str, set[str]] | None:
    """The steps this process's collection was to check, by lab (None when it collected
    none: the xdist controller, whose workers collect)."""
    planned: dict[str, set[str]] = {}
    for item in session.items:
        target, info = _lab_of(item), item.stash.get(_STEP_KEY, None)
        if target is not None and info is not None:
            planned.setdefault(target.label, set()).add(info.id)
    return planned or None


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    if _is_worker(config):
        return
    run = _run(config)
    if not run.settings.active or run.results.graded is None:
        return
    terminalreporter.write_sep("=", "milab: grades")
    for line in reports.terminal_lines(run.results.graded):
        terminalreporter.write_line(line)
    for target in run.settings.targets:
        if target.problem:
            terminalreporter.write_line(f"milab: not graded: {clean(target.problem)}", red=True)
    for note in run.notes:
        terminalreporter.write_line(f"milab: {clean(note, 500)}")
    for path in run.settings.reports:
        terminalreporter.write_line(f"milab: report written to {os.path.abspath(path)}")
    if run.settings.feedback:
        terminalreporter.write_line(f"milab: feedback for each student written to "
                                    f"{os.path.abspath(run.settings.feedback)}")
    labs = sum(not lab.problem for lab in run.results.graded)
    terminalreporter.write_line(
        f"milab: {labs} lab{'s' if labs != 1 else ''} graded in "
        f"{time.monotonic() - run.started:.1f}s (the whole run"
        + (", the local Azure and its labs' building included" if run.azure is not None
           else "") + ")")


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """pytest-xdist: the notes a worker left (labs it removed or kept)."""
    notes = getattr(node, "workeroutput", {}).get("milab_notes", [])
    _run(node.config).notes.extend(notes)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """pytest-xdist: all of a lab's checks on one worker, in order (a provisioned lab is built
    by the worker that checks it). Grouped by the lab's test id, not with `--dist loadgroup`."""
    run = config.stash.get(_RUN_KEY, None)
    if run is None or not run.settings.active:
        return None
    from .scheduling import LabScheduling

    return LabScheduling(config, log)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """pytest-xdist: hand the workers what the controller started (the local Azure)."""
    run = _run(node.config)
    if run.settings.active:
        node.workerinput["milab"] = run.worker_input()
