"""Recording files: writer/reader round trip, crash tolerance, report shapes, replay order."""

from __future__ import annotations

import gzip
import json
import os
import stat

import pytest

from tracer import report as reporting
from tracer.errors import TracerError, UsageError
from tracer.kinds import Kind
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
from tracer.recording import read
from tracer.replay import ReplaySource
from tracer.sinks.recorder import Recorder
from tracer.sinks.report_view import write
from tracer.stream import Sink, run

T0 = 1_800_000_000.0


def session(host: str = "web-1") -> Session:
    return Session(host=host, kernel="6.18.44", started=T0, tracer="0.1.0",
                   kinds={"syn_drop": KindAvailability(True, "skb:consume_skb")}, sysctls={})


def event(i: int, peer: str, kind: Kind = Kind.SYN_DROP, port: int = 443) -> Event:
    return Event(T0 + i, kind, peer, 40000 + i, "10.0.0.1", port, 6 if ":" in peer else 4,
                 7, "ACCEPT_QUEUE_FULL" if kind is Kind.SYN_DROP else None)


def write_recording(path: str, host: str = "web-1", end: bool = True) -> list[Event]:
    """A small recording: 3 events of 10.1.1.1, 1 of 10.1.1.2 (a tally after the first 3)."""
    rec = Recorder(path, status=open(os.devnull, "w"))
    evs = [event(0, "10.1.1.1"), event(30, "10.1.1.1"), event(70, "10.1.1.2", Kind.ACK_DROP, 80),
           event(130, "10.1.1.1")]
    rec.session(session(host))
    for e in evs[:3]:
        rec.event(e)
    rec.tally(Tally(T0 + 71, [TallyRow(7, "10.1.1.1", Kind.SYN_DROP, 2),
                              TallyRow(7, "10.1.1.2", Kind.ACK_DROP, 1)]))
    rec.counters(Counters(T0 + 71, [CounterDelta(7, "ListenDrops", 3)]))
    rec.event(evs[3])
    if end:
        rec.tally(Tally(T0 + 131, [TallyRow(7, "10.1.1.1", Kind.SYN_DROP, 3),
                                   TallyRow(7, "10.1.1.2", Kind.ACK_DROP, 1)], lost=2))
        rec.end(End(T0 + 132, 2, [CounterDelta(7, "ListenDrops", 4)]))
    else:
        rec.close()
    return evs


