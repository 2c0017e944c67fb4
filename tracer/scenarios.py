"""Scenes for `tracer demo`: real refusals of every kind, made inside a private Lab.

Each scene is a loop on its own thread that produces one story at its own pace until the
stop event is set; every wait is bounded, every socket closed. Together they fill the board:
one client far ahead of the others, an office subnet with many peers refused by TIME-WAIT
PAWS after a clock change, an IPv6 peer, and every other kind this kernel can report.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tracer.lab import CLIENTS4, CLIENTS6, SERVER4, SERVER6, SPOOF4, Lab
from tracer.packets import ACK, PSH, SYN, Segment, tcp_options

OFFICE = tuple(f"10.213.7.{i}" for i in range(10, 30))     # the "office" behind one NAT
GHOST = "10.213.0.77"                                      # answers SYNs with bad echoes


@dataclass
class Scene:
    name: str
    story: str
    run: Callable[[Lab, threading.Event], None]


def _sleep(stop: threading.Event, seconds: float) -> bool:
    """Sleep unless stopped; False once the demo is ending."""
    return not stop.wait(seconds)


def _close_later(socks: list[socket.socket], keep: int) -> None:
    while len(socks) > keep:
        socks.pop(0).close()


def _connect(lab: Lab, src: str, dst: str, port: int, sport: int = 0) -> socket.socket:
    s = lab.socket_in(lab.cli, socket.AF_INET6 if ":" in src else socket.AF_INET)
    s.setblocking(False)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((src, sport))
    s.connect_ex((dst, port))
    return s


def small_backlog(lab: Lab, stop: threading.Event) -> None:
    """A busy API whose listen() backlog is too small: SYNs and final ACKs dropped."""
    listener = lab.socket_in(lab.srv, socket.AF_INET6)
    listener.bind(("::", 8080))
    listener.listen(4)
    listener.setblocking(False)
    rates = {CLIENTS4[0]: 12, CLIENTS4[1]: 4, CLIENTS4[2]: 2, CLIENTS6[1]: 3}
    socks: list[socket.socket] = []
    tick = 0
    while _sleep(stop, 0.1):
        tick += 1
        for src, per_second in rates.items():
            for _ in range(per_second // 10 + (tick % 10 < per_second % 10)):
                socks.append(_connect(lab, src, SERVER6 if ":" in src else SERVER4, 8080))
        if tick % 5 == 0:                                  # the application accepts slowly
            try:
                listener.accept()[0].close()
            except OSError:
                pass
        _close_later(socks, 60)
    for s in socks:
        s.close()
    listener.close()


def forged_cookies(lab: Lab, stop: threading.Event) -> None:
    """Stray ACKs from a scanner hit the listener while it hands out SYN cookies."""
    wire = lab.client_wire()
    rng = random.Random(9)
    try:
        while _sleep(stop, 0.5):
            src = SPOOF4[rng.randrange(2)]
            wire.send(Segment(src, SERVER4, rng.randint(20000, 60000), 8080, ACK,
                              seq=rng.getrandbits(32), ack=rng.getrandbits(32)))
            wire.flush()
    finally:
        wire.close()


def office_nat(lab: Lab, stop: threading.Event) -> None:
    """The incident: office clients reconnect after their timestamp clock changed.

    The server closes first and keeps TIME-WAIT; the clients reuse their ports. With the
    clock changed (tcp_timestamps 1 <-> 2 in the client namespace, as behind a NAT or after
    a reboot) about half the reconnects are older than what the TIME-WAIT saw: tw_paws.
    """
    Lab.sysctl(lab.srv, "net.ipv4.tcp_rfc1337", "0")
    listener = lab.socket_in(lab.srv)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((SERVER4, 8443))
    listener.listen(256)
    listener.settimeout(1)
    clock = 1
    rng = random.Random(7)
    while not stop.is_set():
        clock = 3 - clock
        Lab.sysctl(lab.cli, "net.ipv4.tcp_timestamps", str(clock))
        for ip in rng.sample(OFFICE, 6):
            if stop.is_set():
                break
            port = 40000 + OFFICE.index(ip)
            client = lab.socket_in(lab.cli)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            client.settimeout(1.5)
            try:
                client.bind((ip, port))
                client.connect((SERVER4, 8443))
                child = listener.accept()[0]
                child.close()                              # the server closes first
                time.sleep(0.01)
            except OSError:
                pass
            finally:
                client.close()
        _sleep(stop, 0.4)
    listener.close()


def port_reuse(lab: Lab, stop: threading.Event) -> None:
    """A client that reconnects from the same port: its TIME-WAIT is taken over."""
    listener = lab.socket_in(lab.srv)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((SERVER4, 8081))
    listener.listen(64)
    listener.settimeout(1)
    while _sleep(stop, 0.7):
        client = lab.socket_in(lab.cli)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        client.settimeout(1)
        try:
            client.bind((CLIENTS4[3], 45000))
            client.connect((SERVER4, 8081))
            child = listener.accept()[0]
            client.close()                                 # the client closes first
            time.sleep(0.01)
            child.close()
        except OSError:
            client.close()
    listener.close()


def stale_timestamps(lab: Lab, stop: threading.Event) -> None:
    """A middlebox replays old segments into live connections: PAWS drops them."""
    listener = lab.socket_in(lab.srv, socket.AF_INET6)
    listener.bind(("::", 8082))
    listener.listen(16)
    listener.settimeout(1)
    wire = lab.client_wire()
    conns = []
    try:
        for src, dst in ((CLIENTS6[2], SERVER6), (CLIENTS4[3], SERVER4)):
            c = lab.socket_in(lab.cli, socket.AF_INET6 if ":" in src else socket.AF_INET)
            c.bind((src, 0))
            c.connect((dst, 8082))
            child = listener.accept()[0]
            c.send(b"hello")
            child.recv(16)
            conns.append((c, child))
        time.sleep(0.3)
        while _sleep(stop, 0.4):
            for c, child in conns:
                wire.flush()
                c.send(b"ping")
                child.recv(16)
                sent = wire.expect(lambda p, c=c: (p.src, p.sport) == c.getsockname()[:2]
                                   and p.payload == b"ping", 0.5, outgoing=True)
                if sent is None or sent.ts is None:
                    continue
                wire.send(Segment(sent.src, sent.dst, sent.sport, sent.dport, PSH | ACK,
                                  seq=sent.seq + 4, ack=sent.ack, window=sent.window,
                                  payload=b"x" * 10,
                                  options=tcp_options(ts=(sent.ts[0] - 100000, sent.ts[1]))))
    finally:
        for c, child in conns:
            c.close()
            child.close()
        wire.close()
        listener.close()


def bad_echo_server(lab: Lab, stop: threading.Event) -> None:
    """A server answers our connects with impossible timestamp echoes: paws_active."""
    lab.add_neighbour(lab.cli, GHOST, lab.smac)
    answer = lab.server_wire()
    socks: list[socket.socket] = []
    try:
        while _sleep(stop, 1.0):
            socks.append(_connect(lab, CLIENTS4[2], GHOST, 7777))
            syn = answer.expect(lambda p: p.dst == GHOST and p.flags == SYN, 0.5)
            if syn is not None and syn.ts is not None:
                answer.send(Segment(GHOST, syn.src, 7777, syn.sport, SYN | ACK, seq=123456,
                                    ack=syn.seq + 1,
                                    options=tcp_options(mss=1460, ts=(1, syn.ts[0] + 10**6))))
            answer.flush()
            _close_later(socks, 2)
    finally:
        for s in socks:
            s.close()
        answer.close()


SCENES = (
    Scene("small-backlog", "a listener whose backlog is too small for its clients",
          small_backlog),
    Scene("office-nat", "an office behind NAT refused by TIME-WAIT PAWS", office_nat),
    Scene("forged-cookies", "stray ACKs during a SYN-cookie period", forged_cookies),
    Scene("port-reuse", "a client reusing its port: TIME-WAIT taken over", port_reuse),
    Scene("stale-timestamps", "old segments replayed into live connections", stale_timestamps),
    Scene("bad-echo", "a server echoing impossible timestamps", bad_echo_server),
)


class Demo:
    """Runs every scene on its own thread inside one Lab until stopped."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._guard, args=(s,), name=s.name,
                                         daemon=True) for s in SCENES]
        self.failures: dict[str, str] = {}

    def _guard(self, scene: Scene) -> None:
        try:
            scene.run(self.lab, self.stop)
        except Exception as e:  # a scene failing must not take the demo down
            self.failures[scene.name] = f"{type(e).__name__}: {e}"

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def close(self) -> None:
        """Stop the scenes and wait for them; also fine when tracing failed before start()."""
        self.stop.set()
        for t in self.threads:
            if t.ident is not None:
                t.join(timeout=5)
