"""`c10k load`: open many connections to an echo server, check and time every echo."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

from c10k.cli.load_requests import OPTIONS as REQUEST_OPTIONS
from c10k.cli.load_requests import add_options as add_request_options
from c10k.cli.load_requests import exchange_from, message_from, seconds
from c10k.errors import C10kError, UsageError
from c10k.outputs import check_writable_dir

if TYPE_CHECKING:  # the library (numpy) is imported only when a load runs
    from c10k.load import LoadPlan, LoadResult, LoadSettings

DEFAULTS: dict[str, Any] = {
    "host": "127.0.0.1", "port": 7000, "count": 100, "connections": 1, "connect_rate": 0.0,
    "timeout": 10.0, "rate": 0.0, "duration": 0.0, "out": "results/load",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "load", help="run an echo load: connections x messages, every byte checked and timed",
        description="Open CONNECTIONS connections to an echo server (all at once by default), send MESSAGE "
                    "COUNT times on each, check every echo byte for byte and time every round trip. Other "
                    "request/response servers (Redis, line protocols, HTTP/1.1): see --expect... and --reply-... "
                    "below. "
                    "Writes OUT/summary.json, OUT/connections.csv and OUT/timeseries.csv. Exit 0 only when every "
                    "connection was established and every reply was correct (by default: the byte-exact echo), "
                    "1 otherwise, 2 for "
                    "usage errors, 130 after Ctrl-C and 143 after SIGTERM (what was measured is still written).",
        epilog="TARGET: HOST:PORT, tcp://HOST:PORT, [::1]:PORT (IPv6 in brackets) or unix:/path.sock (a unix-domain "
               "socket: no ports, source addresses or TCP limits). TLS is out of scope. The summary gives bandwidth "
               "(MiB/s up and down, over the message phase) beside msg/s, and says why connections timed out: "
               "'the server never accepted' (its accept queue overflowed: ListenOverflows/ListenDrops in "
               "/proc/net/netstat grew during the run, or the listener still holds them; a unix connect found the "
               "queue full) or 'accepted but did not answer'; read on this host only, so a remote target's "
               "verdict is 'unknown'.")
    # Defaults are None so that "no arguments at all" can be told apart (the interactive mode).
    p.add_argument("target", nargs="?", metavar="TARGET",
                   help="the server: HOST:PORT, tcp://HOST:PORT, [IPv6]:PORT or unix:/path.sock (a unix-domain "
                        "socket); or --host and -p. TLS is not spoken")
    p.add_argument("--host", help=f"server host (default {DEFAULTS['host']})")
    p.add_argument("-p", "--port", type=int, help=f"server port (default {DEFAULTS['port']})")
    p.add_argument("-m", "--message", help="message text (default: 15 bytes, \"Gary's spamming\")")
    p.add_argument("--size", type=int, metavar="BYTES", help="send a generated message of BYTES bytes instead")
    p.add_argument("-n", "--count", type=int, help="messages per connection (default 100)")
    p.add_argument("-c", "--connections", type=int, help="connections (default 1)")
    p.add_argument("--processes", type=int, help="load processes (default: enough for RLIMIT_NOFILE, "
                                                 "one per CPU for large runs)")
    p.add_argument("--connect-rate", type=float, metavar="PER_S", help="connects per second (default: unpaced)")
    p.add_argument("--timeout", type=float, metavar="S",
                   help="give up on a connection after S seconds without its connect completing or without "
                        "the echo it waits for (default 10)")
    p.add_argument("--source-ip", action="append", metavar="IP",
                   help="source address to connect from (repeat or comma-separate; default: automatic "
                        "127.0.0.x for loopback targets past one address's ephemeral ports)")
    p.add_argument("--rate", type=float, metavar="MSG_PER_S",
                   help="open loop: total messages per second on a fixed timetable (needs --duration)")
    p.add_argument("--duration", type=seconds, metavar="TIME",
                   help="with --rate: seconds of sending (open loop); without: a closed loop that runs for TIME "
                        "(e.g. 30s, like wrk -d), each connection sending its next request as soon as its reply "
                        "is in (-n then bounds it too)")
    p.add_argument("--no-barrier", dest="barrier", action="store_false", default=None,
                   help="start each connection's messages as soon as it connects")
    p.add_argument("--settle", type=seconds, metavar="TIME",
                   help="once every connection is open, keep them all open and silent for TIME before the "
                        "first message (e.g. 30s: a server still taking connections on is measured once it "
                        "holds them; default 0)")
    p.add_argument("--sample-budget", type=_size_bytes, metavar="SIZE",
                   help="raw latency samples each load process keeps, exact percentiles (default 64MiB); past "
                        "it they are folded into an HDR histogram (3 significant digits) and the summary gives "
                        "each percentile's error bound. SIZE: bytes or e.g. 512KiB, 64MiB, 1GiB")
    add_request_options(p)
    p.add_argument("--out", metavar="DIR", help=f"results directory (default {DEFAULTS['out']})")
    p.add_argument("-q", "--quiet", action="store_true", default=None, help="print nothing unless it fails")
    p.add_argument("--json", action="store_true", default=None,
                   help="print summary.json on stdout instead of the human summary (with --dry-run: the plan)")
    p.add_argument("--dry-run", action="store_true", default=None,
                   help="print the plan (processes, source addresses, memory, kernel limits) and open nothing")
    p.add_argument("--tune", action="store_true", default=None,
                   help="raise kernel limits that would stop the run (conntrack, file-max, tcp_mem, "
                        "somaxconn) before it starts, printing each change; root only, nothing is restored")
    g = p.add_argument_group("thresholds", "exit 1, naming the threshold, when the run breaks one (for CI)")
    g.add_argument("--max-p50", type=_latency_us, metavar="TIME", help="e.g. 5ms, 800us (a bare number is ms)")
    g.add_argument("--max-p99", type=_latency_us, metavar="TIME", help="e.g. 50ms, 1s (a bare number is ms)")
    g.add_argument("--max-errors", type=_count, metavar="N", help="most errors allowed (e.g. 0)")
    g.add_argument("--min-rate", type=_rate, metavar="MSG_PER_S", help="fewest messages/s allowed")
    p.set_defaults(run=run)


def _latency_us(text: str) -> float:
    from c10k.text import parse_seconds

    try:
        return parse_seconds(text, default_unit="ms") * 1e6
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
          "g": 2**30, "gb": 2**30, "gib": 2**30}


def _size_bytes(text: str) -> int:
    import re

    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = _UNITS.get(found.group(2).lower()) if found else None
    if found is None or unit is None:
        raise argparse.ArgumentTypeError(f"not a size (bytes, or e.g. 512KiB, 64MiB, 1GiB): {text!r}")
    return int(float(found.group(1)) * unit)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a count (0 or more): {text!r}")
    return value


def _rate(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"not a rate (a number of messages/s above 0): {text!r}")
    return value


def _ask(args: argparse.Namespace) -> None:
    from rich.prompt import IntPrompt, Prompt

    from c10k.load import DEFAULT_MESSAGE

    try:
        args.message = Prompt.ask("Message to send", default=DEFAULT_MESSAGE.decode())
        while (count := IntPrompt.ask("How many times to send it", default=DEFAULTS["count"])) < 0:
            print("Please give 0 or more.")
        while (conns := IntPrompt.ask("How many connections", default=DEFAULTS["connections"])) < 1:
            print("Please give 1 or more.")
    except EOFError:
        raise UsageError("no answer on standard input") from None
    args.count, args.connections = count, conns


def _settings(args: argparse.Namespace) -> LoadSettings:
    from c10k.load import DEFAULT_MESSAGE, LoadSettings, make_message
    from c10k.load.target import merge_target

    if all(getattr(args, k) is None for k in ("host", "port", "message", "size", "count", "connections",
                                                "processes", "connect_rate", "timeout", "source_ip", "rate",
                                                "duration", "barrier", "settle", "out", "quiet", "json", "dry_run",
                                                "tune", "max_p50", "max_p99", "max_errors", "min_rate", "sample_budget",
                                                "target", *REQUEST_OPTIONS)) \
            and sys.stdin.isatty():
        _ask(args)
    if args.rate is not None and args.rate == 0:
        raise UsageError("--rate must be more than 0 messages/s (leave it out for a closed loop)")
    target = merge_target(args.target, args.host, args.port)
    args.host, args.port = target.host, target.port
    count_given = args.count is not None
    for key, value in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    message = message_from(args)  # -m (with -e, unescaped) or --message-file
    if args.size is not None:
        message = make_message(args.size)
    elif message is None:
        message = DEFAULT_MESSAGE
    exchange, rate = exchange_from(args, message, count_given)
    sources = [ip.strip() for item in (args.source_ip or []) for ip in item.split(",") if ip.strip()]
    return LoadSettings(
        host=args.host, port=args.port, message=message, count=args.count, connections=args.connections,
        processes=args.processes, connect_rate=args.connect_rate, timeout=args.timeout, source_ips=tuple(sources),
        barrier=args.barrier is not False, settle=args.settle or 0.0, rate=rate or args.rate,
        duration=args.duration, tune=bool(args.tune), unix=target.path, exchange=exchange,
        **({} if args.sample_budget is None else {"sample_budget": args.sample_budget}))


def _thresholds(args: argparse.Namespace) -> Any:
    from c10k.load.thresholds import Thresholds

    return Thresholds(max_p50_us=args.max_p50, max_p99_us=args.max_p99, max_errors=args.max_errors,
                      min_rate=args.min_rate)


def run(args: argparse.Namespace) -> int:
    from c10k.load import plan_for, run_settings
    from c10k.load.supervisor import stop_signals

    settings = _settings(args)
    thresholds = _thresholds(args)
    as_json = bool(args.json)
    quiet = bool(args.quiet) or as_json
    live = not quiet and sys.stdout.isatty()
    if args.dry_run and settings.tune:  # a dry run changes nothing, kernel settings included
        from dataclasses import replace

        settings = replace(settings, tune=False)
    plan = plan_for(settings)
    if args.dry_run:
        if as_json:
            import json

            print(json.dumps({"host": settings.host, "port": settings.port, "target": plan.target,
                              "connections": settings.connections,
                              **plan.as_dict()}, indent=1))
        else:
            print(plan.describe())
        return 0
    check_writable_dir(args.out, "--out")  # before the run, so that a long run cannot end in "cannot write"
    if not quiet:
        print(plan.describe(), flush=True)
    # SIGTERM stops the run as Ctrl-C does, and neither may cut the writing of the results short.
    with stop_signals() as stop:
        try:
            result = _run_with_bar(settings, plan) if live else run_settings(settings, plan=plan)
        except KeyboardInterrupt:  # before the engines started: nothing was measured
            print("c10k load: interrupted before the run started; nothing written", file=sys.stderr)
            return 128 + (stop.signum or signal.SIGINT)
        return _report(result, args.out, quiet, live, stop.signum, thresholds, as_json)


def _report(result: LoadResult, out: str, quiet: bool, live: bool, signum: int | None, thresholds: Any,
            as_json: bool) -> int:
    from c10k.load import write_results
    from c10k.load.thresholds import broken
    from c10k.text import latency_words, plural

    try:
        summary_path, csv_path = write_results(result, out)
    except OSError as exc:
        raise C10kError(f"cannot write results to {out}: {exc.strerror or exc}") from None
    s = result.summary
    if as_json:
        import json

        print(json.dumps(s, indent=1))
    elif live:
        _print_table(s)
        print(f"wrote {summary_path}, {csv_path} and timeseries.csv")
    elif not quiet:
        lat = s["latency_us"]
        done = "correct replies" if "exchange" in s else "echoed"  # a server other than echo
        reconnects = f", {s['reconnects']:,} reconnects" if s.get("reconnects") else ""
        print(f"{s['messages']['echoed']:,} {done} on {s['connections']['completed']:,}/"
              f"{plural(s['connections']['requested'], 'connection')} in {s['elapsed_s']:.3f} s "
              f"({s['messages_per_s']:,.0f} msg/s, {_bandwidth(s)}, connect {s['connect_s']:.3f} s{reconnects}); "
              f"latency "
              f"p50 {latency_words(lat['p50'])} p99 {latency_words(lat['p99'])} max {latency_words(lat['max'])}; "
              f"wrote {summary_path}, {csv_path} and timeseries.csv")
    if s.get("interrupted") or signum is not None:
        print(f"c10k load: interrupted; wrote what was measured to {summary_path}", file=sys.stderr)
        return 128 + (signum or signal.SIGINT)  # the shell's convention: 130 after Ctrl-C, 143 after SIGTERM
    if not result.ok:
        errors = ", ".join(f"{k}={v}" for k, v in s["errors"].items()) or "no reason recorded"
        why = f"; {s['timeouts']['reason']}" if s["timeouts"]["verdict"] else ""  # why they timed out
        print(f"c10k load: {s['connections']['failed']:,} of {plural(s['connections']['requested'], 'connection')} "
              f"failed, {s['messages']['mismatched']:,} mismatched: {errors}{why}", file=sys.stderr)
        for reason, ex in s.get("error_examples", {}).items():  # what came back, for the reasons that kept it
            where = "" if ex["offset"] is None else f" (differs at byte {ex['offset']})"
            wanted = "" if ex["expected"] is None else f", expected '{ex['expected']}'"
            print(f"c10k load: {reason} on connection {ex['connection']}: got '{ex['got']}'{where}{wanted}",
                  file=sys.stderr)
        return 1
    failed = broken(s, thresholds) if thresholds else []
    if failed:
        print(f"c10k load: threshold broken: {'; '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _run_with_bar(settings: LoadSettings, plan: LoadPlan) -> LoadResult:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from c10k.load import run_settings
    from c10k.text import latency_words

    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[done]}"),
               TextColumn("open {task.fields[open]}  errors {task.fields[failed]}{task.fields[live]}"),
               TimeElapsedColumn())
    # A closed loop bounded by time does not know how many echoes it will make: its bar is the time.
    by_time = settings.time_bounded
    total = settings.duration if by_time else max(1, settings.samples)
    began: list[float] = []  # when the echoing began (by_time)

    def done(echoed: int) -> tuple[float, str]:
        if not by_time:
            return echoed, f"{echoed:,}/{total:,.0f}"
        if not began:
            began.append(time.monotonic())
        spent = min(total, time.monotonic() - began[0])
        return spent, f"{echoed:,} echoed, {spent:.0f}/{total:g} s"

    with Progress(*columns, transient=False) as bar:
        connect = bar.add_task("connecting", total=settings.connections, open=0, failed=0, live="",
                               done=f"0/{settings.connections:,}")
        echo = bar.add_task("echoing", total=total, open=0, failed=0, live="", start=False, done="")

        def update(p: Any) -> None:
            bar.update(connect, completed=p.established, open=p.open, failed=p.failed,
                       done=f"{p.established:,}/{settings.connections:,}")
            if p.phase == "echoing":
                bar.start_task(echo)
                # the last whole second, over every load process
                live = "" if p.messages_per_s is None else (
                    f"  {p.messages_per_s:,} msg/s  p50 {latency_words(p.p50_us)}  p99 {latency_words(p.p99_us)}")
                completed, words = done(p.echoed)
                bar.update(echo, completed=completed, open=p.open, failed=p.failed, live=live, done=words)

        result = run_settings(settings, plan=plan, on_progress=update)
        s = result.summary
        bar.update(connect, completed=s["connections"]["established"], open=0,
                   failed=s["connections"]["failed"])
        bar.start_task(echo)
        echoed = s["messages"]["echoed"]
        bar.update(echo, completed=total if by_time else echoed, open=0, failed=s["connections"]["failed"],
                   done=f"{echoed:,} echoed, {s['elapsed_s']:.0f} s" if by_time else f"{echoed:,}/{total:,.0f}")
        bar.update(connect, done=f"{s['connections']['established']:,}/{settings.connections:,}")
        return result


def _print_table(s: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from c10k.text import latency_words

    t = Table(title=f"c10k load -> {s['target']}", show_header=False)
    t.add_column(style="bold")
    t.add_column(justify="right")
    c, m, lat = s["connections"], s["messages"], s["latency_us"]
    t.add_row("connections", f"{c['completed']}/{c['requested']} completed, {c['established']} established, "
                             f"peak open {c['peak_open']}")
    t.add_row("messages", f"{m['echoed']} echoed of {m['sent']} sent, {m['mismatched']} mismatched")
    t.add_row("connect phase", f"{s['connect_s']:.3f} s")
    t.add_row("message phase", f"{s['elapsed_s']:.3f} s, {s['messages_per_s']:.0f} msg/s, {_bandwidth(s)}")
    for k in ("min", "mean", "p50", "p90", "p99", "p999", "max"):
        t.add_row(f"latency {k}", latency_words(lat[k]))
    if s.get("latency_precision", "exact") != "exact":
        err = s["latency_error_us"]
        t.add_row("latency precision", f"{s['latency_precision']} (p99 within {latency_words(err['p99'])})")
    t.add_row("errors", ", ".join(f"{k}={v}" for k, v in s["errors"].items()) or "none")
    if s["timeouts"]["verdict"]:
        t.add_row("timeouts", s["timeouts"]["reason"])
    Console().print(t)


def _bandwidth(s: dict[str, Any]) -> str:
    b = s["bandwidth_mib_s"]
    return f"{b['up']:,.2f} MiB/s up, {b['down']:,.2f} MiB/s down"
