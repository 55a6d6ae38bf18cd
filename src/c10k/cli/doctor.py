"""`c10k doctor`: the limits that decide how far each architecture can go here."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from c10k.errors import C10kError, UsageError
from c10k.study.capacity import DEFAULT_MAX_WORKERS

_EPILOG = """\
Reads the machine's limits (descriptors, FD_SETSIZE, threads, ephemeral ports,
listen backlog, memory, connection tracking, TCP memory, open files system-wide)
and says what CONNECTIONS concurrent loopback connections need: server and load
processes, source addresses (the numbers `c10k load` will use), kernel memory,
which architectures can hold them here and why the others cannot, and which
kernel limits would stop or slow the run, with the command that raises each.
Nothing is changed, unless --fix (root) is given.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="show this machine's limits and what N connections need",
                       description="Show this machine's limits and what N connections need.",
                       epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--connections", type=int, default=100000, metavar="N",
                   help="concurrent connections to plan for (default: 100000, the original's largest case)")
    p.add_argument("--max-workers", type=int, default=DEFAULT_MAX_WORKERS, metavar="N",
                   help="the epoll server's --max-workers to plan with (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the facts and the plan as JSON")
    p.add_argument("--fix", action="store_true",
                   help="raise every kernel limit that would stop or slow N connections (root only); "
                        "each change is printed, none is restored afterwards")
    p.set_defaults(run=run)


#: More connections than any TCP stack can hold (2^16 ports x 2^24 loopback addresses, and then some).
MOST_CONNECTIONS = 10**12


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from c10k.capacity import KERNEL_BYTES_PER_SOCKET, ports_per_source
    from c10k.limits import machine_limits
    from c10k.servers.uring_sys import available as uring_available
    from c10k.study.capacity import plan_capacity
    from c10k.topology import probe_line

    if args.connections < 1:
        raise UsageError("-c/--connections must be at least 1")
    if args.connections > MOST_CONNECTIONS:
        raise UsageError(f"-c/--connections {args.connections:,} is more than any machine can plan for "
                         f"(at most {MOST_CONNECTIONS:,})")
    if args.max_workers < 1:
        raise UsageError("--max-workers must be at least 1")
    from c10k import capacity
    from c10k.limits import write_sysctl

    lim = machine_limits()
    kernel = capacity.kernel_limits(args.connections, lim)
    if args.fix:
        try:
            changes = capacity.tune(kernel, write_sysctl)
        except OSError as exc:
            raise C10kError(f"--fix: cannot change kernel settings ({exc.strerror}); run as root") from None
        for change in changes:
            print(f"changed {change}")
        if not changes:
            print(f"nothing to change for {args.connections:,} connections")
        lim = machine_limits()
        kernel = capacity.kernel_limits(args.connections, lim)
    cap = plan_capacity(args.connections, lim, max_workers=args.max_workers)
    if args.json:
        data = dataclasses.asdict(cap)
        data["kernel_limits"] = [dataclasses.asdict(k) for k in kernel]
        json.dump(data, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0

    console = Console(highlight=False)
    threads, thread_why = lim.thread_limit()
    facts = Table(title="Limits on this machine", title_justify="left", show_lines=False)
    facts.add_column("Limit")
    facts.add_column("Value", justify="right")
    facts.add_column("What it decides")
    facts.add_row("RLIMIT_NOFILE (soft/hard)", f"{lim.nofile_soft:,} / {lim.nofile_hard:,}",
                  "descriptors per process: caps every single-process server")
    facts.add_row("FD_SETSIZE", str(lim.fd_setsize), "select() cannot watch a descriptor >= this")
    facts.add_row("threads per process", f"{threads:,}", f"threaded server; tightest: {thread_why}")
    facts.add_row("  kernel.threads-max / pid_max", f"{lim.threads_max:,} / {lim.pid_max:,}",
                  "every thread takes a pid")
    facts.add_row("  vm.max_map_count", f"{lim.max_map_count:,}", "a thread stack and its guard are 2 maps")
    facts.add_row("  RLIMIT_NPROC", f"{lim.nproc:,}" if lim.nproc else "unlimited", "threads of this user")
    facts.add_row("  thread stack (RLIMIT_STACK)", f"{lim.stack_bytes / 2**20:.0f} MiB",
                  "virtual per thread; only touched pages cost memory")
    facts.add_row("ephemeral ports", f"{lim.ephemeral_ports:,} ({lim.ephemeral_range[0]}–"
                  f"{lim.ephemeral_range[1]})", "connections per source address to one server address")
    facts.add_row("net.core.somaxconn", f"{lim.somaxconn:,}", "caps every listen backlog")
    facts.add_row("tcp_max_syn_backlog", f"{lim.syn_backlog:,}", "half-open connections waiting")
    facts.add_row("memory (available/total)", f"{_gib(lim.memory_available)} / {_gib(lim.memory_total)}",
                  f"~{KERNEL_BYTES_PER_SOCKET // 1024} KB kernel per loopback socket")
    facts.add_row("CPUs", str(lim.cpus), "worker processes worth running")
    console.print(facts)
    console.print(probe_line(), soft_wrap=True)  # off loopback: c10k.topology tries a namespace for real
    console.print(f"io_uring: {uring_available() or 'works here (c10k serve uring)'}", soft_wrap=True)

    n = args.connections
    console.print()
    console.print(f"[bold]{n:,} connections need[/bold]")
    console.print(f"  server: {cap.server_processes} process(es) of at most {cap.fds_per_process:,} "
                  "connections each (single-process architectures stop there)")
    sources = ("the kernel's choice of source address" if cap.source_addresses == 1
               else f"{cap.source_addresses} source addresses (127.0.0.2, 127.0.0.3, ...)")
    console.print(f"  load:   {cap.load_processes} process(es) and {sources}; up to "
                  f"{ports_per_source(lim.ephemeral_ports):,} of the {lim.ephemeral_ports:,} ephemeral ports "
                  "each (c10k load plans the same)")
    console.print(f"  kernel memory: ~{_gib(cap.kernel_bytes)} ({n:,} × 2 ends × "
                  f"{KERNEL_BYTES_PER_SOCKET // 1024} KB); with a margin ~{_gib(cap.memory_needed)}, which "
                  f"{'fits' if cap.memory_ok else 'does NOT fit'} in {_gib(lim.memory_available)} available")
    console.print()
    table = Table(title=f"Who can hold {n:,} connections here", title_justify="left")
    table.add_column("Server")
    table.add_column("Most here", justify="right")
    table.add_column("Holds it?")
    table.add_column("Why")
    for a in cap.architectures:
        verdict = "[green]yes[/green]" if a.can_hold else "[red]no[/red]"
        table.add_row(a.server, f"{a.max_connections:,}", verdict, a.why)
    console.print(table)
    console.print()
    limits_table = Table(title=f"Kernel limits on the way to {n:,} connections", title_justify="left")
    for column in ("Limit", "Now", f"{n:,} need", "", "Why / fix"):
        limits_table.add_column(column)
    words = {"ok": "[green]ok[/green]", "warn": "[yellow]slows[/yellow]", "blocks": "[red]BLOCKS[/red]"}
    for k in kernel:
        limits_table.add_row(k.name, k.value, k.needed, words[k.status], k.why + (f"; {k.fix}" if k.fix else ""))
    console.print(limits_table)
    for w in cap.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}")
    stops = capacity.blocking(kernel)
    if stops:
        console.print(f"[red]{len(stops)} kernel limit(s) would stop this run[/red]: "
                      f"{', '.join(k.name for k in stops)}; `c10k doctor -c {n} --fix` (root) raises them")
    return 0
