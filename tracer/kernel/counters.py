"""Kernel TCP counters per network namespace, and how much they moved since the start.

The tracer reports these beside its own counts so the operator can see that every refusal
the kernel counted was attributed (e.g. ListenDrops = syn_drop + ack_drop).
"""

from __future__ import annotations

from collections.abc import Callable

from tracer.kernel.netns import list_namespaces, read_in_netns
from tracer.kinds import Kind
from tracer.model import CounterDelta

# The counters that describe refusals (names as in /proc/net/netstat, TcpExt section), each
# with what it counts; which kinds each one counts is declared with the kinds (tracer.kinds).
COUNTER_MEANINGS: dict[str, str] = {
    "ListenOverflows": "SYNs/ACKs dropped: accept queue full",
    "ListenDrops": "every SYN/ACK a listener dropped",
    "TCPReqQFullDrop": "SYNs dropped: SYN queue full, no cookies",
    "TCPReqQFullDoCookies": "SYNs answered with a cookie because the SYN queue was full",
    "SyncookiesSent": "SYNs answered with a cookie (SYN queue full)",
    "SyncookiesRecv": "ACKs carrying a valid SYN cookie",
    "SyncookiesFailed": "ACKs with an invalid cookie",
    "TCPSynRetrans": "SYN and SYN-ACK retransmissions",
    "TWRecycled": "connect() took over a TIME-WAIT port",
    "PAWSTimewait": "SYNs refused by a TIME-WAIT timestamp check",
    "PAWSEstab": "segments dropped by PAWS on a connection",
    "PAWSOldAck": "ACKs dropped by PAWS because their timestamp echo was old",
    "PAWSActive": "SYN-ACKs refused by a connecting socket (PAWS)",
    "TCPACKSkippedPAWS": "rate-limited duplicate ACKs not sent after a PAWS drop",
    "TCPACKSkippedTimeWait": "rate-limited ACKs a TIME-WAIT socket did not send",
    "TW": "TIME-WAIT sockets that ended by their timer",
    "TWKilled": "TIME-WAIT sockets ended early (RST, or tcp_tw_recycle)",
    "TSEcrRejected": "segments whose timestamp echo was in the future",
    "TCPTimeWaitOverflow": "closes that skipped TIME-WAIT: tcp_max_tw_buckets full",
}
REFUSAL_COUNTERS: tuple[str, ...] = tuple(COUNTER_MEANINGS)


def counted_kinds(counter: str) -> tuple[Kind, ...]:
    """The kinds whose declarations say this counter counts them."""
    return tuple(k for k in Kind if counter in k.spec.counted_by)


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


def read_counters(ns_path: str, inode: int | None = None) -> dict[str, int]:
    """All counters of the namespace that ns_path opens (ESTALE if not `inode`)."""
    out: dict[str, int] = {}
    for text in read_in_netns(ns_path, NETSTAT_FILES, inode):
        out.update(parse_netstat(text))
    return out


class CounterTracker:
    """Baselines at start, current values of the namespaces refusals were seen in.

    watch() runs on the event path (the first event of a namespace), so it only notes the
    inode; finding a path to a namespace (a walk of /proc) waits for the next refresh(),
    which runs between polls.
    """

    def __init__(self, names: tuple[str, ...] = REFUSAL_COUNTERS,
                 lister: Callable[[], dict[int, str]] = list_namespaces,
                 reader: Callable[[str, int | None], dict[str, int]] = read_counters) -> None:
        self.names = names
        self._lister = lister
        self._reader = reader
        self._paths: dict[int, str] = {}
        self._baseline: dict[int, dict[str, int]] = {}
        self._current: dict[int, dict[str, int]] = {}
        self._watched: dict[int, None] = {}   # insertion-ordered set
        self._unlooked: set[int] = set()     # watched, to be looked for in the next listing
        self._relooked: set[int] = set()     # lost their path once: looked for once more

    def _read(self, inode: int) -> dict[str, int] | None:
        path = self._paths.get(inode)
        if path is None:
            return None
        try:
            values = self._reader(path, inode)
        except OSError:
            # Gone, or the path (a /proc/PID whose pid was reused) opens another namespace
            # now: another process may still hold it, so look for it once more.
            del self._paths[inode]
            if inode in self._watched and inode not in self._relooked:
                self._relooked.add(inode)
                self._unlooked.add(inode)
            return None
        return {k: v for k, v in values.items() if k in self.names}

    def start(self) -> None:
        """Snapshot every namespace findable now (a later one was created after start)."""
        self._paths = self._lister()
        for inode in list(self._paths):
            values = self._read(inode)
            if values is not None:
                self._baseline[inode] = values

    def watch(self, inode: int) -> None:
        """Report this namespace's counters from now on (cheap: no file is read here)."""
        if inode not in self._watched:
            self._watched[inode] = None
            self._baseline.setdefault(inode, {})     # created after start: counted from zero
            if inode not in self._paths:
                self._unlooked.add(inode)

    def refresh(self) -> None:
        """Re-read the watched namespaces; one that is gone keeps its last values.

        A newly watched namespace without a known path costs one listing (a namespace
        seen at its first refusal still exists then); one never found is not looked for
        again, so a vanished namespace does not walk /proc every second."""
        if self._unlooked:
            found = self._lister()
            for inode in self._unlooked:
                if inode in found:
                    self._paths[inode] = found[inode]
            self._unlooked.clear()
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
