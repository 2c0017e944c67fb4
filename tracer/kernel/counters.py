"""Kernel TCP counters per network namespace, and how much they moved since the start.

The tracer reports these beside its own counts so the operator can see that every refusal
the kernel counted was attributed (e.g. ListenDrops = syn_drop + ack_drop).
"""

from __future__ import annotations

from collections.abc import Callable

from tracer.kernel.netns import list_namespaces, read_in_netns
from tracer.model import CounterDelta

# The counters that describe refusals (names as in /proc/net/netstat, TcpExt section).
REFUSAL_COUNTERS: tuple[str, ...] = (
    "ListenDrops", "ListenOverflows", "TCPReqQFullDrop", "TCPReqQFullDoCookies",
    "SyncookiesSent", "SyncookiesRecv", "SyncookiesFailed", "TCPSynRetrans",
    "TWRecycled", "PAWSTimewait", "PAWSEstab", "PAWSOldAck", "PAWSActive",
    "TCPACKSkippedPAWS", "TCPACKSkippedTimeWait", "TW", "TWKilled", "TSEcrRejected",
    "TCPTimeWaitOverflow",
)

NETSTAT_FILES = ["/proc/thread-self/net/netstat", "/proc/thread-self/net/snmp"]


def parse_netstat(text: str) -> dict[str, int]:
    """Counters of /proc/net/netstat or /proc/net/snmp text.

    Lines come in pairs (names, values) per section. TcpExt names are kept bare
    (ListenDrops); other sections are prefixed by the section name (TcpActiveOpens).
    """
    out: dict[str, int] = {}
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if not names or not values or names[0] != values[0]:
            continue
        section = names[0].rstrip(":")
        prefix = "" if section == "TcpExt" else section
        for name, value in zip(names[1:], values[1:], strict=False):
            try:
                out[prefix + name] = int(value)
            except ValueError:
                continue
    return out


def read_counters(ns_path: str) -> dict[str, int]:
    """All counters of the namespace that ns_path opens."""
    out: dict[str, int] = {}
    for text in read_in_netns(ns_path, NETSTAT_FILES):
        out.update(parse_netstat(text))
    return out


class CounterTracker:
    """Baselines at start, current values of the namespaces refusals were seen in."""

    def __init__(self, names: tuple[str, ...] = REFUSAL_COUNTERS,
                 lister: Callable[[], dict[int, str]] = list_namespaces,
                 reader: Callable[[str], dict[str, int]] = read_counters) -> None:
        self.names = names
        self._lister = lister
        self._reader = reader
        self._paths: dict[int, str] = {}
        self._baseline: dict[int, dict[str, int]] = {}
        self._current: dict[int, dict[str, int]] = {}
        self._watched: list[int] = []

    def _read(self, inode: int) -> dict[str, int] | None:
        path = self._paths.get(inode)
        if path is None:
            return None
        try:
            values = self._reader(path)
        except OSError:
            return None
        return {k: v for k, v in values.items() if k in self.names}

    def start(self) -> None:
        """Snapshot every namespace findable now (a later one was created after start)."""
        self._paths = self._lister()
        for inode in self._paths:
            values = self._read(inode)
            if values is not None:
                self._baseline[inode] = values

    def watch(self, inode: int) -> None:
        """Report this namespace's counters from now on."""
        if inode in self._watched:
            return
        self._watched.append(inode)
        if inode not in self._paths:
            self._paths.update(self._lister())
        self._baseline.setdefault(inode, {})     # created after start: counted from zero

    @property
    def watched(self) -> list[int]:
        return list(self._watched)

    def refresh(self) -> None:
        """Re-read the watched namespaces; one that is gone keeps its last values."""
        for inode in self._watched:
            values = self._read(inode)
            if values is not None:
                self._current[inode] = values

    def deltas(self) -> list[CounterDelta]:
        out = []
        for inode in sorted(self._watched):
            now = self._current.get(inode)
            if now is None:
                continue
            base = self._baseline.get(inode, {})
            for name in sorted(now):
                out.append(CounterDelta(inode, name, now[name] - base.get(name, 0)))
        return out
