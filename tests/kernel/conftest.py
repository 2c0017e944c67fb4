"""One real tracer for the whole kernel-test session, driven through its JSON contract.

`tracer watch --json` runs as a subprocess (bcc compiles once per session); a thread reads
its NDJSON. Tests make refusals in namespaces of their own and read back the events and the
exact in-kernel tally (SIGUSR1) of their namespace inodes only. At the end the tracer is
stopped with SIGINT, and its exit code and final lines are checked.

Nothing here takes its ground truth from the clock: waits poll a condition (a kernel counter,
a socket state, the tracer's output) until a generous deadline, and a test asserts what did
NOT happen only after a barrier (`View.settle`): its traffic is over (every segment either
side sent was taken in by the other side's TCP), then a marker refusal made afterwards in a
namespace of its own has come out of the tracer, so everything before it has too.
"""

from __future__ import annotations

import ctypes
import importlib.util
import ipaddress
import itertools
import json
import os
import platform
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO, TypeVar

import pytest

from tracer.kernel.counters import parse_netstat
from tracer.kernel.netns import read_in_netns
from tracer.lab import CLIENTS4, CLIENTS6, SERVER4, SERVER6, SPOOF4, Lab, remove_stale
from tracer.packets import SYN, Segment, parse_frame, tcp_options
from tracer.probe.grace import GraceWindow
from tracer.probe.load import Tuning

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "rtk"            # namespace names of this suite: rtk-<pid>-<tag>-srv|cli
DEADLINE = 30.0           # for any wait: generous, since a passing wait ends at once
STARTUP = 300.0           # for a tracer's session line: bcc compiles first (minutes when slow)
# How long the tracer may hold a syn_drop back (its grace window plus slack): a barrier
# waits this long after its marker so that held records released by then are out too.
HOLD = GraceWindow(Tuning().grace_ns).hold_ns / 1e9

# TCP states (include/net/tcp_states.h)
ESTABLISHED, SYN_SENT, FIN_WAIT2, TIME_WAIT, CLOSE_WAIT, LISTEN = 1, 2, 5, 6, 8, 10


def _why_not_runnable() -> str | None:
    if os.geteuid() != 0:
        return "kernel tests need root"
    if importlib.util.find_spec("bcc") is None:
        return "kernel tests need bcc (python3-bpfcc)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    why = _why_not_runnable()
    for item in items:
        if "tests/kernel" in str(item.fspath):
            item.add_marker(pytest.mark.kernel)
            if why:
                item.add_marker(pytest.mark.skip(reason=why))


# ---------------------------------------------------------------------------- waiting
def wait_until(predicate: Callable[[], T], timeout: float = DEADLINE,
               what: str | Callable[[], str] = "the condition") -> T:
    """Poll predicate() until it returns something true, which is returned; past the
    deadline, an AssertionError naming what was awaited (a callable may describe the state)."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = predicate()
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            text = what() if callable(what) else what
            raise AssertionError(f"waited {timeout:g} s in vain for {text}")
        time.sleep(min(delay, left))
        delay = min(delay * 1.5, 0.05)


_MEMBARRIER_NR = {"x86_64": 324, "aarch64": 283, "arm64": 283, "riscv64": 283,
                  "loongarch64": 283, "i686": 375, "i386": 375, "armv7l": 389,
                  "ppc64le": 365, "ppc64": 365, "s390x": 356}
_libc = ctypes.CDLL(None, use_errno=True)


def sync_softirqs() -> None:
    """Return once every softirq and BPF program that was running anywhere has finished.

    membarrier(MEMBARRIER_CMD_GLOBAL) waits for an RCU grace period, and a CPU that is
    processing a packet (softirq) or running a BPF program is in an RCU read-side section.
    So once a kernel counter shows that a segment was handled, this makes sure that the
    rest of its handling (the tracepoint after the counter, the ring-buffer record) is done.
    """
    nr = _MEMBARRIER_NR.get(platform.machine())
    if nr is not None and _libc.syscall(nr, 1, 0, 0) == 0:
        return
    warnings.warn("membarrier(MEMBARRIER_CMD_GLOBAL) is unavailable: a barrier may race "
                  "with a packet being processed at this very moment", stacklevel=2)


# ---------------------------------------------------------------------------- the kernel
def delta(before: dict[str, int], after: dict[str, int], name: str) -> int:
    return after.get(name, 0) - before.get(name, 0)


def wait_counters(lab: Lab, ns: str, before: dict[str, int], at_least: dict[str, int],
                  timeout: float = DEADLINE) -> dict[str, int]:
    """Wait until each named counter of namespace ns has moved by at least that much since
    `before` (the kernel has handled the test's segments), then until the softirqs that
    moved them are over; the counters then. Tests assert exact values after their barrier."""
    now: dict[str, int] = {}

    def reached() -> bool:
        now.update(lab.counters(ns))
        return all(delta(before, now, k) >= n for k, n in at_least.items())

    wait_until(reached, timeout, lambda: f"{ns}: {at_least} (moved: "
               f"{ {k: delta(before, now, k) for k in at_least} })")
    sync_softirqs()
    return dict(now)


def tcp_state(s: socket.socket) -> int:
    """The socket's TCP state (tcpi_state)."""
    return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


def queued(listener: socket.socket) -> int:
    """Connections waiting in a listener's accept queue (tcpi_unacked of a listener)."""
    raw = listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
    return struct.unpack_from("I", raw, 24)[0]


def _address(text: str) -> tuple[str, int]:
    """An address of /proc/net/tcp{,6}: hex 32-bit words in host order, then the port."""
    addr, port = text.split(":")
    raw = bytes.fromhex(addr)
    if sys.byteorder == "little":
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(raw)
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), int(port, 16)


