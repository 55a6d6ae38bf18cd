"""Run study cases over network namespaces instead of loopback (``--topology netns``).

``NetnsCommands`` is the runner's ``Commands`` with two changes: the server
starts inside the server host's namespace, pinned to CPU 0 (``ip netns exec NS
taskset -c 0 ...``; both exec, so the runner's pid is the server's and the
sampler still sees its process tree), and the load is one
``c10k.topology.clientload`` run spread over the client hosts, pinned to CPU 1.
On two cores the server and the clients then stop sharing a CPU, as on
separate machines. A case's link (its own, else ``--link``) is put on the
client hosts' veths (or handed to the userspace delay line, which then runs
pinned to the clients' CPU, so that the server's CPU stays the server's)
right before its server starts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from c10k.study.cases import Case
from c10k.study.runner import Commands
from c10k.topology import Link, Topology, parse_link

__all__ = ["NetnsCommands", "netns_commands"]


def _cpus() -> tuple[int | None, int | None]:
    """(server CPU, client CPU): 0 and 1 on a machine with two or more, else no pinning."""
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)


@dataclass
class NetnsCommands(Commands):
    """Commands for a case on a live ``Topology`` (see the module docstring)."""

    topo: Topology | None = None
    default_link: Link = field(default_factory=Link)
    server_cpu: int | None = None
    client_cpu: int | None = None

    def _topo(self) -> Topology:
        assert self.topo is not None, "NetnsCommands needs a live Topology"
        return self.topo

    def link_for(self, case: Case) -> Link:
        return parse_link(case.link) if case.link is not None else self.default_link

    def server(self, case: Case, stats_file: Path) -> list[str]:
        # Built right before the case's server starts: the moment to set its link.
        topo = self._topo()
        topo.set_link(self.link_for(case))
        pin = ["taskset", "-c", str(self.server_cpu)] if self.server_cpu is not None else []
        return ["ip", "netns", "exec", topo.plan.server.namespace, *pin, *super().server(case, stats_file)]

    def load(self, case: Case, host: str, port: int, out: Path) -> list[str]:
        clients = self._topo().plan.clients
        spec: dict[str, Any] = {
            "namespaces": [h.namespace for h in clients], "hosts": [h.role for h in clients],
            "addresses": [h.address for h in clients], "cpu": self.client_cpu,
            "host": host, "port": port, "connections": case.connections, "message": case.message,
            "count": case.messages, "out": str(out),
        }
        if case.fixed_rate:
            spec.update(rate=case.rate, duration=case.duration_s)
        if case.settle_s:
            spec["settle"] = case.settle_s
        path = out / "clients.json"
        path.write_text(json.dumps(spec, indent=1) + "\n")
        return [self.python, "-m", "c10k.topology.clientload", str(path)]

    def _rtt_s(self, case: Case) -> float:
        return self.link_for(case).rtt_ms / 1000.0

    def connect_deadline_s(self, case: Case) -> float:
        # At most ~1024 connects in flight, each a round trip (plus the SYN-ACK's).
        return super().connect_deadline_s(case) + self._rtt_s(case) * (case.connections / 1024 + 1) * 2

    def timeout_s(self, case: Case) -> float:
        # A closed loop cannot beat one round trip per message per connection.
        extra = self._rtt_s(case) * ((case.messages if not case.fixed_rate else 0) * 2 + case.connections / 512)
        return super().timeout_s(case) + extra

    def topology(self) -> dict[str, Any]:
        data = self._topo().to_json()
        data["link"] = self.default_link.to_json()
        data.update(server_cpu=self.server_cpu, client_cpu=self.client_cpu,
                    removed_stale=self._topo().removed_stale)
        return data


@contextmanager
def netns_commands(clients: int = 2, link: Link | None = None, any_delay: bool = False,
                   **kw: Any) -> Iterator[NetnsCommands]:
    """A server host and ``clients`` client hosts for the length of the block; all removed after it.

    ``any_delay``: some case will ask for a delay or loss, so the run needs
    netem or, without it, the userspace delay line (pinned to the clients' CPU).

    Raises:
        UsageError: the machine cannot do it (not root, no iproute2, no netem for a delay).
        C10kError: a command failed.
    """
    link = link or Link()
    server_cpu, client_cpu = _cpus()
    with Topology.create(clients, link, any_delay=any_delay, line_cpu=client_cpu) as topo:
        cmds = NetnsCommands(host=topo.plan.server.address, topo=topo, default_link=link,
                             server_cpu=server_cpu, client_cpu=client_cpu, **kw)
        yield cmds
