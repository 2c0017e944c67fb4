"""The pure half of probe/load.py: -D defines, cflags, and the one-text C bundle."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from tracer.errors import EnvironmentProblem
from tracer.kinds import Kind
from tracer.probe import load
from tracer.probe.btf import BtfError
from tracer.probe.features import SYMBOLS, TRACEPOINTS, BuildPlan, KernelFeatures, build_plan

BPF = Path(__file__).resolve().parents[2] / "bpf"
REASONS = {2: "NOT_SPECIFIED", 3: "NO_SOCKET", 30: "TCP_FLAGS", 36: "TCP_RFC7323_PAWS",
           37: "TCP_RFC7323_PAWS_ACK", 38: "TCP_RFC7323_TW_PAWS", 39: "TCP_RFC7323_TSECR",
           40: "TCP_LISTEN_OVERFLOW"}
SYMS = {name: (0xFFFFFFFF81000000 + 0x10000 * i, 0xFFFFFFFF81000000 + 0x10000 * i + 0x700)
        for i, name in enumerate(SYMBOLS)}


def features(release="6.18.44", reasons=REASONS, rx_sk=True, symbols=SYMS) -> KernelFeatures:
    return KernelFeatures(release=release, reasons=reasons,
                          fields={"skb/kfree_skb": frozenset({"skbaddr", "location", "reason"}
                                                             | ({"rx_sk"} if rx_sk else set())),
                                  "skb/consume_skb": frozenset({"skbaddr", "location"}),
                                  "tcp/tcp_retransmit_synack": frozenset({"skaddr", "family"})},
                          tracepoints=frozenset(TRACEPOINTS), symbols=symbols)


NOTHING = BuildPlan(frozenset(), frozenset())


def plan(*kinds: Kind, f: KernelFeatures | None = None) -> BuildPlan:
    return build_plan(f or features(), set(kinds))


@dataclass
class Offset:
    byte: int
    bit: int


class FakeBtf:
    """Offsets numbered by their position in OFFSETS; skc_reuseport at bit 0x13*8+5."""

    def __init__(self, missing: str | None = None) -> None:
        self.asked: list[tuple[str, str]] = []
        self.missing = missing

    def offset(self, struct: str, path: str) -> Offset:
        self.asked.append((struct, path))
        if path == self.missing:
            raise BtfError(f"no member {path} in struct {struct}")
        if (struct, path) == ("sock_common", "skc_reuseport"):
            return Offset(0x13, 0x13 * 8 + 5)
        index = list(load.OFFSETS.values()).index((struct, path))
        return Offset(8 * index + 8, (8 * index + 8) * 8)


def test_btf_defines_ask_for_every_field_and_split_the_reuseport_bit():
    btf = FakeBtf()
    d = load.btf_defines(btf)
    assert btf.asked == [*load.OFFSETS.values(), ("sock_common", "skc_reuseport")]
    for i, define in enumerate(load.OFFSETS):
        assert d[define] == 8 * i + 8
    assert d["OFF_SKC_REUSEPORT_BYTE"] == 0x13
    assert d["SKC_REUSEPORT_MASK"] == 0x20
    assert len(d) == len(load.OFFSETS) + 4             # + the skb header span (or none)


def test_skb_header_span_only_when_the_fields_are_close():
    near = {"OFF_SKB_PROTOCOL": 176, "OFF_SKB_TRANSPORT_HEADER": 178,
            "OFF_SKB_NETWORK_HEADER": 180, "OFF_SKB_HEAD": 192, "OFF_SKB_REFDST": 88,
            "OFF_SKB_DESTRUCTOR": 96}                     # Linux 6.18
    assert load.skb_header_span(near) == {"SKB_SPAN_START": 88, "SKB_SPAN": 112}
    far = dict(near, OFF_SKB_HEAD=216)
    assert load.skb_header_span(far) == {"SKB_SPAN_START": 0, "SKB_SPAN": 0}


def test_a_field_missing_from_btf_is_an_environment_problem():
    with pytest.raises(EnvironmentProblem) as exc:
        load.btf_defines(FakeBtf(missing="ns.inum"))
    assert str(exc.value) == ("this kernel's BTF lacks a field the tracer reads "
                              "(no member ns.inum in struct net): this kernel is not supported "
                              "yet; please report its version")


def test_build_defines_values():
    d = load.build_defines(features(), FakeBtf(), load.Tuning(), ncpus=4, hz=250,
                           plan=plan(Kind.ACK_DROP, Kind.PAWS))
    assert {k: d[k] for k in d if k.startswith("R_")} == {
        "R_TCP_LISTEN_OVERFLOW": 40, "R_NO_SOCKET": 3, "R_TCP_FLAGS": 30,
        "R_TCP_RFC7323_PAWS": 36, "R_TCP_RFC7323_PAWS_ACK": 37, "R_TCP_RFC7323_TSECR": 39,
        "R_TCP_RFC7323_TW_PAWS": 38}
    for name, (start, end) in SYMS.items():
        define = f"SYM_{name.strip('_').upper()}"          # __sock_wfree: SYM_SOCK_WFREE
        assert (d[f"{define}_START"], d[f"{define}_END"]) == (start, end)
    assert {k: d[k] for k in (
        "SYNQ_FULL_AT_MAX", "SYNCOOKIE_VALID_JIFFIES", "NS_PER_JIFFY", "MAX_SYNACK_LEN",
        "GRACE_NS",
        "MAX_PEERS", "RINGBUF_PAGES", "RATE_INTERVAL_NS",
        "RATE_BURST_NS", "FAMILY_TIMEWAIT", "FAMILY_SYN", "FAMILY_PAWS", "HAVE_RX_SK")} == {
        "SYNQ_FULL_AT_MAX": 0, "SYNCOOKIE_VALID_JIFFIES": 30000, "NS_PER_JIFFY": 4_000_000,
        "MAX_SYNACK_LEN": 160,
        "GRACE_NS": 200_000_000, "MAX_PEERS": 131072, "RINGBUF_PAGES": 4096,
        "RATE_INTERVAL_NS": 200_000,   # 5000/s per CPU
        "RATE_BURST_NS": 100_000_000, "FAMILY_TIMEWAIT": 0, "FAMILY_SYN": 1,
        "FAMILY_PAWS": 1, "HAVE_RX_SK": 1}
    assert all(isinstance(v, int) and v >= 0 for v in d.values())


def test_missing_reasons_and_symbols_never_match():
    reasons = {k: v for k, v in REASONS.items() if v not in ("TCP_LISTEN_OVERFLOW", "TCP_FLAGS")}
    syms = {k: v for k, v in SYMS.items() if k != "cookie_v6_check"}
    d = load.build_defines(features(reasons=reasons, rx_sk=False, symbols=syms), FakeBtf(),
                           load.Tuning(), ncpus=1, hz=1000, plan=NOTHING)
    assert d["R_TCP_LISTEN_OVERFLOW"] == d["R_TCP_FLAGS"] == 0xFFFFFFFF
    assert d["R_NO_SOCKET"] == 3
    assert (d["SYM_COOKIE_V6_CHECK_START"], d["SYM_COOKIE_V6_CHECK_END"]) == (0, 0)
    assert "HAVE_RX_SK" not in d
    assert d["SYNCOOKIE_VALID_JIFFIES"] == 120_000
    assert (d["FAMILY_SYN"], d["FAMILY_TIMEWAIT"], d["FAMILY_PAWS"]) == (0, 0, 0)


@pytest.mark.parametrize("kinds, families, tracepoints", [
    ((), (0, 0, 0), set()),
    ((Kind.ACK_DROP,), (1, 0, 0), {"skb/kfree_skb"}),
    ((Kind.SYN_DROP,), (1, 0, 0), {"skb/consume_skb", "net/net_dev_queue",
                                   "neigh/neigh_event_send_done", "tcp/tcp_retransmit_synack",
                                   "sock/inet_sock_set_state"}),
    ((Kind.TW_REUSE_OUT,), (1, 1, 0), {"timer/timer_cancel", "sock/inet_sock_set_state"}),
    # tw_reuse_in shares the syn_drop machinery: its tracepoints come along
    ((Kind.TW_REUSE_IN,), (1, 1, 0), {"timer/timer_cancel", "skb/consume_skb",
                                      "net/net_dev_queue", "neigh/neigh_event_send_done",
                                      "tcp/tcp_retransmit_synack", "sock/inet_sock_set_state"}),
    ((Kind.PAWS, Kind.TW_PAWS), (0, 0, 1), {"skb/kfree_skb"}),
    (tuple(Kind), (1, 1, 1), set(TRACEPOINTS)),
])
def test_families_and_tracepoints_follow_the_selected_kinds(kinds, families, tracepoints):
    d = load.build_defines(features(), FakeBtf(), load.Tuning(), 2, 250, plan(*kinds))
    assert (d["FAMILY_SYN"], d["FAMILY_TIMEWAIT"], d["FAMILY_PAWS"]) == families
    assert {t for t in TRACEPOINTS if d[load.tracepoint_define(t)]} == tracepoints


def test_an_unavailable_kind_attaches_nothing():
    old = features(rx_sk=False)                         # no PAWS kind without rx_sk
    assert plan(Kind.PAWS, Kind.TW_PAWS, Kind.PAWS_ACTIVE, f=old) == NOTHING


@pytest.mark.parametrize("eps, ncpus, interval, burst", [
    (20000, 4, 200_000, 100_000_000),
    (1000, 2, 2_000_000, 100_000_000),
    (3, 8, 1_000_000_000, 100_000_000),     # at least one event per second per CPU
    (100, 0, 10_000_000, 100_000_000),      # cpu count unknown: counted as one
    (0, 4, 0, 0),                           # 0 = no cap
])
def test_rate_cap(eps, ncpus, interval, burst):
    d = load.build_defines(features(), FakeBtf(), load.Tuning(max_events_per_second=eps),
                           ncpus, 250, NOTHING)
    assert (d["RATE_INTERVAL_NS"], d["RATE_BURST_NS"]) == (interval, burst)


@pytest.mark.parametrize("release, at_max", [
    ("5.4.0-200-generic", 1), ("6.8.0", 1), ("6.8.1", 0), ("6.18.44-fc-v669", 0),
    ("5.15.0", 0), ("6.1.0-28-amd64", 0),
])
def test_synq_full_at_max_quirk(release, at_max):
    d = load.build_defines(features(release=release), FakeBtf(), load.Tuning(), 1, 250,
                           NOTHING)
    assert d["SYNQ_FULL_AT_MAX"] == at_max


def test_cflags_sorted_with_ull_above_int_max():
    flags = load.cflags({"Z": 1, "A": 0x7FFFFFFF, "M": 0x80000000, "B": 0,
                         "SYM": 0xFFFFFFFF81000000, "R": 0xFFFFFFFF})
    assert flags == ["-DA=2147483647", "-DB=0", "-DM=2147483648ULL", "-DR=4294967295ULL",
                     "-DSYM=18446744071578845184ULL", "-DZ=1", *load.QUIET_WARNINGS]


def test_cflags_of_real_defines_are_one_per_define():
    d = load.build_defines(features(), FakeBtf(), load.Tuning(), 4, 250, plan(*Kind))
    flags = load.cflags(d)
    assert len(flags) == len(d) + len(load.QUIET_WARNINGS)
    assert all(re.fullmatch(r"-D[A-Z0-9_]+=\d+(ULL)?", f) for f in flags[:len(d)])


def directives_point_at_their_lines(bundle: str, bpf_dir: Path) -> list[str]:
    """Each `#line N "bpf/F"` must be followed by line N of F: the mismatches."""
    lines = bundle.split("\n")
    wrong = []
    for i, line in enumerate(lines):
        m = re.fullmatch(r'#line (\d+) "bpf/([\w.]+)"', line)
        if not m:
            continue
        n, name = int(m.group(1)), m.group(2)
        source = (bpf_dir / name).read_text().split("\n")
        expected = {source[n - 1]}
        include = re.fullmatch(r'#include "([\w.]+)"', source[n - 1])
        if include:            # inlined here, or left empty when inlined before
            expected = {f'#line 1 "bpf/{include.group(1)}"', ""}
        if i + 1 >= len(lines) or lines[i + 1] not in expected:
            following = lines[i + 1] if i + 1 < len(lines) else None
            wrong.append(f"{line!r} is followed by {following!r}, "
                         f"but line {n} of {name} is {source[n - 1]!r}")
    return wrong


def test_bundle_of_the_real_sources_has_every_handler_file_once():
    text = load.bundle_source()
    assert not re.search(r'^#include "', text, re.M)
    for name in ("refusal.h", "syn.c", "timewait.c", "paws.c"):
        body = (BPF / name).read_text()
        assert body in text, name
        assert text.count(f'#line 1 "bpf/{name}"') == 1
    assert text.count('"bpf/tracer.c"') == 4               # back in tracer.c after each
    assert "#include <linux/skbuff.h>" in text               # system headers stay


def test_bundle_line_directives_of_the_real_sources():
    assert directives_point_at_their_lines(load.bundle_source(), BPF) == []


def crafted_tree(tmp_path: Path) -> Path:
    bpf = tmp_path / "bpf"
    bpf.mkdir()
    (bpf / "main.c").write_text('#include <linux/types.h>\n'
                                '#include "a.h"\n'
                                'int main_a;\n'
                                '#include "b.c"\n'
                                '#include "a.h"\n'
                                'int main_end;\n')
    (bpf / "a.h").write_text("#ifndef A_H\n#define A_H\nint a;\n#endif\n")
    (bpf / "b.c").write_text('int b1;\n#include "a.h"\n#include "c.h"\nint b2;\n')
    (bpf / "c.h").write_text("int c;\n")
    return bpf


def test_bundle_inlines_nested_includes_once(tmp_path):
    text = load.bundle_source(crafted_tree(tmp_path) / "main.c")
    code = [line for line in text.split("\n") if line and not line.startswith("#line")]
    assert code == ["#include <linux/types.h>", "#ifndef A_H", "#define A_H", "int a;",
                    "#endif", "int main_a;", "int b1;", "int c;", "int b2;", "int main_end;"]
    assert [m for m in re.findall(r'#line \d+ "bpf/([\w.]+)"', text)] == [
        "a.h", "main.c", "b.c", "c.h", "b.c", "main.c"]


def test_bundle_line_directives_of_a_crafted_tree(tmp_path):
    bpf = crafted_tree(tmp_path)
    assert directives_point_at_their_lines(load.bundle_source(bpf / "main.c"), bpf) == []


def test_bundle_line_directives_after_blank_lines(tmp_path):
    bpf = crafted_tree(tmp_path)
    (bpf / "gap.c").write_text('int g0;\n#include "c.h"\n\n\nint g4;\n#include "a.h"\nint g6;\n')
    text = load.bundle_source(bpf / "gap.c")
    assert [line for line in text.split("\n") if line and not line.startswith("#line")] == [
        "int g0;", "int c;", "int g4;", "#ifndef A_H", "#define A_H", "int a;", "#endif",
        "int g6;"]
    assert directives_point_at_their_lines(text, bpf) == []
