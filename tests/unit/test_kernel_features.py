"""Which kinds each kernel can report, and why not: availability() on hand-built kernels.

The 6.18 kernel is this machine's, from the tracefs format files copied into data/; the
others are built from it by removing what their versions lack.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tracer.kinds import KIND_LABELS
from tracer.model import KindAvailability
from tracer.probe import features, tracefs
from tracer.probe.features import (
    SYMBOLS,
    TRACEPOINTS,
    KernelFeatures,
    availability,
    parse_release,
)

DATA = Path(__file__).parent / "data"
KFREE = (DATA / "kfree_skb.format").read_text()
CONSUME = (DATA / "consume_skb.format").read_text()
REASONS_618 = tracefs.symbolic_values(KFREE, "print fmt")
SYMS = {name: (0xFFFFFFFF81000000 + 0x1000 * i, 0xFFFFFFFF81000800 + 0x1000 * i)
        for i, name in enumerate(SYMBOLS)}
RETRANSMIT = (DATA / "tcp_retransmit_synack.format").read_text()
RETRANSMIT_FIELDS = frozenset(tracefs.fields(RETRANSMIT))
NEWER_THAN_612 = ("TCP_LISTEN_OVERFLOW", "TCP_RFC7323_TW_PAWS", "TCP_RFC7323_PAWS_ACK",
                  "TCP_RFC7323_TSECR")

VIA_SYN = "skb:consume_skb+net:net_dev_queue"
VIA_KFREE = "skb:kfree_skb"
VIA_RETRANS = "tcp:tcp_retransmit_synack"
VIA_TW_OUT = "timer:timer_cancel+sock:inet_sock_set_state"
VIA_TW_IN = "timer:timer_cancel+skb:consume_skb"
NO_RX_SK = "skb:kfree_skb has no rx_sk field (Linux 6.11+)"
NO_LOCATION = "skb:consume_skb has no location field (Linux 6.3+)"
NO_OVERFLOW = "no TCP_LISTEN_OVERFLOW drop reason on this kernel (Linux 6.15+)"
NO_TW_PAWS = "no TCP_RFC7323_TW_PAWS drop reason on this kernel (Linux 6.16+)"


def without(reasons: dict[int, str], *names: str) -> dict[int, str]:
    return {n: r for n, r in reasons.items() if r not in names}


def kernel(release: str = "6.18.44-fc-v669", *, reasons: dict[int, str] | None = None,
           rx_sk: bool = True, location: bool = True, tracepoints=TRACEPOINTS,
           symbols: dict[str, tuple[int, int]] | None = None) -> KernelFeatures:
    kfree = tracefs.fields(KFREE) - (set() if rx_sk else {"rx_sk"})
    consume = tracefs.fields(CONSUME) - (set() if location else {"location"})
    return KernelFeatures(release=release,
                          reasons=REASONS_618 if reasons is None else reasons,
                          fields={"skb/kfree_skb": frozenset(kfree),
                                  "skb/consume_skb": frozenset(consume),
                                  "tcp/tcp_retransmit_synack": RETRANSMIT_FIELDS},
                          tracepoints=frozenset(tracepoints),
                          symbols=SYMS if symbols is None else symbols)


K618 = kernel()
K612 = kernel("6.12.48+deb13-amd64", reasons=without(REASONS_618, *NEWER_THAN_612))
K61 = kernel("6.1.0-28-amd64", reasons=without(REASONS_618, *NEWER_THAN_612), rx_sk=False)
K62 = kernel("6.2.16", location=False)


def ok(via: str, why: str | None = None) -> KindAvailability:
    return KindAvailability(True, via, why)


def no(via: str, why: str) -> KindAvailability:
    return KindAvailability(False, via, why)


def test_this_machines_format_files_describe_a_618_kernel():
    assert {"location", "rx_sk", "reason"} <= K618.fields["skb/kfree_skb"]
    assert "location" in K618.fields["skb/consume_skb"]
    assert K618.has_rx_sk and K618.version == (6, 18, 44)
    assert K618.reason("NOT_SPECIFIED") == 2
    assert K618.reason("TCP_LISTEN_OVERFLOW") == 40
    assert K618.reason("NO_SUCH_REASON") is None


def test_618_reports_every_kind():
    assert availability(K618) == {
        "syn_drop": ok(VIA_SYN), "ack_drop": ok(VIA_KFREE), "syn_cookie": ok(VIA_SYN),
        "cookie_fail": ok(VIA_KFREE), "synack_retrans": ok(VIA_RETRANS),
        "tw_reuse_out": ok(VIA_TW_OUT), "tw_reuse_in": ok(VIA_TW_IN),
        "tw_paws": ok(VIA_KFREE), "paws": ok(VIA_KFREE), "paws_active": ok(VIA_KFREE)}


def test_availability_lists_every_kind_in_kind_order():
    for k in (K618, K612, K61, K62):
        assert tuple(availability(k)) == KIND_LABELS


def test_612_without_listen_overflow():
    assert availability(K612) == {
        "syn_drop": ok(VIA_SYN), "ack_drop": no(VIA_KFREE, NO_OVERFLOW),
        "syn_cookie": ok(VIA_SYN), "cookie_fail": ok(VIA_KFREE),
        "synack_retrans": ok(VIA_RETRANS), "tw_reuse_out": ok(VIA_TW_OUT),
        "tw_reuse_in": ok(VIA_TW_IN), "tw_paws": no(VIA_KFREE, NO_TW_PAWS),
        "paws": ok(VIA_KFREE, "partial: this kernel has no TCP_RFC7323_PAWS_ACK or "
                              "TCP_RFC7323_TSECR drop reason"),
        "paws_active": ok(VIA_KFREE)}


def test_61_without_rx_sk():
    assert availability(K61) == {
        "syn_drop": ok(VIA_SYN), "ack_drop": no(VIA_KFREE, NO_OVERFLOW),
        "syn_cookie": ok(VIA_SYN), "cookie_fail": no(VIA_KFREE, NO_RX_SK),
        "synack_retrans": ok(VIA_RETRANS), "tw_reuse_out": ok(VIA_TW_OUT),
        "tw_reuse_in": ok(VIA_TW_IN), "tw_paws": no(VIA_KFREE, NO_RX_SK),
        "paws": no(VIA_KFREE, NO_RX_SK), "paws_active": no(VIA_KFREE, NO_RX_SK)}


def test_62_consume_skb_without_location():
    assert availability(K62) == {
        "syn_drop": no(VIA_SYN, NO_LOCATION), "ack_drop": ok(VIA_KFREE),
        "syn_cookie": no(VIA_SYN, NO_LOCATION), "cookie_fail": ok(VIA_KFREE),
        "synack_retrans": ok(VIA_RETRANS), "tw_reuse_out": ok(VIA_TW_OUT),
        "tw_reuse_in": no(VIA_TW_IN, "needs the syn_drop machinery: " + NO_LOCATION),
        "tw_paws": ok(VIA_KFREE), "paws": ok(VIA_KFREE), "paws_active": ok(VIA_KFREE)}


def test_one_missing_paws_reason_makes_paws_partial():
    av = availability(kernel(reasons=without(REASONS_618, "TCP_RFC7323_TSECR")))
    assert av["paws"] == ok(VIA_KFREE, "partial: this kernel has no TCP_RFC7323_TSECR "
                                       "drop reason")
    assert av["paws_active"] == ok(VIA_KFREE)


def test_without_tcp_rfc7323_paws():
    av = availability(kernel(reasons=without(REASONS_618, "TCP_RFC7323_PAWS")))
    why = "no TCP_RFC7323_PAWS drop reason on this kernel (Linux 5.19+)"
    assert (av["paws"], av["paws_active"]) == (no(VIA_KFREE, why), no(VIA_KFREE, why))
    assert av["tw_paws"] == ok(VIA_KFREE)


def test_kernel_without_drop_reasons():
    av = availability(kernel("5.15.0", reasons={}, rx_sk=False, location=False))
    assert [label for label, a in av.items() if a.available] == ["synack_retrans",
                                                                 "tw_reuse_out"]
    assert av["cookie_fail"] == no(VIA_KFREE,
                                   "no TCP_FLAGS drop reason on this kernel (Linux 6.9+)")


def test_kfree_skb_without_reason_field_names_the_field():
    k510 = KernelFeatures(release="5.10.0", reasons={}, tracepoints=frozenset(TRACEPOINTS),
                          fields={"skb/kfree_skb": frozenset({"skbaddr", "location",
                                                             "protocol"})}, symbols=SYMS)
    av = availability(k510)
    assert av["ack_drop"] == no(VIA_KFREE, "skb:kfree_skb has no reason field (Linux 5.17+)")
    assert av["tw_paws"] == no(VIA_KFREE, "skb:kfree_skb has no reason field (Linux 5.17+)")


def test_missing_tracepoints_are_named():
    av = availability(kernel(tracepoints=set(TRACEPOINTS) - {"skb/consume_skb",
                                                             "net/net_dev_queue"}))
    why = "tracepoint skb/consume_skb, net/net_dev_queue missing"
    assert av["syn_drop"] == no(VIA_SYN, why) and av["syn_cookie"] == no(VIA_SYN, why)
    assert av["tw_reuse_in"] == no(VIA_TW_IN, why)
    assert av["tw_reuse_out"] == ok(VIA_TW_OUT)

    av = availability(kernel(tracepoints=set(TRACEPOINTS) - {"skb/kfree_skb"}))
    gone = no(VIA_KFREE, "tracepoint skb/kfree_skb missing")
    for label in ("ack_drop", "cookie_fail", "tw_paws", "paws", "paws_active"):
        assert av[label] == gone, label
    assert av["syn_drop"] == ok(VIA_SYN)

    av = availability(kernel(tracepoints=set(TRACEPOINTS) - {"tcp/tcp_retransmit_synack"}))
    assert av["synack_retrans"] == no(VIA_RETRANS,
                                      "tracepoint tcp/tcp_retransmit_synack missing")

    av = availability(kernel(tracepoints=set(TRACEPOINTS) - {"timer/timer_cancel"}))
    assert av["tw_reuse_out"] == no(VIA_TW_OUT, "tracepoint timer/timer_cancel missing")
    assert av["tw_reuse_in"] == no(VIA_TW_IN, "tracepoint timer/timer_cancel missing")


@pytest.mark.parametrize("symbol, label, via, why", [
    ("tcp_rcv_state_process", "syn_drop", VIA_SYN,
     "symbol tcp_rcv_state_process not in /proc/kallsyms"),
    ("tcp_rcv_state_process", "tw_reuse_in", VIA_TW_IN,
     "needs the syn_drop machinery: symbol tcp_rcv_state_process not in /proc/kallsyms"),
    ("tcp_v4_do_rcv", "cookie_fail", VIA_KFREE, "symbol tcp_v4_do_rcv not in /proc/kallsyms"),
    ("tw_timer_handler", "tw_reuse_out", VIA_TW_OUT,
     "symbol tw_timer_handler not in /proc/kallsyms"),
    ("tw_timer_handler", "tw_reuse_in", VIA_TW_IN,
     "symbol tw_timer_handler not in /proc/kallsyms"),
])
def test_missing_symbols(symbol, label, via, why):
    syms = {k: v for k, v in SYMS.items() if k != symbol}
    assert availability(kernel(symbols=syms))[label] == no(via, why)


@pytest.mark.parametrize("release, version", [
    ("6.18.44-fc-v669", (6, 18, 44)), ("6.1.0-28-amd64", (6, 1, 0)), ("5.4", (5, 4, 0)),
    ("6.8.0-rc1+", (6, 8, 0)), ("4.19.325", (4, 19, 325)), ("", (0, 0, 0)),
    ("linux", (0, 0, 0)),
])
def test_parse_release(release, version):
    assert parse_release(release) == version


def test_detect_reads_tracefs_kallsyms_and_release(tmp_path, monkeypatch):
    root = tmp_path / "tracing"
    for event in TRACEPOINTS:
        (root / "events" / event).mkdir(parents=True)
        (root / "events" / event / "format").write_text(f"name: {event}\n")
    (root / "events/skb/kfree_skb/format").write_text(KFREE)
    (root / "events/skb/consume_skb/format").write_text(CONSUME)
    (root / "events/tcp/tcp_retransmit_synack/format").write_text(RETRANSMIT)
    (root / "events/timer/timer_cancel/format").unlink()
    (root / "events/timer/timer_cancel").rmdir()
    (root / "events/timer").rmdir()
    kallsyms = tmp_path / "kallsyms"
    kallsyms.write_text("ffffffff81000000 T tcp_v4_do_rcv\n"
                        "ffffffff81000400 t tcp_rcv_state_process\n"
                        "ffffffff81000900 T tcp_v4_rcv\n")
    monkeypatch.setattr(features.platform, "release", lambda: "6.18.44-fc-v669")
    f = features.detect(root, str(kallsyms))
    assert f == KernelFeatures(
        release="6.18.44-fc-v669", reasons=REASONS_618,
        fields={t: frozenset(tracefs.fields({"skb/kfree_skb": KFREE, "skb/consume_skb": CONSUME,
                                             "tcp/tcp_retransmit_synack": RETRANSMIT}
                                            .get(t, "")))
                for t in TRACEPOINTS if t != "timer/timer_cancel"},
        tracepoints=frozenset(TRACEPOINTS) - {"timer/timer_cancel"},
        symbols={"tcp_v4_do_rcv": (0xFFFFFFFF81000000, 0xFFFFFFFF81000400),
                 "tcp_rcv_state_process": (0xFFFFFFFF81000400, 0xFFFFFFFF81000900)})
    av = availability(f)
    assert av["tw_reuse_out"].why == "tracepoint timer/timer_cancel missing"
    assert av["syn_drop"] == ok(VIA_SYN)


def test_synack_retransmits_need_the_family_field():
    k = kernel()
    old = KernelFeatures(release=k.release, reasons=k.reasons, tracepoints=k.tracepoints,
                         symbols=k.symbols,
                         fields=dict(k.fields, **{"tcp/tcp_retransmit_synack":
                                                  RETRANSMIT_FIELDS - {"family"}}))
    why = "tcp:tcp_retransmit_synack has no family field (not in Linux 5.10)"
    av = availability(old)
    assert av["synack_retrans"] == no(VIA_RETRANS, why)
    assert av["syn_drop"] == no(VIA_SYN, why)
