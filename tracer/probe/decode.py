"""Bytes from the BPF maps and ring buffer -> stream records. Pure: no bcc, no kernel.

The layouts mirror bpf/refusal.h (struct refusal_event, struct peer_key).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from tracer.kinds import Kind
from tracer.model import Event
from tracer.probe.abi import EVF_PENDING, REASON_NONE, RECORD_RETRACT, SYNTHETIC_REASONS

EVENT = struct.Struct("<QIIBBHHH16s16s")      # struct refusal_event



_ADDRESSES: dict[bytes, tuple[int, str]] = {}
_V4_MAPPED = b"\0" * 10 + b"\xff\xff"


def address(family: int, raw: bytes) -> tuple[int, str]:
    """(family, text) of a 16-byte address field; v4-mapped IPv6 is shown as IPv4.

    Cached: the same peers come back again and again, and this runs per event.
    """
    key = raw[:4] if family == 4 else raw
    hit = _ADDRESSES.get(key)
    if hit is not None:
        return hit
    if family == 4:
        hit = (4, socket.inet_ntop(socket.AF_INET, raw[:4]))
    elif raw[:12] == _V4_MAPPED:
        hit = (4, socket.inet_ntop(socket.AF_INET, raw[12:16]))
    else:
        hit = (6, socket.inet_ntop(socket.AF_INET6, raw))
    if len(_ADDRESSES) > 65_536:             # a flood of distinct sources: start over
        _ADDRESSES.clear()
    _ADDRESSES[key] = hit
    return hit


@dataclass(slots=True)
class RawRecord:
    """One ring-buffer record before time and reason are resolved."""

    ktime_ns: int
    netns: int
    reason: int
    kind: int
    family: int
    peer_port: int
    local_port: int
    flags: int
    peer: str
    local: str

    @property
    def is_retraction(self) -> bool:
        return self.kind == RECORD_RETRACT

    @property
    def pending(self) -> bool:
        return bool(self.flags & EVF_PENDING)

    @property
    def tuple(self) -> tuple[int, str, int, str, int]:
        return (self.netns, self.peer, self.peer_port, self.local, self.local_port)


def decode_record(data: bytes) -> RawRecord:
    ts, netns, reason, kind, family, pport, lport, flags, peer, local = \
        EVENT.unpack_from(data)
    fam, peer_text = address(family, peer)
    _, local_text = address(family, local)
    return RawRecord(ts, netns, reason, kind, fam, pport, lport, flags, peer_text, local_text)


class ReasonNames:
    """Drop-reason number -> name as this kernel spells it (plus the syn_drop queue names)."""

    def __init__(self, kernel_reasons: dict[int, str]) -> None:
        self._names = dict(kernel_reasons)
        self._names.update(SYNTHETIC_REASONS)

    def name(self, number: int) -> str | None:
        if number == REASON_NONE:
            return None
        name = self._names.get(number)
        return name if name is not None else str(number)


KINDS_BY_ID = {k.id: k for k in Kind}


def fast_event(data: bytes, reasons: ReasonNames, wall_offset: float) -> Event | None:
    """The Event of an ordinary record straight from its bytes (the per-event hot path);
    None for a pending or retraction record, or a kind this version does not know."""
    ts, netns, reason, kind, family, pport, lport, flags, peer, local = EVENT.unpack_from(data)
    k = KINDS_BY_ID.get(kind)
    if k is None or flags & EVF_PENDING:
        return None
    fam, peer_text = address(family, peer)
    return Event(ts / 1e9 + wall_offset, k, peer_text, pport, address(family, local)[1], lport,
                 fam, netns, reasons.name(reason))


def to_event(raw: RawRecord, reasons: ReasonNames, wall_offset: float) -> Event:
    """The stream Event of a raw record; wall_offset turns CLOCK_MONOTONIC into unix time."""
    return Event(ts=raw.ktime_ns / 1e9 + wall_offset, kind=Kind.from_id(raw.kind), peer=raw.peer,
                 peer_port=raw.peer_port, local=raw.local, local_port=raw.local_port,
                 family=raw.family, netns=raw.netns, reason=reasons.name(raw.reason))


def percpu_sum(values: list[int]) -> int:
    """Sum of per-CPU u64 counters that may be decremented on another CPU (mod 2**64)."""
    total = sum(values) % (1 << 64)
    return total - (1 << 64) if total >= (1 << 63) else total
