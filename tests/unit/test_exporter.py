"""The Prometheus exporter: names, labels and exact values of a scrape, bounded series.

Records are fed to the sink as a source would; each scrape is rendered with
prometheus_client's own exposition code and parsed back with its parser, so what is
checked is what Prometheus would read.
"""

from __future__ import annotations

import dataclasses
import io
import socket
import urllib.request
from collections import Counter

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tracer import cli
from tracer.errors import TracerError, UsageError
from tracer.filters import RefusalFilter
from tracer.kinds import KIND_LABELS, Kind
from tracer.model import CounterDelta, Counters, End, KindAvailability, Session, Tally, TallyRow
from tracer.sinks.exporter import (
    OTHER,
    Exporter,
    MetricsServer,
    parse_listen,
    peer_label,
    rank,
    top_labels,
)

NS = 4026531840
NS2 = 4026532001
AVAILABLE = ("syn_drop", "ack_drop", "paws")


def session(available: tuple[str, ...] = AVAILABLE) -> Session:
    kinds = {k: KindAvailability(k in available, "skb:kfree_skb",
                                 None if k in available else "not on this kernel")
             for k in KIND_LABELS}
    return Session(host="web1", kernel="6.1.0", started=1700000000.0, tracer="0.1.0",
                   kinds=kinds, sysctls={})


def row(peer: str, kind: str, count: int, netns: int = NS) -> TallyRow:
    return TallyRow(netns, peer, Kind.from_label(kind), count)


