"""Names and addresses of a run's hosts: pure, so they can be checked without root.

Every namespace and root-side link a run makes is named ``c10k<RUN>-<role>``,
with RUN six hex digits drawn per run: ``c10ka1b2c3-br`` (the bridge),
``c10ka1b2c3-s`` / ``c10ka1b2c3-h1`` (root ends of the veth pairs; interface
names hold at most 15 bytes), ``c10ka1b2c3-server`` / ``c10ka1b2c3-client1``
(the namespaces). The prefix finds a killed run's leftovers (``run_id_of``);
the run id tells them apart from a live run's.

Addresses come from one private /24 (``SUBNET``) that exists only inside the
run's namespaces: the bridge has no address and is joined to no physical
device, so no packet of a run leaves the machine, and two runs at once do not
see each other (each has its own bridge).
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from dataclasses import dataclass

__all__ = ["PREFIX", "SUBNET", "MAX_CLIENTS", "Host", "HostPlan", "plan_hosts", "new_run_id", "run_id_of"]

PREFIX = "c10k"
SUBNET = ipaddress.IPv4Network("10.210.0.0/24")
#: client host k (1-based) gets SUBNET's host number CLIENT_BASE + k
CLIENT_BASE = 10
MAX_CLIENTS = 64
#: Linux interface names: 15 bytes plus the terminating NUL.
IFNAMSIZ = 15

_NAME = re.compile(rf"^{PREFIX}([0-9a-f]{{6}})-")


def new_run_id() -> str:
    """Six random hex digits: unique enough between runs on one machine."""
    return secrets.token_hex(3)


def run_id_of(name: str) -> str | None:
    """The run id in one of our names, or None when the name is not ours."""
    m = _NAME.match(name)
    return m[1] if m else None


@dataclass(frozen=True)
class Host:
    """One host of a run: its namespace, the root end of its veth pair, its address."""

    role: str  # "server" or "client1", "client2", ...
    namespace: str
    veth: str  # root-side end, on the bridge; the namespace's end is "eth0"
    address: str

    @property
    def interface(self) -> str:
        return "eth0"


@dataclass(frozen=True)
class HostPlan:
    """A run's bridge, server host and client hosts."""

    run_id: str
    bridge: str
    server: Host
    clients: tuple[Host, ...]
    prefix_len: int = SUBNET.prefixlen

    @property
    def hosts(self) -> tuple[Host, ...]:
        return (self.server, *self.clients)

    @property
    def namespaces(self) -> tuple[str, ...]:
        return tuple(h.namespace for h in self.hosts)

    @property
    def links(self) -> tuple[str, ...]:
        """Root-side links, the bridge last (veths come off it before it goes)."""
        return (*(h.veth for h in self.hosts), self.bridge)


def plan_hosts(clients: int, run_id: str | None = None) -> HostPlan:
    """Names and addresses for a server and ``clients`` client hosts.

    Raises:
        ValueError: ``clients`` outside 1..MAX_CLIENTS, or a malformed run id.
    """
    if not 1 <= clients <= MAX_CLIENTS:
        raise ValueError(f"client hosts must be 1 to {MAX_CLIENTS}, not {clients}")
    run_id = run_id or new_run_id()
    base = f"{PREFIX}{run_id}"
    if run_id_of(base + "-") != run_id:
        raise ValueError(f"run id must be six hex digits, not {run_id!r}")
    net = list(SUBNET.hosts())
    server = Host("server", f"{base}-server", f"{base}-s", str(net[0]))
    hosts = tuple(Host(f"client{k}", f"{base}-client{k}", f"{base}-h{k}", str(net[CLIENT_BASE + k - 1]))
                  for k in range(1, clients + 1))
    plan = HostPlan(run_id, f"{base}-br", server, hosts)
    assert all(len(name) <= IFNAMSIZ for name in plan.links)
    return plan
