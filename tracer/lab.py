"""A private two-host network in namespaces, for `tracer demo` and the kernel tests.

    <prefix>-<pid>-<tag>-srv   veth s0   10.213.0.1/24  fd00:213::1/64        (listeners)
    <prefix>-<pid>-<tag>-cli   veth c0   client addresses, IPv4 and IPv6        (clients)

The veth is created inside the server namespace with its peer moved straight into the
client one, so the root namespace never holds a test interface. Neighbour entries are
permanent both ways (no ARP/ND in the data path unless a test removes them), and replies
to the spoofed ranges 10.213.9.0/24 and fd00:213:9::/64 are routed into the client
namespace, which drops them silently. Names carry the creating pid: `remove_stale()`
deletes only leftovers of dead processes, never namespaces someone else made.

Everything is set up through netlink (pyroute2) and /proc/sys, with no `ip` program: the
netlink sockets come from a short-lived child that pyroute2 forks into the namespace, and
sysctl writes and the sockets of `socket_in()` from one helper thread that enters the
namespace for each call and returns home, so the calling thread never changes namespace.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

from pyroute2 import IPRoute
from pyroute2 import netns as named_netns
from pyroute2.netlink.exceptions import NetlinkError

from tracer.kernel.counters import read_counters
from tracer.packets import Wire

NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
IFA_F_NODAD = 0x02            # an IPv6 address usable at once, without duplicate detection
RT_SCOPE_LINK = 253           # a route to a directly attached host (`ip route add X dev D`)
RTPROT_BOOT = 3               # the origin `ip route add` gives a route
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80

SERVER4 = "10.213.0.1"
SERVER6 = "fd00:213::1"
CLIENTS4 = ("10.213.0.11", "10.213.0.12", "10.213.0.13", "10.213.0.14")
CLIENTS6 = ("fd00:213::11", "fd00:213::12", "fd00:213::13", "fd00:213::14")
SPOOF4 = ("10.213.9.1", "10.213.9.2", "10.213.9.3", "10.213.9.4")
SPOOF6 = ("fd00:213:9::1", "fd00:213:9::2", "fd00:213:9::3", "fd00:213:9::4")

_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def run(*cmd: str, ns: str | None = None, check: bool = True) -> str:
    """Run a program (in namespace ns), bounded in time; its stdout. Lab set-up never does."""
    argv = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {r.stderr.strip()}")
    return r.stdout


def remove_netns(name: str) -> None:
    """Delete the named namespace as `ip netns del` does (unmount, unlink); absent is fine."""
    try:
        named_netns.remove(name)
    except FileNotFoundError:
        pass


def remove_stale(prefix: str) -> None:
    """Delete <prefix>-<pid>-... namespaces whose creating process is gone."""
    pattern = re.compile(rf"^{re.escape(prefix)}-(\d+)-[A-Za-z0-9-]+-(srv|cli)$")
    try:
        names = os.listdir(NETNS_DIR)
    except OSError:
        return
    for name in names:
        m = pattern.match(name)
        if not m:
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            try:
                remove_netns(name)
            except OSError:
                pass                     # best effort: the next start tries again
        except PermissionError:
            pass


def _setns(fd: int) -> None:
    """Move the calling thread into the network namespace fd opens."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


class _NamespaceCaller:
    """Runs short calls inside a named namespace on one helper thread, which returns home.

    A thread per call would also keep the caller's thread home, but costs about five times
    more per socket; between calls the helper holds no namespace but its own, so a deleted
    lab namespace is never kept alive by it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._home = -1              # fd of the helper's own namespace, opened by the helper
        self._home_inode = 0

    def call(self, ns: str, fn: Callable[[], T]) -> T:
        """fn() run inside namespace ns; its result, or its exception, in the caller."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="lab-netns",
                                                    initializer=self._open_home)
            executor = self._executor
        return executor.submit(self._run_in, os.path.join(NETNS_DIR, ns), fn).result()

    def _open_home(self) -> None:
        self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        self._home_inode = os.fstat(self._home).st_ino

    def _run_in(self, path: str, fn: Callable[[], T]) -> T:
        if os.stat("/proc/thread-self/ns/net").st_ino != self._home_inode:
            raise RuntimeError("the lab's namespace helper thread could not return home")
        there = os.open(path, os.O_RDONLY)
        try:
            _setns(there)
        finally:
            os.close(there)
        try:
            return fn()
        finally:
            _setns(self._home)


_in_netns = _NamespaceCaller()


@contextmanager
def _rtnl(ns: str) -> Iterator[IPRoute]:
    """A netlink (rtnetlink) connection inside namespace ns, which must exist already."""
    with IPRoute(netns=ns, flags=0) as ipr:
        yield ipr


def _index(ipr: IPRoute, ifname: str) -> int:
    """Interface index of ifname in the namespace ipr talks to."""
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise RuntimeError(f"no interface {ifname} in {ipr.status.get('netns')}")
    return found[0]


def _link_attr(ipr: IPRoute, index: int, name: str) -> str | None:
    """One attribute (IFLA_ADDRESS, IFLA_OPERSTATE, ...) of interface index."""
    return ipr.link("get", index=index)[0].get(name)