def tcp_sockets(ns: str) -> list[tuple[tuple[str, int], tuple[str, int], int]]:
    """Every TCP socket of a namespace, TIME-WAIT ones included: (local, remote, state)."""
    out = []
    for text in read_in_netns(f"/run/netns/{ns}", ["/proc/thread-self/net/tcp",
                                                   "/proc/thread-self/net/tcp6"]):
        for line in text.splitlines()[1:]:
            fields = line.split()
            out.append((_address(fields[1]), _address(fields[2]), int(fields[3], 16)))
    return out


def wait_closed(lab: Lab) -> None:
    """Wait until no TCP socket of the lab is left but listeners and TIME-WAIT: every
    connection the test closed has finished its closing handshake."""
    def left() -> list:
        return [s for ns in (lab.srv, lab.cli) for s in tcp_sockets(ns)
                if s[2] not in (LISTEN, TIME_WAIT)]

    wait_until(lambda: not left(), what=lambda: f"every connection closed (left: {left()})")


_SNMP = ["/proc/thread-self/net/snmp"]
SERVER_ADDRESSES = frozenset({SERVER4, SERVER6})
CLIENT_ADDRESSES = frozenset(CLIENTS4 + CLIENTS6)
PACKET_OUTGOING, SOL_PACKET, PACKET_STATISTICS = 4, 263, 6
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def in_segs(ns: str) -> int:
    """TCP segments the namespace's TCP has taken in (TcpInSegs, IPv4 and IPv6)."""
    return parse_netstat(read_in_netns(f"/run/netns/{ns}", _SNMP)[0])["TcpInSegs"]


def big_buffer(sock: socket.socket) -> None:
    """Room for every frame a test sniffs (a full receive buffer would drop some)."""
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)


