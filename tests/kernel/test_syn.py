"""The `syn` kinds on real refusals: exact per-peer counts against a ground truth computed
without the tracer, and against the kernel's own counters (docs/TESTING.md recipes).

Every test has its own namespaces, so the tracer's events and tally rows for that netns
inode are exactly what the test caused. Counts per client address differ, so a swapped
attribution fails. Ground truth never comes from the clock: it is counted on the wire
(SYNs a socket sent, retransmissions included), taken from the kernel's counters, or made
exact by the scenario (raw SYNs that nothing retransmits, one decision at a time).
"""

from __future__ import annotations

import random
import socket
import struct
import subprocess
import threading
import time
from collections import Counter

import pytest

from tests.kernel.conftest import (
    DEADLINE,
    SYN_SENT,
    big_buffer,
    close_all,
    connect_nb,
    delta,
    fill_accept_queue,
    link_of,
    queued,
    wait_closed,
    wait_counters,
    wait_until,
)
from tracer.lab import CLIENTS4, CLIENTS6, SERVER4, SERVER6, SPOOF4, SPOOF6
from tracer.packets import ACK, PACKET_OUTGOING, RST, SYN, Segment, Wire, tcp_options


def tcp_info(s: socket.socket) -> tuple[int, int]:
    """(state, total_retrans) from TCP_INFO."""
    raw = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return raw[0], struct.unpack_from("24I", raw, 8)[23]


def distinct_counts(seed: int, n: int = 4, low: int = 1, high: int = 6) -> list[int]:
    return random.Random(seed).sample(range(low, high + 1), n)


def addresses(family: int) -> tuple[str, tuple[str, ...], int]:
    if family == 4:
        return SERVER4, CLIENTS4, socket.AF_INET
    return SERVER6, CLIENTS6, socket.AF_INET6


def listener(lab, family: int, port: int, backlog: int, addr: str | None = None) -> socket.socket:
    server, _, af = addresses(family)
    s = lab.socket_in(lab.srv, af)
    s.bind((addr if addr is not None else server, port))
    s.listen(backlog)
    return s


def name(s: socket.socket) -> tuple[str, int]:
    """(address, port) of a socket, IPv4 or IPv6."""
    return s.getsockname()[:2]


def drain(wire: Wire) -> list[tuple[int, Segment]]:
    """Every frame the sniffer holds, as (packet type, segment), in the order seen."""
    while True:
        n = len(wire.seen)
        wire._pump(0)
        if len(wire.seen) == n:
            break
    frames, wire.seen = wire.seen, []
    return frames


def syn_drops(frames: list[tuple[int, Segment]], names: set[tuple[str, int]]) -> dict[str, int]:
    """Per source address, the SYNs of the sockets named that the server dropped.

    A socket's SYNs (retransmissions included) up to the first one a SYN-ACK answered
    (the SYN-ACK echoes that SYN's timestamp): if it kept sending SYNs after that, the
    answer was late and they met the half-open connection it made, not the listener.
    `frames` must hold all of them: sniffed once the sockets are closed and the link is
    quiet (every SYN and SYN-ACK ever sent is on the sniffer then)."""
    sent: dict[tuple[str, int], list[int]] = {n: [] for n in names}
    echoed: dict[tuple[str, int], set[int]] = {n: set() for n in names}
    for ptype, seg in frames:
        if ptype == PACKET_OUTGOING and (seg.src, seg.sport) in names \
                and seg.flags & (SYN | ACK | RST) == SYN:
            assert seg.ts is not None, "client SYNs carry timestamps (tcp_timestamps)"
            sent[(seg.src, seg.sport)].append(seg.ts[0])
        elif ptype != PACKET_OUTGOING and (seg.dst, seg.dport) in names \
                and seg.flags & (SYN | ACK | RST) == SYN | ACK and seg.ts is not None:
            echoed[(seg.dst, seg.dport)].add(seg.ts[1])
    out: Counter[str] = Counter()
    for n, tsvals in sent.items():
        answered = [i for i, tsval in enumerate(tsvals) if tsval in echoed[n]]
        out[n[0]] += answered[0] if answered else len(tsvals)
    return {ip: k for ip, k in out.items() if k}


