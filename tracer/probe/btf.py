"""Struct member offsets of the running kernel, read from its BTF (/sys/kernel/btf/vmlinux).

bcc compiles against whatever headers are installed, which may belong to another kernel,
so every field the BPF code reads is located here instead. A small parser of the binary
BTF format: the type section is indexed once, struct members are decoded on demand.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

VMLINUX = "/sys/kernel/btf/vmlinux"
MAGIC = 0xEB9F

# BTF kinds (include/uapi/linux/btf.h)
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)
MODIFIERS = (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG)

_HEADER = struct.Struct("<HBBIIIII")
_TYPE = struct.Struct("<III")
_MEMBER = struct.Struct("<III")


class BtfError(Exception):
    """The BTF is missing, malformed, or lacks a struct or member."""


@dataclass(frozen=True)
class FieldOffset:
    """Where a member lies inside its outermost struct."""

    byte: int          # byte holding the first bit
    size: int | None   # bytes, None for bitfields
    bit: int           # absolute bit offset
    bits: int          # bitfield width, 0 when not a bitfield


def _trailing(kind: int, vlen: int) -> int:
    """Bytes of kind-specific data following a type's 12-byte header."""
    if kind in (INT, VAR, DECL_TAG):
        return 4
    if kind == ARRAY:
        return 12
    if kind in (STRUCT, UNION, DATASEC):
        return 12 * vlen
    if kind in (ENUM, FUNC_PROTO):
        return 8 * vlen
    if kind == ENUM64:
        return 12 * vlen
    if kind in (PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG):
        return 0
    raise BtfError(f"unknown BTF kind {kind}")


