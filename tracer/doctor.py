"""What is wrong now, and the fix: findings from one HostSample (pure, no I/O).

Each finding is one line with its evidence and a concrete fix, an id scripts can match,
and where it helps the `tracer live` command that shows the peers behind it.
"""

from __future__ import annotations

from dataclasses import dataclass

from tracer.kernel.counters import COUNTER_MEANINGS, counted_kinds
from tracer.kernel.host_sample import HostSample, ListenerSample
from tracer.kinds import Kind

# The kinds a full listener refuses with.
LISTENER_KINDS = (Kind.SYN_DROP, Kind.ACK_DROP)

# Every sysctl doctor shows, with what it does to refusals (described once; the text view
# and the JSON both use it).
SYSCTL_MEANINGS: dict[str, str] = {
    "net.core.somaxconn": "cap on every listen() backlog (the accept queue)",
    "net.ipv4.tcp_max_syn_backlog": "SYN queue size per listener (half-open connections)",
    "net.ipv4.tcp_syncookies": "SYN cookies when the SYN queue overflows (0 off, 1 on "
                               "overflow, 2 always); 0 makes SYN-queue overflows drops",
    "net.ipv4.tcp_abort_on_overflow": "1: a full accept queue answers with RST instead of "
                                      "dropping silently",
    "net.ipv4.tcp_tw_reuse": "outgoing connect() may take over a TIME-WAIT port (1 all, "
                             "2 loopback only)",
    "net.ipv4.tcp_tw_reuse_delay": "how old (ms) a TIME-WAIT socket must be to be reused",
    "net.ipv4.tcp_timestamps": "TCP timestamps: needed by PAWS and by tcp_tw_reuse",
    "net.ipv4.tcp_max_tw_buckets": "TIME-WAIT sockets at most; beyond it closes skip "
                                   "TIME-WAIT (TCPTimeWaitOverflow)",
    "net.ipv4.tcp_fin_timeout": "seconds an orphaned connection stays in FIN-WAIT-2",
    "net.ipv4.ip_local_port_range": "ephemeral ports for outgoing connections",
    "net.ipv4.tcp_rfc1337": "1: TIME-WAIT sockets ignore RSTs (RFC 1337)",
    "net.ipv4.tcp_synack_retries": "SYN-ACK retransmissions before a half-open connection "
                                   "is dropped",
    "net.ipv4.tcp_syn_retries": "SYN retransmissions of an outgoing connect()",
    "net.ipv4.tcp_tw_recycle": "refuses SYNs whose timestamps go back per host: breaks "
                               "clients behind NAT (removed in Linux 4.12)",
}

# The kernel counters doctor shows (their meanings: tracer.kernel.counters; the kinds each
# one counts: the kind declarations).
SHOWN_COUNTERS = ("ListenOverflows", "ListenDrops", "TCPReqQFullDrop", "SyncookiesSent",
                  "SyncookiesFailed", "PAWSTimewait", "PAWSEstab", "PAWSActive", "TWRecycled",
                  "TCPTimeWaitOverflow", "TCPSynRetrans")

SEVERITIES = ("problem", "warning", "note")


@dataclass(frozen=True)
class Finding:
    """One thing doctor noticed: what, the evidence, the fix, and how to see the peers."""

    id: str
    severity: str          # problem | warning | note
    text: str              # one line: evidence and cause
    fix: str
    command: str | None = None

    def line(self) -> str:
        return f"{self.text} — {self.fix}"

    def to_json(self) -> dict:
        return {"id": self.id, "severity": self.severity, "text": self.text, "fix": self.fix,
                "command": self.command}


def _int(sysctls: dict[str, str], name: str) -> int | None:
    try:
        return int(sysctls[name].split()[0])
    except (KeyError, ValueError, IndexError):
        return None


def _rate(sample: HostSample, name: str) -> str:
    """'+340/s' over a sample, '+340' when there was none."""
    delta = sample.delta(name)
    rate = sample.rate(name)
    if rate is None:
        return f"+{delta}"
    return f"+{rate:,.0f}/s" if rate >= 10 else f"+{delta} in {round(sample.seconds, 1):g} s"


def _live(netns_arg: str | None, *kinds: Kind, port: int | None = None) -> str:
    """The `tracer live` command that shows the peers of these kinds."""
    parts = ["tracer live"]
    if port is not None:
        parts += ["-P", str(port)]
    parts += [f"--kind {k.label}" for k in kinds]
    if netns_arg:
        parts.append(f"--netns {netns_arg}")
    return " ".join(parts)


def _owner(ls: ListenerSample) -> str:
    o = ls.now.owner
    return f" ({o.command}, pid {o.pid})" if o else ""


