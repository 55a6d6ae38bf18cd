#!/usr/bin/env python3
"""Locust's echo user against `c10k load`, one process each, on the same `c10k serve epoll`.

Round by round, alternating, it runs `c10k locust --headless` (one process) and
`c10k load --processes 1` with the same connections and messages against one
`c10k serve epoll --workers 1` (server on CPU 0, clients on CPU 1 when taskset
exists), and reports both messages/s (each from its summary.json: the message
phase) and CPU time per message. Then it holds --hold connections open in one
Locust process (each echoing --hold-rate times a second) to show how many
concurrent connections one worker sustains. Saves bench/results/locust.json.

    python bench/bench_locust.py [--rounds 3] [--connections 1000] [--count 200] [--hold 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
C10K = [sys.executable, "-m", "c10k"]


def pinned(cpu: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else argv


def start_server() -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(pinned(0, [*C10K, "serve", "epoll", "--workers", "1", "-p", "0"]),
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "listening on HOST:PORT", flushed as soon as it listens
    if not line.startswith("listening on "):
        proc.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    return proc, int(line.rsplit(":", 1)[1])


def timed(argv: list[str], timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    """Run argv; return it and the CPU seconds (user + system) it and its children used."""
    before = os.times()
    run = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    after = os.times()
    return run, (after.children_user - before.children_user) + (after.children_system - before.children_system)


def run_locust(port: int, out: Path, users: int, count: int, *extra: str) -> tuple[dict, float]:
    argv = pinned(1, [*C10K, "locust", "--headless", "--host", f"tcp://127.0.0.1:{port}", "-u", str(users),
                      "-r", str(users), "-t", "600s", "--count", str(count), "--csv", str(out / "run"),
                      "--only-summary", *extra])
    run, cpu = timed(argv, 900)
    if run.returncode != 0:
        raise SystemExit(f"locust failed ({run.returncode}): {run.stderr[-1500:]}")
    return json.loads((out / "summary.json").read_text()), cpu


def run_load(port: int, out: Path, connections: int, count: int) -> tuple[dict, float]:
    argv = pinned(1, [*C10K, "load", "-p", str(port), "-c", str(connections), "-n", str(count), "--processes", "1",
                      "--out", str(out), "--quiet"])
    run, cpu = timed(argv, 900)
    if run.returncode != 0:
        raise SystemExit(f"c10k load failed ({run.returncode}): {run.stderr[-1500:]}")
    return json.loads((out / "summary.json").read_text()), cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--count", type=int, default=200, help="messages per connection")
    ap.add_argument("--hold", type=int, default=5000, help="connections to hold open in one Locust process (0: skip)")
    ap.add_argument("--hold-count", type=int, default=20)
    ap.add_argument("--hold-rate", type=float, default=1.0, help="echoes per second per held connection")
    args = ap.parse_args()
    server, port = start_server()
    rows, hold = [], None
    messages = args.connections * args.count
    try:
        for rnd in range(1, args.rounds + 1):
            row = {}
            for label, fn in (("locust", run_locust), ("load", run_load)):
                with tempfile.TemporaryDirectory() as out:
                    summary, cpu = fn(port, Path(out), args.connections, args.count)
                if summary["messages"]["echoed"] != messages:
                    raise SystemExit(f"{label}: {summary['messages']['echoed']} of {messages} echoed")
                row[label] = {"messages_per_s": summary["messages_per_s"], "cpu_us_per_message": cpu / messages * 1e6,
                              "p50_us": summary["latency_us"]["p50"], "p99_us": summary["latency_us"]["p99"]}
            row["ratio"] = row["locust"]["messages_per_s"] / row["load"]["messages_per_s"]
            rows.append(row)
            print(f"round {rnd}: locust {row['locust']['messages_per_s']:.0f} msg/s "
                  f"({row['locust']['cpu_us_per_message']:.1f} us CPU/msg), c10k load "
                  f"{row['load']['messages_per_s']:.0f} msg/s ({row['load']['cpu_us_per_message']:.1f} us CPU/msg), "
                  f"locust/load {row['ratio']:.3f}", flush=True)
        if args.hold:
            with tempfile.TemporaryDirectory() as out:
                summary, cpu = run_locust(port, Path(out), args.hold, args.hold_count, "--user-rate",
                                          str(args.hold_rate))
            hold = {"connections": args.hold, "peak_open": summary["connections"]["peak_open"],
                    "completed": summary["connections"]["completed"], "errors": summary["errors"],
                    "echoed": summary["messages"]["echoed"], "messages_per_s": summary["messages_per_s"],
                    "cpu_s": cpu, "connect_s": summary["connect_s"], "p99_us": summary["latency_us"]["p99"]}
            print(f"hold: {hold['peak_open']} of {args.hold} connections open at once in one Locust process, "
                  f"{hold['completed']} completed, errors {hold['errors'] or 'none'}, "
                  f"{hold['messages_per_s']:.0f} msg/s, p99 {hold['p99_us']:.0f} us", flush=True)
    finally:
        os.killpg(server.pid, 15)
        server.wait(15)
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "load_avg": os.getloadavg()},
        "connections": args.connections, "count": args.count, "rounds": rows,
        "median": {label: statistics.median(r[label]["messages_per_s"] for r in rows) for label in ("locust", "load")},
        "median_ratio": statistics.median(r["ratio"] for r in rows),
        "hold": hold,
    }
    path = HERE / "results" / "locust.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"median: locust {result['median']['locust']:.0f} msg/s, c10k load {result['median']['load']:.0f} msg/s "
          f"per process (locust/load {result['median_ratio']:.3f}); saved {path}")


if __name__ == "__main__":
    main()
