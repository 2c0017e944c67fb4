"""Runs a source into a sink until the user stops it: the one loop every command shares.

Signals only set flags here; the loop acts on them between polls (at most 100 ms later),
so the final tally and end lines are always written by the same code path.
"""

from __future__ import annotations

import signal
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import suppress

from tracer.model import Counters, End, Event, Session, Tally


class Sink:
    """Where the stream goes; every sink derives from this. Each method is a no-op until a
    sink overrides it, so run() calls them all without asking which ones a sink has."""

    def session(self, s: Session) -> None:
        """Tracing has started: every probe is attached."""

    def event(self, e: Event) -> None:
        """One refusal."""

    def tally(self, t: Tally) -> None:
        """The exact in-kernel counts since start."""

    def counters(self, c: Counters) -> None:
        """How much the kernel's own counters grew since start."""

    def end(self, e: End) -> None:
        """The stream's last record."""

    def flush(self) -> None:
        """After every batch of events: write out what the events left buffered."""

    def tick(self) -> None:
        """After every poll (at least every 100 ms), whether or not anything arrived."""

    def close(self) -> None:
        """Give back what the sink holds (the terminal, a file). run() calls it last, also
        after an error and when session() never ran; calling it twice does nothing."""


class SourceFinished(Exception):
    """Raised by a finite source's poll() once it has given everything: the stream then
    ends as when it is stopped (settle, final tally, end)."""


class Source(ABC):
    """Where the stream comes from: the kernel, or a recording."""

    @abstractmethod
    def start(self) -> Session:
        """Begin; the Session returned means every record from now on is seen."""

    @abstractmethod
    def poll(self, timeout: float) -> list[Event]:
        """Events that arrived within `timeout` seconds; SourceFinished when there will be
        no more."""

    def settle(self) -> list[Event]:
        """At the end: events still held back for a decision (none unless overridden)."""
        return []

    @abstractmethod
    def tally(self) -> Tally:
        """The exact counts since start."""

    @abstractmethod
    def counters(self) -> Counters:
        """The kernel counters' growth since start."""

    @abstractmethod
    def end(self) -> End:
        """The last record."""

    def release_memory(self) -> None:  # noqa: B027 (optional: a no-op unless overridden)
        """After a slow (big) tally: hand its garbage back to the system."""

    def close(self) -> None:  # noqa: B027 (optional: a no-op unless overridden)
        """Give back what the source holds; called once, also after an error."""


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
        poll_interval: float = 0.1, on_started: Callable[[], None] | None = None) -> None:
    """Stream until stopped, until a finite source is finished, or `duration` seconds after
    the session line; then close the sink and the source, whatever happened.

    periodic: write tally and counters lines every so many seconds (recordings, the board).
    on_started: called once the session line is out, i.e. once every probe is attached.
    The sink's flush() follows every batch of events, its tick() every poll.
    """
    flags = flags or StopFlags()
    try:
        try:
            _stream(source, sink, duration, periodic, flags, poll_interval, on_started)
        except BaseException:
            with suppress(Exception):
                sink.close()            # the terminal back; the first error is the one to tell
            raise
        sink.close()
    finally:
        source.close()


def _stream(source: Source, sink: Sink, duration: float | None, periodic: float | None,
            flags: StopFlags, poll_interval: float,
            on_started: Callable[[], None] | None) -> None:
    """run()'s records, from the session line to the end line."""
    session = source.start()
    sink.session(session)
    if on_started is not None:
        on_started()
    started = time.monotonic()
    next_periodic = started + periodic if periodic else None
    while not flags.stop.is_set():
        try:
            events = source.poll(poll_interval)
        except SourceFinished:
            break
        for event in events:
            sink.event(event)
        sink.flush()
        sink.tick()
        now = time.monotonic()
        if flags.tally_now.is_set() or (next_periodic and now >= next_periodic):
            flags.tally_now.clear()
            # Counters first: every refusal they count is then in the tally read next,
            # so a live view never shows a shortfall that is only sampling skew.
            counters = source.counters()
            sink.tally(source.tally())
            sink.counters(counters)
            spent = time.monotonic() - now
            if spent > 0.05:
                source.release_memory()        # after a big tally: its garbage is gone
            if next_periodic:
                # A tally of 100,000+ peers takes a while to read and write: space them
                # so that this never takes more than a tenth of the tracer's time.
                next_periodic = now + max(periodic or 1.0, 10 * spent)
        if duration is not None and now - started >= duration:
            break
    for event in source.settle():
        sink.event(event)
    end = source.end()
    sink.tally(source.tally())
    sink.end(end)
