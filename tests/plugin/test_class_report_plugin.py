"""The class report and the feedback files through the plugin (pytester, synthetic evidence)."""

from __future__ import annotations

import re

import pytest
from test_plugin import CONFTEST  # the synthetic evidence of the plugin's own tests

SUITE = """
import pytest
from pytest_milab import CouldNotDecide

@pytest.mark.milab_step("first", title="First", points=2)
def test_first(lab):
    assert lab.group_name != "broken", "the lab is broken </script>"

@pytest.mark.milab_step("second", title="Second", needs=("first",))
def test_second(lab):
    if lab.group_name == "flaky":
        raise CouldNotDecide("Azure throttled")
"""


@pytest.fixture
def suite(pytester, azure_env):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_suite=SUITE)
    (pytester.path / "class.csv").write_text(
        "group,student\ngood,Alice\nbroken,../Bob\nflaky,Carol\n,Dan\n")
    return pytester


def test_html_report_and_feedback_files_are_written(suite):
    result = suite.runpytest("--milab-roster", "class.csv", "--milab-report", "out/class.html",
                             "--milab-feedback", "out/feedback")
    result.stdout.fnmatch_lines(["milab: report written to */out/class.html",
                                 "milab: feedback for each student written to */out/feedback"])
    html = (suite.path / "out" / "class.html").read_text()
    cells = re.findall(r'class="cell ([a-z-]+)" data-lab="(\d)" data-step="([a-z]+)"', html)
    assert cells == [("passed", "0", "first"), ("passed", "0", "second"),
                     ("failed", "1", "first"), ("failed", "1", "second"),
                     ("passed", "2", "first"), ("error", "2", "second")]
    assert "the lab is broken &lt;/script&gt;" in html
    assert "roster class.csv, line 5: the group is empty" in html
    files = sorted(p.name for p in (suite.path / "out" / "feedback").iterdir())
    assert files == ["Alice.md", "Bob.md", "Carol.md", "Dan.md"]
    bob = (suite.path / "out" / "feedback" / "Bob.md").read_text()
    assert "- **First** (`first`): the lab is broken \\</script\\>" in bob
    carol = (suite.path / "out" / "feedback" / "Carol.md").read_text()
    assert "- **Second** (`second`): not decided, will be graded again (Azure throttled)" in carol
    assert "not graded" in (suite.path / "out" / "feedback" / "Dan.md").read_text()
    assert result.ret == 10  # a step could not be decided


def test_a_report_of_unknown_kind_is_a_usage_error(suite):
    result = suite.runpytest("--milab-group", "good", "--milab-report", "class.htm")
    result.stderr.fnmatch_lines(["ERROR: milab: --milab-report class.htm: the name must end in "
                                 ".json, .csv or .html"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR
