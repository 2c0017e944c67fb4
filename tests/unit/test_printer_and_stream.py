"""Sinks print the contract's line shapes; the stream loop orders records and ends cleanly."""

from __future__ import annotations

import io
import json
import threading
import time

import pytest

from tracer.errors import EnvironmentProblem
from tracer.model import (
    CounterDelta,
    Counters,
    End,
    Event,
    Kind,
    KindAvailability,
    Session,
    Tally,
    TallyRow,
)
from tracer.sinks.printer import HEADER, JsonPrinter, TextPrinter
from tracer.stream import StopFlags, run

SESSION = Session(host="h", kernel="6.18.44", started=100.0, tracer="0.1.0",
                  kinds={"syn_drop": KindAvailability(True, "skb:consume_skb"),
                         "tw_paws": KindAvailability(False, "skb:kfree_skb", "too old")},
                  sysctls={"net.ipv4.tcp_syncookies": "1"})
EV4 = Event(101.5, Kind.SYN_DROP, "255.255.255.255", 65535, "10.0.0.1", 443, 4, 4026531840,
            "ACCEPT_QUEUE_FULL")
EV6 = Event(101.6, Kind.PAWS, "2001:db8::1", 40000, "2001:db8::2", 443, 6, 4026531840,
            "TCP_RFC7323_PAWS")
TALLY = Tally(ts=102.0, rows=[TallyRow(4026531840, "10.1.1.1", Kind.SYN_DROP, 3)], lost=1)
END = End(ts=103.0, lost=1, counters=[CounterDelta(4026531840, "ListenDrops", 3)])


def lines_of(buf: io.StringIO) -> list[dict]:
    return [json.loads(x) for x in buf.getvalue().splitlines()]


def test_json_lines_follow_the_contract():
    buf = io.StringIO()
    p = JsonPrinter(buf)
    p.session(SESSION)
    p.event(EV4)
    p.tally(TALLY)
    p.end(END)
    session, event, tally, end = lines_of(buf)
    assert session["type"] == "session" and session["format"] == 1
    assert session["kinds"]["syn_drop"] == {"available": True, "via": "skb:consume_skb"}
    assert session["kinds"]["tw_paws"]["available"] is False
    assert {"host", "kernel", "started", "tracer", "sysctls"} <= set(session)
    assert event == {"type": "event", "ts": 101.5, "kind": "syn_drop", "category": "syn",
                     "peer": "255.255.255.255", "peer_port": 65535, "local": "10.0.0.1",
                     "local_port": 443, "family": 4, "netns": 4026531840,
                     "reason": "ACCEPT_QUEUE_FULL"}
    assert tally["type"] == "tally" and tally["lost"] == 1
    assert tally["rows"] == [{"netns": 4026531840, "peer": "10.1.1.1", "kind": "syn_drop",
                              "count": 3}]
    assert end == {"type": "end", "ts": 103.0, "lost": 1, "suppressed": 0,
                   "counters": [{"netns": 4026531840, "name": "ListenDrops", "delta": 3}]}


def test_text_rows_are_bcc_style_and_narrow():
    buf = io.StringIO()
    p = TextPrinter(buf, io.StringIO())
    p.session(SESSION)
    p.event(EV4)
    p.event(EV6)
    out = buf.getvalue().splitlines()
    assert "tw_paws" in buf.getvalue() and "UNAVAILABLE: too old" in buf.getvalue()
    assert HEADER.split() == ["TIME", "KIND", "PEER:PORT", ">", "LOCAL:PORT", "REASON", "NETNS"]
    row4, row6 = out[-2], out[-1]
    assert "255.255.255.255:65535 > 10.0.0.1:443" in " ".join(row4.split())
    assert "[2001:db8::1]:40000" in row6
    assert len(out[-3]) < 100 and len(row6) < 100


class FakeSource:
    def __init__(self, batches: list[list[Event]], fail: bool = False) -> None:
        self.batches = batches
        self.fail = fail
        self.closed = False
        self.polls = 0

    def start(self) -> Session:
        if self.fail:
            raise EnvironmentProblem("no", "fix")
        return SESSION

    def poll(self, timeout: float) -> list[Event]:
        self.polls += 1
        time.sleep(0.001)
        return self.batches.pop(0) if self.batches else []

    def settle(self) -> list[Event]:
        return [EV6]

    def tally(self) -> Tally:
        return TALLY

    def counters(self) -> Counters:
        return Counters(ts=1.0, counters=[])

    def end(self) -> End:
        return END

    def close(self) -> None:
        self.closed = True


class Recorder:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def session(self, s): self.seen.append("session")
    def event(self, e): self.seen.append(f"event:{e.kind.label}")
    def tally(self, t): self.seen.append("tally")
    def counters(self, c): self.seen.append("counters")
    def end(self, e): self.seen.append("end")


def test_run_orders_records_and_stops_at_duration():
    src, sink = FakeSource([[EV4], []]), Recorder()
    run(src, sink, duration=0.05, poll_interval=0.001)
    assert sink.seen[:2] == ["session", "event:syn_drop"]
    assert sink.seen[-3:] == ["event:paws", "tally", "end"]
    assert src.closed


def test_stop_flag_from_another_thread_and_tally_now():
    src, sink, flags = FakeSource([]), Recorder(), StopFlags()
    flags.tally_now.set()
    threading.Timer(0.05, flags.stop.set).start()
    run(src, sink, flags=flags, poll_interval=0.001)
    assert sink.seen[1:3] == ["tally", "counters"]
    assert sink.seen[-2:] == ["tally", "end"]


def test_periodic_tallies():
    src, sink = FakeSource([]), Recorder()
    run(src, sink, duration=0.12, periodic=0.03, poll_interval=0.005)
    assert sink.seen.count("counters") >= 2


def test_source_closed_even_when_start_fails():
    src = FakeSource([], fail=True)
    with pytest.raises(EnvironmentProblem):
        run(src, Recorder())
    assert src.closed
