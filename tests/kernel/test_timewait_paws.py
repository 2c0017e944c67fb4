"""The `timewait` and `paws` kinds on real refusals (docs/TESTING.md recipes), exact per
peer, against a ground truth predicted from the sniffed segments and against kernel counters.

Closing handshakes are ordered by waiting for socket states (the side that closes second
does so once it has taken the first FIN in), not by pauses.
"""

from __future__ import annotations

import random
import socket
import subprocess
import time

import pytest

from tests.kernel.conftest import (
    CLOSE_WAIT,
    DEADLINE,
    ESTABLISHED,
    FIN_WAIT2,
    SYN_SENT,
    TIME_WAIT,
    delta,
    tcp_sockets,
    tcp_state,
    wait_closed,
    wait_counters,
    wait_until,
)
from tracer.lab import CLIENTS4, SERVER4
from tracer.packets import ACK, FIN, PSH, SYN, Segment, Wire, tcp_options


def reusable(lab, ns: str) -> socket.socket:
    s = lab.socket_in(ns)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.settimeout(DEADLINE)
    return s


def server(lab, port: int) -> socket.socket:
    s = reusable(lab, lab.srv)
    s.bind((SERVER4, port))
    s.listen(64)
    return s


def close_in_turn(lab, first: socket.socket, second: socket.socket, first_ns: str) -> None:
    """first closes, then second once it has taken first's FIN in (CLOSE_WAIT), so the
    close is not simultaneous and first keeps the TIME-WAIT. Returns once it holds it and
    the other side's socket is gone (it has taken the last ACK in)."""
    here, there = first.getsockname()[:2], first.getpeername()[:2]
    second_ns = lab.cli if first_ns == lab.srv else lab.srv
    first.close()
    wait_until(lambda: tcp_state(second) == CLOSE_WAIT, what=f"{there} in CLOSE_WAIT")
    second.close()

    def done() -> bool:
        mine = [st for local, remote, st in tcp_sockets(first_ns)
                if (local, remote) == (here, there)]
        theirs = [st for local, remote, st in tcp_sockets(second_ns)
                  if (local, remote) == (there, here)]
        return mine == [TIME_WAIT] and theirs == []

    wait_until(done, what=f"{here} -> {there} in TIME-WAIT, its peer closed")


def exchange(lab, lsock: socket.socket, ip: str, cport: int, sport: int,
             server_first: bool) -> None:
    """One connection with a little data; the side named closes first (and keeps the TW)."""
    c = reusable(lab, lab.cli)
    c.bind((ip, cport))
    c.connect((SERVER4, sport))
    child, _ = lsock.accept()
    child.settimeout(DEADLINE)
    c.send(b"hello")
    child.recv(16)
    child.send(b"world")
    c.recv(16)
    if server_first:
        close_in_turn(lab, child, c, lab.srv)
    else:
        close_in_turn(lab, c, child, lab.cli)


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
    # The server's FINs are taken in and acknowledged (the ACK of a FIN may be delayed):
    # every client in CLOSE_WAIT, every server child in FIN_WAIT2.
    def half_closed() -> bool:
        children = [st for _, remote, st in tcp_sockets(lab.srv) if remote in reconnected]
        return (all(tcp_state(c) == CLOSE_WAIT for c in reconnected.values())
                and children == [FIN_WAIT2] * len(reconnected))

    wait_until(half_closed, what="every reconnection half closed by the server")
    tracer.settle(lab)
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
        c.settimeout(DEADLINE)
        c.setsockopt(socket.IPPROTO_IP, 24, 1)             # IP_BIND_ADDRESS_NO_PORT
        c.bind((ip, 0))
        c.connect((SERVER4, 9101))                         # the only port: reuses its TW
        child, _ = lsock.accept()
        child.settimeout(DEADLINE)
        c.send(b"x")
        child.recv(4)
        close_in_turn(lab, c, child, lab.cli)              # client first: client keeps TW
        # The kernel reuses a TIME-WAIT only once it is older than tcp_tw_reuse_delay:
        # a minimum age the next connect needs, which a slow machine only exceeds.
        time.sleep(0.2)
    tracer.settle(lab)
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
    wait_closed(lab)
    tracer.settle(lab)
    netns = lab.inode(lab.srv)
    assert tracer.per_peer(netns, "tw_reuse_in") == {ip: 1 for ip in CLIENTS4[:3]}
    assert tracer.tally_per_peer(netns, "tw_reuse_in") == {ip: 1 for ip in CLIENTS4[:3]}
    assert tracer.per_peer(netns, "tw_paws") == {}
    assert delta(before, lab.counters(lab.srv), "PAWSTimewait") == 0
    lsock.close()


