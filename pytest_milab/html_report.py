"""The class report: one self-contained HTML page (inline CSS and JS, nothing fetched) an
instructor opens after grading. Pure: results in, text out.

It shows a students x steps heatmap (each outcome its own colour and mark, with a legend), the
pass rate of each step (where the class struggled), each student's score and status, the
reason of every step that did not pass (on hover, focus or click of its cell, and listed per
student below), rows sortable by student or score, and the roster lines that could not be
graded, apart.

Everything shown comes from students and Azure, so every text is cleaned (`text.clean`) and
HTML-escaped where it is written; the data the script reads sits in a
`<script type="application/json">` block whose `<`, `>` and `&` are JSON escapes, so no text
can close the block. The script only ever sets `textContent`."""

from __future__ import annotations

import json
from html import escape

from .feedback import needed_step
from .grading import (
    ERROR,
    FAILED,
    NOT_PROPAGATED,
    PASSED,
    SKIPPED,
    UNVERIFIED,
    LabResult,
    StepInfo,
)
from .reports import _num, status, undecided
from .text import clean

# outcome -> (css class, mark in the cell, word in the legend and tooltips)
OUTCOMES = {
    PASSED: ("passed", "✓", "passed"),
    FAILED: ("failed", "✗", "failed"),
    UNVERIFIED: ("unverified", "?", "unverified: the machine did not let the grader see"),
    ERROR: ("error", "!", "error: could not decide, grade again"),
    NOT_PROPAGATED: ("not-propagated", "…", "not propagated yet, grade again"),
    SKIPPED: ("skipped", "–", "skipped"),
}
NOT_RUN = ("not-run", "", "not checked in this run")


def _e(text: object, limit: int = 300) -> str:
    """Untrusted text, cleaned and escaped for HTML text and attribute values."""
    return escape(clean("" if text is None else text, limit), quote=True)


