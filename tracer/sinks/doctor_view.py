"""How `tracer doctor` is shown: findings first (what to do), then the evidence tables."""

from __future__ import annotations

import json
from typing import TextIO

from rich import box
from rich.console import Console
from rich.table import Table

STYLE = {"problem": "bold red", "warning": "yellow", "note": "dim"}


def show_json(report: dict, out: TextIO) -> None:
    out.write(json.dumps(report, indent=2) + "\n")


def show_text(report: dict, console: Console, netns_label: str) -> None:
    """Findings, then listeners, counters and sysctls: one glance says what is wrong."""
    console.print(f"[bold]tracer doctor[/] — netns {netns_label}, kernel {report['kernel']}, "
                  f"sample {round(report['sample_seconds'], 1):g} s")
    console.print()
    for f in report["findings"]:
        console.print(f"[{STYLE[f['severity']]}]{f['severity'].upper():8}[/] {f['text']}",
                      highlight=False)
        console.print(f"         fix: {f['fix']}", highlight=False)
        if f["command"]:
            console.print(f"         peers: [bold]{f['command']}[/]", highlight=False)
    console.print()

    t = Table(title="listeners", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for name, justify in (("ADDRESS", "left"), ("QUEUED", "right"), ("PEAK", "right"),
                          ("BACKLOG", "right"), ("PROCESS", "left"), ("", "left")):
        t.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for ln in report["listeners"]:
        addr = f"[{ln['address']}]:{ln['port']}" if ln["family"] == 6 else \
            f"{ln['address']}:{ln['port']}"
        owner = f"{ln['command']} ({ln['pid']})" if ln["pid"] else "-"
        state = "[bold red]FULL[/]" if ln["full"] else \
            "[red]full during sample[/]" if ln["full_during_sample"] else ""
        t.add_row(addr, str(ln["queued"]), str(ln["peak_queued"]), str(ln["backlog"]), owner,
                  state)
    console.print(t)

    c = Table(title="kernel counters", title_justify="left", box=box.SIMPLE_HEAD,
              pad_edge=False)
    for name, justify in (("COUNTER", "left"), ("SINCE BOOT", "right"),
                          ("IN SAMPLE", "right")):
        c.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    c.add_column("MEANING [kinds]", ratio=1)
    for name, r in report["counters"].items():
        moved = "0"
        if r["during_sample"]:
            rate = "" if r["per_second"] is None else f" ({r['per_second']:,.1f}/s)"
            moved = f"[bold]+{r['during_sample']:,}{rate}[/]"
        kinds = f" [dim]\\[{' '.join(r['kinds'])}][/]" if r["kinds"] else ""
        c.add_row(name, f"{r['since_boot']:,}", moved, r["meaning"] + kinds)
    console.print(c)

    s = Table(title="sysctls", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    s.add_column("SYSCTL", no_wrap=True)
    s.add_column("VALUE")
    s.add_column("MEANING")
    for name, r in report["sysctls"].items():
        s.add_row(name, r["value"], r["meaning"])
    console.print(s)
