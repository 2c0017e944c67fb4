"""The lab is built through netlink and /proc/sys, never by running a program, and with the
topology its docstring promises; the calling thread never enters a namespace. A fake
pyroute2 records the requests, so no privilege or kernel is needed."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from tracer import lab
from tracer.scenarios import OFFICE

MACS = {"s0": "02:00:00:00:00:01", "c0": "02:00:00:00:00:02"}


class FakeIPRoute:
    """Stands in for pyroute2's IPRoute(netns=NAME): interfaces s0/c0, every request logged."""

    namespaces: dict[str, dict[str, int]] = {}
    log: list[tuple[str, str, str, dict]] = []

    def __init__(self, netns: str, flags: int) -> None:
        assert flags == 0, "a netlink socket must never create a namespace by accident"
        self.ns = netns
        self.links = self.namespaces.setdefault(netns, {"lo": 1})

    def __enter__(self) -> FakeIPRoute:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def link_lookup(self, ifname: str) -> list[int]:
        return [self.links[ifname]] if ifname in self.links else []

    def link(self, command: str, **spec: object) -> list[dict[str, str]]:
        self.log.append((self.ns, "link", command, spec))
        if command == "add":
            self.links[spec["ifname"]] = 2
            peer = spec["peer"]
            peer_ns = os.path.basename(peer["net_ns_fd"])
            self.namespaces.setdefault(peer_ns, {"lo": 1})[peer["ifname"]] = 2
        if command == "get":
            name = next(n for n, i in self.links.items() if i == spec["index"])
            return [{"IFLA_ADDRESS": MACS.get(name), "IFLA_OPERSTATE": "UP"}]
        return []

    def addr(self, command: str, **spec: object) -> None:
        self.log.append((self.ns, "addr", command, spec))

    def route(self, command: str, **spec: object) -> None:
        self.log.append((self.ns, "route", command, spec))

    def neigh(self, command: str, **spec: object) -> list[dict]:
        self.log.append((self.ns, "neigh", command, spec))
        return []


@pytest.fixture
def fake_net(monkeypatch):
    """Fake pyroute2 and namespace files; any program run or namespace switch fails the test."""
    FakeIPRoute.namespaces = {}
    FakeIPRoute.log = []
    made: list[str] = []
    removed: list[str] = []
    monkeypatch.setattr(lab, "IPRoute", FakeIPRoute)
    monkeypatch.setattr(lab.named_netns, "create", made.append)
    monkeypatch.setattr(lab.named_netns, "remove", removed.append)
    monkeypatch.setattr(lab.subprocess, "run", lambda *a, **k: pytest.fail(f"ran {a}"))
    monkeypatch.setattr(lab, "_setns", lambda fd: pytest.fail("setns outside the helper"))
    return made, removed


def requests(obj: str, command: str, ns_suffix: str) -> list[dict]:
    return [spec for ns, o, c, spec in FakeIPRoute.log
            if o == obj and c == command and ns.endswith(ns_suffix)]