def script_json(data: object) -> str:
    """JSON safe inside a <script> element: no `<`, `>` or `&` left to end it or open a
    comment, and the line separators JavaScript once treated as newlines escaped too."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    for char, code in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                       ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, code)
    return text


def pass_rates(labs: list[LabResult], steps: list[StepInfo]) -> dict[str, dict]:
    """Per step: how many graded labs passed, failed (`needs`: of those, only because a step
    it needs failed), and could not be decided; `rate` is passed / (passed + failed), None
    when no lab was decided on it."""
    out: dict[str, dict] = {}
    for step in steps:
        counts = {o: 0 for o in OUTCOMES}
        needs = 0
        for lab in labs:
            for s in lab.steps:
                if s.id == step.id:
                    counts[s.outcome] = counts.get(s.outcome, 0) + 1
                    needs += s.outcome == FAILED and needed_step(s.reason) is not None
        decided = counts[PASSED] + counts[FAILED]
        out[step.id] = {"passed": counts[PASSED], "failed": counts[FAILED], "needs": needs,
                        "undecided": counts[ERROR] + counts[NOT_PROPAGATED],
                        "skipped": counts[SKIPPED],
                        "rate": counts[PASSED] / decided if decided else None}
    return out


def _rate_text(rate: float | None) -> str:
    return "–" if rate is None else f"{round(rate * 100)}%"


def _rate_class(rate: float | None) -> str:
    if rate is None:
        return "rate-none"
    return "rate-high" if rate >= 0.9 else "rate-mid" if rate >= 0.6 else "rate-low"


def _data(graded: list[LabResult], steps: list[StepInfo]) -> dict:
    return {
        "steps": [{"id": s.id, "title": clean(s.title or s.id, 200)} for s in steps],
        "labs": [{"label": clean(lab.label, 120),
                  "steps": {s.id: [s.outcome, clean(s.reason, 1000)] for s in lab.steps}}
                 for lab in graded],
        "words": {o: w for o, (_, _, w) in OUTCOMES.items()} | {"": NOT_RUN[2]},
    }


def _summary(graded: list[LabResult], not_graded: list[LabResult]) -> str:
    complete = sum(1 for lab in graded if undecided(lab) == 0)
    perfect = sum(1 for lab in graded if lab.max_score and lab.score == lab.max_score
                  and undecided(lab) == 0)
    scored = [lab.score / lab.max_score for lab in graded if lab.max_score]
    mean = f"{round(100 * sum(scored) / len(scored))}%" if scored else "–"
    cards = [(len(graded), "labs graded"), (perfect, "with every step passed"),
             (mean, "average score"), (len(graded) - complete, "to grade again (undecided)")]
    if not_graded:
        cards.append((len(not_graded), "roster lines not graded"))
    return "".join(f'<div class="card"><b>{_e(n)}</b><span>{_e(w)}</span></div>'
                   for n, w in cards)


def _legend() -> str:
    items = [*OUTCOMES.values(), NOT_RUN]
    return "".join(f'<li><span class="cell {c}" aria-hidden="true">{m}</span>{_e(w)}</li>'
                   for c, m, w in items)


def _heatmap(graded: list[LabResult], steps: list[StepInfo], rates: dict[str, dict]) -> str:
    head = ['<th scope="col" class="who" aria-sort="none">'
            '<button type="button" class="sort" data-sort="student">Student</button></th>',
            '<th scope="col" class="score" aria-sort="none">'
            '<button type="button" class="sort" data-sort="score">Score</button></th>',
            '<th scope="col" class="status">Status</th>']
    for step in steps:
        head.append(f'<th scope="col" class="step" title="{_e(step.title or step.id)}">'
                    f'<span>{_e(step.id, 60)}</span></th>')
    rows = []
    for i, lab in enumerate(graded):
        by_id = {s.id: s for s in lab.steps}
        n = undecided(lab)
        score, most = _num(lab.score), _num(lab.max_score)
        cells = [f'<th scope="row" class="who" title="{_e(lab.label, 120)}">'
                 f'{_e(lab.label, 120)}</th>',
                 f'<td class="score">{score}<small> / {most}</small></td>',
                 f'<td class="status"><span class="badge {"complete" if n == 0 else "incomplete"}"'
                 f'>{_e(status(lab))}</span></td>']
        for step in steps:
            result = by_id.get(step.id)
            css, mark, word = OUTCOMES.get(result.outcome, NOT_RUN) if result else NOT_RUN
            label = f"{lab.label}, {step.title or step.id}: {word}"
            if result is not None and result.reason:
                label += f": {result.reason}"
            cells.append(f'<td><button type="button" class="cell {css}" data-lab="{i}" '
                         f'data-step="{_e(step.id, 200)}" aria-label="{_e(label, 1200)}">'
                         f'{mark}</button></td>')
        pct = lab.score / lab.max_score if lab.max_score else 0
        rows.append(f'<tr data-order="{i}" data-student="{_e(lab.label.casefold(), 120)}" '
                    f'data-score="{score}" data-pct="{pct:.4f}">{"".join(cells)}</tr>')
    foot = ['<th scope="row" class="who">Pass rate</th><td></td>'
            '<td class="status"><small>passed of decided</small></td>']
    for step in steps:
        r = rates[step.id]
        tip = (f"{step.title or step.id}: {r['passed']} passed, {r['failed']} failed"
               + (f", {r['undecided']} undecided" if r["undecided"] else "")
               + (f", {r['skipped']} skipped" if r["skipped"] else ""))
        foot.append(f'<td class="rate {_rate_class(r["rate"])}" title="{_e(tip)}">'
                    f'{_rate_text(r["rate"])}</td>')
    return (f'<table id="heatmap"><thead><tr>{"".join(head)}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody><tfoot><tr>{"".join(foot)}</tr></tfoot></table>')


def _struggles(steps: list[StepInfo], rates: dict[str, dict]) -> str:
    # Where students went wrong themselves first, then failures inherited from a prerequisite.
    hard = sorted((s for s in steps if rates[s.id]["rate"] is not None
                   and rates[s.id]["rate"] < 1),
                  key=lambda s: (-(rates[s.id]["failed"] - rates[s.id]["needs"]),
                                 rates[s.id]["rate"]))
    if not hard:
        return '<p class="calm">Every step that could be decided was passed by every lab.</p>'
    items = []
    for step in hard:
        r = rates[step.id]
        pct = round(r["rate"] * 100)
        items.append(
            f'<li><span class="bar" aria-hidden="true"><span style="width:{pct}%"></span></span>'
            f'<span class="pct">{pct}%</span> <b>{_e(step.title or step.id)}</b> '
            f'<code>{_e(step.id, 60)}</code> <small>{r["failed"]} of '
            f'{r["passed"] + r["failed"]} labs failed it'
            + (f" ({r['needs']} only because a step it needs failed)" if r["needs"] else "")
            + (f", {r['undecided']} undecided" if r["undecided"] else "") + '</small></li>')
    return f'<ol class="struggles">{"".join(items)}</ol>'


def _per_student(graded: list[LabResult], steps: list[StepInfo]) -> str:
    titles = {s.id: s.title or s.id for s in steps}
    out = []
    for lab in graded:
        todo = [s for s in lab.steps if s.outcome == FAILED]
        own = sum(1 for s in todo if needed_step(s.reason) is None)
        later = [s for s in lab.steps if s.outcome in (ERROR, NOT_PROPAGATED)]
        if not todo and not later:
            continue
        lines = [f'<li class="{OUTCOMES[s.outcome][0]}"><b>{_e(titles.get(s.id, s.id))}</b> '
                 f'<code>{_e(s.id, 60)}</code>: {_e(s.reason, 1000)}'
                 + (" <small>(not decided, will be graded again)</small>"
                    if s.outcome != FAILED else "") + '</li>' for s in todo + later]
        what = ", ".join(x for x in (f"{own} to fix" if own else "",
                                     f"{len(todo) - own} waiting on a fix" if own < len(todo)
                                     else "",
                                     f"{len(later)} undecided" if later else "") if x)
        out.append(f'<details><summary>{_e(lab.label, 120)} <small>{_e(what)}</small>'
                   f'</summary><ul>{"".join(lines)}</ul></details>')
    if not out:
        return '<p class="calm">No lab has a step to fix.</p>'
    return "".join(out)


def _not_graded(not_graded: list[LabResult]) -> str:
    if not not_graded:
        return ""
    items = "".join(f'<li><b>{_e(lab.label, 120)}</b>: {_e(lab.problem, 1000)}</li>'
                    for lab in not_graded)
    return (f'<section id="not-graded"><h2>Roster lines not graded</h2>'
            f'<p>These lines of the roster could not be graded; they have no score. '
            f'Fix the roster and grade again.</p><ul>{items}</ul></section>')


def render(labs: list[LabResult], steps: list[StepInfo], *, title: str = "Class report",
           generated: str | None = None) -> str:
    """The whole page for `labs` (graded ones and roster lines not graded) over `steps`."""
    graded = [lab for lab in labs if not lab.problem]
    not_graded = [lab for lab in labs if lab.problem]
    rates = pass_rates(graded, steps)
    when = f" · graded {_e(generated)}" if generated else ""
    size = (f'{len(graded)} lab{"s" if len(graded) != 1 else ""} × '
            f'{len(steps)} step{"s" if len(steps) != 1 else ""}')
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:">
<title>{_e(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<header>
<h1>{_e(title)}</h1>
<p class="sub">{size}{when}</p>
<div class="cards">{_summary(graded, not_graded)}</div>
</header>
<main>
<section id="grid">
<h2>Students and steps</h2>
<ul class="legend" aria-label="legend">{_legend()}</ul>
<p class="hint">Point at a cell, or focus it with Tab, to read its reason; click it (or press Enter) to keep it below. Click <b>Student</b> or <b>Score</b> to sort.</p>
<div class="scroll">{_heatmap(graded, steps, rates)}</div>
<div id="tip" role="tooltip" hidden></div>
<section id="detail" aria-live="polite" hidden></section>
</section>
<section id="struggles">
<h2>Where the class struggled</h2>
<p class="hint">Steps that not every lab passed, the most failed first (failures inherited from a step they need count last). Pass rate: labs that passed, of the labs on which the step could be decided.</p>
{_struggles(steps, rates)}
</section>
<section id="students">
<h2>What each student has to fix</h2>
{_per_student(graded, steps)}
</section>
{_not_graded(not_graded)}
</main>
<footer>pytest-milab class report. This page is self-contained: it loads nothing.</footer>
<script type="application/json" id="milab-data">{script_json(_data(graded, steps))}</script>
<script>{_JS}</script>
</body>
</html>
"""


