"""The `timewait` and `paws` kinds on real refusals (TESTING.md recipes), exact per peer,
against a ground truth predicted from the sniffed segments and against kernel counters.
"""

from __future__ import annotations

import random
import socket
import time

import pytest

from tests.kernel.conftest import delta, settle
from tracer.lab import CLIENTS4, SERVER4
from tracer.packets import ACK, FIN, PSH, SYN, Segment, tcp_options

SYN_SENT = 2


def reusable(lab, ns: str) -> socket.socket:
    s = lab.socket_in(ns)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return s


def server(lab, port: int) -> socket.socket:
    s = reusable(lab, lab.srv)
    s.bind((SERVER4, port))
    s.listen(64)
    s.settimeout(2)
    return s


def exchange(lab, lsock: socket.socket, ip: str, cport: int, sport: int,
             server_first: bool) -> None:
    """One connection with a little data; the side named closes first (and keeps the TW)."""
    c = reusable(lab, lab.cli)
    c.bind((ip, cport))
    c.connect((SERVER4, sport))
    child, _ = lsock.accept()
    c.send(b"hello")
    child.recv(16)
    child.send(b"world")
    c.recv(16)
    first, second = (child, c) if server_first else (c, child)
    first.close()
    time.sleep(0.02)
    second.close()
    time.sleep(0.02)


def test_tw_reuse_out_explicit_bind_exact_per_local_address(tracer, lab):
    lsock = server(lab, 9100)
    rng = random.Random(1)
    truth = dict(zip(CLIENTS4, rng.sample(range(1, 5), 4), strict=True))
    for i, (ip, k) in enumerate(truth.items()):
        for j in range(k):
            exchange(lab, lsock, ip, 50000 + 10 * i + j, 9100, server_first=False)
    before = lab.counters(lab.cli)
    reconnected = {}
    for i, (ip, k) in enumerate(truth.items()):
        for j in range(k):
            c = reusable(lab, lab.cli)
            c.bind((ip, 50000 + 10 * i + j))
            c.connect((SERVER4, 9100))                     # takes the client's TIME-WAIT over
            reconnected[(ip, 50000 + 10 * i + j)] = c
            lsock.accept()[0].close()
    settle()
    after = lab.counters(lab.cli)
    netns = lab.inode(lab.cli)
    events = tracer.events(netns, "tw_reuse_out")
    assert {e["peer"] for e in events} == {SERVER4}
    assert {(e["local"], e["local_port"]) for e in events} == set(reconnected)
    by_local = {}
    for e in events:
        by_local[e["local"]] = by_local.get(e["local"], 0) + 1
    assert by_local == truth
    assert tracer.tally_per_peer(netns, "tw_reuse_out") == {SERVER4: sum(truth.values())}
    assert delta(before, after, "TWRecycled") == sum(truth.values())
    assert tracer.events(lab.inode(lab.srv)) == []
    for c in reconnected.values():
        c.close()
    lsock.close()


def test_tw_reuse_out_one_port_range(tracer, lab):
    lab.sysctl(lab.cli, "net.ipv4.ip_local_port_range", "55000 55000")
    lab.sysctl(lab.cli, "net.ipv4.tcp_tw_reuse", "1")
    lab.sysctl(lab.cli, "net.ipv4.tcp_tw_reuse_delay", "100")
    lsock = server(lab, 9101)
    ip = CLIENTS4[2]
    rounds = 3
    before = lab.counters(lab.cli)
    for _ in range(rounds + 1):
        c = lab.socket_in(lab.cli)
        c.setsockopt(socket.IPPROTO_IP, 24, 1)             # IP_BIND_ADDRESS_NO_PORT
        c.bind((ip, 0))
        c.connect((SERVER4, 9101))                         # the only port: reuses its TW
        child, _ = lsock.accept()
        c.send(b"x")
        child.recv(4)
        c.close()                                          # client first: client keeps TW
        time.sleep(0.02)
        child.close()
        time.sleep(0.2)                                    # > tcp_tw_reuse_delay
    settle()
    netns = lab.inode(lab.cli)
    assert delta(before, lab.counters(lab.cli), "TWRecycled") == rounds
    assert tracer.per_peer(netns, "tw_reuse_out") == {SERVER4: rounds}
    assert {e["local_port"] for e in tracer.events(netns)} == {55000}
    lsock.close()


