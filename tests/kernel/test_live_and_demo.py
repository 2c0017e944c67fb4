"""`tracer live` on a real pseudo-terminal (tmux) and `tracer demo`, end to end."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

from tests.kernel.conftest import (
    DEADLINE,
    ROOT,
    STARTUP,
    fill_accept_queue,
    read_line,
    send_syns,
    wait_until,
)
from tracer.lab import CLIENTS4, SERVER4, Lab

TMUX = shutil.which("tmux")


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=10,
                          check=False).stdout


@pytest.mark.skipif(TMUX is None, reason="tmux is not installed (scripts/setup installs it)")
def test_live_shows_refused_peers_and_q_restores_the_terminal(lab, tmp_path):
    session = f"rtk-live-{os.getpid()}"
    status = tmp_path / "status"
    netns = Lab.inode(lab.srv)
    command = (f"cd {ROOT} && {sys.executable} -m tracer live --netns {netns} --interval 0.5;"
               f" echo rc=$? > {status}; stty -a >> {status}")
    tmux("new-session", "-d", "-s", session, "-x", "100", "-y", "30", command)
    try:
        wait_until(lambda: "tcp refusal tracer" in tmux("capture-pane", "-t", session, "-p"),
                   STARTUP, "the board")
        listener = lab.socket_in(lab.srv)
        listener.bind((SERVER4, 9300))
        listener.listen(2)
        fill = fill_accept_queue(lab, SERVER4, 9300, 3, listener)
        truth = {CLIENTS4[0]: 4, CLIENTS4[1]: 1, CLIENTS4[2]: 3, CLIENTS4[3]: 2}
        send_syns(lab, SERVER4, 9300, truth)      # raw SYNs: none is ever retransmitted
        screen = ""

        def board_shows_truth() -> bool:
            nonlocal screen
            screen = tmux("capture-pane", "-t", session, "-p")
            rows = {m.group(1): int(m.group(2)) for m in
                    re.finditer(r"^\s*\d+\s+(10\.213\.0\.\d+)\s+(\d+)\s", screen, re.M)}
            return rows == truth and "100%" in screen

        wait_until(board_shows_truth, what=lambda: f"the board to show {truth}:\n{screen}")
        assert re.search(r"ListenDrops\s+\+10\s+10 100%", screen), screen
        for s in fill:
            s.close()
        listener.close()
        tmux("send-keys", "-t", session, "q")
        wait_until(lambda: status.exists() and "speed" in status.read_text(), DEADLINE,
                   "q to end tracer live")
        text = status.read_text()
        assert text.startswith("rc=0")
        assert " icanon" in text and " echo" in text, "terminal left in cbreak mode"
    finally:
        tmux("kill-session", "-t", session)


def demo_namespaces(pid: int | None = None) -> list[str]:
    names = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
    prefix = "trdemo-" if pid is None else f"trdemo-{pid}-"
    return [n for n in names if n.startswith(prefix)]


def test_demo_headless_makes_every_available_kind_and_cleans_up_even_after_a_kill():
    killed = subprocess.Popen([sys.executable, "-m", "tracer", "demo", "--headless"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True)
    assert killed.stdout is not None and "session" in read_line(killed.stdout, STARTUP)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=10)
    assert demo_namespaces(killed.pid), "a killed demo leaves its namespaces behind"

    r = subprocess.run([sys.executable, "-m", "tracer", "demo", "--headless", "--duration", "10"],
                       cwd=ROOT, capture_output=True, text=True, timeout=STARTUP)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""                                  # no scene failed
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    available = {k for k, v in lines[0]["kinds"].items() if v["available"]}
    seen = {x["kind"] for x in lines if x["type"] == "event"}
    assert seen == available
    assert [x["type"] for x in lines[-2:]] == ["tally", "end"]
    peers = {x["peer"] for x in lines if x["type"] == "event"}
    assert any(":" in p for p in peers), "an IPv6 peer"
    assert len({p for p in peers if p.startswith("10.213.7.")}) >= 5, "a subnet of many peers"
    assert demo_namespaces() == [], "the demo and the killed one's leftovers are gone"