def _add_route(ipr: IPRoute, dst: str, oif: int, gateway: str | None = None) -> None:
    """A route as `ip route add DST [via GATEWAY] dev OIF` makes it (scope link without via)."""
    if gateway is None:
        ipr.route("add", dst=dst, oif=oif, scope=RT_SCOPE_LINK, proto=RTPROT_BOOT)
    else:
        ipr.route("add", dst=dst, oif=oif, gateway=gateway, proto=RTPROT_BOOT)


def _set_neighbour(ipr: IPRoute, index: int, ip: str, lladdr: str) -> None:
    """Permanent neighbour entry ip -> lladdr on interface index (`ip neigh replace`)."""
    ipr.neigh("replace", dst=ip, lladdr=lladdr, ifindex=index, state=NUD_PERMANENT)


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
        """Both namespaces, the veth between them, addresses, routes, neighbours; waits for up."""
        named_netns.create(self.srv)
        named_netns.create(self.cli)
        with _rtnl(self.srv) as srv, _rtnl(self.cli) as cli:
            srv.link("add", ifname="s0", kind="veth",
                     peer={"ifname": "c0", "net_ns_fd": os.path.join(NETNS_DIR, self.cli)})
            s0, c0 = _index(srv, "s0"), _index(cli, "c0")
            srv.addr("add", index=s0, address=SERVER4, prefixlen=24)
            srv.addr("add", index=s0, address=SERVER6, prefixlen=64, flags=IFA_F_NODAD)
            for ip in self.clients4:
                cli.addr("add", index=c0, address=ip,
                         prefixlen=24 if ip.startswith("10.213.0.") else 32)
            for ip in self.clients6:
                cli.addr("add", index=c0, address=ip, prefixlen=64, flags=IFA_F_NODAD)
            for ipr, dev in ((srv, s0), (cli, c0)):
                ipr.link("set", index=_index(ipr, "lo"), state="up")
                ipr.link("set", index=dev, state="up")
            self.smac = _link_attr(srv, s0, "IFLA_ADDRESS")
            self.cmac = _link_attr(cli, c0, "IFLA_ADDRESS")
            _add_route(srv, "10.213.9.0/24", s0, gateway=CLIENTS4[0])
            _add_route(srv, "fd00:213:9::/64", s0, gateway=CLIENTS6[0])
            for ip in self.clients4:
                if not ip.startswith("10.213.0."):
                    _add_route(srv, f"{ip}/32", s0)
            _add_route(cli, "0.0.0.0/0", c0)
            self._add_neighbours(srv, s0, cli, c0)
            for _ in range(50):
                if _link_attr(srv, s0, "IFLA_OPERSTATE") == _link_attr(
                        cli, c0, "IFLA_OPERSTATE") == "UP":
                    break
                time.sleep(0.05)

    def _add_neighbours(self, srv: IPRoute, s0: int, cli: IPRoute, c0: int) -> None:
        """Every client address on the server side, the server's on the client side."""
        for ip in (*self.clients4, *self.clients6):
            _set_neighbour(srv, s0, ip, self.cmac)
        for ip in (SERVER4, SERVER6):
            _set_neighbour(cli, c0, ip, self.smac)

    def add_neighbour(self, ns: str, ip: str, lladdr: str) -> None:
        """A permanent neighbour entry ip -> lladdr on the lab interface of ns (s0 or c0)."""
        with _rtnl(ns) as ipr:
            _set_neighbour(ipr, _index(ipr, "s0" if ns == self.srv else "c0"), ip, lladdr)

    def flush_server_neighbours(self) -> None:
        """Forget the clients' link addresses: the next SYN-ACK to each waits for ARP/ND."""
        with _rtnl(self.srv) as srv:
            s0 = _index(srv, "s0")
            known = [entry.get("NDA_DST") for entry in srv.neigh("dump", ifindex=s0)
                     if not entry["state"] & NUD_NOARP]
            for ip in dict.fromkeys([*known, *self.clients4, *self.clients6]):
                try:
                    srv.neigh("del", dst=ip, ifindex=s0)
                except NetlinkError as e:
                    if e.code != errno.ENOENT:
                        raise

    def teardown(self) -> None:
        """Remove both namespaces (whichever exist); the veth pair goes with them."""
        failures: list[OSError] = []
        for ns in (self.srv, self.cli):
            try:
                remove_netns(ns)
            except OSError as e:
                failures.append(e)
        if failures:
            raise failures[0]

    # ------------------------------------------------------------------ queries
    @staticmethod
    def inode(ns: str) -> int:
        """The namespace's inode, as the tracer reports it (net->ns.inum)."""
        return os.stat(os.path.join(NETNS_DIR, ns)).st_ino

    @staticmethod
    def sysctl(ns: str, key: str, value: str) -> None:
        """Set a sysctl (net.ipv4.tcp_rfc1337, ...) inside ns through its /proc/sys."""
        path = "/proc/sys/" + (key if "/" in key else key.replace(".", "/"))

        def write() -> None:
            with open(path, "w") as f:
                f.write(value)

        _in_netns.call(ns, write)

    @staticmethod
    def counters(ns: str) -> dict[str, int]:
        """Absolute TcpExt counters of a namespace (bare names: ListenDrops, ...)."""
        return read_counters(os.path.join(NETNS_DIR, ns))

    # ------------------------------------------------------------------ sockets
    @staticmethod
    def socket_in(ns: str, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM,
                  proto: int = 0) -> socket.socket:
        """A socket living in namespace ns (made there by the helper thread, not this one)."""
        return _in_netns.call(ns, lambda: socket.socket(family, type, proto))

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
