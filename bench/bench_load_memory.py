#!/usr/bin/env python3
"""Peak memory of every process of a long `c10k load` run: the sample budget must hold it.

Starts `c10k serve epoll` on a free port, runs `c10k load -c C -n N` against it
(by default 2,000 connections x 100,000 = 200,000,000 echoes, two load
processes of 1,000 connections each, default --sample-budget 64 MiB: each
connection's share of the budget fills after ~8,400 echoes, then its samples
are folded into the histogram) and reports the peak RSS of the parent (the
process that merges) and of each load process, two ways:

* as each process saw itself at the end (summary.json's `peak_rss_bytes` and
  `processes[].peak_rss_bytes`: VmHWM, the peak of its own memory);
* sampled with psutil every `--every` seconds over the whole run: first, last
  and largest RSS of each process, and the largest in each half of the run, so
  that "it does not grow with the run's length" is shown, not assumed.

`--seconds S` stops the load with SIGINT after S seconds, as Ctrl-C would
(what was measured is still written, end of run included). Saves
bench/results/load_memory.json (every RSS sample included) with a description
of the machine.

    python bench/bench_load_memory.py [--connections 2000] [--count 100000] [--seconds 600] [--every 5]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import harness
import psutil

MIB = 2**20


def sample_rss(parent: psutil.Process) -> dict[int, int]:
    """RSS in bytes of the parent and of each of its children, by pid (gone ones left out)."""
    out = {}
    try:
        procs = [parent, *parent.children()]
    except psutil.NoSuchProcess:
        return out
    for p in procs:
        try:
            out[p.pid] = p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return out


def over_time(samples: list[tuple[float, dict[int, int]]], pid: int, wall: float) -> dict[str, float]:
    """first/last/largest RSS (MiB) of one process over the run, and the largest in each half."""
    mine = [(t, rss[pid]) for t, rss in samples if rss.get(pid)]  # 0: a zombie, at the end
    if not mine:
        return {}
    half = wall / 2
    first_half = [r for t, r in mine if t < half] or [0]
    second_half = [r for t, r in mine if t >= half] or [0]
    return {"first_mib": round(mine[0][1] / MIB, 1), "last_mib": round(mine[-1][1] / MIB, 1),
            "max_mib": round(max(r for _, r in mine) / MIB, 1),
            "max_first_half_mib": round(max(first_half) / MIB, 1),
            "max_second_half_mib": round(max(second_half) / MIB, 1), "samples": len(mine)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=2000)
    ap.add_argument("--count", type=int, default=100_000, help="messages per connection")
    ap.add_argument("--seconds", type=float, default=0, help="stop the load with SIGINT after this long (0: never)")
    ap.add_argument("--every", type=float, default=5.0, help="seconds between RSS samples")
    ap.add_argument("--sample-budget", default=None, help="passed to c10k load (default: its own)")
    args = ap.parse_args()
    c10k = harness.C10K
    server, port = harness.start_server("epoll", [])
    samples: list[tuple[float, dict[int, int]]] = []
    try:
        with tempfile.TemporaryDirectory() as out:
            cmd = [c10k, "load", "-p", str(port), "-c", str(args.connections), "-n", str(args.count),
                   "--out", out, "--quiet", "--timeout", "120"]
            if args.sample_budget:
                cmd += ["--sample-budget", args.sample_budget]
            started = time.monotonic()
            load = subprocess.Popen(cmd)
            watched = psutil.Process(load.pid)
            stopped = False
            while True:
                now = time.monotonic() - started
                if args.seconds and now >= args.seconds and not stopped:
                    os.kill(load.pid, signal.SIGINT)
                    stopped = True
                samples.append((round(now, 1), sample_rss(watched)))
                pid, status, usage = os.wait4(load.pid, os.WNOHANG)  # wait4: its rusage, below
                if pid:
                    break
                time.sleep(min(args.every, max(0.05, args.seconds - now) if args.seconds and not stopped
                               else args.every))
            wall = time.monotonic() - started
            summary = json.loads((Path(out) / "summary.json").read_text())
    finally:
        harness.stop_server(server)
    procs = summary["processes"]
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": harness.machine(),
        "command": " ".join(cmd[1:]), "exit_status": os.waitstatus_to_exitcode(status), "wall_s": round(wall, 1),
        "interrupted": summary.get("interrupted"), "echoed": summary["messages"]["echoed"],
        "messages_per_s": summary["messages_per_s"], "errors": summary["errors"],
        "latency_precision": summary.get("latency_precision"),
        "process_precision": [p.get("latency_precision") for p in procs],
        "latency_us": summary["latency_us"], "latency_error_us": summary.get("latency_error_us"),
        "sample_budget_bytes": summary.get("sample_budget_bytes"),
        "parent_peak_rss_mib": round(summary.get("peak_rss_bytes", 0) / MIB, 1),
        "load_processes_peak_rss_mib": [round(p["peak_rss_bytes"] / MIB, 1) for p in procs],
        # Linux's ru_maxrss from wait4: the largest of the parent and its children
        "largest_peak_rss_mib_wait4": round(usage.ru_maxrss / 1024, 1),
        "planned_memory_mib": round(summary["plan"]["memory_bytes"] / MIB, 1),
        "rss_over_time": {"parent": over_time(samples, load.pid, wall),
                          **{f"load process {p['index']}": over_time(samples, p["pid"], wall) for p in procs}},
        "rss_samples": [[t, {str(pid): round(rss / MIB, 1) for pid, rss in s.items()}] for t, s in samples],
        "pids": {"parent": load.pid, **{f"load process {p['index']}": p["pid"] for p in procs}},
    }
    path = harness.save("load_memory", result)
    print(f"{result['echoed']:,} echoes in {wall:.0f} s ({result['messages_per_s']:,.0f} msg/s), "
          f"{result['latency_precision']}; peak RSS: parent {result['parent_peak_rss_mib']} MiB, load processes "
          f"{', '.join(f'{v} MiB' for v in result['load_processes_peak_rss_mib'])} "
          f"(largest by wait4: {result['largest_peak_rss_mib_wait4']} MiB)")
    for name, row in result["rss_over_time"].items():
        if row:
            print(f"  {name}: RSS first {row['first_mib']}, largest {row['max_mib']} "
                  f"(first half {row['max_first_half_mib']}, second half {row['max_second_half_mib']}), "
                  f"last {row['last_mib']} MiB over {row['samples']} samples")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
