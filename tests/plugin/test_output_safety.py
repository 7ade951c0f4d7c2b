"""What a student's machine says reaches no terminal, report or log with control characters,
and a keyed digest never shows its HMAC (a student could test guesses against it)."""

from __future__ import annotations

import json
import re

import pytest

from pytest_milab.digests import Digest, received
from pytest_milab.evidence import Gatherer
from pytest_milab.lab import Lab
from pytest_milab.settings import LabTarget, Settings
from pytest_milab.vm.probe import MARK, _result
from pytest_milab.vm.ssh import CommandResult

ESCAPES = "\x1b]52;c;c3Rlcw==\x07\x1b[1A\x1b[2K\r\x9b31m\u202e"
HMAC = "7f11" + "ab" * 30
HEX64 = re.compile(r"[0-9a-f]{64}")

CONFTEST = """
import pytest
from pytest_milab import LabEvidence
from pytest_milab.evidence import SshOutcome
from pytest_milab.digests import received

@pytest.fixture
def evidence(_milab_target):
    probe = {"imds": {"status": 500, "message": "ok %s then more"},
             "secret_read": {"status": 200, "value": {"hmac": "%s", "length": 12}}}
    return LabEvidence(label=_milab_target.label, group=_milab_target.group,
                       subscription="sub-1", control={"group": {"id": "/g"}},
                       ssh=SshOutcome(ok=True), probe=%s)
"""

SUITE = """
import pytest

@pytest.mark.milab_step("imds", title="IMDS")
def test_imds(lab):
    message = lab.probe("imds")["message"]
    print("the machine said", message)
    assert lab.probe("imds")["status"] == 200, f"IMDS said {message}"

@pytest.mark.milab_step("secret-read", title="Secret")
def test_secret(lab):
    result = lab.probe("secret_read")
    assert lab.same_secret(result.get("value"), "the portal phrase"), "not the lab's secret"

def test_plain_check_on_a_lab(lab):
    message = lab.probe("imds")["message"]
    raise RuntimeError(f"boom {message}")
"""


def suite_with(pytester, raw: bool):
    """raw: the evidence as a test could hand it (escapes and all), else as the engine keeps a
    machine's answer (`received`)."""
    pytester.makeconftest(CONFTEST % (ESCAPES.encode("unicode_escape").decode(), HMAC,
                                      "probe" if raw else "received(probe)"))
    pytester.makepyfile(test_suite=SUITE)
    return pytester


@pytest.mark.parametrize("tb", ["auto", "short", "line", "long", "native", "no"])
def test_escape_sequences_reach_no_output(pytester, azure_env, tb):
    """The report text the plugin builds is cleaned too, whatever --tb says, even for evidence
    that did not come through `received` (a suite's own fixture)."""
    suite_with(pytester, raw=True)
    result = pytester.runpytest("--milab-group", "lab", f"--tb={tb}", "-rA", "-l",
                                "--junitxml", "j.xml", "--milab-report", "g.json")
    out = result.stdout.str() + result.stderr.str()
    assert "IMDS said ok" in out or tb == "no"
    for char in ("\x1b", "\x07", "\x9b", "\u202e", "\r"):
        assert char not in out, (tb, char)
    xml = (pytester.path / "j.xml").read_text()
    assert "#x1B" not in xml and "\x1b" not in xml
    assert "\x1b" not in (pytester.path / "g.json").read_text()


def test_a_machines_answer_is_cleaned_as_it_comes_in():
    line = MARK + "n1 " + json.dumps({"imds": {"message": ESCAPES, ESCAPES: [ESCAPES]},
                                      "secret": {"value": {"hmac": HMAC, "length": 3}}})
    got = _result(CommandResult(stdout=line + "\n", stderr="", exit_code=0), MARK + "n1 ")
    text = json.dumps(got)
    assert not re.search(r"\\u00(1b|07|9b|0d)|\\u202e", text), text
    assert got["imds"]["message"] == "]52;c;c3Rlcw==[1A[2K31m"
    assert isinstance(got["secret"]["value"], Digest)


def test_a_digest_never_shows_its_hmac():
    found = received({"value": {"hmac": HMAC, "length": 3}, "other": {"hmac": 5}})
    value = found["value"]
    assert HMAC not in repr(found) and HMAC not in str(value) and HMAC not in f"{value}"
    assert repr(value) == "<keyed digest of 3 bytes>"
    assert value["hmac"] == HMAC and isinstance(value, dict)
    assert not isinstance(found["other"], Digest)  # not a digest's shape: left as it is


def test_digests_and_text_are_found_wherever_the_answer_puts_them():
    """One pass over the answer: keys are stripped before a digest's shape is judged, digests
    are found at any depth, and plain text (printable, non-ASCII too) is kept as it is."""
    found = received({"a\x1b": [{"hm\u202eac": HMAC, "length\x00": 3}, [{"hmac": HMAC,
                                                                         "length": 4}]],
                      "b": {"hmac": HMAC, "length": 5, "more": 1}, "c": "Grüße 😀 ok",
                      "d": {"hmac": 7, "length": 1}, "e": ["x\r\ny\x07", None, 2.5]})
    assert isinstance(found["a"][0], Digest) and found["a"][0] == {"hmac": HMAC, "length": 3}
    assert isinstance(found["a"][1][0], Digest) and repr(found["a"][1][0]).endswith("4 bytes>")
    assert not isinstance(found["b"], Digest) and not isinstance(found["d"], Digest)
    assert found["c"] == "Grüße 😀 ok" and found["e"] == ["x\ny", None, 2.5]
    assert HMAC not in repr(found["a"])


def test_each_lab_has_its_own_digest_key():
    suite = type("Suite", (), {"read_names": None, "part_names": None})()
    gatherer = Gatherer(Settings(), suite, None, None, lambda: None)
    a = gatherer._new_evidence(LabTarget("a", label="a"))
    b = gatherer._new_evidence(LabTarget("b", label="b"))
    assert len(a.digest_key) == 32 and a.digest_key != b.digest_key
    # Gathered again (provision mode): the same lab keeps its key.
    assert gatherer._new_evidence(LabTarget("a", label="a")).digest_key == a.digest_key
    # A digest made with one lab's key is not the other lab's.
    import hashlib
    import hmac

    digest = Digest(hmac=hmac.new(a.digest_key, b"phrase", hashlib.sha256).hexdigest(), length=6)
    assert Lab(a).same_secret(digest, "phrase") and not Lab(b).same_secret(digest, "phrase")


def test_no_hmac_in_locals_tracebacks_junit_or_the_debug_log(pytester, azure_env):
    suite_with(pytester, raw=False)
    result = pytester.runpytest("--milab-group", "lab", "-vv", "-l", "--tb=long", "-rA",
                                "--debug", "--junitxml", "j.xml")
    out = result.stdout.str() + result.stderr.str()
    assert "test_secret?lab? FAILED" in out.replace("[", "?").replace("]", "?")
    assert "<keyed digest of 12 bytes>" in out  # the locals are shown, the HMAC is not
    for text in (out, (pytester.path / "j.xml").read_text(),
                 (pytester.path / "pytestdebug.log").read_text()):
        assert HMAC not in text
