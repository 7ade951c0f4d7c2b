"""The plugin through pytester: options, ini, env, markers, outcomes and report formats.

Checks here judge synthetic evidence (the suite overrides the public `evidence` fixture), so
only the grader's credential check talks to the local Azure."""

from __future__ import annotations

import csv
import json

import pytest

CONFTEST = """
import pytest
from pytest_milab import LabEvidence

@pytest.fixture
def evidence(_milab_target):
    return LabEvidence(label=_milab_target.label, group=_milab_target.group,
                       subscription="sub-1", control={"group": {"id": "/g"}})
"""

SUITE = """
import pytest
from pytest_milab import CouldNotDecide, NotPropagated

@pytest.mark.milab_step("first", title="First", points=2)
def test_first(lab):
    assert lab.group_name != "broken", "the lab is broken"

@pytest.mark.milab_step("second", title="Second", needs=("first",))
def test_second(lab):
    pass

@pytest.mark.milab_step("flaky", title="Flaky")
def test_flaky(lab):
    if lab.group_name == "slow":
        raise NotPropagated("the role assignment has not propagated")
    raise CouldNotDecide("Azure throttled")
"""


@pytest.fixture
def suite(pytester, azure_env):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_suite=SUITE)
    return pytester


def test_outcomes_points_and_needs_in_reports(suite):
    result = suite.runpytest("--milab-group", "good", "--milab-group", "broken",
                             "--milab-report", "out/grades.json", "--milab-report", "out/grades.csv",
                             "-v")
    result.stdout.fnmatch_lines([
        "*test_first?good? PASSED*", "*test_second?good? PASSED*", "*test_flaky?good? ERROR*",
        "*test_first?broken? FAILED*", "*test_second?broken? FAILED*",
    ])
    result.stdout.fnmatch_lines(["*milab: grades*", "good*3/3*", "broken*0/3*",
                                 "*failed*second: needs first*",
                                 "*not decided (never counted; grade again later): good, broken*",
                                 "milab: 2 labs graded in *s (the whole run)"])
    data = json.loads((suite.path / "out" / "grades.json").read_text())
    good, broken = data["groups"]
    assert (good["score"], good["max_score"]) == (3, 3)
    assert [s["outcome"] for s in good["steps"]] == ["passed", "passed", "error"]
    assert broken["steps"][0]["reason"] == "the lab is broken"
    assert broken["steps"][1] == {"id": "second", "title": "Second", "outcome": "failed",
                                  "points": 0, "max_points": 1, "reason": "needs first",
                                  "evidence": "control-plane"}
    rows = list(csv.reader((suite.path / "out" / "grades.csv").open()))
    assert [r[:6] for r in rows] == [
        ["group", "student", "status", "score", "max_score", "undecided"],
        ["good", "", "incomplete: 1 undecided", "3", "3", "1"],
        ["broken", "", "incomplete: 1 undecided", "0", "3", "1"]]
    assert rows[1][6:15] == ["2", "passed", "control-plane", "1", "passed", "control-plane",
                             "", "error", "control-plane"]
    # Some steps could not be decided: the grade book is not final.
    assert result.ret == 10


def test_not_propagated_is_its_own_word(suite):
    result = suite.runpytest("--milab-group", "slow", "-v")
    result.stdout.fnmatch_lines(["*test_flaky?slow? NOT-PROPAGATED*", "*1 not-propagated*"])


