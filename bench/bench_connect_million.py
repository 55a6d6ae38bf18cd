#!/usr/bin/env python3
"""A million connections: how fast they connect, and what holding them costs.

Starts ``c10k serve ARCH`` (epoll by default; ``--balance reuseport`` with the
workers the study would give it) in its own session, then ``c10k load -c N -n
COUNT`` against it (issue 12's run: every connection open at once, then COUNT
messages each), and samples four times a second: the kernel's established
connections and socket memory, listen-queue overflows and SYN retransmits, the
CPU time of the server's and the load's process trees, the accept queues. When
both ends of every connection are up it takes the server's PSS and the
kernel's memory once. Prints and saves (bench/results/connect_million.json):

* connect phase (the load's ``connect_s``), connects/s, the load processes'
  start-up (``startup_s``), and when 10/50/90/100% of the connections were up
  (both ends established, seconds from the load's launch), so a rate that
  falls with N shows, and when the server had accepted them all (its accept
  queues empty);
* server and load CPU per connection over the connect phase;
* overflows and SYN retransmits (a connect whose SYN is dropped waits 1 s);
* messages/s, p50, p99, errors; server PSS per connection, the load processes'
  peak RSS, the kernel's socket memory per connection.

Needs root-level limits for a million (``c10k doctor -c 1000000 --fix`` first:
connection tracking, if loaded, must hold them). Small runs work anywhere:

    python bench/bench_connect_million.py [--connections 1000000] [--count 2]
        [--balance handoff|reuseport] [--arch epoll|uring] [--load-args "..."] [--tag NAME]
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path
from typing import Any

import harness

from c10k import capacity, limits


def workers_for(balance: str, connections: int) -> int:
    nofile, cpus = limits.nofile_limits()[1], limits.cpus()
    if balance == "reuseport":
        return capacity.reuseport_workers(connections, nofile, cpus)
    return capacity.server_workers(connections, nofile, cpus)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=1_000_000)
    ap.add_argument("--count", type=int, default=2, help="messages per connection once all are open")
    ap.add_argument("--arch", default="epoll", choices=("epoll", "uring"))
    ap.add_argument("--balance", default="handoff", choices=("handoff", "reuseport"))
    ap.add_argument("--workers", type=int, default=None, help="server workers (default: the study's)")
    ap.add_argument("--timeout", type=float, default=600.0,
                    help="seconds a connect or an echo may take (a closed loop over 1M connections queues "
                         "every first message at once)")
    ap.add_argument("--server-args", default="", help="extra `c10k serve` arguments")
    ap.add_argument("--load-args", default="", help="extra `c10k load` arguments (e.g. --tune)")
    ap.add_argument("--tag", default="", help="suffix for the results file")
    args = ap.parse_args()
    n = args.connections
    workers = args.workers or workers_for(args.balance, n)
    server_args = ["--workers", str(workers), "--balance", args.balance, *shlex.split(args.server_args)]
    name = "connect_million" + (f"_{args.tag}" if args.tag else "")
    out = harness.HERE / "results" / name
    (out / "summary.json").unlink(missing_ok=True)
    proc, port = harness.start_server(args.arch, server_args)
    server = harness.Tree(proc.pid)
    at_full: dict[str, Any] = {}
    try:
        idle = {"server_pss": server.pss(), **harness.kernel()}
        base_estab = idle["estab"]

        def when_full(row: dict[str, Any], load: harness.Tree) -> None:
            # both ends of every connection established: measure memory once, there
            if not at_full and harness.all_up(row["estab"], base_estab, n):
                at_full.update(t=row["t"], server_pss=server.pss(), load_pss=load.pss(), **harness.kernel())

        cmd = [harness.C10K, "load", "-p", str(port), "-c", str(n), "-n", str(args.count),
               "--timeout", f"{args.timeout:g}", "--out", str(out), "--quiet", *shlex.split(args.load_args)]
        print("$ c10k serve", args.arch, "-p 0", shlex.join(server_args), flush=True)
        code, wall, rows = harness.load_while_sampling(cmd, server, port, args.timeout * 3 + 600, when_full)
    finally:
        stopped = harness.stop_server(proc)
    summary = harness.read_summary(out, code)
    result = report(n, summary, rows, idle, at_full)
    result.update(when=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), machine=harness.machine(),
                  server=f"c10k serve {args.arch} {shlex.join(server_args)}", load=shlex.join(cmd[1:]),
                  load_exit=code, server_exit=stopped, wall_s=round(wall, 3), summary=summary,
                  timeline=rows[::4])
    path = harness.save(name, result)
    print_result(result)
    print(f"saved {path}")
    raise SystemExit(code)


def report(n: int, summary: dict[str, Any], rows: list[dict[str, Any]], idle: dict[str, Any],
           full: dict[str, Any]) -> dict[str, Any]:
    """The connect phase's figures from the samples and the load's summary."""
    base = idle["estab"]
    up = {f"{p}%": (r or {}).get("t") for p in (10, 50, 90, 100)
          for r in [harness.first(rows, lambda r, p=p: harness.all_up(r["estab"], base, n, p / 100))]}
    start = rows[0] if rows else None
    end = harness.first(rows, lambda r: harness.all_up(r["estab"], base, n))
    fig: dict[str, Any] = {"connections": n, "connect_s": summary["connect_s"],
                           "connects_per_s": round(n / summary["connect_s"]) if summary["connect_s"] else None,
                           "startup_s": summary.get("startup_s"), "up_at_s": up}
    if start is not None and end is not None:
        fig["connect_cpu_us_per_connection"] = {
            who: round(harness.cpu_between(start, end, who) / n * 1e6, 1) for who in ("server", "load")}
        fig["connect_kernel"] = {k: end[k] - start[k] for k in (*harness.TCPEXT, "retrans_segs")}
    fig["accept_queue_max"] = max((r.get("accept_queue", 0) for r in rows), default=0)
    if end is not None:
        # the kernel counts a connection established before the server accepts it: the server
        # holds every one once the accept queues are empty too
        held = harness.first(rows, lambda r: r["accept_queue_t"] >= end["t"] and r["accept_queue"] == 0)
        fig["server_holds_all_at_s"] = held["accept_queue_t"] if held else None
    if full:
        fig["server_pss_bytes_per_connection"] = round((full["server_pss"] - idle["server_pss"]) / n, 1)
        fig["load_pss_bytes"] = full["load_pss"]
        fig["kernel_socket_mem_bytes"] = full["tcp_mem_bytes"] - idle["tcp_mem_bytes"]
        fig["kernel_slab_bytes_per_connection"] = round((full["slab"] - idle["slab"]) / n, 1)
        fig["kernel_memory_bytes_per_connection"] = round((idle["mem_available"] - full["mem_available"]
                                                           - (full["server_pss"] - idle["server_pss"])
                                                           - full["load_pss"]) / n, 1)
    fig["load_peak_rss_bytes"] = [p.get("peak_rss_bytes") for p in summary.get("processes", [])]
    return fig


def print_result(r: dict[str, Any]) -> None:
    s = r["summary"]
    c, lat = s["connections"], s["latency_us"]
    print(f"{c['established']:,}/{c['requested']:,} established, errors {s['errors'] or 'none'}; "
          f"connect {r['connect_s']:.1f} s ({r['connects_per_s'] or 0:,}/s), load start-up {r['startup_s']} s, "
          f"up at {r['up_at_s']}")
    if "connect_cpu_us_per_connection" in r:
        print(f"connect CPU per connection (us): {r['connect_cpu_us_per_connection']}; kernel: {r['connect_kernel']}; "
              f"accept queue max {r['accept_queue_max']}, server holds all at {r.get('server_holds_all_at_s')} s")
    print(f"messages {s['messages']['echoed']:,} in {s['elapsed_s']:.1f} s ({s['messages_per_s']:,.0f}/s), "
          f"p50 {lat['p50']} us, p99 {lat['p99']} us")
    if "server_pss_bytes_per_connection" in r:
        rss = [x for x in r["load_peak_rss_bytes"] if x]
        print(f"server PSS {r['server_pss_bytes_per_connection']} B/connection; load PSS "
              f"{r['load_pss_bytes'] / 2**20:.0f} MiB in all (peak RSS per process up to "
              f"{max(rss, default=0) / 2**20:.0f} MiB); kernel: socket buffers "
              f"{r['kernel_socket_mem_bytes'] / 2**20:.0f} MiB, slab "
              f"{r['kernel_slab_bytes_per_connection']} B/connection, all kernel "
              f"{r['kernel_memory_bytes_per_connection']} B/connection")
    print(f"wall {r['wall_s']:.1f} s; load exit {r['load_exit']}, server exit {r['server_exit']}")


if __name__ == "__main__":
    Path(harness.HERE / "results").mkdir(exist_ok=True)
    main()
