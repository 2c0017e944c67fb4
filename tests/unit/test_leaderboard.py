"""The board's model (tallies -> ranked rows, rates, subnets, filters) and its rendering."""

from __future__ import annotations

import time

from rich.console import Console

from tracer.kinds import Kind
from tracer.leaderboard import Leaderboard, subnet_of
from tracer.model import CounterDelta, Event, KindAvailability, Tally, TallyRow
from tracer.reconcile import attribute
from tracer.sinks.dashboard import DashboardState, render


def tally(ts: float, counts: dict[tuple[str, Kind], int], ports=None) -> Tally:
    return Tally(ts=ts, rows=[TallyRow(1, p, k, n) for (p, k), n in counts.items()],
                 ports=ports or {})


def test_rates_totals_and_sorts():
    b = Leaderboard()
    b.update(tally(10.0, {("10.0.0.1", Kind.SYN_DROP): 100, ("10.0.0.2", Kind.SYN_DROP): 5}))
    b.update(tally(12.0, {("10.0.0.1", Kind.SYN_DROP): 100, ("10.0.0.2", Kind.SYN_DROP): 25,
                          ("10.0.0.2", Kind.TW_PAWS): 1}))
    rows = b.rows()
    assert [r.peer for r in rows] == ["10.0.0.2", "10.0.0.1"]      # by rate
    assert rows[0].rate == 10.5 and rows[0].total == 26
    assert rows[0].first_seen == 10.0 and rows[0].last_seen == 12.0
    assert rows[1].last_seen == 10.0
    b.cycle_sort()
    assert b.sort == "total" and b.rows()[0].peer == "10.0.0.1"
    b.cycle_sort()
    assert b.sort == "last" and b.rows()[0].peer == "10.0.0.2"
    assert b.rows(limit=1) == b.rows()[:1]


def test_kind_filter_and_categories():
    b = Leaderboard()
    b.update(tally(1.0, {("10.0.0.1", Kind.SYN_DROP): 3, ("10.0.0.2", Kind.PAWS): 2}))
    assert b.rows()[0].by_category(Kind.SYN_DROP.category) == 3
    b.cycle_kind()
    assert b.kind_filter is Kind.SYN_DROP
    assert [r.peer for r in b.rows()] == ["10.0.0.1"]


def test_subnet_grouping_v4_v6():
    assert subnet_of("10.1.2.3") == "10.1.2.0/24"
    assert subnet_of("2001:db8:1:2:3::4") == "2001:db8:1:2::/64"
    b = Leaderboard()
    b.update(tally(1.0, {("10.1.2.3", Kind.SYN_DROP): 1, ("10.1.2.4", Kind.SYN_DROP): 2,
                         ("10.1.3.1", Kind.SYN_DROP): 1},
                   ports={"10.1.2.3": {443: 1}, "10.1.2.4": {443: 1, 80: 1}}))
    b.toggle_grouping()
    rows = b.rows()
    assert (rows[0].peer, rows[0].total, rows[0].members) == ("10.1.2.0/24", 3, 2)
    assert rows[0].top_ports() == [443, 80]


def test_attribution_marks_a_short_board():
    got = attribute([CounterDelta(1, "ListenDrops", 10), CounterDelta(2, "ListenDrops", 5)],
                    {(1, Kind.SYN_DROP): 6, (1, Kind.ACK_DROP): 2})
    drops = next(a for a in got if a.counter == "ListenDrops")
    assert (drops.delta, drops.attributed, drops.short) == (15, 8, True)
    only1 = next(a for a in attribute([CounterDelta(1, "ListenDrops", 8)],
                                      {(1, Kind.SYN_DROP): 8}, netns={1})
                 if a.counter == "ListenDrops")
    assert not only1.short and only1.share == 1.0


def state() -> DashboardState:
    st = DashboardState(host="web-3", started=1000.0, now=1065.0)
    st.kinds = {"syn_drop": KindAvailability(True, "x"),
                "tw_paws": KindAvailability(False, "", "old kernel")}
    rows = {(f"10.0.0.{i}", Kind.SYN_DROP): 100 - i for i in range(40)}
    rows[("2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff", Kind.PAWS)] = 7
    st.board.update(tally(1064.0, rows))
    st.board.update(tally(1065.0, {**rows, ("10.0.0.3", Kind.SYN_DROP): 120}))
    st.recent.append(Event(1065.0, Kind.SYN_DROP, "10.0.0.3", 40000, "10.9.9.9", 443, 4, 1, None))
    st.attributions = attribute([CounterDelta(1, "ListenDrops", 5000)], {(1, Kind.SYN_DROP): 4000})
    return st


def screen(width: int, height: int) -> list[str]:
    console = Console(width=width, height=height, record=True, color_system=None,
                      force_terminal=False)
    console.print(render(state(), width, height))
    return console.export_text().splitlines()


def test_render_fits_80x24_and_shows_the_top_peer_first():
    lines = screen(80, 24)
    assert len(lines) == 24 and all(len(x) <= 80 for x in lines)
    text = "\n".join(lines)
    board = [x for x in lines if x.strip().startswith("1 ")]
    assert board and "10.0.0.3" in board[0]                  # fastest grower on top
    assert "lost 0" in text and "unavailable: tw_paws" in text
    assert "ListenDrops" in text and "80% !" in text           # short attribution marked
    assert "RECENT" in text and "PEER" in text


def test_render_uses_a_tall_terminal():
    lines = screen(120, 50)
    assert len(lines) == 50
    assert sum(1 for x in lines if x.strip()[:2].strip().isdigit()) > 25
    assert "FIRST" in "\n".join(lines)


def test_dashboard_sink_counts_events_per_second():
    from tracer.sinks.dashboard import Dashboard
    d = Dashboard(Console(width=80, height=24, file=open("/dev/null", "w")), on_quit=lambda: None)
    d.tally(tally(time.time(), {}))
    for _ in range(10):
        d.event(Event(1.0, Kind.SYN_DROP, "10.0.0.1", 1, "10.0.0.2", 2, 4, 1, None))
    d.tally(tally(time.time() + 2, {("10.0.0.1", Kind.SYN_DROP): 10}))
    assert round(d.state.events_per_second) == 5
    assert d.state.board.peers == 1


def test_status_line_shows_evicted_peers_only_when_there_are_some():
    st = state()
    assert "evicted" not in _text(st)
    st.board.update(Tally(ts=1066.0, rows=[TallyRow(1, "10.0.0.1", Kind.SYN_DROP, 5)],
                          evicted=12345))
    assert st.board.evicted == 12345
    assert "evicted 12,345" in _text(st)


def _text(st: DashboardState) -> str:
    console = Console(width=120, height=30, record=True, color_system=None)
    console.print(render(st, 120, 30))
    return console.export_text()


def test_a_huge_tally_follows_only_the_biggest_peers_and_counts_all():
    from tracer.leaderboard import Leaderboard
    board = Leaderboard(max_peers=100)
    rows = [TallyRow(1, f"10.0.{i // 256}.{i % 256}", Kind.SYN_DROP, 1000 - i)
            for i in range(300)]
    board.update(Tally(ts=1.0, rows=rows, totals={"syn_drop": sum(r.count for r in rows)}))
    assert board.peers == 300
    assert len(board.rows()) == 100
    assert board.rows(limit=1)[0].peer == "10.0.0.0"
