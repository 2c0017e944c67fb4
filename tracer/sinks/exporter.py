"""`tracer serve`: the stream as Prometheus metrics with a bounded number of series.

The sink keeps only the latest Session, Tally and Counters (each update swaps one reference,
so the HTTP server's threads always read a consistent snapshot without locks). A custom
collector rebuilds every metric family from that snapshot on each scrape: only the top N
peers get a per-peer series and the rest are summed into `peer="other"`, so a peer that
leaves the top N, or that the kernel's LRU table evicted, disappears instead of lingering,
and the sum over peers still equals the exact per-kind total.
"""

from __future__ import annotations

import errno
import heapq
import ipaddress
import re
import socket
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TextIO
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from tracer.errors import TracerError, UsageError
from tracer.filters import RefusalFilter, subnet_of
from tracer.kinds import KIND_LABELS
from tracer.model import Counters, End, Session, Tally, TallyRow
from tracer.sinks.printer import endpoint
from tracer.stream import Sink

OTHER = "other"
DEFAULT_TOP_PEERS = 50

HELP_TOTAL = ("TCP segments this host refused, per kind, counted exactly in the kernel since "
              "the tracer started (never evicted).")
HELP_BY_PEER = ("Refusals per peer (or per /24 and /64 network with --subnet) for the top N "
                "peers only; peer=\"other\" holds the rest so the sum equals tcp_refusals_total.")
HELP_LOST = ("Refusal events the ring buffer could not deliver; counts stay exact, but the "
             "per-event stream fell behind.")
HELP_SUPPRESSED = ("Refusal events held back by the events-per-second cap; counts stay exact, "
                   "only the per-event stream is thinned.")
HELP_TRACKED = ("Distinct peer addresses in the tracer's exact per-peer counts now (bounded by "
                "the kernel's LRU table).")
HELP_FOLDED = ("Distinct peer addresses counted under peer=\"other\" because they are outside "
               "the top N, which keeps the series count bounded.")
HELP_EVICTED = ("Per-peer entries the kernel's LRU table dropped to make room for new peers; "
                "their counts stay in tcp_refusals_total and peer=\"other\".")
HELP_KERNEL = ("Growth of a kernel TCP counter (nstat name) since the tracer started, per "
               "network namespace inode, to compare with what the tracer attributed.")


# ---------------------------------------------------------------------------- ranking

def peer_label(peer: str, subnet: bool) -> str:
    """The `peer` label value: the address, or its /24 (IPv4) or /64 (IPv6) network."""
    return subnet_of(peer) if subnet else peer


def counts_by_label(rows: Iterable[TallyRow], subnet: bool = False
                    ) -> tuple[dict[str, Counter[str]], dict[str, set[str]]]:
    """Per label (peer or network): counts per kind label, and the peer addresses behind it.

    Rows of one peer in several namespaces add up: the label carries no namespace.
    """
    counts: dict[str, Counter[str]] = {}
    members: dict[str, set[str]] = {}
    for row in rows:
        label = peer_label(row.peer, subnet)
        counts.setdefault(label, Counter())[row.kind.label] += row.count
        members.setdefault(label, set()).add(row.peer)
    return counts, members


def top_labels(counts: dict[str, Counter[str]], n: int) -> list[str]:
    """The n labels with the largest total over all kinds, largest first.

    Ties are broken by the label string, so the same tally always gives the same series.
    """
    return heapq.nsmallest(n, counts, key=lambda label: (-counts[label].total(), label))


@dataclass(frozen=True)
class Ranking:
    """What one scrape shows, computed from one tally (pure data, for tests too).

    totals: kind -> exact total; by_peer: (kind, peer label or "other", count) in output
    order; tracked/folded: distinct peer addresses in the tally / folded into "other".
    """

    totals: dict[str, int]
    by_peer: list[tuple[str, str, int]]
    tracked: int
    folded: int


