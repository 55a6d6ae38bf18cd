"""How far each architecture can go on this machine, and what N connections need.

``machine_limits()`` reads the limits (nothing is changed); ``plan_capacity``
is pure arithmetic over them, so it can be tested with made-up machines. Both
back ``c10k doctor``.
"""

from __future__ import annotations

import math
import os
import resource
from dataclasses import dataclass, field
from pathlib import Path

from c10k import limits
from c10k.study.cases import SERVERS

__all__ = ["MachineLimits", "ArchitectureCapacity", "Capacity", "machine_limits", "plan_capacity",
           "KERNEL_BYTES_PER_SOCKET"]

#: Measured here with C programs: 100,000 loopback connections took ~1 GB of
#: kernel memory, i.e. ~5 KB per socket, and a loopback connection has two.
KERNEL_BYTES_PER_SOCKET = 5 * 1024

#: Descriptors a process keeps for itself: stdio, listener, epoll, pipes, imports.
RESERVED_FDS = 32

# User-space memory per connection, rough figures for planning only.
_USER_BYTES = {"threaded": 64 * 1024, "select": 4 * 1024, "poll": 4 * 1024, "epoll": 3 * 1024,
               "epoll-reuseport": 3 * 1024, "epoll-threads": 3 * 1024, "asyncio": 6 * 1024,
               "uvloop": 4 * 1024}