@pytest.mark.parametrize("family", [4, 6])
def test_syn_drop_accept_queue_exact_per_peer(tracer, lab, family):
    server, clients, _ = addresses(family)
    lsock = listener(lab, family, 9000, backlog=2)
    fill = fill_accept_queue(lab, server, 9000, 3, lsock)   # backlog + 1 = full
    before = lab.counters(lab.srv)
    wire = lab.client_wire()
    counts = dict(zip(clients, distinct_counts(family), strict=True))
    socks = [connect_nb(lab, ip, server, 9000) for ip, k in counts.items() for _ in range(k)]
    wait_counters(lab, lab.srv, before, {"ListenDrops": len(socks)})   # every SYN handled
    assert all(tcp_info(s)[0] == SYN_SENT for s in socks)
    names = {name(s) for s in socks}
    close_all(socks)
    link_of(lab).wait_quiet()
    truth = syn_drops(drain(wire), names)  # one per socket, plus any retransmission
    wire.close()
    wait_counters(lab, lab.srv, before, {"ListenDrops": sum(truth.values())})
    tracer.settle(lab)
    after = lab.counters(lab.srv)
    netns = lab.inode(lab.srv)

    assert tracer.per_peer(netns, "syn_drop") == truth
    assert tracer.tally_per_peer(netns, "syn_drop") == truth
    assert tracer.kinds(netns) == {"syn_drop"}
    assert {e["reason"] for e in tracer.events(netns)} == {"ACCEPT_QUEUE_FULL"}
    assert {e["family"] for e in tracer.events(netns)} == {family}
    assert {(e["local"], e["local_port"]) for e in tracer.events(netns)} == {(server, 9000)}
    assert delta(before, after, "ListenDrops") == sum(truth.values())
    assert delta(before, after, "ListenOverflows") == sum(truth.values())
    close_all(fill)
    lsock.close()


def test_listener_created_before_the_tracer(tracer, old_listener):
    lab, lsock = old_listener
    fill = fill_accept_queue(lab, SERVER4, 7000, 3, lsock)
    before = lab.counters(lab.srv)
    wire = lab.client_wire()
    counts = dict(zip(CLIENTS4, distinct_counts(7), strict=True))
    socks = [connect_nb(lab, ip, SERVER4, 7000) for ip, k in counts.items() for _ in range(k)]
    wait_counters(lab, lab.srv, before, {"ListenDrops": len(socks)})
    assert all(tcp_info(s)[0] == SYN_SENT for s in socks)
    names = {name(s) for s in socks}
    close_all(socks)
    link_of(lab).wait_quiet()
    truth = syn_drops(drain(wire), names)
    wire.close()
    wait_counters(lab, lab.srv, before, {"ListenDrops": sum(truth.values())})
    tracer.settle(lab)
    netns = lab.inode(lab.srv)
    assert tracer.per_peer(netns, "syn_drop") == truth
    assert tracer.tally_per_peer(netns, "syn_drop") == truth
    assert delta(before, lab.counters(lab.srv), "ListenDrops") == sum(truth.values())
    close_all(fill)


