"""Reading recordings back: every complete line, with one warning per problem.

A recorder killed mid-write leaves a partial last line (or a truncated gzip stream); a file
may also hold garbage. Readers keep everything usable and say what they skipped, with the
file name and line number.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from tracer.errors import TracerError, UsageError

FORMAT = 1


def _raw_lines(path: str, warn: list[str]) -> Iterator[bytes]:
    """Lines of a plain or gzip file; a truncated gzip yields what it could decompress."""
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
    except IsADirectoryError:
        raise UsageError(f"{path} is a directory", "give a recording file") from None
    except OSError as e:
        raise TracerError(f"cannot read {path}: {e.strerror}", "check the path") from None
    if magic != b"\x1f\x8b":
        with open(path, "rb") as f:
            yield from f
        return
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    pending = b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            try:
                data = decompressor.decompress(chunk)
            except zlib.error:
                warn.append(f"{path}: corrupt gzip data; reading what came before it")
                break
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line + b"\n"
    if not decompressor.eof:
        warn.append(f"{path}: the gzip stream is cut short (recorder killed?)")
    if pending:
        yield pending


@dataclass
class Recording:
    """What one file holds."""

    path: str
    session: dict | None = None
    events: list[dict] = field(default_factory=list)
    tallies: list[tuple[int, dict]] = field(default_factory=list)   # (events before it, line)
    counters: list[dict] = field(default_factory=list)
    end: dict | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Cleanly ended: the last lines are the final tally and the end line."""
        return self.end is not None

    @property
    def host(self) -> str:
        return (self.session or {}).get("host", "?")

    def final_tally(self) -> tuple[dict | None, list[dict]]:
        """The last tally and the events recorded after it (empty for a clean file)."""
        if not self.tallies:
            return None, self.events
        index, line = self.tallies[-1]
        return line, self.events[index:]


def read(path: str) -> Recording:
    """Read a recording, skipping (and warning about) anything unusable."""
    rec = Recording(path)
    for lineno, raw in enumerate(_raw_lines(path, rec.warnings), start=1):
        if not raw.endswith(b"\n"):
            rec.warnings.append(f"{path}:{lineno}: partial last line skipped")
            break
        try:
            obj = json.loads(raw)
        except ValueError:
            rec.warnings.append(f"{path}:{lineno}: not a JSON line, skipped")
            continue
        kind = obj.get("type") if isinstance(obj, dict) else None
        if kind == "session":
            if obj.get("format", FORMAT) > FORMAT:
                raise TracerError(f"{path} is recording format {obj.get('format')}, "
                                  f"newer than this tracer reads ({FORMAT})",
                                  "upgrade the tracer to read it")
            rec.session = rec.session or obj
        elif kind == "event":
            rec.events.append(obj)
        elif kind == "tally":
            rec.tallies.append((len(rec.events), obj))
        elif kind == "counters":
            rec.counters.append(obj)
        elif kind == "end":
            rec.end = obj
        else:
            rec.warnings.append(f"{path}:{lineno}: unknown line type {kind!r}, skipped")
    if rec.session is None and not rec.events and not rec.tallies:
        rec.warnings.append(f"{path}: no usable lines")
    return rec
