#!/usr/bin/env python3
"""Load-client message rate with --processes 1, against the C reference client, side by side.

Runs ../shared/anchors/measure.py client-rate (the server is the C reference
echo_epoll on CPU 0; the C client and `c10k load --processes 1` alternate on
CPU 1, round by round) and saves the rounds and the median ratio with a
description of the machine in bench/results/client_rate.json. Issue 3's goal:
median ratio >= 0.9.

    python bench/bench_client_rate.py [--rounds 5] [--connections 100] [--count 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ANCHORS = Path(os.environ.get("C10K_ANCHORS", ROOT.parent / "shared" / "anchors"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=100)
    ap.add_argument("--count", type=int, default=5000, help="messages per connection")
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
    path = HERE / "results" / "client_rate.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"client rate: median ratio {result['median_ratio']:.3f} (goal >= 0.9); saved {path}")


if __name__ == "__main__":
    main()
