"""`tracer watch` parsing and error contract, with a fake LiveSource (no kernel touched).

Every option of watch is checked for what reaches the source (RefusalFilter, Tuning) and the
stream loop (duration); every bad value must exit 2 with exactly one stderr line starting
"tracer:", and a TracerError from the source must exit 1 with its remedy on that line.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

from tracer import cli, stream
from tracer.errors import EnvironmentProblem, TracerError, UsageError
from tracer.filters import RefusalFilter
from tracer.kinds import KIND_LABELS, Kind
from tracer.model import (
    CounterDelta,
    Counters,
    End,
    Event,
    KindAvailability,
    Session,
    Tally,
    TallyRow,
)
from tracer.sinks.dashboard import Dashboard

ROOT = Path(__file__).resolve().parents[2]
NETNS = 4026531840
SESSION = Session(host="h", kernel="6.18.44", started=1700000000.0, tracer="0.1.0",
                  kinds={k: KindAvailability(True, "skb:kfree_skb") for k in KIND_LABELS},
                  sysctls={}, max_events_per_second=20000)
EVENT = Event(1700000001.0, Kind.SYN_DROP, "10.1.2.3", 51514, "10.0.0.1", 443, 4, NETNS,
              "ACCEPT_QUEUE_FULL")
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)


class FakeLiveSource(stream.Source):
    """Records what the CLI asked for; yields one event, then asks the loop to stop."""

    created: list[FakeLiveSource] = []
    fail_start: Exception | None = None
    fail_poll: Exception | None = None
    on_poll = None

    def __init__(self, selection: RefusalFilter, tuning) -> None:
        self.selection, self.tuning = selection, tuning
        self.flags: stream.StopFlags | None = None     # set by the spy on stream.run
        self.run_kwargs: dict = {}
        self.polls = 0
        self.closed = False
        FakeLiveSource.created.append(self)

    def start(self) -> Session:
        if FakeLiveSource.fail_start is not None:
            raise FakeLiveSource.fail_start
        return SESSION

    def poll(self, timeout: float) -> list[Event]:
        self.polls += 1
        if FakeLiveSource.fail_poll is not None:
            raise FakeLiveSource.fail_poll
        if FakeLiveSource.on_poll is not None:
            FakeLiveSource.on_poll()
        elif self.run_kwargs["duration"] is None:
            self.flags.stop.set()                     # as Ctrl-C would, after one poll
        return [EVENT] if self.polls == 1 else []

    def settle(self) -> list[Event]:
        return []

    def tally(self) -> Tally:
        return Tally(ts=1700000002.0, rows=[TallyRow(NETNS, "10.1.2.3", Kind.SYN_DROP, 1)])

    def counters(self) -> Counters:
        return Counters(ts=1700000002.0, counters=[])

    def end(self) -> End:
        return End(ts=1700000003.0, lost=0, counters=[CounterDelta(NETNS, "ListenDrops", 1)])

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake(monkeypatch):
    """The fake source in place of LiveSource, run() spied on, signal handlers restored."""
    import tracer.probe.source as source_module

    saved = {s: signal.getsignal(s) for s in SIGNALS}
    FakeLiveSource.created = []
    FakeLiveSource.fail_start = FakeLiveSource.fail_poll = FakeLiveSource.on_poll = None
    monkeypatch.setattr(source_module, "LiveSource", FakeLiveSource)
    real_run = stream.run

    def spy_run(source, sink, **kwargs):
        source.flags = kwargs.get("flags")
        source.run_kwargs = kwargs
        return real_run(source, sink, **kwargs)

    monkeypatch.setattr(stream, "run", spy_run)
    yield FakeLiveSource
    for s, handler in saved.items():
        signal.signal(s, handler)


def invoke(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        cli.main(list(args))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def ok(fake, capsys, *args: str) -> FakeLiveSource:
    code, out, err = invoke(capsys, "watch", "--json", *args)
    assert (code, err) == (0, "")
    assert [json.loads(line)["type"] for line in out.splitlines()] == [
        "session", "event", "tally", "end"]
    assert len(fake.created) == 1 and fake.created[0].closed
    return fake.created[0]


def usage_error(fake, capsys, *args: str) -> str:
    """The one stderr line of a usage error (exit 2, nothing on stdout, no source)."""
    code, out, err = invoke(capsys, *args)
    assert code == 2, err
    assert out == ""
    assert err.startswith("tracer: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert fake.created == []
    return err.rstrip("\n")


# ---------------------------------------------------------------- the stream

def test_json_is_pure_ndjson_on_stdout(fake, capsys):
    code, out, err = invoke(capsys, "watch", "--json")
    assert (code, err) == (0, "")
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0] == SESSION.to_json()
    assert lines[1] == EVENT.to_json()
    assert [x["type"] for x in lines] == ["session", "event", "tally", "end"]


def test_text_output_without_json(fake, capsys):
    code, out, err = invoke(capsys, "watch")
    assert (code, err) == (0, "")
    assert out.startswith("Tracing TCP refusals on h (Linux 6.18.44), Ctrl-C to end.\n")
    assert "\nTIME     KIND           PEER:PORT             > LOCAL:PORT" in out
    assert " syn_drop       10.1.2.3:51514        > 10.0.0.1:443 " in out
    assert "Kernel counters: ListenDrops +1 (netns 4026531840)" in out
    assert not any(line.lstrip().startswith("{") for line in out.splitlines())


def test_defaults(fake, capsys):
    source = ok(fake, capsys)
    assert source.selection == RefusalFilter()
    assert source.selection.is_everything
    assert source.tuning.max_events_per_second == 20000
    assert source.run_kwargs["duration"] is None


def test_sigterm_is_a_normal_end_with_final_lines(fake, capsys):
    fake.on_poll = lambda: os.kill(os.getpid(), signal.SIGTERM)
    code, out, err = invoke(capsys, "watch", "--json")
    assert (code, err) == (0, "")
    assert [json.loads(x)["type"] for x in out.splitlines()] == ["session", "event", "tally",
                                                                  "end"]


# ---------------------------------------------------------------- -P/--port

def test_ports_are_repeatable(fake, capsys):
    source = ok(fake, capsys, "-P", "80", "--port", "443", "-P", "8443", "-P", "443")
    assert source.selection.ports == frozenset({80, 443, 8443})


@pytest.mark.parametrize("value", ["1", "65535"])
def test_port_bounds_are_accepted(fake, capsys, value):
    assert ok(fake, capsys, "-P", value).selection.ports == frozenset({int(value)})


@pytest.mark.parametrize("value", ["0", "70000", "65536", "-1", "http"])
def test_bad_port(fake, capsys, value):
    line = usage_error(fake, capsys, "watch", "-P", value)
    assert line.startswith("tracer: Invalid value for '-P' / '--port': ")
    assert line.endswith("(see 'tracer watch --help')")


# ---------------------------------------------------------------- --peer

@pytest.mark.parametrize("args, networks", [
    (["--peer", "10.1.2.0/24"], ["10.1.2.0/24"]),
    (["--peer", "192.0.2.7"], ["192.0.2.7/32"]),
    (["--peer", "2001:db8::/32", "--peer", "2001:db8::9"], ["2001:db8::/32", "2001:db8::9/128"]),
    (["--peer", "::ffff:10.0.0.0/104"], ["10.0.0.0/8"]),
])
def test_peer(fake, capsys, args, networks):
    got = ok(fake, capsys, *args).selection.networks
    assert got == tuple(ipaddress.ip_network(n) for n in networks)
    assert [n.version for n in got] == [ipaddress.ip_network(n).version for n in networks]


@pytest.mark.parametrize("value", ["10.0.0.0/33", "10.0.0.300", "office", "2001:db8::/200"])
def test_bad_peer(fake, capsys, value):
    assert usage_error(fake, capsys, "watch", "--peer", value) == (
        f"tracer: --peer {value!r} is not an address or CIDR: "
        "use e.g. 10.1.2.0/24, 2001:db8::/64 or 192.0.2.7")


# ---------------------------------------------------------------- --kind

def test_kinds(fake, capsys):
    source = ok(fake, capsys, "--kind", "syn_drop", "--kind", "tw_paws", "--kind", "PAWS")
    assert source.selection.kinds == frozenset({Kind.SYN_DROP, Kind.TW_PAWS, Kind.PAWS})


def test_unknown_kind_lists_the_kinds(fake, capsys):
    assert usage_error(fake, capsys, "watch", "--kind", "syn_drop", "--kind", "rst") == (
        "tracer: unknown kind 'rst': choose from syn_drop, ack_drop, syn_cookie, cookie_fail, "
        "synack_retrans, tw_reuse_out, tw_reuse_in, tw_paws, paws, paws_active")


# ---------------------------------------------------------------- -4 / -6

@pytest.mark.parametrize("flag, family", [("-4", 4), ("-6", 6)])
def test_family(fake, capsys, flag, family):
    assert ok(fake, capsys, flag).selection.family == family


def test_4_and_6_together(fake, capsys):
    assert usage_error(fake, capsys, "watch", "-4", "-6") == (
        "tracer: -4 and -6 exclude each other: give at most one of them")


# ---------------------------------------------------------------- --netns

def test_netns_inodes_and_names(fake, capsys, tmp_path, monkeypatch):
    import tracer.kernel.netns as netns

    (tmp_path / "blue").touch()
    monkeypatch.setattr(netns, "NETNS_DIR", str(tmp_path))
    source = ok(fake, capsys, "--netns", "4026531840", "--netns", "blue", "--netns", "12")
    assert source.selection.netns == frozenset({NETNS, 12, (tmp_path / "blue").stat().st_ino})


def test_netns_zero(fake, capsys):
    assert usage_error(fake, capsys, "watch", "--netns", "0") == (
        "tracer: --netns '0' is not a namespace inode: pass a positive inode "
        "(stat -L -c %i /proc/PID/ns/net) or a name")


@pytest.mark.parametrize("value", ["no-such-namespace", "../etc", "a/b"])
def test_netns_unknown_name(fake, capsys, tmp_path, monkeypatch, value):
    import tracer.kernel.netns as netns

    monkeypatch.setattr(netns, "NETNS_DIR", str(tmp_path))
    line = usage_error(fake, capsys, "watch", "--netns", value)
    assert line.startswith(f"tracer: unknown network namespace {value!r}: ")
    assert "ip netns list" in line


# ---------------------------------------------------------------- --duration

def test_duration_reaches_the_loop(fake, capsys):
    source = ok(fake, capsys, "--duration", "0.05")
    assert source.run_kwargs["duration"] == 0.05
    assert source.polls >= 1


@pytest.mark.parametrize("value", ["0", "-1", "-0.5", "soon"])
def test_bad_duration(fake, capsys, value):
    assert usage_error(fake, capsys, "watch", "--duration", value).startswith(
        "tracer: Invalid value for '--duration': ")


# ---------------------------------------------------------------- --max-events-per-second

@pytest.mark.parametrize("value", [0, 1, 5000])
def test_event_cap(fake, capsys, value):
    source = ok(fake, capsys, "--max-events-per-second", str(value))
    assert source.tuning.max_events_per_second == value


def test_negative_event_cap(fake, capsys):
    assert usage_error(fake, capsys, "watch", "--max-events-per-second", "-1").startswith(
        "tracer: Invalid value for '--max-events-per-second': ")


# ---------------------------------------------------------------- --interval, unknowns

def test_interval_is_accepted_and_bounded(fake, capsys):
    ok(fake, capsys, "--interval", "0.1")
    fake.created = []
    assert usage_error(fake, capsys, "watch", "--interval", "0.05").startswith(
        "tracer: Invalid value for '--interval': ")


@pytest.mark.parametrize("args", [["watch", "--bogus"], ["watch", "-P"], ["nonsense"],
                                  ["watch", "extra-argument"]])
def test_other_usage_errors_are_one_line(fake, capsys, args):
    usage_error(fake, capsys, *args)


def test_every_option_at_once(fake, capsys):
    source = ok(fake, capsys, "-P", "443", "--peer", "10.0.0.0/8", "--kind", "ack_drop", "-4",
                "--netns", "7", "--duration", "0.01", "--interval", "2",
                "--max-events-per-second", "100")
    assert source.selection == RefusalFilter.build(ports=[443], peers=["10.0.0.0/8"],
                                               kinds=["ack_drop"], family=4, netns=[7])
    assert source.tuning.max_events_per_second == 100
    assert source.run_kwargs["duration"] == 0.01


# ---------------------------------------------------------------- runtime errors

def test_tracer_error_from_the_source_is_exit_1_with_the_remedy(fake, capsys):
    fake.fail_start = EnvironmentProblem("the tracer needs root to load BPF programs",
                                         "run it with sudo (or as root)")
    code, out, err = invoke(capsys, "watch", "--json")
    assert code == 1
    assert out == ""
    assert err == ("tracer: the tracer needs root to load BPF programs: "
                   "run it with sudo (or as root)\n")
    assert fake.created[0].closed


def test_plain_tracer_error_mid_stream(fake, capsys):
    fake.fail_poll = TracerError("the ring buffer vanished", "restart the tracer")
    code, out, err = invoke(capsys, "watch", "--json")
    assert code == 1
    assert [json.loads(x)["type"] for x in out.splitlines()] == ["session"]
    assert err == "tracer: the ring buffer vanished: restart the tracer\n"
    assert fake.created[0].closed


def test_usage_error_raised_by_the_source_is_exit_2(fake, capsys):
    fake.fail_start = UsageError("nothing to trace", "select a kind this kernel has")
    code, _, err = invoke(capsys, "watch")
    assert (code, err) == (2, "tracer: nothing to trace: select a kind this kernel has\n")


def test_internal_error_is_one_line(fake, capsys):
    fake.fail_start = KeyError("x")
    code, _, err = invoke(capsys, "watch")
    assert code == 1
    assert err == "tracer: internal error: KeyError: 'x' (run with --debug for the traceback)\n"


def test_broken_pipe_is_a_normal_end(fake, monkeypatch):
    fd = os.open(os.devnull, os.O_WRONLY)

    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError

        def flush(self):
            pass

        def fileno(self):
            return fd

    try:
        monkeypatch.setattr(sys, "stdout", ClosedPipe())
        with pytest.raises(SystemExit) as exc:
            cli.main(["watch", "--json"])
        assert exc.value.code == 0
        assert fake.created[0].closed
    finally:
        os.close(fd)


# ---------------------------------------------------------------- python -m tracer

def python_m(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracer", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_python_m_tracer_help():
    r = python_m("--help")
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout.startswith("Usage: tracer [OPTIONS] COMMAND [ARGS]...")
    assert "watch" in r.stdout and "live" in r.stdout


def test_python_m_tracer_version():
    r = python_m("--version")
    assert (r.returncode, r.stdout, r.stderr) == (0, "tracer, version 0.1.0\n", "")


def test_python_m_tracer_watch_help_lists_every_option():
    r = python_m("watch", "--help")
    assert r.returncode == 0
    for option in ("-P, --port", "--peer CIDR", "--kind KIND", "-4", "-6",
                   "--netns INODE|NAME", "--duration S", "--interval S",
                   "--max-events-per-second N", "--json"):
        assert option in r.stdout, option


def test_python_m_tracer_usage_error_is_one_line_exit_2():
    r = python_m("watch", "-P", "0")
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr == ("tracer: Invalid value for '-P' / '--port': 0 is not in the range "
                        "1<=x<=65535. (see 'tracer watch --help')\n")


# ---------------------------------------------------------------- the board's terminal

class PtyTerminal:
    """A pseudo-terminal standing in for the user's: stdin and stdout are its slave side,
    and a thread drains the master side so everything drawn can be inspected."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.stdin = os.fdopen(os.dup(self.slave), "r")
        self.stdout = os.fdopen(os.dup(self.slave), "w")
        self.modes = termios.tcgetattr(self.slave)
        self._drawn = bytearray()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:                  # EIO: every slave descriptor is closed
                return
            if not chunk:
                return
            self._drawn += chunk

    def drawn(self) -> str:
        """What reached the terminal so far (waits for the drain to catch up)."""
        self.stdout.flush()
        time.sleep(0.2)
        return self._drawn.decode(errors="replace")

    def close(self) -> None:
        for f in (self.stdin, self.stdout):
            f.close()
        os.close(self.slave)
        self._reader.join(5)
        os.close(self.master)


