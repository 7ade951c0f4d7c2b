"""Settings: precedence, conversions and roster parsing (pure, no Azure)."""

from __future__ import annotations

import pytest

from pytest_milab.errors import ConfigError, RosterError
from pytest_milab.settings import parse_roster, resolve, valid_group


def test_command_line_wins_over_environment_and_ini():
    s = resolve({"ssh-port": "2200"}, {"ssh-port": "2300"}, {"MILAB_SSH_PORT": "2400"})
    assert s.ssh_port == 2200


def test_environment_wins_over_ini():
    s = resolve({}, {"ssh-port": "2300"}, {"MILAB_SSH_PORT": "2400"})
    assert s.ssh_port == 2400


def test_ini_applies_when_nothing_else_does():
    s = resolve({}, {"ssh-port": "2300", "group": ["a", "b"]}, {})
    assert s.ssh_port == 2300 and s.groups == ("a", "b")


def test_repeatable_options_are_comma_separated_in_env():
    s = resolve({}, {}, {"MILAB_GROUP": "lab1, lab2", "MILAB_REPORT": "out.json,out.csv"})
    assert s.groups == ("lab1", "lab2")
    assert s.reports == ("out.json", "out.csv")
    assert [t.label for t in s.targets] == ["lab1", "lab2"]


def test_bad_number_names_its_source():
    with pytest.raises(ConfigError, match="MILAB_SSH_PORT: expected a number"):
        resolve({}, {}, {"MILAB_SSH_PORT": "twenty-two"})


def test_report_suffix_is_checked():
    with pytest.raises(ConfigError, match=r"^--milab-report grades.txt: the name must end in "
                                          r"\.json, \.csv or \.html$"):
        resolve({"report": ["grades.txt"]}, {}, {})
    assert resolve({"report": ["class.HTML"]}, {}, {}).reports == ("class.HTML",)


def test_feedback_directory(tmp_path):
    assert resolve({}, {}, {"MILAB_FEEDBACK": "fb"}).feedback == "fb"
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match=r"^--milab-feedback .*f: a file is in the way; give "
                                          r"a directory$"):
        resolve({"feedback": str(tmp_path / "f")}, {}, {})


def test_flag_from_environment():
    assert resolve({}, {}, {"MILAB_EMULATOR": "yes"}).emulator is True
    assert resolve({}, {}, {"MILAB_EMULATOR": "0"}).emulator is False


def test_roster_reads_students_and_labels_them(tmp_path):
    roster = tmp_path / "class.csv"
    roster.write_text("group,subscription,student\n"
                      "managed_identity_lab,11111111-1111-1111-1111-111111111111,alice\n"
                      "managed_identity_lab,22222222-2222-2222-2222-222222222222,bob\n")
    targets = parse_roster(roster)
    assert [(t.student, t.line, t.problem) for t in targets] == [
        ("alice", 2, None), ("bob", 3, None)]
    s = resolve({"roster": str(roster)}, {}, {})
    assert [t.label for t in s.targets] == ["alice", "bob"]


def test_malformed_roster_lines_are_kept_with_their_line_numbers(tmp_path):
    roster = tmp_path / "class.csv"
    roster.write_text("group,student\n"
                      "lab-a,alice\n"
                      "lab-b,bob,extra\n"
                      ",carol\n"
                      "# a comment\n"
                      "lab-a,dave\n")
    targets = parse_roster(roster)
    problems = {t.line: t.problem for t in targets}
    assert problems[2] is None
    assert "line 3: expected 2 fields" in problems[3]
    assert "line 4: the group is empty" in problems[4]
    assert "line 6: the same lab as line 2" in problems[6]


def test_roster_without_group_column_is_one_clear_error(tmp_path):
    roster = tmp_path / "class.csv"
    roster.write_text("name,student\nx,y\n")
    with pytest.raises(RosterError, match=r"line 1: the header needs a `group` column"):
        parse_roster(roster)


def test_roster_with_unknown_column(tmp_path):
    roster = tmp_path / "class.csv"
    roster.write_text("group,studnet\nx,y\n")
    with pytest.raises(RosterError, match="unknown column 'studnet'"):
        parse_roster(roster)


def test_missing_roster_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read it"):
        resolve({"roster": str(tmp_path / "nope.csv")}, {}, {})


def test_duplicate_labels_are_made_unique():
    s = resolve({"group": ["g", "g"]}, {}, {})
    assert len({t.label for t in s.targets}) == 2


@pytest.mark.parametrize("given, message", [
    ({"timeout": "0"}, "--milab-timeout: expected a number above 0, got '0'"),
    ({"timeout": "-5"}, "--milab-timeout: expected a number above 0, got '-5'"),
    ({"concurrency": "0"}, "--milab-concurrency: expected a number at least 1, got '0'"),
    ({"propagation-deadline": "-1"},
     "--milab-propagation-deadline: expected a number at least 0, got '-1'"),
    ({"ssh-port": "70000"}, "--milab-ssh-port: expected a number from 1 to 65535, got '70000'"),
    ({"timeout": "nan"}, "--milab-timeout: expected a number above 0, got 'nan'"),
])
def test_numbers_out_of_range_are_refused_naming_the_option(given, message):
    with pytest.raises(ConfigError) as info:
        resolve(given, {}, {})
    assert str(info.value) == message


def test_roster_lines_that_are_not_text_are_bad_lines_and_the_rest_is_kept(tmp_path):
    key = tmp_path / "alice_key"
    key.write_text("k")
    roster = tmp_path / "class.csv"
    roster.write_bytes(b"group,student,ssh_key\n"
                       b"lab-a,alice,alice_key\n"
                       b"lab-b,b\xff\xfeb,\n"
                       b"lab-c,carol," + b"x" * 200_000 + b"\n"
                       b"lab-d,dave,missing_key\n"
                       b"lab-e,\x1b[2Aeve\x07,\n")
    targets = parse_roster(roster)
    assert [(t.line, t.problem) for t in targets] == [
        (2, None),
        (3, "roster class.csv, line 3: the line is not UTF-8 text"),
        (4, "roster class.csv, line 4: the line is over 4096 bytes"),
        (5, "roster class.csv, line 5: ssh_key 'missing_key': no such file"),
        (6, None)]
    assert targets[0].ssh_key == str(key)
    assert targets[4].student == "[2Aeve"  # no escape sequence reaches a terminal


@pytest.mark.parametrize("name", ["lab.", "lab\n", "lab\nx", "a" * 91, "lab name",
                                  "lab;rm", "lab/x", "."])
def test_a_group_name_azure_refuses_is_refused(name, tmp_path):
    """The whole name is matched (no newline after it) and it may not end in a period."""
    assert not valid_group(name)
    if name.strip() == name:  # (options are stripped of the space around them)
        with pytest.raises(ConfigError, match="not a valid resource group name"):
            resolve({"group": [name]}, {}, {})
    if "\n" not in name:
        roster = tmp_path / "r.csv"
        roster.write_text(f"group\n{name}\n")
        targets = parse_roster(roster)
        assert len(targets) == 1 and "not a valid resource group name" in targets[0].problem


@pytest.mark.parametrize("name", ["lab", "a" * 90, "my.lab_(1)-x", "Übung-1", "lab.x"])
def test_group_names_azure_accepts(name):
    assert valid_group(name)
    assert resolve({"group": [name]}, {}, {}).targets[0].group == name
