"""The README's screenshot of the class report: a real class of 20 labs, graded for real.

    python benchmarks/class_report_screenshot.py [--out docs/class-report.png] [--keep DIR]
           [--chromium /usr/bin/chromium]

What it does:

1. Starts a local Azure in this process and builds 20 labs in it with the example suite's
   stages, as its operator: 8 complete, 11 with one step broken the way a student would break
   it (the suite's own defects, `pytest_milab_defects`: jq twice, a VM without identity, a missing Reader grant, SSH
   closed, ...), and one complete lab whose VM then refuses SSH, so its in-VM steps cannot be
   decided (`error`, grade again). The roster (student and group) has one more line, a
   duplicate, which is not graded.
2. Grades the class as the Reader-only grader in a subprocess (the example suite, through the
   plugin, as `tests/e2e/e2ekit.grade` does) with `--milab-report class.html` and
   `--milab-feedback feedback`.
3. Opens class.html in the distribution's Chromium (headless, driven by Playwright), points
   at a failed cell so its reason shows, and saves a screenshot of the page's top part (summary,
   legend, heatmap with the pass rates, the steps where the class struggled).

Without a local Azure CLI the two Azure CLI steps are skipped for every lab (grey cells).
Takes about a minute or two on the 2-core development machine.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))  # e2ekit: how the tests build and grade labs

# student -> the defect of their lab (None: complete; "undecided": complete, SSH refused)
CLASS = {
    "Amara Okafor": None, "Ben Carter": "jq", "Chen Wei": None,
    "Dalia Haddad": "vm-identity", "Elif Yılmaz": None, "Finn O'Brien": "reader-assignment",
    "Grace Mensah": "identity-access-policy", "Hugo Lefèvre": None, "Isha Patel": "jq",
    "Jonas Berg": "ssh", "Kenji Sato": None, "Lucía Romero": "sp-login",
    "Mateo Rossi": "undecided", "Nadia Ivanova": "vm-tags", "Omar Farouk": None,
    "Priya Nair": "secret-read", "Quinn Murphy": "service-principal", "Rosa Jiménez": None,
    "Sam Taylor": "operator-access-policy", "Tomás Silva": None,
}
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]


def group_of(student: str) -> str:
    return "lab-" + "".join(c for c in student.lower() if c.isascii() and c.isalnum())


def build_class(azure, spec) -> Path:
    from e2ekit import suite_defects, suite_stages

    from pytest_milab.provision import build_in_local_azure

    key, defects = None, suite_defects()
    for student, defect in CLASS.items():
        if defect in (None, "undecided"):
            stages, state = suite_stages(), {}
        else:
            stages, state = defects[defect].apply(suite_stages())
        started = time.monotonic()
        key, failures = build_in_local_azure(azure, [group_of(student)], stages, spec,
                                             state=state)
        # Without a local Azure CLI its stage fails: the CLI steps are then skipped. A broken
        # lab's later stages may fail too, as the student's would (that is the defect).
        failures = [f for f in failures if "azure cli" not in str(f)]
        if failures and defect in (None, "undecided"):
            raise SystemExit(f"building {student}'s complete lab failed: {failures[0]}")
        print(f"built {group_of(student)} ({defect or 'complete'}) in "
              f"{time.monotonic() - started:.1f}s"
              + (f"; {len(failures)} stage(s) refused, as broken" if failures else ""),
              flush=True)
    return key


def screenshot(html: Path, out: Path, chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS)
        page = browser.new_page(viewport={"width": 1360, "height": 900},
                                device_scale_factor=1)
        requests = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(html.as_uri())
        # Point at a failed cell of a student whose lab has one defect: its reason shows.
        row = page.locator("#heatmap tbody tr").filter(
            has=page.locator("th.who", has_text="Sam Taylor"))
        row.locator("button.cell.failed").first.hover()
        bottom = page.evaluate(
            "document.getElementById('struggles').getBoundingClientRect().bottom + scrollY")
        page.screenshot(path=str(out), full_page=True,
                        clip={"x": 0, "y": 0, "width": 1360, "height": bottom + 16})
        browser.close()
    if requests != [html.as_uri()]:
        raise SystemExit(f"the report asked for more than itself: {requests}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "class-report.png")
    parser.add_argument("--keep", type=Path, help="keep class.html, the feedback files and "
                        "the other reports in this directory")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()

    from e2ekit import grade, suite_spec

    from pytest_milab.emulator import LocalAzure

    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="milab-class-report-"))
    try:
        with LocalAzure() as azure:
            key = build_class(azure, suite_spec())
            for student, defect in CLASS.items():
                if defect == "undecided":
                    vm = (f"/subscriptions/{azure.subscription_id}/resourceGroups/"
                          f"{group_of(student)}/providers/Microsoft.Compute/virtualMachines/"
                          f"{suite_spec().vm_name}")
                    azure.knobs.faults.ssh_refuse(3600, vm=vm)
            roster = workdir / "class.csv"
            lines = ["student,group"] + [f'"{s}",{group_of(s)}' for s in CLASS]
            lines.append(f'"Ben Carter (again)",{group_of("Ben Carter")}')  # a duplicate line
            roster.write_text("\n".join(lines) + "\n", encoding="utf-8")
            graded_at = time.monotonic()
            run = grade(azure, key, workdir, extra=[
                "--milab-roster", str(roster), "--milab-report", str(workdir / "class.html"),
                "--milab-feedback", str(workdir / "feedback"), "-q"])
            print(f"graded in {time.monotonic() - graded_at:.1f}s, exit {run.returncode}")
        html = workdir / "class.html"
        if not html.exists():
            raise SystemExit(f"no class.html was written:\n{run.output[-3000:]}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        screenshot(html, args.out, args.chromium)
        print(f"screenshot: {args.out} (all in {time.monotonic() - started:.0f}s)")
        if args.keep:
            shutil.copytree(workdir, args.keep, dirs_exist_ok=True)
            print(f"reports and feedback kept in {args.keep}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
