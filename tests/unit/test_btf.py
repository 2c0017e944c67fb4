"""BTF reader: a crafted blob with every layout feature we rely on, and this machine's BTF."""

from __future__ import annotations

import os
import struct

import pytest

from tracer.probe.btf import Btf, BtfError


class Blob:
    """Builds a little-endian BTF blob type by type."""

    def __init__(self) -> None:
        self.strings = b"\0"
        self.types = b""
        self.count = 0

    def s(self, name: str) -> int:
        if not name:
            return 0
        off = len(self.strings)
        self.strings += name.encode() + b"\0"
        return off

    def add(self, name: str, kind: int, vlen: int, size_or_type: int, extra: bytes = b"",
            kflag: bool = False) -> int:
        info = (int(kflag) << 31) | (kind << 24) | vlen
        self.types += struct.pack("<III", self.s(name), info, size_or_type) + extra
        self.count += 1
        return self.count

    def bytes(self) -> bytes:
        hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(self.types), len(self.types),
                          len(self.strings))
        return hdr + self.types + self.strings


def crafted() -> bytes:
    b = Blob()
    u32 = b.add("unsigned int", 1, 0, 4, struct.pack("<I", 32))               # 1 INT
    ptr = b.add("", 2, 0, u32)                                                # 2 PTR
    u32t = b.add("u32", 8, 0, u32)                                            # 3 TYPEDEF
    # 4 FUNC_PROTO with 2 params: its 8-byte trailers must keep the parse aligned
    b.add("", 13, 2, u32, struct.pack("<IIII", b.s("a"), u32, b.s("b"), ptr))
    inner = b.add("inner", 4, 2, 8, struct.pack("<III", b.s("x"), u32, 0)
                  + struct.pack("<III", b.s("y"), u32, 32))                    # 5 STRUCT
    anon = b.add("", 5, 1, 4, struct.pack("<III", b.s("in_union"), u32t, 0))   # 6 UNION
    # 7 STRUCT outer (kind_flag: bitfield sizes in the high byte of the offset)
    members = [("first", u32, 0, 0), ("", anon, 32, 0), ("bits", u32, 64 + 3, 5),
               ("nested", inner, 96, 0), ("p", ptr, 160, 0)]
    extra = b"".join(struct.pack("<III", b.s(n), t, (bs << 24) | off) for n, t, off, bs in members)
    b.add("outer", 4, len(members), 28, extra, kflag=True)
    b.add("outer", 7, 0, 0)                                                   # 8 FWD (ignored)
    b.add("colour", 6, 2, 4, struct.pack("<IiIi", b.s("RED"), 1, b.s("BLUE"), -2), kflag=True)
    return b.bytes()


def test_crafted_blob_offsets_bitfields_and_nesting():
    btf = Btf.from_bytes(crafted())
    assert btf.offset("outer", "first").byte == 0
    f = btf.offset("outer", "in_union")                       # through the anonymous union
    assert (f.byte, f.size) == (4, 4)
    bits = btf.offset("outer", "bits")
    assert (bits.byte, bits.bit, bits.bits, bits.size) == (8, 67, 5, None)
    y = btf.offset("outer", "nested.y")
    assert (y.byte, y.size) == (16, 4)
    assert btf.offset("outer", "p").size == 8
    assert btf.struct_size("outer") == 28
    assert btf.enum_values("colour") == {"RED": 1, "BLUE": -2}
    assert btf.has_member("outer", "nested.x")
    assert not btf.has_member("outer", "nested.z")


def test_crafted_blob_errors():
    btf = Btf.from_bytes(crafted())
    with pytest.raises(BtfError, match="no member outer.missing"):
        btf.offset("outer", "missing")
    with pytest.raises(BtfError, match="no struct nothing"):
        btf.offset("nothing", "x")
    data = crafted()
    with pytest.raises(BtfError, match="not BTF"):
        Btf.from_bytes(b"\0\0" + data[2:])
    with pytest.raises(BtfError, match="truncated"):
        Btf.from_bytes(data[:40])
    with pytest.raises(BtfError, match="truncated"):
        Btf.from_bytes(data[:10])


def test_missing_file_says_what_the_kernel_needs(tmp_path):
    with pytest.raises(BtfError, match="CONFIG_DEBUG_INFO_BTF"):
        Btf.load(str(tmp_path / "vmlinux"))


@pytest.mark.skipif(not os.path.exists("/sys/kernel/btf/vmlinux"), reason="no kernel BTF")
def test_machine_btf_matches_known_618_layout():
    btf = Btf.load()
    release = os.uname().release
    if not release.startswith("6.18."):
        pytest.skip(f"the expected offsets were measured on 6.18, this is {release}")
    expected = {
        ("sk_buff", "dev"): 16, ("sk_buff", "sk"): 24, ("sk_buff", "protocol"): 176,
        ("sk_buff", "transport_header"): 178, ("sk_buff", "network_header"): 180,
        ("sk_buff", "head"): 192, ("sock_common", "skc_net"): 48,
        ("sock_common", "skc_state"): 18, ("sock", "sk_ack_backlog"): 600,
        ("sock", "sk_max_ack_backlog"): 604,
        ("inet_connection_sock", "icsk_accept_queue.qlen"): 1024,
        ("request_sock", "rsk_timer"): 152, ("inet_timewait_sock", "tw_timer"): 160,
        ("timer_list", "function"): 24, ("net_device", "nd_net"): 264, ("net", "ns.inum"): 176,
    }
    got = {k: btf.offset(*k).byte for k in expected}
    assert got == expected
    assert btf.offset("inet_request_sock", "acked").bits == 1
