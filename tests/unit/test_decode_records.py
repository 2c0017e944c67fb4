"""Ring-buffer records and map keys as bpf/refusal.h lays them out, decoded without a kernel."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from tracer.probe import decode
from tracer.probe.peer_table import PEER_KEY

NETNS = 4026531840


def pack_event(*, ts=2_000_000_000, netns=NETNS, reason=0xFFFFFFFF, kind=1, family=4,
               peer="192.0.2.10", peer_port=51514, local="198.51.100.1", local_port=443,
               flags=0, trailing=b"") -> bytes:
    """struct refusal_event written field by field (not through decode.EVENT)."""
    def addr(text: str) -> bytes:
        return ipaddress.ip_address(text).packed.ljust(16, b"\0")

    return (struct.pack("<Q", ts) + struct.pack("<I", netns) + struct.pack("<I", reason)
            + bytes([kind, family]) + struct.pack("<HHH", peer_port, local_port, flags)
            + addr(peer) + addr(local) + trailing)


def test_struct_sizes_and_offsets_follow_the_c_layout():
    assert decode.EVENT.size == 56
    assert PEER_KEY.itemsize == 24
    assert [PEER_KEY.fields[f][1] for f in ("netns", "port", "kind", "family", "peer")] == \
        [0, 4, 6, 7, 8]
    raw = pack_event()
    assert len(raw) == 56


def test_ipv4_record():
    r = decode.decode_record(pack_event(reason=0x10001, flags=0))
    assert r == decode.RawRecord(ktime_ns=2_000_000_000, netns=NETNS, reason=0x10001, kind=1,
                                 family=4, peer_port=51514, local_port=443, flags=0,
                                 peer="192.0.2.10", local="198.51.100.1")
    assert not r.pending and not r.is_retraction
    assert r.tuple == (NETNS, "192.0.2.10", 51514, "198.51.100.1", 443)


def test_ipv4_ignores_bytes_after_the_first_four():
    raw = bytearray(pack_event(peer="10.0.0.1"))
    raw[24 + 4:24 + 16] = b"\xff" * 12                   # garbage after the IPv4 address
    assert decode.decode_record(bytes(raw)).peer == "10.0.0.1"


def test_record_may_carry_ring_buffer_padding():
    assert decode.decode_record(pack_event(trailing=b"\0" * 8)).local_port == 443


def test_ipv6_is_compressed_and_v4_mapped_becomes_ipv4():
    r = decode.decode_record(pack_event(family=6, peer="2001:0db8:0000:0000:0000:0000:0000:0001",
                                        local="fe80::1:2"))
    assert (r.family, r.peer, r.local) == (6, "2001:db8::1", "fe80::1:2")
    m = decode.decode_record(pack_event(family=6, peer="::ffff:203.0.113.5",
                                        local="::ffff:10.0.0.1"))
    assert (m.family, m.peer, m.local) == (4, "203.0.113.5", "10.0.0.1")


def test_flags_and_retraction():
    assert decode.decode_record(pack_event(flags=decode.EVF_PENDING)).pending
    assert decode.decode_record(pack_event(flags=2)).pending is False
    assert decode.decode_record(pack_event(kind=decode.RECORD_RETRACT)).is_retraction


def test_address_helper():
    assert decode.address(4, bytes([127, 0, 0, 1]) + b"\0" * 12) == (4, "127.0.0.1")
    assert decode.address(6, ipaddress.IPv6Address("::1").packed) == (6, "::1")
    assert decode.address(6, ipaddress.IPv6Address("::ffff:1.2.3.4").packed) == (4, "1.2.3.4")


def test_reason_names():
    names = decode.ReasonNames({2: "NOT_SPECIFIED", 40: "TCP_LISTEN_OVERFLOW"})
    assert names.name(40) == "TCP_LISTEN_OVERFLOW"
    assert names.name(decode.REASON_NONE) is None
    assert names.name(0x10001) == "ACCEPT_QUEUE_FULL"
    assert names.name(0x10002) == "SYN_QUEUE_FULL"
    assert names.name(77) == "77"                          # unknown number: shown as is


def test_kernel_names_cannot_shadow_the_queue_names():
    names = decode.ReasonNames({0x10001: "SOMETHING"})
    assert names.name(0x10001) == "ACCEPT_QUEUE_FULL"


def test_to_event_turns_monotonic_into_wall_time():
    raw = decode.decode_record(pack_event(ts=1_500_000_000, kind=9, reason=36, family=6,
                                          peer="2001:db8::5", local="2001:db8::1",
                                          local_port=22, peer_port=60000))
    e = decode.to_event(raw, decode.ReasonNames({36: "TCP_RFC7323_PAWS"}), 1_700_000_000.0)
    assert e.to_json() == {
        "type": "event", "ts": 1_700_000_001.5, "kind": "paws", "category": "paws",
        "peer": "2001:db8::5", "peer_port": 60000, "local": "2001:db8::1", "local_port": 22,
        "family": 6, "netns": NETNS, "reason": "TCP_RFC7323_PAWS"}


def test_to_event_refuses_an_unknown_kind_id():
    raw = decode.decode_record(pack_event(kind=14))
    with pytest.raises(ValueError):
        decode.to_event(raw, decode.ReasonNames({}), 0.0)


@pytest.mark.parametrize("values, total", [
    ([], 0),
    ([1, 2, 3], 6),
    ([5, (1 << 64) - 2], 3),                  # +5 here, -2 on another CPU
    ([(1 << 64) - 1], -1),
    ([(1 << 63) - 1], (1 << 63) - 1),
    ([1 << 63], -(1 << 63)),
])
def test_percpu_sum(values, total):
    assert decode.percpu_sum(values) == total
