#!/usr/bin/env python3
"""How long a server keeps the connections of a client that flooded it and exited.

Issue 8 ("slow goodbyes"): 1,000 connections sending as fast as they can, then
the client process exits; how long until the server's descriptor count (summed
over its process tree, from /proc/PID/fd) is back at its baseline. Each round
starts a fresh server, floods from a child process (each connection writes
64 KiB chunks and reads a random share of what comes back, so some sockets end
with unread echoes and some without), and polls the count every 20 ms.

    python bench/bench_goodbye.py [--rounds 5] [--connections 1000] [--seconds 3] [--limit 60] [-- serve args]

Saves bench/results/goodbye.json with each round's seconds to baseline (null:
not back within --limit) and a description of the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import selectors
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def flood(port: int, connections: int, seconds: float, read_share: float) -> None:
    """The client: connect, send as fast as it can, read some, then exit without closing."""
    sel = selectors.DefaultSelector()
    chunk = b"x" * 65536
    for _ in range(connections):
        s = socket.socket()
        s.setsockopt(socket.IPPROTO_IP, 24, 1)  # IP_BIND_ADDRESS_NO_PORT
        s.bind(("127.0.0.2", 0))
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for key, ev in sel.select(0.1):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            try:
                if ev & selectors.EVENT_WRITE:
                    s.send(chunk)
                if ev & selectors.EVENT_READ and random.random() < read_share:
                    s.recv(65536)
            except OSError:
                pass
    os._exit(0)  # the kernel closes every socket, as when a load tool exits


def fd_count(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
    return total


def tree(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [pid, *map(int, out)]


def one_round(serve_args: list[str], connections: int, seconds: float, read_share: float, limit: float) -> float | None:
    c10k = str(Path(sys.executable).with_name("c10k"))
    server = subprocess.Popen([c10k, "serve", *serve_args, "-p", "0"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        port = int(re.search(r":(\d+)$", line.strip()).group(1))  # type: ignore[union-attr]
        time.sleep(1.0)  # the workers settle: the baseline
        pids = tree(server.pid)
        baseline = fd_count(pids)
        subprocess.run([sys.executable, __file__, "--flood", str(port), str(connections), str(seconds),
                        str(read_share)], check=True, timeout=seconds + 120)
        gone = time.monotonic()
        while time.monotonic() - gone < limit:
            if fd_count(pids) <= baseline:
                return time.monotonic() - gone
            time.sleep(0.02)
        return None
    finally:
        os.killpg(server.pid, 9)
        server.wait()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--flood":
        flood(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=3.0, help="how long the client floods")
    ap.add_argument("--read-share", type=float, default=0.3, help="share of readable events the client reads")
    ap.add_argument("--limit", type=float, default=60.0, help="give up on a round after this many seconds")
    ap.add_argument("serve", nargs="*", default=["epoll"], help="`c10k serve` arguments (default: epoll)")
    args = ap.parse_args()
    times = []
    for rnd in range(1, args.rounds + 1):
        t = one_round(args.serve, args.connections, args.seconds, args.read_share, args.limit)
        times.append(t)
        print(f"round {rnd}: back at baseline after {t:.2f} s" if t is not None
              else f"round {rnd}: not back at baseline within {args.limit:.0f} s", flush=True)
    out = HERE / "results" / "goodbye.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "machine": {"platform": platform.platform(), "python": platform.python_version(),
                                           "cpus": os.cpu_count(), "load_avg": os.getloadavg()},
                               "serve": args.serve, "connections": args.connections, "seconds": args.seconds,
                               "read_share": args.read_share, "seconds_to_baseline": times}, indent=1))


if __name__ == "__main__":
    main()
