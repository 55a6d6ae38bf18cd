"""Hosts off loopback: a server and client hosts in network namespaces, with shaped links.

Public API::

    from c10k.topology import Topology, parse_link

    with Topology.create(clients=2, link=parse_link("delay 5ms")) as topo:
        print(topo.plan.server.address, [h.address for h in topo.plan.clients])

``plan.py`` (names, addresses) and ``link.py`` (link specs -> tc commands) are
pure; ``netns.py`` runs ``ip`` and ``tc`` (root); ``delayline.py`` carries
delay and loss in userspace where the kernel has no netem; ``clientload.py``
runs one load spread over the client hosts.
"""

from c10k.topology.link import Link, parse_link
from c10k.topology.netns import Topology, check_can_run, probe, probe_line, remove_stale, require_delay
from c10k.topology.plan import MAX_CLIENTS, Host, HostPlan, plan_hosts

__all__ = [
    "MAX_CLIENTS",
    "Host",
    "HostPlan",
    "Link",
    "Topology",
    "check_can_run",
    "parse_link",
    "plan_hosts",
    "probe",
    "probe_line",
    "remove_stale",
    "require_delay",
]
