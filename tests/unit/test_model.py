"""The stream records and their JSON shapes."""

from __future__ import annotations

import pytest

from tracer.kinds import Category, Kind
from tracer.model import (
    CounterDelta,
    Counters,
    End,
    Event,
    KindAvailability,
    Session,
    Tally,
    TallyRow,
)


def test_kind_availability_json_omits_why_when_absent():
    assert KindAvailability(True, "skb:kfree_skb").to_json() == {
        "available": True, "via": "skb:kfree_skb"}
    assert KindAvailability(False, "a:b", "too old").to_json() == {
        "available": False, "via": "a:b", "why": "too old"}


def test_session_json():
    s = Session(host="web1", kernel="6.18.44", started=1700000000.25, tracer="0.1.0",
                kinds={"paws": KindAvailability(True, "skb:kfree_skb")},
                sysctls={"net.core.somaxconn": "4096"})
    assert s.to_json() == {
        "type": "session", "format": 1, "host": "web1", "kernel": "6.18.44",
        "started": 1700000000.25, "tracer": "0.1.0",
        "kinds": {"paws": {"available": True, "via": "skb:kfree_skb"}},
        "sysctls": {"net.core.somaxconn": "4096"}}
    capped = Session("h", "k", 1.0, "0.1.0", {}, {}, max_events_per_second=0)
    assert capped.to_json()["max_events_per_second"] == 0


def test_event_json_rounds_ts_and_keeps_null_reason():
    e = Event(1700000000.123456789, Kind.TW_REUSE_OUT, "2001:db8::9", 443, "2001:db8::1",
              40000, 6, 4026531840, None)
    assert e.category is Category.TIMEWAIT
    assert e.to_json() == {
        "type": "event", "ts": 1700000000.123457, "kind": "tw_reuse_out",
        "category": "timewait", "peer": "2001:db8::9", "peer_port": 443,
        "local": "2001:db8::1", "local_port": 40000, "family": 6, "netns": 4026531840,
        "reason": None}
    assert list(e.to_json()) == ["type", "ts", "kind", "category", "peer", "peer_port",
                                 "local", "local_port", "family", "netns", "reason"]


def test_tally_counters_end_json():
    t = Tally(ts=5.0000004, rows=[TallyRow(1, "10.0.0.1", Kind.ACK_DROP, 7)], lost=2,
              suppressed=3, totals={"ack_drop": 7}, ports={"10.0.0.1": {443: 7}}, evicted=4)
    assert t.to_json() == {"type": "tally", "ts": 5.0, "lost": 2, "suppressed": 3,
                           "evicted": 4, "totals": {"ack_drop": 7},
                           "rows": [{"netns": 1, "peer": "10.0.0.1", "kind": "ack_drop",
                                     "count": 7}]}
    assert Tally(ts=1.0, rows=[]).to_json() == {"type": "tally", "ts": 1.0, "lost": 0,
                                                "suppressed": 0, "evicted": 0, "totals": {},
                                                "rows": []}
    c = Counters(ts=6.0, counters=[CounterDelta(1, "ListenOverflows", 4)])
    assert c.to_json() == {"type": "counters", "ts": 6.0,
                           "counters": [{"netns": 1, "name": "ListenOverflows", "delta": 4}]}
    e = End(ts=7.0, lost=1, counters=[CounterDelta(2, "PAWSEstab", 0)], suppressed=9)
    assert e.to_json() == {"type": "end", "ts": 7.0, "lost": 1, "suppressed": 9,
                           "counters": [{"netns": 2, "name": "PAWSEstab", "delta": 0}]}


def test_records_are_immutable():
    row = TallyRow(1, "10.0.0.1", Kind.PAWS, 1)
    with pytest.raises(AttributeError):
        row.count = 2  # type: ignore[misc]
