"""The per-peer leaderboard: exact tallies -> ranked rows with rates. Plain Python, no I/O.

Rows come from the in-kernel tallies, not from counting events, so the board stays right
when events are lost or capped. Rates are the growth between the last two tallies.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from tracer.filters import subnet_of
from tracer.kinds import Category, Kind
from tracer.model import Tally

SORTS = ("rate", "total", "last")


@dataclass
class PeerRow:
    """One line of the board: a peer (or subnet) and how it was refused."""

    peer: str
    kinds: Counter[Kind] = field(default_factory=Counter)
    ports: Counter[int] = field(default_factory=Counter)
    rate: float = 0.0
    first_seen: float = 0.0
    last_seen: float = 0.0
    members: int = 1
    member_peers: list[str] = field(default_factory=list, repr=False)

    @property
    def total(self) -> int:
        return sum(self.kinds.values())

    def by_category(self, category: Category) -> int:
        return sum(n for k, n in self.kinds.items() if k.category is category)

    def top_ports(self, n: int = 2) -> list[int]:
        return [p for p, _ in self.ports.most_common(n)]


@dataclass
class BoardUpdate:
    """A tally turned into the board's per-peer state, ready to swap in."""

    counts: dict[str, Counter[Kind]]
    seen: dict[str, _Seen]
    prev: dict[str, int]
    rates: dict[str, float]
    tally: Tally
    peers_in_tally: int


@dataclass
class _Seen:
    total: int
    first: float
    last: float


# Peers the board follows one by one (rates, first/last seen): the ones with the most
# refusals. A flood of distinct sources fills the kernel's table with 131,072 peers of a
# few refusals each; following all of them would cost the board seconds and hundreds of
# MiB per tally, and the screen shows fifty. Totals and the peer count stay exact.
BOARD_PEERS = 20_000


