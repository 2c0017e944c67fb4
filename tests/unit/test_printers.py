"""The printers: NDJSON line shapes of the contract, and the bcc-style text lines."""

from __future__ import annotations

import io
import json
import time

from tracer.kinds import KIND_LABELS, Kind
from tracer.model import (
    CounterDelta,
    Counters,
    End,
    Event,
    KindAvailability,
    Session,
    Tally,
    TallyRow,
)
from tracer.sinks.printer import HEADER, JsonPrinter, TextPrinter, endpoint

NETNS = 4026531840
SESSION = Session(
    host="web1", kernel="6.18.44-fc-v669", started=1700000000.5, tracer="0.1.0",
    kinds={"syn_drop": KindAvailability(True, "skb:consume_skb+net:net_dev_queue"),
           "paws": KindAvailability(True, "skb:kfree_skb", "partial: no TCP_RFC7323_TSECR"),
           "tw_paws": KindAvailability(False, "skb:kfree_skb", "no TCP_RFC7323_TW_PAWS")},
    sysctls={"net.ipv4.tcp_syncookies": "1", "net.core.somaxconn": "4096"},
    max_events_per_second=20000)
EV4 = Event(1700000001.25, Kind.SYN_DROP, "10.1.2.3", 51514, "10.0.0.1", 443, 4, NETNS,
            "ACCEPT_QUEUE_FULL")
EV6 = Event(1700000002.0, Kind.PAWS, "2001:db8::1", 40000, "2001:db8::2", 22, 6, NETNS,
            "TCP_RFC7323_PAWS")
EV_NULL = Event(1700000003.0, Kind.SYNACK_RETRANS, "192.0.2.1", 1, "192.0.2.2", 80, 4, 1, None)
TALLY = Tally(ts=1700000004.0, lost=2, suppressed=5, totals={"syn_drop": 3, "paws": 1},
              rows=[TallyRow(NETNS, "10.1.2.3", Kind.SYN_DROP, 3),
                    TallyRow(NETNS, "2001:db8::1", Kind.PAWS, 1)])
COUNTERS = Counters(ts=1700000004.0, counters=[CounterDelta(NETNS, "ListenDrops", 3)])
END = End(ts=1700000005.0, lost=2, suppressed=5,
          counters=[CounterDelta(NETNS, "ListenDrops", 3), CounterDelta(NETNS, "PAWSEstab", 0),
                    CounterDelta(7, "PAWSEstab", 1)])


