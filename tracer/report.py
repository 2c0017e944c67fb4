"""`tracer report`: leaderboards and timelines from recordings (pandas), several hosts merged.

Counts come from each file's last exact tally; for a file cut short, from its last tally
plus the events recorded after it (and the report says it is partial). Times (first/last
seen, per-minute timelines, peak rates) come from the events.

Notebook API: `load(paths)` -> DataFrame of events, `load_tallies(paths)` -> DataFrame of
exact counts.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

import pandas as pd

from tracer.errors import TracerError, UsageError
from tracer.filters import subnet_of
from tracer.kinds import KIND_LABELS
from tracer.recording import Recording, read

BY = ("peer", "subnet", "port", "kind", "minute")
EVENT_COLUMNS = ["host", "ts", "kind", "category", "peer", "peer_port", "local", "local_port",
                 "family", "netns", "reason"]


def parse_time(text: str, now: float | None = None) -> float:
    """`--since/--until`: an ISO time (2026-11-24T14:00) or an age (90s, 10m, 2h, 1d)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if m:
        scale = {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return (now if now is not None else time.time()) - float(m.group(1)) * scale
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise UsageError(f"cannot read the time {text!r}",
                         "use an ISO time like 2026-11-24T14:05 or an age like 10m") from None


@dataclass
class Loaded:
    """The recordings of one report, with their events and exact counts."""

    recordings: list[Recording]
    events: pd.DataFrame
    tallies: pd.DataFrame
    partial: bool
    lost: int
    warnings: list[str] = field(default_factory=list)


def _events_frame(recs: Iterable[Recording]) -> pd.DataFrame:
    frames = [r.events_frame().assign(host=r.host) for r in recs]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return frame.reindex(columns=EVENT_COLUMNS)


def _tally_frame(recs: Iterable[Recording]) -> tuple[pd.DataFrame, bool]:
    parts, partial = [], False
    columns = ["host", "netns", "peer", "kind", "count"]
    for r in recs:
        tally, before = r.final_tally()
        if not r.complete:
            partial = True
        rows = (tally or {}).get("rows", [])
        if rows:
            parts.append(pd.DataFrame(rows).assign(host=r.host)[columns])
        later = r.events_frame().iloc[before:]           # cut short: events after the tally
        if len(later):
            parts.append(later.assign(host=r.host, count=1)[columns])
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    if not frame.empty:
        frame = frame.groupby(["host", "netns", "peer", "kind"], as_index=False)["count"].sum()
    return frame, partial


def load_recordings(paths: Iterable[str]) -> Loaded:
    recs = [read(p) for p in paths]
    if not any(r.session or r.event_lines or r.tallies for r in recs):
        raise TracerError("nothing usable in " + ", ".join(r.path for r in recs),
                          "give a recording made by `tracer record`")
    tallies, partial = _tally_frame(recs)
    events = _events_frame(recs)
    lost = sum(((r.final_tally()[0] or {}).get("lost", 0)) for r in recs)
    warnings = [w for r in recs for w in r.warnings]
    return Loaded(recs, events, tallies, partial, lost, warnings)


def load(paths: Iterable[str]) -> pd.DataFrame:
    """Every recorded event of these files as a DataFrame (one row per refused segment)."""
    return load_recordings(paths).events


def load_tallies(paths: Iterable[str]) -> pd.DataFrame:
    """The exact counts of these files: host, netns, peer, kind, count."""
    return load_recordings(paths).tallies


@dataclass
class ReportFilter:
    """Report filters: time window, kinds, peer networks."""

    since: float | None = None
    until: float | None = None
    kinds: tuple[str, ...] = ()
    peers: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @property
    def by_time(self) -> bool:
        return self.since is not None or self.until is not None

    def events(self, df: pd.DataFrame) -> pd.DataFrame:
        if not (self.by_time or self.kinds or self.peers):
            return df
        mask = pd.Series(True, index=df.index)
        if self.since is not None:
            mask &= df["ts"] >= self.since
        if self.until is not None:
            mask &= df["ts"] <= self.until
        return df[mask & self._common(df)]

    def _common(self, df: pd.DataFrame) -> pd.Series:
        mask = pd.Series(True, index=df.index)
        if self.kinds:
            mask &= df["kind"].isin(self.kinds)
        if self.peers:
            mask &= df["peer"].map(lambda p: any(
                ipaddress.ip_address(p) in n for n in self.peers
                if ipaddress.ip_address(p).version == n.version))
        return mask

    def tallies(self, df: pd.DataFrame) -> pd.DataFrame:
        if df.empty or not (self.kinds or self.peers):
            return df
        return df[self._common(df)]


def build(loaded: Loaded, by: str, sel: ReportFilter, top: int | None) -> dict:
    """The report as one JSON-ready object (rows sorted by total, descending)."""
    if by not in BY:
        raise UsageError(f"unknown --by {by!r}", f"choose from {', '.join(BY)}")
    events = sel.events(loaded.events)
    # Exact counts unless a time window is asked for (tallies have no time): then events.
    if sel.by_time or by in ("port", "minute"):
        counts = events.assign(count=1)[["peer", "kind", "local_port", "count"]]
        source = "events"
    else:
        counts = sel.tallies(loaded.tallies)
        source = "tally"
    out: dict = {"by": by, "rows": [], "lost": int(loaded.lost), "partial": loaded.partial,
                 "counted_from": source, "files": [r.path for r in loaded.recordings],
                 "hosts": sorted({r.host for r in loaded.recordings})}
    if by == "minute":
        out["rows"] = _timeline(events)
        return out
    key = {"peer": "peer", "subnet": "subnet", "kind": "group_kind", "port": "local_port"}[by]
    if by == "subnet":
        counts = counts.assign(subnet=counts["peer"].map(subnet_of))
        events = events.assign(subnet=events["peer"].map(subnet_of))
    elif by == "kind":
        counts = counts.assign(group_kind=counts["kind"])
        events = events.assign(group_kind=events["kind"])
    if counts.empty:
        return out
    pivot = counts.groupby([key, "kind"])["count"].sum().unstack(fill_value=0)
    table = pd.DataFrame({"total": pivot.sum(axis=1)})
    table = table.sort_values("total", ascending=False, kind="stable")
    if top:
        table = table.head(top)
        events = events[events[key].isin(table.index)]    # times only for the rows shown
    if not events.empty:
        table = table.join(events.groupby(key)["ts"].agg(first="min", last="max"))
        minute = (events["ts"] // 60).astype("int64")
        per_minute = events.assign(minute=minute).groupby([key, "minute"]).size()
        table = table.join((per_minute.groupby(level=0).max() / 60.0).rename("peak_rate"))
    kinds_of = pivot.loc[table.index]
    rows = []
    for value, total, kinds in zip(table.index, table["total"], kinds_of.to_dict("records"),
                                   strict=True):
        row: dict = {by: int(value) if by == "port" else value, "total": int(total),
                     "kinds": {k: int(n) for k, n in kinds.items() if n}}
        first = table.at[value, "first"] if "first" in table else None
        row["first"] = None if first is None or pd.isna(first) else float(first)
        last = table.at[value, "last"] if "last" in table else None
        row["last"] = None if last is None or pd.isna(last) else float(last)
        if "peak_rate" in table and not pd.isna(table.at[value, "peak_rate"]):
            row["peak_rate"] = round(float(table.at[value, "peak_rate"]), 3)
        rows.append(row)
    out["rows"] = rows
    return out


def _timeline(events: pd.DataFrame) -> list[dict]:
    if events.empty:
        return []
    minute = (events["ts"] // 60 * 60).astype("int64")
    grid = events.assign(minute=minute).groupby(["minute", "kind"]).size().unstack(fill_value=0)
    return [{"minute": int(m), "total": int(row.sum()),
             "kinds": {k: int(n) for k, n in row.items() if n}} for m, row in grid.iterrows()]


def kinds_in(report: dict) -> list[str]:
    seen = {k for r in report["rows"] for k in r["kinds"]}
    return [k for k in KIND_LABELS if k in seen]
