"""The machine's limits that decide how far each architecture can go.

Read-only helpers (nothing here changes a sysctl), plus ``raise_nofile`` which
lifts this process's soft RLIMIT_NOFILE to its hard limit, as every server and
the load client do at start.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

__all__ = [
    "FD_SETSIZE",
    "raise_nofile",
    "nofile_limits",
    "ephemeral_port_range",
    "ephemeral_ports",
    "somaxconn",
    "threads_max",
    "pid_max",
    "memory_available_bytes",
    "open_fd_count",
]

#: glibc's fd_set holds descriptors 0..1023; select() cannot watch one above.
FD_SETSIZE = 1024


def nofile_limits() -> tuple[int, int]:
    """(soft, hard) RLIMIT_NOFILE of this process; RLIM_INFINITY stays as is."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def raise_nofile() -> int:
    """Raise the soft descriptor limit to the hard limit and return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def _read_int(path: str, default: int) -> int:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def ephemeral_port_range() -> tuple[int, int]:
    """net.ipv4.ip_local_port_range as (low, high), inclusive."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def ephemeral_ports() -> int:
    """How many connections one source address can open to one destination."""
    low, high = ephemeral_port_range()
    return high - low + 1


def somaxconn() -> int:
    """net.core.somaxconn: the kernel silently caps every listen backlog at it."""
    return _read_int("/proc/sys/net/core/somaxconn", 4096)


def threads_max() -> int:
    """kernel.threads-max: threads the whole system may have."""
    return _read_int("/proc/sys/kernel/threads-max", 0)


def pid_max() -> int:
    """kernel.pid_max: every thread takes a pid, so it caps threads too."""
    return _read_int("/proc/sys/kernel/pid_max", 32768)


def memory_available_bytes() -> int:
    """MemAvailable from /proc/meminfo, in bytes."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def open_fd_count(pid: int | None = None) -> int:
    """Descriptors open in a process (this one by default)."""
    return len(os.listdir(f"/proc/{pid or os.getpid()}/fd"))
