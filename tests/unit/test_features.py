"""Kind availability per kernel, from tracefs/kallsyms facts (no kernel needed)."""

from __future__ import annotations

from pathlib import Path

from tracer.probe import kallsyms, tracefs
from tracer.probe.features import TRACEPOINTS, KernelFeatures, availability

DATA = Path(__file__).parent / "data"
REASONS_618 = {2: "NOT_SPECIFIED", 3: "NO_SOCKET", 30: "TCP_FLAGS", 36: "TCP_RFC7323_PAWS",
               37: "TCP_RFC7323_PAWS_ACK", 38: "TCP_RFC7323_TW_PAWS", 39: "TCP_RFC7323_TSECR",
               40: "TCP_LISTEN_OVERFLOW"}
SYMS = {n: (0x1000 * i, 0x1000 * i + 0x800) for i, n in enumerate(
    ("tcp_rcv_state_process", "tcp_v4_do_rcv", "tcp_v6_do_rcv", "cookie_v4_check",
     "cookie_v6_check", "tw_timer_handler"), start=1)}


def kernel(release="6.18.44", reasons=None, rx_sk=True, location=True, symbols=None,
           tracepoints=TRACEPOINTS) -> KernelFeatures:
    return KernelFeatures(
        release=release, reasons=REASONS_618 if reasons is None else reasons,
        kfree_fields=frozenset({"skbaddr", "location", "reason", "protocol"}
                               | ({"rx_sk"} if rx_sk else set())),
        consume_fields=frozenset({"skbaddr"} | ({"location"} if location else set())),
        tracepoints=frozenset(tracepoints), symbols=SYMS if symbols is None else symbols)


def test_618_has_every_kind():
    av = availability(kernel())
    assert all(v.available for v in av.values()), av
    assert av["syn_drop"].via == "skb:consume_skb+net:net_dev_queue"
    assert list(av) == ["syn_drop", "ack_drop", "syn_cookie", "cookie_fail", "synack_retrans",
                        "tw_reuse_out", "tw_reuse_in", "tw_paws", "paws", "paws_active"]


def test_612_lacks_listen_overflow_and_tw_paws_and_says_why():
    reasons = {k: v for k, v in REASONS_618.items()
               if v not in ("TCP_LISTEN_OVERFLOW", "TCP_RFC7323_TW_PAWS", "TCP_RFC7323_TSECR")}
    av = availability(kernel("6.12.1", reasons=reasons))
    assert not av["ack_drop"].available and "6.15" in av["ack_drop"].why
    assert not av["tw_paws"].available and "6.16" in av["tw_paws"].why
    assert av["paws"].available and "TCP_RFC7323_TSECR" in av["paws"].why
    assert av["syn_drop"].available


def test_61_without_rx_sk():
    av = availability(kernel("6.1.0", rx_sk=False))
    assert not av["cookie_fail"].available and "rx_sk" in av["cookie_fail"].why
    assert not av["paws"].available and "6.11" in av["paws"].why


def test_62_consume_without_location_disables_syn_drop_and_tw_reuse_in():
    av = availability(kernel("6.2.0", location=False))
    assert not av["syn_drop"].available and "6.3" in av["syn_drop"].why
    assert not av["tw_reuse_in"].available
    assert av["tw_reuse_out"].available


def test_missing_tracepoint_and_symbol():
    av = availability(kernel(tracepoints=[t for t in TRACEPOINTS if t != "timer/timer_cancel"]))
    assert not av["tw_reuse_out"].available and "timer/timer_cancel" in av["tw_reuse_out"].why
    syms = {k: v for k, v in SYMS.items() if k != "tcp_rcv_state_process"}
    assert not availability(kernel(symbols=syms))["syn_drop"].available


def test_version_parse():
    assert kernel("6.18.44-fc-v669").version == (6, 18, 44)
    assert kernel("5.4").version == (5, 4, 0)


def test_tracefs_parsing_of_this_kernels_format():
    text = (DATA / "kfree_skb.format").read_text()
    assert {"skbaddr", "location", "rx_sk", "protocol", "reason"} <= tracefs.fields(text)
    reasons = tracefs.symbolic_values(text, "print fmt")
    assert reasons[2] == "NOT_SPECIFIED" and "TCP_LISTEN_OVERFLOW" in reasons.values()


def test_kallsyms_ranges_skip_aliases_and_refuse_zeroed_addresses():
    lines = ["ffffffff81000000 T a\n", "ffffffff81000000 T a_alias\n",
             "ffffffff81000100 t b\n", "ffffffff81000300 D data\n", "ffffffff81000400 T c\n"]
    assert kallsyms.symbol_ranges(["a", "b"], lines) == {
        "a": (0xFFFFFFFF81000000, 0xFFFFFFFF81000100),
        "b": (0xFFFFFFFF81000100, 0xFFFFFFFF81000400)}
    import pytest

    from tracer.errors import EnvironmentProblem
    with pytest.raises(EnvironmentProblem, match="kptr_restrict"):
        kallsyms.symbol_ranges(["a"], ["0000000000000000 T a\n", "0000000000000000 T b\n"])
