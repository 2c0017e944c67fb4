"""A private two-host network in namespaces, for `tracer demo` and the kernel tests.

    <prefix>-<pid>-<tag>-srv   veth s0   10.213.0.1/24  fd00:213::1/64        (listeners)
    <prefix>-<pid>-<tag>-cli   veth c0   client addresses, IPv4 and IPv6        (clients)

The veth is created inside the server namespace with its peer moved straight into the
client one, so the root namespace never holds a test interface. Neighbour entries are
permanent both ways (no ARP/ND in the data path unless a test removes them), and replies
to the spoofed ranges 10.213.9.0/24 and fd00:213:9::/64 are routed into the client
namespace, which drops them silently. Names carry the creating pid: `remove_stale()`
deletes only leftovers of dead processes, never namespaces someone else made.
"""

from __future__ import annotations

import ctypes
import os
import re
import socket
import subprocess
import time

from tracer.kernel.counters import read_counters
from tracer.packets import Wire

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

SERVER4 = "10.213.0.1"
SERVER6 = "fd00:213::1"
CLIENTS4 = ("10.213.0.11", "10.213.0.12", "10.213.0.13", "10.213.0.14")
CLIENTS6 = ("fd00:213::11", "fd00:213::12", "fd00:213::13", "fd00:213::14")
SPOOF4 = ("10.213.9.1", "10.213.9.2", "10.213.9.3", "10.213.9.4")
SPOOF6 = ("fd00:213:9::1", "fd00:213:9::2", "fd00:213:9::3", "fd00:213:9::4")


def run(*cmd: str, ns: str | None = None, check: bool = True) -> str:
    """Run a command (in namespace ns), bounded in time; its stdout."""
    argv = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {r.stderr.strip()}")
    return r.stdout


def remove_stale(prefix: str) -> None:
    """Delete <prefix>-<pid>-... namespaces whose creating process is gone."""
    pattern = re.compile(rf"^{re.escape(prefix)}-(\d+)-[A-Za-z0-9-]+-(srv|cli)$")
    try:
        names = os.listdir("/run/netns")
    except OSError:
        return
    for name in names:
        m = pattern.match(name)
        if not m:
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            run("ip", "netns", "del", name, check=False)
        except PermissionError:
            pass


class Lab:
    """Server and client namespaces; a context manager that always removes them."""

    def __init__(self, tag: str, prefix: str = "rt", clients4: tuple[str, ...] = CLIENTS4,
                 clients6: tuple[str, ...] = CLIENTS6) -> None:
        if not re.fullmatch(r"[A-Za-z0-9-]+", tag):
            raise ValueError(f"bad lab tag {tag!r}")
        base = f"{prefix}-{os.getpid()}-{tag}"
        self.srv, self.cli = f"{base}-srv", f"{base}-cli"
        self.clients4, self.clients6 = clients4, clients6
        self.smac = self.cmac = ""

    def __enter__(self) -> Lab:
        self.teardown()
        try:
            self._build()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def _build(self) -> None:
        run("ip", "netns", "add", self.srv)
        run("ip", "netns", "add", self.cli)
        run("ip", "link", "add", "s0", "type", "veth", "peer", "name", "c0", "netns", self.cli,
            ns=self.srv)
        run("ip", "addr", "add", f"{SERVER4}/24", "dev", "s0", ns=self.srv)
        run("ip", "-6", "addr", "add", f"{SERVER6}/64", "dev", "s0", "nodad", ns=self.srv)
        for ip in self.clients4:
            run("ip", "addr", "add", f"{ip}/24" if ip.startswith("10.213.0.") else f"{ip}/32",
                "dev", "c0", ns=self.cli)
        for ip in self.clients6:
            run("ip", "-6", "addr", "add", f"{ip}/64", "dev", "c0", "nodad", ns=self.cli)
        for ns, dev in ((self.srv, "s0"), (self.cli, "c0")):
            run("ip", "link", "set", "lo", "up", ns=ns)
            run("ip", "link", "set", dev, "up", ns=ns)
        self.smac = run("cat", "/sys/class/net/s0/address", ns=self.srv).strip()
        self.cmac = run("cat", "/sys/class/net/c0/address", ns=self.cli).strip()
        run("ip", "route", "add", "10.213.9.0/24", "via", CLIENTS4[0], "dev", "s0", ns=self.srv)
        run("ip", "-6", "route", "add", "fd00:213:9::/64", "via", CLIENTS6[0], "dev", "s0",
            ns=self.srv)
        for ip in self.clients4:
            if not ip.startswith("10.213.0."):
                run("ip", "route", "add", f"{ip}/32", "dev", "s0", ns=self.srv)
        run("ip", "route", "add", "default", "dev", "c0", ns=self.cli)
        self.add_neighbours()
        for _ in range(50):
            a = run("cat", "/sys/class/net/s0/operstate", ns=self.srv).strip()
            b = run("cat", "/sys/class/net/c0/operstate", ns=self.cli).strip()
            if a == b == "up":
                break
            time.sleep(0.05)

    def add_neighbours(self) -> None:
        """Permanent neighbour entries both ways: SYN-ACKs never wait for ARP/ND."""
        for ip in (*self.clients4, *self.clients6):
            run("ip", "neigh", "replace", ip, "lladdr", self.cmac, "dev", "s0", "nud",
                "permanent", ns=self.srv)
        for ip in (SERVER4, SERVER6):
            run("ip", "neigh", "replace", ip, "lladdr", self.smac, "dev", "c0", "nud",
                "permanent", ns=self.cli)

    def flush_server_neighbours(self) -> None:
        """Forget the clients' link addresses: the next SYN-ACK to each waits for ARP/ND."""
        run("ip", "neigh", "flush", "dev", "s0", "nud", "all", ns=self.srv, check=False)
        for ip in (*self.clients4, *self.clients6):
            run("ip", "neigh", "del", ip, "dev", "s0", ns=self.srv, check=False)

    def teardown(self) -> None:
        for ns in (self.srv, self.cli):
            if os.path.exists(f"/run/netns/{ns}"):
                run("ip", "netns", "del", ns, check=False)

    # ------------------------------------------------------------------ queries
    @staticmethod
    def inode(ns: str) -> int:
        return os.stat(f"/run/netns/{ns}").st_ino

    @staticmethod
    def sysctl(ns: str, key: str, value: str) -> None:
        run("sysctl", "-q", "-w", f"{key}={value}", ns=ns)

    @staticmethod
    def counters(ns: str) -> dict[str, int]:
        """Absolute TcpExt counters of a namespace (bare names: ListenDrops, ...)."""
        return read_counters(f"/run/netns/{ns}")

    # ------------------------------------------------------------------ sockets
    @staticmethod
    def socket_in(ns: str, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM,
                  proto: int = 0) -> socket.socket:
        """A socket living in namespace ns (created there; setns on this thread and back)."""
        here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        there = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if _libc.setns(there, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            try:
                return socket.socket(family, type, proto)
            finally:
                if _libc.setns(here, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns back")
        finally:
            os.close(here)
            os.close(there)

    def client_wire(self) -> Wire:
        """Frames sent from the client side to the server, and what comes back."""
        sock = self.socket_in(self.cli, socket.AF_PACKET, socket.SOCK_RAW,
                              socket.htons(0x0003))
        return Wire(sock, "c0", self.cmac, self.smac)

    def server_wire(self) -> Wire:
        """Frames sent from the server side to the clients, and what comes in there."""
        sock = self.socket_in(self.srv, socket.AF_PACKET, socket.SOCK_RAW,
                              socket.htons(0x0003))
        return Wire(sock, "s0", self.smac, self.cmac)
