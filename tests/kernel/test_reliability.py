"""Faults an operator's host can throw at the tracer (issue 9): every stopping signal
detaches every BPF program, SIGKILL leaves a readable recording and nothing that breaks the
next start, two tracers count the same refusals independently, and a full disk is one
clear error with every line written before kept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.kernel.conftest import ROOT, STARTUP, accept_queue_drops, wait_until
from tracer.lab import CLIENTS4, Lab
from tracer.recording import read

TRACER = [sys.executable, "-m", "tracer"]
TRUTH = {CLIENTS4[0]: 3, CLIENTS4[1]: 1, CLIENTS4[2]: 2}


def loaded_programs() -> set[int]:
    """Ids of every BPF program loaded on this machine now."""
    out = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    return {p["id"] for p in json.loads(out or "[]")}


def programs_of(pid: int) -> set[int]:
    """Ids of the BPF programs process `pid` holds descriptors on (its fdinfo)."""
    ids = set()
    fdinfo = Path(f"/proc/{pid}/fdinfo")
    for entry in fdinfo.iterdir():
        try:
            text = entry.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("prog_id:"):
                ids.add(int(line.split()[1]))
    return ids


def start_recording(path: Path, *extra: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([*TRACER, "record", "-o", str(path), *extra], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def session_line() -> bool:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        return path.exists() and b"\n" in path.read_bytes()[:65536]

    wait_until(session_line, STARTUP, "the recording's session line")
    return proc


def recorded(path: Path) -> list[dict]:
    """The complete lines of a plain recording being written (flushed line by line)."""
    return [json.loads(x) for x in path.read_bytes().split(b"\n")[:-1]]


def events_per_peer(lines: list[dict]) -> dict[str, int]:
    per_peer: dict[str, int] = {}
    for e in lines:
        if e["type"] == "event" and e["kind"] == "syn_drop":
            per_peer[e["peer"]] = per_peer.get(e["peer"], 0) + 1
    return per_peer


def wait_gone(ids: set[int], timeout: float = 10) -> set[int]:
    """The ids still loaded after up to `timeout` s (program release can lag the exit)."""
    deadline = time.monotonic() + timeout
    left = ids & loaded_programs()
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = ids & loaded_programs()
    return left


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_stopping_signals_detach_everything_and_end_the_recording(tmp_path, sig):
    path = tmp_path / "rec.ndjson"
    proc = start_recording(path)
    try:
        mine = programs_of(proc.pid)
        assert len(mine) >= 5, "the tracer's programs are loaded"
        proc.send_signal(sig)                           # handlers are set before the session
        assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        proc.kill()
    assert wait_gone(mine) == set()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines[0]["type"] == "session" and lines[-1]["type"] == "end"
    assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")


def test_sigkill_keeps_complete_lines_and_the_next_start_works(tmp_path):
    path = tmp_path / "killed.ndjson"
    with Lab("kill", prefix="rtk") as lab:
        proc = start_recording(path, "--netns", lab.srv, "--max-events-per-second", "0",
                               "--interval", "0.2")
        mine = programs_of(proc.pid)
        accept_queue_drops(lab, 9501, TRUTH)

        def complete() -> bool:
            """Every refusal's event, and a periodic tally that counts them all."""
            lines = recorded(path)
            tallies = [x for x in lines if x["type"] == "tally"]
            return events_per_peer(lines) == TRUTH and bool(tallies) and {
                r["peer"]: r["count"] for r in tallies[-1]["rows"]} == TRUTH

        wait_until(complete, what="a recording holding every refusal and a tally of them")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert wait_gone(mine) == set(), "the kernel detached the killed tracer's programs"
    recording = read(str(path))
    assert recording.session is not None
    per_peer: dict[str, int] = {}
    for e in recording.events:
        if e["kind"] == "syn_drop":
            per_peer[e["peer"]] = per_peer.get(e["peer"], 0) + 1
    assert per_peer == TRUTH
    lines = path.read_bytes().split(b"\n")
    assert all(json.loads(x) for x in lines[:-1])       # every complete line is valid
    again = tmp_path / "again.ndjson"
    proc = start_recording(again)                       # nothing left that breaks a start
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0


def test_two_tracers_count_the_same_refusals_independently(tmp_path):
    with Lab("two", prefix="rtk") as lab:
        first = start_recording(tmp_path / "a.ndjson", "--netns", lab.srv)
        second = start_recording(tmp_path / "b.ndjson", "--netns", lab.srv, "--kind",
                                 "syn_drop")
        try:
            # Returns once the kernel counted every drop: the exact tally each tracer writes
            # when it stops holds them all.
            accept_queue_drops(lab, 9502, TRUTH)
        finally:
            for proc in (first, second):
                proc.send_signal(signal.SIGINT)
            codes = [p.wait(timeout=30) for p in (first, second)]
    assert codes == [0, 0]
    for name in ("a.ndjson", "b.ndjson"):
        lines = [json.loads(x) for x in (tmp_path / name).read_text().splitlines()]
        tally = {r["peer"]: r["count"] for r in lines[-2]["rows"] if r["kind"] == "syn_drop"}
        assert tally == TRUTH, name


def test_a_full_disk_is_one_clear_error_and_keeps_what_was_written(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], check=True,
                   timeout=10)
    try:
        filler = mnt / "filler"
        with open(filler, "wb") as f:                   # leave a few KiB free
            try:
                f.write(b"x" * (64 * 1024 - 6 * 1024))
            except OSError:
                pass
        path = mnt / "rec.ndjson"
        with Lab("disk", prefix="rtk") as lab:
            proc = start_recording(path, "--netns", lab.srv, "--max-events-per-second", "0",
                                   "--interval", "0.1")
            try:
                deadline = time.monotonic() + 30
                port = 9600
                while proc.poll() is None and time.monotonic() < deadline:
                    accept_queue_drops(lab, port, {ip: 2 for ip in CLIENTS4})
                    port += 1
                code = proc.wait(timeout=30)
            finally:
                proc.kill()
        err = proc.stderr.read() if proc.stderr else ""
        assert code == 1, err
        last = err.strip().splitlines()[-1]
        assert last.startswith("tracer: the disk is full while writing"), err
        assert "free some space" in last and "Traceback" not in err
        lines = path.read_bytes().split(b"\n")
        complete = [json.loads(x) for x in lines[:-1]]    # every complete line parses
        assert complete[0]["type"] == "session" and len(complete) > 1
        assert os.stat(path).st_mode & 0o777 == 0o600
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, timeout=10)
