"""Numbers bpf/ and the decoder share, declared here once and passed to the C as -D defines.

The record and map layouts themselves are in bpf/refusal.h and mirrored by decode.EVENT and
peer_table.PEER_KEY (tests/unit/test_decode_records.py compares them); kind ids come from
tracer.kinds.
"""

from __future__ import annotations

import enum

KIND_MAX = 16           # size of the per-kind totals array: every kind id is below it
RECORD_RETRACT = 15     # a record that withdraws a syn_drop answered late (after ARP/ND)
EVF_PENDING = 1         # event flag: a syn_drop whose SYN-ACK may still leave; hold it
REASON_NONE = 0xFFFFFFFF
# Reasons the kernel has no drop-reason name for: which queue of the listener was full.
SYNTHETIC_REASONS = {0x10001: "ACCEPT_QUEUE_FULL", 0x10002: "SYN_QUEUE_FULL"}


class Stat(enum.IntEnum):
    """Slots of the per-CPU `stats` array."""

    LOST = 0            # ring buffer full: event not delivered
    SUPPRESSED = 1      # held back by the events-per-second cap
    INSERTS = 2         # new peer_counts entries (inserts minus live entries = evicted)


STAT_MAX = 4


def c_defines() -> dict[str, int]:
    """Every number above as the define bpf/ uses."""
    out = {"KIND_MAX": KIND_MAX, "RECORD_RETRACT": RECORD_RETRACT, "EVF_PENDING": EVF_PENDING,
           "REASON_NONE": REASON_NONE, "STAT_MAX": STAT_MAX}
    out.update({f"STAT_{s.name}": s.value for s in Stat})
    out.update({f"REASON_{name}": number for number, name in SYNTHETIC_REASONS.items()})
    return out