def test_tw_reuse_in_monotonic_reconnects_are_never_tw_paws(tracer, lab):
    lab.sysctl(lab.srv, "net.ipv4.tcp_rfc1337", "0")
    lsock = server(lab, 9102)
    for i, ip in enumerate(CLIENTS4):
        exchange(lab, lsock, ip, 51000 + i, 9102, server_first=True)   # server keeps the TW
    before = lab.counters(lab.srv)
    for i, ip in enumerate(CLIENTS4[:3]):
        c = reusable(lab, lab.cli)
        c.bind((ip, 51000 + i))
        c.connect((SERVER4, 9102))
        lsock.accept()[0].close()
        c.close()
    settle()
    netns = lab.inode(lab.srv)
    assert tracer.per_peer(netns, "tw_reuse_in") == {ip: 1 for ip in CLIENTS4[:3]}
    assert tracer.tally_per_peer(netns, "tw_reuse_in") == {ip: 1 for ip in CLIENTS4[:3]}
    assert tracer.per_peer(netns, "tw_paws") == {}
    assert delta(before, lab.counters(lab.srv), "PAWSTimewait") == 0
    lsock.close()


def last_client_segment(wire, ip: str, cport: int) -> Segment:
    """The newest segment the client sent on this 4-tuple (its FIN), from the sniffer."""
    wire._pump(0.05)
    mine = [seg for ptype, seg in wire.seen
            if ptype == 4 and seg.src == ip and seg.sport == cport]
    assert mine, f"no segments of {ip}:{cport} sniffed"
    return mine[-1]


def test_tw_paws_crafted_old_timestamps_exact_per_peer(tracer, lab):
    lab.sysctl(lab.srv, "net.ipv4.tcp_rfc1337", "1")        # client RSTs leave the TW alone
    lsock = server(lab, 9103)
    wire = lab.client_wire()
    lasts = {}
    for i, ip in enumerate(CLIENTS4):
        exchange(lab, lsock, ip, 52000 + i, 9103, server_first=True)
        last = last_client_segment(wire, ip, 52000 + i)
        assert last.flags & FIN and last.ts is not None
        lasts[ip] = last
    before = lab.counters(lab.srv)
    truth = dict(zip(CLIENTS4, random.Random(3).sample(range(1, 6), 4), strict=True))
    for ip, k in truth.items():
        last = lasts[ip]
        for _ in range(k):
            wire.send(Segment(ip, SERVER4, last.sport, 9103, SYN, seq=last.seq + 100000,
                              options=tcp_options(mss=1460, ts=(last.ts[0] - 1000, 0))))
    time.sleep(0.1)
    for ip in truth:                                        # newer clock: takes the TW over
        last = lasts[ip]
        wire.send(Segment(ip, SERVER4, last.sport, 9103, SYN, seq=last.seq + 200000,
                          options=tcp_options(mss=1460, ts=(last.ts[0] + 1000, 0))))
    wire.close()
    settle()
    after = lab.counters(lab.srv)
    netns = lab.inode(lab.srv)
    assert tracer.per_peer(netns, "tw_paws") == truth
    assert tracer.tally_per_peer(netns, "tw_paws") == truth
    assert {e["reason"] for e in tracer.events(netns, "tw_paws")} == {"TCP_RFC7323_TW_PAWS"}
    assert delta(before, after, "PAWSTimewait") == sum(truth.values())
    assert tracer.per_peer(netns, "tw_reuse_in") == {ip: 1 for ip in CLIENTS4}
    lsock.close()