ALT_SCREEN_ON, ALT_SCREEN_OFF, SHOW_CURSOR = "\x1b[?1049h", "\x1b[?1049l", "\x1b[?25h"


@pytest.fixture
def terminal(monkeypatch):
    """A pty for the test to put sys.stdin and sys.stdout on (capture takes them back
    when the test body starts, so the test does it)."""
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    pty = PtyTerminal()
    yield pty
    pty.close()


def test_live_failing_mid_stream_gives_the_terminal_back(fake, terminal, capsys, monkeypatch):
    """The board is on the alternate screen with echo off when the source fails: the
    shell gets its screen, cursor and echo back, and the error is still one line, exit 1."""
    monkeypatch.setattr(sys, "stdin", terminal.stdin)          # as when run from a shell
    monkeypatch.setattr(sys, "stdout", terminal.stdout)
    fake.fail_poll = TracerError("the ring buffer vanished", "restart the tracer")
    with pytest.raises(SystemExit) as exc:
        cli.main(["live"])
    _, err = capsys.readouterr()
    assert exc.value.code == 1, err
    assert err == "tracer: the ring buffer vanished: restart the tracer\n"
    assert fake.created[0].closed
    assert termios.tcgetattr(terminal.slave) == terminal.modes       # echo and line mode
    drawn = terminal.drawn()
    assert ALT_SCREEN_ON in drawn
    assert ALT_SCREEN_OFF in drawn[drawn.rindex(ALT_SCREEN_ON):]
    assert SHOW_CURSOR in drawn[drawn.rindex(ALT_SCREEN_ON):]


