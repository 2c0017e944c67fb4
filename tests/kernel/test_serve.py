"""`tracer serve` on real refusals: a scrape holds the exact per-peer counts.

The exporter runs as its own process (as an operator would start it) and is scraped over
HTTP; the scrape is parsed with prometheus_client's parser and compared with a ground
truth computed without the tracer (the SYNs each client address sent into a full accept
queue, and the kernel's ListenDrops).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.kernel.conftest import DEADLINE, PREFIX, ROOT, STARTUP, accept_queue_drops, delta
from tracer.lab import CLIENTS4, SPOOF4, Lab

pytestmark = pytest.mark.kernel

TRACER = [sys.executable, "-m", "tracer"]
# Distinct per address, so a swapped attribution fails; with --top-peers 3 the smallest
# is folded into peer="other".
TRUTH = {CLIENTS4[0]: 2, CLIENTS4[1]: 5, CLIENTS4[2]: 1, CLIENTS4[3]: 3}
MARKER = SPOOF4[0]    # a peer of none of the above, with one drop: folded into "other"
SCRAPE_DEADLINE = DEADLINE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serve:
    """A running `tracer serve` and the lines it printed on stderr so far."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([*TRACER, "serve", *args], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, text: str, timeout: float) -> str:
        """The first stderr line containing text (bounded wait)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    raise AssertionError(f"no {text!r} on stderr within {timeout} s; "
                                         f"exit {self.proc.poll()}, stderr: {self.lines}")
                self._cond.wait(min(left, 0.2))

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30) -> int:
        """Send sig and wait for the exit code (kill if it does not end)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._thread.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


def scrape(port: int) -> dict[str, dict[tuple, float]]:
    """Sample name -> {sorted label items: value}, as prometheus_client's parser reads it."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def by_peer(metrics: dict, kind: str) -> dict[str, float]:
    return {dict(labels)["peer"]: v
            for labels, v in metrics.get("tcp_refusals_by_peer_total", {}).items()
            if dict(labels)["kind"] == kind}


def total(metrics: dict, kind: str) -> float | None:
    return metrics.get("tcp_refusals_total", {}).get((("kind", kind),))


def scrape_until(port: int, done, timeout: float = SCRAPE_DEADLINE) -> dict:
    """Scrape until done(metrics) (bounded); the last scrape either way."""
    deadline = time.monotonic() + timeout
    while True:
        metrics = scrape(port)
        if done(metrics) or time.monotonic() > deadline:
            return metrics
        time.sleep(0.1)                                # the exporter refreshes every 0.2 s


def test_scrape_holds_exact_per_peer_counts_and_sigint_ends_it():
    port = free_port()
    with Lab("serve", prefix=PREFIX) as lab:
        netns = Lab.inode(lab.srv)
        serve = Serve("--listen", f"127.0.0.1:{port}", "--netns", str(netns),
                      "--interval", "0.2", "--top-peers", "3",
                      "--max-events-per-second", "0")
        try:
            line = serve.wait_for("serving metrics", STARTUP)
            assert line == f"tracer: serving metrics on http://127.0.0.1:{port}/metrics"
            assert not any("warning" in x for x in serve.lines), serve.lines
            before = scrape(port)
            assert total(before, "syn_drop") == 0
            assert by_peer(before, "syn_drop") == {"other": 0}

            counters_before = lab.counters(lab.srv)
            accept_queue_drops(lab, 9470, TRUTH)         # returns once the kernel counted all
            drops = delta(counters_before, lab.counters(lab.srv), "ListenDrops")
            assert drops == sum(TRUTH.values()), "the recipe did not drop what it should"

            metrics = scrape_until(port, lambda m: total(m, "syn_drop") == drops and (
                m.get("tcp_refusal_kernel_counter_total", {}).get(
                    (("name", "ListenDrops"), ("netns", str(netns)))) == drops))
            why = f"scrape: {metrics}; stderr: {serve.lines}"
            assert total(metrics, "syn_drop") == sum(TRUTH.values()), why
            top3 = sorted(TRUTH, key=lambda ip: -TRUTH[ip])[:3]
            folded = [ip for ip in TRUTH if ip not in top3]
            assert by_peer(metrics, "syn_drop") == {
                **{ip: TRUTH[ip] for ip in top3}, "other": sum(TRUTH[ip] for ip in folded)}, why
            for kind in {dict(k)["kind"] for k in metrics["tcp_refusals_total"]} - {"syn_drop"}:
                assert total(metrics, kind) == 0 and by_peer(metrics, kind) == {"other": 0}
            assert metrics["tcp_refusal_peers_tracked"] == {(): 4}
            assert metrics["tcp_refusal_peers_folded"] == {(): 1}
            assert metrics["tcp_refusal_lost_events_total"] == {(): 0}
            assert metrics["tcp_refusal_kernel_counter_total"][
                (("name", "ListenDrops"), ("netns", str(netns)))] == drops, why

            # And it stays exact. A barrier: one more drop, from a fifth address, made
            # after the kernel handled every SYN above. A scrape that counts it comes from
            # a tally read after it, so it also holds whatever else the scenario caused.
            accept_queue_drops(lab, 9471, {MARKER: 1})
            later = scrape_until(port, lambda m: total(m, "syn_drop") == drops + 1)
            assert total(later, "syn_drop") == drops + 1, f"scrape: {later}"
            assert by_peer(later, "syn_drop") == {
                **{ip: TRUTH[ip] for ip in top3}, "other": sum(TRUTH[ip] for ip in folded) + 1}
            code = serve.stop(signal.SIGINT)
        finally:
            serve.stop(signal.SIGKILL, timeout=5)
    assert code == 0, serve.lines
    assert not any("Traceback" in x or "internal error" in x for x in serve.lines), serve.lines
    with socket.socket() as s:                         # the server is gone with the process
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_non_loopback_listen_warns_that_metrics_hold_addresses():
    port = free_port()
    with Lab("servewarn", prefix=PREFIX) as lab:
        serve = Serve("--listen", f"0.0.0.0:{port}", "--netns", lab.srv)
        try:
            line = serve.wait_for("serving metrics", STARTUP)
            assert line == f"tracer: serving metrics on http://0.0.0.0:{port}/metrics"
            assert (f"tracer: warning: metrics on 0.0.0.0:{port} hold client addresses; "
                    "anyone who can reach it can read them") in serve.lines
            assert "tcp_refusals_total" in scrape(port)
            code = serve.stop(signal.SIGTERM)
        finally:
            serve.stop(signal.SIGKILL, timeout=5)
    assert code == 0, serve.lines


def test_bad_listen_exits_2_with_one_line():
    for value in ("nonsense", "127.0.0.1:99999", "::1:9464"):
        r = subprocess.run([*TRACER, "serve", "--listen", value], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, (value, r.stderr)
        assert r.stdout == ""
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert r.stderr.startswith("tracer: --listen ") and "Traceback" not in r.stderr
