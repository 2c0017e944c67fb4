"""What this kernel's tracepoints offer, read from tracefs: drop-reason names and event fields.

Drop-reason numbers differ between kernels (NOT_SPECIFIED is 0 on 5.15, 1 on 6.1, 2 on
6.18), so they are decoded from the running kernel's kfree_skb format file, never from
headers. The same files tell which optional fields (rx_sk, location) exist.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tracer.errors import EnvironmentProblem

TRACEFS = Path("/sys/kernel/tracing")
_SYMBOLIC = re.compile(r"\{\s*(\d+),\s*\"([A-Z0-9_]+)\"\s*\}")
_FIELD = re.compile(r"field:[^;]*?\b(\w+)(\[\d+\])?;")


def ensure_mounted(root: Path = TRACEFS) -> Path:
    """Return the tracefs root, mounting it first when the directory is empty."""
    if (root / "events").is_dir():
        return root
    result = subprocess.run(["mount", "-t", "tracefs", "nodev", str(root)],
                            capture_output=True, text=True, timeout=10, check=False)
    if result.returncode != 0 or not (root / "events").is_dir():
        detail = (result.stderr or "").strip().splitlines()
        raise EnvironmentProblem(
            f"tracefs is not mounted at {root} and mounting it failed"
            + (f" ({detail[-1]})" if detail else ""),
            f"run `mount -t tracefs nodev {root}` as root, or start the tracer where "
            "tracefs is available")
    return root


def read_format(event: str, root: Path = TRACEFS) -> str | None:
    """The format file of `group/name`, or None when this kernel has no such tracepoint."""
    try:
        return (root / "events" / event / "format").read_text()
    except OSError:
        return None


def fields(format_text: str) -> set[str]:
    """Field names of a tracepoint format (common_* fields included)."""
    return {m.group(1) for m in _FIELD.finditer(format_text)}


def symbolic_values(format_text: str, after: str = "") -> dict[int, str]:
    """The `{ N, "NAME" }` pairs of a format's print fmt, from the first `after` onwards."""
    start = format_text.find(after) if after else 0
    return {int(n): name for n, name in _SYMBOLIC.findall(format_text[max(start, 0):])}


def drop_reasons(root: Path = TRACEFS) -> dict[int, str]:
    """Drop-reason number -> name (without SKB_DROP_REASON_) on this kernel; {} if none."""
    text = read_format("skb/kfree_skb", root)
    if text is None or "reason" not in fields(text):
        return {}
    return symbolic_values(text, "print fmt")