@dataclass(frozen=True)
class MachineLimits:
    """The limits that decide how many connections fit (see ``machine_limits``)."""

    cpus: int
    nofile_soft: int
    nofile_hard: int
    fd_setsize: int
    threads_max: int
    pid_max: int
    max_map_count: int
    nproc: int
    cgroup_pids_max: int
    stack_bytes: int
    ephemeral_ports: int
    ephemeral_range: tuple[int, int]
    somaxconn: int
    syn_backlog: int
    memory_total: int
    memory_available: int

    @property
    def threads_per_process(self) -> int:
        """The tightest thread limit, with the reason it is the tightest."""
        return self.thread_limit()[0]

    def thread_limit(self) -> tuple[int, str]:
        # Each thread takes a pid, counts against RLIMIT_NPROC and the cgroup,
        # and maps a stack plus a guard page (two entries of vm.max_map_count).
        candidates = [
            (self.threads_max, f"kernel.threads-max ({self.threads_max})"),
            (self.pid_max, f"kernel.pid_max ({self.pid_max})"),
            (self.max_map_count // 2, f"vm.max_map_count ({self.max_map_count}) / 2 maps per thread stack"),
        ]
        if self.nproc > 0:
            candidates.append((self.nproc, f"RLIMIT_NPROC ({self.nproc})"))
        if self.cgroup_pids_max > 0:
            candidates.append((self.cgroup_pids_max, f"cgroup pids.max ({self.cgroup_pids_max})"))
        return min(candidates)


def _read_int(path: str, default: int) -> int:
    try:
        text = Path(path).read_text().split()[0]
    except (OSError, IndexError):
        return default
    if text == "max":
        return 0
    try:
        return int(text)
    except ValueError:
        return default


def _rlimit(which: int) -> int:
    soft, _ = resource.getrlimit(which)
    return 0 if soft == resource.RLIM_INFINITY else soft


def machine_limits() -> MachineLimits:
    """Read this machine's limits (read-only)."""
    soft, hard = limits.nofile_limits()
    mem_total = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return MachineLimits(
        cpus=os.cpu_count() or 1,
        nofile_soft=soft,
        nofile_hard=hard,
        fd_setsize=limits.FD_SETSIZE,
        threads_max=limits.threads_max(),
        pid_max=limits.pid_max(),
        max_map_count=_read_int("/proc/sys/vm/max_map_count", 65530),
        nproc=_rlimit(resource.RLIMIT_NPROC),
        cgroup_pids_max=_read_int("/sys/fs/cgroup/pids.max", 0),
        stack_bytes=_rlimit(resource.RLIMIT_STACK) or 8 * 2**20,
        ephemeral_ports=limits.ephemeral_ports(),
        ephemeral_range=limits.ephemeral_port_range(),
        somaxconn=limits.somaxconn(),
        syn_backlog=_read_int("/proc/sys/net/ipv4/tcp_max_syn_backlog", 0),
        memory_total=mem_total,
        memory_available=limits.memory_available_bytes(),
    )


@dataclass(frozen=True)
class ArchitectureCapacity:
    """One architecture against N connections."""

    server: str
    max_connections: int
    can_hold: bool
    why: str


@dataclass
class Capacity:
    """What ``connections`` connections need here, and who can hold them."""

    connections: int
    limits: MachineLimits
    fds_per_process: int
    server_processes: int
    load_processes: int
    source_addresses: int
    kernel_bytes: int
    memory_ok: bool
    architectures: list[ArchitectureCapacity] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _n(v: int) -> str:
    return f"{v:,}"


def plan_capacity(connections: int, lim: MachineLimits) -> Capacity:
    """What ``connections`` concurrent loopback connections need on a machine with ``lim``.

    Args:
        connections: connections open at once.
        lim: the machine's limits (``machine_limits()``, or made up in tests).

    Returns:
        A ``Capacity``: processes and source addresses needed on each side, the
        kernel memory estimate, and for every study server how many connections
        it can hold here and why not more.
    """
    if connections < 1:
        raise ValueError("connections must be at least 1")
    per_process = max(1, lim.nofile_hard - RESERVED_FDS)
    processes = math.ceil(connections / per_process)
    sources = math.ceil(connections / max(1, lim.ephemeral_ports))
    kernel = connections * 2 * KERNEL_BYTES_PER_SOCKET
    threads, thread_why = lim.thread_limit()
    fd_why = f"one process may hold {_n(lim.nofile_hard)} descriptors (RLIMIT_NOFILE, hard)"
    cap = Capacity(connections, lim, per_process, processes, processes, sources, kernel,
                   memory_ok=lim.memory_available == 0 or kernel * 1.2 < lim.memory_available)
    for server in SERVERS:
        if server == "select":
            most = lim.fd_setsize - RESERVED_FDS // 2
            why = (f"select() cannot watch a descriptor >= FD_SETSIZE ({lim.fd_setsize}), "
                   "whatever RLIMIT_NOFILE allows")
        elif server == "threaded":
            most = min(per_process, threads - 16)
            why = fd_why if per_process <= threads - 16 else f"thread limit: {thread_why}"
            why += "; a thread per connection lives in one process"
        elif server in ("epoll", "epoll-reuseport"):
            workers = max(processes, lim.cpus)
            most = per_process * workers
            why = (f"worker processes each hold up to {_n(per_process)} connections; "
                   f"{processes} needed, so --workers {workers}")
        else:
            most = per_process
            how = {"poll": "poll() in one process", "epoll-threads": "thread workers share one process",
                   "asyncio": "one event loop in one process", "uvloop": "one event loop in one process"}
            why = f"{how[server]}: {fd_why}"
        user = _USER_BYTES.get(server, 4096) * min(connections, most)
        if lim.memory_available and kernel + user > lim.memory_available:
            cap.architectures.append(ArchitectureCapacity(
                server, most, False, f"memory: ~{(kernel + user) / 2**30:.1f} GiB needed, "
                f"{lim.memory_available / 2**30:.1f} GiB available"))
            continue
        cap.architectures.append(ArchitectureCapacity(server, most, connections <= most, why))
    if lim.somaxconn < 1024:
        cap.warnings.append(f"net.core.somaxconn is {lim.somaxconn}: listen backlogs are capped there, "
                            "bursts of connects may be dropped and retried (1 s, 3 s, ...)")
    if lim.nofile_soft < lim.nofile_hard:
        cap.warnings.append(f"the soft descriptor limit ({_n(lim.nofile_soft)}) is below the hard one; "
                            "c10k raises it at start")
    if not cap.memory_ok:
        cap.warnings.append(f"{_n(connections)} connections need ~{kernel / 2**30:.1f} GiB of kernel "
                            f"memory; {lim.memory_available / 2**30:.1f} GiB is available")
    return cap
