"""Counters, namespaces and sysctls, read from fixture files and fakes (no privileges)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tracer.errors import UsageError
from tracer.kernel.counters import CounterTracker, parse_netstat
from tracer.kernel.netns import names_by_inode, read_in_netns, resolve_netns
from tracer.kernel.sysctls import read_sysctls
from tracer.model import CounterDelta

DATA = Path(__file__).parent / "data"


def test_parse_netstat_and_snmp_of_this_machine():
    netstat = parse_netstat((DATA / "netstat.txt").read_text())
    assert {"ListenDrops", "ListenOverflows", "TWRecycled", "PAWSEstab"} <= set(netstat)
    assert "IpExtInOctets" in netstat
    snmp = parse_netstat((DATA / "snmp.txt").read_text())
    assert "TcpActiveOpens" in snmp and "ListenDrops" not in snmp


def test_parse_netstat_pairs_and_bad_values():
    text = "TcpExt: A B\nTcpExt: 1 2\nIpExt: C\nIpExt: x\nTcp: D\nTcp: 4\n"
    assert parse_netstat(text) == {"A": 1, "B": 2, "TcpD": 4}


def test_tracker_baselines_new_and_vanished_namespaces():
    values = {1: {"ListenDrops": 10, "TW": 5}, 2: {"ListenDrops": 0}}
    paths = {1: "/ns/1", 2: "/ns/2"}

    def lister():
        return dict(paths)

    def reader(path, inode):
        ino = int(path.rsplit("/", 1)[1])
        if ino not in values:
            raise FileNotFoundError(path)
        assert ino == inode
        return dict(values[ino])

    t = CounterTracker(names=("ListenDrops", "TW"), lister=lister, reader=reader)
    t.start()
    values[1] = {"ListenDrops": 13, "TW": 5}
    paths[3] = "/ns/3"                                 # created after start: from zero
    values[3] = {"ListenDrops": 4, "TW": 1, "Other": 9}
    for ino in (3, 1):
        t.watch(ino)
    t.refresh()
    assert t.deltas() == [CounterDelta(1, "ListenDrops", 3), CounterDelta(1, "TW", 0),
                          CounterDelta(3, "ListenDrops", 4), CounterDelta(3, "TW", 1)]
    del values[3]                                      # namespace gone: keeps last values
    t.refresh()
    assert CounterDelta(3, "ListenDrops", 4) in t.deltas()


def test_watch_on_the_event_path_reads_nothing_and_lists_once_at_refresh():
    listings: list[int] = []
    paths = {1: "/ns/1"}

    def lister():
        listings.append(1)
        return dict(paths)

    t = CounterTracker(names=("ListenDrops",), lister=lister,
                       reader=lambda path, inode: {"ListenDrops": 7})
    t.start()
    paths[5] = "/ns/5"
    for _ in range(3):
        t.watch(5)
        t.watch(9)                                     # never findable
    assert len(listings) == 1                          # watch() itself never lists
    t.refresh()
    t.refresh()
    assert len(listings) == 2                          # one listing for both, not per refresh
    assert t.deltas() == [CounterDelta(5, "ListenDrops", 7)]


def test_a_path_that_opens_another_namespace_now_is_dropped_and_looked_up_once_more():
    paths = {1: "/proc/42/ns/net"}
    stale = {"/proc/42/ns/net"}

    def reader(path, inode):
        if path in stale:
            raise OSError(116, "stale")                # the pid now holds another namespace
        return {"ListenDrops": 3}

    listings: list[int] = []

    def lister():
        listings.append(1)
        return dict(paths)

    t = CounterTracker(names=("ListenDrops",), lister=lister, reader=reader)
    t.start()                                          # baseline read fails: from zero
    t.watch(1)
    paths[1] = "/proc/77/ns/net"                       # another process holds it
    t.refresh()                                        # fails, schedules one more look
    t.refresh()                                        # found again under the new path
    assert t.deltas() == [CounterDelta(1, "ListenDrops", 3)]
    stale.add("/proc/77/ns/net")
    before = len(listings)
    for _ in range(3):
        t.refresh()
    assert len(listings) == before + 1                 # looked for once more, not forever


def test_resolve_netns(tmp_path):
    (tmp_path / "web").touch()
    assert resolve_netns("4026531840") == 4026531840
    assert resolve_netns("web", str(tmp_path)) == (tmp_path / "web").stat().st_ino
    assert names_by_inode(str(tmp_path)) == {(tmp_path / "web").stat().st_ino: "web"}
    for bad in ("nope", "../etc", "0"):
        with pytest.raises(UsageError):
            resolve_netns(bad, str(tmp_path))


def test_read_sysctls(tmp_path):
    (tmp_path / "net" / "ipv4").mkdir(parents=True)
    (tmp_path / "net" / "ipv4" / "tcp_syncookies").write_text("1\n")
    (tmp_path / "net" / "ipv4" / "ip_local_port_range").write_text("32768\t60999\n")
    assert read_sysctls(str(tmp_path)) == {"net.ipv4.tcp_syncookies": "1",
                                           "net.ipv4.ip_local_port_range": "32768 60999"}


def test_reading_a_namespace_through_a_path_that_opens_another_is_refused():
    own = os.stat("/proc/self/ns/net").st_ino
    assert read_in_netns("/proc/self/ns/net", ["/proc/self/net/netstat"], own)
    with pytest.raises(OSError) as e:
        read_in_netns("/proc/self/ns/net", ["/proc/self/net/netstat"], own + 1)
    assert e.value.errno == errno.ESTALE
