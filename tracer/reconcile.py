"""Which kernel counter accounts for which kinds (from tracer.kinds), and how much of it
the tracer attributed.

The dashboard, the exporter and the tests compare a counter's delta with the tracer's own
counts of its kinds, so an operator can see whether the board is complete.
"""

from __future__ import annotations

from dataclasses import dataclass

from tracer.kinds import Kind
from tracer.model import CounterDelta


@dataclass(frozen=True)
class Reconciliation:
    """Counter `counter` equals (exact) or bounds (not exact) the sum of `kinds`."""

    counter: str
    kinds: tuple[Kind, ...]
    exact: bool = True


def reconciliations() -> tuple[Reconciliation, ...]:
    """One per counter that some kind declares it reconciles with, in kind order; exact
    only when every kind it counts says so."""
    kinds: dict[str, list[Kind]] = {}
    exact: dict[str, bool] = {}
    for kind in Kind:
        if (rec := kind.spec.reconciles) is not None:
            kinds.setdefault(rec.counter, []).append(kind)
            exact[rec.counter] = exact.get(rec.counter, True) and rec.exact
    return tuple(Reconciliation(c, tuple(ks), exact[c]) for c, ks in kinds.items())


RECONCILIATIONS = reconciliations()


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