def scrape(exporter: Exporter) -> dict[str, list]:
    """Family name -> samples, as prometheus_client's parser reads the exposition."""
    text = generate_latest(exporter.registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def values(families: dict, sample_name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """{label values: value} of every sample called sample_name."""
    out = {}
    for family in families.values():
        for s in family.samples:
            if s.name == sample_name:
                out[tuple(s.labels[k] for k in labels)] = s.value
    return out


def feed(exporter: Exporter, tally: Tally | None = None, counters: Counters | None = None,
         sess: Session | None = None) -> Exporter:
    exporter.session(sess or session())
    if tally is not None:
        exporter.tally(tally)
    if counters is not None:
        exporter.counters(counters)
    return exporter


def by_kind_sums(by_peer: dict[tuple[str, str], float]) -> dict[str, float]:
    sums: dict[str, float] = {}
    for (kind, _), v in by_peer.items():
        sums[kind] = sums.get(kind, 0) + v
    return sums


# ---------------------------------------------------------------------------- scrapes

SCENARIO = Tally(
    ts=1700000010.0, lost=3, suppressed=7,
    totals={"syn_drop": 20, "ack_drop": 2, "paws": 0},
    rows=[row("10.1.2.3", "syn_drop", 9), row("10.1.2.3", "ack_drop", 2),
          row("10.9.9.9", "syn_drop", 6), row("2001:db8::5", "syn_drop", 4),
          row("10.1.2.3", "syn_drop", 1, netns=NS2)])


def test_names_types_and_help():
    fams = scrape(feed(Exporter(), SCENARIO, Counters(1.0, [CounterDelta(NS, "ListenDrops", 5)])))
    assert {name: f.type for name, f in fams.items()} == {
        "tcp_refusals": "counter", "tcp_refusals_by_peer": "counter",
        "tcp_refusal_lost_events": "counter", "tcp_refusal_suppressed_events": "counter",
        "tcp_refusal_peers_tracked": "gauge", "tcp_refusal_peers_folded": "gauge",
        "tcp_refusal_peers_evicted": "counter", "tcp_refusal_kernel_counter": "counter"}
    for f in fams.values():
        assert f.documentation and "\n" not in f.documentation
        for s in f.samples:
            assert s.name.endswith("_total") == (f.type == "counter"), s.name
    assert {tuple(sorted(s.labels)) for s in fams["tcp_refusals_by_peer"].samples} == \
        {("kind", "peer")}
    assert {tuple(sorted(s.labels)) for s in fams["tcp_refusal_kernel_counter"].samples} == \
        {("name", "netns")}


def test_exact_values_top_peers_and_other():
    fams = scrape(feed(Exporter(top_peers=2), SCENARIO))
    assert values(fams, "tcp_refusals_total", "kind") == {
        ("syn_drop",): 20, ("ack_drop",): 2, ("paws",): 0}
    by_peer = values(fams, "tcp_refusals_by_peer_total", "kind", "peer")
    # 10.1.2.3: 9 + 1 (two namespaces) + 2 = 12; 10.9.9.9: 6; 2001:db8::5: 4 (folded)
    assert by_peer == {
        ("syn_drop", "10.1.2.3"): 10, ("syn_drop", "10.9.9.9"): 6, ("syn_drop", OTHER): 4,
        ("ack_drop", "10.1.2.3"): 2, ("ack_drop", OTHER): 0,
        ("paws", OTHER): 0}
    assert by_kind_sums(by_peer) == {"syn_drop": 20, "ack_drop": 2, "paws": 0}
    assert values(fams, "tcp_refusal_lost_events_total") == {(): 3}
    assert values(fams, "tcp_refusal_suppressed_events_total") == {(): 7}
    assert values(fams, "tcp_refusal_peers_tracked") == {(): 3}
    assert values(fams, "tcp_refusal_peers_folded") == {(): 1}


def test_evicted_peers_land_in_other():
    """totals count peers the kernel's LRU evicted: they are in no row, only in other."""
    tally = Tally(ts=1.0, totals={"syn_drop": 1000, "ack_drop": 0, "paws": 5},
                  rows=[row("10.0.0.1", "syn_drop", 30), row("10.0.0.2", "syn_drop", 20),
                        row("10.0.0.3", "paws", 1)], evicted=77)
    fams = scrape(feed(Exporter(top_peers=5), tally))
    assert values(fams, "tcp_refusal_peers_evicted_total") == {(): 77}
    by_peer = values(fams, "tcp_refusals_by_peer_total", "kind", "peer")
    assert by_peer[("syn_drop", OTHER)] == 1000 - 30 - 20
    assert by_peer[("paws", OTHER)] == 4
    assert values(fams, "tcp_refusal_peers_folded") == {(): 0}
    assert by_kind_sums(by_peer) == {
        k: v for (k,), v in values(fams, "tcp_refusals_total", "kind").items()}


def test_a_peer_gone_from_the_tally_disappears():
    exporter = feed(Exporter(top_peers=1), Tally(ts=1.0, totals={"syn_drop": 5},
                                                  rows=[row("10.0.0.1", "syn_drop", 5)]))
    assert ("syn_drop", "10.0.0.1") in values(scrape(exporter), "tcp_refusals_by_peer_total",
                                              "kind", "peer")
    exporter.tally(Tally(ts=2.0, totals={"syn_drop": 9}, rows=[row("10.0.0.2", "syn_drop", 4)]))
    by_peer = values(scrape(exporter), "tcp_refusals_by_peer_total", "kind", "peer")
    assert ("syn_drop", "10.0.0.1") not in by_peer
    assert by_peer[("syn_drop", "10.0.0.2")] == 4 and by_peer[("syn_drop", OTHER)] == 5


def test_subnet_groups_v4_by_24_and_v6_by_64():
    tally = Tally(ts=1.0, totals={"syn_drop": 17, "paws": 4}, rows=[
        row("10.1.2.3", "syn_drop", 5), row("10.1.2.200", "syn_drop", 4),
        row("10.1.3.1", "syn_drop", 3), row("2001:db8:1:2::1", "syn_drop", 2),
        row("2001:db8:1:2:ffff::9", "paws", 4), row("2001:db8:1:3::1", "syn_drop", 3)])
    fams = scrape(feed(Exporter(top_peers=2, subnet=True), tally))
    by_peer = values(fams, "tcp_refusals_by_peer_total", "kind", "peer")
    assert by_peer == {
        ("syn_drop", "10.1.2.0/24"): 9, ("syn_drop", "2001:db8:1:2::/64"): 2,
        ("syn_drop", OTHER): 6,
        ("paws", "2001:db8:1:2::/64"): 4, ("paws", OTHER): 0,
        ("ack_drop", OTHER): 0}
    assert values(fams, "tcp_refusal_peers_tracked") == {(): 6}
    assert values(fams, "tcp_refusal_peers_folded") == {(): 2}     # 10.1.3.1, 2001:db8:1:3::1


def test_peer_label():
    assert peer_label("10.1.2.3", subnet=False) == "10.1.2.3"
    assert peer_label("10.1.2.3", subnet=True) == "10.1.2.0/24"
    assert peer_label("2001:db8:a:b:c:d:e:f", subnet=True) == "2001:db8:a:b::/64"


def test_series_stay_bounded_with_10000_peers():
    kinds = ("syn_drop", "ack_drop", "paws")
    rows = [row(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", kinds[i % 3], 1 + i % 97)
            for i in range(10_000)]
    totals = {k: sum(r.count for r in rows if r.kind.label == k) + 11 for k in kinds}
    fams = scrape(feed(Exporter(top_peers=50), Tally(ts=1.0, rows=rows, totals=totals)))
    by_peer = values(fams, "tcp_refusals_by_peer_total", "kind", "peer")
    assert len(by_peer) <= 50 * len(kinds) + len(kinds)
    shown = {peer for _, peer in by_peer} - {OTHER}
    assert len(shown) == 50
    expected = sorted(rows, key=lambda r: (-r.count, r.peer))[:50]
    assert shown == {r.peer for r in expected}
    assert by_kind_sums(by_peer) == totals
    assert values(fams, "tcp_refusal_peers_tracked") == {(): 10_000}
    assert values(fams, "tcp_refusal_peers_folded") == {(): 10_000 - 50}
    assert sum(len(f.samples) for f in fams.values()) < 200


def test_ties_are_broken_by_peer_and_input_order_does_not_matter():
    rows = [row(p, "syn_drop", 3) for p in ("10.0.0.9", "10.0.0.10", "10.0.0.2", "10.0.0.1")]
    first = rank(rows, {"syn_drop": 12}, ["syn_drop"], top=2)
    second = rank(list(reversed(rows)), {"syn_drop": 12}, ["syn_drop"], top=2)
    assert first == second
    assert first.by_peer == [("syn_drop", "10.0.0.1", 3), ("syn_drop", "10.0.0.10", 3),
                             ("syn_drop", OTHER, 6)]
    counts = {"b": Counter(x=2), "a": Counter(y=2), "c": Counter(x=1, y=4)}
    assert top_labels(counts, 3) == ["c", "a", "b"]
    assert top_labels(counts, 1) == ["c"]


def test_before_any_tally_every_available_kind_is_zero():
    fams = scrape(feed(Exporter(), sess=session(("syn_drop", "tw_paws"))))
    assert values(fams, "tcp_refusals_total", "kind") == {("syn_drop",): 0, ("tw_paws",): 0}
    assert values(fams, "tcp_refusals_by_peer_total", "kind", "peer") == {
        ("syn_drop", OTHER): 0, ("tw_paws", OTHER): 0}
    assert values(fams, "tcp_refusal_lost_events_total") == {(): 0}
    assert values(fams, "tcp_refusal_peers_tracked") == {(): 0}
    assert values(fams, "tcp_refusal_kernel_counter_total", "name", "netns") == {}


def test_kind_filter_reports_only_selected_kinds():
    exporter = Exporter(selection=RefusalFilter.build(kinds=["syn_drop"]))
    tally = Tally(ts=1.0, totals={"syn_drop": 8, "ack_drop": 3, "paws": 1},
                  rows=[row("10.0.0.1", "syn_drop", 5)])
    fams = scrape(feed(exporter, tally))
    assert values(fams, "tcp_refusals_total", "kind") == {("syn_drop",): 8}
    assert values(fams, "tcp_refusals_by_peer_total", "kind", "peer") == {
        ("syn_drop", "10.0.0.1"): 5, ("syn_drop", OTHER): 3}


def test_namespace_filter_does_not_use_host_wide_totals():
    """The kernel's per-kind totals count every namespace: under --netns they would count
    refusals the user filtered out, so the totals are then the selected rows' sums."""
    exporter = Exporter(top_peers=1, selection=RefusalFilter.build(netns=[NS]))
    tally = Tally(ts=1.0, totals={"syn_drop": 500, "ack_drop": 0, "paws": 0},
                  rows=[row("10.0.0.1", "syn_drop", 5), row("10.0.0.2", "syn_drop", 2)])
    fams = scrape(feed(exporter, tally))
    assert values(fams, "tcp_refusals_total", "kind") == {
        ("syn_drop",): 7, ("ack_drop",): 0, ("paws",): 0}
    assert values(fams, "tcp_refusals_by_peer_total", "kind", "peer")[("syn_drop", OTHER)] == 2


def test_totals_never_below_the_rows():
    """A tally without totals (or read before them) still adds up and has no negative other."""
    fams = scrape(feed(Exporter(top_peers=1), Tally(ts=1.0, rows=[
        row("10.0.0.1", "syn_drop", 5), row("10.0.0.2", "syn_drop", 2)])))
    assert values(fams, "tcp_refusals_total", "kind")[("syn_drop",)] == 7
    assert values(fams, "tcp_refusals_by_peer_total", "kind", "peer")[("syn_drop", OTHER)] == 2


def test_kernel_counters_per_name_and_netns_and_end_updates_them():
    exporter = feed(Exporter(), SCENARIO, Counters(1.0, [
        CounterDelta(NS, "ListenDrops", 12), CounterDelta(NS, "ListenOverflows", 12),
        CounterDelta(NS2, "ListenDrops", 1)]))
    assert values(scrape(exporter), "tcp_refusal_kernel_counter_total", "name", "netns") == {
        ("ListenDrops", str(NS)): 12, ("ListenOverflows", str(NS)): 12,
        ("ListenDrops", str(NS2)): 1}
    exporter.end(End(ts=2.0, lost=0, counters=[CounterDelta(NS, "ListenDrops", 15)]))
    assert values(scrape(exporter), "tcp_refusal_kernel_counter_total", "name", "netns") == {
        ("ListenDrops", str(NS)): 15}


def test_events_do_not_change_the_metrics():
    exporter = feed(Exporter(), SCENARIO)
    before = generate_latest(exporter.registry)
    exporter.event(None)  # type: ignore[arg-type]
    assert generate_latest(exporter.registry) == before


def test_registry_is_private():
    from prometheus_client import REGISTRY
    exporter = feed(Exporter(), SCENARIO)
    assert exporter.registry is not REGISTRY
    assert b"tcp_refusals_total" not in generate_latest(REGISTRY)


# ---------------------------------------------------------------------------- --listen

@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:9464", ("127.0.0.1", 9464)), ("[::1]:9464", ("::1", 9464)),
    ("0.0.0.0:80", ("0.0.0.0", 80)), ("localhost:9100", ("localhost", 9100)),
    ("[::]:1", ("::", 1))])
def test_parse_listen_accepts(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["nonsense", "9464", "127.0.0.1", "::1:9464", "[::1]",
                                  "127.0.0.1:0", "127.0.0.1:65536", "300.1.1.1:80",
                                  "[zz::1]:80", ":9464", "host name:80", "a:b"])
def test_parse_listen_rejects(text):
    with pytest.raises(UsageError) as e:
        parse_listen(text)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"--listen {text!r}")
    assert e.value.exit_code == 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metrics_server_serves_the_registry_and_stops():
    exporter = feed(Exporter(), SCENARIO)
    port = free_port()
    status = io.StringIO()
    server = MetricsServer("127.0.0.1", port, exporter.registry, status)
    server.check()
    server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    finally:
        server.close()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert values(fams, "tcp_refusals_total", "kind")[("syn_drop",)] == 20
    assert status.getvalue() == f"tracer: serving metrics on http://127.0.0.1:{port}/metrics\n"
    with socket.socket() as s:                     # the port is free again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_metrics_server_warns_off_loopback():
    port = free_port()
    status = io.StringIO()
    server = MetricsServer("0.0.0.0", port, Exporter().registry, status)
    server.start()
    server.close()
    assert status.getvalue().splitlines() == [
        f"tracer: warning: metrics on 0.0.0.0:{port} hold client addresses; anyone who can "
        "reach it can read them",
        f"tracer: serving metrics on http://0.0.0.0:{port}/metrics"]