def test_so_reuseport_group_attributes_the_full_listener(tracer, lab):
    socks_l = []
    for backlog in (2, 64):
        s = lab.socket_in(lab.srv)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((SERVER4, 9001))
        s.listen(backlog)
        socks_l.append(s)
    before = lab.counters(lab.srv)
    wire = lab.client_wire()
    clients: list[socket.socket] = []

    def decided() -> bool:
        drops = delta(before, lab.counters(lab.srv), "ListenDrops")
        return sum(queued(s) for s in socks_l) + drops == len(clients)

    for i in range(24):
        clients.append(connect_nb(lab, CLIENTS4[i % 4], SERVER4, 9001))
        # One handshake at a time: the server has queued this client or dropped its SYN
        # before the next one starts, so two of them never race for the small listener's
        # last slot (the loser's final ACK would be an ack_drop, which this test does not
        # count).
        wait_until(decided, what=f"the server's decision on client {i}")
    stuck = [s for s in clients if tcp_info(s)[0] == SYN_SENT]
    names = {name(s) for s in stuck}
    close_all(clients)
    link_of(lab).wait_quiet()
    truth = syn_drops(drain(wire), names)  # a stuck client's SYNs all go to the full one
    wire.close()
    wait_counters(lab, lab.srv, before, {"ListenDrops": sum(truth.values())})
    tracer.settle(lab)
    netns = lab.inode(lab.srv)
    assert sum(truth.values()) > 0, "the small listener never filled: recipe broken"
    assert tracer.per_peer(netns, "syn_drop") == truth
    assert tracer.tally_per_peer(netns, "syn_drop") == truth
    assert delta(before, lab.counters(lab.srv), "ListenDrops") == sum(truth.values())
    close_all(socks_l)


def test_answered_syns_are_never_drops_even_when_the_synack_waits_for_arp(tracer, lab):
    lab.flush_server_neighbours()
    lsock = listener(lab, 4, 9002, backlog=64)
    clients = [connect_nb(lab, ip, SERVER4, 9002) for ip in CLIENTS4 for _ in range(2)]
    # Every handshake complete on both sides: each SYN-ACK left after ARP, and the server
    # took every final ACK in (queued them all).
    wait_until(lambda: queued(lsock) == len(clients)
               and all(tcp_info(s)[0] != SYN_SENT for s in clients),
               what="every handshake to complete")
    tracer.settle(lab)                     # waits out the tracer's grace window, too
    netns = lab.inode(lab.srv)
    assert tracer.events(netns) == []
    assert tracer.tally(netns) == {}
    close_all(clients)
    lsock.close()


def test_teardown_of_every_socket_produces_no_refusal(tracer, lab):
    lsock = listener(lab, 4, 9003, backlog=16)
    clients = [connect_nb(lab, ip, SERVER4, 9003) for ip in CLIENTS4]
    lsock.settimeout(DEADLINE)
    children = [lsock.accept()[0] for _ in clients]
    for c in children:
        c.send(b"x" * 100)
    close_all(children)
    close_all(clients)
    lsock.close()
    wait_closed(lab)
    tracer.settle(lab)
    for ns in (lab.srv, lab.cli):
        assert tracer.events(lab.inode(ns)) == []
        assert tracer.tally(lab.inode(ns)) == {}