class Link:
    """Both ends of a lab's veth, sniffed from the lab's creation on.

    wait_quiet() returns once every TCP segment either side put on the veth (to an address
    of the other side) has been taken in by the other side's TCP (its TcpInSegs), the
    softirqs that took them in are over, and nothing new was sent meanwhile: then no
    segment of the test is in flight. Segments that a timer will send later, or that wait
    in a neighbour queue, are not in flight yet: tests first wait for their own end state.
    """

    def __init__(self, lab: Lab) -> None:
        self._ends: list[tuple[socket.socket, str, frozenset[str]]] = []
        for ns, dev, peer_ns, local in ((lab.cli, "c0", lab.srv, SERVER_ADDRESSES),
                                        (lab.srv, "s0", lab.cli, CLIENT_ADDRESSES)):
            sock = lab.socket_in(ns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
            big_buffer(sock)
            sock.bind((dev, 0))
            sock.setblocking(False)
            self._ends.append((sock, peer_ns, local))
        self.sent = {lab.srv: 0, lab.cli: 0}
        self.base = {ns: in_segs(ns) for ns in self.sent}

    def _drain(self) -> None:
        for sock, peer_ns, local in self._ends:
            while True:
                try:
                    frame, addr = sock.recvfrom(65535)
                except BlockingIOError:
                    break
                seg = parse_frame(frame) if addr[2] == PACKET_OUTGOING else None
                if seg is not None and seg.dst in local:
                    self.sent[peer_ns] += 1
            drops = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))[1]
            assert drops == 0, f"the sniffer towards {peer_ns} lost {drops} frames"

    def taken_in(self) -> dict[str, int]:
        return {ns: in_segs(ns) - self.base[ns] for ns in self.sent}

    def wait_quiet(self, timeout: float = DEADLINE) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._drain()
            sent = dict(self.sent)
            wait_until(lambda s=sent: all(n >= s[ns] for ns, n in self.taken_in().items()),
                       max(deadline - time.monotonic(), 0.001),
                       lambda s=sent: f"the segments sent {s} taken in (now {self.taken_in()})")
            # Answers are sent while a segment is handled: once that is over, they are
            # on the sniffers, so a round that found nothing new means nothing is left.
            sync_softirqs()
            self._drain()
            if self.sent == sent:
                return

    def close(self) -> None:
        for sock, _, _ in self._ends:
            sock.close()


_LINKS: dict[str, Link] = {}


def link_of(lab: Lab) -> Link:
    return _LINKS[lab.srv]


# ---------------------------------------------------------------------------- the tracer
class Marker:
    """A refusal the suite can cause at will, in a lab of its own: a raw SYN (no socket,
    so nothing retransmits it) from MARKER_PEER, with a source port never used twice in a
    row, into a listener whose accept queue is full, i.e. one syn_drop event."""

    PEER = SPOOF4[3]
    PORT = 7999

    def __init__(self, lab: Lab) -> None:
        self.netns = lab.inode(lab.srv)
        self.wire = lab.client_wire()
        self._ports = itertools.cycle(range(1024, 32768))

    def send(self) -> int:
        """Send one marker SYN; its source port."""
        port = next(self._ports)
        self.wire.send(Segment(self.PEER, SERVER4, port, self.PORT, SYN,
                               seq=random.getrandbits(32), options=tcp_options(mss=1460)))
        self.wire.flush()
        return port


class Tracer:
    """The running `tracer watch --json` and what it printed so far."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[dict] = []
        self.bad: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                obj = json.loads(raw)
            except ValueError:
                self.bad.append(raw)
                continue
            with self._cond:
                self.lines.append(obj)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, kind: str, after: int, timeout: float) -> dict:
        """The first line of `kind` with index >= after."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[after:]:
                    if line.get("type") == kind:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None and not self._thread.is_alive():
                    raise AssertionError(f"tracer printed no {kind} line within {timeout} s")
                self._cond.wait(min(left, 0.2))

    def full_tally(self) -> dict[tuple[int, str, str], int]:
        """Every exact in-kernel count now (SIGUSR1), keyed by (netns, peer, kind)."""
        mark = len(self.lines)
        self.proc.send_signal(signal.SIGUSR1)
        line = self.wait_for("tally", mark, DEADLINE)
        return {(r["netns"], r["peer"], r["kind"]): r["count"] for r in line["rows"]}

    def _after_marker(self, after: int, marker: Marker, port: int) -> int | None:
        """The index just past the marker event with source port `port`, once printed."""
        assert self.proc.poll() is None, "the tracer exited"
        with self._cond:
            for i in range(after, len(self.lines)):
                e = self.lines[i]
                if (e.get("type") == "event" and e["netns"] == marker.netns
                        and e["peer_port"] == port and e["kind"] == "syn_drop"):
                    return i + 1
        return None

    def barrier(self, marker: Marker, hold: bool) -> int:
        """Make a marker refusal now and wait until the tracer printed it; the index of the
        next line. Every ring-buffer record made before the marker's is then printed too:
        the tracer reads the ring buffer in order, and the buffer hands out no record past
        one still being written. With `hold`, also the syn_drops the tracer held back for
        its grace window (they can come out after a later record), see below."""
        sync_softirqs()                     # records of segments already handled are made
        mark = len(self.lines)
        port = marker.send()
        self.full_tally()                   # wakes the tracer's poll: it reads the marker now
        end = wait_until(lambda: self._after_marker(mark, marker, port),
                         what=f"the marker refusal (port {port}) in the tracer's output")
        if hold:
            # A held record is older than the marker, so older than `seen`; the tracer
            # releases it at the first poll after its time + HOLD. Waiting out HOLD is not
            # ground truth but the tracer's documented delay: the first tally asked for
            # after it comes from a loop turn that began after it, and the poll of the next
            # turn, whose tally is the second, has released every such record.
            seen = time.monotonic()
            time.sleep(max(0.0, seen + HOLD - time.monotonic()))
            self.full_tally()
            self.full_tally()
        return end


