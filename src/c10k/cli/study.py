"""`c10k study`: run the original study's test cases (and more), explain, report."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

from c10k.errors import UsageError

# The library (and matplotlib) is imported in run(): every `c10k serve` builds
# this parser too, and should not pay for it.

_EPILOG = """\
matrices:
  seed    the original's 12 cases (select 1, 1000, 2000; threaded 1, 10000, 30000,
          35000; epoll 1, 10000, 40000, 45000, 100000), then poll, epoll-reuseport,
          epoll-threads, asyncio, uvloop, gevent and trio at 1, 1000, 2000, 10000,
          30000, 35000, 40000, 45000 and 100000 connections; 100 messages of "Gary's spamming" each;
          then fixed-rate cases (2000 messages/s in total for 5 s, most connections
          idle): select at 100, 1000; poll, epoll, asyncio, uvloop at 100 to 15000.
          More than an hour on two cores (epoll at 100000 x 100 alone: ~15 min)
  quick   every architecture at up to 2000 connections, and select, poll, epoll
          at a fixed rate, in about two minutes
  wan     every architecture at 1000 and 10000 connections with 0, 1 ms and 25 ms
          added each way (needs --topology netns and a kernel with netem)
  million epoll (hand-off), epoll-reuseport and uring holding 1,000,000 connections
          at a steady 20,000 messages/s in total for 60 s (most connections idle),
          after 30 s with every connection open and silent (load --settle);
          needs ~10 GiB of kernel memory, and `c10k doctor -c 1000000 --fix` where
          connection tracking is loaded. About 25 minutes
  FILE    a TOML file:
            name = "my matrix"            # optional
            messages = 100                # optional default
            message = "Gary's spamming"   # optional default
            [[case]]
            server = "epoll"              # or a list of servers
            connections = [1, 1000]       # or one number
            messages = 50                 # optional
            timeout = 300                 # optional, seconds
            rate = 2000                   # optional: open loop, messages/s in total
            duration = 5                  # with rate: seconds of sending
            link = "delay 25ms"           # optional, or a list (--topology netns)
            settle = 30                   # optional: seconds all stay open and silent
                                          # before the first message

servers: select, poll, threaded, epoll, epoll-reuseport, epoll-threads, asyncio, uvloop,
         gevent, trio