def _listener_findings(sample: HostSample, netns_arg: str | None) -> list[Finding]:
    out: list[Finding] = []
    somaxconn = _int(sample.sysctls, "net.core.somaxconn")
    overflow = sample.delta("ListenOverflows")
    for ls in sample.listeners:
        ln = ls.now
        if not (ln.full or ls.full_during):
            continue
        state = (f"accept queue full ({ln.queued}/{ln.backlog})" if ln.full else
                 f"accept queue full during the sample (peak {ls.peak_queued}/{ln.backlog}, "
                 f"now {ln.queued})")
        counted = f" and ListenOverflows {_rate(sample, 'ListenOverflows')}" if overflow else ""
        if somaxconn is not None and ln.backlog >= somaxconn:
            fix = (f"its backlog is already somaxconn={somaxconn}: raise net.core.somaxconn "
                   "and the listen() backlog, or make the application accept faster")
        else:
            cap = f" (capped by somaxconn={somaxconn})" if somaxconn is not None else ""
            fix = f"raise the listen() backlog{cap}, or make the application accept faster"
        out.append(Finding(
            "accept_queue_full", "problem",
            f"{ln.endpoint}{_owner(ls)}: {state}{counted}: the application is not accepting "
            "fast enough, or its backlog is too small", fix,
            _live(netns_arg, *LISTENER_KINDS, port=ln.port)))
    for ls in sample.listeners:
        ln = ls.now
        if ln.full or ls.full_during or ln.backlog < 16 or ls.peak_queued * 10 < ln.backlog * 9:
            continue
        out.append(Finding(
            "accept_queue_nearly_full", "warning",
            f"{ln.endpoint}{_owner(ls)}: accept queue at {ls.peak_queued}/{ln.backlog} "
            "during the sample: close to refusing connections",
            "raise the listen() backlog, or make the application accept faster",
            _live(netns_arg, *LISTENER_KINDS, port=ln.port)))
    return out


def _moving_counter_findings(sample: HostSample, netns_arg: str | None) -> list[Finding]:
    """A finding per kind whose declared counter moved during the sample."""
    out = []
    for kind in Kind:
        c = kind.spec.finding
        if c is not None and sample.delta(c.counter) > 0:
            out.append(Finding(c.id, c.severity,
                               f"{c.counter} {_rate(sample, c.counter)}: {c.meaning}", c.fix,
                               _live(netns_arg, kind)))
    return out


