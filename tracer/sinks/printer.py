"""Sinks that print the stream: NDJSON for machines, one bcc-style line per event for people.

Both flush after every line so that `tracer watch | grep` and scripts reading a pipe see
each refusal as it happens.
"""

from __future__ import annotations

import json
import time
from typing import TextIO

from tracer.model import Counters, End, Event, Session, Tally
from tracer.stream import Sink


class JsonPrinter(Sink):
    """The machine contract: one JSON object per line, in stream order."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def _write(self, obj: dict) -> None:
        self.out.write(json.dumps(obj, separators=(",", ":")) + "\n")
        self.out.flush()

    def session(self, s: Session) -> None:
        self._write(s.to_json())

    def event(self, e: Event) -> None:
        self.out.write(e.json_line())
        self.out.flush()

    def tally(self, t: Tally) -> None:
        self._write(t.to_json())

    def counters(self, c: Counters) -> None:
        self._write(c.to_json())

    def end(self, e: End) -> None:
        self._write(e.to_json())


def endpoint(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


# Endpoints get their full IPv4 width (21) so the columns stay aligned; REASON gets 17 so a
# row stays under 100 columns: only the rare longer reasons push NETNS a little right.
ROW = "{:<8} {:<14} {:<21} > {:<21} {:<17} {}"
HEADER = ROW.format("TIME", "KIND", "PEER:PORT", "LOCAL:PORT", "REASON", "NETNS")


class TextPrinter(Sink):
    """Human lines: a start banner with kind availability, a header row, a row per event."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def session(self, s: Session) -> None:
        self.out.write(f"Tracing TCP refusals on {s.host} (Linux {s.kernel}), Ctrl-C to end.\n")
        for kind, how in s.kinds.items():
            if how.available:
                note = f" ({how.why})" if how.why else ""
                self.out.write(f"  {kind:<15} via {how.via}{note}\n")
            else:
                self.out.write(f"  {kind:<15} UNAVAILABLE: {how.why}\n")
        self.out.write(HEADER + "\n")
        self.out.flush()

    def event(self, e: Event) -> None:
        when = time.strftime("%H:%M:%S", time.localtime(e.ts))
        self.out.write(ROW.format(when, e.kind.label, endpoint(e.peer, e.peer_port),
                                  endpoint(e.local, e.local_port), e.reason or "-",
                                  e.netns) + "\n")
        self.out.flush()

    def tally(self, t: Tally) -> None:
        peers = {(r.netns, r.peer) for r in t.rows}
        total = sum(r.count for r in t.rows)
        self.out.write(f"\n{total} refusals from {len(peers)} peers (exact in-kernel counts)")
        if t.lost or t.suppressed:
            self.out.write(f"; {t.lost} events lost, {t.suppressed} held back by the rate cap")
        if t.evicted:
            self.out.write(f"; {t.evicted} peer entries evicted (totals still exact)")
        self.out.write("\n")
        for row in t.rows[:10]:
            self.out.write(f"  {row.count:>8}  {row.kind.label:<14} {row.peer}  "
                           f"netns {row.netns}  {row.kind.summary}\n")
        self.out.flush()

    def end(self, e: End) -> None:
        moved = [c for c in e.counters if c.delta]
        if moved:
            text = ", ".join(f"{c.name} +{c.delta} (netns {c.netns})" for c in moved)
            self.out.write(f"Kernel counters: {text}\n")
            self.out.flush()
