"""`tracer doctor` without privileges: fixture sysctl files, netstat text and /proc trees feed
take_sample(), and diagnose() turns samples into exact findings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tracer.cli import main
from tracer.doctor import Finding, diagnose, report_json, sysctl_rows
from tracer.kernel.counters import parse_netstat
from tracer.kernel.host_sample import (
    DOCTOR_SYSCTLS,
    HostSample,
    ListenerSample,
    take_sample,
)
from tracer.kernel.listeners import ListenerQueue, Owner, socket_owners
from tracer.kernel.sysctls import read_sysctls
from tracer.probe.readiness import tracing_readiness

DATA = Path(__file__).parent / "data"
SYSCTLS = {"net.core.somaxconn": "4096", "net.ipv4.tcp_syncookies": "1",
           "net.ipv4.tcp_max_syn_backlog": "2048", "net.ipv4.tcp_timestamps": "1",
           "net.ipv4.tcp_abort_on_overflow": "0", "net.ipv4.tcp_max_tw_buckets": "262144"}


def sysctl_tree(root: Path, values: dict[str, str]) -> Path:
    for name, value in values.items():
        path = root.joinpath(*name.split("."))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
    return root


def listener(port: int = 8080, queued: int = 0, backlog: int = 128, family: int = 4,
             address: str = "0.0.0.0", owner: Owner | None = None) -> ListenerQueue:
    return ListenerQueue(family, address, port, queued, backlog, inode=1000 + port,
                         owner=owner)


def sample(listeners: list[ListenerSample] | None = None, start: dict | None = None,
           end: dict | None = None, sysctls: dict | None = None,
           seconds: float = 5.0) -> HostSample:
    return HostSample(netns=4026531840, kernel="6.18.44", seconds=seconds,
                      sysctls=sysctls if sysctls is not None else dict(SYSCTLS),
                      counters_start=start or {}, counters_end=end or {},
                      listeners=listeners or [])


def ids(findings: list[Finding]) -> list[str]:
    return [f.id for f in findings]


# ---------------------------------------------------------------- collection

def test_sysctls_are_read_from_the_tree_and_missing_ones_skipped(tmp_path: Path) -> None:
    root = sysctl_tree(tmp_path, {"net.core.somaxconn": "4096",
                                  "net.ipv4.ip_local_port_range": "32768\t60999",
                                  "net.ipv4.tcp_tw_recycle": "1"})
    got = read_sysctls(str(root), DOCTOR_SYSCTLS)
    assert got == {"net.core.somaxconn": "4096", "net.ipv4.ip_local_port_range": "32768 60999",
                   "net.ipv4.tcp_tw_recycle": "1"}


def test_take_sample_tracks_each_listeners_peak_and_counter_movement(tmp_path: Path) -> None:
    root = sysctl_tree(tmp_path, SYSCTLS)
    base = parse_netstat((DATA / "netstat.txt").read_text())
    later = dict(base, ListenOverflows=base["ListenOverflows"] + 50)
    counters = iter([base, later])
    # port 80 is full only in the middle of the sample; port 22 never; port 9 closes
    polls = iter([
        [listener(80, 3, 128), listener(22, 0, 128), listener(9, 0, 5)],
        [listener(80, 129, 128), listener(22, 1, 128), listener(9, 0, 5)],
        [listener(80, 40, 128), listener(22, 0, 128)],
        [listener(80, 7, 128), listener(22, 0, 128)],
    ])
    clock = iter([0.0, 0.1, 0.2, 0.3, 0.3])
    got = take_sample("/ns", 7, "6.18.0", 0.2,
                      listeners=lambda _: next(polls), counters=lambda _: next(counters),
                      sysctls=lambda _: read_sysctls(str(root), DOCTOR_SYSCTLS),
                      owners=lambda lns: lns, clock=lambda: next(clock), sleep=lambda _: None)
    assert got.sysctls["net.core.somaxconn"] == "4096"
    assert got.delta("ListenOverflows") == 50
    assert got.seconds == 0.3 and got.rate("ListenOverflows") == pytest.approx(50 / 0.3)
    by_port = {s.now.port: s for s in got.listeners}
    assert sorted(by_port) == [22, 80]                         # closed listener dropped
    assert by_port[80].peak_queued == 129 and by_port[80].full_during
    assert by_port[80].now.queued == 7 and not by_port[80].now.full
    assert by_port[22].peak_queued == 1 and not by_port[22].full_during


def test_socket_owners_from_a_fixture_proc(tmp_path: Path) -> None:
    for pid, comm, links in ((812, "nginx", {"3": "socket:[4242]", "4": "/dev/null"}),
                             (900, "sshd", {"5": "socket:[77]"}),
                             (950, "nginx", {"7": "socket:[4242]"})):
        fd = tmp_path / str(pid) / "fd"
        fd.mkdir(parents=True)
        (tmp_path / str(pid) / "comm").write_text(comm + "\n")
        for name, target in links.items():
            os.symlink(target, fd / name)
    (tmp_path / "self").mkdir()                                # not a pid: ignored
    assert socket_owners([4242, 77, 5], proc=str(tmp_path)) == {
        4242: Owner(812, "nginx"), 77: Owner(900, "sshd")}
    assert socket_owners([], proc=str(tmp_path)) == {}


def test_tracing_readiness_names_what_is_missing(tmp_path: Path) -> None:
    got = tracing_readiness(root=tmp_path, btf_path=str(tmp_path / "vmlinux"))
    assert got["available"] is False
    assert f"no BTF at {tmp_path}/vmlinux" in got["why"]


# ---------------------------------------------------------------- findings

def test_full_listener_reads_like_the_issue_example() -> None:
    full = ListenerSample(listener(8080, 129, 128, owner=Owner(812, "nginx")), 129)
    got = diagnose(sample([full], {"ListenOverflows": 100}, {"ListenOverflows": 1800}))
    assert got[0] == Finding(
        "accept_queue_full", "problem",
        "0.0.0.0:8080 (nginx, pid 812): accept queue full (129/128) and ListenOverflows "
        "+340/s: the application is not accepting fast enough, or its backlog is too small",
        "raise the listen() backlog (capped by somaxconn=4096), or make the application "
        "accept faster", "tracer live -P 8080 --kind syn_drop --kind ack_drop")
    assert "listen_overflows" not in ids(got)          # explained by the full listener


def test_listener_at_somaxconn_says_raise_somaxconn_and_names_the_netns() -> None:
    full = ListenerSample(listener(443, 4097, 4096, family=6, address="::"), 4097)
    got = diagnose(sample([full]), netns_arg="web")
    assert got[0].text.startswith("[::]:443: accept queue full (4097/4096):")
    assert "already somaxconn=4096: raise net.core.somaxconn" in got[0].fix
    assert got[0].command == "tracer live -P 443 --kind syn_drop --kind ack_drop --netns web"


def test_full_only_during_the_sample_and_nearly_full() -> None:
    burst = ListenerSample(listener(80, 3, 128), 129)
    close = ListenerSample(listener(81, 100, 128), 120)
    roomy = ListenerSample(listener(82, 10, 128), 60)
    tiny = ListenerSample(listener(83, 1, 1), 1)                # 1/1: not full, too small
    got = diagnose(sample([burst, close, roomy, tiny]))
    assert ids(got)[:2] == ["accept_queue_full", "accept_queue_nearly_full"]
    assert "full during the sample (peak 129/128, now 3)" in got[0].text
    assert "0.0.0.0:81: accept queue at 120/128" in got[1].text
    assert not any(":82" in f.text or ":83" in f.text for f in got)


def test_tw_recycle_leads_and_its_removal_is_said() -> None:
    full = ListenerSample(listener(80, 129, 128), 129)
    got = diagnose(sample([full], sysctls=dict(SYSCTLS, **{"net.ipv4.tcp_tw_recycle": "1"})))
    assert ids(got)[:2] == ["tw_recycle_on", "accept_queue_full"]
    rows = {r["name"]: r["value"] for r in sysctl_rows(sample(), (6, 18, 0))}
    assert rows["net.ipv4.tcp_tw_recycle"] == "removed in Linux 4.12: not a cause here"
    rows = {r["name"]: r["value"] for r in sysctl_rows(sample(), (4, 9, 0))}
    assert rows["net.ipv4.tcp_tw_recycle"] == "absent"


def test_counter_findings_each_with_their_kind_command() -> None:
    moved = {"TCPReqQFullDrop": 10, "SyncookiesSent": 5, "SyncookiesFailed": 1,
             "PAWSTimewait": 3, "PAWSEstab": 2, "PAWSActive": 1, "TWRecycled": 4,
             "TCPTimeWaitOverflow": 9, "TCPSynRetrans": 6, "ListenOverflows": 2}
    got = diagnose(sample(end=moved, sysctls=dict(SYSCTLS, **{
        "net.ipv4.tcp_syncookies": "0"})), netns_arg="4026532000")
    commands = {f.id: f.command for f in got}
    assert commands == {
        "listen_overflows": "tracer live --kind syn_drop --kind ack_drop --netns 4026532000",
        "syn_queue_drops": "tracer live --kind syn_drop --netns 4026532000",
        "tw_buckets_full": None,
        "tw_paws": "tracer live --kind tw_paws --netns 4026532000",
        "syncookies_sent": "tracer live --kind syn_cookie --netns 4026532000",
        "cookie_fail": "tracer live --kind cookie_fail --netns 4026532000",
        "paws_estab": "tracer live --kind paws --netns 4026532000",
        "paws_active": "tracer live --kind paws_active --netns 4026532000",
        "tw_reuse_out": "tracer live --kind tw_reuse_out --netns 4026532000",
        "syn_retrans": "tracer live --kind synack_retrans --netns 4026532000"}
    severities = [f.severity for f in got]
    assert severities == sorted(severities, key=["problem", "warning", "note"].index)
    drops = next(f for f in got if f.id == "syn_queue_drops")
    assert drops.text == ("TCPReqQFullDrop +10 in 5 s: SYNs dropped because a SYN queue is "
                          "full and tcp_syncookies=0")
    assert "syncookies_off" not in ids(got)                   # said once, by syn_queue_drops


def test_settings_alone_and_a_quiet_host() -> None:
    risky = dict(SYSCTLS, **{"net.ipv4.tcp_syncookies": "0", "net.ipv4.tcp_timestamps": "0",
                             "net.ipv4.tcp_abort_on_overflow": "1"})
    assert ids(diagnose(sample(sysctls=risky))) == [
        "syncookies_off", "abort_on_overflow", "timestamps_off"]
    assert ids(diagnose(sample())) == ["quiet"]
    before = diagnose(sample(start={"ListenOverflows": 7}, end={"ListenOverflows": 7}))
    assert ids(before) == ["refused_before"]
    assert "ListenOverflows 7" in before[0].text


def test_tracing_unavailable_is_said_and_does_not_hide_quiet() -> None:
    s = sample()
    s = HostSample(**{**s.__dict__, "tracing": {"available": False, "why": "no bcc"}})
    got = diagnose(s)
    assert ids(got) == ["tracing_unavailable", "quiet"]
    assert "(no bcc)" in got[0].text


def test_report_json_shape() -> None:
    full = ListenerSample(listener(8080, 129, 128, owner=Owner(1, "app")), 129)
    s = sample([full], {"ListenOverflows": 1}, {"ListenOverflows": 11})
    report = report_json(s, diagnose(s), (6, 18, 0))
    assert set(report) == {"netns", "kernel", "sample_seconds", "tracing", "sysctls",
                           "counters", "listeners", "findings"}
    assert report["counters"]["ListenOverflows"] == {
        "since_boot": 11, "during_sample": 10, "per_second": 2.0,
        "kinds": ["syn_drop", "ack_drop"], "meaning": "SYNs/ACKs dropped: accept queue full"}
    assert report["listeners"][0] == {
        "family": 4, "address": "0.0.0.0", "port": 8080, "queued": 129, "backlog": 128,
        "full": True, "pid": 1, "command": "app", "peak_queued": 129,
        "full_during_sample": True}
    assert report["findings"][0]["id"] == "accept_queue_full"
    assert report["sysctls"]["net.core.somaxconn"]["value"] == "4096"


@pytest.mark.parametrize("args, message", [
    (["--sample", "-1"], "Invalid value for '--sample'"),
    (["--sample", "x"], "Invalid value for '--sample'"),
    (["--netns", "no/such"], "unknown network namespace"),
])
def test_doctor_bad_options(args: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["doctor", *args])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert message in err and len(err.strip().splitlines()) == 1
