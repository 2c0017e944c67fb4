"""The stream's records: what a source yields to its sinks, and their JSON lines.

The kinds a record names are declared in tracer.kinds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tracer.kinds import Category, Kind


@dataclass(frozen=True)
class KindAvailability:
    """Whether this kernel can report a kind, through which tracepoints, or why not."""

    available: bool
    via: str
    why: str | None = None

    def to_json(self) -> dict:
        out: dict = {"available": self.available, "via": self.via}
        if self.why:
            out["why"] = self.why
        return out


@dataclass(frozen=True)
class Session:
    """First record of a stream: written once every probe is attached."""

    host: str
    kernel: str
    started: float
    tracer: str
    kinds: dict[str, KindAvailability]
    sysctls: dict[str, str]
    format: int = 1
    max_events_per_second: int | None = None

    def to_json(self) -> dict:
        out = {
            "type": "session", "format": self.format, "host": self.host,
            "kernel": self.kernel, "started": self.started, "tracer": self.tracer,
            "kinds": {k: v.to_json() for k, v in self.kinds.items()},
            "sysctls": self.sysctls,
        }
        if self.max_events_per_second is not None:
            out["max_events_per_second"] = self.max_events_per_second
        return out


@dataclass(slots=True)
class Event:
    """One refused segment, attributed to a peer. (Not frozen: built per event, kept cheap.)"""

    ts: float
    kind: Kind
    peer: str
    peer_port: int
    local: str
    local_port: int
    family: int
    netns: int
    reason: str | None

    @property
    def category(self) -> Category:
        return self.kind.category

    def json_line(self) -> str:
        """to_json() as one NDJSON line, built directly: this runs for every event.

        Every string field is an address, a kind name or a kernel reason name, none of
        which needs JSON escaping.
        """
        reason = "null" if self.reason is None else f'"{self.reason}"'
        return (f'{{"type":"event","ts":{round(self.ts, 6)!r},"kind":"{self.kind.label}",'
                f'"category":"{self.kind.category.value}","peer":"{self.peer}",'
                f'"peer_port":{self.peer_port},"local":"{self.local}",'
                f'"local_port":{self.local_port},"family":{self.family},'
                f'"netns":{self.netns},"reason":{reason}}}\n')

    def to_json(self) -> dict:
        return {
            "type": "event", "ts": round(self.ts, 6), "kind": self.kind.label,
            "category": str(self.category), "peer": self.peer, "peer_port": self.peer_port,
            "local": self.local, "local_port": self.local_port, "family": self.family,
            "netns": self.netns, "reason": self.reason,
        }


@dataclass(frozen=True)
class TallyRow:
    """Exact in-kernel count of one (netns, peer, kind), summed over local ports."""

    netns: int
    peer: str
    kind: Kind
    count: int

    def to_json(self) -> dict:
        return {"netns": self.netns, "peer": self.peer, "kind": self.kind.label,
                "count": self.count}


@dataclass(frozen=True)
class Tally:
    """Cumulative in-kernel counts since start, independent of the event stream."""

    ts: float
    rows: list[TallyRow]
    lost: int = 0
    suppressed: int = 0
    totals: dict[str, int] = field(default_factory=dict)
    # per-peer entries the kernel's LRU table dropped to make room (their counts stay in
    # totals): rows no longer hold every peer once this is above 0
    evicted: int = 0
    # (not in the JSON line) local ports each peer was refused on: peer -> {port: count}
    ports: Mapping[str, Mapping[int, int]] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"type": "tally", "ts": round(self.ts, 6), "lost": self.lost,
                "suppressed": self.suppressed, "evicted": self.evicted, "totals": self.totals,
                "rows": [r.to_json() for r in self.rows]}


@dataclass(frozen=True)
class CounterDelta:
    """How much one kernel counter moved in one namespace since the tracer started."""

    netns: int
    name: str
    delta: int

    def to_json(self) -> dict:
        return {"netns": self.netns, "name": self.name, "delta": self.delta}


@dataclass(frozen=True)
class Counters:
    """Kernel counter deltas since start, per namespace seen."""

    ts: float
    counters: list[CounterDelta]

    def to_json(self) -> dict:
        return {"type": "counters", "ts": round(self.ts, 6),
                "counters": [c.to_json() for c in self.counters]}


@dataclass(frozen=True)
class End:
    """Last record of a stream."""

    ts: float
    lost: int
    counters: list[CounterDelta]
    suppressed: int = 0

    def to_json(self) -> dict:
        return {"type": "end", "ts": round(self.ts, 6), "lost": self.lost,
                "suppressed": self.suppressed,
                "counters": [c.to_json() for c in self.counters]}
