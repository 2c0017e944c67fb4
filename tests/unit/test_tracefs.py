"""Parsing tracefs format files: fields, __print_symbolic values, drop reasons.

data/*.format are this machine's (Linux 6.18) /sys/kernel/tracing/events/*/format files.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tracer.errors import EnvironmentProblem
from tracer.probe import tracefs

DATA = Path(__file__).parent / "data"
KFREE = (DATA / "kfree_skb.format").read_text()
CONSUME = (DATA / "consume_skb.format").read_text()
DEV_QUEUE = (DATA / "net_dev_queue.format").read_text()
COMMON = {"common_type", "common_flags", "common_preempt_count", "common_pid"}

# A 5.19-era kfree_skb: no rx_sk, different numbering (NOT_SPECIFIED is 2 only since 6.4).
KFREE_519 = """\
name: kfree_skb
ID: 1460
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned short protocol;\toffset:24;\tsize:2;\tsigned:0;
\tfield:enum skb_drop_reason reason;\toffset:28;\tsize:4;\tsigned:0;

print fmt: "skbaddr=%p protocol=%u location=%p reason: %s", REC->skbaddr, REC->protocol, \
REC->location, __print_symbolic(REC->reason, { 1, "NOT_SPECIFIED" }, { 2, "NO_SOCKET" }, \
{ 3, "PKT_TOO_SMALL" }, { 40, "TCP_RFC7323_PAWS" })
"""

# 5.15: kfree_skb has no reason at all.
KFREE_515 = """\
name: kfree_skb
ID: 1412
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned short protocol;\toffset:24;\tsize:2;\tsigned:0;

print fmt: "skbaddr=%p protocol=%u location=%p", REC->skbaddr, REC->protocol, REC->location
"""


def test_kfree_skb_fields():
    assert tracefs.fields(KFREE) == COMMON | {"skbaddr", "location", "rx_sk", "protocol",
                                              "reason"}


def test_consume_skb_fields():
    assert tracefs.fields(CONSUME) == COMMON | {"skbaddr", "location"}


def test_net_dev_queue_fields_include_data_loc_strings():
    assert tracefs.fields(DEV_QUEUE) == COMMON | {"skbaddr", "len", "name"}


def test_array_fields_are_named_without_their_size():
    text = "\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n" \
           "\tfield:__u8 saddr_v6[16];\toffset:24;\tsize:16;\tsigned:0;\n"
    assert tracefs.fields(text) == {"comm", "saddr_v6"}


def test_drop_reason_names_of_this_kernel():
    reasons = tracefs.symbolic_values(KFREE, "print fmt")
    assert len(reasons) == 127
    assert min(reasons) == 2 and max(reasons) == 128
    assert {n: reasons[n] for n in (2, 3, 30, 36, 37, 38, 39, 40, 128)} == {
        2: "NOT_SPECIFIED", 3: "NO_SOCKET", 30: "TCP_FLAGS", 36: "TCP_RFC7323_PAWS",
        37: "TCP_RFC7323_PAWS_ACK", 38: "TCP_RFC7323_TW_PAWS", 39: "TCP_RFC7323_TSECR",
        40: "TCP_LISTEN_OVERFLOW", 128: "MAX"}
    assert not any(name.startswith("SKB_DROP_REASON_") for name in reasons.values())


def test_symbolic_values_of_formats_without_any():
    assert tracefs.symbolic_values(DEV_QUEUE, "print fmt") == {}
    assert tracefs.symbolic_values(CONSUME) == {}


def test_symbolic_values_start_at_after():
    text = 'a { 1, "ONE" } print fmt: x { 2, "TWO" }, { 3, "THREE" }'
    assert tracefs.symbolic_values(text) == {1: "ONE", 2: "TWO", 3: "THREE"}
    assert tracefs.symbolic_values(text, "print fmt") == {2: "TWO", 3: "THREE"}


def test_older_numbering_is_read_not_assumed():
    assert tracefs.symbolic_values(KFREE_519, "print fmt") == {
        1: "NOT_SPECIFIED", 2: "NO_SOCKET", 3: "PKT_TOO_SMALL", 40: "TCP_RFC7323_PAWS"}
    assert "rx_sk" not in tracefs.fields(KFREE_519)


def tracing_root(tmp_path: Path, formats: dict[str, str]) -> Path:
    root = tmp_path / "tracing"
    (root / "events").mkdir(parents=True)
    for event, text in formats.items():
        (root / "events" / event).mkdir(parents=True)
        (root / "events" / event / "format").write_text(text)
    return root


def test_drop_reasons_read_from_a_tracefs_tree(tmp_path):
    root = tracing_root(tmp_path, {"skb/kfree_skb": KFREE, "net/net_dev_queue": DEV_QUEUE})
    reasons = tracefs.drop_reasons(root)
    assert reasons == tracefs.symbolic_values(KFREE, "print fmt")
    assert reasons[40] == "TCP_LISTEN_OVERFLOW"


def test_drop_reasons_empty_without_a_reason_field_or_tracepoint(tmp_path):
    assert tracefs.drop_reasons(tracing_root(tmp_path / "a", {"skb/kfree_skb": KFREE_515})) == {}
    assert tracefs.drop_reasons(tracing_root(tmp_path / "b", {})) == {}
    assert tracefs.drop_reasons(tracing_root(tmp_path / "c", {"skb/kfree_skb": KFREE_519})) \
        == {1: "NOT_SPECIFIED", 2: "NO_SOCKET", 3: "PKT_TOO_SMALL", 40: "TCP_RFC7323_PAWS"}


def test_read_format(tmp_path):
    root = tracing_root(tmp_path, {"skb/consume_skb": CONSUME})
    assert tracefs.read_format("skb/consume_skb", root) == CONSUME
    assert tracefs.read_format("skb/kfree_skb", root) is None


def test_ensure_mounted_leaves_a_mounted_tracefs_alone(tmp_path, monkeypatch):
    root = tracing_root(tmp_path, {})

    def no_mount(*a, **kw):
        raise AssertionError("must not mount")

    monkeypatch.setattr(tracefs.subprocess, "run", no_mount)
    assert tracefs.ensure_mounted(root) == root


def test_ensure_mounted_failure_is_one_line_with_the_remedy(tmp_path, monkeypatch):
    root = tmp_path / "tracing"
    root.mkdir()
    calls = []

    def failing_mount(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 32, "", "mount: permission denied\n"
                                                        "mount: only root can do that\n")

    monkeypatch.setattr(tracefs.subprocess, "run", failing_mount)
    with pytest.raises(EnvironmentProblem) as exc:
        tracefs.ensure_mounted(root)
    assert calls == [["mount", "-t", "tracefs", "nodev", str(root)]]
    assert str(exc.value) == (
        f"tracefs is not mounted at {root} and mounting it failed "
        f"(mount: only root can do that): run `mount -t tracefs nodev {root}` as root, "
        "or start the tracer where tracefs is available")
    assert "\n" not in str(exc.value)