class View:
    """What the tracer reported since one test began.

    Namespace inodes are recycled once a namespace is deleted, so a new test's netns may
    carry the inode of an earlier one: events are taken from a barrier at the test's start
    on (so none of the earlier test's can still be on their way), and tallies are
    differences from a snapshot taken then.
    """

    def __init__(self, tracer: Tracer, marker: Marker) -> None:
        self.tracer = tracer
        self.marker = marker
        self.mark = tracer.barrier(marker, hold=False)
        self.base = tracer.full_tally()

    def settle(self, lab: Lab | None = None) -> None:
        """The barrier before asserting: the lab's traffic is over (Link.wait_quiet), and
        every event the tracer will ever print for it is printed (Tracer.barrier)."""
        if lab is not None:
            link_of(lab).wait_quiet()
        self.tracer.barrier(self.marker, hold=True)

    def events(self, netns: int, kind: str | None = None) -> list[dict]:
        with self.tracer._cond:
            lines = self.tracer.lines[self.mark:]
        return [e for e in lines if e.get("type") == "event" and e["netns"] == netns
                and (kind is None or e["kind"] == kind)]

    def per_peer(self, netns: int, kind: str) -> dict[str, int]:
        return dict(Counter(e["peer"] for e in self.events(netns, kind)))

    def kinds(self, netns: int) -> set[str]:
        return {e["kind"] for e in self.events(netns)}

    def tally(self, netns: int) -> dict[tuple[str, str], int]:
        """Exact in-kernel counts of one namespace since the test began."""
        now = self.tracer.full_tally()
        out = {}
        for (ns, peer, kind), n in now.items():
            grown = n - self.base.get((ns, peer, kind), 0)
            if ns == netns and grown:
                out[(peer, kind)] = grown
        return out

    def tally_per_peer(self, netns: int, kind: str) -> dict[str, int]:
        return {peer: n for (peer, k), n in self.tally(netns).items() if k == kind}


# ---------------------------------------------------------------------------- fixtures
def _linked(lab: Lab) -> Link:
    link = Link(lab)
    _LINKS[lab.srv] = link
    return link


def _unlink(lab: Lab) -> None:
    link = _LINKS.pop(lab.srv, None)
    if link is not None:
        link.close()


@pytest.fixture(scope="session")
def old_listener() -> object:
    """A lab whose listener (backlog 2) exists before the tracer starts."""
    if _why_not_runnable():
        pytest.skip(_why_not_runnable())
    remove_stale(PREFIX)
    lab = Lab("old", prefix=PREFIX)
    lab.__enter__()
    try:
        _linked(lab)
        listener = lab.socket_in(lab.srv)
        listener.bind((SERVER4, 7000))
        listener.listen(2)
        yield lab, listener
        listener.close()
    finally:
        _unlink(lab)
        lab.teardown()


