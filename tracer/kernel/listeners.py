"""Listening TCP sockets with their accept queues, from inet_diag (pyroute2), and the
processes that own them.

For a listener, inet_diag's rqueue is the accept queue now (sk_ack_backlog) and wqueue its
limit (sk_max_ack_backlog): the kernel drops a SYN or final ACK when rqueue > wqueue
(sk_acceptq_is_full), which is what `ss -lnt` shows as Recv-Q / Send-Q.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tracer.errors import TracerError
from tracer.kernel.netns import call_in_netns

TCP_LISTEN = 10


@dataclass(frozen=True)
class Owner:
    """A process holding a socket."""

    pid: int
    command: str


@dataclass(frozen=True)
class ListenerQueue:
    """One listening socket and its accept queue at one moment."""

    family: int          # 4 or 6
    address: str
    port: int
    queued: int          # connections waiting for accept()
    backlog: int         # listen() backlog, capped by somaxconn
    inode: int
    owner: Owner | None = None

    @property
    def endpoint(self) -> str:
        host = f"[{self.address}]" if self.family == 6 else self.address
        return f"{host}:{self.port}"

    @property
    def full(self) -> bool:
        """The kernel's own test (sk_acceptq_is_full): one more connection is refused."""
        return self.queued > self.backlog

    def to_json(self) -> dict:
        return {"family": self.family, "address": self.address, "port": self.port,
                "queued": self.queued, "backlog": self.backlog, "full": self.full,
                "pid": self.owner.pid if self.owner else None,
                "command": self.owner.command if self.owner else None}


def _diag_listeners() -> list[ListenerQueue]:
    """Listening TCP sockets of the calling thread's namespace, by inet_diag."""
    from pyroute2 import DiagSocket

    out: list[ListenerQueue] = []
    with DiagSocket() as ds:
        ds.bind()
        for family, af in ((4, socket.AF_INET), (6, socket.AF_INET6)):
            for msg in ds.get_sock_stats(family=af, states=1 << TCP_LISTEN):
                out.append(ListenerQueue(
                    family=family, address=msg["idiag_src"], port=msg["idiag_sport"],
                    queued=msg["idiag_rqueue"], backlog=msg["idiag_wqueue"],
                    inode=msg["idiag_inode"]))
    return out


def read_listeners(ns_path: str) -> list[ListenerQueue]:
    """Every listening TCP socket in the namespace ns_path opens, without owners."""
    try:
        return call_in_netns(ns_path, _diag_listeners)
    except OSError as e:
        raise TracerError(f"cannot list listening sockets through inet_diag ({e})",
                          "run as root on a kernel with inet_diag (CONFIG_INET_DIAG)") from e


def socket_owners(inodes: Iterable[int], proc: str = "/proc") -> dict[int, Owner]:
    """Socket inode -> the first process (lowest pid) with a descriptor on it, as `ss -p`
    finds them: by the socket:[inode] links in /proc/PID/fd."""
    wanted = {f"socket:[{i}]": i for i in inodes}
    out: dict[int, Owner] = {}
    if not wanted:
        return out
    try:
        pids = sorted(int(p) for p in os.listdir(proc) if p.isdigit())
    except OSError:
        return out
    for pid in pids:
        fd_dir = os.path.join(proc, str(pid), "fd")
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue                              # gone, or a kernel thread
        for fd in fds:
            try:
                inode = wanted.get(os.readlink(os.path.join(fd_dir, fd)))
            except OSError:
                continue
            if inode is not None and inode not in out:
                out[inode] = Owner(pid, _command(proc, pid))
        if len(out) == len(wanted):
            break
    return out


def _command(proc: str, pid: int) -> str:
    try:
        with open(os.path.join(proc, str(pid), "comm")) as f:
            return f.read().strip()
    except OSError:
        return "?"


def with_owners(listeners: list[ListenerQueue],
                owners: Callable[[Iterable[int]], dict[int, Owner]] = socket_owners
                ) -> list[ListenerQueue]:
    """The same listeners, each with its owning process where one is found."""
    found = owners(ln.inode for ln in listeners if ln.inode)
    return [ListenerQueue(ln.family, ln.address, ln.port, ln.queued, ln.backlog, ln.inode,
                          found.get(ln.inode)) for ln in listeners]
