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


EVENT_PREFIX = b'{"type":"event"'
EVENT_FIELDS = ("ts", "kind", "category", "peer", "peer_port", "local", "local_port", "family",
                "netns", "reason")


@dataclass
class Recording:
    """What one file holds. Event lines are kept raw and parsed in bulk when asked for."""

    path: str
    session: dict | None = None
    event_lines: list[bytes] = field(default_factory=list)
    tallies: list[tuple[int, dict]] = field(default_factory=list)   # (events before it, line)
    counters: list[dict] = field(default_factory=list)
    end: dict | None = None
    warnings: list[str] = field(default_factory=list)
    _frame: object = None

    @property
    def complete(self) -> bool:
        """Cleanly ended: the last lines are the final tally and the end line."""
        return self.end is not None

    @property
    def host(self) -> str:
        return (self.session or {}).get("host", "?")

    @property
    def events(self) -> list[dict]:
        """Every event as a dict (replay; small files)."""
        return self.events_frame().to_dict("records")

    def events_frame(self):  # -> pandas.DataFrame
        """Every event as a DataFrame (columns EVENT_FIELDS), parsed in one go by pyarrow."""
        if self._frame is None:
            self._frame = _parse_events(self.event_lines, self.path, self.warnings)
        return self._frame

    def final_tally(self) -> tuple[dict | None, int]:
        """The last tally, and how many events were recorded before it."""
        if not self.tallies:
            return None, 0
        return self.tallies[-1][1], self.tallies[-1][0]


def _parse_events(lines: list[bytes], path: str, warnings: list[str]):
    import io

    import pandas as pd
    import pyarrow.json as pj

    if not lines:
        return pd.DataFrame({name: [] for name in EVENT_FIELDS})
    try:
        frame = pj.read_json(io.BytesIO(b"".join(lines))).to_pandas()
    except Exception:  # a malformed event line: parse one by one, keep what is usable
        rows = []
        for n, line in enumerate(lines, start=1):
            try:
                obj = json.loads(line)
                rows.append({k: obj[k] for k in EVENT_FIELDS if k != "reason"}
                            | {"reason": obj.get("reason")})
            except (ValueError, KeyError, TypeError):
                warnings.append(f"{path}: event #{n} is malformed, skipped")
        frame = pd.DataFrame(rows, columns=list(EVENT_FIELDS))
    for name in EVENT_FIELDS:
        if name not in frame:
            frame[name] = None
    return frame[list(EVENT_FIELDS)]


def read(path: str) -> Recording:
    """Read a recording, skipping (and warning about) anything unusable."""
    rec = Recording(path)
    for lineno, raw in enumerate(_raw_lines(path, rec.warnings), start=1):
        if not raw.endswith(b"\n"):
            rec.warnings.append(f"{path}:{lineno}: partial last line skipped")
            break
        if raw.startswith(EVENT_PREFIX) and raw.rstrip().endswith(b"}"):
            rec.event_lines.append(raw)            # parsed later, in bulk
            continue
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
            rec.event_lines.append(raw)
        elif kind == "tally":
            rec.tallies.append((len(rec.event_lines), obj))
        elif kind == "counters":
            rec.counters.append(obj)
        elif kind == "end":
            rec.end = obj
        else:
            rec.warnings.append(f"{path}:{lineno}: unknown line type {kind!r}, skipped")
    if rec.session is None and not rec.event_lines and not rec.tallies:
        rec.warnings.append(f"{path}: no usable lines")
    return rec
