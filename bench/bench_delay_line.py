#!/usr/bin/env python3
"""What the userspace delay line costs: echoes/s through it against veth pairs on a bridge, and its CPU per frame.

Needs root. Per round, for each carrier (veth pairs on a bridge; the line
pinned to the clients' CPU 1; the line pinned to the server's CPU 0), makes
one server host and one client host, runs ``c10k serve epoll`` in the server
host pinned to CPU 0 and ``c10k load`` in the client host pinned to CPU 1 (a
closed loop, no added delay), and reads the line's frame counters and CPU time
(user + system: the hosts' kernels do their receive work on its writes), and
the server's CPU time (its whole life, so a little over the load's). Saves
bench/results/delay_line.json.

    sudo python bench/bench_delay_line.py [--rounds 3] [--connections 1000] [--count 200]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from c10k.topology import Topology
from c10k.topology.netns import enter_namespace

HERE = Path(__file__).resolve().parent
PORT = 7000
CARRIERS = {"veth": ("netem", None), "line on CPU 1": ("userspace", 1), "line on CPU 0": ("userspace", 0)}


def wait_listening(namespace: str, address: str, timeout_s: float = 15.0) -> None:
    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    deadline = time.monotonic() + timeout_s
    try:
        enter_namespace(namespace)
        while True:
            try:
                socket.create_connection((address, PORT), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the server did not start") from None
                time.sleep(0.05)
    finally:
        enter_namespace(home)
        os.close(home)


def one(carrier: str, cpu: int | None, connections: int, count: int) -> dict:
    os.environ["C10K_DELAY"] = carrier
    py = sys.executable
    with Topology.create(1, line_cpu=cpu) as topo, tempfile.TemporaryDirectory() as out:
        server, client = topo.plan.server, topo.plan.clients[0]
        serve = subprocess.Popen(["ip", "netns", "exec", server.namespace, "taskset", "-c", "0", py, "-m", "c10k",
                                  "serve", "epoll", "--host", server.address, "-p", str(PORT), "--workers", "1"],
                                 stdout=subprocess.DEVNULL)
        try:
            wait_listening(client.namespace, server.address)
            before = topo.line.stats() if topo.line else None
            t0 = time.monotonic()
            subprocess.run(["ip", "netns", "exec", client.namespace, "taskset", "-c", "1", py, "-m", "c10k", "load",
                            "--host", server.address, "-p", str(PORT), "-c", str(connections), "-n", str(count),
                            "--out", out, "-q"], check=True, timeout=600)
            wall = time.monotonic() - t0
            after = topo.line.stats() if topo.line else None
            summary = json.loads((Path(out) / "summary.json").read_text())
        finally:
            serve.terminate()
            # ip netns exec and taskset both exec: the pid is the server's, and
            # wait4 gives its CPU time (its worker processes' included)
            _, _, usage = os.wait4(serve.pid, 0)
            serve.returncode = 0
    row = {"messages_per_s": summary["messages_per_s"], "p99_us": summary["latency_us"]["p99"], "wall_s": wall,
           "server_cpu_share": (usage.ru_utime + usage.ru_stime) / wall}
    if before and after:
        frames = after["forwarded"] - before["forwarded"]
        cpu_ns = after["cpu_ns"] - before["cpu_ns"]
        row.update(frames=frames, dropped=after["dropped"] - before["dropped"],
                   frames_per_message=frames / (connections * count), line_cpu_share=cpu_ns / 1e9 / wall,
                   line_us_per_frame=cpu_ns / 1e3 / max(frames, 1), frames_per_s=frames / wall)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--count", type=int, default=200)
    args = ap.parse_args()
    rounds: dict[str, list[dict]] = {name: [] for name in CARRIERS}
    for r in range(args.rounds):
        for name, (carrier, cpu) in CARRIERS.items():
            row = one(carrier, cpu, args.connections, args.count)
            rounds[name].append(row)
            print(f"round {r + 1} {name:14} " + " ".join(f"{k}={v:,.3g}" for k, v in row.items()), flush=True)
    medians = {name: {k: statistics.median(row[k] for row in rows) for k in rows[0]} for name, rows in rounds.items()}
    for name, m in medians.items():
        print(f"median {name:14} " + " ".join(f"{k}={v:,.3g}" for k, v in m.items()))
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "delay_line.json").write_text(json.dumps(
        {"args": vars(args), "machine": platform.uname()._asdict(), "cpus": os.cpu_count(),
         "medians": medians, "rounds": rounds}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