class Btf:
    """An indexed BTF blob."""

    def __init__(self, data: bytes) -> None:
        if len(data) < _HEADER.size:
            raise BtfError("BTF data is truncated (no header)")
        magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = \
            _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise BtfError(f"not BTF data (magic {magic:#x}, expected {MAGIC:#x})")
        t0, s0 = hdr_len + type_off, hdr_len + str_off
        if t0 + type_len > len(data) or s0 + str_len > len(data):
            raise BtfError("BTF data is truncated")
        self._data = data
        self._strings = data[s0:s0 + str_len]
        # type id -> (offset of its header); id 0 is void
        self._offsets: list[int] = [0]
        self._by_name: dict[str, list[int]] = {}
        pos, end = t0, t0 + type_len
        while pos < end:
            if pos + 12 > end:
                raise BtfError("BTF type section is truncated")
            name_off, info, _ = _TYPE.unpack_from(data, pos)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            tid = len(self._offsets)
            self._offsets.append(pos)
            if kind in (STRUCT, UNION, TYPEDEF, ENUM, ENUM64) and name_off:
                self._by_name.setdefault(self._str(name_off), []).append(tid)
            pos += 12 + _trailing(kind, vlen)
        if pos != end:
            raise BtfError("BTF type section is truncated")

    @classmethod
    def load(cls, path: str = VMLINUX) -> Btf:
        try:
            with open(path, "rb") as f:
                return cls(f.read())
        except FileNotFoundError:
            raise BtfError(f"BTF not found at {path}: the kernel needs "
                           "CONFIG_DEBUG_INFO_BTF=y") from None
        except OSError as e:
            raise BtfError(f"cannot read BTF at {path}: {e.strerror}") from None

    @classmethod
    def from_bytes(cls, data: bytes) -> Btf:
        return cls(data)

    # ------------------------------------------------------------------ raw access
    def _str(self, off: int) -> str:
        end = self._strings.find(b"\0", off)
        return self._strings[off:end if end >= 0 else None].decode("ascii", "replace")

    def _type(self, tid: int) -> tuple[str, int, int, int, bool, int]:
        """(name, kind, vlen, size_or_type, kind_flag, data offset) of type id tid."""
        if not 0 < tid < len(self._offsets):
            raise BtfError(f"BTF type id {tid} out of range")
        pos = self._offsets[tid]
        name_off, info, size_type = _TYPE.unpack_from(self._data, pos)
        return (self._str(name_off), (info >> 24) & 0x1F, info & 0xFFFF, size_type,
                bool(info >> 31), pos + 12)

    def _resolve(self, tid: int) -> int:
        """Follow typedefs and qualifiers to the underlying type."""
        for _ in range(64):
            if tid == 0:
                return 0
            _, kind, _, ref, _, _ = self._type(tid)
            if kind not in MODIFIERS:
                return tid
            tid = ref
        raise BtfError("BTF typedef chain too long")

    def _members(self, tid: int) -> list[tuple[str, int, int, int]]:
        """(name, type id, bit offset, bitfield bits) of a struct or union."""
        _, kind, vlen, _, kflag, pos = self._type(tid)
        if kind not in (STRUCT, UNION):
            return []
        out = []
        for i in range(vlen):
            name_off, mtype, offset = _MEMBER.unpack_from(self._data, pos + 12 * i)
            bit, bits = (offset & 0xFFFFFF, offset >> 24) if kflag else (offset, 0)
            out.append((self._str(name_off), mtype, bit, bits))
        return out

    def _struct_id(self, name: str) -> int:
        best, best_size = 0, -1
        for tid in self._by_name.get(name, []):
            rid = self._resolve(tid)
            if rid == 0:
                continue
            _, kind, vlen, size, _, _ = self._type(rid)
            if kind in (STRUCT, UNION) and vlen and size > best_size:
                best, best_size = rid, size
        if not best:
            raise BtfError(f"BTF has no struct {name}")
        return best

    def _find(self, tid: int, member: str, base: int) -> tuple[int, int, int] | None:
        """Bit offset, type id and bitfield bits of `member`, searching anonymous members."""
        for name, mtype, bit, bits in self._members(self._resolve(tid)):
            if name == member:
                return base + bit, mtype, bits
        for name, mtype, bit, _ in self._members(self._resolve(tid)):
            if not name:
                hit = self._find(mtype, member, base + bit)
                if hit:
                    return hit
        return None

    def _size(self, tid: int) -> int | None:
        rid = self._resolve(tid)
        if rid == 0:
            return None
        _, kind, _, size, _, pos = self._type(rid)
        if kind == PTR:
            return 8
        if kind == ARRAY:
            elem, _, nelems = struct.unpack_from("<III", self._data, pos)
            elem_size = self._size(elem)
            return elem_size * nelems if elem_size is not None else None
        if kind in (INT, STRUCT, UNION, ENUM, ENUM64, FLOAT, DATASEC):
            return size
        return None

    # ------------------------------------------------------------------ API
    def offset(self, struct_name: str, path: str) -> FieldOffset:
        """Offset of `struct_name.path` (dots descend into nested struct members)."""
        tid, bit, bits = self._struct_id(struct_name), 0, 0
        for part in path.split("."):
            hit = self._find(tid, part, bit)
            if hit is None:
                raise BtfError(f"BTF has no member {struct_name}.{path} ({part!r} not found)")
            bit, tid, bits = hit
        return FieldOffset(byte=bit // 8, size=None if bits else self._size(tid),
                           bit=bit, bits=bits)

    def has_member(self, struct_name: str, path: str) -> bool:
        try:
            self.offset(struct_name, path)
        except BtfError:
            return False
        return True

    def struct_size(self, struct_name: str) -> int:
        return self._type(self._struct_id(struct_name))[3]

    def enum_values(self, enum: str) -> dict[str, int]:
        for tid in self._by_name.get(enum, []):
            rid = self._resolve(tid)
            _, kind, vlen, _, kflag, pos = self._type(rid)
            if kind == ENUM:
                vals = struct.unpack_from(f"<{2 * vlen}I", self._data, pos)
                return {self._str(vals[2 * i]):
                        (vals[2 * i + 1] - (1 << 32) if kflag and vals[2 * i + 1] >> 31
                         else vals[2 * i + 1]) for i in range(vlen)}
            if kind == ENUM64:
                out = {}
                for i in range(vlen):
                    name_off, lo, hi = struct.unpack_from("<III", self._data, pos + 12 * i)
                    out[self._str(name_off)] = (hi << 32) | lo
                return out
        raise BtfError(f"BTF has no enum {enum}")
