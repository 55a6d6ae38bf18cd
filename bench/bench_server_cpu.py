#!/usr/bin/env python3
"""Server CPU per echoed message, against the C reference server, side by side.

Runs ../shared/anchors/measure.py server-cpu for each architecture asked for
(default: `c10k serve epoll --workers 1`, the figure issue 2 sets a goal on:
at most 1.10 x the reference, median of 5 rounds) and saves the ratios with a
description of the machine in bench/results/server_cpu.json.

    python bench/bench_server_cpu.py [--rounds 5] [--arch epoll asyncio ...] [--no-floor]

With the floor (the default), each round also measures bench/bare_epoll.py,
the least a Python epoll echo loop can do, right after the architecture: the
ratio epoll / floor is what our server's features cost, and floor / C is what
the interpreter costs on this machine at that moment (it moves with the
machine's load: 1.03 when the goal was set, 1.1-1.2 on busier days).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ANCHORS = Path(os.environ.get("C10K_ANCHORS", ROOT.parent / "shared" / "anchors"))
VARIANTS = {
    "epoll": ["serve", "epoll", "--workers", "1"],
    "epoll-threads": ["serve", "epoll", "--workers", "1", "--worker-mode", "thread"],
    "epoll-reuseport": ["serve", "epoll", "--workers", "1", "--balance", "reuseport"],
    "poll": ["serve", "poll"],
    "select": ["serve", "select"],
    "threaded": ["serve", "threaded"],
    "asyncio": ["serve", "asyncio"],
    "uvloop": ["serve", "uvloop"],
    "gevent": ["serve", "gevent"],
    "trio": ["serve", "trio"],
    "uring": ["serve", "uring", "--workers", "1"],
}


FLOOR = "floor"


def command(variant: str) -> list[str]:
    if variant == FLOOR:
        return [sys.executable, str(HERE / "bare_epoll.py"), "{port}"]
    return [str(Path(sys.executable).with_name("c10k")), *VARIANTS[variant], "-p", "{port}"]


def measure(variant: str, rounds: int) -> dict:
    cmd = [sys.executable, str(ANCHORS / "measure.py"), "server-cpu", "--rounds", str(rounds), "--", *command(variant)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    print(out.stdout, end="", flush=True)
    if out.returncode != 0:
        raise SystemExit(f"measure.py failed for {variant}: {out.stderr.strip()[-500:]}")
    rows = re.findall(r"reference ([\d.]+) us/msg, candidate ([\d.]+) us/msg, ratio ([\d.]+)", out.stdout)
    median = float(re.search(r"median ratio candidate/reference = ([\d.]+)", out.stdout).group(1))  # type: ignore[union-attr]
    return {"median_ratio": median,
            "rounds": [{"reference_us": float(a), "candidate_us": float(b), "ratio": float(c)} for a, b, c in rows]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--arch", nargs="+", default=["epoll"], choices=list(VARIANTS))
    ap.add_argument("--no-floor", dest="floor", action="store_false",
                    help="do not measure bench/bare_epoll.py after each architecture in each round")
    args = ap.parse_args()
    if not (ANCHORS / "measure.py").exists():
        raise SystemExit(f"no reference programs at {ANCHORS} (set C10K_ANCHORS)")
    variants = [*args.arch, FLOOR] if args.floor else args.arch
    rounds: dict[str, list[dict]] = {v: [] for v in variants}
    # One round of each in turn, so that every variant meets the same moments of a noisy machine.
    for rnd in range(1, args.rounds + 1):
        for variant in variants:
            print(f"== round {rnd}: {variant}", flush=True)
            rounds[variant] += measure(variant, 1)["rounds"]
    results: dict[str, dict] = {
        v: {"median_ratio": statistics.median(r["ratio"] for r in rows), "rounds": rows} for v, rows in rounds.items()}
    if args.floor:
        for variant in args.arch:
            paired = [a["candidate_us"] / b["candidate_us"] for a, b in zip(rounds[variant], rounds[FLOOR])]
            results[variant]["median_over_floor"] = statistics.median(paired)
    out = HERE / "results" / "server_cpu.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "machine": {"platform": platform.platform(), "python": platform.python_version(),
                                           "cpus": os.cpu_count(), "load_avg": os.getloadavg()},
                               "results": results}, indent=1))
    for variant, r in results.items():
        over = f", {r['median_over_floor']:.3f} x the floor" if "median_over_floor" in r else ""
        print(f"{variant:16} median ratio {r['median_ratio']:.3f} x C{over}")


if __name__ == "__main__":
    main()