class Leaderboard:
    """Accumulates tallies; `rows()` ranks peers under the current sort, filter, grouping."""

    def __init__(self, max_peers: int = BOARD_PEERS) -> None:
        self.max_peers = max_peers
        self._peers_in_tally = 0
        self.sort = "rate"
        self.kind_filter: Kind | None = None
        self.grouped = False
        self._counts: dict[str, Counter[Kind]] = {}
        self._ports: Mapping[str, Mapping[int, int]] = {}
        self._seen: dict[str, _Seen] = {}
        self._prev: dict[str, int] = {}
        self._rates: dict[str, float] = {}
        self._prev_ts: float | None = None
        self.lost = 0
        self.suppressed = 0
        self.evicted = 0
        self._version = 0                          # bumped by every change rows() depends on
        self._cache: tuple[tuple, list[PeerRow]] | None = None

    # ---------------------------------------------------------------- input
    def update(self, tally: Tally) -> None:
        """Take a new cumulative tally (counts since start) taken at tally.ts."""
        self.apply(self.prepare(tally))

    def prepare(self, tally: Tally) -> BoardUpdate:
        """Everything a tally changes, computed without changing the board: a drawing
        thread may read the board meanwhile, and apply() then swaps it in at once."""
        rows = tally.rows
        peers_in_tally = 0
        if len(rows) > self.max_peers:
            peers_in_tally = len({r.peer for r in rows})
            rows = rows[:self.max_peers]            # rows come largest first
        counts: dict[str, Counter[Kind]] = {}
        for row in rows:
            counts.setdefault(row.peer, Counter())[row.kind] += row.count
        dt = tally.ts - self._prev_ts if self._prev_ts is not None else 0.0
        # New dicts holding only the peers of this tally: the ones the kernel's table
        # evicted are forgotten, so a flood of distinct sources cannot grow the board.
        seen: dict[str, _Seen] = {}
        prev: dict[str, int] = {}
        rates: dict[str, float] = {}
        for peer, kinds in counts.items():
            total = sum(kinds.values())
            filtered = self._filtered_total(kinds)
            old = self._seen.get(peer)
            if old is None:
                seen[peer] = _Seen(total, tally.ts, tally.ts)
            elif total > old.total:
                seen[peer] = _Seen(total, old.first, tally.ts)
            else:
                seen[peer] = old
            rates[peer] = (filtered - self._prev.get(peer, 0)) / dt if dt > 0 else 0.0
            prev[peer] = filtered
        return BoardUpdate(counts, seen, prev, rates, tally, peers_in_tally)

    def apply(self, u: BoardUpdate) -> None:
        """Swap a prepared update in (quick: the caller may hold the drawing lock)."""
        t = u.tally
        self._counts, self._seen, self._prev, self._rates = u.counts, u.seen, u.prev, u.rates
        self._peers_in_tally = u.peers_in_tally
        self._ports = t.ports                      # read only for the rows shown
        self.lost, self.suppressed, self.evicted = t.lost, t.suppressed, t.evicted
        self._prev_ts = t.ts
        self._version += 1

    def _filtered_total(self, kinds: Counter[Kind]) -> int:
        if self.kind_filter is None:
            return sum(kinds.values())
        return kinds.get(self.kind_filter, 0)

    # ---------------------------------------------------------------- controls
    def cycle_sort(self) -> None:
        self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        self._version += 1

    def cycle_kind(self) -> None:
        order: list[Kind | None] = [None, *Kind]
        self.kind_filter = order[(order.index(self.kind_filter) + 1) % len(order)]
        self._prev = {p: self._filtered_total(k) for p, k in self._counts.items()}
        self._rates = {}
        self._version += 1

    def toggle_grouping(self) -> None:
        self.grouped = not self.grouped
        self._version += 1

    # ---------------------------------------------------------------- output
    def rows(self, limit: int | None = None) -> list[PeerRow]:
        """Ranked rows (the kind filter applied), at most `limit`.

        Remembered until the next tally or key press: the board redraws every second, and
        ranking 100,000+ peers each time would stall it. Only the rows returned are built.
        """
        state = (self._version, limit)
        if self._cache is not None and self._cache[0] == state:
            return self._cache[1]
        if self.grouped:
            ranked = sorted(self._merged().values(), key=self._row_key)
            shown = ranked if limit is None else ranked[:max(0, limit)]
        else:
            peers = [p for p, k in self._counts.items() if self._filtered_total(k)]
            key = self._peer_key
            top = sorted(peers, key=key) if limit is None else \
                heapq.nsmallest(max(0, limit), peers, key=key)
            shown = [self._merged([p])[p] for p in top]
        for row in shown:                          # ports only for the rows returned
            for peer in row.member_peers:
                row.ports.update(self._ports.get(peer, {}))
        self._cache = (state, shown)
        return shown

    def _order(self, rate: float, total: int, last: float, label: str) -> tuple:
        """The sort key under the current sort: the one definition of the board's order."""
        if self.sort == "rate":
            return (-rate, -total, label)
        if self.sort == "total":
            return (-total, -rate, label)
        return (-last, -total, label)

    def _peer_key(self, peer: str) -> tuple:
        """The key of one ungrouped peer, without building its row."""
        return self._order(self._rates.get(peer, 0.0), self._filtered_total(self._counts[peer]),
                           self._seen[peer].last, peer)

    def _row_key(self, r: PeerRow) -> tuple:
        return self._order(r.rate, r.total, r.last_seen, r.peer)

    def _merged(self, peers: list[str] | None = None) -> dict[str, PeerRow]:
        """Rows by label (a peer, or its subnet when grouped) for `peers` (default: all)."""
        merged: dict[str, PeerRow] = {}
        for peer in self._counts if peers is None else peers:
            kinds = self._counts[peer]
            if self.kind_filter is not None:
                kinds = Counter({self.kind_filter: kinds.get(self.kind_filter, 0)})
            if not sum(kinds.values()):
                continue
            label = subnet_of(peer) if self.grouped else peer
            seen = self._seen[peer]
            row = merged.get(label)
            if row is None:
                row = merged[label] = PeerRow(label, first_seen=seen.first,
                                              last_seen=seen.last, members=0)
            row.kinds.update(kinds)
            row.member_peers.append(peer)
            row.rate += self._rates.get(peer, 0.0)
            row.first_seen = min(row.first_seen, seen.first)
            row.last_seen = max(row.last_seen, seen.last)
            row.members += 1
        return merged

    @property
    def peers(self) -> int:
        """Distinct peers in the last tally (also those beyond the ones followed)."""
        return self._peers_in_tally or len(self._counts)
