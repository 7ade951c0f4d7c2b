"""A class graded at once: each lab's evidence is gathered exactly once, by the process that
judges it. Under `-n 2` each worker gathers its own share of the labs (not one worker for all,
not both for all); with `-k` only the selected labs are gathered."""

from __future__ import annotations

import shutil

import pytest
from e2ekit import SUITE, grade, suite_spec, suite_stages

from pytest_milab.emulator import LocalAzure
from pytest_milab.provision import build_in_local_azure

SPEC = suite_spec()

LABS = ["share-a", "share-b", "share-c", "share-d", "share-e"]


@pytest.fixture(scope="module")
def azure():
    with LocalAzure() as local:
        yield local


@pytest.fixture(scope="module")
def key(azure):
    key, _ = build_in_local_azure(azure, LABS, suite_stages(), SPEC)
    return key


GATHER_LOG = """
import os
import time
from pytest_milab import evidence

_gather = evidence.Gatherer.gather


def gather(self, target):
    with open(os.environ["GATHER_LOG"], "a") as log:
        log.write(f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')} {target.group}\\n")
    try:
        return _gather(self, target)
    finally:
        _note(f"gathered {target.group}")


def _note(what):
    with open(os.environ["GATHER_LOG"] + ".times", "a") as log:
        log.write(f"{time.monotonic()} {what}\\n")


def pytest_runtest_call(item):
    target = getattr(item, "callspec", None) and item.callspec.params.get("_milab_target")
    if target is None:
        return
    _note(f"judged {target.group}")
    milab = item.config.pluginmanager.get_plugin("milab-run")
    _note(f"ssh-open {milab.connections.open_now}")


evidence.Gatherer.gather = gather
"""


@pytest.fixture
def gather_log(tmp_path, monkeypatch):
    """`-p gather_log`: each process notes the labs it gathers evidence for."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "gather_log.py").write_text(GATHER_LOG)
    log = tmp_path / "gathered.txt"
    monkeypatch.setenv("PYTHONPATH", str(plugins))
    monkeypatch.setenv("GATHER_LOG", str(log))

    def read(times: bool = False) -> list[tuple]:
        if times:  # (seconds, "gathered"|"judged", group), in order
            lines = (tmp_path / "gathered.txt.times").read_text().splitlines()
            return sorted((float(t), what, group) for t, what, group in map(str.split, lines))
        return [tuple(line.split()) for line in log.read_text().splitlines()]

    return read


def _graded(run) -> dict[str, tuple[int, int]]:
    return {g["group"]: (g["score"], g["max_score"]) for g in run.report["groups"]}


OTHER_PARAMETRIZED = """
import pytest


@pytest.mark.parametrize("word", ["alpha"])
def test_a_parametrized_check_of_no_lab(word):
    assert word
"""


@pytest.mark.parametrize("suite_kind", ["example", "with-other-parametrized-test"])
def test_xdist_workers_gather_their_own_share(azure, key, tmp_path, gather_log, suite_kind):
    suite = SUITE
    if suite_kind != "example":
        # A parametrized test that grades no lab, collected first: workers and scheduler must
        # still count the labs alike.
        suite = tmp_path / "suite"
        shutil.copytree(SUITE, suite, ignore=shutil.ignore_patterns("__pycache__"))
        (suite / "test_aaa_other.py").write_text(OTHER_PARAMETRIZED)
    before = azure.stats()
    run = grade(azure, key, tmp_path / "run", *LABS, extra=("-n", "2", "-p", "gather_log"),
                suite=suite)
    after = azure.stats()
    assert run.returncode == 0, run.output[-3000:]
    graded = _graded(run)
    assert set(graded) == set(LABS)
    assert all(score == top and top > 0 for score, top in graded.values()), graded
    # One SSH connection per lab in all: no lab gathered twice, none by both workers.
    assert after["ssh_connections"] - before["ssh_connections"] == len(LABS)
    # Both workers graded labs (the share is split, not all on one worker).
    workers = {line.split("]")[0] for line in run.output.splitlines()
               if line.startswith("[gw") and "PASSED" in line}
    assert workers == {"[gw0", "[gw1"}, run.output[-2000:]
    # Each lab gathered once, in turn by the worker that owns it.
    gathered = gather_log()
    assert sorted(group for _, group in gathered) == LABS
    first = 1 if suite_kind != "example" else 0  # the other test's scope is counted first
    assert dict((group, worker) for worker, group in gathered) == {
        lab: f"gw{(k + first) % 2}" for k, lab in enumerate(LABS)}


def test_deselected_labs_are_not_gathered(azure, key, tmp_path, gather_log):
    before = azure.stats()
    run = grade(azure, key, tmp_path / "run", *LABS, extra=("-k", "share-c", "-p", "gather_log"))
    after = azure.stats()
    assert run.returncode == 0, run.output[-3000:]
    assert after["ssh_connections"] - before["ssh_connections"] == 1
    scores = {g["group"]: g["score"] for g in run.report["groups"]}
    assert scores["share-c"] > 0
    assert gather_log() == [("main", "share-c")]


def test_a_lab_is_judged_while_slower_labs_are_still_gathered(azure, key, tmp_path,
                                                               gather_log):
    """The first lab's checks do not wait for the whole class: the last lab's VM answers its
    probe 6 s late, and the first lab is judged before that."""
    vm = (f"/subscriptions/{azure.subscription_id}/resourceGroups/{LABS[-1]}/providers/"
          "Microsoft.Compute/virtualMachines/ubuntu")
    azure.knobs.faults.hang_commands(vm, 6.0, count=1)
    try:
        run = grade(azure, key, tmp_path / "run", *LABS, extra=("-p", "gather_log"))
    finally:
        azure.knobs.faults.clear()
    assert run.returncode == 0, run.output[-3000:]
    events = gather_log(times=True)
    last_gathered = next(t for t, what, group in events
                         if what == "gathered" and group == LABS[-1])
    first_judged = next(t for t, what, group in events if what == "judged" and group == LABS[0])
    assert first_judged < last_gathered - 3, events
    assert all(score == top for score, top in _graded(run).values())
    # Each lab's SSH connection is closed once its checks are done: judging the last lab,
    # only its own is open (a class of hundreds does not hold hundreds).
    open_then = [int(after[2]) for before, after in zip(events[:-1], events[1:], strict=True)
                 if before[1:] == ("judged", LABS[-1]) and after[1] == "ssh-open"]
    assert open_then and set(open_then) == {1}, events[-10:]

