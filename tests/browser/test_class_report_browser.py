"""The class report in a real headless browser (Chromium, driven by Playwright): heatmap cells,
a failed step's reason on hover, focus and click, sorting, and no request leaving the page.

The browser is the distribution's Chromium (`apt-get install chromium`; `.ci/run` installs it),
never one Playwright downloads. Without one the tests skip, saying how to install it; with
MILAB_REQUIRE_BROWSER=1 (set by `.ci/run`) they fail instead."""

from __future__ import annotations

import os
import shutil

import pytest

from pytest_milab import html_report
from pytest_milab.grading import CheckResult, LabInfo, StepInfo, grade

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
INSTALL = ("no headless browser: install Chromium (`apt-get install chromium`, or set "
           "MILAB_CHROMIUM=/path/to/chromium) and Playwright (`pip install -e '.[test]'`)")

STEPS = [StepInfo("vm", "The VM exists", 2), StepInfo("jq", "jq is installed", 1, ("vm",)),
         StepInfo("ssh", "The VM answers SSH", 1), StepInfo("az", "The Azure CLI", 1)]
EVIL = "<script>alert(1)</script>"
REASON = "jq is not installed </script><script>alert(2)</script>"
CLASS = {  # student -> outcome per step (reason: "<step> broke")
    "carol": ("passed", "passed", "passed", "passed"),
    "alice": ("passed", "failed", "error", "skipped"),
    EVIL: ("failed", "failed", "passed", "not-propagated"),
    "bob": ("passed", "passed", "failed", "passed"),
}


def chromium() -> str | None:
    given = os.environ.get("MILAB_CHROMIUM")
    if given:
        return given
    return next(filter(None, (shutil.which(n) for n in ("chromium", "chromium-browser"))), None)


@pytest.fixture(scope="module")
def browser():
    executable = chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        executable = None
    if executable is None:
        if os.environ.get("MILAB_REQUIRE_BROWSER") == "1":
            pytest.fail(INSTALL)
        pytest.skip(INSTALL)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    labs = [LabInfo(name, "g", None, name) for name in CLASS]
    labs.append(LabInfo("line-6", "line-6", None, "dan", problem="roster c.csv, line 6: the "
                                                                  "group is empty"))
    checks = [CheckResult(name, step.id, outcome,
                          REASON if (name, step.id) == ("alice", "jq") else f"{step.id} broke")
              for name, outcomes in CLASS.items()
              for step, outcome in zip(STEPS, outcomes, strict=True)]
    path = tmp_path_factory.mktemp("report") / "class.html"
    html_report.write(str(path), grade(labs, STEPS, checks), STEPS)
    return path


@pytest.fixture
def page(browser, report):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.requests, page.dialogs, page.errors, page.console = [], [], [], []
    page.on("request", lambda r: page.requests.append(r.url))
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    # A load the page's Content-Security-Policy refused is said here, not as a request.
    page.on("console", lambda m: page.console.append(m.text))
    page.goto(report.as_uri())
    yield page
    context.close()


def rows(page) -> list[str]:
    return page.locator("#heatmap tbody th.who").all_inner_texts()


def cell(page, student: str, step: str):
    row = page.locator("#heatmap tbody tr").filter(
        has=page.locator("th.who", has_text=student))
    return row.locator(f'button.cell[data-step="{step}"]')


def test_heatmap_has_a_cell_per_student_and_step_with_its_outcome(page):
    assert rows(page) == list(CLASS)  # the roster's order; the line not graded is no row
    for student, outcomes in CLASS.items():
        classes = [cell(page, student, s.id).get_attribute("class") for s in STEPS]
        assert classes == [f"cell {o}" for o in outcomes], student
    # Error cells do not look like failures.
    failed = cell(page, "alice", "jq").evaluate("e => getComputedStyle(e).backgroundImage + "
                                                "getComputedStyle(e).backgroundColor")
    error = cell(page, "alice", "ssh").evaluate("e => getComputedStyle(e).backgroundImage + "
                                                "getComputedStyle(e).backgroundColor")
    assert failed != error
    assert page.locator("#not-graded").inner_text().count("line 6: the group is empty") == 1
    assert page.locator("#heatmap tfoot td.rate").all_inner_texts() == ["75%", "50%", "67%",
                                                                       "100%"]


def test_a_failed_steps_reason_shows_on_hover_and_on_click(page):
    tip = page.locator("#tip")
    assert tip.is_hidden()
    cell(page, "alice", "jq").hover()
    assert tip.is_visible()
    assert tip.inner_text() == f"alice · jq is installed\nfailed: {REASON}"
    page.mouse.move(0, 0)
    assert tip.is_hidden()
    cell(page, "bob", "ssh").click()
    detail = page.locator("#detail")
    assert detail.is_visible()
    assert "failed: ssh broke" in detail.inner_text()
    assert "bob · The VM answers SSH" in detail.inner_text()


def test_reasons_reach_the_keyboard_too(page):
    page.locator("button.sort[data-sort=score]").focus()
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.dataset.lab + '/' + "
                            "document.activeElement.dataset.step")
    assert focused == "0/vm"  # carol's first cell
    for _ in range(5):  # carol's other three cells, alice's vm, alice's jq
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.dataset.step") == "jq"
    assert page.locator("#tip").inner_text().endswith(f"failed: {REASON}")
    page.keyboard.press("Enter")
    assert f"failed: {REASON}" in page.locator("#detail").inner_text()


def test_clicking_a_header_sorts_the_rows(page):
    page.click("button.sort[data-sort=score]")
    # Lowest first: EVIL 1/4 (3 decided), alice 2/3, bob 4/5, carol 5/5.
    assert rows(page) == [EVIL, "alice", "bob", "carol"]
    assert page.get_attribute("th.score", "aria-sort") == "ascending"
    page.click("button.sort[data-sort=score]")
    assert rows(page) == ["carol", "bob", "alice", EVIL]
    assert page.get_attribute("th.score", "aria-sort") == "descending"
    page.click("button.sort[data-sort=student]")
    assert rows(page) == [EVIL, "alice", "bob", "carol"]
    assert page.get_attribute("th.score", "aria-sort") == "none"
    # The cells moved with their rows.
    assert cell(page, "carol", "vm").get_attribute("data-lab") == "0"


def test_untrusted_text_stays_text_and_no_request_leaves_the_page(page, report):
    assert EVIL in rows(page)
    cell(page, "alice", "jq").click()
    assert page.dialogs == [] and page.errors == []
    assert page.locator("script").count() == 2
    assert page.requests == [report.as_uri()]
    assert page.console == []
    assert page.evaluate("performance.getEntriesByType('resource').length") == 0