def test_tw_paws_real_reconnects_with_a_changed_timestamp_clock(tracer, lab):
    lab.sysctl(lab.srv, "net.ipv4.tcp_rfc1337", "0")
    lsock = server(lab, 9104)
    wire = lab.client_wire()
    rng = random.Random(4)
    ports = {ip: [53000 + 10 * i + j for j in range(3)] for i, ip in enumerate(CLIENTS4)}
    first_clock = {}
    lasts = {}
    for ip, plist in ports.items():
        for port in plist:
            mode = rng.choice(("1", "2"))
            first_clock[(ip, port)] = mode
            lab.sysctl(lab.cli, "net.ipv4.tcp_timestamps", mode)
            exchange(lab, lsock, ip, port, 9104, server_first=True)
            lasts[(ip, port)] = last_client_segment(wire, ip, port)
    wire.flush()
    before = lab.counters(lab.srv)
    predicted = {ip: 0 for ip in CLIENTS4}
    accepted = {ip: 0 for ip in CLIENTS4}
    for (ip, port), mode in first_clock.items():
        lab.sysctl(lab.cli, "net.ipv4.tcp_timestamps", "2" if mode == "1" else "1")
        c = reusable(lab, lab.cli)
        c.bind((ip, port))
        c.connect((SERVER4, 9104))
        lsock.accept()[0].close()
        syn = wire.expect(lambda p, i=ip, q=port: p.src == i and p.sport == q and p.flags & SYN,
                          1, outgoing=True)
        assert syn is not None and syn.ts is not None
        older = ((syn.ts[0] - lasts[(ip, port)].ts[0]) & 0xFFFFFFFF) >> 31
        if older:
            predicted[ip] += 1
        else:
            accepted[ip] += 1
        c.close()
        wire.flush()
    wire.close()
    settle()
    netns = lab.inode(lab.srv)
    predicted = {ip: n for ip, n in predicted.items() if n}
    accepted = {ip: n for ip, n in accepted.items() if n}
    assert tracer.per_peer(netns, "tw_paws") == predicted
    assert tracer.tally_per_peer(netns, "tw_paws") == predicted
    assert tracer.per_peer(netns, "tw_reuse_in") == accepted
    assert delta(before, lab.counters(lab.srv), "PAWSTimewait") == sum(predicted.values())
    lsock.close()


def established(lab, lsock, wire, ip: str, cport: int):
    """A live connection and the sniffed state needed to forge segments on it."""
    c = lab.socket_in(lab.cli)
    c.bind((ip, cport))
    c.connect((SERVER4, lsock.getsockname()[1]))
    child, _ = lsock.accept()
    c.send(b"hello")
    child.recv(16)
    child.send(b"world")
    c.recv(16)
    time.sleep(0.25)                                       # delayed ACKs are out
    wire._pump(0.05)
    sent = [s for t, s in wire.seen if t == 4 and s.src == ip and s.sport == cport]
    got = [s for t, s in wire.seen if t != 4 and s.dst == ip and s.dport == cport]
    last_c, last_s = sent[-1], got[-1]
    c_nxt = max(s.seq + len(s.payload) for s in sent)
    s_nxt = max(s.seq + len(s.payload) for s in got)
    return c, child, last_c, last_s, c_nxt, s_nxt


@pytest.mark.parametrize("variant", ["old_data", "old_pure_ack", "in_seq_ack_slightly_old",
                                     "in_seq_ack_very_old"])