def board_on(terminal: PtyTerminal) -> Dashboard:
    console = Console(file=terminal.stdout, force_terminal=True, width=100, height=30)
    return Dashboard(console, on_quit=lambda: None, keyboard=terminal.stdin)


def test_the_board_gives_the_terminal_back_when_the_stream_fails(terminal):
    """run() closes the sink on an error between the session line and the end line."""
    class FailingSource(FakeLiveSource):
        def poll(self, timeout: float) -> list[Event]:
            self.polls += 1
            if self.polls == 4:
                raise TracerError("the ring buffer vanished", "restart the tracer")
            time.sleep(timeout)
            return [EVENT]

    source = FailingSource(RefusalFilter(), None)
    board = board_on(terminal)
    with pytest.raises(TracerError, match="ring buffer vanished"):
        stream.run(source, board, periodic=0.1, poll_interval=0.05)
    assert source.closed
    assert termios.tcgetattr(terminal.slave) == terminal.modes
    drawn = terminal.drawn()
    assert "10.1.2.3" in drawn                             # the board was up
    assert ALT_SCREEN_OFF in drawn[drawn.rindex(ALT_SCREEN_ON):]
    board.close()                                          # twice: nothing more happens
    assert terminal.drawn() == drawn


def test_closing_a_board_that_never_started_touches_nothing(terminal):
    board = board_on(terminal)
    board.close()
    board.close()
    assert termios.tcgetattr(terminal.slave) == terminal.modes
    assert terminal.drawn() == ""
