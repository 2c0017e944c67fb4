"""Recording a real scenario: a clean recording's report equals its tally and the kernel's
counters; a recorder killed with SIGKILL still reports exact per-peer totals."""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import sys

from tests.kernel.conftest import ROOT, STARTUP, accept_queue_drops, wait_until
from tracer.lab import CLIENTS4, Lab

TRUTH = {CLIENTS4[0]: 5, CLIENTS4[1]: 2, CLIENTS4[2]: 4, CLIENTS4[3]: 1}


def record(path, lab: Lab, *extra: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "tracer", "record", "-o", str(path),
                             "--netns", lab.srv, "--max-events-per-second", "0", *extra],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    def started() -> bool:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        return has_session_line(path)

    wait_until(started, STARTUP, "the recording's session line")
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


def recorded_drops(path) -> dict[str, int]:
    """syn_drop events per peer in the complete lines of a plain recording being written."""
    out: dict[str, int] = {}
    for raw in path.read_bytes().split(b"\n")[:-1]:
        line = json.loads(raw)
        if line["type"] == "event" and line["kind"] == "syn_drop":
            out[line["peer"]] = out.get(line["peer"], 0) + 1
    return out


def report(*args: str) -> dict:
    r = subprocess.run([sys.executable, "-m", "tracer", "report", *args, "--format", "json"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_clean_recording_report_equals_its_tally_and_listendrops(tmp_path):
    path = tmp_path / "clean.ndjson.gz"
    with Lab("rec1", prefix="rtk") as lab:
        proc = record(path, lab)
        # Returns once the kernel counted every drop: the recorder, stopped, drains its
        # ring buffer and writes an exact tally of them.
        accept_queue_drops(lab, 9400, TRUTH)
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
        wait_until(lambda: recorded_drops(path) == TRUTH,
                   what=lambda: f"every refusal recorded (so far {recorded_drops(path)})")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    out = report(str(path))
    assert out["partial"] is True
    assert {r["peer"]: r["total"] for r in out["rows"]} == TRUTH