def write(path: str, labs: list[LabResult], steps: list[StepInfo], *,
          generated: str | None = None) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(render(labs, steps, generated=generated))


_CSS = """
:root { --ink:#1f2933; --muted:#616e7c; --line:#e4e7eb; --bg:#fafbfc;
  --pass:#cdebd8; --pass-ink:#1e6b43; --fail:#f6cdc8; --fail-ink:#9b2c20;
  --err:#fde7b0; --err-ink:#7a5200; --prop:#cfe2f7; --prop-ink:#1d4f86;
  --skip:#eceef1; --skip-ink:#7b8794; }
* { box-sizing:border-box; }
body { margin:0; font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
  color:var(--ink); background:var(--bg); }
header, main, footer { max-width:1400px; margin:0 auto; padding:0 28px; }
header { padding-top:24px; }
h1 { font-size:24px; font-weight:600; margin:0; }
h2 { font-size:17px; font-weight:600; margin:28px 0 8px; }
.sub, .hint, footer, small { color:var(--muted); }
.hint { font-size:13px; margin:4px 0 10px; }
.cards { display:flex; flex-wrap:wrap; gap:12px; margin:16px 0 4px; }
.card { background:#fff; border:1px solid var(--line); border-radius:8px; padding:10px 16px; min-width:150px; }
.card b { display:block; font-size:22px; font-weight:600; }
.card span { color:var(--muted); font-size:13px; }
.legend { display:flex; flex-wrap:wrap; gap:6px 18px; list-style:none; padding:0; margin:6px 0; font-size:13px; }
.legend li { display:flex; align-items:center; gap:6px; }
.legend .cell { width:20px; height:20px; font-size:12px; cursor:default; }
.scroll { overflow-x:auto; background:#fff; border:1px solid var(--line); border-radius:8px; }
table { border-collapse:collapse; font-size:14px; }
th, td { padding:2px 3px; text-align:center; }
thead th { vertical-align:bottom; border-bottom:1px solid var(--line); font-weight:600; }
th.step { height:150px; padding-bottom:8px; }
th.step span { writing-mode:vertical-rl; transform:rotate(180deg); font-weight:500; font-size:12px;
  color:var(--muted); white-space:nowrap; }
th.who { text-align:left; padding:3px 12px; font-weight:500; white-space:nowrap; max-width:220px;
  overflow:hidden; text-overflow:ellipsis; }
td.score { text-align:right; padding:0 10px; white-space:nowrap; font-variant-numeric:tabular-nums; }
td.status { text-align:left; padding:0 10px; white-space:nowrap; }
tbody tr:nth-child(even) { background:#fbfcfd; }
tbody tr:hover { background:#f3f6f9; }
button.sort { font:inherit; font-weight:600; color:var(--ink); background:none; border:0; padding:2px 0; cursor:pointer; }
button.sort::after { content:" ↕"; color:#b0b8c1; font-weight:400; }
th[aria-sort=ascending] button.sort::after { content:" ↑"; color:var(--ink); }
th[aria-sort=descending] button.sort::after { content:" ↓"; color:var(--ink); }
.badge { font-size:12px; border-radius:10px; padding:1px 8px; }
.badge.complete { background:#eef7f1; color:var(--pass-ink); }
.badge.incomplete { background:#fff6df; color:var(--err-ink); }
.cell { display:inline-flex; align-items:center; justify-content:center; width:26px; height:26px;
  border-radius:5px; border:1px solid transparent; font:600 14px/1 system-ui,sans-serif; padding:0; cursor:pointer; }
.cell.passed { background:var(--pass); color:var(--pass-ink); }
.cell.failed { background:var(--fail); color:var(--fail-ink); border-color:#e9a79f; }
.cell.error { color:var(--err-ink); border-color:#e8c25c;
  background:repeating-linear-gradient(135deg,var(--err) 0 4px,#fff3d1 4px 8px); }
.cell.unverified { background:var(--fail); color:var(--fail-ink); border-style:dotted;
  border-color:#c9463a; }
.cell.not-propagated { background:var(--prop); color:var(--prop-ink); border-style:dashed; border-color:#86acd8; }
.cell.skipped { background:var(--skip); color:var(--skip-ink); }
.cell.not-run { background:#fff; border:1px dashed var(--line); }
.cell:focus-visible, .cell.chosen { outline:2px solid var(--ink); outline-offset:1px; }
tfoot td, tfoot th { border-top:1px solid var(--line); padding-top:6px; padding-bottom:6px; }
td.rate { font-size:11px; font-variant-numeric:tabular-nums; }
.rate-high { color:var(--pass-ink); } .rate-mid { color:var(--err-ink); font-weight:600; }
.rate-low { color:var(--fail-ink); font-weight:700; } .rate-none { color:var(--skip-ink); }
#tip { position:absolute; z-index:10; max-width:420px; background:#1f2933; color:#fff; font-size:13px;
  line-height:1.4; padding:8px 11px; border-radius:6px; box-shadow:0 4px 14px rgba(0,0,0,.18); pointer-events:none; }
#tip b { display:block; font-weight:600; }
#detail { margin:12px 0; background:#fff; border:1px solid var(--line); border-left:4px solid var(--ink);
  border-radius:6px; padding:10px 16px; }
#detail h3 { font-size:15px; margin:0 0 4px; }
#detail p { margin:2px 0; }
.struggles { list-style:none; padding:0; margin:0; }
.struggles li { display:flex; align-items:baseline; gap:8px; padding:3px 0; }
.bar { display:inline-block; width:140px; height:10px; background:var(--fail); border-radius:5px; overflow:hidden; flex:none; }
.bar span { display:block; height:100%; background:#6fbf8f; }
.pct { width:40px; text-align:right; font-variant-numeric:tabular-nums; flex:none; }
code { font-size:12px; color:var(--muted); }
details { background:#fff; border:1px solid var(--line); border-radius:6px; margin:6px 0; padding:6px 14px; }
summary { cursor:pointer; font-weight:500; }
details ul { margin:6px 0; padding-left:20px; }
li.error, li.not-propagated { color:var(--err-ink); }
#not-graded ul { padding-left:20px; }
.calm { color:var(--pass-ink); }
footer { font-size:12px; padding:28px; }
"""

