"""`tracer record`: the stream written to a file as it happens (docs/ARCHITECTURE.md,
"Recordings").

Lines are written whole, in one write per poll of the source (every 100 ms at most; gzip:
sync-flushed once a second and at every tally), so a recorder killed at any moment leaves a
file whose complete lines are all valid, missing at most the last batch. The file
holds client addresses: it is created 0600, never through a symlink, never over an existing
file unless asked to.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import sys
import time
import zlib
from typing import IO, TextIO

from tracer.errors import TracerError, UsageError
from tracer.model import Counters, End, Event, Session, Tally
from tracer.stream import Sink


def open_recording(path: str, force: bool = False) -> IO[bytes]:
    """Create the file 0600 without following a symlink; refuse an existing one unless force."""
    if os.path.islink(path):
        raise UsageError(f"{path} is a symbolic link", "give the real path of a new file")
    if os.path.isdir(path):
        raise UsageError(f"{path} is a directory", "give a file name, e.g. incident.ndjson")
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    flags |= os.O_TRUNC if force else os.O_EXCL
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise UsageError(f"{path} already exists", "choose another name, or add --force to "
                         "overwrite it") from None
    except OSError as e:
        raise TracerError(f"cannot create {path}: {e.strerror}",
                          "check the directory exists and is writable") from None
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "wb", buffering=0)


class Recorder(Sink):
    """Sink writing NDJSON (gzip when the name ends in .gz), with a status line on stderr."""

    def __init__(self, path: str, force: bool = False, status: TextIO | None = None,
                 echo: TextIO | None = None) -> None:
        self.path = path
        self._raw = open_recording(path, force)
        self._gzip = gzip.GzipFile(fileobj=self._raw, mode="wb") if path.endswith(".gz") \
            else None
        self._status = status if status is not None else sys.stderr
        self._echo = echo
        self.events = 0
        self._started = time.monotonic()
        self._last_flush = self._started
        self._last_status = 0.0
        self._events_at_status = 0
        self._lost = 0
        self._closed = False
        self._pending: list[str] = []

    # ---------------------------------------------------------------- writing
    def _write(self, obj: dict) -> None:
        """A non-event record: written together with the events before it, at once."""
        self._pending.append(json.dumps(obj, separators=(",", ":")) + "\n")
        self.flush(sync=True)

    def flush(self, sync: bool = False) -> None:
        """Write the lines gathered since the last poll (the stream calls this per batch)."""
        if not self._pending:
            return
        data = "".join(self._pending).encode()
        self._pending.clear()
        try:
            if self._gzip is not None:
                self._gzip.write(data)
                now = time.monotonic()
                if sync or now - self._last_flush >= 1.0:
                    self._gzip.flush(zlib.Z_SYNC_FLUSH)
                    self._last_flush = now
            else:
                self._raw.write(data)
        except OSError as e:
            self._fail(e)

    def _fail(self, e: OSError) -> None:
        if e.errno == errno.ENOSPC:
            raise TracerError(f"the disk is full while writing {self.path}",
                              "free some space; the file keeps every line written before") \
                from None
        raise TracerError(f"writing {self.path} failed: {e.strerror}",
                          "the file keeps every line written before") from None

    def _show_status(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_status < 1.0:
            return
        rate = (self.events - self._events_at_status) / max(1e-3, now - self._last_status) \
            if self._last_status else 0.0
        self._last_status, self._events_at_status = now, self.events
        try:
            size = os.fstat(self._raw.fileno()).st_size
        except OSError:
            size = 0
        line = (f"recording {self.path}: {now - self._started:6.0f} s  {self.events:,} events"
                f"  {rate:,.0f}/s  lost {self._lost:,}  {size / 1024:,.0f} KiB")
        if self._status.isatty():
            self._status.write("\r\x1b[2K" + line)
        else:
            self._status.write(line + "\n")
        self._status.flush()

    # ---------------------------------------------------------------- sink
    def session(self, s: Session) -> None:
        self._started = time.monotonic()
        self._write(s.to_json())
        self._show_status(force=True)

    def event(self, e: Event) -> None:
        self.events += 1
        line = e.json_line()
        self._pending.append(line)
        if self._echo is not None:
            self._echo.write(line)
            self._echo.flush()

    def tally(self, t: Tally) -> None:
        self._lost = t.lost
        self._write(t.to_json())
        self._show_status()

    def counters(self, c: Counters) -> None:
        self._write(c.to_json())

    def end(self, e: End) -> None:
        self._write(e.to_json())
        self._show_status(force=True)
        if self._status.isatty():
            self._status.write("\n")
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self.flush(sync=True)
        self._closed = True
        try:
            if self._gzip is not None:
                self._gzip.close()
            self._raw.close()
        except OSError as e:
            self._fail(e)
