"""The command line as scripts use it: its own process, --duration, filters, signals.

These start their own tracer (one bcc compile each), because what they check is the life
of a whole process: the session line before traffic, the end after --duration or a
signal, exit code 0, filters applied to events and tally alike. A tracer that stops drains
its ring buffer and waits out its grace window first, so once the kernel has handled the
traffic (accept_queue_drops waits for that), its final output holds every event of it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from tests.kernel.conftest import ROOT, STARTUP, accept_queue_drops, read_line
from tracer.lab import CLIENTS4, SERVER4, Lab

TRACER = [sys.executable, "-m", "tracer"]


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*TRACER, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def first_line(proc: subprocess.Popen[str], timeout: float = STARTUP) -> str:
    assert proc.stdout is not None
    line = read_line(proc.stdout, timeout)
    assert line, f"no output: {proc.stderr.read() if proc.stderr else ''}"
    return line


def test_duration_filters_and_final_lines(tmp_path):
    with Lab("cli1", prefix="rtk") as lab:
        proc = start("watch", "--json", "--duration", "4", "-P", "9201",
                     "--peer", "10.213.0.12/31", "--kind", "syn_drop",
                     "--netns", lab.srv, "--max-events-per-second", "0")
        session = json.loads(first_line(proc))
        started = time.monotonic()
        assert session["type"] == "session" and session["format"] == 1
        assert session["kinds"]["syn_drop"] == {"available": True,
                                                "via": "skb:consume_skb+net:net_dev_queue"}
        accept_queue_drops(lab, 9201, dict(zip(CLIENTS4, (1, 2, 3, 4), strict=True)))
        accept_queue_drops(lab, 9202, {CLIENTS4[1]: 5})          # other port: filtered out
        # A precondition, not a check of the tracer: all traffic happened while it ran.
        assert time.monotonic() - started < 3.5, "the traffic outlasted --duration"
        out, err = proc.communicate(timeout=30)
        elapsed = time.monotonic() - started
        netns = Lab.inode(lab.srv)
    assert proc.returncode == 0, err
    assert 3.5 < elapsed < 8, "--duration counts from the session line"
    lines = [json.loads(x) for x in out.splitlines()]
    assert [x["type"] for x in lines[-2:]] == ["tally", "end"]
    events = [x for x in lines if x["type"] == "event"]
    assert sorted((e["peer"], e["local_port"]) for e in events) == \
        [(CLIENTS4[1], 9201)] * 2 + [(CLIENTS4[2], 9201)] * 3
    rows = {(r["peer"], r["kind"]): r["count"] for r in lines[-2]["rows"]}
    assert rows == {(CLIENTS4[1], "syn_drop"): 2, (CLIENTS4[2], "syn_drop"): 3}
    counters = {(c["netns"], c["name"]): c["delta"] for c in lines[-1]["counters"]}
    assert counters[(netns, "ListenDrops")] == 1 + 2 + 3 + 4 + 5


def test_sigterm_is_a_normal_end_and_text_mode_prints_bcc_style(tmp_path):
    with Lab("cli2", prefix="rtk") as lab:
        proc = start("watch", "--netns", str(Lab.inode(lab.srv)))
        banner = first_line(proc)
        assert banner.startswith("Tracing TCP refusals")
        assert proc.stdout is not None
        header = ""
        for _ in range(20):                                      # a few lines of preamble
            header = read_line(proc.stdout)
            if header.startswith("TIME") or not header:
                break
        assert header.split() == ["TIME", "KIND", "PEER:PORT", ">", "LOCAL:PORT", "REASON",
                                  "NETNS"]
        accept_queue_drops(lab, 9203, {CLIENTS4[3]: 2})
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    rows = [x for x in out.splitlines() if x[:2].isdigit() and " syn_drop " in x]
    assert len(rows) == 2
    for row in rows:
        assert len(row) < 100
        assert f"{CLIENTS4[3]}:" in row and f"> {SERVER4}:9203" in row
        assert "ACCEPT_QUEUE_FULL" in row


def test_usage_errors_exit_2_with_one_line():
    for args in (["watch", "--peer", "10.0.0.0/33"], ["watch", "--kind", "nope"],
                 ["watch", "-P", "70000"], ["watch", "-4", "-6"],
                 ["watch", "--netns", "no-such-namespace"]):
        r = subprocess.run([*TRACER, *args], cwd=ROOT, capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stdout == ""
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert r.stderr.startswith("tracer: ")
