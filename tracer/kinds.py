"""Every refusal kind, declared once: what it is, how a kernel can show it, what checks it.

A kind's declaration holds its numeric id (shared with bpf/ as a -DKIND_* define), its
category, what it means for an operator (the README's kind table is generated from it),
the ways a kernel can trace it (tracepoints, fields, drop reasons, symbols: availability
and the set of attached programs are derived from them), the kernel counters that count
it (reconciliation, doctor's counter table) and doctor's finding when such a counter moves.
Every other module reads these declarations; tests/unit/test_kinds.py checks that the C
code, the README and the views agree with them. docs/ARCHITECTURE.md shows how to add one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


class Category(enum.StrEnum):
    """The three families of refusal: the board's columns and the report's groups."""

    SYN = "syn"
    TIMEWAIT = "timewait"
    PAWS = "paws"


# ---------------------------------------------------------------- what a kernel must have

class KernelFacts(Protocol):
    """What requirements are checked against (tracer.probe.features.KernelFeatures)."""

    tracepoints: frozenset[str]
    fields: dict[str, frozenset[str]]
    symbols: dict[str, tuple[int, int]]

    def reason(self, name: str) -> int | None: ...


@dataclass(frozen=True)
class Field:
    """A tracepoint's format must have this field (e.g. consume_skb's `location`)."""

    tracepoint: str
    name: str
    since: str

    def unmet(self, kernel: KernelFacts) -> str | None:
        if self.name in kernel.fields.get(self.tracepoint, frozenset()):
            return None
        return f"{self.tracepoint.replace('/', ':')} has no {self.name} field ({self.since})"


@dataclass(frozen=True)
class DropReason:
    """The kernel must name this drop reason (numbers differ per kernel: read from tracefs)."""

    name: str
    since: str

    def unmet(self, kernel: KernelFacts) -> str | None:
        if kernel.reason(self.name) is not None:
            return None
        return f"no {self.name} drop reason on this kernel ({self.since})"


@dataclass(frozen=True)
class Symbol:
    """A kernel function whose address range a handler compares against (kallsyms)."""

    name: str

    def unmet(self, kernel: KernelFacts) -> str | None:
        if self.name in kernel.symbols:
            return None
        return f"symbol {self.name} not in /proc/kallsyms"


Requirement = Field | DropReason | Symbol


@dataclass(frozen=True)
class Method:
    """One way of tracing a kind on kernels that have what it requires.

    signal: tracepoints whose events carry the refusal (the session's `via`).
    support: further tracepoints its handlers need (answer evidence, listener learning).
    handlers: the bpf/ families (syn.c, timewait.c, paws.c) compiled for it.
    requires: fields, drop reasons and symbols the kernel must have.
    partial_without: drop reasons without which it still runs but misses some cases.
    needs: kinds whose machinery it shares, which must be available too.
    """

    signal: tuple[str, ...]
    handlers: tuple[str, ...]
    requires: tuple[Requirement, ...] = ()
    support: tuple[str, ...] = ()
    partial_without: tuple[DropReason, ...] = ()
    needs: tuple[str, ...] = ()

    @property
    def tracepoints(self) -> tuple[str, ...]:
        return self.signal + tuple(t for t in self.support if t not in self.signal)

    @property
    def via(self) -> str:
        return "+".join(t.replace("/", ":") for t in self.signal)

    def unmet(self, kernel: KernelFacts) -> str | None:
        """Why this kernel cannot use the method, or None when it can."""
        missing = [t for t in self.tracepoints if t not in kernel.tracepoints]
        if missing:
            return f"tracepoint {', '.join(missing)} missing"
        for req in self.requires:
            why = req.unmet(kernel)
            if why:
                return why
        return None

    def partial(self, kernel: KernelFacts) -> str | None:
        """What a usable method misses on this kernel, or None when it sees every case."""
        lacking = [r.name for r in self.partial_without if kernel.reason(r.name) is None]
        if not lacking:
            return None
        return f"partial: this kernel has no {' or '.join(lacking)} drop reason"


# ---------------------------------------------------------------- what checks it

@dataclass(frozen=True)
class Reconciles:
    """The kernel counter that counts this kind: equal to the sum of its kinds (exact), or
    also counting other things (a lower bound for the tracer's share)."""

    counter: str
    exact: bool


@dataclass(frozen=True)
class CounterFinding:
    """doctor's finding when `counter` moves during a sample, and the fix."""

    counter: str
    id: str
    severity: str          # problem | warning | note
    meaning: str
    fix: str


@dataclass(frozen=True)
class KindSpec:
    """The whole declaration of one kind; see the module docstring."""

    id: int
    category: Category
    summary: str                 # one line (printer, metrics help)
    happened: str                # README table columns, for an operator
    peer_saw: str
    cause: str
    look: str
    methods: tuple[Method, ...]  # preferred first; the first this kernel supports is used
    counted_by: tuple[str, ...] = ()
    reconciles: Reconciles | None = None
    finding: CounterFinding | None = None


# ---------------------------------------------------------------- shared requirements

KFREE = "skb/kfree_skb"
CONSUME = "skb/consume_skb"
DEV_QUEUE = "net/net_dev_queue"
NEIGH_DONE = "neigh/neigh_event_send_done"
RETRANSMIT_SYNACK = "tcp/tcp_retransmit_synack"
SET_STATE = "sock/inet_sock_set_state"
TIMER_CANCEL = "timer/timer_cancel"

KFREE_REASON = Field(KFREE, "reason", "Linux 5.17+")
# The handler tells IPv4 from IPv6 by it (read in bpf/tracer.c); Linux 5.10 has no such field.
SYNACK_FAMILY = Field(RETRANSMIT_SYNACK, "family", "not in Linux 5.10")
RX_SK = Field(KFREE, "rx_sk", "Linux 6.11+")

# A SYN consumed by tcp_rcv_state_process() without a SYN-ACK for it on that CPU: the
# SYN-ACK is seen on net_dev_queue (held ones on neigh_event_send_done, retransmissions on
# tcp_retransmit_synack), listeners are learned on inet_sock_set_state for the reason.
SYN_CONSUMED = Method(
    signal=(CONSUME, DEV_QUEUE), handlers=("syn",),
    support=(NEIGH_DONE, RETRANSMIT_SYNACK, SET_STATE),
    requires=(Field(CONSUME, "location", "Linux 6.3+"), Symbol("tcp_rcv_state_process"),
              SYNACK_FAMILY))

PAWS_DROPPED = Method(signal=(KFREE,), handlers=("paws",),
                      requires=(KFREE_REASON, RX_SK, DropReason("TCP_RFC7323_PAWS",
                                                                "Linux 5.19+")))


class Kind(enum.Enum):
    """A refusal kind; each member's value is its declaration (KindSpec)."""

    SYN_DROP = KindSpec(
        1, Category.SYN,
        "SYN dropped by a listener (accept queue full, or SYN queue full with cookies off)",
        "a listener dropped the peer's SYN; `reason` says which queue was full "
        "(`ACCEPT_QUEUE_FULL`, `SYN_QUEUE_FULL`) when known",
        "nothing: connect() retries every second, then times out",
        "the application does not accept() fast enough, or its backlog is too small",
        "raise the `listen()` backlog (capped by `net.core.somaxconn`), accept faster; "
        "`ss -ltn` Recv-Q vs Send-Q",
        methods=(SYN_CONSUMED,),
        counted_by=("ListenOverflows", "ListenDrops", "TCPReqQFullDrop"),
        reconciles=Reconciles("ListenDrops", exact=True))
    ACK_DROP = KindSpec(
        2, Category.SYN,
        "handshake-completing ACK dropped because the accept queue was full",
        "the handshake's final ACK was dropped because the accept queue was full "
        "(`TCP_LISTEN_OVERFLOW`, or `NO_SOCKET` for a valid SYN cookie)",
        "a connection it thinks is open, whose first request goes unanswered",
        "same as `syn_drop`",
        "same; `tcp_abort_on_overflow=1` makes it a RST instead",
        methods=(Method(signal=(KFREE,), handlers=("syn",),
                        requires=(KFREE_REASON,
                                  DropReason("TCP_LISTEN_OVERFLOW", "Linux 6.15+"))),),
        counted_by=("ListenOverflows", "ListenDrops"),
        reconciles=Reconciles("ListenDrops", exact=True))
    SYN_COOKIE = KindSpec(
        3, Category.SYN,
        "SYN answered with a SYN cookie because the SYN queue overflowed (options may be lost)",
        "the SYN queue overflowed and the SYN was answered with a SYN cookie (not a refusal)",
        "a connection, possibly without window scaling or SACK",
        "SYN flood, or `tcp_max_syn_backlog`/backlog too small",
        "`net.ipv4.tcp_syncookies`, the backlog",
        methods=(SYN_CONSUMED,),
        counted_by=("SyncookiesSent",),
        reconciles=Reconciles("SyncookiesSent", exact=True),
        finding=CounterFinding(
            "SyncookiesSent", "syncookies_sent", "warning",
            "SYN queues overflow (a SYN flood, or backlogs too small); cookie handshakes can "
            "lose TCP options",
            "raise net.ipv4.tcp_max_syn_backlog and the listen() backlog if this is not a "
            "flood"))
    COOKIE_FAIL = KindSpec(
        4, Category.SYN,
        "ACK carried an invalid SYN cookie; answered with a RST",
        "an ACK carried an invalid SYN cookie and was answered with a RST (not silent)",
        "a reset",
        "stale or forged ACKs during a cookie period",
        "usually harmless; many mean a flood",
        methods=(Method(signal=(KFREE,), handlers=("syn",),
                        requires=(KFREE_REASON, DropReason("TCP_FLAGS", "Linux 6.9+"), RX_SK,
                                  Symbol("tcp_v4_do_rcv"))),),
        counted_by=("SyncookiesFailed",),
        reconciles=Reconciles("SyncookiesFailed", exact=True),
        finding=CounterFinding(
            "SyncookiesFailed", "cookie_fail", "warning",
            "ACKs carried an invalid SYN cookie (answered with RST)",
            "look at the peers: spoofed ACKs, or handshakes older than two minutes"))
    SYNACK_RETRANS = KindSpec(
        5, Category.SYN,
        "server retransmitted a SYN-ACK (the final ACK was lost or dropped)",
        "the server retransmitted a SYN-ACK (not a refusal)",
        "a slow handshake",
        "the final ACK was lost, or dropped as `ack_drop`",
        "`tcp_synack_retries`; look for `ack_drop` of the same peer",
        methods=(Method(signal=(RETRANSMIT_SYNACK,), handlers=("syn",),
                        requires=(SYNACK_FAMILY,)),),
        counted_by=("TCPSynRetrans",),
        reconciles=Reconciles("TCPSynRetrans", exact=False),
        finding=CounterFinding(
            "TCPSynRetrans", "syn_retrans", "note",
            "SYNs or SYN-ACKs were retransmitted: handshakes lose packets",
            "see which peers do not complete their handshake"))
    TW_REUSE_OUT = KindSpec(
        6, Category.TIMEWAIT,
        "a local connect() took over a TIME-WAIT 4-tuple",
        "a local `connect()` took over a TIME-WAIT 4-tuple (the kernel's TWRecycled); the "
        "peer is the remote server",
        "a new connection from a recently used port",
        "many short outgoing connections, port exhaustion",
        "`net.ipv4.ip_local_port_range`, `tcp_tw_reuse`, connection pooling",
        methods=(Method(signal=(TIMER_CANCEL, SET_STATE), handlers=("timewait", "syn"),
                        requires=(Symbol("tw_timer_handler"),)),),
        counted_by=("TWRecycled",),
        reconciles=Reconciles("TWRecycled", exact=True),
        finding=CounterFinding(
            "TWRecycled", "tw_reuse_out", "note",
            "local connect() took over TIME-WAIT ports: this host is short of ephemeral "
            "ports toward some servers",
            "reuse connections (keep-alive, pooling), or widen net.ipv4.ip_local_port_range"))
    TW_REUSE_IN = KindSpec(
        7, Category.TIMEWAIT,
        "a peer's SYN took over one of our TIME-WAIT sockets",
        "a peer's SYN took over one of our TIME-WAIT sockets (no kernel counter exists)",
        "a normal connection",
        "clients reconnecting from the same port quickly (NAT, fixed source ports)",
        "usually fine; watch for `tw_paws` of the same peer",
        methods=(Method(signal=(TIMER_CANCEL, CONSUME), handlers=("timewait", "syn"),
                        support=(DEV_QUEUE,), requires=(Symbol("tw_timer_handler"),),
                        needs=("syn_drop",)),))
    TW_PAWS = KindSpec(
        8, Category.PAWS,
        "SYN refused by a TIME-WAIT socket's timestamp check",
        "a peer's reconnecting SYN was refused by a TIME-WAIT socket's timestamp check "
        "(PAWSTimewait)",
        "its SYN ignored (an ACK comes back instead); connects after a retry, or times out",
        "several clients behind one NAT address with different timestamp clocks, a client "
        "that rebooted",
        "the NAT; `net.ipv4.tcp_timestamps` on the clients; historically `tcp_tw_recycle`",
        methods=(Method(signal=(KFREE,), handlers=("paws",),
                        requires=(KFREE_REASON, RX_SK,
                                  DropReason("TCP_RFC7323_TW_PAWS", "Linux 6.16+"))),),
        counted_by=("PAWSTimewait",),
        reconciles=Reconciles("PAWSTimewait", exact=False),
        finding=CounterFinding(
            "PAWSTimewait", "tw_paws", "problem",
            "new SYNs refused by TIME-WAIT sockets because their timestamps are older: "
            "clients behind a shared NAT address, or a middlebox rewriting timestamps",
            "find the peers below; check their NAT or timestamp-rewriting middlebox"))
    PAWS = KindSpec(
        9, Category.PAWS,
        "segment of an established or half-open connection dropped by PAWS",
        "a segment of an established or half-open connection was dropped because its "
        "timestamp was older than the last one seen (`reason`: `TCP_RFC7323_PAWS`, "
        "`TCP_RFC7323_PAWS_ACK`, `TCP_RFC7323_TSECR`)",
        "retransmissions that never get through; a stalled connection",
        "timestamp-rewriting middleboxes, NAT mixing clients",
        "the middlebox; PAWSEstab, PAWSOldAck in `nstat`",
        methods=(Method(signal=PAWS_DROPPED.signal, handlers=PAWS_DROPPED.handlers,
                        requires=PAWS_DROPPED.requires,
                        partial_without=(DropReason("TCP_RFC7323_PAWS_ACK", "Linux 6.14+"),
                                         DropReason("TCP_RFC7323_TSECR", "Linux 6.15+"))),),
        counted_by=("PAWSEstab",),
        finding=CounterFinding(
            "PAWSEstab", "paws_estab", "warning",
            "segments of open connections dropped because their timestamps went back",
            "look for a NAT or middlebox rewriting timestamps between you and these peers"))
    PAWS_ACTIVE = KindSpec(
        10, Category.PAWS,
        "SYN-ACK refused by a connecting socket's timestamp check; a RST is sent",
        "our connecting socket refused a SYN-ACK whose timestamp echo was impossible "
        "(PAWSActive) and sent a RST; the peer is the server",
        "a RST to its SYN-ACK",
        "a middlebox or a server echoing wrong timestamps",
        "the path to that server",
        methods=(PAWS_DROPPED,),
        counted_by=("PAWSActive",),
        reconciles=Reconciles("PAWSActive", exact=True),
        finding=CounterFinding(
            "PAWSActive", "paws_active", "warning",
            "SYN-ACKs refused by this host's own connecting sockets (timestamps went back)",
            "check the servers (peers below) and what sits between"))

    def __repr__(self) -> str:
        return f"<Kind.{self.name}: {self.value.id}>"

    @property
    def spec(self) -> KindSpec:
        return self.value

    @property
    def id(self) -> int:
        """The number shared with bpf/ (KIND_* define) and stored in the maps."""
        return self.value.id

    @property
    def label(self) -> str:
        """The stable name used in JSON, files and metrics (`syn_drop`); looked up, not
        built: every event's JSON line asks for it."""
        return _LABELS[self]

    @property
    def category(self) -> Category:
        return self.value.category

    @property
    def summary(self) -> str:
        return self.value.summary

    @classmethod
    def from_label(cls, label: str) -> Kind:
        try:
            return cls[label.upper()]
        except KeyError:
            raise ValueError(f"unknown kind {label!r}") from None

    @classmethod
    def from_id(cls, number: int) -> Kind:
        """The kind of a map key or ring-buffer record; ValueError for an unknown id."""
        try:
            return _BY_ID[number]
        except KeyError:
            raise ValueError(f"unknown kind id {number}") from None


_BY_ID: dict[int, Kind] = {k.id: k for k in Kind}
_LABELS: dict[Kind, str] = {k: k.name.lower() for k in Kind}
KIND_LABELS: tuple[str, ...] = tuple(k.label for k in Kind)


def c_defines() -> dict[str, int]:
    """KIND_<NAME> for bpf/: the only place the C code gets kind ids from."""
    return {f"KIND_{k.name}": k.id for k in Kind}


def readme_table() -> str:
    """The README's kind table, in Markdown (tests/unit/test_kinds.py keeps them equal)."""
    lines = ["| kind | what happened | what the peer saw | usual cause | where to look "
             "| kernel counter |", "|---|---|---|---|---|---|"]
    for k in Kind:
        s = k.spec
        rec = s.reconciles
        counter = ("none" if rec is None else
                   f"{rec.counter}" + ("" if rec.exact else " (also counts other things)"))
        lines.append(f"| `{k.label}` | {s.happened} | {s.peer_saw} | {s.cause} | {s.look} "
                     f"| {counter} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(readme_table(), end="")