def test_each_failure_keeps_its_own_teardown_output(suite):
    """pytest prints a failing check's teardown output under it; the plugin indexes that
    lookup (pytest's own scans every report per failure): each failure still gets its own."""
    suite.makeconftest(CONFTEST.replace(
        "    return LabEvidence(", "    yield LabEvidence(") + """
    print(f"closing {_milab_target.label}")
""")
    suite.makepyfile(test_suite=SUITE.replace('lab.group_name != "broken"',
                                              'not lab.group_name.startswith("broken")'))
    result = suite.runpytest("--milab-group", "good", "--milab-group", "broken",
                             "--milab-group", "broken-too")
    text = result.stdout.str()
    failures = text[text.index("= FAILURES ="):text.index("short test summary info")]
    result.stdout.fnmatch_lines(["*_ test_second?broken? _*", "*needs first*",
                                 "*Captured stdout teardown*", "closing broken"])
    # test_first and test_second fail in each broken lab; nothing of the lab that passed.
    assert failures.count("closing broken\n") == 2, failures
    assert failures.count("closing broken-too\n") == 2, failures
    assert "closing good" not in failures
    assert result.ret == 10


def test_same_reports_under_xdist(suite):
    result = suite.runpytest("-n", "2", "--milab-group", "good", "--milab-group", "broken",
                             "--milab-report", "x.json")
    data = json.loads((suite.path / "x.json").read_text())
    assert [(g["group"], g["score"], g["max_score"]) for g in data["groups"]] == [
        ("good", 3, 3), ("broken", 0, 3)]
    broken = data["groups"][1]
    assert broken["steps"][1]["reason"] == "needs first"
    assert result.ret == 10


def test_junit_carries_step_ids_and_points(suite):
    suite.runpytest("--milab-group", "good", "--junitxml", "j.xml")
    xml = (suite.path / "j.xml").read_text()
    assert 'name="milab_step" value="first"' in xml
    assert 'name="milab_points" value="2"' in xml
    assert 'name="milab_outcome" value="error"' in xml


def test_each_checks_location_is_pytests_own(suite):
    """The plugin finds a check's location once per test function (see
    `plugin._share_locations`): every lab's check still has the file, line and name pytest
    itself gives it, and -v shows them as before."""
    (suite.path / "conftest.py").write_text(
        (suite.path / "conftest.py").read_text() + """
import functools

LOCATIONS = []

def pytest_collection_finish(session):
    computed = type(session.items[0]).location
    assert isinstance(computed, functools.cached_property)
    for item in session.items:
        # Filled in by the plugin during collection, before pytest asks for it.
        LOCATIONS.append((item.nodeid, "location" in vars(item), item.location,
                          computed.func(item)))

def pytest_unconfigure(config):
    import json
    with open("locations.json", "w") as f:
        json.dump(LOCATIONS, f)
""")
    result = suite.runpytest("--milab-group", "good", "--milab-group", "broken", "-v")
    result.stdout.fnmatch_lines(["test_suite.py::test_first[[]good[]] PASSED*",
                                 "test_suite.py::test_flaky[[]broken[]] ERROR*"])
    locations = json.loads((suite.path / "locations.json").read_text())
    assert len(locations) == 6
    for nodeid, filled, shared, own in locations:
        assert filled, nodeid
        assert shared == own, nodeid
    # 0-based: the line of its decorator.
    assert {tuple(loc[2]) for loc in locations if "test_second" in loc[0]} == {
        ("test_suite.py", 7, "test_second[good]"), ("test_suite.py", 7, "test_second[broken]")}


def test_the_plugins_fixtures_raise_no_pytest_deprecation(suite):
    """The plugin's fixtures are set up without pytest's deprecation warnings (pytest
    deprecates session-scoped fixtures that are methods of an object): as errors here, a
    check using them would error."""
    result = suite.runpytest("--milab-group", "good", "-W",
                             "error::pytest.PytestDeprecationWarning", "-rw")
    result.assert_outcomes(passed=2, errors=1)
    assert "Deprecat" not in result.stdout.str()


def test_env_and_ini_select_labs(suite, monkeypatch):
    monkeypatch.setenv("MILAB_GROUP", "good,broken")
    result = suite.runpytest("-v")
    result.stdout.fnmatch_lines(["*test_first?good? PASSED*", "*test_first?broken? FAILED*"])
    monkeypatch.delenv("MILAB_GROUP")
    suite.makeini("[pytest]\nmilab_group =\n    good\n")
    result = suite.runpytest("-v")
    result.stdout.fnmatch_lines(["*test_first?good? PASSED*"])
    assert "broken" not in result.stdout.str()


