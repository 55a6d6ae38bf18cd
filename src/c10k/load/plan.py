"""Before a single connect: how many processes, which source addresses, will it fit?

``plan_load`` checks the machine's limits (descriptors per process, ephemeral
ports per source address, memory) and either returns a plan that says what the
run will do, or raises ``C10kError`` with a one-line reason why it cannot.
"""

from __future__ import annotations

import ipaddress
import math
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

from c10k import capacity, limits
from c10k.errors import C10kError, UsageError
from c10k.limits import ephemeral_ports, memory_available_bytes, raise_nofile, somaxconn
from c10k.text import host_port, plural, unix_address

__all__ = ["LoadPlan", "ProcessShare", "plan_load", "resolve", "plan_source_addresses"]


@dataclass(frozen=True)
class ProcessShare:
    """Connections ``first .. first + connections - 1`` run in process ``index``."""

    index: int
    first: int
    connections: int


@dataclass
class LoadPlan:
    """What a run will do; ``describe()`` says it in one line."""

    host: str
    port: int
    family: int
    address: tuple | str  # a sockaddr, or a unix socket's path
    connections: int
    processes: int
    shares: list[ProcessShare]
    sources: list[str]
    nofile: int
    ports_per_source: int
    memory_bytes: int
    memory_available: int
    notes: list[str] = field(default_factory=list)

    @property
    def target(self) -> str:
        """``HOST:PORT`` (``[::1]:7000``) or ``unix:/path.sock``."""
        if self.family == socket.AF_UNIX:
            return unix_address(self.address)  # type: ignore[arg-type]
        return host_port(self.address[0], self.port)

    def describe(self) -> str:
        per = math.ceil(self.connections / self.processes)
        src = "kernel-chosen source address"
        if self.family == socket.AF_UNIX:
            src = "a unix socket (no ports or TCP limits)"
        elif self.sources:
            src = (f"source {self.sources[0]}" if len(self.sources) == 1
                   else f"{len(self.sources)} source addresses {self.sources[0]}..{self.sources[-1]}")
        text = (f"plan: {plural(self.connections, 'connection')} to {self.target} "
                f"in {plural(self.processes, 'process', 'processes')} (<= {per:,} each, RLIMIT_NOFILE "
                f"{self.nofile:,}), {src}, "
                f"~{self.memory_bytes / 2**20:.0f} MiB of {self.memory_available / 2**20:.0f} MiB available")
        return "; ".join([text, *self.notes])

    def as_dict(self) -> dict[str, object]:
        return {
            "processes": self.processes, "sources": self.sources, "nofile": self.nofile,
            "ports_per_source": self.ports_per_source, "memory_bytes": self.memory_bytes,
            "memory_available": self.memory_available, "notes": self.notes,
            "shares": [[s.first, s.connections] for s in self.shares],
        }


