"""The live source: kernel tracepoints -> the stream of Session, Event, Tally, Counters, End.

It checks the machine, loads the probe, and turns what the kernel side reports into stream
records, applying the user's RefusalFilter to events and tally rows alike.
"""

from __future__ import annotations

import os
import platform
import socket
import time
from pathlib import Path

from tracer import __version__
from tracer.errors import EnvironmentProblem
from tracer.filters import RefusalFilter
from tracer.kernel.counters import CounterTracker
from tracer.kernel.sysctls import read_sysctls
from tracer.kinds import Kind
from tracer.model import Counters, End, Event, KindAvailability, Session, Tally
from tracer.probe import decode, features, tracefs
from tracer.probe.abi import Stat
from tracer.probe.btf import Btf, BtfError
from tracer.probe.grace import GraceWindow
from tracer.probe.load import LoadedProbe, Tuning, build_defines, kernel_hz, release_heap
from tracer.probe.peer_table import PEER_KEY, summarize
from tracer.stream import Source


def check_environment() -> None:
    """Fail early, with the remedy, when this machine cannot load the probe at all."""
    if os.geteuid() != 0:
        raise EnvironmentProblem("the tracer needs root to load BPF programs",
                                 "run it with sudo (or as root)")
    release = platform.release()
    if not Path(f"/lib/modules/{release}/build").exists():
        raise EnvironmentProblem(
            f"kernel headers not found at /lib/modules/{release}/build",
            "run ./scripts/setup, which installs the distribution's headers and links them")


def monotonic_ns() -> int:
    """Kernel time as bpf_ktime_get_ns() sees it (CLOCK_MONOTONIC)."""
    return time.monotonic_ns()


