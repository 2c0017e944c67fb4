"""How a report is shown: a rich table (with a bar chart for timelines), JSON, CSV, parquet."""

from __future__ import annotations

import json
import sys
import time
from typing import TextIO

import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table

from tracer.errors import TracerError
from tracer.report import kinds_in


def _clock(ts: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if ts else "-"


def _span(report: dict) -> str:
    times = [t for r in report["rows"] for t in (r.get("first"), r.get("last"), r.get("minute"))
             if t]
    if not times:
        return ""
    fmt = "%Y-%m-%d %H:%M"
    return f" — {time.strftime(fmt, time.localtime(min(times)))} to " \
           f"{time.strftime(fmt, time.localtime(max(times)))}"


def table(report: dict, console: Console) -> None:
    """Leaderboard or timeline as a terminal table; says so when a file was cut short."""
    by, kinds = report["by"], kinds_in(report)
    title = f"refusals by {by} — {', '.join(report['hosts'])}{_span(report)}"
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    t.add_column("MINUTE" if by == "minute" else by.upper(), no_wrap=True)
    t.add_column("TOTAL", justify="right", min_width=5)
    for k in kinds:
        t.add_column(k.replace("_", "\n"), justify="right")      # narrow two-line headers
    if by == "minute":
        t.add_column("", no_wrap=True)
        peak = max((r["total"] for r in report["rows"]), default=1) or 1
    else:
        t.add_column("FIRST", no_wrap=True)
        t.add_column("LAST", no_wrap=True)
        t.add_column("PEAK\n/s", justify="right")
    for r in report["rows"]:
        cells = [f"{r['kinds'].get(k, 0):,}" for k in kinds]
        if by == "minute":
            bar = "█" * max(1, round(30 * r["total"] / peak))
            t.add_row(time.strftime("%H:%M", time.localtime(r["minute"])), f"{r['total']:,}",
                      *cells, bar)
        else:
            t.add_row(str(r[by]), f"{r['total']:,}", *cells, _clock(r.get("first")),
                      _clock(r.get("last")), f"{r.get('peak_rate', 0):.2f}")
    console.print(t)
    notes = [f"counted from {report['counted_from']}", f"{report['lost']:,} events lost"]
    if report["partial"]:
        notes.append("PARTIAL: a recording was cut short; its counts are its last tally plus "
                     "the events after it")
    console.print("; ".join(notes))


def frame(report: dict) -> pd.DataFrame:
    """One row per report row, a column per kind (for CSV and parquet)."""
    key = report["by"]
    rows = []
    for r in report["rows"]:
        row = {key: r[key], "total": r["total"]}
        row.update({k: r["kinds"].get(k, 0) for k in kinds_in(report)})
        for extra in ("first", "last", "peak_rate"):
            if extra in r:
                row[extra] = r[extra]
        rows.append(row)
    return pd.DataFrame(rows)


def write(report: dict, fmt: str, out: str | None, stdout: TextIO | None = None) -> None:
    stdout = stdout or sys.stdout
    if fmt == "parquet":
        if not out:
            raise TracerError("parquet is binary", "give an output file with -o report.parquet")
        try:
            frame(report).to_parquet(out)
        except ImportError as e:
            raise TracerError("writing parquet needs pyarrow", "pip install pyarrow") from e
        return
    target = open(out, "w") if out else stdout
    try:
        if fmt == "json":
            target.write(json.dumps(report) + "\n")
        elif fmt == "csv":
            frame(report).to_csv(target, index=False)
        else:
            table(report, Console(file=target) if out else Console())
    finally:
        if out:
            target.close()
