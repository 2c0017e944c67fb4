"""The `syn` kinds on real refusals: exact per-peer counts against a ground truth computed
without the tracer, and against the kernel's own counters (TESTING.md recipes).

Every test has its own namespaces, so the tracer's events and tally rows for that netns
inode are exactly what the test caused. Counts per client address differ, so a swapped
attribution fails.
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

from tests.kernel.conftest import connect_nb, delta, fill_accept_queue, settle
from tracer.lab import CLIENTS4, CLIENTS6, SERVER4, SERVER6, SPOOF4, SPOOF6
from tracer.packets import ACK, RST, SYN, Segment, tcp_options

SYN_SENT = 2


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


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


@pytest.mark.parametrize("family", [4, 6])
def test_syn_drop_accept_queue_exact_per_peer(tracer, lab, family):
    server, clients, _ = addresses(family)
    lsock = listener(lab, family, 9000, backlog=2)
    fill = fill_accept_queue(lab, server, 9000, 3)          # backlog + 1 = full
    before = lab.counters(lab.srv)
    truth = dict(zip(clients, distinct_counts(family), strict=True))
    socks = [connect_nb(lab, ip, server, 9000) for ip, k in truth.items() for _ in range(k)]
    time.sleep(0.3)                                          # below the 1 s SYN RTO
    assert all(tcp_info(s)[0] == SYN_SENT for s in socks)
    close_all(socks)
    settle()
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
    lab, _ = old_listener
    fill = fill_accept_queue(lab, SERVER4, 7000, 3)
    before = lab.counters(lab.srv)
    truth = dict(zip(CLIENTS4, distinct_counts(7), strict=True))
    socks = [connect_nb(lab, ip, SERVER4, 7000) for ip, k in truth.items() for _ in range(k)]
    time.sleep(0.3)
    assert all(tcp_info(s)[0] == SYN_SENT for s in socks)
    close_all(socks)
    settle()
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
    clients = [connect_nb(lab, CLIENTS4[i % 4], SERVER4, 9001) for i in range(24)]
    time.sleep(0.3)
    stuck = Counter(s.getsockname()[0] for s in clients if tcp_info(s)[0] == SYN_SENT)
    close_all(clients)
    settle()
    netns = lab.inode(lab.srv)
    assert sum(stuck.values()) > 0, "the small listener never filled: recipe broken"
    assert tracer.per_peer(netns, "syn_drop") == dict(stuck)
    assert tracer.tally_per_peer(netns, "syn_drop") == dict(stuck)
    assert delta(before, lab.counters(lab.srv), "ListenDrops") == sum(stuck.values())
    close_all(socks_l)


def test_answered_syns_are_never_drops_even_when_the_synack_waits_for_arp(tracer, lab):
    lab.flush_server_neighbours()
    lsock = listener(lab, 4, 9002, backlog=64)
    clients = [connect_nb(lab, ip, SERVER4, 9002) for ip in CLIENTS4 for _ in range(2)]
    time.sleep(0.5)
    assert all(tcp_info(s)[0] != SYN_SENT for s in clients), "handshakes should complete"
    settle()
    netns = lab.inode(lab.srv)
    assert tracer.events(netns) == []
    assert tracer.tally(netns) == {}
    close_all(clients)
    lsock.close()


def test_teardown_of_every_socket_produces_no_refusal(tracer, lab):
    lsock = listener(lab, 4, 9003, backlog=16)
    clients = [connect_nb(lab, ip, SERVER4, 9003) for ip in CLIENTS4]
    time.sleep(0.2)
    lsock.settimeout(1)
    children = [lsock.accept()[0] for _ in clients]
    for c in children:
        c.send(b"x" * 100)
    close_all(children)
    close_all(clients)
    lsock.close()
    settle()
    for ns in (lab.srv, lab.cli):
        assert tracer.events(lab.inode(ns)) == []
        assert tracer.tally(lab.inode(ns)) == {}


def test_concurrent_syn_and_ack_drops_reconcile_with_listendrops(tracer, lab):
    lsock = listener(lab, 4, 9004, backlog=2)
    wire = lab.client_wire()
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
            time.sleep(rng.uniform(0, 0.04))

    threads = [threading.Thread(target=client, args=(ip, i)) for i, ip in enumerate(CLIENTS4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(3.3)
    info = {ip: [tcp_info(s) for s in ss] for ip, ss in socks.items()}
    established = set(subprocess.run(
        ["ip", "netns", "exec", lab.srv, "ss", "-Htn", "state", "established"],
        capture_output=True, text=True, timeout=10, check=True).stdout.split())
    for ss in socks.values():                     # abortive close: RSTs, no more ACKs
        for s in ss:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
    settle()
    after = lab.counters(lab.srv)

    # SYNs counted on the wire (a retransmission racing the close is still seen), minus
    # one answered SYN per socket that left SYN_SENT.
    syns: Counter[str] = Counter()
    acks: Counter[str] = Counter()
    for seg in iter(lambda: wire.expect(lambda p: p.dport == 9004, 0.05, outgoing=True), None):
        if seg.flags & (SYN | ACK | RST) == SYN:
            syns[seg.src] += 1
        elif seg.flags & ACK and not seg.flags & (SYN | RST):
            if f"{seg.dst}:{seg.dport}" in established and f"{seg.src}:{seg.sport}" in established:
                continue
            acks[seg.src] += 1
    wire.close()
    netns = lab.inode(lab.srv)
    syn_truth = {ip: syns[ip] - sum(1 for st, _ in infos if st != SYN_SENT)
                 for ip, infos in info.items()}
    syn_truth = {ip: n for ip, n in syn_truth.items() if n}
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

    def acceptor() -> None:
        while not stop.is_set():
            try:
                accepted.append(lsock.accept()[0])
            except OSError:
                pass
            time.sleep(0.02)

    before = lab.counters(lab.srv)
    socks: list[socket.socket] = []
    lock = threading.Lock()

    def client(ip: str) -> None:
        rng = random.Random(ip + str(threading.get_ident()))
        for _ in range(25):
            s = connect_nb(lab, ip, SERVER4, 9005)
            with lock:
                socks.append(s)
            time.sleep(rng.uniform(0, 0.01))

    acc = threading.Thread(target=acceptor)
    acc.start()
    threads = [threading.Thread(target=client, args=(ip,)) for ip in CLIENTS4 for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(3.0)
    stop.set()
    acc.join()
    per_ip: Counter[str] = Counter()
    for s in socks:
        state, retrans = tcp_info(s)
        per_ip[s.getsockname()[0]] += 1 + retrans - (state != SYN_SENT)
    for s in socks:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    close_all(accepted)
    settle()
    after = lab.counters(lab.srv)
    netns = lab.inode(lab.srv)
    tally = tracer.tally(netns)
    syn = {p: n for (p, k), n in tally.items() if k == "syn_drop"}
    ack = sum(n for (p, k), n in tally.items() if k == "ack_drop")
    assert syn == {ip: n for ip, n in per_ip.items() if n}
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
    lsock = listener(lab, family, 9006, backlog=2)
    fill = fill_accept_queue(lab, server, 9006, 2)          # ack_backlog 2: 3rd child fits
    wire = lab.client_wire()
    before = lab.counters(lab.srv)
    synacks = {}
    for i, src in enumerate(spoof[:3]):
        syn = handshake_syn(src, server, 41000 + i, 9006)
        wire.send(syn)
        sa = wire.expect(lambda p, s=src: p.dst == s and p.flags & (SYN | ACK) == SYN | ACK, 1)
        assert sa is not None, f"no SYN-ACK to {src}"
        synacks[src] = (syn, sa)
    sends = {spoof[0]: 1, spoof[1]: 3, spoof[2]: 1}
    for src, n in sends.items():
        syn, sa = synacks[src]
        for _ in range(n):
            wire.send(Segment(src, server, syn.sport, 9006, ACK, seq=syn.seq + 1, ack=sa.seq + 1))
    time.sleep(1.3)                                          # one SYN-ACK retransmit round
    wire.close()
    settle(0.4)
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
        wire.send(handshake_syn(src, SERVER4, 42000 + i, 9007, ts=True))
        sa = wire.expect(lambda p, s=src, sp=42000 + i: p.dst == s and p.dport == sp
                         and p.flags & (SYN | ACK) == SYN | ACK, 0.05 if syncookies == 0 else 0.1)
        if sa is None:
            dropped[src] += 1
        else:
            answered[src].append(sa)
    syn_recv = subprocess.run(["ip", "netns", "exec", lab.srv, "ss", "-Htn", "state",
                               "syn-recv"], capture_output=True, text=True, timeout=10,
                              check=True).stdout
    cookies = Counter(src for src, sas in answered.items() for sa in sas
                      if f"{src}:{sa.dport}" not in syn_recv)
    wire.close()
    settle()
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
    if case == "cookie2":
        wire.send(handshake_syn(SPOOF4[0], SERVER4, 43000, 9008))
    elif case == "overflow1":
        for i in range(6):                                  # the 6th gets a cookie
            wire.send(handshake_syn(SPOOF4[0], SERVER4, 43000 + i, 9008))
    time.sleep(0.1)
    before = lab.counters(lab.srv)
    rng = random.Random(case)
    truth = dict(zip(SPOOF4, distinct_counts(len(case)), strict=True))
    for src, k in truth.items():
        for _ in range(k):
            wire.send(Segment(src, SERVER4, rng.randint(20000, 60000), 9008, ACK,
                              seq=rng.getrandbits(32), ack=rng.getrandbits(32)))
    wire.close()
    settle()
    after = lab.counters(lab.srv)
    netns = lab.inode(lab.srv)
    expected = truth if case in ("cookie2", "overflow1") else {}
    assert delta(before, after, "SyncookiesFailed") == sum(expected.values())
    assert tracer.per_peer(netns, "cookie_fail") == expected
    assert tracer.tally_per_peer(netns, "cookie_fail") == expected
    lsock.close()