@pytest.mark.parametrize("name", ["r.ndjson", "r.ndjson.gz"])
def test_round_trip_plain_and_gzip(tmp_path, name):
    path = str(tmp_path / name)
    write_recording(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    if name.endswith(".gz"):
        with gzip.open(path) as f:
            assert json.loads(f.readline())["type"] == "session"
    rec = read(path)
    assert rec.complete and rec.warnings == []
    assert rec.session["host"] == "web-1" and len(rec.events) == 4
    assert [t["ts"] for _, t in rec.tallies] == [T0 + 71, T0 + 131]
    assert rec.end["counters"] == [{"netns": 7, "name": "ListenDrops", "delta": 4}]


def test_recorder_refuses_existing_symlink_and_directory(tmp_path):
    path = tmp_path / "x.ndjson"
    path.write_text("keep")
    with pytest.raises(UsageError, match="already exists"):
        Recorder(str(path))
    assert path.read_text() == "keep"
    (tmp_path / "link").symlink_to(path)
    with pytest.raises(UsageError, match="symbolic link"):
        Recorder(str(tmp_path / "link"), force=True)
    with pytest.raises(UsageError, match="directory"):
        Recorder(str(tmp_path))
    Recorder(str(path), force=True, status=open(os.devnull, "w")).close()
    assert path.read_text() == ""


def test_every_truncation_of_the_last_lines_still_reads(tmp_path):
    full = tmp_path / "full.ndjson"
    write_recording(str(full), end=False)
    data = full.read_bytes()
    last_two = data.rfind(b"\n", 0, data.rfind(b"\n", 0, len(data) - 1)) + 1
    for cut in range(last_two, len(data) + 1):
        part = tmp_path / "cut.ndjson"
        part.write_bytes(data[:cut])
        rec = read(str(part))
        complete_lines = data[:cut].count(b"\n")
        assert len(rec.events) + len(rec.tallies) + len(rec.counters) + 1 == complete_lines
        if cut < len(data) and not data[:cut].endswith(b"\n"):
            assert any("partial last line" in w for w in rec.warnings)


def test_truncated_gzip_and_garbage_lines(tmp_path):
    path = tmp_path / "r.ndjson.gz"
    write_recording(str(path))
    data = path.read_bytes()
    (tmp_path / "cut.gz").write_bytes(data[: len(data) - 30])
    rec = read(str(tmp_path / "cut.gz"))
    assert rec.session is not None and any("cut short" in w for w in rec.warnings)
    garbage = tmp_path / "g.ndjson"
    garbage.write_bytes((tmp_path / "cut.gz").read_bytes()[:0] + b'{"type":"session",'
                        b'"format":1,"host":"h"}\n\x00\x01binary\n{"type":"event","ts":1,'
                        b'"kind":"syn_drop","peer":"10.0.0.9","netns":1}\n')
    rec = read(str(garbage))
    assert len(rec.events) == 1 and any(":2: not a JSON line" in w for w in rec.warnings)


def test_future_format_and_directory_are_errors(tmp_path):
    f = tmp_path / "future.ndjson"
    f.write_text('{"type":"session","format":99}\n')
    with pytest.raises(TracerError, match="format 99"):
        read(str(f))
    with pytest.raises(UsageError, match="directory"):
        read(str(tmp_path))
    empty = tmp_path / "empty.ndjson"
    empty.write_bytes(b"\x00\xff garbage")
    with pytest.raises(TracerError, match="nothing usable"):
        reporting.load_recordings([str(empty)])


def test_report_json_shape_and_counts_from_the_last_tally(tmp_path):
    path = str(tmp_path / "a.ndjson")
    write_recording(path)
    loaded = reporting.load_recordings([path])
    out = reporting.build(loaded, "peer", reporting.ReportFilter(), None)
    assert out["by"] == "peer" and out["lost"] == 2 and out["partial"] is False
    assert out["files"] == [path]
    assert out["rows"] == [                   # two of 10.1.1.1's events share a minute
        {"peer": "10.1.1.1", "total": 3, "kinds": {"syn_drop": 3}, "first": T0,
         "last": T0 + 130, "peak_rate": 0.033},
        {"peer": "10.1.1.2", "total": 1, "kinds": {"ack_drop": 1}, "first": T0 + 70,
         "last": T0 + 70, "peak_rate": 0.017}]


def test_cut_short_file_counts_last_tally_plus_later_events(tmp_path):
    path = str(tmp_path / "cut.ndjson")
    write_recording(path, end=False)
    out = reporting.build(reporting.load_recordings([path]), "peer", reporting.ReportFilter(), None)
    assert out["partial"] is True
    assert {r["peer"]: r["total"] for r in out["rows"]} == {"10.1.1.1": 3, "10.1.1.2": 1}


def test_two_hosts_merge_and_every_by(tmp_path):
    a, b = str(tmp_path / "a.ndjson"), str(tmp_path / "b.ndjson.gz")
    write_recording(a, "web-1")
    write_recording(b, "web-2")
    loaded = reporting.load_recordings([a, b])
    assert set(loaded.events["host"]) == {"web-1", "web-2"}
    sel = reporting.ReportFilter()
    peer = reporting.build(loaded, "peer", sel, None)
    assert peer["hosts"] == ["web-1", "web-2"] and peer["rows"][0]["total"] == 6
    assert reporting.build(loaded, "subnet", sel, None)["rows"][0]["subnet"] == "10.1.1.0/24"
    ports = reporting.build(loaded, "port", sel, None)["rows"]
    assert [(r["port"], r["total"]) for r in ports] == [(443, 6), (80, 2)]
    kinds = reporting.build(loaded, "kind", sel, None)["rows"]
    assert [(r["kind"], r["total"]) for r in kinds] == [("syn_drop", 6), ("ack_drop", 2)]
    minutes = reporting.build(loaded, "minute", sel, None)["rows"]
    assert sum(r["total"] for r in minutes) == 8 and len(minutes) == 3
    assert reporting.build(loaded, "peer", sel, 1)["rows"][0]["peer"] == "10.1.1.1"
    with pytest.raises(UsageError):
        reporting.build(loaded, "colour", sel, None)


def test_time_kind_and_peer_filters(tmp_path):
    path = str(tmp_path / "a.ndjson")
    write_recording(path)
    loaded = reporting.load_recordings([path])
    late = reporting.ReportFilter(since=T0 + 60)
    out = reporting.build(loaded, "peer", late, None)
    assert out["counted_from"] == "events"
    assert {r["peer"]: r["total"] for r in out["rows"]} == {"10.1.1.1": 1, "10.1.1.2": 1}
    only = reporting.ReportFilter(kinds=("ack_drop",))
    assert [r["peer"] for r in reporting.build(loaded, "peer", only, None)["rows"]] == ["10.1.1.2"]
    from tracer.filters import parse_network
    net = reporting.ReportFilter(peers=(parse_network("10.1.1.1"),))
    assert [r["peer"] for r in reporting.build(loaded, "peer", net, None)["rows"]] == ["10.1.1.1"]
    assert reporting.parse_time("10m", now=1000.0) == 400.0
    assert reporting.parse_time("2026-11-24T14:00:00") > 0
    with pytest.raises(UsageError):
        reporting.parse_time("yesterday-ish")


@pytest.mark.parametrize("fmt", ["table", "json", "csv", "parquet"])
def test_every_format(tmp_path, fmt):
    path = str(tmp_path / "a.ndjson")
    write_recording(path)
    out = reporting.build(reporting.load_recordings([path]), "peer", reporting.ReportFilter(), None)
    target = str(tmp_path / f"out.{fmt}")
    write(out, fmt, target)
    if fmt == "json":
        assert json.loads(open(target).read())["rows"][0]["peer"] == "10.1.1.1"
    elif fmt == "csv":
        assert open(target).readline().startswith("peer,total,syn_drop,ack_drop")
    elif fmt == "parquet":
        import pandas as pd
        assert list(pd.read_parquet(target)["peer"]) == ["10.1.1.1", "10.1.1.2"]
    else:
        assert "10.1.1.1" in open(target).read()


def test_replay_feeds_the_same_stream_in_order(tmp_path):
    path = str(tmp_path / "a.ndjson")
    evs = write_recording(path)

    class Collect(Sink):
        def __init__(self):
            self.seen = []

        def session(self, s): self.seen.append(("session", s.host))
        def event(self, e): self.seen.append(("event", e.peer, e.ts))
        def tally(self, t): self.seen.append(("tally", sum(r.count for r in t.rows)))
        def counters(self, c): self.seen.append(("counters", len(c.counters)))
        def end(self, e): self.seen.append(("end", e.lost))

    sink = Collect()
    run(ReplaySource(read(path), speed=0), sink, poll_interval=0.001)
    assert sink.seen[0] == ("session", "web-1")
    assert [x[2] for x in sink.seen if x[0] == "event"] == [e.ts for e in evs]
    assert sink.seen[-2:] == [("tally", 4), ("end", 2)]
