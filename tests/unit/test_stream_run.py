"""stream.run(): record order, --duration from the session line, stop and tally-now flags,
the sink's hooks, and the sink and source always closed. A scripted fake clock makes the
loop deterministic."""

from __future__ import annotations

import threading
import time
import types

import pytest

from tracer import stream
from tracer.errors import EnvironmentProblem
from tracer.kinds import Kind
from tracer.model import Counters, End, Event, KindAvailability, Session, Tally
from tracer.recording import Recording
from tracer.replay import ReplaySource
from tracer.stream import Sink, Source, SourceFinished, StopFlags, run

SESSION = Session(host="h", kernel="6.18.44", started=1.0, tracer="0.1.0",
                  kinds={"syn_drop": KindAvailability(True, "skb:consume_skb")}, sysctls={})


def ev(n: int) -> Event:
    return Event(float(n), Kind.SYN_DROP, f"10.0.0.{n}", 1000 + n, "10.0.0.254", 443, 4, 1,
                 None)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class FakeSource(Source):
    """Yields scripted batches; each poll advances the fake clock by `step` seconds.

    script: poll number (1-based) -> callable run during that poll (to set flags, or raise).
    tally_takes: fake seconds each tally() takes.
    """

    def __init__(self, batches=(), *, clock: FakeClock | None = None, step: float = 0.0,
                 start_takes: float = 0.0, fail_start: Exception | None = None,
                 settle=(), script=None, tally_takes: float = 0.0) -> None:
        self.batches = [list(b) for b in batches]
        self.clock, self.step, self.start_takes = clock, step, start_takes
        self.tally_takes = tally_takes
        self.fail_start = fail_start
        self.settle_events = list(settle)
        self.script = script or {}
        self.calls: list[str] = []
        self.polls = 0
        self.timeouts: list[float] = []

    def start(self) -> Session:
        self.calls.append("start")
        if self.clock:
            self.clock.now += self.start_takes
        if self.fail_start:
            raise self.fail_start
        return SESSION

    def poll(self, timeout: float) -> list[Event]:
        self.calls.append("poll")
        self.polls += 1
        self.timeouts.append(timeout)
        if self.clock:
            self.clock.now += self.step
        if self.polls in self.script:
            self.script[self.polls]()
        return self.batches.pop(0) if self.batches else []

    def settle(self) -> list[Event]:
        self.calls.append("settle")
        return self.settle_events

    def tally(self) -> Tally:
        self.calls.append("tally")
        if self.clock:
            self.clock.now += self.tally_takes
        return Tally(ts=float(self.polls), rows=[], lost=self.polls)

    def counters(self) -> Counters:
        self.calls.append("counters")
        return Counters(ts=float(self.polls), counters=[])

    def end(self) -> End:
        self.calls.append("end")
        return End(ts=9.0, lost=0, counters=[])

    def release_memory(self) -> None:
        self.calls.append("release_memory")

    def close(self) -> None:
        self.calls.append("close")


class RecordingSink(Sink):
    def __init__(self) -> None:
        self.seen: list[str] = []
        self.records: list[object] = []
        self.closed = 0

    def session(self, s):
        self.seen.append("session")
        self.records.append(s)

    def event(self, e):
        self.seen.append(f"event {e.peer}")
        self.records.append(e)

    def tally(self, t):
        self.seen.append(f"tally@{t.lost}")
        self.records.append(t)

    def counters(self, c):
        self.seen.append("counters")
        self.records.append(c)

    def end(self, e):
        self.seen.append("end")
        self.records.append(e)

    def close(self):
        self.closed += 1


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    c = FakeClock()
    fake_time = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time)
                                         if not k.startswith("_")})
    fake_time.monotonic = c.monotonic
    monkeypatch.setattr(stream, "time", fake_time)
    return c


def test_order_session_events_settled_events_final_tally_end(clock):
    flags = StopFlags()
    src = FakeSource([[ev(1), ev(2)], [], [ev(3)]], settle=[ev(4)],
                     script={3: flags.stop.set})
    sink = RecordingSink()
    run(src, sink, flags=flags, poll_interval=0.25)
    assert sink.seen == ["session", "event 10.0.0.1", "event 10.0.0.2", "event 10.0.0.3",
                         "event 10.0.0.4", "tally@3", "end"]
    assert sink.records[0] is SESSION
    assert src.calls[:5] == ["start", "poll", "poll", "poll", "settle"]
    assert sorted(src.calls[5:-1]) == ["end", "tally"]      # read in either order
    assert src.calls[-1] == "close" and src.calls.count("close") == 1
    assert src.timeouts == [0.25, 0.25, 0.25]


