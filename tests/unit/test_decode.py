"""Ring-buffer records and map keys -> stream records (layouts of bpf/refusal.h)."""

from __future__ import annotations

import ipaddress

from tracer.model import Kind
from tracer.probe import decode


def record(kind=1, family=4, peer="10.1.2.3", local="10.0.0.1", reason=40, flags=0,
           ts=5_000_000_000, netns=4026531840, pport=51514, lport=443) -> bytes:
    pb = ipaddress.ip_address(peer).packed.ljust(16, b"\0")
    lb = ipaddress.ip_address(local).packed.ljust(16, b"\0")
    return decode.EVENT.pack(ts, netns, reason, kind, family, pport, lport, flags, pb, lb)


def test_event_layout_is_56_bytes_like_the_c_struct():
    assert decode.EVENT.size == 56
    assert decode.PEER_KEY.size == 24


def test_decode_ipv4_event_with_kernel_reason():
    raw = decode.decode_record(record())
    names = decode.ReasonNames({40: "TCP_LISTEN_OVERFLOW"})
    e = decode.to_event(raw, names, wall_offset=1000.0)
    assert e.to_json() == {
        "type": "event", "ts": 1005.0, "kind": "syn_drop", "category": "syn",
        "peer": "10.1.2.3", "peer_port": 51514, "local": "10.0.0.1", "local_port": 443,
        "family": 4, "netns": 4026531840, "reason": "TCP_LISTEN_OVERFLOW"}


def test_ipv6_compressed_and_v4_mapped_shown_as_v4():
    raw = decode.decode_record(record(family=6, peer="2001:db8:0:0:0:0:0:7",
                                      local="::ffff:10.9.8.7"))
    assert raw.peer == "2001:db8::7" and raw.family == 6
    assert raw.local == "10.9.8.7"
    mapped = decode.decode_record(record(family=6, peer="::ffff:192.0.2.1",
                                         local="::ffff:10.0.0.1"))
    assert (mapped.family, mapped.peer) == (4, "192.0.2.1")


def test_reason_names_synthetic_none_and_unknown():
    names = decode.ReasonNames({2: "NOT_SPECIFIED"})
    assert names.name(0x10001) == "ACCEPT_QUEUE_FULL"
    assert names.name(0x10002) == "SYN_QUEUE_FULL"
    assert names.name(0xFFFFFFFF) is None
    assert names.name(2) == "NOT_SPECIFIED"
    assert names.name(999) == "999"


def test_pending_and_retraction_flags():
    assert decode.decode_record(record(flags=1)).pending
    assert not decode.decode_record(record()).pending
    assert decode.decode_record(record(kind=15)).is_retraction


def test_peer_key_and_unknown_kind():
    key = decode.PEER_KEY.pack(7, 443, 2, 4, bytes([10, 0, 0, 9]) + b"\0" * 12)
    k = decode.decode_peer_key(key)
    assert (k.netns, k.local_port, k.kind, k.family, k.peer) == (7, 443, Kind.ACK_DROP, 4,
                                                                 "10.0.0.9")
    assert decode.decode_peer_key(decode.PEER_KEY.pack(7, 1, 99, 4, b"\0" * 16)) is None


def test_percpu_sum_handles_decrements_on_another_cpu():
    assert decode.percpu_sum([5, 3]) == 8
    assert decode.percpu_sum([2, (1 << 64) - 1]) == 1        # +2 on cpu0, -1 on cpu1
    assert decode.percpu_sum([0, (1 << 64) - 1]) == -1
