"""Runs a source into a sink until the user stops it: the one loop every command shares.

Signals only set flags here; the loop acts on them between polls (at most 100 ms later),
so the final tally and end lines are always written by the same code path.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Protocol

from tracer.model import Counters, End, Event, Session, Tally


class Sink(Protocol):
    def session(self, s: Session) -> None: ...
    def event(self, e: Event) -> None: ...
    def tally(self, t: Tally) -> None: ...
    def counters(self, c: Counters) -> None: ...
    def end(self, e: End) -> None: ...


class Source(Protocol):
    def start(self) -> Session: ...
    def poll(self, timeout: float) -> list[Event]: ...
    def settle(self) -> list[Event]: ...
    def tally(self) -> Tally: ...
    def counters(self) -> Counters: ...
    def end(self) -> End: ...
    def close(self) -> None: ...


class StopFlags:
    """Set by signal handlers: stop (SIGINT/SIGTERM/SIGHUP) and dump-tally-now (SIGUSR1)."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.tally_now = threading.Event()

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda *_: self.stop.set())
        signal.signal(signal.SIGUSR1, lambda *_: self.tally_now.set())


def run(source: Source, sink: Sink, *, duration: float | None = None,
        periodic: float | None = None, flags: StopFlags | None = None,
        poll_interval: float = 0.1, on_started: Callable[[], None] | None = None,
        stop_when_finished: bool = True) -> None:
    """Stream until stopped or `duration` seconds after the session line.

    periodic: write tally and counters lines every so many seconds (recordings, the board).
    on_started: called once the session line is out, i.e. once every probe is attached.
    A sink with `flush()` gets it after every batch of events, one with `tick()` after
    every poll (at least every 100 ms), whether or not a tally is due.
    stop_when_finished: end when a finite source (a replay) has nothing more to give.
    """
    flags = flags or StopFlags()
    try:
        session = source.start()
        sink.session(session)
        if on_started is not None:
            on_started()
        started = time.monotonic()
        next_periodic = started + periodic if periodic else None
        flush = getattr(sink, "flush", None)
        tick = getattr(sink, "tick", None)
        while not flags.stop.is_set():
            for event in source.poll(poll_interval):
                sink.event(event)
            if flush is not None:
                flush()
            if tick is not None:
                tick()
            now = time.monotonic()
            if flags.tally_now.is_set() or (next_periodic and now >= next_periodic):
                flags.tally_now.clear()
                # Counters first: every refusal they count is then in the tally read next,
                # so a live view never shows a shortfall that is only sampling skew.
                counters = source.counters()
                sink.tally(source.tally())
                sink.counters(counters)
                spent = time.monotonic() - now
                release = getattr(source, "release_memory", None)
                if release is not None and spent > 0.05:
                    release()                      # after a big tally: its garbage is gone
                if next_periodic:
                    # A tally of 100,000+ peers takes a while to read and write: space them
                    # so that this never takes more than a tenth of the tracer's time.
                    next_periodic = now + max(periodic or 1.0, 10 * spent)
            if duration is not None and now - started >= duration:
                break
            if stop_when_finished and getattr(source, "finished", False):
                break
        for event in source.settle():
            sink.event(event)
        end = source.end()
        sink.tally(source.tally())
        sink.end(end)
    finally:
        source.close()