class Out(io.StringIO):
    """Remembers what had been written at each flush."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[str] = []

    def flush(self) -> None:
        self.flushed.append(self.getvalue())
        super().flush()


def write_all(printer) -> None:
    printer.session(SESSION)
    printer.event(EV4)
    printer.event(EV6)
    printer.event(EV_NULL)
    printer.tally(TALLY)
    printer.counters(COUNTERS)
    printer.end(END)


# ---------------------------------------------------------------- JSON

def test_json_is_one_compact_line_per_record_each_flushed():
    out = Out()
    write_all(JsonPrinter(out))
    lines = out.getvalue().split("\n")
    assert lines[-1] == "" and len(lines) == 8
    # flushed after every line, never in the middle of one
    assert out.flushed == ["\n".join(lines[:i]) + "\n" for i in range(1, 8)]
    assert [json.loads(x)["type"] for x in lines[:-1]] == [
        "session", "event", "event", "event", "tally", "counters", "end"]
    assert lines[1] == (
        '{"type":"event","ts":1700000001.25,"kind":"syn_drop","category":"syn",'
        '"peer":"10.1.2.3","peer_port":51514,"local":"10.0.0.1","local_port":443,'
        '"family":4,"netns":4026531840,"reason":"ACCEPT_QUEUE_FULL"}')


def records() -> list[dict]:
    out = io.StringIO()
    write_all(JsonPrinter(out))
    return [json.loads(x) for x in out.getvalue().splitlines()]


def test_session_line_shape():
    s = records()[0]
    assert s == {
        "type": "session", "format": 1, "host": "web1", "kernel": "6.18.44-fc-v669",
        "started": 1700000000.5, "tracer": "0.1.0",
        "kinds": {"syn_drop": {"available": True, "via": "skb:consume_skb+net:net_dev_queue"},
                  "paws": {"available": True, "via": "skb:kfree_skb",
                           "why": "partial: no TCP_RFC7323_TSECR"},
                  "tw_paws": {"available": False, "via": "skb:kfree_skb",
                              "why": "no TCP_RFC7323_TW_PAWS"}},
        "sysctls": {"net.ipv4.tcp_syncookies": "1", "net.core.somaxconn": "4096"},
        "max_events_per_second": 20000}
    assert type(s["format"]) is int and isinstance(s["started"], float)


def test_event_line_types():
    for e in records()[1:4]:
        assert set(e) == {"type", "ts", "kind", "category", "peer", "peer_port", "local",
                          "local_port", "family", "netns", "reason"}
        assert isinstance(e["ts"], float)
        assert e["kind"] in KIND_LABELS and e["category"] in ("syn", "timewait", "paws")
        for key in ("peer_port", "local_port", "family", "netns"):
            assert type(e[key]) is int, key
        assert e["family"] in (4, 6)
        assert e["reason"] is None or isinstance(e["reason"], str)
    ipv6, null_reason = records()[2], records()[3]
    assert (ipv6["peer"], ipv6["local"], ipv6["family"]) == ("2001:db8::1", "2001:db8::2", 6)
    assert null_reason["reason"] is None


def test_tally_counters_and_end_lines():
    _, _, _, _, tally, counters, end = records()
    assert tally == {"type": "tally", "ts": 1700000004.0, "lost": 2, "suppressed": 5,
                     "evicted": 0, "totals": {"syn_drop": 3, "paws": 1},
                     "rows": [{"netns": NETNS, "peer": "10.1.2.3", "kind": "syn_drop",
                               "count": 3},
                              {"netns": NETNS, "peer": "2001:db8::1", "kind": "paws",
                               "count": 1}]}
    assert counters == {"type": "counters", "ts": 1700000004.0,
                        "counters": [{"netns": NETNS, "name": "ListenDrops", "delta": 3}]}
    assert end == {"type": "end", "ts": 1700000005.0, "lost": 2, "suppressed": 5,
                   "counters": [{"netns": NETNS, "name": "ListenDrops", "delta": 3},
                                {"netns": NETNS, "name": "PAWSEstab", "delta": 0},
                                {"netns": 7, "name": "PAWSEstab", "delta": 1}]}


# ---------------------------------------------------------------- text

def clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


def test_header_columns():
    assert HEADER == ("TIME     KIND           PEER:PORT             > LOCAL:PORT            "
                      "REASON            NETNS")
    assert HEADER.split() == ["TIME", "KIND", "PEER:PORT", ">", "LOCAL:PORT", "REASON", "NETNS"]


def test_endpoint_brackets_ipv6_only():
    assert endpoint("10.0.0.1", 80) == "10.0.0.1:80"
    assert endpoint("2001:db8::1", 443) == "[2001:db8::1]:443"
    assert endpoint("::", 0) == "[::]:0"


def test_banner_header_and_rows():
    out = Out()
    p = TextPrinter(out)
    p.session(SESSION)
    p.event(EV4)
    p.event(EV6)
    p.event(EV_NULL)
    assert out.getvalue().split("\n") == [
        "Tracing TCP refusals on web1 (Linux 6.18.44-fc-v669), Ctrl-C to end.",
        "  syn_drop        via skb:consume_skb+net:net_dev_queue",
        "  paws            via skb:kfree_skb (partial: no TCP_RFC7323_TSECR)",
        "  tw_paws         UNAVAILABLE: no TCP_RFC7323_TW_PAWS",
        HEADER,
        f"{clock(EV4.ts)} syn_drop       10.1.2.3:51514        > 10.0.0.1:443          "
        f"ACCEPT_QUEUE_FULL 4026531840",
        f"{clock(EV6.ts)} paws           [2001:db8::1]:40000   > [2001:db8::2]:22      "
        f"TCP_RFC7323_PAWS  4026531840",
        f"{clock(EV_NULL.ts)} synack_retrans 192.0.2.1:1           > 192.0.2.2:80          "
        f"-                 1",
        ""]
    rows = out.getvalue().split("\n")[-4:-1]
    assert [f.split("\n")[-2] for f in out.flushed[-3:]] == rows   # each row flushed


WIDEST_V4 = "255.255.255.255"
REASONS_SHOWN = ("ACCEPT_QUEUE_FULL", "SYN_QUEUE_FULL", "TCP_LISTEN_OVERFLOW", "NO_SOCKET",
                 "TCP_FLAGS", "TCP_RFC7323_PAWS", "TCP_RFC7323_PAWS_ACK",
                 "TCP_RFC7323_TW_PAWS", "TCP_RFC7323_TSECR", None)


def text_row(e: Event) -> str:
    out = io.StringIO()
    TextPrinter(out).event(e)
    assert out.getvalue().count("\n") == 1
    return out.getvalue().rstrip("\n")


def test_ipv4_rows_fit_in_100_columns():
    """Endpoints take their full IPv4 width; REASON is sized for the common reasons, so only
    the three longer ones (19-20 characters) may push a worst-case row to 101."""
    rows = [text_row(Event(1.0, kind, WIDEST_V4, 65535, WIDEST_V4, 65535, 4, 0xFFFFFFFF,
                           reason)) for kind in Kind for reason in REASONS_SHOWN]
    common = [r for r, reason in zip(rows, REASONS_SHOWN * len(Kind), strict=False)
              if len(reason or "-") <= 17]
    assert max(len(r) for r in common) < 100
    assert max(len(r) for r in rows) <= 101


def test_ipv4_rows_stay_aligned_under_the_header():
    for peer, local, reason in (("1.2.3.4:1", "10.0.0.1:80", None),
                                ("203.0.113.254:65535", "10.0.0.1:443", "TCP_FLAGS"),
                                ("255.255.255.255:65535", "10.0.0.1:443", "NO_SOCKET"),
                                ("10.0.0.9:5000", "255.255.255.255:65535", "NO_SOCKET"),
                                ("10.0.0.9:5000", "10.0.0.1:443", "TCP_RFC7323_PAWS_ACK")):
        (paddr, pport), (laddr, lport) = peer.split(":"), local.split(":")
        row = text_row(Event(1.0, Kind.PAWS, paddr, int(pport), laddr, int(lport), 4, NETNS,
                             reason))
        columns = [row.index(f" {peer} "), row.index(" > "), row.index(f" {local} "),
                   row.index(f" {reason or '-'} ")]
        assert columns == [HEADER.index(" PEER:PORT"), HEADER.index(" > "),
                           HEADER.index(" LOCAL:PORT"), HEADER.index(" REASON")], row
        if len(reason or "-") <= 17:                      # only longer reasons shift NETNS
            assert row.index(f" {NETNS}") == HEADER.index(" NETNS"), row


def test_tally_summary():
    out = io.StringIO()
    TextPrinter(out).tally(TALLY)
    assert out.getvalue() == (
        "\n4 refusals from 2 peers (exact in-kernel counts); 2 events lost, "
        "5 held back by the rate cap\n"
        "         3  syn_drop       10.1.2.3  netns 4026531840  SYN dropped by a listener "
        "(accept queue full, or SYN queue full with cookies off)\n"
        "         1  paws           2001:db8::1  netns 4026531840  segment of an established "
        "or half-open connection dropped by PAWS\n")


def test_tally_without_losses_and_at_most_ten_rows():
    rows = [TallyRow(1, f"10.0.0.{i}", Kind.SYN_DROP, 20 - i) for i in range(12)]
    out = io.StringIO()
    TextPrinter(out).tally(Tally(ts=1.0, rows=rows))
    lines = out.getvalue().split("\n")
    assert lines[1] == "174 refusals from 12 peers (exact in-kernel counts)"
    assert len(lines) == 1 + 1 + 10 + 1
    assert "10.0.0.9 " in lines[-2] and "10.0.0.10 " not in out.getvalue()


def test_counters_are_silent_and_end_names_what_moved():
    out = io.StringIO()
    p = TextPrinter(out)
    p.counters(COUNTERS)
    assert out.getvalue() == ""
    p.end(END)
    assert out.getvalue() == (f"Kernel counters: ListenDrops +3 (netns {NETNS}), "
                              "PAWSEstab +1 (netns 7)\n")
    quiet = io.StringIO()
    TextPrinter(quiet).end(End(ts=1.0, lost=0, counters=[
        CounterDelta(1, "ListenDrops", 0)]))
    assert quiet.getvalue() == ""