def test_address_in_use_is_one_line_with_the_remedy():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        server = MetricsServer("127.0.0.1", port, Exporter().registry, io.StringIO())
        for step in (server.check, server.start):
            with pytest.raises(TracerError) as e:
                step()
            assert e.value.exit_code == 1
            assert str(e.value) == (f"cannot listen on 127.0.0.1:{port}: address already in "
                                    "use: pick another with --listen")
        server.close()


def test_serve_usage_and_bind_errors_before_touching_the_kernel(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", "--listen", "nonsense"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("tracer: ") and "HOST:PORT" in err
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", "--top-peers", "0"])
    assert exc.value.code == 2
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            cli.main(["serve", "--listen", f"127.0.0.1:{port}"])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "already in use" in err and "--listen" in err
    assert len(err.strip().splitlines()) == 1


def test_ranked_once_per_tally(monkeypatch):
    exporter = feed(Exporter(), SCENARIO)
    calls = []
    real = exporter.ranking
    monkeypatch.setattr(exporter, "ranking", lambda snap: calls.append(1) or real(snap))
    scrape(exporter)
    exporter.counters(Counters(1.0, [CounterDelta(NS, "ListenDrops", 1)]))
    scrape(exporter)
    assert len(calls) == 1
    exporter.tally(dataclasses.replace(SCENARIO, ts=2.0))
    scrape(exporter)
    assert len(calls) == 2
