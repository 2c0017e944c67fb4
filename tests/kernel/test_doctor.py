"""`tracer doctor` on a real full listener in a namespace: the finding names the listener,
its queue, its owning process and the counter that moved, and suggests the live command."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time

from tests.kernel.conftest import DEADLINE, fill_accept_queue, send_syns
from tracer.lab import CLIENTS4, SERVER4, SERVER6, Lab

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def doctor(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tracer", "doctor", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_full_listener_is_the_first_finding(lab: Lab) -> None:
    port = 8461
    listener = lab.socket_in(lab.srv)
    listener.bind((SERVER4, port))
    listener.listen(1)
    idle = lab.socket_in(lab.srv, family=10)           # an IPv6 listener with room: no finding
    idle.bind((SERVER6, port + 1))
    idle.listen(16)
    held = fill_accept_queue(lab, SERVER4, port, 2, listener)   # 2 queued on backlog 1: full
    proc = doctor("--netns", lab.srv, "--json", "--sample", "1.5")
    # SYNs dropped during the sample, whenever the doctor's sample begins: rounds of one
    # raw SYN per client address until it exits (each round's SYNs from fresh ports).
    stop = threading.Event()

    def drops() -> None:
        deadline = time.monotonic() + 2 * DEADLINE
        for n in itertools.count():
            if stop.is_set() or n >= 2000 or time.monotonic() > deadline:
                return
            send_syns(lab, SERVER4, port, dict.fromkeys(CLIENTS4, 1),
                      first_port=20000 + n * len(CLIENTS4))
            stop.wait(0.05)                            # pacing: 80 SYNs a second

    sender = threading.Thread(target=drops)
    sender.start()
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        stop.set()
        sender.join()
        proc.kill()
        for s in held + [listener, idle]:
            s.close()
    assert proc.returncode == 0, err
    report = json.loads(out)
    assert report["netns"] == Lab.inode(lab.srv)

    mine = [ln for ln in report["listeners"] if ln["port"] == port]
    assert mine == [{"family": 4, "address": SERVER4, "port": port, "queued": 2, "backlog": 1,
                     "full": True, "pid": os.getpid(), "command": mine[0]["command"],
                     "peak_queued": 2, "full_during_sample": True}]
    other = [ln for ln in report["listeners"] if ln["port"] == port + 1]
    assert other and other[0]["family"] == 6 and not other[0]["full"]
    assert other[0]["backlog"] == 16

    first = report["findings"][0]
    assert first["id"] == "accept_queue_full"
    assert f"{SERVER4}:{port}" in first["text"] and "(2/1)" in first["text"]
    assert f"pid {os.getpid()}" in first["text"]
    assert "ListenOverflows +" in first["text"]
    assert first["command"] == (f"tracer live -P {port} --kind syn_drop --kind ack_drop "
                                f"--netns {lab.srv}")
    assert [f["id"] for f in report["findings"]].count("accept_queue_full") == 1
    overflows = report["counters"]["ListenOverflows"]
    assert overflows["during_sample"] >= len(CLIENTS4)
    assert overflows["since_boot"] >= overflows["during_sample"]
    assert report["sysctls"]["net.ipv4.tcp_tw_recycle"]["value"].startswith("removed in")


def test_text_view_and_quiet_namespace(lab: Lab) -> None:
    proc = doctor("--netns", lab.srv, "--sample", "0")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "no refusals now" in out
    assert "net.core.somaxconn" in out


def test_unknown_namespace_is_a_usage_error() -> None:
    proc = doctor("--netns", "no-such-namespace-xyz", "--sample", "0")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and "unknown network namespace" in err
