"""pytest hooks: options, the `milab_step` marker, one test case per lab, outcomes and reports.

The work is done elsewhere: `settings` resolves options, `evidence` gathers what labs show,
`grading` and `reports` turn results into grades; this module only wires them into pytest.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest

from . import grading, reports
from .errors import ConfigError, CouldNotDecide, MilabError, NotPropagated, StepOutcome
from .grading import StepInfo
from .lab import Lab, NeedsStep
from .session import MilabSession
from .settings import OPTIONS
from .sharing import lab_scope
from .spec import LabSpec
from .steps import MARKER, MARKER_DOC, StepMarkerError, StepRegistry, step_from_marker

_SESSION_KEY = pytest.StashKey["MilabSession"]()
_STEP_KEY = pytest.StashKey[StepInfo]()
_OUTCOME_WORDS = {
    grading.FAILED: ("failed", "F", "FAILED"),
    grading.ERROR: ("error", "E", "ERROR"),
    grading.NOT_PROPAGATED: ("not-propagated", "P", "NOT-PROPAGATED"),
}


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hooks

    pluginmanager.add_hookspecs(hooks)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("milab", "managed-identity labs (pytest-milab)")
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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_DOC)
    try:
        session = MilabSession.from_config(config)
    except ConfigError as exc:
        raise pytest.UsageError(f"milab: {exc}") from None
    config.stash[_SESSION_KEY] = session
    config.pluginmanager.register(session, "milab-session")
    if session.settings.active:
        # Registered before pytest's own clean-ups, so it runs after them: their final
        # collector passes still skip what `pytest_collection_finish` froze.
        config.add_cleanup(gc.unfreeze)
        try:
            session.start()
        except MilabError as exc:
            session.stop()
            raise pytest.UsageError(f"milab: {exc}") from None


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(_SESSION_KEY, None)
    if session is not None:
        session.stop()


def pytest_report_header(config: pytest.Config) -> list[str]:
    milab = config.stash.get(_SESSION_KEY, None)
    if milab is None or not milab.settings.active:
        return []
    lines = [f"milab: {milab.settings.mode} mode, {len(milab.settings.targets)} lab(s)"
             + (" in a local Azure" if milab.azure is not None else "")]
    return lines + [f"milab: {note}" for note in milab.notes]


def _session(config: pytest.Config) -> MilabSession:
    return config.stash[_SESSION_KEY]


def _uses_lab(metafunc: pytest.Metafunc) -> bool:
    """Whether the test needs a lab: `_milab_target` is in its closure, i.e. it uses our
    `lab`/`vm`/`evidence` or a fixture of its own built on them (a same-named fixture of
    another origin does not count)."""
    return "_milab_target" in metafunc.fixturenames


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if not _uses_lab(metafunc):
        return
    session = _session(metafunc.config)
    targets = [t for t in session.settings.targets if not t.problem]
    if not targets:
        reason = ("no lab to grade: pass --milab-group, --milab-roster or --milab-emulator"
                  if not session.settings.targets else "no valid lab in the roster")
        metafunc.parametrize("_milab_target", [pytest.param(None, marks=pytest.mark.skip(
            reason=reason))], ids=["no-lab"], indirect=True, scope="session")
        return
    metafunc.parametrize("_milab_target", targets, ids=[t.label for t in targets],
                         indirect=True, scope="session")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    registry = StepRegistry()
    for item in items:
        markers = list(item.iter_markers(MARKER))
        if not markers:
            continue
        if len(markers) > 1:
            raise pytest.UsageError(f"milab: {item.nodeid}: one milab_step marker per test")
        try:
            info = registry.add(step_from_marker(markers[0], item.nodeid), item.nodeid)
        except StepMarkerError as exc:
            raise pytest.UsageError(f"milab: {exc}") from None
        item.stash[_STEP_KEY] = info
    try:
        ordered = grading.order_steps(list(registry.steps.values()))
    except ValueError as exc:
        raise pytest.UsageError(f"milab: {exc}") from None
    milab = _session(config)
    milab.set_steps(ordered)
    rank = {s.id: i for i, s in enumerate(ordered)}
    lab_rank = {t.label: i for i, t in enumerate(milab.settings.targets)}

    def key(indexed):
        index, item = indexed
        info = item.stash.get(_STEP_KEY, None)
        if info is None or not hasattr(item, "callspec"):
            return (0, "", 0, index)
        target = item.callspec.params.get("_milab_target")
        # Provision mode checks each step when the lab reaches its stage.
        stage = milab.stage_rank(info.id) if milab.provisioning else 0
        return (1, lab_rank.get(getattr(target, "label", ""), -1), stage, rank[info.id], index)

    # Labs one after another, each lab's steps with prerequisites first.
    items[:] = [item for _, item in sorted(enumerate(items), key=key)]


def pytest_collection_finish(session: pytest.Session) -> None:
    """The labs this process grades, in order: evidence is gathered for these only (not for
    labs that `-k` deselected, nor under xdist for another worker's share)."""
    milab = _session(session.config)
    if not milab.settings.active:
        return
    # Scopes as the xdist scheduler sees them (from the test ids, in collection order), each
    # with the labs its checks grade: worker and scheduler then count the same way.
    scopes: dict[str, list[str]] = {}
    for item in session.items:
        callspec = getattr(item, "callspec", None)
        target = callspec.params.get("_milab_target") if callspec is not None else None
        scope = lab_scope(item.nodeid)
        if scope is not None:
            labels = scopes.setdefault(scope, [])
            if target is not None and target.label not in labels:
                labels.append(target.label)
    milab.set_collected_labs(scopes)
    # What is alive now (modules, SDK clients, the collected items) lives until the end:
    # keep it out of the collector's full passes, which otherwise rescan it again and again
    # as a class's evidence and reports pile up (a second or more per 50 labs).
    gc.freeze()


@pytest.fixture(scope="session")
def milab_spec() -> LabSpec:
    """The lab's constants; override this fixture in a suite's conftest to change them."""
    return LabSpec()


@pytest.fixture(scope="session")
def _milab_target(request: pytest.FixtureRequest):
    target = request.param
    yield target
    # pytest moves on to the next lab (labs run one after another): this one's SSH connection
    # is no longer needed. A class of hundreds does not keep hundreds open.
    if target is not None:
        _session(request.config).connections.close(target.label)


@pytest.fixture
def evidence(request: pytest.FixtureRequest, _milab_target, milab_spec):
    """The standard facts of the lab (control plane and the in-VM probe), gathered once."""
    return _session(request.config).evidence_for(_milab_target, milab_spec, request)


@pytest.fixture
def lab(evidence, milab_spec) -> Lab:
    """One lab: names and ids, the ARM resources found read-only, the vault, the VM, its
    identity, and the in-VM probe's results."""
    return Lab(evidence, milab_spec)


@pytest.fixture
def vm(request: pytest.FixtureRequest, _milab_target, evidence):
    """The lab's VM over SSH: `run(cmd)`, `imds(path)`, `token(resource)` (claims only) and
    `http(method, url, resource=...)`, acting as its managed identity."""
    return _session(request.config).vm_for(_milab_target, evidence)


def _lab_of(item: pytest.Item):
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("_milab_target") if callspec else None


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function):
    """Short-circuit a check whose prerequisite already did not pass for this lab."""
    info = pyfuncitem.stash.get(_STEP_KEY, None)
    target = _lab_of(pyfuncitem)
    if info is None or target is None:
        return None
    milab = _session(pyfuncitem.config)
    inherited = milab.prerequisite(target.label, info)
    if inherited is None:
        if milab.provisioning:
            milab.run_provisioned(pyfuncitem, info, target)
            return True
        return None
    outcome, reason = inherited
    if outcome == grading.FAILED:
        raise NeedsStep(reason)
    if outcome == grading.SKIPPED:
        pytest.skip(reason)
    raise (CouldNotDecide if outcome == grading.ERROR else NotPropagated)(reason)


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
    return text.splitlines()[0][:300] if text else ""


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    info = item.stash.get(_STEP_KEY, None)
    target = _lab_of(item)
    if info is None or target is None:
        return report
    if call.when == "call" or (call.when == "setup" and not report.passed):
        outcome, reason = _outcome_of(call, report)
        report.milab_outcome = outcome
        exc = call.excinfo.value if call.excinfo else None
        if isinstance(exc, (StepOutcome, NeedsStep)):
            # The plugin's own outcomes need no traceback: the reason says it all.
            report.longrepr = f"{item.nodeid}: {outcome}: {reason}"
        _session(item.config).record_local(target.label, info.id, outcome)
        props = [
            ("milab_step", info.id), ("milab_title", info.title), ("milab_points", info.points),
            ("milab_needs", ",".join(info.needs)), ("milab_lab", target.label),
            ("milab_group", target.group), ("milab_student", target.student or ""),
            ("milab_subscription", _session(item.config).subscription_of(target.label)),
            ("milab_outcome", outcome), ("milab_reason", reason),
            ("milab_step_rank", _session(item.config).step_rank(info.id)),
        ]
        report.user_properties.extend(props)
        # JUnit XML writes the properties of the teardown report, which come from the item.
        item.user_properties.extend(props)
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
    milab = _session(config)
    if not milab.settings.active:
        return
    # What is alive now (evidence, reports) lives until the end: out of the final collector
    # passes (the xdist controller, which collects nothing, froze nothing before).
    gc.freeze()
    milab.finish_provision()  # in the process that built the labs (a worker, under xdist)
    if _is_worker(config):
        config.workeroutput["milab_notes"] = list(milab.notes)
        return
    results, steps = milab.grade()
    for path in milab.settings.reports:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        reports.write(path, results, steps)
    if any(t.problem for t in milab.settings.targets) and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    if _is_worker(config):
        return
    milab = _session(config)
    if not milab.settings.active or milab.results is None:
        return
    terminalreporter.write_sep("=", "milab: grades")
    for line in reports.terminal_lines(milab.results):
        terminalreporter.write_line(line)
    for target in milab.settings.targets:
        if target.problem:
            terminalreporter.write_line(f"milab: not graded: {target.problem}", red=True)
    for note in milab.notes:
        terminalreporter.write_line(f"milab: {note}")
    for path in milab.settings.reports:
        terminalreporter.write_line(f"milab: report written to {os.path.abspath(path)}")


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """pytest-xdist: the notes a worker left (labs it removed or kept)."""
    notes = getattr(node, "workeroutput", {}).get("milab_notes", [])
    _session(node.config).notes.extend(notes)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """pytest-xdist: all of a lab's checks on one worker, in order (a provisioned lab is built
    by the worker that checks it). Grouped by the lab's test id, not with `--dist loadgroup`."""
    milab = config.stash.get(_SESSION_KEY, None)
    if milab is None or not milab.settings.active:
        return None
    from .scheduling import LabScheduling

    return LabScheduling(config, log)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """pytest-xdist: hand the workers what the controller started (the local Azure)."""
    session = _session(node.config)
    node.workerinput["milab"] = session.worker_input()
