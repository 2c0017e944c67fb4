"""`tracer live`: the full-screen leaderboard of refused peers (rich).

`render()` is a pure function of a DashboardState and a terminal size, so the layout is
tested by rendering into a fixed-size Console; `Dashboard` is the sink that feeds the state
from the stream, reads keys, and redraws with rich.live.Live.
"""

from __future__ import annotations

import os
import select
import sys
import termios
import threading
import time
import tty
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from rich import box
from rich.console import Console, Group, RenderableType
from rich.layout import Layout
from rich.live import Live
from rich.table import Table
from rich.text import Text

from tracer.kinds import Category
from tracer.leaderboard import Leaderboard
from tracer.model import Counters, End, Event, KindAvailability, Session, Tally
from tracer.reconcile import Attribution, attribute
from tracer.stream import Sink


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if ts else "-"


def _uptime(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


@dataclass
class DashboardState:
    """Everything the screen shows, updated by the sink, read by render()."""

    board: Leaderboard = field(default_factory=Leaderboard)
    host: str = ""
    started: float = 0.0
    now: float = 0.0
    kinds: dict[str, KindAvailability] = field(default_factory=dict)
    recent: deque[Event] = field(default_factory=lambda: deque(maxlen=50))
    attributions: list[Attribution] = field(default_factory=list)
    events_per_second: float = 0.0
    filters: str = ""
    partial_view: bool = False      # filters hide refusals: counters cannot reconcile
    paused: bool = False
    source: str = "live"


def _status(state: DashboardState) -> Group:
    b = state.board
    top = Text(no_wrap=True, overflow="ellipsis")
    top.append("tcp refusal tracer", style="bold")
    top.append(f" · {state.host} · {state.source} up {_uptime(state.now - state.started)}"
               f" · {state.events_per_second:,.0f} ev/s · {b.peers:,} peers · ")
    top.append(f"lost {b.lost:,}", style="bold red" if b.lost else "")
    if b.suppressed:
        top.append(f" · capped {b.suppressed:,}", style="yellow")
    if b.evicted:
        top.append(f" · evicted {b.evicted:,}", style="yellow")
    if state.paused:
        top.append("  PAUSED", style="bold reverse")
    keys = Text(no_wrap=True, overflow="ellipsis", style="dim")
    kind = b.kind_filter.label if b.kind_filter else "all"
    keys.append(f"[s]ort {b.sort} [k]ind {kind} [g]roup {'/24,/64' if b.grouped else 'off'}"
                " [p]ause [q]uit")
    if state.filters:
        keys.append(f" | {state.filters}", style="cyan")
    missing = [k for k, v in state.kinds.items() if not v.available]
    if missing:
        keys.append(f" | unavailable: {', '.join(missing)}", style="yellow")
    return Group(top, keys)


def _board_table(state: DashboardState, rows: int, width: int) -> Table:
    wide = width >= 100
    table = Table(box=box.SIMPLE_HEAD, expand=True, pad_edge=False, show_edge=False)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("SUBNET" if state.board.grouped else "PEER", no_wrap=True, min_width=15,
                     ratio=3, overflow="ellipsis")
    for cat in Category:
        table.add_column({"timewait": "TW"}.get(cat.value, cat.value.upper()), justify="right",
                         no_wrap=True)
    table.add_column("RATE/s", justify="right", no_wrap=True)
    table.add_column("TOTAL", justify="right", no_wrap=True)
    if wide:
        table.add_column("FIRST", no_wrap=True)
    table.add_column("LAST", no_wrap=True)
    table.add_column("PORTS", no_wrap=True, overflow="ellipsis", ratio=1, min_width=5)
    for i, row in enumerate(state.board.rows(limit=rows), start=1):
        label = row.peer + (f" ({row.members})" if row.members > 1 else "")
        first = [_clock(row.first_seen)] if wide else []
        table.add_row(str(i), label,
                      *(f"{row.by_category(c):,}" if row.by_category(c) else "-" for c in Category),
                      f"{row.rate:,.1f}", f"{row.total:,}", *first, _clock(row.last_seen),
                      ",".join(str(p) for p in row.top_ports()))
    return table


def _counters_table(state: DashboardState) -> Table:
    table = Table(box=None, expand=True, show_header=True, pad_edge=False)
    table.add_column("KERNEL COUNTER", no_wrap=True, overflow="ellipsis")
    table.add_column("DELTA", justify="right", no_wrap=True)
    table.add_column("ATTRIBUTED", justify="right", no_wrap=True)
    for a in state.attributions:
        if not a.delta and not a.attributed:
            continue
        if not a.exact:
            share = " (part)"              # the counter also counts things that are no refusal
        else:
            share = f" {a.share:.0%}" if a.share is not None else ""
        short = a.exact and a.short and not state.partial_view
        table.add_row(a.counter, f"+{a.delta:,}",
                      Text(f"{a.attributed:,}{share}" + (" !" if short else ""),
                           style="bold red" if short else ""))
    if not table.rows:
        table.add_row("(no refusal counter moved)", "", "")
    return table


def _feed(state: DashboardState, lines: int) -> Table:
    table = Table(box=None, expand=True, show_header=True, pad_edge=False)
    table.add_column("RECENT", no_wrap=True)
    table.add_column("KIND", no_wrap=True)
    table.add_column("PEER", no_wrap=True, overflow="ellipsis", ratio=1)
    table.add_column("PORT", no_wrap=True, justify="right")
    for e in list(state.recent)[-lines:][::-1]:
        table.add_row(_clock(e.ts), e.kind.label, e.peer, f"{e.local_port}")
    return table


def render(state: DashboardState, width: int, height: int) -> RenderableType:
    """The whole screen for a terminal of width x height (works down to 80x24)."""
    bottom = max(4, min(10, height // 3))
    board_rows = max(1, height - 2 - bottom - 3)
    layout = Layout()
    layout.split_column(Layout(_status(state), name="status", size=2),
                        Layout(_board_table(state, board_rows, width), name="board"),
                        Layout(name="bottom", size=bottom))
    layout["bottom"].split_row(Layout(_counters_table(state), name="counters"),
                               Layout(" ", name="gap", size=2),
                               Layout(_feed(state, bottom - 1), name="feed"))
    return layout


class KeyReader:
    """Single keys from the terminal (cbreak mode) on a thread, restored on stop."""

    def __init__(self, on_key: Callable[[str], None], stream: TextIO | None = None) -> None:
        self.on_key = on_key
        self.stream = stream or sys.stdin
        self._stop = threading.Event()
        self._saved = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self.stream.isatty():
            return
        fd = self.stream.fileno()
        self._saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        self._thread = threading.Thread(target=self._run, daemon=True, name="keys")
        self._thread.start()

    def _run(self) -> None:
        fd = self.stream.fileno()
        while not self._stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                ch = os.read(fd, 1).decode(errors="ignore")
                if ch:
                    self.on_key(ch)

    def stop(self) -> None:
        """Stop reading and give the terminal its modes back (twice, or unstarted: no-op)."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=1)
            self._thread = None
        if self._saved is not None:
            termios.tcsetattr(self.stream.fileno(), termios.TCSADRAIN, self._saved)
            self._saved = None


class Dashboard(Sink):
    """Sink: feeds DashboardState from the stream and redraws it on every tally.

    keyboard: where keys are read (stdin unless given).
    """

    def __init__(self, console: Console, on_quit: Callable[[], None], filters: str = "",
                 source: str = "live", partial_view: bool = False,
                 keyboard: TextIO | None = None) -> None:
        self.console = console
        self.state = DashboardState(filters=filters, source=source, partial_view=partial_view)
        self._on_quit = on_quit
        self._live: Live | None = None
        self._keys = KeyReader(self._key, keyboard)
        self._events_since = 0
        self._last_tally: float | None = None
        self._kind_counts: Counter = Counter()
        self._lock = threading.Lock()

    def _key(self, ch: str) -> None:
        b = self.state.board
        with self._lock:
            if ch in "qQ":
                self._on_quit()
            elif ch == "s":
                b.cycle_sort()
            elif ch == "k":
                b.cycle_kind()
            elif ch == "g":
                b.toggle_grouping()
            elif ch == "p":
                self.state.paused = not self.state.paused
        self.redraw()

    def _screen(self) -> RenderableType:
        """What Live draws, built when it draws: its own thread does so twice a second, so
        the board stays live while the stream thread reads a 100,000-peer tally."""
        with self._lock:
            if self.state.source != "replay" and not self.state.paused:
                self.state.now = time.time()      # a replay keeps the recording's clock
            return render(self.state, self.console.width, self.console.height)

    def redraw(self) -> None:
        if self._live is not None:
            self._live.refresh()

    def session(self, s: Session) -> None:
        self.state.host = s.host
        self.state.started = self.state.now = s.started
        self.state.kinds = s.kinds
        self._live = Live(get_renderable=self._screen, console=self.console, screen=True,
                          auto_refresh=True, refresh_per_second=2,
                          redirect_stdout=False, redirect_stderr=False)
        self._live.start()
        self._keys.start()

    def tick(self) -> None:
        """Between tallies (spaced out when 100,000+ peers make them slow), keep the event
        rate current: it is the average since the last tally."""
        if self._last_tally is not None and self.state.source != "replay":
            elapsed = time.time() - self._last_tally
            if elapsed >= 1.0:
                self.state.events_per_second = self._events_since / elapsed

    def event(self, e: Event) -> None:
        self._events_since += 1
        if not self.state.paused:
            with self._lock:                       # the drawing thread reads the feed
                self.state.recent.append(e)

    def tally(self, t: Tally) -> None:
        now = t.ts
        if self._last_tally is not None and now > self._last_tally:
            self.state.events_per_second = self._events_since / (now - self._last_tally)
        self._events_since, self._last_tally = 0, now
        if self.state.paused:
            return
        update = self.state.board.prepare(t)      # the slow part, while the board draws
        with self._lock:
            self.state.now = now
            self.state.board.apply(update)
        self._kind_counts = Counter()
        for r in t.rows:
            self._kind_counts[(r.netns, r.kind)] += r.count
        self.redraw()

    def counters(self, c: Counters) -> None:
        if self.state.paused:
            return
        attributions = attribute(c.counters, self._kind_counts)
        with self._lock:
            self.state.attributions = attributions
        self.redraw()

    def end(self, e: End) -> None:
        self.close()

    def close(self) -> None:
        """Give the terminal back: main screen, cursor, echo and line mode (also after an
        error, before session(), or twice)."""
        self._keys.stop()
        live, self._live = self._live, None
        if live is not None:
            live.stop()