class LiveSource(Source):
    """Refusals as they happen, from the kernel."""

    def __init__(self, selection: RefusalFilter | None = None,
                 tuning: Tuning | None = None) -> None:
        self.selection = selection or RefusalFilter()
        self.tuning = tuning or Tuning()
        self.probe: LoadedProbe | None = None
        self.kinds: dict[str, KindAvailability] = {}
        self.counter_tracker = CounterTracker()
        self.grace = GraceWindow(self.tuning.grace_ns)
        self._reasons = decode.ReasonNames({})
        self._wall_offset = time.time() - time.monotonic()
        self._ready: list[Event] = []
        self._seen_netns: set[int] = set()
        self._everything = self.selection.is_everything

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Session:
        """Load and attach every probe; the returned Session means "now tracing"."""
        check_environment()
        root = tracefs.ensure_mounted()
        try:
            btf = Btf.load()
        except BtfError as e:
            raise EnvironmentProblem(str(e), "use a kernel built with CONFIG_DEBUG_INFO_BTF=y") \
                from e
        feats = features.detect(root)
        self.kinds = features.availability(feats)
        wanted = [k for k in self.kinds if self._wanted(Kind.from_label(k))]
        if wanted and not any(self.kinds[k].available for k in wanted):
            why = "; ".join(f"{k}: {self.kinds[k].why}" for k in wanted)
            raise EnvironmentProblem(f"no selected kind can be traced on this kernel ({why})",
                                     "select other kinds, or run `tracer doctor` for the "
                                     "kernel counters of these")
        self._reasons = decode.ReasonNames(feats.reasons)
        plan = features.build_plan(feats, {k for k in Kind if self._wanted(k)})
        defines = build_defines(feats, btf, self.tuning, os.cpu_count() or 1, kernel_hz(),
                                plan)
        self.probe = LoadedProbe(defines)
        self.probe.open_events(self._on_record)
        # Baselines now that the programs count: the compile takes a second or two, and
        # refusals during it must not show up as counted by the kernel but missed by us.
        self.counter_tracker.start()
        self._wall_offset = time.time() - time.monotonic()
        return Session(host=socket.gethostname(), kernel=platform.release(),
                       started=time.time(), tracer=__version__, kinds=self.kinds,
                       sysctls=read_sysctls(),
                       max_events_per_second=self.tuning.max_events_per_second)

    def _wanted(self, kind: Kind) -> bool:
        """Only selected kinds get their handlers built and their tracepoints attached."""
        return not self.selection.kinds or kind in self.selection.kinds

    def close(self) -> None:
        if self.probe is not None:
            self.probe.close()
            self.probe = None

    # ------------------------------------------------------------------ events
    def _on_record(self, data: bytes) -> None:
        event = decode.fast_event(data, self._reasons, self._wall_offset)
        if event is not None:                     # the common case, kept short
            if self._everything or self.selection.matches_event(event):
                if event.netns not in self._seen_netns:
                    self._watch_netns(event.netns)
                self._ready.append(event)
            return
        raw = decode.decode_record(data)
        if raw.is_retraction:
            self.grace.retract(raw)
        elif raw.pending:
            self.grace.hold(raw)
        else:
            self._accept(raw)

    def _accept(self, raw: decode.RawRecord) -> None:
        try:
            event = decode.to_event(raw, self._reasons, self._wall_offset)
        except ValueError:
            return                      # a kind id this version does not know
        if self.selection.matches_event(event):
            self._watch_netns(event.netns)
            self._ready.append(event)

    def _watch_netns(self, netns: int) -> None:
        """Report kernel counters for every namespace a selected refusal was seen in."""
        if netns and netns not in self._seen_netns:
            self._seen_netns.add(netns)
            self.counter_tracker.watch(netns)

    def poll(self, timeout: float) -> list[Event]:
        """Events that arrived within `timeout` seconds (held syn_drops once decided)."""
        assert self.probe is not None
        self.probe.poll(int(timeout * 1000))
        for raw in self.grace.release(monotonic_ns()):
            self._accept(raw)
        out, self._ready = self._ready, []
        return out

    def settle(self) -> list[Event]:
        """At the end: wait out the grace window so every held syn_drop is decided."""
        assert self.probe is not None
        wait = max(self.grace.due_ns(monotonic_ns()), self.tuning.grace_ns)
        time.sleep(wait / 1e9)
        self.probe.poll(0)
        for raw in self.grace.release_all():
            self._accept(raw)
        out, self._ready = self._ready, []
        return out

    # ------------------------------------------------------------------ counts
    def _stat(self, slot: int) -> int:
        assert self.probe is not None
        rows = self.probe.stats()
        return decode.percpu_sum(rows[slot]) if slot < len(rows) else 0

    def tally(self) -> Tally:
        """Exact in-kernel counts since start, filtered, summed over local ports."""
        assert self.probe is not None
        inserts = self._stat(Stat.INSERTS)          # before the entries: never over-counts
        keys, values, ncpu = self.probe.peer_counts()
        entries = len(keys) // PEER_KEY.itemsize
        rows, ports = summarize(keys, values, ncpu, self.selection)
        for netns in {row.netns for row in rows}:
            self._watch_netns(netns)
        totals = {decode.KINDS_BY_ID[k].label: decode.percpu_sum(v)
                  for k, v in self.probe.kind_totals().items() if k in decode.KINDS_BY_ID}
        # Every entry ever created, minus those alive: the ones the LRU evicted.
        evicted = max(0, inserts - entries)
        return Tally(ts=time.time(), rows=rows, lost=self._stat(Stat.LOST),
                     suppressed=self._stat(Stat.SUPPRESSED), totals=totals, evicted=evicted,
                     ports=ports)

    def release_memory(self) -> None:
        """Return the heap a big tally left free to the system (the stream calls this)."""
        release_heap()

    def counters(self) -> Counters:
        self.counter_tracker.refresh()
        return Counters(ts=time.time(), counters=self.counter_tracker.deltas())

    def end(self) -> End:
        self.counter_tracker.refresh()
        return End(ts=time.time(), lost=self._stat(Stat.LOST),
                   suppressed=self._stat(Stat.SUPPRESSED),
                   counters=self.counter_tracker.deltas())