def rank(rows: Sequence[TallyRow], totals: dict[str, int], kinds: Sequence[str], top: int,
         subnet: bool = False) -> Ranking:
    """Top `top` peers (or networks) and, per kind, `other` = exact total minus those shown.

    `totals` are the exact per-kind totals, which include peers the kernel's LRU evicted
    (absent from rows); a kind's total is never taken below the sum of its rows, so "other"
    is never negative and the series of a kind always add up to its tcp_refusals_total.
    `kinds` lists the kinds to report, each with an "other" series even when it is 0.
    """
    counts, members = counts_by_label(rows, subnet)
    shown = top_labels(counts, top)
    row_sums: Counter[str] = Counter()
    for per_kind in counts.values():
        row_sums.update(per_kind)
    all_kinds = [k for k in KIND_LABELS if k in set(kinds) or row_sums.get(k)]
    exact = {k: max(totals.get(k, 0), row_sums.get(k, 0)) for k in all_kinds}
    by_peer: list[tuple[str, str, int]] = []
    for kind in all_kinds:
        shown_sum = 0
        for label in shown:
            n = counts[label].get(kind, 0)
            if n:
                by_peer.append((kind, label, n))
                shown_sum += n
        by_peer.append((kind, OTHER, exact[kind] - shown_sum))
    tracked = {peer for peers in members.values() for peer in peers}
    visible = {peer for label in shown for peer in members[label]}
    return Ranking(totals=exact, by_peer=by_peer, tracked=len(tracked),
                   folded=len(tracked - visible))


def reported_kinds(session: Session | None, selection: RefusalFilter) -> list[str]:
    """Kinds that get a series even at 0: available on this kernel and selected."""
    if session is None:
        return []
    wanted = {k.label for k in selection.kinds}
    return [k for k in KIND_LABELS if (how := session.kinds.get(k)) is not None
            and how.available and (not wanted or k in wanted)]


def totals_are_exact(selection: RefusalFilter) -> bool:
    """The kernel's per-kind totals are host-wide: exact for a selection of kinds only.

    With port, peer, family or namespace filters they also count refusals the user
    filtered out, so the totals are then the sums of the selected per-peer counts.
    """
    return not (selection.ports or selection.networks or selection.family or selection.netns)


# ---------------------------------------------------------------------------- sink

@dataclass(frozen=True)
class Snapshot:
    """The latest records of the stream, replaced as a whole on every update."""

    session: Session | None = None
    tally: Tally | None = None
    counters: Counters | None = None


class Exporter(Sink):
    """A sink that keeps the latest snapshot; its `registry` serves it as metrics (built
    from the exact tally: events change nothing)."""

    def __init__(self, top_peers: int = DEFAULT_TOP_PEERS, subnet: bool = False,
                 selection: RefusalFilter | None = None) -> None:
        if top_peers < 1:
            raise ValueError("top_peers must be at least 1")
        self.top_peers = top_peers
        self.subnet = subnet
        self.selection = selection or RefusalFilter()
        self.snapshot = Snapshot()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(RefusalCollector(self))

    # The stream (called from the main thread) -----------------------------------
    def session(self, s: Session) -> None:
        self.snapshot = Snapshot(s, self.snapshot.tally, self.snapshot.counters)

    def tally(self, t: Tally) -> None:
        self.snapshot = Snapshot(self.snapshot.session, t, self.snapshot.counters)

    def counters(self, c: Counters) -> None:
        self.snapshot = Snapshot(self.snapshot.session, self.snapshot.tally, c)

    def end(self, e: End) -> None:
        self.counters(Counters(ts=e.ts, counters=e.counters))

    # What a scrape reads (called from the HTTP server's threads) ------------------
    def ranking(self, snap: Snapshot) -> Ranking:
        """The ranking of a snapshot's tally."""
        kinds = reported_kinds(snap.session, self.selection)
        tally = snap.tally
        if tally is None:
            return rank([], {}, kinds, self.top_peers, self.subnet)
        totals = tally.totals if totals_are_exact(self.selection) else {}
        return rank(tally.rows, totals, kinds, self.top_peers, self.subnet)


class RefusalCollector:
    """Builds every metric family from the exporter's latest snapshot on each scrape."""

    def __init__(self, exporter: Exporter) -> None:
        self.exporter = exporter
        self._cache: tuple[Session | None, Tally | None, Ranking] | None = None

    def _ranking(self, snap: Snapshot) -> Ranking:
        """Ranked once per tally: scrapes between two tallies reuse it."""
        cached = self._cache
        if cached is not None and cached[0] is snap.session and cached[1] is snap.tally:
            return cached[2]
        ranking = self.exporter.ranking(snap)
        self._cache = (snap.session, snap.tally, ranking)
        return ranking

    def collect(self) -> Iterator[Metric]:
        snap = self.exporter.snapshot          # one read: a consistent snapshot
        ranking = self._ranking(snap)

        total = CounterMetricFamily("tcp_refusals", HELP_TOTAL, labels=["kind"])
        for kind, n in ranking.totals.items():
            total.add_metric([kind], n)
        yield total

        by_peer = CounterMetricFamily("tcp_refusals_by_peer", HELP_BY_PEER,
                                      labels=["kind", "peer"])
        for kind, label, n in ranking.by_peer:
            by_peer.add_metric([kind, label], n)
        yield by_peer

        tally = snap.tally
        yield CounterMetricFamily("tcp_refusal_lost_events", HELP_LOST,
                                  value=tally.lost if tally else 0)
        yield CounterMetricFamily("tcp_refusal_suppressed_events", HELP_SUPPRESSED,
                                  value=tally.suppressed if tally else 0)
        yield GaugeMetricFamily("tcp_refusal_peers_tracked", HELP_TRACKED, value=ranking.tracked)
        yield GaugeMetricFamily("tcp_refusal_peers_folded", HELP_FOLDED, value=ranking.folded)
        yield CounterMetricFamily("tcp_refusal_peers_evicted", HELP_EVICTED,
                                  value=tally.evicted if tally else 0)

        kernel = CounterMetricFamily("tcp_refusal_kernel_counter", HELP_KERNEL,
                                     labels=["name", "netns"])
        for c in snap.counters.counters if snap.counters else ():
            # A counter never goes down; a namespace inode reused by a new namespace could.
            kernel.add_metric([c.name, str(c.netns)], max(c.delta, 0))
        yield kernel