@pytest.fixture(scope="session")
def tracer_process(old_listener: object) -> Tracer:
    """The session's tracer, started after `old_listener` exists."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tracer", "watch", "--json", "--max-events-per-second", "0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    t = Tracer(proc)
    try:
        first = t.wait_for("session", 0, STARTUP)
        assert t.lines[0] is first, "the first line must be the session line"
        yield t
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    stderr = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == 0, f"tracer exited {proc.returncode}: {stderr}"
    assert not t.bad, f"tracer printed non-JSON lines: {t.bad[:3]}"
    assert [x["type"] for x in t.lines[-2:]] == ["tally", "end"], "must end with tally, end"


@pytest.fixture(scope="session")
def marker(tracer_process: Tracer) -> Marker:
    """The session's marker lab: a listener (backlog 1) whose accept queue is full."""
    with Lab("marker", prefix=PREFIX) as lab:
        listener = lab.socket_in(lab.srv)
        listener.bind((SERVER4, Marker.PORT))
        listener.listen(1)
        fill = fill_accept_queue(lab, SERVER4, Marker.PORT, 2, listener)
        m = Marker(lab)
        try:
            yield m
        finally:
            m.wire.close()
            close_all(fill + [listener])


@pytest.fixture
def tracer(tracer_process: Tracer, marker: Marker) -> View:
    """The session's tracer, seen from the start of this test."""
    return View(tracer_process, marker)


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Lab:
    """A fresh pair of namespaces for one test, removed afterwards even on failure."""
    tag = "".join(c for c in request.node.name if c.isalnum())[-20:] or "t"
    with Lab(tag, prefix=PREFIX) as lab:
        _linked(lab)
        try:
            yield lab
        finally:
            _unlink(lab)


# ---------------------------------------------------------------------------- traffic
def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


def connect_nb(lab: Lab, src: str, dst: str, port: int) -> socket.socket:
    """A non-blocking connect from src in the client namespace; returns the socket."""
    family = socket.AF_INET6 if ":" in src else socket.AF_INET
    s = lab.socket_in(lab.cli, family)
    s.setblocking(False)
    s.bind((src, 0))
    s.connect_ex((dst, port))
    return s


def fill_accept_queue(lab: Lab, dst: str, port: int, n: int,
                      listener: socket.socket) -> list[socket.socket]:
    """n completed connections nobody accepts (n = backlog + 1 fills the queue); returns
    once the listener has queued all n (a client's connect() ends before the server has
    taken its last ACK in)."""
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    out = []
    for _ in range(n):
        s = lab.socket_in(lab.cli, family)
        s.settimeout(DEADLINE)
        s.connect((dst, port))
        out.append(s)
    wait_until(lambda: queued(listener) == n, what=f"{n} connections queued on port {port}")
    return out


def send_syns(lab: Lab, dst: str, port: int, per_ip: dict[str, int],
              first_port: int = 20000) -> int:
    """per_ip[ip] raw SYNs from each source address, from the client side; how many.

    Source ports count up from first_port, below the ephemeral range, so that no SYN
    belongs to a connection of a real socket. No socket sent them, so none is ever
    retransmitted: the number of SYNs does not depend on how fast the machine is."""
    wire = lab.client_wire()
    sport = first_port
    try:
        for ip, k in per_ip.items():
            for _ in range(k):
                wire.send(Segment(ip, dst, sport, port, SYN, seq=random.getrandbits(32),
                                  options=tcp_options(mss=1460)))
                sport += 1
    finally:
        wire.close()
    return sport - first_port


def accept_queue_drops(lab: Lab, port: int, per_ip: dict[str, int]) -> None:
    """docs/TESTING.md's sequential recipe: a full backlog-2 listener, then per_ip[ip] SYNs
    from each client address (send_syns), every one dropped; returns once the kernel has
    counted every drop (ListenDrops) and handled every SYN."""
    listener = lab.socket_in(lab.srv)
    listener.bind((SERVER4, port))
    listener.listen(2)
    fill = fill_accept_queue(lab, SERVER4, port, 3, listener)
    before = lab.counters(lab.srv)
    n = send_syns(lab, SERVER4, port, per_ip)
    wait_counters(lab, lab.srv, before, {"ListenDrops": n})
    close_all(fill + [listener])


def read_line(stream: IO[str], timeout: float = DEADLINE) -> str:
    """The next line of a child's output (bounded: a hung child fails the test)."""
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not got:
        raise AssertionError(f"no line within {timeout:g} s")
    return got[0]
