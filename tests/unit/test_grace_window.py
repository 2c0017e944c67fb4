"""GraceWindow: pending syn_drops held for the late-SYN-ACK window, retracted or released."""

from __future__ import annotations

from tracer.probe.decode import RECORD_RETRACT, RawRecord
from tracer.probe.grace import GraceWindow


def rec(ts: int, peer_port: int, *, peer="10.0.0.1", local_port=80, netns=7,
        kind=1, flags=1) -> RawRecord:
    return RawRecord(ts, netns, 0xFFFFFFFF, kind, 4, peer_port, local_port, flags, peer,
                     "10.0.0.2")


def retraction(ts: int, peer_port: int, **kw) -> RawRecord:
    return rec(ts, peer_port, kind=RECORD_RETRACT, flags=0, **kw)


def test_default_slack_is_100ms():
    assert GraceWindow(200_000_000).hold_ns == 300_000_000


def test_release_is_oldest_first_and_exactly_at_the_boundary():
    g = GraceWindow(window_ns=1000, slack_ns=0)
    for ts, port in ((0, 1), (10, 2), (500, 3)):
        g.hold(rec(ts, port))
    assert len(g) == 3
    assert g.release(999) == []
    assert [r.peer_port for r in g.release(1000)] == [1]
    assert [r.peer_port for r in g.release(1010)] == [2]
    assert len(g) == 1
    assert [r.peer_port for r in g.release(10**9)] == [3]
    assert g.release(10**9) == []


def test_retraction_matches_the_whole_four_tuple_and_namespace():
    g = GraceWindow(window_ns=1000, slack_ns=0)
    g.hold(rec(0, 1000))
    assert not g.retract(retraction(5, 1000, peer="10.0.0.9"))
    assert not g.retract(retraction(5, 1000, local_port=81))
    assert not g.retract(retraction(5, 1000, netns=8))
    assert not g.retract(retraction(5, 1001))
    assert g.retracted == 0 and len(g) == 1
    assert g.retract(retraction(5, 1000))
    assert g.retracted == 1 and len(g) == 0
    assert not g.retract(retraction(6, 1000))            # only once


def test_retraction_takes_the_oldest_of_two_identical_tuples():
    g = GraceWindow(window_ns=1000, slack_ns=0)
    g.hold(rec(0, 1))
    g.hold(rec(100, 1))
    assert g.retract(retraction(200, 1))
    assert [r.ktime_ns for r in g.release_all()] == [100]


def test_retracted_records_are_never_released():
    g = GraceWindow(window_ns=100, slack_ns=0)
    g.hold(rec(0, 1))
    g.hold(rec(1, 2))
    g.hold(rec(2, 3))
    g.retract(retraction(3, 2))
    assert [r.peer_port for r in g.release(1000)] == [1, 3]


def test_release_all_empties_in_order():
    g = GraceWindow(window_ns=10**9)
    g.hold(rec(5, 1))
    g.hold(rec(6, 2))
    assert [r.peer_port for r in g.release_all()] == [1, 2]
    assert len(g) == 0 and g.release_all() == []


def test_due_ns_waits_for_the_newest_record():
    g = GraceWindow(window_ns=200, slack_ns=100)
    assert g.due_ns(12345) == 0
    g.hold(rec(1000, 1))
    g.hold(rec(1050, 2))
    assert g.due_ns(1000) == 350
    assert g.due_ns(1349) == 1
    assert g.due_ns(1350) == 0
    assert g.due_ns(99999) == 0
