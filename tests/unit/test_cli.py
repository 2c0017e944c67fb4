"""Command-line parsing: every option of watch/live, every error path, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tracer import cli
from tracer.errors import EnvironmentProblem

ROOT = Path(__file__).resolve().parents[2]


class FakeLiveSource:
    """Stands in for the kernel: records what the CLI asked for."""

    created: list[FakeLiveSource] = []
    fail: Exception | None = None

    def __init__(self, selection, tuning) -> None:
        self.selection, self.tuning = selection, tuning
        FakeLiveSource.created.append(self)

    def start(self):
        if FakeLiveSource.fail:
            raise FakeLiveSource.fail
        from tests.unit.test_printer_and_stream import SESSION
        return SESSION

    def poll(self, timeout):
        return []

    def settle(self):
        return []

    def tally(self):
        from tests.unit.test_printer_and_stream import TALLY
        return TALLY

    def counters(self):
        from tracer.model import Counters
        return Counters(0.0, [])

    def end(self):
        from tests.unit.test_printer_and_stream import END
        return END

    def close(self):
        pass


@pytest.fixture
def fake(monkeypatch):
    import tracer.probe.source as source
    FakeLiveSource.created, FakeLiveSource.fail = [], None
    monkeypatch.setattr(source, "LiveSource", FakeLiveSource)
    return FakeLiveSource


def invoke(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        cli.main(args)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def test_watch_wires_every_option(fake, capsys, tmp_path, monkeypatch):
    import tracer.kernel.netns as netns
    (tmp_path / "blue").touch()
    monkeypatch.setattr(netns, "NETNS_DIR", str(tmp_path))
    code, out, err = invoke(["watch", "--json", "-P", "80", "--port", "443", "--peer",
                             "10.0.0.0/8", "--peer", "2001:db8::/32", "--kind", "syn_drop",
                             "--kind", "paws", "-6", "--netns", "4026531840", "--netns", "blue",
                             "--duration", "0.01", "--max-events-per-second", "0"], capsys)
    assert code == 0, err
    sel = fake.created[0].selection
    assert sel.ports == {80, 443} and sel.family == 6 and len(sel.networks) == 2
    assert {k.label for k in sel.kinds} == {"syn_drop", "paws"}
    assert sel.netns == {4026531840, (tmp_path / "blue").stat().st_ino}
    assert fake.created[0].tuning.max_events_per_second == 0
    assert [line.split('"type":"')[1].split('"')[0] for line in out.splitlines()] == \
        ["session", "tally", "end"]


@pytest.mark.parametrize("args, needle", [
    (["watch", "-P", "0"], "--port"),
    (["watch", "-P", "70000"], "--port"),
    (["watch", "--peer", "10.0.0.0/33"], "not an address or CIDR"),
    (["watch", "--kind", "nope"], "unknown kind 'nope': choose from syn_drop"),
    (["watch", "-4", "-6"], "-4 and -6"),
    (["watch", "--duration", "0"], "--duration"),
    (["watch", "--duration", "-1"], "--duration"),
    (["watch", "--max-events-per-second", "-1"], "--max-events-per-second"),
    (["watch", "--interval", "0"], "--interval"),
    (["watch", "--netns", "no-such-ns"], "unknown network namespace"),
    (["watch", "--bogus"], "No such option"),
    (["nonsense"], "No such command"),
])
def test_usage_errors_are_one_line_exit_2(fake, capsys, args, needle):
    code, out, err = invoke(args, capsys)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("tracer: ")
    assert needle in err
    assert fake.created == []


def test_runtime_error_is_one_line_with_remedy_exit_1(fake, capsys):
    fake.fail = EnvironmentProblem("the tracer needs root to load BPF programs", "run it with sudo")
    code, out, err = invoke(["watch", "--json"], capsys)
    assert code == 1
    assert err == "tracer: the tracer needs root to load BPF programs: run it with sudo\n"


def test_internal_error_is_one_line_without_debug(fake, capsys):
    fake.fail = RuntimeError("boom")
    code, _, err = invoke(["watch"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "--debug" in err
    fake.fail = RuntimeError("boom")
    code, _, err = invoke(["--debug", "watch"], capsys)
    assert code == 1 and "Traceback" in err


def test_live_refuses_a_non_terminal(fake, capsys):
    code, out, err = invoke(["live"], capsys)
    assert code == 2 and "not a terminal" in err and "tracer watch" in err


def test_python_dash_m_and_help():
    r = subprocess.run([sys.executable, "-m", "tracer", "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "watch" in r.stdout and "live" in r.stdout
    r = subprocess.run([sys.executable, "-m", "tracer", "watch", "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=30)
    for option in ("--port", "--peer", "--kind", "-4", "-6", "--netns", "--duration",
                   "--interval", "--max-events-per-second", "--json"):
        assert option in r.stdout