def test_duration_counts_from_the_session_line(clock):
    # Attaching takes 100 s; --duration 5 still traces 5 s after the session line.
    src = FakeSource(clock=clock, step=1.0, start_takes=100.0)
    sink = RecordingSink()
    run(src, sink, duration=5.0, poll_interval=0.01)
    assert src.polls == 5
    assert sink.seen == ["session", "tally@5", "end"]
    assert src.calls[-1] == "close"


def test_duration_shorter_than_one_poll_still_polls_once(clock):
    src = FakeSource([[ev(1)]], clock=clock, step=1.0)
    sink = RecordingSink()
    run(src, sink, duration=0.001)
    assert src.polls == 1
    assert sink.seen == ["session", "event 10.0.0.1", "tally@1", "end"]


def test_periodic_tally_and_counters_pairs(clock):
    src = FakeSource(clock=clock, step=1.0)
    sink = RecordingSink()
    run(src, sink, duration=5.0, periodic=2.0)
    assert sink.seen == ["session", "tally@2", "counters", "tally@4", "counters",
                         "tally@5", "end"]


def test_tally_now_gives_one_tally_counters_pair_mid_stream(clock):
    flags = StopFlags()
    src = FakeSource([[ev(1)], [ev(2)], [ev(3)], [ev(4)]],
                     script={2: flags.tally_now.set, 4: flags.stop.set})
    sink = RecordingSink()
    run(src, sink, flags=flags)
    assert sink.seen == ["session", "event 10.0.0.1", "event 10.0.0.2", "tally@2",
                         "counters", "event 10.0.0.3", "event 10.0.0.4", "tally@4", "end"]
    assert not flags.tally_now.is_set()


def test_stop_before_the_first_poll_still_ends_cleanly(clock):
    flags = StopFlags()
    flags.stop.set()
    src = FakeSource([[ev(1)]], settle=[ev(2)])
    sink = RecordingSink()
    run(src, sink, flags=flags)
    assert src.polls == 0
    assert sink.seen == ["session", "event 10.0.0.2", "tally@0", "end"]
    assert src.calls[-1] == "close"


def test_stop_set_from_another_thread_ends_the_loop():
    """Real clock and a real thread: the loop notices the flag between polls."""
    flags = StopFlags()
    polled = threading.Event()

    class Slow(FakeSource):
        def poll(self, timeout):
            polled.set()
            flags.stop.wait(timeout)
            return super().poll(timeout)

    src, sink = Slow([[ev(1)]]), RecordingSink()
    worker = threading.Thread(target=run, args=(src, sink),
                              kwargs={"flags": flags, "poll_interval": 0.05})
    worker.start()
    assert polled.wait(5)
    flags.stop.set()
    worker.join(5)
    assert not worker.is_alive()
    assert sink.seen[0] == "session" and sink.seen[-2:] == [f"tally@{src.polls}", "end"]
    assert src.calls[-1] == "close" and src.calls.count("close") == 1


def test_source_closed_when_start_raises():
    src = FakeSource(fail_start=EnvironmentProblem("no BPF", "run as root"))
    sink = RecordingSink()
    with pytest.raises(EnvironmentProblem):
        run(src, sink)
    assert src.calls == ["start", "close"]
    assert sink.seen == []


def test_source_closed_when_a_sink_fails(clock):
    class Broken(RecordingSink):
        def event(self, e):
            raise BrokenPipeError

    src = FakeSource([[ev(1)]])
    with pytest.raises(BrokenPipeError):
        run(src, Broken())
    assert src.calls == ["start", "poll", "close"]


def test_stop_flags_install_routes_signals(monkeypatch):
    installed = {}
    monkeypatch.setattr(stream.signal, "signal", lambda sig, fn: installed.__setitem__(sig, fn))
    flags = StopFlags()
    flags.install()
    sigs = stream.signal
    assert set(installed) == {sigs.SIGINT, sigs.SIGTERM, sigs.SIGHUP, sigs.SIGUSR1}
    installed[sigs.SIGUSR1](sigs.SIGUSR1, None)
    assert flags.tally_now.is_set() and not flags.stop.is_set()
    installed[sigs.SIGTERM](sigs.SIGTERM, None)
    assert flags.stop.is_set()