def test_no_lab_is_a_usage_error(suite):
    result = suite.runpytest()
    result.stderr.fnmatch_lines(["ERROR: milab: no lab to grade: pass --milab-group NAME, "
                                 "--milab-roster FILE or --milab-emulator"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_decided_failures_exit_1_and_collect_only_writes_no_report(suite):
    (suite.path / "g.json").write_text("kept")
    result = suite.runpytest("--milab-group", "broken", "--co", "--milab-report", "g.json")
    assert result.ret == 0 and (suite.path / "g.json").read_text() == "kept"
    result = suite.runpytest("--milab-group", "broken", "-k", "first or second",
                             "--milab-report", "g.json")
    assert result.ret == 1
    assert json.loads((suite.path / "g.json").read_text())["groups"][0]["complete"] is True


@pytest.mark.parametrize("marker, message", [
    ('milab_step("a", point=1)', "milab_step has no keyword 'point'"),
    ("milab_step()", "milab_step takes one step id"),
    ('milab_step("Bad Id")', "must be lower-case"),
    ('milab_step("a", points=-1)', "points of step 'a' must be a number"),
])
def test_malformed_markers_are_collection_errors(pytester, marker, message):
    pytester.makepyfile(f"""
        import pytest
        @pytest.mark.{marker}
        def test_x():
            pass
    """)
    result = pytester.runpytest()
    result.stderr.fnmatch_lines([f"*milab:*{message}*"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_one_step_with_different_points_is_an_error(pytester):
    pytester.makepyfile("""
        import pytest
        @pytest.mark.milab_step("a", points=1)
        def test_x():
            pass
        @pytest.mark.milab_step("a", points=2)
        def test_y():
            pass
    """)
    result = pytester.runpytest()
    result.stderr.fnmatch_lines(["*step 'a' has points 2 here but 1 at*"])


def test_bad_roster_line_is_reported_and_the_rest_graded(suite):
    (suite.path / "class.csv").write_text("group,student\ngood,alice\n,bob\n")
    result = suite.runpytest("--milab-roster", "class.csv", "--milab-report", "r.json", "-v")
    result.stdout.fnmatch_lines(["*test_first?alice? PASSED*",
                                 "*milab: not graded: roster class.csv, line 3: the group is empty*"])
    data = json.loads((suite.path / "r.json").read_text())
    assert [g["student"] for g in data["groups"]] == ["alice"]
    assert data["not_graded"] == [{"group": "line-3", "student": "bob", "label": "bob",
                                   "problem": "roster class.csv, line 3: the group is empty"}]


def test_no_credentials_is_one_line_before_any_test(pytester, monkeypatch, tmp_path):
    for var in ("AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID", "HTTPS_PROXY",
                "https_proxy", "AZURE_SUBSCRIPTION_ID", "IDENTITY_ENDPOINT", "MSI_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AZURE_CONFIG_DIR", str(tmp_path / "no-az"))
    monkeypatch.setenv("PATH", "/nonexistent")  # no az, azd, pwsh to fall back to
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://127.0.0.1:9")  # no IMDS
    pytester.makepyfile(SUITE)
    result = pytester.runpytest_subprocess("--milab-group", "g")
    result.stderr.fnmatch_lines(["ERROR: milab: no Azure credentials: sign in with `az login`*"])
    # One line: the SDK's own account of every credential it tried stays out (without -v).
    assert [line for line in result.stderr.lines if line.strip()] == [
        result.stderr.lines[0]], result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_progress_on_a_terminal_and_quiet_in_logs(suite):
    import shutil
    import subprocess
    import sys

    args = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--color=no",
            "--milab-group", "good", "--milab-group", "broken"]
    piped = subprocess.run(args, cwd=suite.path, capture_output=True, text=True, timeout=120)
    assert "milab: judging lab" not in piped.stdout
    if shutil.which("script") is None:
        pytest.skip("no `script` (util-linux) to give the run a terminal")
    tty = subprocess.run(["script", "-qec", " ".join(args), "/dev/null"], cwd=suite.path,
                         capture_output=True, text=True, timeout=120)
    lines = [line.strip() for line in tty.stdout.splitlines()]
    assert "milab: judging lab 1 of 2: good" in lines, tty.stdout
    # Gathering is not done here (the suite made its own evidence): no count to give.
    assert "milab: judging lab 2 of 2: broken" in lines


@pytest.mark.parametrize("env, args, message", [
    ({}, ["--milab-ssh-key", "missing_key"],
     "ERROR: milab: --milab-ssh-key missing_key: no such file"),
    ({"REQUESTS_CA_BUNDLE": "/nonexistent/ca.pem"}, [],
     "ERROR: milab: REQUESTS_CA_BUNDLE names /nonexistent/ca.pem, which does not exist: is it a "
     "stopped local Azure's env file? Start `milab emulator` again and load its new env file, "
     "or unset REQUESTS_CA_BUNDLE"),
    ({"MILAB_LOCAL_AZURE": "1", "HTTPS_PROXY": "http://127.0.0.1:9"}, [],
     "ERROR: milab: the local Azure this environment names (HTTPS_PROXY=http://127.0.0.1:9) is "
     "not running: start `milab emulator --env-file FILE` again and load FILE, or unset the "
     "local Azure's variables"),
    ({}, ["--milab-timeout", "0"],
     "ERROR: milab: --milab-timeout: expected a number above 0, got '0'"),
])
def test_bad_input_is_one_line_before_any_lab(suite, monkeypatch, env, args, message):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = suite.runpytest_subprocess("--milab-group", "good", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert [line for line in result.stderr.lines if line.strip()] == [message], \
        result.stderr.str()


def test_a_reset_on_the_first_token_request_is_asked_again(suite, azure_env):
    """The grader's first sign-in meets connection resets (four: more than the SDK's own
    retries): it is asked again, not taken for missing credentials."""
    azure_env.knobs.faults.reset_connections(4, proxy="host", host="login.microsoftonline.com")
    try:
        result = suite.runpytest_subprocess("--milab-group", "good", "-k", "first")
    finally:
        azure_env.knobs.faults.clear()
    assert result.ret == 0, result.stderr.str()
    result.stdout.fnmatch_lines(["*1 passed*"])


def test_junit_says_where_each_steps_evidence_came_from(pytester, azure_env):
    """`milab_provenance` per test case: control-plane for what the grader read itself,
    vm-reported for the machine's word."""
    import xml.etree.ElementTree as ET

    pytester.makeconftest("""
import pytest
from pytest_milab import LabEvidence
from pytest_milab.evidence import SshOutcome

@pytest.fixture
def evidence(_milab_target):
    return LabEvidence(label=_milab_target.label, group=_milab_target.group,
                       subscription="sub-1", control={"group": {"id": "/g"}},
                       ssh=SshOutcome(ok=True), probe={"imds": {"status": 200}})
""")
    pytester.makepyfile(test_suite="""
import pytest

@pytest.mark.milab_step("group", title="Group")
def test_group(lab):
    assert lab.group_id == "/g"

@pytest.mark.milab_step("imds", title="IMDS")
def test_imds(lab):
    assert lab.probe("imds")["status"] == 200
""")
    pytester.runpytest("--milab-group", "lab", "--junitxml", "j.xml")
    cases = {case.get("name"): {p.get("name"): p.get("value")
                                for p in case.iter("property")}
             for case in ET.parse(pytester.path / "j.xml").getroot().iter("testcase")}
    assert cases["test_group[lab]"]["milab_provenance"] == "control-plane"
    assert cases["test_imds[lab]"]["milab_provenance"] == "vm-reported"
    assert cases["test_imds[lab]"]["milab_outcome"] == "passed"


AT_EXIT = """
import atexit, gc, os

def _seen():  # registered before the plugin's own: runs after it
    with open(os.environ["MILAB_TEST_FROZEN"], "a") as f:
        f.write(f"{gc.get_freeze_count()}\\n")

atexit.register(_seen)
"""


GC_SEEN = """
import gc, pytest

def _seen(when):
    with open("gc_seen.txt", "a") as f:
        f.write(f"{when} {gc.isenabled()}\\n")

@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    _seen("configure")

def pytest_collection_modifyitems(items):
    _seen("collection")

def pytest_runtest_call(item):
    _seen("check")
"""


@pytest.mark.parametrize("how", ["grading", "collection error", "not grading"])
def test_the_collector_rests_from_configure_to_the_end_of_collection(suite, how):
    """A grading run leaves automatic garbage collection off while it starts (azure-identity's
    import, the sign-in, the collection) and turns it back on once what is alive is frozen:
    on for every check, and on again after a run that stops at its collection. A run that
    grades nothing is left alone."""
    import gc

    suite.makepyfile(gc_seen=GC_SEEN, test_plain="def test_plain():\n    pass\n")
    if how == "collection error":
        suite.makepyfile(test_broken="def test_broken(:\n")
    suite.syspathinsert()
    args = ("test_plain.py",) if how == "not grading" else ("--milab-group", "good")
    assert gc.isenabled()
    result = suite.runpytest("-p", "gc_seen", *args)
    assert gc.isenabled(), "the collector was left off"
    seen = [(when, on == "True") for when, on in
            (line.split() for line in (suite.path / "gc_seen.txt").read_text().splitlines())]
    if how == "grading":
        result.assert_outcomes(passed=3, errors=1)
        assert seen == [("configure", False), ("collection", False)] + [("check", True)] * 4
    elif how == "collection error":
        result.stdout.fnmatch_lines(["*1 error during collection*"])
        assert seen == [("configure", False), ("collection", False)]
    else:
        result.assert_outcomes(passed=1)
        assert seen == [("configure", True), ("collection", True), ("check", True)]


DEBUG_THREADS = """
import threading

def pytest_sessionstart(session):
    trace = session.config.trace.root.get("threads")

    def write(n):
        for i in range(3000):
            trace(f"thread {n} line {i} caf\u00e9 " + "x" * (i % 300))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
"""


def test_the_debug_log_is_written_by_one_thread_at_a_time(suite):
    """Under --debug a grading run's threads (they import as they gather) and pytest's own
    trace share the debug log: every line arrives whole and the file stays UTF-8."""
    suite.makepyfile(debug_threads=DEBUG_THREADS)
    suite.syspathinsert()
    result = suite.runpytest("-p", "debug_threads", "--milab-group", "good", "--debug")
    result.assert_outcomes(passed=2, errors=1)
    text = (suite.path / "pytestdebug.log").read_bytes().decode("utf-8")
    lines = [line.strip() for line in text.splitlines() if "[threads]" in line]
    assert len(lines) == 8 * 3000
    assert all(line.startswith("thread ") and " café " in line for line in lines)


@pytest.mark.parametrize("grading", [True, False])
def test_a_grading_process_exits_with_what_is_alive_frozen(suite, monkeypatch, grading):
    """Its interpreter's exit leaves the collector out (gc.freeze); a run that grades nothing
    is left as it was."""
    seen = suite.path / "frozen.txt"
    monkeypatch.setenv("MILAB_TEST_FROZEN", str(seen))
    suite.makepyfile(at_exit=AT_EXIT, test_plain="def test_plain():\n    pass\n")
    monkeypatch.setenv("PYTHONPATH", str(suite.path))
    args = ("--milab-group", "good") if grading else ("test_plain.py",)
    result = suite.runpytest_subprocess("-p", "at_exit", *args)
    result.stdout.fnmatch_lines(["* passed*"])
    frozen = int(seen.read_text())
    assert (frozen > 10_000) if grading else (frozen == 0), frozen
