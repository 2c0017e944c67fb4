"""Which kernel counter each kind should account for, defined once for every view.

The dashboard, the exporter and the tests compare a counter's delta with the tracer's own
counts of the kinds listed here, so an operator can see whether the board is complete.
"""

from __future__ import annotations

from dataclasses import dataclass

from tracer.model import CounterDelta, Kind


@dataclass(frozen=True)
class Reconciliation:
    """Counter `counter` equals (exact) or bounds (at_least) the sum of `kinds`."""

    counter: str
    kinds: tuple[Kind, ...]
    exact: bool = True
    meaning: str = ""


RECONCILIATIONS: tuple[Reconciliation, ...] = (
    Reconciliation("ListenDrops", (Kind.SYN_DROP, Kind.ACK_DROP), True,
                   "SYNs and handshake ACKs dropped by listeners"),
    Reconciliation("SyncookiesSent", (Kind.SYN_COOKIE,), True, "SYN cookies sent"),
    Reconciliation("SyncookiesFailed", (Kind.COOKIE_FAIL,), True, "invalid SYN cookies"),
    Reconciliation("TCPSynRetrans", (Kind.SYNACK_RETRANS,), False,
                   "SYN and SYN-ACK retransmits (synack_retrans are the SYN-ACK part)"),
    Reconciliation("TWRecycled", (Kind.TW_REUSE_OUT,), True, "TIME-WAITs reused by connect()"),
    Reconciliation("PAWSTimewait", (Kind.TW_PAWS,), False,
                   "segments refused by TIME-WAIT PAWS (SYNs are tw_paws)"),
    Reconciliation("PAWSActive", (Kind.PAWS_ACTIVE,), True, "SYN-ACKs refused by PAWS"),
)


@dataclass(frozen=True)
class Attribution:
    """One counter's delta beside what the tracer attributed to peers."""

    counter: str
    delta: int
    attributed: int
    exact: bool

    @property
    def short(self) -> bool:
        """Attribution falls short of the kernel's count (the board misses refusals)."""
        return self.attributed < self.delta

    @property
    def share(self) -> float | None:
        return None if self.delta <= 0 else min(1.0, self.attributed / self.delta)


def attribute(counters: list[CounterDelta], kind_counts: dict[tuple[int, Kind], int],
              netns: set[int] | None = None) -> list[Attribution]:
    """Per reconciliation, summed over the namespaces in view: counter delta vs kinds."""
    out = []
    for rec in RECONCILIATIONS:
        delta = sum(c.delta for c in counters
                    if c.name == rec.counter and (netns is None or c.netns in netns))
        got = sum(n for (ns, kind), n in kind_counts.items()
                  if kind in rec.kinds and (netns is None or ns in netns))
        out.append(Attribution(rec.counter, delta, got, rec.exact))
    return out
