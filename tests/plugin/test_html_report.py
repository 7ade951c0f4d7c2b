"""The class report's HTML (pure): cells, pass rates, sorting data, escaping of untrusted text."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

from pytest_milab import html_report
from pytest_milab.grading import CheckResult, LabInfo, StepInfo, grade

STEPS = [StepInfo("vm", "The VM exists", 2), StepInfo("jq", "jq is installed", 1),
         StepInfo("ssh", "The VM answers SSH", 1)]
EVIL = "<script>alert(1)</script>"
BREAKOUT = "no jq </script><script>alert(2)</script> <!-- & \u2028"


def graded():
    labs = [LabInfo("alice", "g", "sub-a", "alice"), LabInfo(EVIL, "g", "sub-b", EVIL),
            LabInfo("line-4", "line-4", None, None, problem="roster x, line 4: <b>bad</b>")]
    checks = [CheckResult("alice", "vm", "passed"), CheckResult("alice", "jq", "failed", "no jq"),
              CheckResult("alice", "ssh", "not-propagated", "grant not in force"),
              CheckResult(EVIL, "vm", "passed"), CheckResult(EVIL, "jq", "failed", BREAKOUT),
              CheckResult(EVIL, "ssh", "error", "ssh broke")]
    return grade(labs, STEPS, checks)


class Page(HTMLParser):
    """What a browser's parser sees: elements with their attributes, scripts' text, text."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict]] = []
        self.scripts: list[tuple[dict, str]] = []
        self.text: list[str] = []
        self._script: dict | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        if tag == "script":
            self._script = dict(attrs)
            self.scripts.append((self._script, ""))

    def handle_endtag(self, tag):
        if tag == "script":
            self._script = None

    def handle_data(self, data):
        if self._script is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)
        else:
            self.text.append(data)

    def find(self, tag: str, **want) -> list[dict]:
        return [a for t, a in self.elements if t == tag
                and all(a.get(k.replace("_", "-")) == v for k, v in want.items())]


def test_one_cell_per_lab_and_step_with_its_outcome_class():
    page = Page(html_report.render(graded(), STEPS))
    cells = [a for a in page.find("button") if "cell" in a.get("class", "").split()]
    assert [(a["data-lab"], a["data-step"], a["class"]) for a in cells] == [
        ("0", "vm", "cell passed"), ("0", "jq", "cell failed"), ("0", "ssh", "cell not-propagated"),
        ("1", "vm", "cell passed"), ("1", "jq", "cell failed"), ("1", "ssh", "cell error")]
    assert cells[1]["aria-label"] == "alice, jq is installed: failed: no jq"
    rows = page.find("tr")
    assert [(r["data-student"], r["data-score"]) for r in rows if "data-score" in r] == [
        ("alice", "2"), (EVIL.casefold(), "2")]


def test_status_pass_rates_and_legend():
    html = html_report.render(graded(), STEPS)
    text = " ".join(Page(html).text)
    assert "incomplete: 1 undecided" in text
    assert "complete" in text
    rates = html_report.pass_rates([g for g in graded() if not g.problem], STEPS)
    assert rates["vm"] == {"passed": 2, "failed": 0, "needs": 0, "undecided": 0, "skipped": 0,
                           "rate": 1.0}
    assert rates["jq"]["rate"] == 0 and rates["ssh"]["rate"] is None
    assert rates["ssh"]["undecided"] == 2
    tfoot = html.split("<tfoot>")[1]
    assert re.findall(r">(\d+%|–)</td>", tfoot) == ["100%", "0%", "–"]
    legend = html.split('class="legend"')[1].split("</ul>")[0]
    for word in ("passed", "failed", "error: could not decide", "not propagated", "skipped"):
        assert word in legend


def test_roster_lines_not_graded_are_listed_apart_not_as_rows():
    page = Page(html_report.render(graded(), STEPS))
    assert not any(r.get("data-student") == "line-4" for r in page.find("tr"))
    text = " ".join(page.text)
    assert "Roster lines not graded" in text
    assert "roster x, line 4: <b>bad</b>" in text  # as text, not markup
    assert "<b>bad</b>" not in html_report.render(graded(), STEPS)


def test_a_student_named_script_and_a_reason_closing_the_script_stay_text():
    html = html_report.render(graded(), STEPS)
    page = Page(html)
    # Exactly the report's two scripts: nothing a student wrote became one.
    assert [a for a, _ in page.scripts] == [{"type": "application/json", "id": "milab-data"}, {}]
    assert EVIL in page.text  # the name, shown as text
    markup = html.split('id="milab-data">')[0]
    assert "alert(1)" not in markup.replace("&lt;script&gt;alert(1)&lt;/script&gt;", "")
    data_text = page.scripts[0][1]
    assert "<" not in data_text and ">" not in data_text and "&" not in data_text
    data = json.loads(data_text)
    assert data["labs"][1]["label"] == EVIL
    assert data["labs"][1]["steps"]["jq"] == ["failed", BREAKOUT]
    # In the markup the reason is escaped text.
    assert "no jq &lt;/script&gt;&lt;script&gt;alert(2)&lt;/script&gt;" in html


def test_script_json_cannot_end_its_element():
    text = html_report.script_json({"r": "</script><!--<script>&amp;\u2028\u2029"})
    assert re.search(r"[<>&\u2028\u2029]", text) is None
    assert json.loads(text) == {"r": "</script><!--<script>&amp;\u2028\u2029"}


def test_self_contained_nothing_to_fetch():
    html = html_report.render(graded(), STEPS)
    assert not re.search(r"""(src|href)\s*=|@import|url\(|https?://""", html)
    assert "default-src 'none'" in html


def test_control_characters_from_students_are_dropped():
    labs = grade([LabInfo("x\x1b[1Ay", "g")], STEPS,
                 [CheckResult("x\x1b[1Ay", "vm", "failed", "bad\x1b]52;c;aGk=\x07")])
    html = html_report.render(labs, STEPS)
    assert "\x1b" not in html and "\x07" not in html


def test_struggles_put_failures_of_students_own_before_inherited_ones():
    steps = [StepInfo("vm", "The VM exists"), StepInfo("jq", "jq is installed", 1, ("vm",)),
             StepInfo("ssh", "The VM answers SSH")]
    labs = grade([LabInfo(n, "g") for n in "abcd"], steps,
                 [CheckResult("a", "vm", "failed", "no VM"), CheckResult("b", "vm", "failed", "x"),
                  CheckResult("c", "ssh", "failed", "closed"), CheckResult("c", "vm", "passed"),
                  CheckResult("d", "vm", "passed")]
                 + [CheckResult(n, "jq", "passed") for n in "abcd"]
                 + [CheckResult(n, "ssh", "passed") for n in "abd"])
    rates = html_report.pass_rates(labs, steps)
    assert (rates["jq"]["failed"], rates["jq"]["needs"]) == (2, 2)
    html = html_report.render(labs, steps)
    order = re.findall(r"<code>([a-z]+)</code> <small>([^<]*)</small>", html)
    assert order == [("vm", "2 of 4 labs failed it"), ("ssh", "1 of 4 labs failed it"),
                     ("jq", "2 of 4 labs failed it (2 only because a step it needs failed)")]