def test_build_makes_the_documented_topology_without_running_a_program(fake_net):
    made, removed = fake_net
    with lab.Lab("t", prefix="rtu", clients4=lab.CLIENTS4 + OFFICE[:2]) as built:
        assert made == [built.srv, built.cli]
        veth = requests("link", "add", "-srv")
        assert veth == [{"ifname": "s0", "kind": "veth",
                         "peer": {"ifname": "c0", "net_ns_fd": f"/run/netns/{built.cli}"}}]
        assert requests("link", "add", "-cli") == []           # the peer is moved, not made
        assert (built.smac, built.cmac) == (MACS["s0"], MACS["c0"])

        srv_addrs = {(a["address"], a["prefixlen"], a.get("flags", 0))
                     for a in requests("addr", "add", "-srv")}
        assert srv_addrs == {(lab.SERVER4, 24, 0), (lab.SERVER6, 64, lab.IFA_F_NODAD)}
        cli_addrs = {(a["address"], a["prefixlen"]) for a in requests("addr", "add", "-cli")}
        assert cli_addrs == ({(ip, 24) for ip in lab.CLIENTS4} | {(ip, 32) for ip in OFFICE[:2]}
                             | {(ip, 64) for ip in lab.CLIENTS6})

        up = [(s["index"], s["state"]) for s in requests("link", "set", "")]
        assert up == [(1, "up"), (2, "up"), (1, "up"), (2, "up")]   # lo and the veth, both sides

        srv_routes = {(r["dst"], r.get("gateway")) for r in requests("route", "add", "-srv")}
        assert srv_routes == {("10.213.9.0/24", lab.CLIENTS4[0]),
                              ("fd00:213:9::/64", lab.CLIENTS6[0]),
                              *((f"{ip}/32", None) for ip in OFFICE[:2])}
        assert [r["dst"] for r in requests("route", "add", "-cli")] == ["0.0.0.0/0"]

        srv_neigh = {(n["dst"], n["lladdr"], n["state"]) for n in requests("neigh", "replace",
                                                                           "-srv")}
        assert srv_neigh == {(ip, MACS["c0"], lab.NUD_PERMANENT)
                             for ip in (*lab.CLIENTS4, *OFFICE[:2], *lab.CLIENTS6)}
        cli_neigh = {(n["dst"], n["lladdr"]) for n in requests("neigh", "replace", "-cli")}
        assert cli_neigh == {(lab.SERVER4, MACS["s0"]), (lab.SERVER6, MACS["s0"])}
        removed.clear()
    assert removed == [built.srv, built.cli]


def test_a_failed_build_removes_both_namespaces(fake_net, monkeypatch):
    made, removed = fake_net

    def refuse(self, command, **spec):
        raise OSError("no veth here")

    monkeypatch.setattr(FakeIPRoute, "link", refuse)
    built = lab.Lab("t", prefix="rtu")
    with pytest.raises(OSError, match="no veth"):
        built.__enter__()
    assert removed[-2:] == [built.srv, built.cli]


def test_teardown_of_an_absent_namespace_is_quiet(monkeypatch):
    def gone(name):
        raise FileNotFoundError(name)

    monkeypatch.setattr(lab.named_netns, "remove", gone)
    lab.Lab("t", prefix="rtu").teardown()


def test_sysctl_writes_proc_sys_through_the_helper(monkeypatch, tmp_path):
    calls: list[str] = []
    written: dict[str, str] = {}

    def call(ns, fn):
        calls.append(ns)
        return fn()

    class Recorder:
        def __init__(self, path: str, mode: str) -> None:
            self.path = path

        def __enter__(self) -> Recorder:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def write(self, text: str) -> None:
            written[self.path] = text

    monkeypatch.setattr(lab._in_netns, "call", call)
    monkeypatch.setattr(lab, "open", Recorder, raising=False)
    lab.Lab.sysctl("rtu-1-t-cli", "net.ipv4.ip_local_port_range", "55000 55000")
    assert calls == ["rtu-1-t-cli"]
    assert written == {"/proc/sys/net/ipv4/ip_local_port_range": "55000 55000"}


def test_namespace_calls_run_on_one_helper_thread_never_the_callers(monkeypatch):
    entered: list[tuple[int, int]] = []
    monkeypatch.setattr(lab, "_setns", lambda fd: entered.append((threading.get_ident(), fd)))
    monkeypatch.setattr(lab, "NETNS_DIR", "/proc/self/ns")   # "net" opens without privilege
    caller = lab._NamespaceCaller()
    first = caller.call("net", threading.get_ident)
    second = caller.call("net", threading.get_ident)
    assert first == second != threading.get_ident()
    assert [who for who, fd in entered] == [first] * 4          # there and back, twice
    with pytest.raises(ZeroDivisionError):
        caller.call("net", lambda: 1 / 0)
    assert len(entered) == 6, "it returns home after a failure too"


def test_socket_in_hands_back_a_socket_made_by_the_helper(monkeypatch):
    monkeypatch.setattr(lab._in_netns, "call", lambda ns, fn: ("made in", ns, fn()))
    tag, ns, sock = lab.Lab.socket_in("rtu-1-t-cli", socket.AF_INET6)
    try:
        assert (tag, ns, sock.family) == ("made in", "rtu-1-t-cli", socket.AF_INET6)
    finally:
        sock.close()
