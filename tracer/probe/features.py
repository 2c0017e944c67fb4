"""What the running kernel can report, and therefore which kinds are available and via what.

Everything is read from the kernel itself (tracefs formats, kallsyms, the release string),
never assumed from a version number alone; `availability()` is a pure function of it so that
other kernels can be described in unit tests.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path

from tracer.model import Kind, KindAvailability
from tracer.probe import kallsyms, tracefs

# Functions whose addresses the BPF code compares against: tracepoint `location`s, a
# timer's handler, and the skb destructors of a full TCP socket's transmit path.
SYMBOLS = ("tcp_rcv_state_process", "tcp_v4_do_rcv", "tcp_v6_do_rcv",
           "cookie_v4_check", "cookie_v6_check", "tw_timer_handler",
           "tcp_wfree", "__sock_wfree")

# Tracepoints the handlers attach to.
TRACEPOINTS = ("skb/kfree_skb", "skb/consume_skb", "net/net_dev_queue",
               "neigh/neigh_event_send_done", "tcp/tcp_retransmit_synack",
               "sock/inet_sock_set_state", "timer/timer_cancel")


@dataclass(frozen=True)
class KernelFeatures:
    """The facts about this kernel that decide how (and whether) each kind is traced."""

    release: str
    reasons: dict[int, str]
    kfree_fields: frozenset[str]
    consume_fields: frozenset[str]
    tracepoints: frozenset[str]
    symbols: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def version(self) -> tuple[int, int, int]:
        return parse_release(self.release)

    def reason(self, name: str) -> int | None:
        """The number of drop reason `name` on this kernel, or None if it has none."""
        for number, reason in self.reasons.items():
            if reason == name:
                return number
        return None

    @property
    def has_rx_sk(self) -> bool:
        return "rx_sk" in self.kfree_fields


def parse_release(release: str) -> tuple[int, int, int]:
    """(major, minor, patch) of a `uname -r` string such as 6.18.44-fc-v669."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    if not m:
        return (0, 0, 0)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


def detect(root: Path = tracefs.TRACEFS, kallsyms_path: str = kallsyms.KALLSYMS) -> KernelFeatures:
    """Read this kernel's features (tracefs must be mounted)."""
    kfree = tracefs.read_format("skb/kfree_skb", root) or ""
    consume = tracefs.read_format("skb/consume_skb", root) or ""
    hidden = hidden_reasons()
    return KernelFeatures(
        release=platform.release(),
        reasons={n: r for n, r in tracefs.drop_reasons(root).items() if r not in hidden},
        kfree_fields=frozenset(tracefs.fields(kfree)),
        consume_fields=frozenset(tracefs.fields(consume)),
        tracepoints=frozenset(t for t in TRACEPOINTS if tracefs.has_event(t, root)),
        symbols=kallsyms.load_ranges(SYMBOLS, kallsyms_path),
    )


# Drop-reason names to treat as absent (comma-separated): how tests show what the tracer
# does on an older kernel that lacks them, on this one.
HIDE_REASONS_ENV = "TRACER_HIDE_DROP_REASONS"


def hidden_reasons() -> frozenset[str]:
    return frozenset(n.strip() for n in os.environ.get(HIDE_REASONS_ENV, "").split(",")
                     if n.strip())


def _missing_tracepoints(f: KernelFeatures, *needed: str) -> list[str]:
    return [t for t in needed if t not in f.tracepoints]


