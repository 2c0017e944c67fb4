"""Recording a real scenario: a clean recording's report equals its tally and the kernel's
counters; a recorder killed with SIGKILL still reports exact per-peer totals."""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import sys
import time

from tests.kernel.conftest import ROOT, accept_queue_drops
from tracer.lab import CLIENTS4, Lab

TRUTH = {CLIENTS4[0]: 5, CLIENTS4[1]: 2, CLIENTS4[2]: 4, CLIENTS4[3]: 1}


def record(path, lab: Lab, *extra: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "tracer", "record", "-o", str(path),
                             "--netns", lab.srv, "--max-events-per-second", "0", *extra],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60
    while not has_session_line(path):
        assert proc.poll() is None and time.monotonic() < deadline, "no session line"
        time.sleep(0.1)
    return proc


def has_session_line(path) -> bool:
    """The recording's first line is complete: decompressed for .gz, whose header is
    written before tracing starts (and may hold a newline byte in its mtime)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            return f.readline().endswith(b"\n")
    except (OSError, EOFError):
        return False


def report(*args: str) -> dict:
    r = subprocess.run([sys.executable, "-m", "tracer", "report", *args, "--format", "json"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_clean_recording_report_equals_its_tally_and_listendrops(tmp_path):
    path = tmp_path / "clean.ndjson.gz"
    with Lab("rec1", prefix="rtk") as lab:
        proc = record(path, lab)
        accept_queue_drops(lab, 9400, TRUTH)
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    out = report(str(path))
    assert out["partial"] is False and out["counted_from"] == "tally"
    assert {r["peer"]: r["kinds"] for r in out["rows"]} == \
        {ip: {"syn_drop": n} for ip, n in TRUTH.items()}
    lines = [json.loads(x) for x in gzip.open(path)]
    tally = {r["peer"]: r["count"] for r in lines[-2]["rows"]}
    assert tally == TRUTH
    drops = [c["delta"] for c in lines[-1]["counters"] if c["name"] == "ListenDrops"]
    assert drops == [sum(TRUTH.values())]


def test_killed_recorder_still_reports_exact_per_peer_totals(tmp_path):
    path = tmp_path / "killed.ndjson"
    with Lab("rec2", prefix="rtk") as lab:
        proc = record(path, lab)
        accept_queue_drops(lab, 9401, TRUTH)
        time.sleep(0.8)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    out = report(str(path))
    assert out["partial"] is True
    assert {r["peer"]: r["total"] for r in out["rows"]} == TRUTH