def last_client_segment(wire: Wire, ip: str, cport: int) -> Segment:
    """The newest segment the client sent on this 4-tuple (its FIN), from the sniffer.

    Called once the connection is closed on both sides: every segment of it was sent, so
    it is queued on the sniffer."""
    wire._pump(0)
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
    # Every old SYN was refused before a newer one takes the TIME-WAIT over.
    wait_counters(lab, lab.srv, before, {"PAWSTimewait": sum(truth.values())})
    for ip in truth:                                        # newer clock: takes the TW over
        last = lasts[ip]
        wire.send(Segment(ip, SERVER4, last.sport, 9103, SYN, seq=last.seq + 200000,
                          options=tcp_options(mss=1460, ts=(last.ts[0] + 1000, 0))))
    wire.close()
    tracer.settle(lab)
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
                          DEADLINE, outgoing=True)
        assert syn is not None and syn.ts is not None
        older = ((syn.ts[0] - lasts[(ip, port)].ts[0]) & 0xFFFFFFFF) >> 31
        if older:
            predicted[ip] += 1
        else:
            accepted[ip] += 1
        c.close()
        wire.flush()
    wire.close()
    wait_closed(lab)
    tracer.settle(lab)
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
    c.settimeout(DEADLINE)
    c.bind((ip, cport))
    c.connect((SERVER4, lsock.getsockname()[1]))
    child, _ = lsock.accept()
    child.settimeout(DEADLINE)
    c.send(b"hello")
    child.recv(16)
    child.send(b"world")
    c.recv(16)

    def acked() -> tuple | None:
        """The last segment of each side once each has acknowledged all the other sent
        (no delayed ACK still to come, so they stay the last ones)."""
        wire._pump(0.005)
        sent = [s for t, s in wire.seen if t == 4 and s.src == ip and s.sport == cport]
        got = [s for t, s in wire.seen if t != 4 and s.dst == ip and s.dport == cport]
        if not sent or not got:
            return None
        c_nxt = max(s.seq + len(s.payload) for s in sent)
        s_nxt = max(s.seq + len(s.payload) for s in got)
        if sent[-1].ack != s_nxt or got[-1].ack != c_nxt:
            return None
        return sent[-1], got[-1], c_nxt, s_nxt

    last_c, last_s, c_nxt, s_nxt = wait_until(acked, what=f"{ip}:{cport}'s data acknowledged")
    return c, child, last_c, last_s, c_nxt, s_nxt


@pytest.mark.parametrize("variant", ["old_data", "old_pure_ack", "in_seq_ack_slightly_old",
                                     "in_seq_ack_very_old"])
def test_paws_on_established_connections(tracer, lab, variant):
    # At most one duplicate ACK per connection answers the refused segments, however slowly
    # they arrive (the default rate limit is 0.5 s): TCPACKSkippedPAWS is then exact.
    lab.sysctl(lab.srv, "net.ipv4.tcp_invalid_ratelimit", "60000")
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
    total = sum(truth.values())
    counter = "PAWSOldAck" if variant == "old_pure_ack" else "PAWSEstab"
    if variant != "in_seq_ack_slightly_old":
        wait_counters(lab, lab.srv, before, {counter: total})
    tracer.settle(lab)                      # every forged segment was taken in
    after = lab.counters(lab.srv)
    netns = lab.inode(lab.srv)
    if variant == "in_seq_ack_slightly_old":
        assert tracer.events(netns) == []
        assert tracer.tally(netns) == {}
        assert delta(before, after, "PAWSEstab") == 0
    else:
        reason = "TCP_RFC7323_PAWS_ACK" if variant == "old_pure_ack" else "TCP_RFC7323_PAWS"
        assert tracer.per_peer(netns, "paws") == truth
        assert tracer.tally_per_peer(netns, "paws") == truth
        assert {e["reason"] for e in tracer.events(netns)} == {reason}
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
    # The refused sockets stay in SYN_SENT for the whole test (minutes of retries, which
    # nobody answers), however long the test takes.
    lab.sysctl(lab.cli, "net.ipv4.tcp_syn_retries", "10")
    subprocess.run(["ip", "-n", lab.cli, "neigh", "replace", ghost, "lladdr", lab.smac,
                    "dev", "c0", "nud", "permanent"], check=True, timeout=20)
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
            mine = s.getsockname()
            # This socket's SYN (a retransmission of an earlier one is never answered).
            syn = answer.expect(lambda p, m=mine: p.dst == ghost and (p.src, p.sport) == m
                                and p.flags == SYN, DEADLINE)
            assert syn is not None and syn.ts is not None
            answer.send(Segment(ghost, syn.src, 7777, syn.sport, SYN | ACK, seq=123456,
                                ack=syn.seq + 1,
                                options=tcp_options(mss=1460, sack_perm=True,
                                                    ts=(123456, syn.ts[0] + tsecr_shift),
                                                    wscale=7)))
    if tsecr_shift:
        wait_counters(lab, lab.cli, before, {"PAWSActive": sum(truth.values())})
    else:
        wait_until(lambda: all(tcp_state(s) == ESTABLISHED for s in socks),
                   what="every client connected")
    states = [tcp_state(s) for s in socks]
    for s in socks:
        s.close()
    answer.close()
    tracer.settle(lab)
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
