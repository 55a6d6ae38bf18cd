"""One load run spread over client hosts: ``python -m c10k.topology.clientload SPEC.json``.

Why one ``run_load`` and not one ``c10k load`` per host: a case's summary must
be what one run would give, exactly. One run has one barrier (no message goes
out before every connection of every host is open, so the server really holds
N at once) and merges every process's raw samples into exact percentiles. So
this process enters the first client host's namespace, asks ``run_load`` for a
number of load processes that is a multiple of the hosts, and moves each forked
load process into host ``k % hosts`` before it makes a socket
(``os.register_at_fork``: the load library forks its processes in order, one
per share). Sockets belong to the namespace of the task that creates them, so
each process's connections leave from its host's address over its host's veth.

The spec (JSON): ``namespaces``, ``hosts`` (role names), ``cpu`` (or null),
``host``, ``port``, ``connections``, ``message``, ``count``, ``rate``,
``duration``, ``timeout``, ``out``. Writes ``out/summary.json`` (plus a
``client_hosts`` list) and ``out/connections.csv`` with a ``host`` column.
Exit 0 when the load was ok, 1 when not, 2 for a bad spec.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import sys
from pathlib import Path
from typing import Any

from c10k.errors import C10kError, UsageError
from c10k.load import LoadResult, plan_load, run_load, write_results
from c10k.topology.netns import enter_namespace, namespace_fd

__all__ = ["main", "processes_for", "add_host_column"]


class _Router:
    """Sends the k-th forked process into namespace ``k % len(fds)`` while active."""

    def __init__(self, fds: list[int]) -> None:
        self.fds = fds
        self.forks = 0
        self.active = False

    def before(self) -> None:
        if self.active:
            self.forks += 1

    def in_child(self) -> None:
        if self.active:
            enter_namespace(self.fds[(self.forks - 1) % len(self.fds)])


def processes_for(connections: int, hosts: int, planned: int) -> int:
    """Load processes: at least what the plan wants, a multiple of the hosts, at most one per connection."""
    return min(connections, hosts * math.ceil(max(planned, 1) / hosts))


def add_host_column(csv_path: Path, hosts: list[str]) -> None:
    """Append a ``host`` column: load process k ran on client host ``hosts[k % len(hosts)]``."""
    with csv_path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    k = rows[0].index("process")
    out = [[*rows[0], "host"]] + [[*r, hosts[int(r[k]) % len(hosts)]] for r in rows[1:]]
    with csv_path.open("w", newline="") as f:
        csv.writer(f).writerows(out)


def _client_hosts(result: LoadResult, hosts: list[str], addresses: list[str]) -> list[dict[str, Any]]:
    out = []
    for i, (name, addr) in enumerate(zip(hosts, addresses)):
        procs = [p for p in result.summary.get("processes", []) if p["index"] % len(hosts) == i]
        out.append({"host": name, "address": addr, "processes": [p["index"] for p in procs],
                    "connections": sum(p["connections"] for p in procs),
                    "established": sum(p["established"] for p in procs),
                    "echoed": sum(p["echoed"] for p in procs)})
    return out


def run(spec: dict[str, Any]) -> int:
    namespaces: list[str] = spec["namespaces"]
    connections = int(spec["connections"])
    hosts_used = min(len(namespaces), connections)
    fds = [namespace_fd(ns) for ns in namespaces[:hosts_used]]
    enter_namespace(fds[0])
    if spec.get("cpu") is not None:
        os.sched_setaffinity(0, {int(spec["cpu"])})
    rate, duration = float(spec.get("rate") or 0), float(spec.get("duration") or 0)
    samples = int(rate * duration) if rate else connections * int(spec["count"])
    planned = plan_load(spec["host"], int(spec["port"]), connections, samples=samples).processes
    router = _Router(fds)
    os.register_at_fork(before=router.before, after_in_child=router.in_child)
    router.active = True
    try:
        result = run_load(spec["host"], int(spec["port"]), message=spec["message"].encode(),
                          count=int(spec["count"]), connections=connections,
                          processes=processes_for(connections, hosts_used, planned),
                          timeout=float(spec.get("timeout", 10.0)), rate=rate, duration=duration,
                          settle=float(spec.get("settle") or 0))
    finally:
        router.active = False
    hosts = spec["hosts"][:hosts_used]
    result.summary["client_hosts"] = _client_hosts(result, hosts, spec["addresses"][:hosts_used])
    _, csv_path = write_results(result, spec["out"])
    add_host_column(csv_path, hosts)
    s = result.summary
    print(f"{s['connections']['completed']}/{connections} connections completed over {hosts_used} client "
          f"host(s), {s['messages']['echoed']} echoes, {s['messages_per_s']:.0f} messages/s", flush=True)
    return 0 if result.ok else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # The runner stops a load with SIGINT; the load library turns it into a clean stop.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if len(argv) != 1:
            raise UsageError("usage: python -m c10k.topology.clientload SPEC.json")
        try:
            spec = json.loads(Path(argv[0]).read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read the spec {argv[0]}: {exc}") from None
        return run(spec)
    except C10kError as exc:
        print(f"c10k clientload: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print("c10k clientload: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
