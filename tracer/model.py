"""The stream's vocabulary: refusal kinds and the records a source yields to its sinks.

Every kind is described once here (name, category, what it means for an operator); the
printer, the JSON lines and later the dashboard and exporters all read these descriptions.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field


class Category(enum.StrEnum):
    """The three families of refusal (DESIGN.md)."""

    SYN = "syn"
    TIMEWAIT = "timewait"
    PAWS = "paws"


@dataclass(frozen=True)
class KindInfo:
    """What one kind means: its stable name, category, whether the peer is told, and why."""

    name: str
    category: Category
    silent: bool
    summary: str


class Kind(enum.Enum):
    """A refusal kind; `value` is its numeric id shared with bpf/refusal.h."""

    SYN_DROP = 1
    ACK_DROP = 2
    SYN_COOKIE = 3
    COOKIE_FAIL = 4
    SYNACK_RETRANS = 5
    TW_REUSE_OUT = 6
    TW_REUSE_IN = 7
    TW_PAWS = 8
    PAWS = 9
    PAWS_ACTIVE = 10

    @property
    def info(self) -> KindInfo:
        return KIND_INFO[self]

    @property
    def label(self) -> str:
        """The stable name used in JSON, files and metrics (`syn_drop`)."""
        return KIND_INFO[self].name

    @property
    def category(self) -> Category:
        return self.info.category

    @classmethod
    def from_label(cls, label: str) -> Kind:
        try:
            return cls[label.upper()]
        except KeyError:
            raise ValueError(f"unknown kind {label!r}") from None


KIND_INFO: dict[Kind, KindInfo] = {
    Kind.SYN_DROP: KindInfo(
        "syn_drop", Category.SYN, True,
        "SYN dropped by a listener (accept queue full, or SYN queue full with cookies off)"),
    Kind.ACK_DROP: KindInfo(
        "ack_drop", Category.SYN, True,
        "handshake-completing ACK dropped because the accept queue was full"),
    Kind.SYN_COOKIE: KindInfo(
        "syn_cookie", Category.SYN, False,
        "SYN answered with a SYN cookie because the SYN queue overflowed (options may be lost)"),
    Kind.COOKIE_FAIL: KindInfo(
        "cookie_fail", Category.SYN, False,
        "ACK carried an invalid SYN cookie; answered with a RST"),
    Kind.SYNACK_RETRANS: KindInfo(
        "synack_retrans", Category.SYN, False,
        "server retransmitted a SYN-ACK (the final ACK was lost or dropped)"),
    Kind.TW_REUSE_OUT: KindInfo(
        "tw_reuse_out", Category.TIMEWAIT, False,
        "a local connect() took over a TIME-WAIT 4-tuple"),
    Kind.TW_REUSE_IN: KindInfo(
        "tw_reuse_in", Category.TIMEWAIT, False,
        "a peer's SYN took over one of our TIME-WAIT sockets"),
    Kind.TW_PAWS: KindInfo(
        "tw_paws", Category.PAWS, True,
        "SYN refused by a TIME-WAIT socket's timestamp check"),
    Kind.PAWS: KindInfo(
        "paws", Category.PAWS, True,
        "segment of an established or half-open connection dropped by PAWS"),
    Kind.PAWS_ACTIVE: KindInfo(
        "paws_active", Category.PAWS, False,
        "SYN-ACK refused by a connecting socket's timestamp check; a RST is sent"),
}

KIND_LABELS: tuple[str, ...] = tuple(k.label for k in Kind)


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


Record = Session | Event | Tally | Counters | End
