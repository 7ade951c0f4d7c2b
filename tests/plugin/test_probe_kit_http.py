"""The probe kit's own plumbing (pytest_milab/vm/probe_kit.py), run in this process: the
header parser it puts in place of http.client's gives the same message as the email parser, and
its parts run at once."""

from __future__ import annotations

import email.parser
import http.client
import io

import pytest

from pytest_milab.vm import probe_kit

BLOCKS = [
    b"Content-Type: application/json; charset=utf-8\r\nContent-Length: 12\r\n"
    b"Retry-After: 3\r\nlocation: https://x/y\r\nWWW-Authenticate: Basic realm=\"/a/b.key\"\r\n",
    b"X-Dup: one\r\nx-dup: two\r\nEmpty:\r\nSpaced:   \t v \r\n",
    b"Folded: first\r\n  second line\r\n\tthird\r\nNext: n\n",  # folding, a bare LF
    b"",  # no headers at all
    b"  leading continuation\r\nA: b\r\n",  # malformed: the email parser decides
    b"Bad Name: x\r\nA: b\r\n",  # a name with a space: the email parser's body
    b"From someone\r\nA: b\r\n",
    b"A: b\rc: d\r\n",  # a lone CR
    b"Caf\xe9: cr\xe8me\r\n",  # Latin-1
    b"A: form\x0cfeed, next\x85line, sep\x1c\x1d\x1e, tab\x0b\r\nB: c\r\n",  # not line ends here
    b"A: x\x0cB:y\x85C:z\r\n",  # one header to the email parser
    b": no name\r\nA: b\r\n",
    b"A: b\r\nLast: no line end",
]


def _email(block: bytes) -> http.client.HTTPMessage:
    return email.parser.Parser(_class=http.client.HTTPMessage).parsestr(
        block.decode("iso-8859-1"))


@pytest.mark.parametrize("block", BLOCKS)
def test_the_kit_s_header_parser_gives_the_email_parser_s_message(block):
    ended = block.endswith(b"\n") or not block  # else the answer ended mid-line (EOF)
    fp = io.BytesIO(block + (b"\r\nbody" if ended else b""))
    mine, theirs = probe_kit._parse_headers(fp), _email(block)
    assert type(mine) is type(theirs)
    assert mine._headers == theirs._headers
    assert ({k: v for k, v in vars(mine).items() if k != "defects"}
            == {k: v for k, v in vars(theirs).items() if k != "defects"})
    assert mine.items() == theirs.items()
    assert [type(d) for d in mine.defects] == [type(d) for d in theirs.defects]
    assert mine.get_payload() == theirs.get_payload()
    assert mine.get("content-length") == theirs.get("content-length")
    assert fp.read() == (b"body" if ended else b"")  # the body left unread


def test_the_kit_s_header_parser_keeps_http_client_s_limits():
    with pytest.raises(http.client.LineTooLong):
        probe_kit._parse_headers(io.BytesIO(b"A: " + b"x" * 70000 + b"\r\n\r\n"))
    with pytest.raises(http.client.HTTPException, match="more than 100 headers"):
        probe_kit._parse_headers(io.BytesIO(b"A: b\r\n" * 101 + b"\r\n"))


def test_the_kit_runs_every_part_at_once_and_waits_for_all(monkeypatch):
    """run_all: parts run concurrently, a part named in `after` finishes first, a part that
    raises still reports, and it returns only once every part has its result."""
    import threading
    import time

    started, order = threading.Barrier(2, timeout=5), []

    def slow(p):
        started.wait()  # the two first parts must run at the same time
        time.sleep(0.05)
        order.append(p["name"])
        return {"ok": p["name"]}

    def broken(p):
        raise ValueError("nope")

    monkeypatch.setitem(probe_kit.OPS, "milab-test-slow", slow)
    monkeypatch.setitem(probe_kit.OPS, "milab-test-broken", broken)
    parts = [{"name": "a", "op": "milab-test-slow"}, {"name": "b", "op": "milab-test-slow"},
             {"name": "c", "op": "milab-test-broken", "after": ["a", "b"]}]
    results, events = {}, {p["name"]: threading.Event() for p in parts}
    probe_kit.run_all(results, events, parts)
    assert results == {"a": {"ok": "a"}, "b": {"ok": "b"}, "c": {"error": "ValueError: nope"}}
    assert sorted(order) == ["a", "b"]
    probe_kit.run_all({}, {}, [])  # nothing to run: returns at once


def test_a_part_others_wait_for_goes_first_to_a_busy_host(monkeypatch):
    """Both slots to a host taken: of the calls waiting, the one for a part that another part
    comes after goes first, whatever came before it."""
    import threading
    import time

    slots, order = probe_kit._Slots(2), []
    gates = {n: threading.Event() for n in ("early1", "early2", "secret", "sign-in")}
    gates["sign-in"].set()
    monkeypatch.setattr(probe_kit, "_SLOTS", {("host", 443): slots})

    def call(p):
        gates[p["name"]].wait(5)  # they queue in the order the test opens the gates
        slots.acquire()
        try:
            order.append(p["name"])
        finally:
            slots.release()
        return {}

    monkeypatch.setitem(probe_kit.OPS, "milab-test-call", call)
    parts = [{"name": n, "op": "milab-test-call"} for n in ("early1", "early2", "secret")]
    parts.append({"name": "sign-in", "op": "milab-test-call", "after": ["secret"]})
    results, events = {}, {p["name"]: threading.Event() for p in parts}
    slots.acquire()
    slots.acquire()  # the host is busy
    runner = threading.Thread(target=probe_kit.run_all, args=(results, events, parts))
    runner.start()
    for queued, name in enumerate(("early1", "early2", "secret"), 1):
        gates[name].set()
        deadline = time.monotonic() + 5
        while len(slots.waiting) < queued and time.monotonic() < deadline:
            time.sleep(0.005)
    assert len(slots.waiting) == 3 and order == []
    slots.release()  # one slot: the secret's call
    deadline = time.monotonic() + 5
    while not order and time.monotonic() < deadline:
        time.sleep(0.005)
    slots.release()
    runner.join(5)
    assert order[0] == "secret" and sorted(order[1:3]) == ["early1", "early2"], order
    assert len(results) == 4 and "sign-in" in order