def resolve(host: str, port: int) -> tuple[int, tuple]:
    """(family, sockaddr) of ``host``; UsageError when it does not resolve.

    IPv4 is preferred, as the servers listen on it by default. A name with
    several addresses (``localhost`` is 127.0.0.1 and ::1) gets the first that
    accepts a connection, so a server listening only on ::1 is still found: one
    probe connection, closed at once (the server counts it as accepted).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise UsageError(f"unknown host {host!r}: {getattr(exc, 'strerror', None) or exc}") from None
    infos.sort(key=lambda i: i[0] != socket.AF_INET)
    candidates: list[tuple[int, tuple]] = list(dict.fromkeys((int(f), tuple(a)) for f, _, _, _, a in infos))
    if host.lower().rstrip(".") == "localhost" and socket.has_ipv6:
        # RFC 6761: localhost is the loopback, both families, whatever /etc/hosts lists.
        loopbacks: list[tuple[int, tuple]] = [(socket.AF_INET, ("127.0.0.1", port)),
                                              (socket.AF_INET6, ("::1", port, 0, 0))]
        candidates += [c for c in loopbacks if all(c[1][0] != known[1][0] for known in candidates)]
    if len(candidates) > 1:
        for family, sockaddr in candidates:
            if _accepts(family, sockaddr):
                return family, sockaddr
    return candidates[0]


def _accepts(family: int, sockaddr: tuple) -> bool:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(2.0)
        try:
            s.connect(sockaddr)
        except OSError:
            return False
    return True


def _check_kernel(connections: int, message_size: int, loopback: bool, tune: bool) -> list[str]:
    """Refuse (or, with ``tune``, raise) kernel limits that would stop the run."""
    found = capacity.kernel_limits(connections, limits.machine_limits(), message_size=message_size,
                                   loopback=loopback)
    notes = []
    if tune and any(k.status != "ok" for k in found):
        try:
            notes = [f"tuned {change}" for change in capacity.tune(found, limits.write_sysctl)]
        except OSError as exc:
            raise C10kError(f"--tune: cannot change kernel settings ({exc.strerror}); run as root") from None
        found = capacity.kernel_limits(connections, limits.machine_limits(), message_size=message_size,
                                       loopback=loopback)
    # The port range has its own, more precise refusal in plan_source_addresses.
    stops = [k for k in capacity.blocking(found) if k.name != "net.ipv4.ip_local_port_range"]
    if stops:
        raise C10kError("; ".join(f"{k.name} is {k.value} but the run needs {k.needed} ({k.why})"
                                  + (f": {k.fix}" if k.fix else "") for k in stops)
                        + ("" if tune else "; or run with --tune as root"))
    return notes


def _is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def plan_source_addresses(address: str, family: int, connections: int, explicit: Sequence[str] = (),
                          ports: int | None = None) -> list[str]:
    """Source addresses enough for ``connections`` toward one destination.

    Explicit addresses are checked and kept; otherwise none are needed while one
    address's ephemeral ports suffice, and beyond that a loopback target gets
    127.0.0.2, 127.0.0.3, ... (all of 127/8 is loopback on Linux). A remote target
    needs ``--source-ip``.
    """
    ports = ephemeral_ports() if ports is None else ports
    usable = capacity.ports_per_source(ports, explicit=bool(explicit))
    if explicit:
        for ip in explicit:
            try:
                ver = ipaddress.ip_address(ip).version
            except ValueError:
                raise UsageError(f"--source-ip {ip!r} is not an IP address") from None
            if (ver == 4) != (family == socket.AF_INET):
                raise UsageError(f"--source-ip {ip} is not of the target's address family")
        if connections > usable * len(explicit):
            needed = capacity.source_addresses_needed(connections, ports, explicit=True)
            raise C10kError(
                f"{connections} connections need {needed} source addresses "
                f"(~{usable} ports each toward one destination) but --source-ip gives {len(explicit)}")
        return list(explicit)
    needed = capacity.source_addresses_needed(connections, ports)
    if needed == 1:
        return []
    if family != socket.AF_INET or not _is_loopback(address):
        raise C10kError(
            f"{connections} connections need {needed} source addresses (~{usable} ephemeral ports each "
            f"toward {address}); give them with --source-ip")
    base = int(ipaddress.IPv4Address("127.0.0.2"))
    return [str(ipaddress.IPv4Address(base + k)) for k in range(needed)]


def plan_load(host: str, port: int, connections: int, *, processes: int | None = None,
              source_ips: Sequence[str] = (), samples: int = 0, cpus: int | None = None,
              message_size: int = 15, in_flight: int = 1, tune: bool = False,
              sample_budget: int | None = None, unix: str = "") -> LoadPlan:
    """Check the limits for a run and decide processes and source addresses.

    Args:
        host, port: the echo server.
        connections: how many connections, all open at once.
        processes: load processes; None picks enough to stay well under
            RLIMIT_NOFILE, and at least one per CPU for large runs.
        source_ips: explicit source addresses (required past one address's ports
            toward a remote target).
        samples: how many round trips the run makes (for the memory estimate).
        sample_budget: bytes of samples a process keeps raw (None: all of them).
        message_size: bytes per message (for the memory estimate).
        in_flight: messages a connection may have outstanding (1 in a closed loop).
        tune: raise kernel limits that would stop the run (root only); each
            change is listed in the plan's notes.
        unix: a unix-domain socket path to connect to instead of host and port:
            no source addresses, ephemeral ports or TCP kernel limits apply.

    The numbers are taken as checked (``LoadSettings`` checks each once).

    Raises:
        UsageError: the host does not resolve.
        C10kError: the machine cannot do it (descriptors, ports or memory).
    """
    family, address = (socket.AF_UNIX, unix) if unix else resolve(host, port)
    nofile = raise_nofile()
    needed = capacity.processes_needed(connections, nofile)
    cpus = cpus or limits.cpus()
    if processes is None:
        processes = capacity.load_processes(connections, nofile, cpus)
    elif math.ceil(connections / processes) > capacity.connections_per_process(nofile):
        raise C10kError(
            f"{math.ceil(connections / processes)} connections per process exceed RLIMIT_NOFILE {nofile}; "
            f"use --processes {needed} or more")
    ports = ephemeral_ports()
    sources = [] if unix else plan_source_addresses(address[0], family, connections, source_ips, ports)
    loopback = bool(unix) or _is_loopback(address[0])
    memory = capacity.load_memory_bytes(connections, processes, message_size=message_size, samples=samples,
                                        in_flight=in_flight, loopback=loopback, sample_budget=sample_budget)
    available = memory_available_bytes()
    if available and memory > available * 0.9:
        raise C10kError(
            f"the run needs ~{memory / 2**30:.1f} GiB (sockets, messages and samples) but only "
            f"{available / 2**30:.1f} GiB is available; use fewer connections, messages or a smaller --size")
    shares = []
    first = 0
    for k in range(processes):
        n = connections // processes + (1 if k < connections % processes else 0)
        shares.append(ProcessShare(k, first, n))
        first += n
    notes = [] if unix else _check_kernel(connections, message_size, loopback, tune)
    backlog = somaxconn()
    if connections > backlog:
        notes.append(f"connects are capped in flight because listen backlogs stop at somaxconn {backlog}")
    return LoadPlan(host=host, port=port, family=family, address=address, connections=connections,
                    processes=processes, shares=shares, sources=sources, nofile=nofile,
                    ports_per_source=ports, memory_bytes=memory, memory_available=available, notes=notes)
