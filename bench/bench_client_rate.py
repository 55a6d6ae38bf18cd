#!/usr/bin/env python3
"""Load-client message rate with --processes 1, against the C reference client, side by side.

Runs ../shared/anchors/measure.py client-rate (the server is the C reference
echo_epoll on CPU 0; the C client and `c10k load --processes 1` alternate on
CPU 1, round by round) and saves the rounds and the median ratio with a
description of the machine in bench/results/client_rate.json. Issue 3's goal:
median ratio >= 0.9.

    python bench/bench_client_rate.py [--rounds 5] [--connections 100] [--count 5000] [--cpu-rounds 5]

On a shared machine the rates swing with the neighbours' load, so it also
measures CPU time (user + system, from wait4) per message of both clients
against the same C server, alternating round by round: reference / candidate
is the rate ratio to expect when the client's CPU is the bottleneck.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ANCHORS = Path(os.environ.get("C10K_ANCHORS", ROOT.parent / "shared" / "anchors"))


MESSAGE = "hello, echo 15b"


def cpu_per_message(rounds: int, connections: int, count: int) -> dict:
    """CPU time per message of the C client and of `c10k load --processes 1`, alternating."""
    bins = Path(tempfile.gettempdir()) / "c10k-anchors"
    c10k = str(Path(sys.executable).with_name("c10k"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(["taskset", "-c", "0", str(bins / "echo_epoll"), str(port)], stdout=subprocess.DEVNULL)
    rows = []
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the reference server did not start") from None
                time.sleep(0.05)
        messages = connections * count
        for rnd in range(1, rounds + 1):
            row = {}
            with tempfile.TemporaryDirectory() as out:
                for label, argv in (
                    ("reference", [str(bins / "echo_load"), str(port), str(connections), str(count), MESSAGE]),
                    ("candidate", [c10k, "load", "-p", str(port), "-c", str(connections), "-n", str(count),
                                   "-m", MESSAGE, "--out", out, "--processes", "1", "--quiet"]),
                ):
                    before = os.times()
                    subprocess.run(["taskset", "-c", "1", *argv], check=True, capture_output=True, timeout=600)
                    after = os.times()
                    used = (after.children_user - before.children_user) + (after.children_system
                                                                           - before.children_system)
                    row[label] = used / messages * 1e6
                # the candidate's own figure leaves out its start-up (interpreter, numpy, results)
                summary = json.loads((Path(out) / "summary.json").read_text())
                row["candidate_whole_process"] = row["candidate"]
                row["candidate"] = summary["client_cpu_us_per_message"]
            row["ratio"] = row["reference"] / row["candidate"]
            rows.append(row)
            print(f"cpu round {rnd}: reference {row['reference']:.2f} us/msg (whole process), candidate "
                  f"{row['candidate']:.2f} us/msg (message phase; {row['candidate_whole_process']:.2f} whole "
                  f"process), reference/candidate {row['ratio']:.3f}", flush=True)
    finally:
        server.terminate()
        server.wait(10)
    return {"median_ratio": statistics.median(r["ratio"] for r in rows), "rounds": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=100)
    ap.add_argument("--count", type=int, default=5000, help="messages per connection")
    ap.add_argument("--cpu-rounds", type=int, default=5, help="rounds of the CPU-per-message comparison (0: skip)")
    args = ap.parse_args()
    if not (ANCHORS / "measure.py").exists():
        raise SystemExit(f"no reference programs at {ANCHORS} (set C10K_ANCHORS)")
    c10k = str(Path(sys.executable).with_name("c10k"))
    cmd = [sys.executable, str(ANCHORS / "measure.py"), "client-rate", "--rounds", str(args.rounds),
           "--connections", str(args.connections), "--count", str(args.count), "--",
           c10k, "load", "-p", "{port}", "-c", "{connections}", "-n", "{count}", "-m", "{message}",
           "--out", "{out}", "--processes", "1", "--quiet"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    print(out.stdout, end="", flush=True)
    if out.returncode != 0:
        raise SystemExit(f"measure.py failed: {out.stderr.strip()[-500:]}")
    rows = re.findall(r"reference (\d+) msg/s, candidate (\d+) msg/s, ratio ([\d.]+)", out.stdout)
    found = re.search(r"median ratio candidate/reference = ([\d.]+)", out.stdout)
    if not found:
        raise SystemExit("measure.py printed no median ratio")
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "load_avg": os.getloadavg()},
        "connections": args.connections, "count": args.count,
        "median_ratio": float(found.group(1)),
        "rounds": [{"reference_msg_s": int(a), "candidate_msg_s": int(b), "ratio": float(c)} for a, b, c in rows],
    }
    if args.cpu_rounds:
        result["cpu_per_message"] = cpu_per_message(args.cpu_rounds, args.connections, args.count)
    path = HERE / "results" / "client_rate.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"client rate: median ratio {result['median_ratio']:.3f} (goal >= 0.9); saved {path}")
    if args.cpu_rounds:
        print(f"CPU per message: median reference/candidate {result['cpu_per_message']['median_ratio']:.3f}")


if __name__ == "__main__":
    main()
