"""Holds syn_drop events that the kernel may still retract, until their grace window ends.

When a SYN-ACK waits for ARP/ND it leaves after its SYN was consumed, so the kernel side
counts the SYN as dropped, flags the event "pending", and retracts the count if the SYN-ACK
leaves within the window. This keeps such events back for that long and drops the ones
that were retracted, so the stream never shows a refusal that did not happen.
"""

from __future__ import annotations

from collections import deque

from tracer.probe.decode import RawRecord


class GraceWindow:
    """Pending records, released once `window_ns` (plus slack) has passed or retracted."""

    def __init__(self, window_ns: int, slack_ns: int = 100_000_000) -> None:
        self.hold_ns = window_ns + slack_ns
        self._held: deque[RawRecord] = deque()
        self.retracted = 0

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, record: RawRecord) -> None:
        self._held.append(record)

    def retract(self, retraction: RawRecord) -> bool:
        """Drop the held record with the retraction's 4-tuple; False when none is held."""
        for i, rec in enumerate(self._held):
            if rec.tuple == retraction.tuple:
                del self._held[i]
                self.retracted += 1
                return True
        return False

    def release(self, now_ns: int) -> list[RawRecord]:
        """Held records whose window has passed at kernel time `now_ns`, oldest first."""
        out = []
        while self._held and now_ns - self._held[0].ktime_ns >= self.hold_ns:
            out.append(self._held.popleft())
        return out

    def release_all(self) -> list[RawRecord]:
        out = list(self._held)
        self._held.clear()
        return out

    def due_ns(self, now_ns: int) -> int:
        """How long until every held record is released (0 when nothing is held)."""
        if not self._held:
            return 0
        return max(0, self._held[-1].ktime_ns + self.hold_ns - now_ns)
