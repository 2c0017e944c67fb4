"""Command line: parses options, wires a source to a sink, maps errors to exit codes.

`main()` is the only place that turns exceptions into messages: a TracerError becomes one
line with its remedy (exit 1, or 2 for usage), anything else a one-line internal error
(traceback with --debug).
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

import click

from tracer import __version__
from tracer.errors import TracerError, UsageError
from tracer.filters import RefusalFilter
from tracer.kernel.netns import resolve_netns
from tracer.kinds import KIND_LABELS

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def selection_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Filters every tracing command shares, defined once (-P, --peer, --kind, -4/-6, --netns)."""
    options = [
        click.option("-P", "--port", "ports", type=click.IntRange(1, 65535), multiple=True,
                     help="Local port (repeatable)."),
        click.option("--peer", "peers", multiple=True, metavar="CIDR",
                     help="Peer address or network (repeatable)."),
        click.option("--kind", "kinds", multiple=True, metavar="KIND",
                     help=f"Refusal kind (repeatable): {', '.join(KIND_LABELS)}."),
        click.option("-4", "ipv4", is_flag=True, help="IPv4 peers only."),
        click.option("-6", "ipv6", is_flag=True, help="IPv6 peers only."),
        click.option("--netns", "netns", multiple=True, metavar="INODE|NAME",
                     help="Network namespace inode, or name in /run/netns (repeatable)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def run_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Options of commands that trace for a while: --duration, --interval, the event cap."""
    options = [
        click.option("--duration", type=click.FloatRange(min=0, min_open=True), metavar="S",
                     help="Stop S seconds after tracing started (after the session line)."),
        click.option("--interval", type=click.FloatRange(min=0.1), default=1.0,
                     show_default=True, metavar="S", help="Refresh interval in seconds."),
        click.option("--max-events-per-second", "max_eps", type=click.IntRange(min=0),
                     default=20000, show_default=True, metavar="N",
                     help="Cap on the event stream (0 = no cap); counts stay exact."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def build_selection(ports: tuple[int, ...], peers: tuple[str, ...], kinds: tuple[str, ...],
                    ipv4: bool, ipv6: bool, netns: tuple[str, ...]) -> RefusalFilter:
    """A RefusalFilter from the shared options; UsageError on bad values."""
    if ipv4 and ipv6:
        raise UsageError("-4 and -6 exclude each other", "give at most one of them")
    family = 4 if ipv4 else 6 if ipv6 else None
    return RefusalFilter.build(ports=ports, peers=peers, kinds=kinds, family=family,
                           netns=[resolve_netns(n) for n in netns])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tracer")
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Which TCP peers this host silently refuses, live from kernel tracepoints."""
    ctx.obj = {"debug": debug}


@cli.command()
@selection_options
@run_options
@click.option("--json", "as_json", is_flag=True, help="NDJSON on stdout (the machine contract).")
def watch(as_json: bool, duration: float | None, interval: float, max_eps: int,
          **filters: Any) -> None:
    """One line per refusal as it happens (NDJSON with --json)."""
    from tracer.probe.load import Tuning
    from tracer.probe.source import LiveSource
    from tracer.sinks.printer import JsonPrinter, TextPrinter
    from tracer.stream import StopFlags, run

    selection = build_selection(**filters)
    sink = JsonPrinter(sys.stdout) if as_json else TextPrinter(sys.stdout)
    flags = StopFlags()
    flags.install()
    source = LiveSource(selection, Tuning(max_events_per_second=max_eps))
    run(source, sink, duration=duration, flags=flags)


@cli.command()
@selection_options
@run_options
def live(duration: float | None, interval: float, max_eps: int, **filters: Any) -> None:
    """Full-screen leaderboard of refused peers (keys: s sort, k kind, g subnets, p, q)."""
    from rich.console import Console

    from tracer.probe.load import Tuning
    from tracer.probe.source import LiveSource
    from tracer.sinks.dashboard import Dashboard
    from tracer.stream import StopFlags, run

    selection = build_selection(**filters)
    if not sys.stdout.isatty():
        raise UsageError("tracer live draws a full-screen board and stdout is not a terminal",
                         "use `tracer watch` (or `tracer watch --json`) in pipes and scripts")
    flags = StopFlags()
    flags.install()
    sink = Dashboard(Console(), on_quit=flags.stop.set, filters=selection.describe(),
                     partial_view=selection.hides_refusals)
    source = LiveSource(selection, Tuning(max_events_per_second=max_eps))
    run(source, sink, duration=duration, periodic=interval, flags=flags)


@cli.command()
@selection_options
@run_options
@click.option("-o", "--output", required=True, metavar="FILE",
              help="Recording to create (NDJSON; gzip when it ends in .gz; mode 0600).")
@click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
@click.option("--print", "echo", is_flag=True, help="Also print each event (NDJSON) on stdout.")
def record(output: str, force: bool, echo: bool, duration: float | None, interval: float,
           max_eps: int, **filters: Any) -> None:
    """Record refusals to a file (tally and counters about once a second)."""
    from tracer.probe.load import Tuning
    from tracer.probe.source import LiveSource
    from tracer.sinks.recorder import Recorder
    from tracer.stream import StopFlags, run

    selection = build_selection(**filters)
    flags = StopFlags()
    flags.install()
    source = LiveSource(selection, Tuning(max_events_per_second=max_eps))
    recorder = Recorder(output, force=force, echo=sys.stdout if echo else None)
    run(source, recorder, duration=duration, periodic=interval, flags=flags)   # closes it


@cli.command()
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option("--by", type=click.Choice(["peer", "subnet", "port", "kind", "minute"]),
              default="peer", show_default=True, help="What the rows are.")
@click.option("--top", type=click.IntRange(min=1), metavar="N", help="At most N rows.")
@click.option("--since", metavar="T", help="From this time (ISO, or an age such as 10m).")
@click.option("--until", metavar="T", help="Until this time (ISO, or an age).")
@click.option("--kind", "kinds", multiple=True, metavar="KIND", help="Only this kind.")
@click.option("--peer", "peers", multiple=True, metavar="CIDR", help="Only these peers.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv", "parquet"]),
              default="table", show_default=True)
@click.option("-o", "--output", metavar="OUT", help="Write the report to OUT.")
def report(files: tuple[str, ...], by: str, top: int | None, since: str | None,
           until: str | None, kinds: tuple[str, ...], peers: tuple[str, ...], fmt: str,
           output: str | None) -> None:
    """Leaderboards and timelines from recordings (several hosts merge)."""
    from tracer import report as reporting
    from tracer.filters import parse_kind, parse_network
    from tracer.sinks.report_view import write

    sel = reporting.ReportFilter(
        since=reporting.parse_time(since) if since else None,
        until=reporting.parse_time(until) if until else None,
        kinds=tuple(parse_kind(k).label for k in kinds),
        peers=tuple(parse_network(p) for p in peers))
    loaded = reporting.load_recordings(files)
    for warning in loaded.warnings:
        print(f"tracer: warning: {warning}", file=sys.stderr)
    write(reporting.build(loaded, by, sel, top), fmt, output)


@cli.command()
@click.argument("file", metavar="FILE")
@click.option("--speed", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Replay speed (0 = as fast as possible).")
@click.option("--json", "as_json", is_flag=True, help="Print the stream instead of the board.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              metavar="S", help="Board refresh interval in seconds.")
def replay(file: str, speed: float, as_json: bool, interval: float) -> None:
    """A recording through the live board (or as NDJSON with --json)."""
    from rich.console import Console

    from tracer.recording import read
    from tracer.replay import ReplaySource
    from tracer.sinks.dashboard import Dashboard
    from tracer.sinks.printer import JsonPrinter
    from tracer.stream import StopFlags, run

    if not as_json and not sys.stdout.isatty():
        raise UsageError("tracer replay draws a full-screen board and stdout is not a terminal",
                         "add --json for the NDJSON stream")
    recording = read(file)
    for warning in recording.warnings:
        print(f"tracer: warning: {warning}", file=sys.stderr)
    if recording.session is None and not recording.events:
        raise TracerError(f"nothing usable in {file}", "give a recording made by `tracer record`")
    flags = StopFlags()
    flags.install()
    if as_json:
        run(ReplaySource(recording, speed), JsonPrinter(sys.stdout), flags=flags, periodic=None)
    else:
        sink = Dashboard(Console(), on_quit=flags.stop.set, source="replay")
        # The board stays on the recording's last state until the user quits.
        run(ReplaySource(recording, speed, hold_at_end=True), sink, flags=flags,
            periodic=interval)


@cli.command()
@click.option("--netns", metavar="INODE|NAME",
              help="Network namespace to examine (default: this process's own).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.option("--sample", type=click.FloatRange(0, 300), default=3.0, show_default=True,
              metavar="S", help="Seconds to watch counters and accept queues (0: none).")
def doctor(netns: str | None, as_json: bool, sample: float) -> None:
    """What is refusing peers now and the fix: sysctls, counters, listeners (no BPF)."""
    import dataclasses
    import platform

    from rich.console import Console

    from tracer.doctor import diagnose, report_json
    from tracer.kernel.host_sample import take_sample
    from tracer.kernel.netns import netns_path
    from tracer.probe.features import parse_release
    from tracer.probe.readiness import tracing_readiness
    from tracer.sinks.doctor_view import show_json, show_text

    inode = resolve_netns(netns) if netns else None
    path = netns_path(inode)
    label = netns or f"{os.stat(path).st_ino} (this process's)"
    err = Console(stderr=True)
    with err.status(f"sampling for {sample:g} s", spinner="dots"):
        taken = take_sample(path, os.stat(path).st_ino, platform.release(), sample)
    taken = dataclasses.replace(taken, tracing=tracing_readiness())
    findings = diagnose(taken, netns)
    report = report_json(taken, findings, parse_release(platform.release()))
    if as_json:
        show_json(report, sys.stdout)
    else:
        show_text(report, Console(), label)


@cli.command()
@selection_options
@run_options
@click.option("--listen", default="127.0.0.1:9464", show_default=True, metavar="HOST:PORT",
              help="Where to serve /metrics ([::1]:9464 for IPv6); the metrics hold client "
                   "addresses.")
@click.option("--top-peers", type=click.IntRange(min=1), default=50, show_default=True,
              metavar="N", help='Per-peer series for the N peers refused most; the rest sum '
                               'into peer="other".')
@click.option("--subnet", is_flag=True, help="Label peers by /24 (IPv4) and /64 (IPv6) network.")
def serve(listen: str, top_peers: int, subnet: bool, duration: float | None, interval: float,
          max_eps: int, **filters: Any) -> None:
    """Prometheus metrics of refusals (bounded series), on 127.0.0.1:9464 by default."""
    from tracer.probe.load import Tuning
    from tracer.probe.source import LiveSource
    from tracer.sinks.exporter import Exporter, MetricsServer, parse_listen
    from tracer.stream import StopFlags, run

    host, port = parse_listen(listen)
    selection = build_selection(**filters)
    sink = Exporter(top_peers=top_peers, subnet=subnet, selection=selection)
    server = MetricsServer(host, port, sink.registry, status=sys.stderr)
    server.check()                   # an address in use fails now, not after the compile
    flags = StopFlags()
    flags.install()
    source = LiveSource(selection, Tuning(max_events_per_second=max_eps))
    try:
        # Serve only once every probe is attached; tallies refresh every --interval.
        run(source, sink, duration=duration, periodic=interval, flags=flags,
            on_started=server.start)
    finally:
        server.close()


@cli.command()
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), metavar="S",
              help="End by itself S seconds after tracing started.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              metavar="S", help="Refresh interval in seconds.")
@click.option("--headless", is_flag=True,
              help="Print the NDJSON stream instead of the board (for tests and pipes).")
def demo(duration: float | None, interval: float, headless: bool) -> None:
    """Refusals of every kind in private namespaces, on the live board: see it work."""
    from rich.console import Console

    from tracer.lab import CLIENTS4, Lab, remove_stale
    from tracer.probe.load import Tuning
    from tracer.probe.source import LiveSource, check_environment
    from tracer.scenarios import OFFICE, Demo
    from tracer.sinks.dashboard import Dashboard
    from tracer.sinks.printer import JsonPrinter
    from tracer.stream import StopFlags, run

    if not headless and not sys.stdout.isatty():
        raise UsageError("tracer demo draws a full-screen board and stdout is not a terminal",
                         "add --headless for the NDJSON stream")
    check_environment()
    remove_stale(DEMO_PREFIX)                      # leftovers of a demo that was killed
    flags = StopFlags()
    flags.install()
    with Lab("demo", prefix=DEMO_PREFIX, clients4=CLIENTS4 + OFFICE) as lab:
        inodes = frozenset({Lab.inode(lab.srv), Lab.inode(lab.cli)})
        source = LiveSource(RefusalFilter(netns=inodes), Tuning(max_events_per_second=5000))
        sink = JsonPrinter(sys.stdout) if headless else Dashboard(
            Console(), on_quit=flags.stop.set, filters="demo namespaces", source="demo")
        scenes = Demo(lab)
        try:
            run(source, sink, duration=duration, periodic=interval, flags=flags,
                on_started=scenes.start)
        finally:
            scenes.close()
    for name, why in scenes.failures.items():
        print(f"tracer: demo scene {name} stopped early: {why}", file=sys.stderr)


DEMO_PREFIX = "trdemo"


def _format_click_error(e: click.ClickException) -> str:
    message = e.format_message()
    ctx = getattr(e, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    return f"tracer: {message}{hint}"


def main(argv: list[str] | None = None) -> None:
    """Entry point of `tracer` and `python -m tracer`."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="tracer", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(EXIT_OK)
    except click.ClickException as e:
        print(_format_click_error(e), file=sys.stderr)
        sys.exit(EXIT_USAGE if isinstance(e, click.UsageError) else e.exit_code)
    except TracerError as e:
        print(f"tracer: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except BrokenPipeError:
        # The reader went away (`tracer watch | head`): that is a normal end.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(EXIT_OK)
    except KeyboardInterrupt:
        sys.exit(EXIT_OK)
    except Exception as e:  # a bug: say so in one line, details with --debug
        if debug:
            traceback.print_exc()
        print(f"tracer: internal error: {type(e).__name__}: {e} "
              "(run with --debug for the traceback)", file=sys.stderr)
        sys.exit(EXIT_FAILURE)
    sys.exit(EXIT_OK)
