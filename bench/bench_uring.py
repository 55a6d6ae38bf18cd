#!/usr/bin/env python3
"""Server CPU per echoed message, with its user/system split: C epoll, `c10k serve uring`, `c10k serve epoll`.

Issue 12's goal: `c10k serve uring --workers 1` at most 0.95 x the C epoll
reference's server CPU per message (median of >= 15 rounds), and below
`c10k serve epoll --workers 1` in the same sitting. Driven like
../shared/anchors/measure.py server-cpu (whose helpers it imports): the server
on CPU 0, the C load client on CPU 1, the process tree's CPU ticks over the
load, one server of each kind per round in turn, so every kind meets the same
moments of a noisy machine. Unlike measure.py it keeps user and system time
apart (io_uring moves work between them) and takes --connections.

    python bench/bench_uring.py [--rounds 15] [--connections 100] [--count 5000]

Prints one line per round and the medians, and saves them in bench/results/uring_cpu_<connections>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ANCHORS = Path(os.environ.get("C10K_ANCHORS", ROOT.parent / "shared" / "anchors"))
TICK = os.sysconf("SC_CLK_TCK")


def tree_ticks(root: int) -> tuple[int, int]:
    """(user, system) clock ticks of ``root`` and its live descendants."""
    parent, ticks = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            parent[int(entry)] = int(fields[1])
            ticks[int(entry)] = (int(fields[11]), int(fields[12]))
    user = system = 0
    for pid, (u, s) in ticks.items():
        p = pid
        while p in parent and p != root and p > 1:
            p = parent[p]
        if p == root:
            user, system = user + u, system + s
    return user, system


def one_round(measure, bins: Path, cmd: list[str], connections: int, count: int) -> dict:
    """Start ``cmd`` on CPU 0, run the C load on CPU 1, return microseconds per message."""
    import subprocess

    port = measure.free_port()
    argv = ["taskset", "-c", "0"] + [a.replace("{port}", str(port)) for a in cmd]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        measure.wait_for_port(port, proc)
        time.sleep(0.3)
        before = tree_ticks(proc.pid)
        stats = measure.reference_load(bins, port, connections, count)
        after = tree_ticks(proc.pid)
    finally:
        measure.stop(proc)
    per = 1e6 / TICK / stats["messages"]
    user, system = (after[0] - before[0]) * per, (after[1] - before[1]) * per
    return {"user_us": user, "system_us": system, "total_us": user + system,
            "messages_per_s": stats["messages_per_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--connections", type=int, default=100)
    ap.add_argument("--count", type=int, default=5000, help="messages per connection")
    args = ap.parse_args()
    if not (ANCHORS / "measure.py").exists():
        raise SystemExit(f"no reference programs at {ANCHORS} (set C10K_ANCHORS)")
    sys.path.insert(0, str(ANCHORS))
    import measure  # the anchors' helpers: build, free_port, wait_for_port, reference_load, stop

    bins = measure.build()
    c10k = str(Path(sys.executable).with_name("c10k"))
    kinds = {
        "C epoll": [str(bins / "echo_epoll"), "{port}"],
        "uring": [c10k, "serve", "uring", "--workers", "1", "-p", "{port}"],
        "epoll": [c10k, "serve", "epoll", "--workers", "1", "-p", "{port}"],
    }
    rounds: dict[str, list[dict]] = {k: [] for k in kinds}
    for rnd in range(1, args.rounds + 1):
        for kind, cmd in kinds.items():
            rounds[kind].append(one_round(measure, bins, cmd, args.connections, args.count))
        ref = rounds["C epoll"][-1]["total_us"]
        print(f"round {rnd}: " + ", ".join(f"{k} {r[-1]['total_us']:.2f} us/msg ({r[-1]['user_us']:.2f} user)"
                                           for k, r in rounds.items())
              + f"; uring/C {rounds['uring'][-1]['total_us'] / ref:.3f}", flush=True)
    summary = {}
    for kind, rows in rounds.items():
        ratios = [r["total_us"] / c["total_us"] for r, c in zip(rows, rounds["C epoll"], strict=True)]
        summary[kind] = {f: statistics.median(r[f] for r in rows) for f in ("total_us", "user_us", "system_us",
                                                                             "messages_per_s")}
        summary[kind]["median_ratio_to_c"] = statistics.median(ratios)
        print(f"{kind:8} median {summary[kind]['total_us']:.2f} us/msg (user {summary[kind]['user_us']:.2f}, "
              f"system {summary[kind]['system_us']:.2f}), median ratio to C {summary[kind]['median_ratio_to_c']:.3f}")
    uring_vs_epoll = statistics.median(u["total_us"] / e["total_us"]
                                       for u, e in zip(rounds["uring"], rounds["epoll"], strict=True))
    print(f"median ratio uring/epoll {uring_vs_epoll:.3f}")
    out = HERE / "results" / f"uring_cpu_{args.connections}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({
        "connections": args.connections, "count": args.count, "rounds": rounds, "summary": summary,
        "median_ratio_uring_to_epoll": uring_vs_epoll,
        "machine": {"kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average": os.getloadavg()},
    }, indent=1))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