# ---------------------------------------------------------------------------- HTTP server

DEFAULT_LISTEN = "127.0.0.1:9464"
_LISTEN = re.compile(r"\[(?P<v6>[^\[\]\s]+)\]:(?P<p6>\d{1,5})"
                     r"|(?P<host>[^\s:\[\]]+):(?P<port>\d{1,5})")
_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 as [ADDR]:PORT) -> (host, port); UsageError with an example if not."""
    bad = UsageError(f"--listen {text!r} is not HOST:PORT",
                     f"give e.g. {DEFAULT_LISTEN}, or [::1]:9464 for IPv6")
    m = _LISTEN.fullmatch(text.strip())
    if m is None:
        raise bad
    port = int(m["p6"] or m["port"])
    if not 0 < port < 65536:
        raise UsageError(f"--listen {text!r}: port {port} is not in 1-65535",
                         f"give e.g. {DEFAULT_LISTEN}")
    if m["v6"] is not None:
        try:
            ipaddress.IPv6Address(m["v6"])
        except ValueError:
            raise bad from None
        return m["v6"], port
    host = m["host"]
    if re.fullmatch(r"[\d.]+", host):                    # looks like IPv4: must be one
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise bad from None
    elif not _HOSTNAME.fullmatch(host):
        raise bad
    return host, port


def resolve(host: str, port: int) -> tuple[socket.AddressFamily, tuple]:
    """The address family and socket address the server will bind (as prometheus_client does)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise TracerError(f"cannot listen on {endpoint(host, port)}: cannot resolve {host} "
                          f"({e.strerror})", "pick another with --listen") from None
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def is_loopback(sockaddr: tuple) -> bool:
    """Whether a resolved socket address is reachable from this host only."""
    address = str(sockaddr[0]).split("%", 1)[0]
    return ipaddress.ip_address(address).is_loopback


def bind_error(host: str, port: int, e: OSError) -> TracerError:
    """One line with the remedy for a failed bind."""
    why = {errno.EADDRINUSE: "address already in use",
           errno.EADDRNOTAVAIL: "no such address on this host",
           errno.EACCES: "permission denied"}.get(e.errno, e.strerror or str(e))
    return TracerError(f"cannot listen on {endpoint(host, port)}: {why}",
                       "pick another with --listen")


class MetricsServer:
    """prometheus_client's HTTP server for one registry, started once tracing has started."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry,
                 status: TextIO) -> None:
        self.host, self.port = host, port
        self.registry = registry
        self.status = status
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def where(self) -> str:
        return endpoint(self.host, self.port)

    def check(self) -> None:
        """Fail now, before the probe compiles, when the address cannot be bound."""
        family, sockaddr = resolve(self.host, self.port)
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
            try:
                s.bind(sockaddr)
            except OSError as e:
                raise bind_error(self.host, self.port, e) from None

    def start(self) -> None:
        """Serve /metrics; say where on the status stream (and warn off loopback)."""
        _, sockaddr = resolve(self.host, self.port)
        try:
            self._server, self._thread = start_http_server(self.port, addr=self.host,
                                                           registry=self.registry)
        except OSError as e:
            raise bind_error(self.host, self.port, e) from None
        if not is_loopback(sockaddr):
            self.status.write(f"tracer: warning: metrics on {self.where} hold client addresses; "
                              "anyone who can reach it can read them\n")
        self.status.write(f"tracer: serving metrics on http://{self.where}/metrics\n")
        self.status.flush()

    def close(self) -> None:
        """Stop serving (a no-op when it never started)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
