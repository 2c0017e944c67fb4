"""Network namespaces by inode: finding them, naming them, and reading files inside them.

The tracer sees every namespace at once and identifies each by its inode (net->ns.inum,
what `stat -L -c %i /run/netns/NAME` prints). Nothing here keeps a namespace fd open:
that would keep a deleted namespace alive.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections.abc import Callable
from typing import TypeVar

from tracer.errors import UsageError

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def names_by_inode(netns_dir: str | None = None) -> dict[int, str]:
    """Inode -> name of the namespaces named in /run/netns (as `ip netns` shows them)."""
    netns_dir = netns_dir or NETNS_DIR
    out: dict[int, str] = {}
    try:
        names = sorted(os.listdir(netns_dir))
    except OSError:
        return out
    for name in names:
        try:
            out.setdefault(os.stat(os.path.join(netns_dir, name)).st_ino, name)
        except OSError:
            continue
    return out


def list_namespaces(netns_dir: str | None = None, proc: str = "/proc") -> dict[int, str]:
    """Inode -> a path that opens it, for every namespace findable now (stat only)."""
    netns_dir = netns_dir or NETNS_DIR
    out = {ino: os.path.join(netns_dir, name) for ino, name in names_by_inode(netns_dir).items()}
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        pids = []
    for pid in ["self", *pids]:
        path = os.path.join(proc, pid, "ns", "net")
        try:
            out.setdefault(os.stat(path).st_ino, path)
        except OSError:
            continue
    return out


def resolve_netns(spec: str, netns_dir: str | None = None) -> int:
    """The inode meant by `--netns INODE|NAME`."""
    netns_dir = netns_dir or NETNS_DIR
    text = spec.strip()
    if text.isdigit():
        inode = int(text)
        if inode <= 0:
            raise UsageError(f"--netns {spec!r} is not a namespace inode",
                             "pass a positive inode (stat -L -c %i /proc/PID/ns/net) or a name")
        return inode
    path = os.path.join(netns_dir, text)
    if "/" in text or not os.path.exists(path):
        raise UsageError(f"unknown network namespace {spec!r}",
                         "list them with `ip netns list`, or pass an inode "
                         "(stat -L -c %i /proc/PID/ns/net)")
    return os.stat(path).st_ino


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def call_in_netns(ns_path: str, fn: Callable[[], T], inode: int | None = None) -> T:
    """fn() run inside the namespace ns_path opens: its /proc/sys/net and /proc/thread-self/
    net files, and sockets it creates, are that namespace's.

    setns() switches only the calling thread, so a short-lived thread does the work and
    the caller's thread never changes namespace. With `inode`, a path that no longer opens
    that namespace (a /proc/PID whose process died and whose pid was reused) raises
    ESTALE instead of reading another namespace.
    """
    try:
        here = os.stat("/proc/thread-self/ns/net").st_ino
        if os.stat(ns_path).st_ino == here and inode in (None, here):
            return fn()                      # already there (and setns would need root)
    except OSError:
        pass
    result: list[T] = []
    error: list[BaseException] = []

    def worker() -> None:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            there = os.open(ns_path, os.O_RDONLY)
            try:
                if inode is not None and os.fstat(there).st_ino != inode:
                    raise OSError(errno.ESTALE, f"{ns_path} no longer opens namespace {inode}")
                _setns(there)
                try:
                    result.append(fn())
                finally:
                    _setns(home)
            finally:
                os.close(there)
        except BaseException as e:  # handed to the caller's thread
            error.append(e)
        finally:
            os.close(home)

    thread = threading.Thread(target=worker, name="netns-worker")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def read_in_netns(ns_path: str, files: list[str], inode: int | None = None) -> list[str]:
    """Read small proc files (e.g. /proc/thread-self/net/netstat) as seen inside ns_path
    (which must still open namespace `inode`, when given)."""
    def read_all() -> list[str]:
        out = []
        for name in files:
            with open(name) as f:
                out.append(f.read())
        return out

    return call_in_netns(ns_path, read_all, inode)


def netns_path(inode: int | None) -> str:
    """A path that opens namespace `inode` (this process's own when None)."""
    if inode is None:
        return "/proc/self/ns/net"
    path = list_namespaces().get(inode)
    if path is None:
        raise UsageError(f"no network namespace with inode {inode} is reachable",
                         "list them with `ip netns list` or `lsns -t net`")
    return path
