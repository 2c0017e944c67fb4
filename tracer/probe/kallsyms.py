"""Address ranges of kernel functions, for checking where a packet was freed.

A tracepoint's `location` is a return address inside the caller; it belongs to function F
when it lies in [F, next higher symbol). Aliases at the same address are skipped.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from tracer.errors import EnvironmentProblem

KALLSYMS = "/proc/kallsyms"


def symbol_ranges(names: Iterable[str], lines: Iterable[str]) -> dict[str, tuple[int, int]]:
    """[start, end) of each wanted text symbol found in kallsyms-format `lines`."""
    wanted = set(names)
    starts: dict[str, int] = {}
    addresses: list[int] = []
    for line in lines:
        parts = line.split()
        if len(parts) < 3 or parts[1] not in "tTwW":
            continue
        addr = int(parts[0], 16)
        addresses.append(addr)
        if parts[2] in wanted and parts[2] not in starts:
            starts[parts[2]] = addr
    if starts and not any(addresses):
        raise EnvironmentProblem(
            "kernel symbol addresses read as zero in /proc/kallsyms",
            "run as root, or lower kernel.kptr_restrict")
    addresses = sorted(set(addresses))
    ranges: dict[str, tuple[int, int]] = {}
    for name, start in starts.items():
        i = bisect.bisect_right(addresses, start)
        end = addresses[i] if i < len(addresses) else start + 0x10000
        ranges[name] = (start, end)
    return ranges


def load_ranges(names: Iterable[str], path: str = KALLSYMS) -> dict[str, tuple[int, int]]:
    with open(path) as f:
        return symbol_ranges(names, f)