def test_concurrent_syn_and_ack_drops_reconcile_with_listendrops(tracer, lab):
    lsock = listener(lab, 4, 9004, backlog=2)
    wire = lab.client_wire()
    big_buffer(wire.sock)
    before = lab.counters(lab.srv)
    socks: dict[str, list[socket.socket]] = {ip: [] for ip in CLIENTS4}

    def client(ip: str, cpu: int) -> None:
        try:
            import os
            os.sched_setaffinity(0, {cpu % (os.cpu_count() or 1)})
        except OSError:
            pass
        rng = random.Random(ip)
        for _ in range(6):
            socks[ip].append(connect_nb(lab, ip, SERVER4, 9004))
            time.sleep(rng.uniform(0, 0.04))          # pacing: clients of uneven eagerness

    threads = [threading.Thread(target=client, args=(ip, i)) for i, ip in enumerate(CLIENTS4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # The scenario's length, not a ground truth: SYN and SYN-ACK retransmissions (at 1, 2
    # and 3 s) add drops of both kinds. Whatever happened is counted on the wire below.
    time.sleep(3.3)
    established = set(subprocess.run(
        ["ip", "netns", "exec", lab.srv, "ss", "-Htn", "state", "established"],
        capture_output=True, text=True, timeout=10, check=True).stdout.split())
    names = {name(s) for ss in socks.values() for s in ss}
    for ss in socks.values():                     # abortive close: RSTs, no more ACKs
        for s in ss:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
    link_of(lab).wait_quiet()                     # every SYN-ACK has reached the sniffer

    frames = drain(wire)
    wire.close()
    syn_truth = syn_drops(frames, names)
    # ACKs of handshakes whose connection never made it into the accept queue: each one
    # met a full queue (the kernel retransmits the SYN-ACK, the client ACKs again).
    acks: Counter[str] = Counter()
    for ptype, seg in frames:
        if ptype != PACKET_OUTGOING or seg.dport != 9004 or seg.flags & (SYN | RST) \
                or not seg.flags & ACK:
            continue
        if f"{seg.dst}:{seg.dport}" in established and f"{seg.src}:{seg.sport}" in established:
            continue
        acks[seg.src] += 1
    wait_counters(lab, lab.srv, before,
                  {"ListenDrops": sum(syn_truth.values()) + sum(acks.values())})
    tracer.settle(lab)
    after = lab.counters(lab.srv)
    netns = lab.inode(lab.srv)
    assert tracer.tally_per_peer(netns, "syn_drop") == syn_truth
    assert tracer.per_peer(netns, "syn_drop") == syn_truth
    assert tracer.tally_per_peer(netns, "ack_drop") == dict(acks)
    assert delta(before, after, "ListenDrops") == sum(syn_truth.values()) + sum(acks.values())
    lsock.close()


def test_stress_with_accepting_server_reconciles_exactly(tracer, lab):
    lsock = listener(lab, 4, 9005, backlog=4)
    lsock.settimeout(0.02)
    stop = threading.Event()
    accepted = []
    wire = lab.client_wire()
    big_buffer(wire.sock)

    def acceptor() -> None:
        while not stop.is_set():
            try:
                accepted.append(lsock.accept()[0])
            except OSError:
                pass
            time.sleep(0.02)                         # pacing: a server slower than its clients

    before = lab.counters(lab.srv)
    socks: list[socket.socket] = []
    lock = threading.Lock()

    def client(ip: str) -> None:
        rng = random.Random(ip + str(threading.get_ident()))
        for _ in range(25):
            s = connect_nb(lab, ip, SERVER4, 9005)
            with lock:
                socks.append(s)
            time.sleep(rng.uniform(0, 0.01))          # pacing: bursts of connects

    acc = threading.Thread(target=acceptor)
    acc.start()
    threads = [threading.Thread(target=client, args=(ip,)) for ip in CLIENTS4 for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(3.0)                          # the scenario's length, with retransmissions
    stop.set()
    acc.join()
    names = {name(s) for s in socks}
    for s in socks:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    close_all(accepted)
    link_of(lab).wait_quiet()                     # every SYN-ACK has reached the sniffer
    per_ip = syn_drops(drain(wire), names)
    wire.close()
    wait_counters(lab, lab.srv, before, {"ListenDrops": sum(per_ip.values())})
    tracer.settle(lab)
    after = lab.counters(lab.srv)
    netns = lab.inode(lab.srv)
    tally = tracer.tally(netns)
    syn = {p: n for (p, k), n in tally.items() if k == "syn_drop"}
    ack = sum(n for (p, k), n in tally.items() if k == "ack_drop")
    assert syn == per_ip
    assert delta(before, after, "ListenDrops") == sum(syn.values()) + ack
    assert delta(before, after, "SyncookiesSent") == sum(
        n for (p, k), n in tally.items() if k == "syn_cookie")
    lsock.close()


def handshake_syn(src: str, dst: str, sport: int, dport: int, ts: bool = False) -> Segment:
    opts = tcp_options(mss=1460, sack_perm=ts, ts=(1000, 0) if ts else None,
                       wscale=7 if ts else None)
    return Segment(src, dst, sport, dport, SYN, seq=random.getrandbits(32), options=opts)


@pytest.mark.parametrize("family", [4, 6])
def test_ack_drop_and_synack_retrans_deterministic(tracer, lab, family):
    server, _, _ = addresses(family)
    spoof = SPOOF4 if family == 4 else SPOOF6
    # One SYN-ACK retransmission per half-open connection, ever: the second timeout ends
    # it. So "one retransmit round" does not depend on when the test looks.
    lab.sysctl(lab.srv, "net.ipv4.tcp_synack_retries", "1")
    lsock = listener(lab, family, 9006, backlog=2)
    fill = fill_accept_queue(lab, server, 9006, 2, lsock)   # ack_backlog 2: 3rd child fits
    wire = lab.client_wire()
    before = lab.counters(lab.srv)
    synacks = {}
    for i, src in enumerate(spoof[:3]):
        syn = handshake_syn(src, server, 41000 + i, 9006)
        wire.send(syn)
        sa = wire.expect(lambda p, s=src: p.dst == s and p.flags & (SYN | ACK) == SYN | ACK,
                         DEADLINE)
        assert sa is not None, f"no SYN-ACK to {src}"
        synacks[src] = (syn, sa)

    def ack(src: str) -> None:
        syn, sa = synacks[src]
        wire.send(Segment(src, server, syn.sport, 9006, ACK, seq=syn.seq + 1, ack=sa.seq + 1))

    ack(spoof[0])                                            # the 3rd child: queue full now
    wait_until(lambda: queued(lsock) == 3, what="the third child queued")
    sends = {spoof[1]: 3, spoof[2]: 1}
    for src, n in sends.items():
        for _ in range(n):
            ack(src)
    wire.close()
    wait_counters(lab, lab.srv, before, {"ListenOverflows": 4, "TCPSynRetrans": 2})
    tracer.settle(lab)
    after = lab.counters(lab.srv)
    netns = lab.inode(lab.srv)
    expected_ack = {spoof[1]: 3, spoof[2]: 1}
    assert tracer.per_peer(netns, "ack_drop") == expected_ack
    assert tracer.tally_per_peer(netns, "ack_drop") == expected_ack
    assert {e["reason"] for e in tracer.events(netns, "ack_drop")} == {"TCP_LISTEN_OVERFLOW"}
    assert tracer.tally_per_peer(netns, "synack_retrans") == {spoof[1]: 1, spoof[2]: 1}
    assert delta(before, after, "ListenOverflows") == 4
    assert delta(before, after, "ListenDrops") == 4
    assert delta(before, after, "TCPSynRetrans") == 2
    assert tracer.kinds(netns) == {"ack_drop", "synack_retrans"}
    close_all(fill)
    lsock.close()


@pytest.mark.parametrize("syncookies", [0, 1, 2])
def test_syn_queue_drops_and_cookies(tracer, lab, syncookies):
    lab.sysctl(lab.srv, "net.ipv4.tcp_syncookies", str(syncookies))
    lsock = listener(lab, 4, 9007, backlog=4)
    wire = lab.client_wire()
    before = lab.counters(lab.srv)
    rng = random.Random(syncookies)
    per_ip = {ip: rng.randint(2, 5) for ip in SPOOF4}
    order = [ip for ip in SPOOF4 for _ in range(per_ip[ip])]
    rng.shuffle(order)
    answered: dict[str, list[Segment]] = {ip: [] for ip in SPOOF4}
    dropped: Counter[str] = Counter()
    for i, src in enumerate(order):
        sport = 42000 + i
        drops = delta(before, lab.counters(lab.srv), "ListenDrops")
        wire.send(handshake_syn(src, SERVER4, sport, 9007, ts=True))

        def decided(s: str = src, sp: int = sport, d: int = drops) -> tuple | None:
            """The server's decision on this SYN: its SYN-ACK, or a drop counted."""
            sa = wire.expect(lambda p: p.dst == s and p.dport == sp
                             and p.flags & (SYN | ACK) == SYN | ACK, 0.002)
            if sa is not None:
                return ("answered", sa)
            if delta(before, lab.counters(lab.srv), "ListenDrops") > d:
                return ("dropped", None)
            return None

        # One SYN at a time, the next only once the kernel decided on this one, so each
        # decision belongs to its SYN.
        verdict, sa = wait_until(decided, what=f"the server's decision on SYN {i} from {src}")
        if verdict == "dropped":
            dropped[src] += 1
        else:
            answered[src].append(sa)
    syn_recv = subprocess.run(["ip", "netns", "exec", lab.srv, "ss", "-Htn", "state",
                               "syn-recv"], capture_output=True, text=True, timeout=10,
                              check=True).stdout
    cookies = Counter(src for src, sas in answered.items() for sa in sas
                      if f"{src}:{sa.dport}" not in syn_recv)
    wire.close()
    tracer.settle(lab)
    after = lab.counters(lab.srv)
    netns = lab.inode(lab.srv)
    assert tracer.tally_per_peer(netns, "syn_drop") == dict(dropped)
    assert tracer.per_peer(netns, "syn_drop") == dict(dropped)
    assert tracer.tally_per_peer(netns, "syn_cookie") == dict(cookies)
    assert tracer.per_peer(netns, "syn_cookie") == dict(cookies)
    if syncookies == 0:
        assert sum(dropped.values()) == len(order) - 5      # the SYN queue holds 5
        assert {e["reason"] for e in tracer.events(netns, "syn_drop")} == {"SYN_QUEUE_FULL"}
        assert delta(before, after, "TCPReqQFullDrop") == sum(dropped.values())
    elif syncookies == 2:
        assert sum(cookies.values()) == len(order)
    else:
        assert sum(cookies.values()) == len(order) - 5
    assert delta(before, after, "SyncookiesSent") == sum(cookies.values())
    assert delta(before, after, "ListenDrops") == sum(dropped.values())
    lsock.close()


@pytest.mark.parametrize("case", ["cookie2", "overflow1", "fresh2", "quiet1", "off0"])
def test_cookie_fail_only_after_a_recent_cookie(tracer, lab, case):
    syncookies = int(case[-1])
    lab.sysctl(lab.srv, "net.ipv4.tcp_syncookies", str(syncookies))
    lsock = listener(lab, 4, 9008, backlog=4)
    wire = lab.client_wire()
    start = lab.counters(lab.srv)
    if case == "cookie2":
        wire.send(handshake_syn(SPOOF4[0], SERVER4, 43000, 9008))
    elif case == "overflow1":
        for i in range(6):                                  # the 6th gets a cookie
            wire.send(handshake_syn(SPOOF4[0], SERVER4, 43000 + i, 9008))
    if case in ("cookie2", "overflow1"):
        # The cookie was sent (so it is recent) before any ACK below arrives.
        wait_counters(lab, lab.srv, start, {"SyncookiesSent": 1})
    before = lab.counters(lab.srv)
    rng = random.Random(case)
    truth = dict(zip(SPOOF4, distinct_counts(len(case)), strict=True))
    for src, k in truth.items():
        for _ in range(k):
            wire.send(Segment(src, SERVER4, rng.randint(20000, 60000), 9008, ACK,
                              seq=rng.getrandbits(32), ack=rng.getrandbits(32)))
    wire.close()
    expected = truth if case in ("cookie2", "overflow1") else {}
    wait_counters(lab, lab.srv, before, {"SyncookiesFailed": sum(expected.values())})
    tracer.settle(lab)                 # every forged ACK was taken in (and refused or not)
    after = lab.counters(lab.srv)
    netns = lab.inode(lab.srv)
    assert delta(before, after, "SyncookiesFailed") == sum(expected.values())
    assert tracer.per_peer(netns, "cookie_fail") == expected
    assert tracer.tally_per_peer(netns, "cookie_fail") == expected
    lsock.close()