def diagnose(sample: HostSample, netns_arg: str | None = None) -> list[Finding]:
    """Findings, most serious first; tcp_tw_recycle=1, where it still exists, leads."""
    s = sample.sysctls
    found: list[Finding] = []
    if _int(s, "net.ipv4.tcp_tw_recycle") == 1:
        found.append(Finding(
            "tw_recycle_on", "problem",
            "net.ipv4.tcp_tw_recycle=1: SYNs whose timestamps go back are refused per host, "
            "so clients behind one NAT address refuse each other",
            "sysctl -w net.ipv4.tcp_tw_recycle=0 (and remove it from /etc/sysctl.d)",
            _live(netns_arg, Kind.TW_PAWS)))
    found += _listener_findings(sample, netns_arg)
    syncookies = _int(s, "net.ipv4.tcp_syncookies")
    full_seen = any(f.id == "accept_queue_full" for f in found)
    if sample.delta("ListenOverflows") > 0 and not full_seen:
        found.append(Finding(
            "listen_overflows", "problem",
            f"ListenOverflows {_rate(sample, 'ListenOverflows')}, but no listener was seen "
            "full when polled every 100 ms: short bursts fill an accept queue",
            "find the port with the command below, then raise its listen() backlog or "
            "accept faster", _live(netns_arg, *LISTENER_KINDS)))
    if sample.delta("TCPReqQFullDrop") > 0:
        backlog = _int(s, "net.ipv4.tcp_max_syn_backlog")
        found.append(Finding(
            "syn_queue_drops", "problem",
            f"TCPReqQFullDrop {_rate(sample, 'TCPReqQFullDrop')}: SYNs dropped because a SYN "
            f"queue is full and tcp_syncookies={syncookies}",
            "set net.ipv4.tcp_syncookies=1, or raise net.ipv4.tcp_max_syn_backlog "
            f"(now {backlog}) and the listen() backlog",
            _live(netns_arg, Kind.SYN_DROP)))
    if sample.delta("TCPTimeWaitOverflow") > 0:
        found.append(Finding(
            "tw_buckets_full", "problem",
            f"TCPTimeWaitOverflow {_rate(sample, 'TCPTimeWaitOverflow')}: the TIME-WAIT table "
            f"is full (tcp_max_tw_buckets={_int(s, 'net.ipv4.tcp_max_tw_buckets')}), closes "
            "skip TIME-WAIT", "raise net.ipv4.tcp_max_tw_buckets, or reuse connections"))
    found += _moving_counter_findings(sample, netns_arg)
    if syncookies == 0 and not any(f.id == "syn_queue_drops" for f in found):
        found.append(Finding(
            "syncookies_off", "warning",
            "net.ipv4.tcp_syncookies=0: a full SYN queue drops SYNs silently",
            "sysctl -w net.ipv4.tcp_syncookies=1"))
    if _int(s, "net.ipv4.tcp_abort_on_overflow") == 1:
        found.append(Finding(
            "abort_on_overflow", "note",
            "net.ipv4.tcp_abort_on_overflow=1: a full accept queue resets connections "
            "(clients see errors, not timeouts)",
            "leave it if clients should fail fast; set 0 to ride out short bursts"))
    if _int(s, "net.ipv4.tcp_timestamps") == 0:
        found.append(Finding(
            "timestamps_off", "note",
            "net.ipv4.tcp_timestamps=0: no PAWS protection, and tcp_tw_reuse cannot work",
            "sysctl -w net.ipv4.tcp_timestamps=1 unless a middlebox requires it off"))
    past = [n for n in ("ListenOverflows", "ListenDrops", "TCPReqQFullDrop", "PAWSTimewait",
                        "PAWSEstab", "PAWSActive", "TCPTimeWaitOverflow")
            if sample.counters_end.get(n, 0) > 0 and sample.delta(n) == 0]
    if past:
        counts = ", ".join(f"{n} {sample.counters_end[n]:,}" for n in past)
        found.append(Finding(
            "refused_before", "note",
            f"since boot: {counts}, but none during the sample: refusals happened earlier",
            "record the next burst with `tracer record -o FILE`"))
    tracing = sample.tracing
    if tracing and not tracing.get("available", True):
        found.append(Finding(
            "tracing_unavailable", "warning",
            f"the live tracer cannot start here ({tracing.get('why')}); these findings come "
            "from counters, sysctls and listeners only", "fix that, then run the commands "
            "shown to see the peers"))
    elif tracing and tracing.get("unavailable_kinds"):
        kinds = "; ".join(f"{k}: {why}" for k, why in tracing["unavailable_kinds"].items())
        found.append(Finding(
            "kinds_unavailable", "note", f"this kernel cannot show some kinds ({kinds})",
            "their kernel counters above still count them"))
    if not [f for f in found if f.id not in ("tracing_unavailable", "kinds_unavailable")]:
        found.append(Finding(
            "quiet", "note",
            "no refusals now: no counter moved during the sample and no listener is full",
            "nothing to fix; `tracer record -o FILE` catches the next burst"))
    return sorted(found, key=lambda f: (f.id != "tw_recycle_on", SEVERITIES.index(f.severity)))


def sysctl_rows(sample: HostSample, release: tuple[int, int, int]) -> list[dict]:
    """One row per sysctl: name, value (or why absent), meaning."""
    rows = []
    for name, meaning in SYSCTL_MEANINGS.items():
        value = sample.sysctls.get(name)
        if value is None and name == "net.ipv4.tcp_tw_recycle":
            gone = release >= (4, 12, 0)
            value = "removed in Linux 4.12: not a cause here" if gone else "absent"
        elif value is None:
            value = "absent on this kernel"
        rows.append({"name": name, "value": value, "meaning": meaning})
    return rows


def counter_rows(sample: HostSample) -> list[dict]:
    """One row per counter: since boot, over the sample, per second, the kinds it counts."""
    rows = []
    for name in SHOWN_COUNTERS:
        rate = sample.rate(name)
        rows.append({"name": name, "since_boot": sample.counters_end.get(name, 0),
                     "during_sample": sample.delta(name),
                     "per_second": round(rate, 2) if rate is not None else None,
                     "kinds": [k.label for k in counted_kinds(name)],
                     "meaning": COUNTER_MEANINGS[name]})
    return rows


def report_json(sample: HostSample, findings: list[Finding],
                release: tuple[int, int, int]) -> dict:
    """The whole diagnosis as one object (doctor --json)."""
    return {
        "netns": sample.netns, "kernel": sample.kernel, "sample_seconds": sample.seconds,
        "tracing": sample.tracing,
        "sysctls": {r["name"]: {"value": r["value"], "meaning": r["meaning"]}
                    for r in sysctl_rows(sample, release)},
        "counters": {r.pop("name"): r for r in counter_rows(sample)},
        "listeners": [ls.to_json() for ls in sample.listeners],
        "findings": [f.to_json() for f in findings],
    }
