"""A recording as a source: the same stream, at recorded pace (or faster), into any sink.

The dashboard cannot tell a replay from the kernel: it receives the recorded session,
events, tallies and counters in order, spaced as they were (divided by --speed).
"""

from __future__ import annotations

import time

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
from tracer.recording import Recording
from tracer.stream import Source, SourceFinished


def _session(d: dict) -> Session:
    kinds = {k: KindAvailability(v.get("available", False), v.get("via", ""), v.get("why"))
             for k, v in d.get("kinds", {}).items()}
    return Session(host=d.get("host", "?"), kernel=d.get("kernel", "?"),
                   started=d.get("started", 0.0), tracer=d.get("tracer", "?"), kinds=kinds,
                   sysctls=d.get("sysctls", {}), format=d.get("format", 1))


def _event(d: dict) -> Event:
    return Event(ts=d["ts"], kind=Kind.from_label(d["kind"]), peer=d["peer"],
                 peer_port=d["peer_port"], local=d["local"], local_port=d["local_port"],
                 family=d["family"], netns=d["netns"], reason=d.get("reason"))


def _tally(d: dict) -> Tally:
    rows = [TallyRow(r["netns"], r["peer"], Kind.from_label(r["kind"]), r["count"])
            for r in d.get("rows", [])]
    return Tally(ts=d["ts"], rows=rows, lost=d.get("lost", 0),
                 suppressed=d.get("suppressed", 0), totals=d.get("totals", {}))


def _deltas(items: list[dict]) -> list[CounterDelta]:
    return [CounterDelta(c["netns"], c["name"], c["delta"]) for c in items]


class ReplaySource(Source):
    """Yields a Recording's records in order; `speed` 0 means as fast as possible.

    hold_at_end: once everything is given, keep answering polls with nothing instead of
    finishing the stream, so a board stays up until the user quits.
    """

    def __init__(self, recording: Recording, speed: float = 1.0,
                 hold_at_end: bool = False) -> None:
        self.rec = recording
        self.speed = speed
        self.hold_at_end = hold_at_end
        self._timeline: list[tuple[float, str, dict]] = []
        self._pos = 0
        self._t0 = 0.0
        self._wall0 = 0.0
        self._last_tally: dict | None = None
        self._last_counters: list[dict] = []

    def start(self) -> Session:
        rec = self.rec
        timeline = [(e["ts"], "event", e) for e in rec.events]
        timeline += [(t["ts"], "tally", t) for _, t in rec.tallies]
        timeline += [(c["ts"], "counters", c) for c in rec.counters]
        timeline.sort(key=lambda x: x[0])
        self._timeline = timeline
        session = rec.session or {"host": "?", "kernel": "?", "started": timeline[0][0]
                                  if timeline else 0.0}
        self._t0 = session.get("started", 0.0)
        self._wall0 = time.monotonic()
        return _session(session)

    def poll(self, timeout: float) -> list[Event]:
        """Events due by now; tallies and counters are kept for the next tally()/counters().

        SourceFinished once the recording is over, unless holding at the end.
        """
        if self.finished and not self.hold_at_end:
            raise SourceFinished
        deadline = time.monotonic() + timeout
        out: list[Event] = []
        while self._pos < len(self._timeline) and len(out) < 5000:
            ts, kind, obj = self._timeline[self._pos]
            if self.speed > 0:
                due = self._wall0 + (ts - self._t0) / self.speed
                if due > deadline:
                    if not out:
                        time.sleep(max(0.0, deadline - time.monotonic()))
                    break
                time.sleep(max(0.0, due - time.monotonic()))
            self._pos += 1
            if kind == "event":
                out.append(_event(obj))
            elif kind == "tally":
                self._last_tally = obj
            else:
                self._last_counters = obj.get("counters", [])
        if self.finished and not out and timeout:
            time.sleep(timeout)
        return out

    @property
    def finished(self) -> bool:
        return self._pos >= len(self._timeline)

    def tally(self) -> Tally:
        if self.finished and self.rec.tallies:
            return _tally(self.rec.tallies[-1][1])
        return _tally(self._last_tally or {"ts": time.time(), "rows": []})

    def counters(self) -> Counters:
        items = (self.rec.end or {}).get("counters", self._last_counters) if self.finished \
            else self._last_counters
        return Counters(ts=time.time(), counters=_deltas(items))

    def end(self) -> End:
        end = self.rec.end or {}
        return End(ts=end.get("ts", time.time()), lost=end.get("lost", 0),
                   suppressed=end.get("suppressed", 0),
                   counters=_deltas(end.get("counters", self._last_counters)))
