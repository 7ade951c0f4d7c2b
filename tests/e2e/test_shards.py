"""A class over many machines: `--milab-shard K/N` grades a stable share of the labs and
`milab merge-reports` joins the shards' reports into the grade book one run would write."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from e2ekit import grade, suite_defects, suite_spec, suite_stages

from pytest_milab.provision import build_in_local_azure
from pytest_milab.settings import LabTarget, resolve, shard_of

STUDENTS = ["ana", "ben", "cy", "dee", "eli"]


def comparable(report: dict) -> dict:
    return {"groups": sorted(report["groups"], key=lambda g: g["label"]),
            "not_graded": sorted(report["not_graded"], key=lambda g: g["label"])}


@pytest.mark.slow
def test_three_shards_merged_are_one_run(local_azure, tmp_path):
    stages, state = suite_defects()["jq"].apply(suite_stages())
    build_in_local_azure(local_azure, ["shard-dee"], stages, suite_spec(), state=state)
    key, _ = build_in_local_azure(local_azure, [f"shard-{s}" for s in STUDENTS if s != "dee"],
                                  suite_stages(), suite_spec())
    roster = tmp_path / "class.csv"
    roster.write_text("group,student\n" + "".join(f"shard-{s},{s}\n" for s in STUDENTS)
                      + ",nobody\n")
    whole = grade(local_azure, key, tmp_path / "whole", extra=("--milab-roster", str(roster)))
    shards = [grade(local_azure, key, tmp_path / f"shard{k}",
                    extra=("--milab-roster", str(roster), "--milab-shard", f"{k}/3"))
              for k in (1, 2, 3)]
    labels = [{g["label"] for g in s.report["groups"] + s.report["not_graded"]} for s in shards]
    assert sum(len(x) for x in labels) == 6 and set().union(*labels) == {*STUDENTS, "nobody"}
    merged = tmp_path / "merged.json"
    result = subprocess.run([sys.executable, "-m", "pytest_milab.cli", "merge-reports",
                             "--out", str(merged), "--out", str(tmp_path / "merged.csv"),
                             *(str(s.directory / "grades.json") for s in shards)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert comparable(json.loads(merged.read_text())) == comparable(whole.report)
    assert sorted((tmp_path / "merged.csv").read_text().splitlines()) == sorted(
        whole.file("grades.csv").splitlines())


def test_a_lab_belongs_to_one_shard_whatever_the_order(tmp_path):
    """Two rosters with the same class in opposite orders: every shard grades the same labs,
    each lab in exactly one shard, the shards about even."""
    lines = [f"g{i},s{i}\n" for i in range(200)]
    forward, backward = tmp_path / "a.csv", tmp_path / "b.csv"
    forward.write_text("group,student\n" + "".join(lines))
    backward.write_text("group,student\n" + "".join(reversed(lines)))
    shares = {}
    for roster in (forward, backward):
        shares[roster] = [{t.label for t in resolve({"roster": str(roster),
                                                     "shard": f"{k}/4"}, {}, {}).targets}
                          for k in (1, 2, 3, 4)]
    assert shares[forward] == shares[backward]
    assert set().union(*shares[forward]) == {f"s{i}" for i in range(200)}
    assert sum(len(share) for share in shares[forward]) == 200
    assert all(20 < len(share) < 80 for share in shares[forward])


def test_an_empty_shard_writes_a_valid_empty_report(local_azure, tmp_path):
    roster = tmp_path / "class.csv"
    roster.write_text("group,student\nonly-lab,solo\n")
    mine = shard_of(LabTarget(group="only-lab", student="solo"), 3)
    other = 1 if mine != 1 else 2
    key = tmp_path / "key"
    key.write_text("unused: no lab is graded\n")
    run = grade(local_azure, key, tmp_path / "run",
                extra=("--milab-roster", str(roster), "--milab-shard", f"{other}/3"))
    assert run.report == {"groups": [], "not_graded": []}, run.output[-2000:]
    assert run.returncode == 0
