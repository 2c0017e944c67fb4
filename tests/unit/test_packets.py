"""Hand-built TCP frames: checksums, options, and parse(build(x)) == x."""

from __future__ import annotations

import struct

from tracer.packets import ACK, SYN, Segment, _checksum, parse_frame, tcp_options


def test_round_trip_v4_and_v6():
    for src, dst in (("10.0.0.1", "10.0.0.2"), ("fd00::1", "fd00::2")):
        seg = Segment(src, dst, 1234, 80, SYN | ACK, seq=7, ack=9, window=512,
                      options=tcp_options(mss=1460, sack_perm=True, ts=(11, 22), wscale=7),
                      payload=b"hi")
        back = parse_frame(seg.frame("02:00:00:00:00:01", "02:00:00:00:00:02"))
        assert (back.src, back.dst, back.sport, back.dport, back.flags, back.seq, back.ack,
                back.window, back.payload, back.ts) == (src, dst, 1234, 80, SYN | ACK, 7, 9, 512,
                                                       b"hi", (11, 22))


def test_checksums_verify_to_zero():
    seg = Segment("10.0.0.1", "10.0.0.2", 1, 2, ACK, payload=b"abc")
    ip = seg.ip_bytes()
    assert _checksum(ip[:20]) == 0
    tcp = ip[20:]
    pseudo = ip[12:20] + struct.pack("!BBH", 0, 6, len(tcp))
    assert _checksum(pseudo + tcp) == 0


def test_options_are_padded_and_non_tcp_frames_ignored():
    assert len(tcp_options(mss=1460, wscale=7)) % 4 == 0
    assert parse_frame(b"\0" * 12 + b"\x08\x06" + b"\0" * 28) is None
    assert parse_frame(b"short") is None
