"""The pure half of the loader: defines, cflags and the bundled C text."""

from __future__ import annotations

from tests.unit.test_features import kernel
from tracer.probe import load


class FakeOffset:
    def __init__(self, byte: int) -> None:
        self.byte, self.bit = byte, byte * 8 + 4


class FakeBtf:
    def offset(self, struct: str, path: str) -> FakeOffset:
        return FakeOffset(len(struct) + len(path))


def test_defines_have_every_offset_reason_symbol_and_family():
    d = load.build_defines(kernel(), FakeBtf(), load.Tuning(max_events_per_second=1000), 2,
                           250, frozenset({"paws"}))
    assert set(load.OFFSETS) <= set(d)
    assert d["R_TCP_LISTEN_OVERFLOW"] == 40 and d["R_TCP_RFC7323_TW_PAWS"] == 38
    assert d["SYM_TCP_RCV_STATE_PROCESS_START"] == 0x1000
    assert d["SKC_REUSEPORT_MASK"] == 1 << 4
    assert (d["FAMILY_SYN"], d["FAMILY_TIMEWAIT"], d["FAMILY_PAWS"]) == (0, 0, 1)
    assert d["RATE_INTERVAL_NS"] == 2_000_000                 # 500/s per CPU
    assert d["SYNCOOKIE_VALID_JIFFIES"] == 120 * 250
    assert d["HAVE_RX_SK"] == 1


def test_missing_reason_never_matches_and_timewait_brings_syn():
    reasons = {k: v for k, v in kernel().reasons.items() if v != "TCP_LISTEN_OVERFLOW"}
    d = load.build_defines(kernel(reasons=reasons), FakeBtf(), load.Tuning(max_events_per_second=0),
                           2, 100, frozenset({"timewait"}))
    assert d["R_TCP_LISTEN_OVERFLOW"] == 0xFFFFFFFF
    assert d["RATE_INTERVAL_NS"] == 0
    assert (d["FAMILY_SYN"], d["FAMILY_TIMEWAIT"]) == (1, 1)


def test_cflags_mark_64_bit_constants():
    flags = load.cflags({"A": 5, "B": 0xFFFFFFFF81000000})
    assert "-DA=5" in flags and "-DB=18446744071578845184ULL" in flags


def test_bundle_inlines_each_local_include_once_with_line_markers():
    text = load.bundle_source()
    assert '#include "' not in text
    for name in ("refusal.h", "syn.c", "timewait.c", "paws.c"):
        assert text.count(f'#line 1 "bpf/{name}"') == 1
    assert "TRACEPOINT_PROBE(skb, consume_skb)" in text
    assert "SKB_DROP_REASON_" not in text
