"""Who can hold N connections here: the study's architectures against this machine.

``plan_capacity`` is pure arithmetic over ``MachineLimits`` (read by
``c10k.limits.machine_limits``), built on ``c10k.capacity``, the one home of the
formulas that ``c10k load``, the study runner and the epoll server also use;
so ``c10k doctor`` gives the numbers the tools that act will use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from c10k import capacity
from c10k.limits import MachineLimits, machine_limits
from c10k.servers.base import ServerConfig
from c10k.study.cases import SERVERS

__all__ = ["MachineLimits", "ArchitectureCapacity", "Capacity", "machine_limits", "plan_capacity",
           "DEFAULT_MAX_WORKERS", "ONE_PROCESS"]

#: ``c10k serve epoll --max-workers`` default (its one home is ``ServerConfig``).
DEFAULT_MAX_WORKERS = ServerConfig.max_workers

#: Memory is said to fit when the estimate, with this margin, is under what is available.
MEMORY_MARGIN = 1.2

#: The study's architectures that hold every connection in one process (besides
#: threaded, whose threads can bind first), and how, in words.
ONE_PROCESS = {"poll": "poll() in one process", "epoll-threads": "thread workers share one process",
               "asyncio": "one event loop in one process", "uvloop": "one event loop in one process",
               "gevent": "one gevent hub in one process", "trio": "one trio run loop in one process"}

# User-space memory per connection, rough figures for planning only.
_USER_BYTES = {"threaded": 64 * 1024, "select": 4 * 1024, "poll": 4 * 1024, "epoll": 3 * 1024,
               "epoll-reuseport": 3 * 1024, "epoll-threads": 3 * 1024, "asyncio": 6 * 1024,
               "uvloop": 4 * 1024,
               "gevent": 12 * 1024, "trio": 8 * 1024}


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
    memory_needed: int = 0
    architectures: list[ArchitectureCapacity] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _n(v: int) -> str:
    return f"{v:,}"


def plan_capacity(connections: int, lim: MachineLimits, *, max_workers: int = DEFAULT_MAX_WORKERS) -> Capacity:
    """What ``connections`` concurrent loopback connections need on a machine with ``lim``.

    Args:
        connections: connections open at once.
        lim: the machine's limits (``machine_limits()``, or made up in tests).
        max_workers: the epoll server's ``--max-workers``.

    Returns:
        A ``Capacity``: processes and source addresses needed on each side (the
        same numbers ``c10k load`` and the study runner use), the kernel memory
        estimate, and for every study server how many connections it can hold
        here and why not more.
    """
    if connections < 1:
        raise ValueError("connections must be at least 1")
    per_process = capacity.connections_per_process(lim.nofile_hard)
    workers = capacity.server_workers(connections, lim.nofile_hard, lim.cpus)
    load_processes = capacity.load_processes(connections, lim.nofile_hard, lim.cpus)
    sources = capacity.source_addresses_needed(connections, lim.ephemeral_ports)
    kernel = capacity.kernel_bytes(connections)
    needed = int(kernel * MEMORY_MARGIN)
    threads, thread_why = lim.thread_limit()
    fd_why = f"one process may hold {_n(lim.nofile_hard)} descriptors (RLIMIT_NOFILE, hard)"
    cap = Capacity(connections, lim, per_process, workers, load_processes, sources, kernel,
                   memory_ok=lim.memory_available == 0 or needed < lim.memory_available,
                   memory_needed=needed)
    for server in SERVERS:
        if server == "select":
            most = capacity.select_connections(lim.fd_setsize)
            why = (f"select() cannot watch a descriptor >= FD_SETSIZE ({lim.fd_setsize}), "
                   "whatever RLIMIT_NOFILE allows")
        elif server == "threaded":
            most = min(per_process, threads - 16)
            why = fd_why if per_process <= threads - 16 else f"thread limit: {thread_why}"
            why += "; a thread per connection lives in one process"
        elif server in ("epoll", "uring"):  # uring runs in epoll's hand-off pool
            most = per_process * max_workers
            why = (f"worker processes each hold up to {_n(per_process)} connections; {workers} to start with"
                   f" (--workers {workers}), at most {max_workers} (--max-workers)")
        elif server == "epoll-reuseport":
            spread = capacity.reuseport_workers(connections, lim.nofile_hard, lim.cpus)
            most = per_process * max(spread, max_workers)
            why = (f"--workers N processes each hold up to {_n(per_process)} connections (the study starts "
                   f"{spread}: the kernel spreads connections unevenly); they are not added while running")
        else:
            most = per_process
            why = f"{ONE_PROCESS[server]}: {fd_why}"
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
        cap.warnings.append(f"{_n(connections)} connections need ~{needed / 2**30:.1f} GiB of kernel "
                            f"memory (with a {MEMORY_MARGIN:g}x margin); {lim.memory_available / 2**30:.1f} "
                            "GiB is available")
    return cap