_JS = """
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("milab-data").textContent);
  var titles = {};
  data.steps.forEach(function (s) { titles[s.id] = s.title; });
  var tip = document.getElementById("tip");
  var detail = document.getElementById("detail");
  var chosen = null;

  function facts(cell) {
    var lab = data.labs[Number(cell.dataset.lab)];
    var step = cell.dataset.step;
    var got = lab.steps[step] || ["", ""];
    return {who: lab.label, step: step, title: titles[step] || step, outcome: got[0],
            word: data.words[got[0]] || got[0], reason: got[1], lab: lab};
  }
  function el(tag, text) {
    var e = document.createElement(tag);
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  function showTip(cell) {
    var f = facts(cell);
    tip.replaceChildren(el("b", f.who + " · " + f.title),
                        el("span", f.word + (f.reason ? ": " + f.reason : "")));
    tip.hidden = false;
    var r = cell.getBoundingClientRect();
    var left = Math.min(window.scrollX + r.left, window.scrollX + document.documentElement.clientWidth - tip.offsetWidth - 8);
    tip.style.left = Math.max(8, left) + "px";
    tip.style.top = (window.scrollY + r.bottom + 6) + "px";
  }
  function hideTip() { tip.hidden = true; }
  function choose(cell) {
    if (chosen) { chosen.classList.remove("chosen"); }
    chosen = cell;
    cell.classList.add("chosen");
    var f = facts(cell);
    var todo = Object.keys(f.lab.steps).filter(function (id) {
      return f.lab.steps[id][0] === "failed" && id !== f.step;
    });
    var parts = [el("h3", f.who + " · " + f.title),
                 el("p", f.word + (f.reason ? ": " + f.reason : "")),
                 el("p", "Step " + f.step + ".")];
    if (todo.length) {
      parts.push(el("p", "Also failed for " + f.who + ": " + todo.join(", ") + "."));
    }
    detail.replaceChildren.apply(detail, parts);
    detail.hidden = false;
  }
  var table = document.getElementById("heatmap");
  table.addEventListener("mouseover", function (ev) {
    var cell = ev.target.closest && ev.target.closest("button.cell");
    if (cell) { showTip(cell); }
  });
  table.addEventListener("mouseout", function (ev) {
    var cell = ev.target.closest && ev.target.closest("button.cell");
    if (cell && !cell.contains(ev.relatedTarget)) { hideTip(); }
  });
  table.addEventListener("focusin", function (ev) {
    if (ev.target.matches("button.cell")) { showTip(ev.target); }
  });
  table.addEventListener("focusout", hideTip);
  table.addEventListener("click", function (ev) {
    var cell = ev.target.closest("button.cell");
    if (cell) { choose(cell); return; }
    var sort = ev.target.closest("button.sort");
    if (sort) { sortBy(sort); }
  });
  document.addEventListener("keydown", function (ev) { if (ev.key === "Escape") { hideTip(); } });

  function sortBy(button) {
    var th = button.closest("th");
    var key = button.dataset.sort;
    var now = th.getAttribute("aria-sort");
    var dir = now === "ascending" ? "descending" : "ascending";
    table.querySelectorAll("thead th[aria-sort]").forEach(function (h) { h.setAttribute("aria-sort", "none"); });
    th.setAttribute("aria-sort", dir);
    var sign = dir === "ascending" ? 1 : -1;
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var c = 0;
      if (key === "score") {
        c = Number(a.dataset.score) - Number(b.dataset.score) || Number(a.dataset.pct) - Number(b.dataset.pct);
      }
      if (!c) { c = a.dataset.student < b.dataset.student ? -1 : a.dataset.student > b.dataset.student ? 1 : 0; }
      if (!c) { c = Number(a.dataset.order) - Number(b.dataset.order); }
      return sign * c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
})();
"""
