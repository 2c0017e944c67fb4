"""Held syn_drop events: released after the window, dropped when retracted."""

from __future__ import annotations

from tracer.probe.decode import RawRecord
from tracer.probe.grace import GraceWindow


def rec(ts: int, peer_port: int, kind: int = 1, flags: int = 1) -> RawRecord:
    return RawRecord(ts, 7, 0xFFFFFFFF, kind, 4, peer_port, 80, flags, "10.0.0.1", "10.0.0.2")


def test_release_after_window_in_order():
    g = GraceWindow(window_ns=200, slack_ns=100)
    g.hold(rec(1000, 1))
    g.hold(rec(1100, 2))
    assert g.release(1299) == []
    assert [r.peer_port for r in g.release(1300)] == [1]
    assert [r.peer_port for r in g.release(1400)] == [2]
    assert len(g) == 0


def test_retraction_removes_only_the_matching_tuple():
    g = GraceWindow(window_ns=200, slack_ns=0)
    g.hold(rec(1000, 1))
    g.hold(rec(1000, 2))
    assert g.retract(rec(1050, 2, kind=15, flags=0))
    assert not g.retract(rec(1050, 3, kind=15, flags=0))
    assert [r.peer_port for r in g.release_all()] == [1]
    assert g.retracted == 1


def test_due_ns():
    g = GraceWindow(window_ns=200, slack_ns=100)
    assert g.due_ns(0) == 0
    g.hold(rec(1000, 1))
    assert g.due_ns(1100) == 200
    assert g.due_ns(5000) == 0
