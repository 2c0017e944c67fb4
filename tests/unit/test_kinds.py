"""The kind declarations, and every place derived from them agreeing with them: the C code,
the README's table, reconciliation, doctor's tables and the loader's tracepoint table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tracer import doctor, kinds
from tracer.kernel.counters import COUNTER_MEANINGS, REFUSAL_COUNTERS, counted_kinds
from tracer.kinds import KIND_LABELS, Category, Kind
from tracer.probe import abi, load
from tracer.probe.features import TRACEPOINTS
from tracer.reconcile import RECONCILIATIONS, Reconciliation

ROOT = Path(__file__).resolve().parents[2]
BPF = ROOT / "bpf"
C_SOURCES = {p.name: p.read_text() for p in sorted(BPF.glob("*.[ch]"))}

STABLE = [  # (label, id, category): ids are in every recording's tally keys and the maps
    ("syn_drop", 1, "syn"), ("ack_drop", 2, "syn"), ("syn_cookie", 3, "syn"),
    ("cookie_fail", 4, "syn"), ("synack_retrans", 5, "syn"),
    ("tw_reuse_out", 6, "timewait"), ("tw_reuse_in", 7, "timewait"),
    ("tw_paws", 8, "paws"), ("paws", 9, "paws"), ("paws_active", 10, "paws"),
]


def test_every_kind_keeps_its_stable_label_id_and_category():
    assert [(k.label, k.id, str(k.category)) for k in Kind] == STABLE
    assert KIND_LABELS == tuple(label for label, *_ in STABLE)
    assert all(Kind.from_id(k.id) is k for k in Kind)
    assert max(k.id for k in Kind) < abi.RECORD_RETRACT < abi.KIND_MAX
    with pytest.raises(ValueError, match="unknown kind id 15"):
        Kind.from_id(abi.RECORD_RETRACT)


def test_categories_are_the_three_families():
    assert [str(c) for c in Category] == ["syn", "timewait", "paws"]


@pytest.mark.parametrize("text, kind", [
    ("syn_drop", Kind.SYN_DROP), ("SYN_DROP", Kind.SYN_DROP), ("Paws_Active", Kind.PAWS_ACTIVE),
    ("tw_reuse_in", Kind.TW_REUSE_IN),
])
def test_from_label_is_case_insensitive(text, kind):
    assert Kind.from_label(text) is kind


@pytest.mark.parametrize("text", ["", "syn-drop", "retract", "info", "label", "syn_drops"])
def test_from_label_rejects_anything_else(text):
    with pytest.raises(ValueError, match=re.escape(f"unknown kind {text!r}")):
        Kind.from_label(text)


def test_every_declaration_is_complete():
    for kind in Kind:
        s = kind.spec
        for text in (s.summary, s.happened, s.peer_saw, s.cause, s.look):
            assert text and "\n" not in text and "|" not in text, kind
        assert s.methods, kind
        for method in s.methods:
            assert method.signal and set(method.handlers) <= {"syn", "timewait", "paws"}
            assert all(Kind.from_label(n) for n in method.needs)
        assert set(s.counted_by) <= set(REFUSAL_COUNTERS), kind
        if s.reconciles is not None:
            assert s.reconciles.counter in s.counted_by, kind
        if s.finding is not None:
            assert s.finding.counter in s.counted_by, kind
            assert s.finding.severity in doctor.SEVERITIES


# ---------------------------------------------------------------- the C side

def test_kind_ids_and_stats_slots_reach_the_c_code_only_as_defines():
    for name, text in C_SOURCES.items():
        assert not re.search(r"#define\s+(KIND_|STAT_|RECORD_RETRACT|EVF_|REASON_)", text), \
            f"bpf/{name} defines a number declared in tracer/kinds.py or tracer/probe/abi.py"
    used = {m for text in C_SOURCES.values()
            for m in re.findall(r"\b((?:KIND|STAT)_[A-Z_]+)\b", text)}
    given = set(kinds.c_defines()) | set(abi.c_defines())
    assert used <= given, f"bpf/ uses {sorted(used - given)}, which no declaration defines"
    assert {f"KIND_{k.name}" for k in Kind} <= used, "a declared kind no handler reports"


def test_abi_defines_match_the_decoder_and_the_stats_reader():
    d = abi.c_defines()
    assert d["STAT_LOST"] == abi.Stat.LOST == 0 and d["STAT_MAX"] > max(abi.Stat)
    assert {d[f"REASON_{n}"]: n for n in ("ACCEPT_QUEUE_FULL", "SYN_QUEUE_FULL")} == \
        abi.SYNTHETIC_REASONS


def probes(text: str) -> dict[str, str]:
    """Tracepoint -> the #if guarding its probe in bpf/tracer.c."""
    out = {}
    guard = None
    for line in text.splitlines():
        if m := re.match(r"#if (USE_TP_\w+)$", line):
            guard = m.group(1)
        elif m := re.match(r"TRACEPOINT_PROBE\((\w+), (\w+)\)", line):
            out[f"{m.group(1)}/{m.group(2)}"] = guard
        elif m := re.match(r"RAW_TRACEPOINT_PROBE\((\w+)\)", line):
            out[f"skb/{m.group(1)}"] = guard                  # consume_skb is skb's
        elif line.startswith("#endif"):
            guard = None
    return out


def test_every_declared_tracepoint_has_exactly_its_guarded_probe():
    table = probes(C_SOURCES["tracer.c"])
    assert set(table) == set(TRACEPOINTS)
    for tracepoint, guard in table.items():
        assert guard == load.tracepoint_define(tracepoint), tracepoint


def test_families_are_the_handler_files():
    assert set(load.FAMILIES) == {"syn", "timewait", "paws"}
    for family in load.FAMILIES:
        assert f"{family}.c" in C_SOURCES
        assert f'#if FAMILY_{family.upper()}\n#include "{family}.c"' in C_SOURCES["tracer.c"]


# ---------------------------------------------------------------- derived views

def test_readme_kind_table_is_the_generated_one():
    readme = (ROOT / "README.md").read_text()
    assert kinds.readme_table() in readme, (
        "README.md's kind table differs from tracer/kinds.py: paste the output of "
        "`.venv/bin/python -m tracer.kinds` over it")


def test_reconciliations_follow_the_declarations():
    assert RECONCILIATIONS == (
        Reconciliation("ListenDrops", (Kind.SYN_DROP, Kind.ACK_DROP), True),
        Reconciliation("SyncookiesSent", (Kind.SYN_COOKIE,), True),
        Reconciliation("SyncookiesFailed", (Kind.COOKIE_FAIL,), True),
        Reconciliation("TCPSynRetrans", (Kind.SYNACK_RETRANS,), False),
        Reconciliation("TWRecycled", (Kind.TW_REUSE_OUT,), True),
        Reconciliation("PAWSTimewait", (Kind.TW_PAWS,), False),
        Reconciliation("PAWSActive", (Kind.PAWS_ACTIVE,), True),
    )


def test_doctor_counter_kinds_and_findings_come_from_the_declarations():
    assert counted_kinds("ListenDrops") == (Kind.SYN_DROP, Kind.ACK_DROP)
    assert counted_kinds("TCPTimeWaitOverflow") == ()
    assert set(doctor.SHOWN_COUNTERS) <= set(COUNTER_MEANINGS)
    ids = [k.spec.finding.id for k in Kind if k.spec.finding]
    assert len(ids) == len(set(ids))
    assert {"tw_paws", "syncookies_sent", "cookie_fail", "paws_estab", "paws_active",
            "tw_reuse_out", "syn_retrans"} == set(ids)        # stable ids scripts match on
