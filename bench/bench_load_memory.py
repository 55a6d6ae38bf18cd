#!/usr/bin/env python3
"""Peak memory of each load process over a long run: the sample budget must hold it.

Starts `c10k serve epoll` on a free port, runs `c10k load -c C -n N` against it
(by default 2,000 connections x 25,000 = 50,000,000 echoes, two load processes
of 1,000 connections each, default --sample-budget 64 MiB: each connection's
share of the budget fills after ~8,400 echoes, then its samples are folded into
the histogram) and reports each load process's peak RSS, as the process saw it
(`getrusage`, in summary.json's `processes[].peak_rss_bytes`), next to the
parent's (wait4). `--seconds S` stops the load with SIGINT after S seconds, as
Ctrl-C would (what was measured is still written, end of run included). Saves
bench/results/load_memory.json with a description of the machine.

    python bench/bench_load_memory.py [--connections 2000] [--count 25000] [--seconds 0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def start_server(c10k: str) -> tuple[subprocess.Popen[str], int]:
    server = subprocess.Popen([c10k, "serve", "epoll", "-p", "0"], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    line = server.stdout.readline()
    if not line.startswith("listening on "):
        server.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    return server, int(line.rsplit(":", 1)[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=2000)
    ap.add_argument("--count", type=int, default=25_000, help="messages per connection")
    ap.add_argument("--seconds", type=float, default=0, help="stop the load with SIGINT after this long (0: never)")
    ap.add_argument("--sample-budget", default=None, help="passed to c10k load (default: its own)")
    args = ap.parse_args()
    c10k = str(Path(sys.executable).with_name("c10k"))
    server, port = start_server(c10k)
    try:
        with tempfile.TemporaryDirectory() as out:
            cmd = [c10k, "load", "-p", str(port), "-c", str(args.connections), "-n", str(args.count),
                   "--out", out, "--quiet", "--timeout", "120"]
            if args.sample_budget:
                cmd += ["--sample-budget", args.sample_budget]
            started = time.monotonic()
            load = subprocess.Popen(cmd)
            if args.seconds:
                try:
                    load.wait(timeout=args.seconds)
                except subprocess.TimeoutExpired:
                    os.kill(load.pid, signal.SIGINT)
            _, status, usage = os.wait4(load.pid, 0)
            wall = time.monotonic() - started
            summary = json.loads((Path(out) / "summary.json").read_text())
    finally:
        server.terminate()
        server.wait(15)
    procs = summary["processes"]
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "load_avg": os.getloadavg()},
        "command": " ".join(cmd[1:]), "exit_status": os.waitstatus_to_exitcode(status), "wall_s": round(wall, 1),
        "interrupted": summary.get("interrupted"), "echoed": summary["messages"]["echoed"],
        "messages_per_s": summary["messages_per_s"], "errors": summary["errors"],
        "latency_precision": summary.get("latency_precision"), "latency_us": summary["latency_us"],
        "latency_error_us": summary.get("latency_error_us"),
        "sample_budget_bytes": summary.get("sample_budget_bytes"),
        "load_processes_peak_rss_mib": [round(p["peak_rss_bytes"] / 2**20, 1) for p in procs],
        "largest_peak_rss_mib_wait4": round(usage.ru_maxrss / 1024, 1),
        "planned_memory_mib": round(summary["plan"]["memory_bytes"] / 2**20, 1),
    }
    path = HERE / "results" / "load_memory.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{result['echoed']:,} echoes in {wall:.0f} s ({result['messages_per_s']:,.0f} msg/s), "
          f"{result['latency_precision']}; peak RSS per load process "
          f"{', '.join(f'{v} MiB' for v in result['load_processes_peak_rss_mib'])} "
          f"(largest of the parent and its children by wait4: {result['largest_peak_rss_mib_wait4']} MiB); "
          f"saved {path}")


if __name__ == "__main__":
    main()