def availability(f: KernelFeatures) -> dict[str, KindAvailability]:
    """Per kind: available or not on this kernel, via which tracepoints, and why not."""
    out: dict[str, KindAvailability] = {}

    def unavailable(kind: Kind, via: str, why: str) -> None:
        out[kind.label] = KindAvailability(False, via, why)

    # syn_drop / syn_cookie: a SYN consumed by tcp_rcv_state_process without a SYN-ACK.
    via = "skb:consume_skb+net:net_dev_queue"
    missing = _missing_tracepoints(f, "skb/consume_skb", "net/net_dev_queue")
    for kind in (Kind.SYN_DROP, Kind.SYN_COOKIE):
        if missing:
            unavailable(kind, via, f"tracepoint {', '.join(missing)} missing")
        elif "location" not in f.consume_fields:
            unavailable(kind, via, "skb:consume_skb has no location field (Linux 6.3+)")
        elif "tcp_rcv_state_process" not in f.symbols:
            unavailable(kind, via, "symbol tcp_rcv_state_process not in /proc/kallsyms")
        else:
            out[kind.label] = KindAvailability(True, via)

    # ack_drop: TCP_LISTEN_OVERFLOW (6.15+) and NO_SOCKET inside cookie_v4/v6_check.
    via = "skb:kfree_skb"
    if "skb/kfree_skb" not in f.tracepoints:
        unavailable(Kind.ACK_DROP, via, "tracepoint skb/kfree_skb missing")
    elif f.reason("TCP_LISTEN_OVERFLOW") is None:
        unavailable(Kind.ACK_DROP, via,
                    "no TCP_LISTEN_OVERFLOW drop reason on this kernel (Linux 6.15+)")
    else:
        out[Kind.ACK_DROP.label] = KindAvailability(True, via)

    # cookie_fail: TCP_FLAGS at a listener in tcp_v4/v6_do_rcv, cookie check mirrored.
    if "skb/kfree_skb" not in f.tracepoints:
        unavailable(Kind.COOKIE_FAIL, via, "tracepoint skb/kfree_skb missing")
    elif f.reason("TCP_FLAGS") is None:
        unavailable(Kind.COOKIE_FAIL, via, "no TCP_FLAGS drop reason (Linux 6.9+)")
    elif not f.has_rx_sk:
        unavailable(Kind.COOKIE_FAIL, via, "skb:kfree_skb has no rx_sk field (Linux 6.11+)")
    elif "tcp_v4_do_rcv" not in f.symbols:
        unavailable(Kind.COOKIE_FAIL, via, "symbol tcp_v4_do_rcv not in /proc/kallsyms")
    else:
        out[Kind.COOKIE_FAIL.label] = KindAvailability(True, via)

    via = "tcp:tcp_retransmit_synack"
    if "tcp/tcp_retransmit_synack" in f.tracepoints:
        out[Kind.SYNACK_RETRANS.label] = KindAvailability(True, via)
    else:
        unavailable(Kind.SYNACK_RETRANS, via, "tracepoint tcp/tcp_retransmit_synack missing")

    # tw_reuse_out / tw_reuse_in: a TIME-WAIT timer cancelled by connect() or by a SYN.
    tw_needs = {Kind.TW_REUSE_OUT: ("timer/timer_cancel", "sock/inet_sock_set_state"),
                Kind.TW_REUSE_IN: ("timer/timer_cancel", "skb/consume_skb", "net/net_dev_queue")}
    for kind, needed in tw_needs.items():
        via = "+".join(t.replace("/", ":") for t in needed[:2])
        missing = _missing_tracepoints(f, *needed)
        if missing:
            unavailable(kind, via, f"tracepoint {', '.join(missing)} missing")
        elif "tw_timer_handler" not in f.symbols:
            unavailable(kind, via, "symbol tw_timer_handler not in /proc/kallsyms")
        elif kind is Kind.TW_REUSE_IN and not out[Kind.SYN_DROP.label].available:
            unavailable(kind, via, "needs the syn_drop machinery: "
                        + (out[Kind.SYN_DROP.label].why or ""))
        else:
            out[kind.label] = KindAvailability(True, via)

    # tw_paws, paws, paws_active: kfree_skb PAWS reasons, told apart by rx_sk's state.
    via = "skb:kfree_skb"
    paws_reasons = [r for r in ("TCP_RFC7323_PAWS", "TCP_RFC7323_PAWS_ACK",
                                "TCP_RFC7323_TSECR") if f.reason(r) is not None]
    if "skb/kfree_skb" not in f.tracepoints:
        for kind in (Kind.TW_PAWS, Kind.PAWS, Kind.PAWS_ACTIVE):
            unavailable(kind, via, "tracepoint skb/kfree_skb missing")
    elif not f.has_rx_sk:
        for kind in (Kind.TW_PAWS, Kind.PAWS, Kind.PAWS_ACTIVE):
            unavailable(kind, via, "skb:kfree_skb has no rx_sk field (Linux 6.11+)")
    else:
        if f.reason("TCP_RFC7323_TW_PAWS") is None:
            unavailable(Kind.TW_PAWS, via,
                        "no TCP_RFC7323_TW_PAWS drop reason on this kernel (Linux 6.16+)")
        else:
            out[Kind.TW_PAWS.label] = KindAvailability(True, via)
        if "TCP_RFC7323_PAWS" not in paws_reasons:
            unavailable(Kind.PAWS, via, "no TCP_RFC7323_PAWS drop reason (Linux 5.19+)")
            unavailable(Kind.PAWS_ACTIVE, via, "no TCP_RFC7323_PAWS drop reason (Linux 5.19+)")
        else:
            lacking = [r for r in ("TCP_RFC7323_PAWS_ACK", "TCP_RFC7323_TSECR")
                       if r not in paws_reasons]
            why = (f"partial: this kernel has no {' or '.join(lacking)} drop reason"
                   if lacking else None)
            out[Kind.PAWS.label] = KindAvailability(True, via, why)
            out[Kind.PAWS_ACTIVE.label] = KindAvailability(True, via)
    return {k.label: out[k.label] for k in Kind}