Writes OUT/REPORT.md, OUT/report.html, OUT/results.json, charts OUT/*.png and each
case's OUT/<server>/<connections>/connections.csv. A failing case is a result:
the study exits 0 when it ran. An OUT that already holds a study's results is
refused unless --force, which removes that study's files and case folders (and
nothing else) first.

--server-command TEMPLATE runs every case's server with TEMPLATE instead of
`c10k serve`: a `podman run` (or `docker run`) line in the foreground, where
{port} is a free host port to publish the container's port on, {name} a
container name unique to the case, and {stats} (optional) a host folder to
bind-mount for the server's --stats-file. E.g.
  --server-command "podman run --rm --name {name} -p {port}:7000 epoll_server_image -p 7000"
The matrix's server names the row, as "epoll (container)" (or --server-name),
so give a matrix or --servers naming the server the image runs. CPU, memory,
threads and descriptors are the container's own processes'; every container is
removed after its case, and so are the nftables tables publishing its port made.

--find-limit SERVER doubles the connection count from --start until the server
fails (or --max is reached), then bisects down to --step, and reports the
largest count that passed and why the next failed.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="run the study's test cases and write the report",
                       description="Run echo servers under growing connection counts, decide why each "
                                   "case passed or failed, and write a report with tables and charts.",
                       epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--matrix", default="seed", metavar="seed|quick|wan|million|FILE",
                   help="which cases to run (default: seed)")
    p.add_argument("--servers", metavar="NAME[,NAME...]",
                   help="run only these servers' cases (comma-separated)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="where the report goes (default: a new folder results/MATRIX-DATE-TIME/)")
    p.add_argument("--messages", type=int, metavar="N",
                   help="messages per connection, overriding the matrix's")
    p.add_argument("--force", action="store_true",
                   help="replace a previous study's results in --out (refused without it)")
    p.add_argument("--list", action="store_true", help="print the cases and exit")
    p.add_argument("--report-only", action="store_true",
                   help="write the report from OUT/results.json (e.g. of a run cut short) without running")
    g = p.add_argument_group("escalation")
    g.add_argument("--find-limit", metavar="SERVER",
                   help="raise the connection count until SERVER fails (instead of a matrix)")
    g.add_argument("--start", type=int, default=1000, metavar="N", help="first count (default: 1000)")
    g.add_argument("--max", type=int, default=100000, metavar="N", dest="max_connections",
                   help="largest count to try (default: 100000)")
    g.add_argument("--step", type=int, default=1000, metavar="N",
                   help="stop bisecting when pass and fail are this close (default: 1000)")
    _add_topology_options(p)
    g = p.add_argument_group("server in a container")
    g.add_argument("--server-command", metavar="TEMPLATE",
                   help='start each case\'s server with this podman/docker run line, using {port}, {name} '
                        'and optionally {stats} (see below)')
    g.add_argument("--server-name", metavar="LABEL",
                   help='the server\'s name in the report with --server-command (default: "SERVER (container)")')
    p.set_defaults(run=run)


def _add_topology_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("network (off loopback)")
    g.add_argument("--topology", choices=("loopback", "netns"), default="loopback",
                   help="loopback (default), or netns: the server and each client host in its own "
                        "network namespace on a bridge, server on CPU 0, clients on CPU 1 (needs root)")
    g.add_argument("--clients", type=int, default=None, metavar="N",
                   help="client hosts with --topology netns (default: 2); a case's connections are split "
                        "across them")
    g.add_argument("--link", metavar="SPEC",
                   help='the client hosts\' link, each way, e.g. "delay 5ms", "delay 25ms 2ms loss 0.1%%", '
                        '"rate 1gbit" (tc netem/tbf; --topology netns); a matrix case\'s own link wins')


def _say_stale(commands: Any) -> None:
    stale = getattr(getattr(commands, "topo", None), "removed_stale", None)
    if stale:
        print(f"c10k study: removed {len(stale)} namespace(s) and link(s) a killed run left: "
              f"{', '.join(stale)}", flush=True)
    stale = getattr(commands, "removed_stale", None)
    if stale:
        print(f"c10k study: removed {len(stale)} container(s) a killed run left: {', '.join(stale)}", flush=True)


def _container_notes(commands: Any, study: Any) -> None:
    """What running the server in a container changed, for the report (after its containers are gone)."""
    if getattr(commands, "template", None) is None:
        return
    dropped = commands.dropped_tables
    study.topology["nft_tables_removed"] = dropped
    if dropped:
        study.notes.append(f"Publishing the container's port made podman's netavark create the nftables "
                           f"tables {', '.join(dropped)}, which make conntrack track every connection on "
                           "the machine; they were removed after the run.")
    if "stats" not in commands.template.fields:
        study.notes.append("The container's server wrote no stats file (the --server-command has no {stats}): "
                           "held at once and refusals come from its descriptors and the client's side only.")


def _topology(args: argparse.Namespace, matrix: Any) -> Any:
    """A context giving the runner's Commands: None for loopback, NetnsCommands for netns.

    Checks everything a user can get wrong first, each as one line (exit 2).
    """
    from contextlib import nullcontext

    from c10k.study.cases import has_links
    from c10k.topology import MAX_CLIENTS, parse_link

    link = parse_link(args.link) if args.link is not None else None
    if args.server_name is not None and args.server_command is None:
        raise UsageError("--server-name names the server of --server-command: give both")
    if args.server_command is not None:
        from c10k.study.container import ServerTemplate, container_commands

        if args.topology != "loopback":
            raise UsageError("--server-command publishes a port on this host: it runs over loopback only")
        template = ServerTemplate.parse(args.server_command)
        return container_commands(template, args.server_name)
    if args.clients is not None and not 1 <= args.clients <= MAX_CLIENTS:
        raise UsageError(f"--clients must be 1 to {MAX_CLIENTS} client hosts, not {args.clients}")
    if args.topology == "loopback":
        if args.clients is not None or link is not None:
            raise UsageError("--clients and --link need --topology netns")
        if matrix is not None and has_links(matrix):
            raise UsageError(f"matrix {matrix.name} gives links to its cases: add --topology netns")
        return nullcontext(None)
    from c10k.study.hosts import netns_commands
    from c10k.topology import check_can_run, require_delay

    check_can_run()
    any_delay = (link is not None and link.needs_netem) or (
        matrix is not None and any(parse_link(c.link).needs_netem for c in matrix.cases if c.link))
    if any_delay:
        require_delay()
    return netns_commands(args.clients or 2, link, any_delay=any_delay)


class _Progress:
    """Rich progress on a terminal; one plain line per case otherwise."""

    def __init__(self, total: int, title: str) -> None:
        from rich.console import Console

        self.console = Console(stderr=False, highlight=False)
        self.live = sys.stdout.isatty()
        self.total = total
        self.done = 0
        self._progress: Any = None
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                      MofNCompleteColumn(), TimeElapsedColumn(), console=self.console)
            self._task = self._progress.add_task(title, total=total or None)
            self._progress.start()

    def __call__(self, case: Any, result: Any) -> None:
        if result is None:
            noun = "connection" if case.connections == 1 else "connections"
            text = f"case {case.number}: {case.server} × {case.connections:,} {noun}, {case.load_words}"
            if self._progress is not None:
                self._progress.update(self._task, description=text)
            return
        self.done += 1
        mark = "[green]passed[/green]" if result.passed else "[red]failed[/red]"
        rate = f" @{case.rate:,}/s" if case.fixed_rate else ""
        line = (f"{case.number:>3} {result.case.server:<16}{case.connections:>8,}{rate}  {mark}  "
                f"({result.duration_s:.1f} s)")
        if not result.passed:
            line += f": {result.reason}"
        if self._progress is not None:
            self._progress.console.print(line)
            if self.total:
                self._progress.advance(self._task)
        else:
            self.console.print(line, soft_wrap=True)
            sys.stdout.flush()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


def _as_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _report_only(out: Path) -> int:
    import json

    from c10k.study import StudyResult, write_report

    try:
        data = json.loads((out / "results.json").read_text())
        study = StudyResult.from_json(data)
    except OSError as exc:
        raise UsageError(f"--report-only: cannot read {out / 'results.json'} ({exc.strerror})") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"--report-only: {out / 'results.json'} is not a study's results ({exc})") from None
    paths = write_report(study, out)
    print(f"{len(study.results)} cases; report: {paths[1]} and {paths[2]}")
    return 0


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise UsageError(f"{name} must be at least 1")


def _out_dir(args: argparse.Namespace, name: str) -> Path:
    """--out, checked and made ready; by default a new dated folder, so no run replaces another's."""
    from c10k.study.outdir import default_out, prepare_out_dir

    out: Path = args.out if args.out is not None else default_out(name)
    prepare_out_dir(out, force=args.force)
    return out


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from c10k.study import SERVERS, filter_servers, find_limit, load_matrix, run_study, write_report

    for name, value in (("--messages", args.messages), ("--start", args.start),
                        ("--max", args.max_connections), ("--step", args.step)):
        _positive(name, value)
    if args.report_only:
        if args.out is None:
            raise UsageError("--report-only needs --out DIR, the folder of the study's results.json")
        return _report_only(args.out)
    if args.list and args.find_limit:
        raise UsageError("--list lists a matrix's cases; --find-limit has none to list")
    # SIGTERM and SIGHUP stop the study like Ctrl-C, so the running case's
    # server and load (in their own sessions) are stopped too, not orphaned.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _as_keyboard_interrupt)

    if args.find_limit:
        if args.find_limit not in SERVERS:
            raise UsageError(f"--find-limit: unknown server {args.find_limit!r} "
                             f"(known: {', '.join(SERVERS)})")
        if args.start > args.max_connections:
            raise UsageError("--start must not exceed --max")
        topology = _topology(args, None)
        out = _out_dir(args, f"find-limit-{args.find_limit}")
        print(f"c10k study: raising {args.find_limit} from {args.start:,} up to {args.max_connections:,} "
              f"connections; report in {out}/", flush=True)
        progress = _Progress(0, f"find-limit {args.find_limit}")
        try:
            with topology as commands:
                _say_stale(commands)
                study = find_limit(args.find_limit, out, start=args.start, max_connections=args.max_connections,
                                   step=args.step, messages=args.messages or 100, commands=commands,
                                   progress=progress)
            _container_notes(commands, study)
        finally:
            progress.close()
    else:
        matrix = load_matrix(args.matrix)
        if args.servers:
            matrix = filter_servers(matrix, [s.strip() for s in args.servers.split(",") if s.strip()])
        if args.messages:
            matrix = replace(matrix, cases=tuple(replace(c, messages=args.messages) for c in matrix.cases))
        if not matrix.cases:
            which = f" for --servers {args.servers}" if args.servers else ""
            raise UsageError(f"matrix {matrix.name} has no cases{which}: nothing to run")
        from c10k.study.estimate import duration_words, estimate_case_s, estimate_s

        about = duration_words(estimate_s(matrix.cases))
        if args.list:
            for c in matrix.cases:
                noun = "connection" if c.connections == 1 else "connections"
                link = f" [{c.link}]" if c.link else ""
                print(f"{c.number:>3}  {c.server:<16}{c.connections:>8,} {noun:<12}{c.load_words:<22}"
                      f"~{duration_words(estimate_case_s(c))}{link}")
            print(f"matrix {matrix.name}: {len(matrix.cases)} cases, about {about} on this machine")
            return 0
        topology = _topology(args, matrix)
        out = _out_dir(args, matrix.name)
        print(f"c10k study: matrix {matrix.name}, {len(matrix.cases)} cases, about {about}; report in {out}/",
              flush=True)
        if args.topology != "netns":
            from c10k.study.conntrack import too_small_note

            warning = too_small_note(max(c.connections for c in matrix.cases))
            if warning:
                print(f"c10k study: warning: {warning}", file=sys.stderr, flush=True)
        progress = _Progress(len(matrix.cases), f"study {matrix.name}")
        try:
            with topology as commands:
                _say_stale(commands)
                study = run_study(matrix, out, commands=commands, progress=progress)
            _container_notes(commands, study)
        finally:
            progress.close()
    if not study.results:
        print("c10k study: interrupted before any case finished; no report", file=sys.stderr)
        return 130
    if sys.stdout.isatty():
        print("writing the report and charts…", flush=True)
    paths = write_report(study, out)
    for note in study.notes:
        print(note)
    passed = sum(r.passed for r in study.results)
    print(f"{len(study.results)} cases: {passed} passed, {len(study.results) - passed} failed "
          f"in {study.duration_s:.0f} s; report: {paths[1]} and {paths[2]}")
    return 130 if study.interrupted else 0
