"""One look at a namespace's refusal state over a short sample, for `tracer doctor`: its
sysctls, its kernel counters at the start and the end, and its listeners' accept queues
polled through the sample (a queue full for 50 ms is still seen). Needs no BPF.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tracer.kernel.counters import read_counters
from tracer.kernel.listeners import ListenerQueue, read_listeners, with_owners
from tracer.kernel.netns import call_in_netns
from tracer.kernel.sysctls import REFUSAL_SYSCTLS, read_sysctls

# tcp_tw_recycle is read only to say whether it is still there (removed in Linux 4.12).
DOCTOR_SYSCTLS = (*REFUSAL_SYSCTLS, "net.ipv4.tcp_tw_recycle")
LISTENER_POLL_S = 0.1


@dataclass(frozen=True)
class ListenerSample:
    """A listener as it was at the end of the sample, and the fullest it was during it."""

    now: ListenerQueue
    peak_queued: int

    @property
    def full_during(self) -> bool:
        return self.peak_queued > self.now.backlog

    def to_json(self) -> dict:
        return {**self.now.to_json(), "peak_queued": self.peak_queued,
                "full_during_sample": self.full_during}


@dataclass(frozen=True)
class HostSample:
    """Everything doctor decides from, for one namespace."""

    netns: int
    kernel: str
    seconds: float
    sysctls: dict[str, str]
    counters_start: dict[str, int]
    counters_end: dict[str, int]
    listeners: list[ListenerSample]
    tracing: dict = field(default_factory=dict)   # {"available": bool, "why": str|None, ...}

    def delta(self, name: str) -> int:
        return self.counters_end.get(name, 0) - self.counters_start.get(name, 0)

    def rate(self, name: str) -> float | None:
        """Per second over the sample, None without a sample."""
        return self.delta(name) / self.seconds if self.seconds > 0 else None


def _key(ln: ListenerQueue) -> tuple:
    return (ln.family, ln.address, ln.port, ln.inode)


def read_sysctls_in(ns_path: str) -> dict[str, str]:
    """DOCTOR_SYSCTLS as the namespace ns_path opens sees them (most are per namespace)."""
    return call_in_netns(ns_path, lambda: read_sysctls(names=DOCTOR_SYSCTLS))


def take_sample(ns_path: str, netns: int, kernel: str, seconds: float,
                listeners: Callable[[str], list[ListenerQueue]] = read_listeners,
                counters: Callable[[str], dict[str, int]] = read_counters,
                sysctls: Callable[[str], dict[str, str]] = read_sysctls_in,
                owners: Callable[[list[ListenerQueue]], list[ListenerQueue]] = with_owners,
                clock: Callable[[], float] = time.monotonic,
                sleep: Callable[[float], None] = time.sleep) -> HostSample:
    """Counters at start and end, listeners every LISTENER_POLL_S (a bounded loop)."""
    values = sysctls(ns_path)
    start = counters(ns_path)
    peaks: dict[tuple, int] = {}
    last: dict[tuple, ListenerQueue] = {}

    def look() -> None:
        for ln in listeners(ns_path):
            k = _key(ln)
            last[k] = ln
            peaks[k] = max(peaks.get(k, 0), ln.queued)

    look()
    began = clock()
    polls = math.ceil(seconds / LISTENER_POLL_S - 1e-9) if seconds > 0 else 0
    for _ in range(polls):
        sleep(LISTENER_POLL_S)
        look()
        if clock() - began >= seconds:
            break
    elapsed = clock() - began if seconds > 0 else 0.0
    end = counters(ns_path)
    # Listeners that closed during the sample are gone; the rest carry their peak.
    current = {_key(ln): ln for ln in listeners(ns_path)}
    owned = owners(list(current.values()))
    samples = [ListenerSample(ln, max(peaks.get(_key(ln), 0), ln.queued)) for ln in owned]
    samples.sort(key=lambda s: (s.now.port, s.now.family, s.now.address))
    return HostSample(netns=netns, kernel=kernel, seconds=round(elapsed, 3), sysctls=values,
                      counters_start=start, counters_end=end, listeners=samples)
