"""A machine missing part of what the tracer needs (issue 9): it mounts tracefs itself, says
exactly which kinds a kernel without some drop reasons cannot show while counting the rest,
and refuses in one line, with the remedy, without BTF, headers, bcc or root.

Each missing piece is made in a private mount namespace (`unshare -m`) around the tracer's
own process, so the machine itself is never changed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from tests.kernel.conftest import ROOT, STARTUP, accept_queue_drops, read_line
from tracer.lab import CLIENTS4, Lab

PY = sys.executable


def tracer(*args: str, prepare: str = "", env: dict | None = None,
           timeout: float = STARTUP) -> subprocess.CompletedProcess[str]:
    """`python -m tracer ARGS` in a private mount namespace after the fixed shell `prepare`."""
    script = f"{prepare}\nexec \"$0\" -m tracer \"$@\""
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-ec",
                           script, PY, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_missing_drop_reasons_disable_exactly_their_kinds_and_the_rest_counts():
    hide = {"TRACER_HIDE_DROP_REASONS": "TCP_RFC7323_TW_PAWS,TCP_LISTEN_OVERFLOW"}
    with Lab("mask", prefix="rtk") as lab:
        proc = subprocess.Popen([PY, "-m", "tracer", "watch", "--json", "--netns", lab.srv,
                                 "--duration", "3", "--max-events-per-second", "0"],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env={**os.environ, **hide})
        assert proc.stdout is not None
        session = json.loads(read_line(proc.stdout, STARTUP))
        started = time.monotonic()
        truth = {CLIENTS4[0]: 2, CLIENTS4[1]: 1}
        accept_queue_drops(lab, 9701, truth)     # counted by the kernel: in the final tally
        # A precondition, not a check of the tracer: all traffic happened while it ran.
        assert time.monotonic() - started < 2.5, "the traffic outlasted --duration"
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    kinds = session["kinds"]
    assert kinds["tw_paws"] == {
        "available": False, "via": "skb:kfree_skb",
        "why": "no TCP_RFC7323_TW_PAWS drop reason on this kernel (Linux 6.16+)"}
    assert kinds["ack_drop"]["available"] is False
    assert "TCP_LISTEN_OVERFLOW" in kinds["ack_drop"]["why"]
    unavailable = sorted(k for k, v in kinds.items() if not v["available"])
    assert unavailable == ["ack_drop", "tw_paws"]
    tally = [json.loads(x) for x in out.splitlines()][-2]
    assert {r["peer"]: r["count"] for r in tally["rows"]} == truth


def test_selecting_only_unavailable_kinds_is_one_line():
    r = tracer("watch", "--kind", "tw_paws", "--duration", "1",
               env={"TRACER_HIDE_DROP_REASONS": "TCP_RFC7323_TW_PAWS"})
    assert r.returncode == 1 and r.stdout == ""
    line = one_line(r.stderr)
    assert line.startswith("tracer: no selected kind can be traced on this kernel (tw_paws: "
                           "no TCP_RFC7323_TW_PAWS drop reason")


def test_unmounted_tracefs_is_mounted_by_the_tracer():
    r = tracer("watch", "--json", "--duration", "0.5",
               prepare="umount /sys/kernel/tracing 2>/dev/null || true\n"
                       "test ! -d /sys/kernel/tracing/events")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[0])["type"] == "session"


def test_no_btf_no_headers_no_bcc_each_one_line_with_the_remedy(tmp_path):
    r = tracer("watch", "--duration", "1", prepare="mount -t tmpfs none /sys/kernel/btf")
    assert r.returncode == 1
    assert "CONFIG_DEBUG_INFO_BTF" in one_line(r.stderr)

    r = tracer("watch", "--duration", "1", prepare="mount -t tmpfs none /lib/modules")
    assert r.returncode == 1
    line = one_line(r.stderr)
    assert "kernel headers not found" in line and "./scripts/setup" in line

    fake = tmp_path / "nobcc" / "bcc"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no bcc here')\n")
    r = tracer("watch", "--duration", "1", env={"PYTHONPATH": str(fake.parent)})
    assert r.returncode == 1
    assert "bcc is not installed" in one_line(r.stderr)


def test_doctor_works_and_says_why_where_tracing_cannot():
    r = tracer("doctor", "--json", "--sample", "0", prepare="mount -t tmpfs none /lib/modules")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["tracing"]["available"] is False
    assert "kernel headers not found" in report["tracing"]["why"]
    assert any(f["id"] == "tracing_unavailable" for f in report["findings"])


def test_not_root_watch_refuses_and_doctor_still_answers():
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", PY, "-m", "tracer"]
    r = subprocess.run([*nobody, "watch", "--duration", "1"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1
    assert one_line(r.stderr) == ("tracer: the tracer needs root to load BPF programs: "
                                  "run it with sudo (or as root)")
    r = subprocess.run([*nobody, "doctor", "--json", "--sample", "0.2"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["tracing"]["available"] is False
    assert "needs root" in report["tracing"]["why"]
    assert report["findings"][0]["id"] == "tracing_unavailable"
    assert report["sample_seconds"] >= 0.2
