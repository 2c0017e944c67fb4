"""One real tracer for the whole kernel-test session, driven through its JSON contract.

`tracer watch --json` runs as a subprocess (bcc compiles once per session); a thread reads
its NDJSON. Tests make refusals in namespaces of their own and read back the events and the
exact in-kernel tally (SIGUSR1) of their namespace inodes only. At the end the tracer is
stopped with SIGINT, and its exit code and final lines are checked.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tracer.lab import SERVER4, Lab, remove_stale

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "rtk"            # namespace names of this suite: rtk-<pid>-<tag>-srv|cli
SETTLE = 0.7              # > grace window (0.3 s) + drain period (0.1 s)


def _why_not_runnable() -> str | None:
    if os.geteuid() != 0:
        return "kernel tests need root"
    if importlib.util.find_spec("bcc") is None:
        return "kernel tests need bcc (python3-bpfcc)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    why = _why_not_runnable()
    for item in items:
        if "tests/kernel" in str(item.fspath):
            item.add_marker(pytest.mark.kernel)
            if why:
                item.add_marker(pytest.mark.skip(reason=why))


class Tracer:
    """The running `tracer watch --json` and what it printed so far."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[dict] = []
        self.bad: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                obj = json.loads(raw)
            except ValueError:
                self.bad.append(raw)
                continue
            with self._cond:
                self.lines.append(obj)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, kind: str, after: int, timeout: float) -> dict:
        """The first line of `kind` with index >= after."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[after:]:
                    if line.get("type") == kind:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None and not self._thread.is_alive():
                    raise AssertionError(f"tracer printed no {kind} line within {timeout} s")
                self._cond.wait(min(left, 0.2))

    def full_tally(self) -> dict[tuple[int, str, str], int]:
        """Every exact in-kernel count now (SIGUSR1), keyed by (netns, peer, kind)."""
        mark = len(self.lines)
        self.proc.send_signal(signal.SIGUSR1)
        line = self.wait_for("tally", mark, 10)
        return {(r["netns"], r["peer"], r["kind"]): r["count"] for r in line["rows"]}


class View:
    """What the tracer reported since one test began.

    Namespace inodes are recycled once a namespace is deleted, so a new test's netns may
    carry the inode of an earlier one: events are taken from the test's start on, and
    tallies are differences from a snapshot taken then.
    """

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer
        self.mark = len(tracer.lines)
        self.base = tracer.full_tally()

    def events(self, netns: int, kind: str | None = None) -> list[dict]:
        with self.tracer._cond:
            lines = self.tracer.lines[self.mark:]
        return [e for e in lines if e.get("type") == "event" and e["netns"] == netns
                and (kind is None or e["kind"] == kind)]

    def per_peer(self, netns: int, kind: str) -> dict[str, int]:
        return dict(Counter(e["peer"] for e in self.events(netns, kind)))

    def kinds(self, netns: int) -> set[str]:
        return {e["kind"] for e in self.events(netns)}

    def tally(self, netns: int) -> dict[tuple[str, str], int]:
        """Exact in-kernel counts of one namespace since the test began."""
        now = self.tracer.full_tally()
        out = {}
        for (ns, peer, kind), n in now.items():
            grown = n - self.base.get((ns, peer, kind), 0)
            if ns == netns and grown:
                out[(peer, kind)] = grown
        return out

    def tally_per_peer(self, netns: int, kind: str) -> dict[str, int]:
        return {peer: n for (peer, k), n in self.tally(netns).items() if k == kind}


@pytest.fixture(scope="session")
def old_listener() -> object:
    """A lab whose listener (backlog 2) exists before the tracer starts."""
    if _why_not_runnable():
        pytest.skip(_why_not_runnable())
    remove_stale(PREFIX)
    lab = Lab("old", prefix=PREFIX)
    lab.__enter__()
    try:
        listener = lab.socket_in(lab.srv)
        listener.bind((SERVER4, 7000))
        listener.listen(2)
        yield lab, listener
        listener.close()
    finally:
        lab.teardown()


@pytest.fixture(scope="session")
def tracer_process(old_listener: object) -> Tracer:
    """The session's tracer, started after `old_listener` exists."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tracer", "watch", "--json", "--max-events-per-second", "0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    t = Tracer(proc)
    try:
        first = t.wait_for("session", 0, 60)
        assert t.lines[0] is first, "the first line must be the session line"
        yield t
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    stderr = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == 0, f"tracer exited {proc.returncode}: {stderr}"
    assert not t.bad, f"tracer printed non-JSON lines: {t.bad[:3]}"
    assert [x["type"] for x in t.lines[-2:]] == ["tally", "end"], "must end with tally, end"


@pytest.fixture
def tracer(tracer_process: Tracer) -> View:
    """The session's tracer, seen from the start of this test."""
    return View(tracer_process)


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Lab:
    """A fresh pair of namespaces for one test, removed afterwards even on failure."""
    tag = "".join(c for c in request.node.name if c.isalnum())[-20:] or "t"
    with Lab(tag, prefix=PREFIX) as lab:
        yield lab


def settle(seconds: float = SETTLE) -> None:
    time.sleep(seconds)


def connect_nb(lab: Lab, src: str, dst: str, port: int) -> socket.socket:
    """A non-blocking connect from src in the client namespace; returns the socket."""
    family = socket.AF_INET6 if ":" in src else socket.AF_INET
    s = lab.socket_in(lab.cli, family)
    s.setblocking(False)
    s.bind((src, 0))
    s.connect_ex((dst, port))
    return s


def fill_accept_queue(lab: Lab, dst: str, port: int, n: int) -> list[socket.socket]:
    """n completed connections nobody accepts (n = backlog + 1 fills the queue)."""
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    out = []
    for _ in range(n):
        s = lab.socket_in(lab.cli, family)
        s.settimeout(2)
        s.connect((dst, port))
        out.append(s)
    return out


def delta(before: dict[str, int], after: dict[str, int], name: str) -> int:
    return after.get(name, 0) - before.get(name, 0)


def accept_queue_drops(lab: Lab, port: int, per_ip: dict[str, int]) -> None:
    """TESTING.md's sequential recipe: a full backlog-2 listener, then per_ip[ip] SYNs from
    each client address, every one dropped (closed before the 1 s retransmit)."""
    listener = lab.socket_in(lab.srv)
    listener.bind((SERVER4, port))
    listener.listen(2)
    fill = fill_accept_queue(lab, SERVER4, port, 3)
    socks = [connect_nb(lab, ip, SERVER4, port) for ip, k in per_ip.items() for _ in range(k)]
    time.sleep(0.3)
    for s in socks + fill:
        s.close()
    listener.close()
