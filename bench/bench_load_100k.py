#!/usr/bin/env python3
"""Scale: N connections, all open at once, x COUNT messages against `c10k serve epoll`.

Starts the server (`c10k serve epoll -p 0` plus --server-args) in its own
session, waits for its `listening on HOST:PORT` line, runs `c10k load` against
it, always kills the server, and saves the load's summary (connect time, message
rate, latency percentiles, errors, plan) with a description of the machine in
bench/results/load_100k.json. Issue 3's goal: 100,000 x 100 with zero errors.

    python bench/bench_load_100k.py [--connections 100000] [--count 100] [--server-args "--workers 2"]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import time
from pathlib import Path

import harness

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=100_000)
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--processes", type=int, default=None, help="load processes (default: the plan's)")
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="seconds one round trip may take: with 100k messages in flight on 2 shared cores a "
                         "round trip takes ~10 s even when nothing is wrong")
    ap.add_argument("--server-args", default="", help="extra `c10k serve epoll` arguments")
    ap.add_argument("--load-args", default="", help="extra `c10k load` arguments")
    args = ap.parse_args()
    c10k = harness.C10K
    proc, port = harness.start_server("epoll", shlex.split(args.server_args))
    try:
        # keep summary.json and connections.csv next to the figures
        out = HERE / "results" / "load_100k"
        (out / "summary.json").unlink(missing_ok=True)
        cmd = [c10k, "load", "-p", str(port), "-c", str(args.connections), "-n", str(args.count),
               "--timeout", str(args.timeout), "--out", str(out), *shlex.split(args.load_args)]
        if args.processes:
            cmd += ["--processes", str(args.processes)]
        print("$", shlex.join(cmd), flush=True)
        started = time.monotonic()
        run = subprocess.run(cmd, text=True, timeout=1800)
        wall = time.monotonic() - started
        summary_path = out / "summary.json"
        if not summary_path.exists():
            raise SystemExit(f"c10k load wrote no summary (exit {run.returncode})")
        summary = json.loads(summary_path.read_text())
    finally:
        harness.stop_server(proc)
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "load_avg": os.getloadavg()},
        "server": f"c10k serve epoll {args.server_args}".strip(),
        "exit_status": run.returncode, "wall_s": round(wall, 3),
        "summary": summary,
    }
    path = HERE / "results" / "load_100k.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    c, m, lat = summary["connections"], summary["messages"], summary["latency_us"]
    print(f"{c['established']}/{c['requested']} established (peak open {c['peak_open']}), "
          f"{m['echoed']}/{c['requested'] * args.count} echoed, errors {summary['errors'] or 'none'}; "
          f"connect {summary['connect_s']:.1f} s, messages {summary['elapsed_s']:.1f} s "
          f"({summary['messages_per_s']:.0f} msg/s), p50 {lat['p50']} us, p99 {lat['p99']} us; "
          f"exit {run.returncode}; saved {path}")
    raise SystemExit(run.returncode)


if __name__ == "__main__":
    main()