def test_a_sink_with_tick_gets_one_after_every_poll(clock):
    class TickingSink(RecordingSink):
        def tick(self):
            self.seen.append("tick")

    src = FakeSource([[ev(1)], []], clock=clock, step=1.0)
    sink = TickingSink()
    run(src, sink, duration=2.0)
    assert sink.seen == ["session", "event 10.0.0.1", "tick", "tick", "tally@2", "end"]


def test_a_slow_tally_hands_memory_back_and_a_fast_one_does_not(clock):
    slow = FakeSource(clock=clock, step=1.0, tally_takes=0.5)
    run(slow, RecordingSink(), duration=2.0, periodic=1.0)
    fast = FakeSource(clock=clock, step=1.0)
    run(fast, RecordingSink(), duration=2.0, periodic=1.0)
    assert slow.calls.count("release_memory") == 1 and "release_memory" not in fast.calls


# ---------------------------------------------------------------- closing

def test_the_sink_is_closed_after_the_end_line_then_the_source(clock):
    src = FakeSource([[ev(1)]], clock=clock, step=1.0)

    class Order(RecordingSink):
        def close(self):
            self.seen.append("close")
            src.calls.append("sink closed")

    sink = Order()
    run(src, sink, duration=1.0)
    assert sink.seen[-2:] == ["end", "close"]
    assert src.calls[-2:] == ["sink closed", "close"]


def test_the_sink_is_closed_when_start_raises():
    src, sink = FakeSource(fail_start=EnvironmentProblem("no BPF", "run as root")), RecordingSink()
    with pytest.raises(EnvironmentProblem):
        run(src, sink)
    assert (sink.seen, sink.closed, src.calls) == ([], 1, ["start", "close"])


def test_the_sink_is_closed_when_the_source_fails_mid_stream(clock):
    def fail():
        raise OSError("ring buffer gone")

    src, sink = FakeSource([[ev(1)], [ev(2)]], script={2: fail}), RecordingSink()
    with pytest.raises(OSError, match="ring buffer gone"):
        run(src, sink)
    assert sink.seen == ["session", "event 10.0.0.1"]
    assert sink.closed == 1 and src.calls[-1] == "close"


def test_a_sink_failing_to_close_after_an_error_does_not_hide_that_error(clock):
    def fail():
        raise OSError("ring buffer gone")

    class BadClose(RecordingSink):
        def close(self):
            raise RuntimeError("terminal gone too")

    src = FakeSource([[ev(1)]], script={1: fail})
    with pytest.raises(OSError, match="ring buffer gone"):
        run(src, BadClose())
    assert src.calls[-1] == "close"


def test_a_sink_failing_to_close_after_a_normal_end_is_the_error(clock):
    class BadClose(RecordingSink):
        def close(self):
            raise EnvironmentProblem("the disk is full", "free some space")

    src = FakeSource(clock=clock, step=1.0)
    with pytest.raises(EnvironmentProblem):
        run(src, BadClose(), duration=1.0)
    assert src.calls[-1] == "close"


# ---------------------------------------------------------------- finite sources

def test_a_finished_source_ends_the_stream_like_a_stop(clock):
    class Finite(FakeSource):
        def poll(self, timeout):
            if not self.batches:
                raise SourceFinished
            return super().poll(timeout)

    src, sink = Finite([[ev(1)], [ev(2)]], settle=[ev(3)]), RecordingSink()
    run(src, sink)
    assert sink.seen == ["session", "event 10.0.0.1", "event 10.0.0.2", "event 10.0.0.3",
                         "tally@2", "end"]
    assert sink.closed == 1 and src.calls[-1] == "close"


def test_a_replay_finishes_unless_it_holds_at_the_end():
    def replay(**kwargs) -> ReplaySource:
        recording = Recording(path="r.ndjson", session=SESSION.to_json(),
                              event_lines=[ev(1).json_line().encode(),
                                           ev(2).json_line().encode()])
        source = ReplaySource(recording, speed=0, **kwargs)
        source.start()
        assert source.poll(0.01) == [ev(1), ev(2)]
        return source

    with pytest.raises(SourceFinished):
        replay().poll(0.01)
    held = replay(hold_at_end=True)
    assert held.poll(0.01) == [] and held.poll(0.01) == []