def test_paws_on_established_connections(tracer, lab, variant):
    lsock = server(lab, 9105)
    wire = lab.client_wire()
    truth = dict(zip(CLIENTS4, random.Random(5).sample(range(1, 6), 4), strict=True))
    conns = {}
    for i, ip in enumerate(CLIENTS4):
        conns[ip] = established(lab, lsock, wire, ip, 54000 + i)
    before = lab.counters(lab.srv)
    for ip, k in truth.items():
        _, _, last_c, last_s, c_nxt, s_nxt = conns[ip]
        tsval, tsecr = last_c.ts[0], last_s.ts[0]
        for _ in range(k):
            if variant == "old_data":
                seg = Segment(ip, SERVER4, last_c.sport, 9105, PSH | ACK, seq=c_nxt, ack=s_nxt,
                              window=last_c.window, payload=b"x" * 10,
                              options=tcp_options(ts=(tsval - 100000, tsecr)))
            elif variant == "old_pure_ack":
                seg = Segment(ip, SERVER4, last_c.sport, 9105, ACK, seq=c_nxt - 1, ack=s_nxt,
                              window=last_c.window, options=tcp_options(ts=(tsval - 100000, tsecr)))
            else:
                age = 3 if variant == "in_seq_ack_slightly_old" else 100000
                seg = Segment(ip, SERVER4, last_c.sport, 9105, ACK, seq=c_nxt, ack=s_nxt,
                              window=last_c.window, options=tcp_options(ts=(tsval - age, tsecr)))
            wire.send(seg)
    time.sleep(0.1)
    after = lab.counters(lab.srv)
    netns = lab.inode(lab.srv)
    settle()
    total = sum(truth.values())
    if variant == "in_seq_ack_slightly_old":
        assert tracer.events(netns) == []
        assert tracer.tally(netns) == {}
        assert delta(before, after, "PAWSEstab") == 0
    else:
        reason = "TCP_RFC7323_PAWS_ACK" if variant == "old_pure_ack" else "TCP_RFC7323_PAWS"
        assert tracer.per_peer(netns, "paws") == truth
        assert tracer.tally_per_peer(netns, "paws") == truth
        assert {e["reason"] for e in tracer.events(netns)} == {reason}
        counter = "PAWSOldAck" if variant == "old_pure_ack" else "PAWSEstab"
        assert delta(before, after, counter) == total
        if variant == "in_seq_ack_very_old":
            assert delta(before, after, "TCPACKSkippedPAWS") == total - len(truth)
    for c, child, *_ in conns.values():                    # the connections still work
        c.send(b"ping")
        assert child.recv(16) == b"ping"
        c.close()
        child.close()
    wire.close()
    lsock.close()


@pytest.mark.parametrize("tsecr_shift", [1_000_000, 0])
def test_paws_active_synack_with_impossible_echo(tracer, lab, tsecr_shift):
    ghost = "10.213.0.77"
    lab.sysctl(lab.cli, "net.ipv4.tcp_syn_retries", "1")
    from tracer.lab import run
    run("ip", "neigh", "replace", ghost, "lladdr", lab.smac, "dev", "c0", "nud", "permanent",
        ns=lab.cli)
    answer = lab.server_wire()
    before = lab.counters(lab.cli)
    truth = dict(zip(CLIENTS4, random.Random(6).sample(range(1, 5), 4), strict=True))
    socks = []
    for ip, k in truth.items():
        for _ in range(k):
            s = lab.socket_in(lab.cli)
            s.setblocking(False)
            s.bind((ip, 0))
            s.connect_ex((ghost, 7777))
            socks.append(s)
            syn = answer.expect(lambda p: p.dst == ghost and p.flags == SYN, 1)
            assert syn is not None and syn.ts is not None
            answer.send(Segment(ghost, syn.src, 7777, syn.sport, SYN | ACK, seq=123456,
                                ack=syn.seq + 1,
                                options=tcp_options(mss=1460, sack_perm=True,
                                                    ts=(123456, syn.ts[0] + tsecr_shift),
                                                    wscale=7)))
    time.sleep(0.2)
    states = [s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] for s in socks]
    for s in socks:
        s.close()
    answer.close()
    settle()
    netns = lab.inode(lab.cli)
    after = lab.counters(lab.cli)
    if tsecr_shift:
        assert all(st == SYN_SENT for st in states)
        by_local: dict[str, int] = {}
        for e in tracer.events(netns, "paws_active"):
            assert e["peer"] == ghost and e["peer_port"] == 7777
            by_local[e["local"]] = by_local.get(e["local"], 0) + 1
        assert by_local == truth
        assert tracer.tally_per_peer(netns, "paws_active") == {ghost: sum(truth.values())}
        assert delta(before, after, "PAWSActive") == sum(truth.values())
    else:
        assert all(st != SYN_SENT for st in states)       # control: it connects
        assert tracer.events(netns) == []
        assert delta(before, after, "PAWSActive") == 0
