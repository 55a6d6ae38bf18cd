"""The machine's limits that decide how far each architecture can go.

Read-only helpers (nothing here changes a sysctl), plus ``raise_nofile`` which
lifts this process's soft RLIMIT_NOFILE to its hard limit, as every server and
the load client do at start. Every kernel setting is read through one reader,
``sysctl_int``, under ``SYSCTL_ROOT`` (tests may point it at a made-up tree).
What the numbers mean for a run is ``c10k.capacity``'s business.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "FD_SETSIZE",
    "SYSCTL_ROOT",
    "cpus",
    "MachineLimits",
    "machine_limits",
    "sysctl_int",
    "write_sysctl",
    "loopback_tracked",
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

#: Where kernel settings are read from.
SYSCTL_ROOT = Path("/proc/sys")


def cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0))


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


def read_ints(path: str | Path) -> list[int] | None:
    """The whitespace-separated numbers of a /proc or /sys file ("max" reads as 0); None if unreadable."""
    try:
        words = Path(path).read_text().split()
        return [0 if w == "max" else int(w) for w in words] or None
    except (OSError, ValueError):
        return None


def sysctl_int(name: str, default: int) -> int:
    """A kernel setting by its sysctl name (``net.core.somaxconn``), or ``default``."""
    values = read_ints(SYSCTL_ROOT / name.replace(".", "/"))
    return values[0] if values else default


def ephemeral_port_range() -> tuple[int, int]:
    """net.ipv4.ip_local_port_range as (low, high), inclusive."""
    values = read_ints(SYSCTL_ROOT / "net/ipv4/ip_local_port_range")
    if values and len(values) == 2:
        return values[0], values[1]
    return 32768, 60999


def ephemeral_ports() -> int:
    """How many connections one source address can open to one destination."""
    low, high = ephemeral_port_range()
    return max(0, high - low + 1)


def somaxconn() -> int:
    """net.core.somaxconn: the kernel silently caps every listen backlog at it."""
    return sysctl_int("net.core.somaxconn", 4096)


def threads_max() -> int:
    """kernel.threads-max: threads the whole system may have."""
    return sysctl_int("kernel.threads-max", 0)


def pid_max() -> int:
    """kernel.pid_max: every thread takes a pid, so it caps threads too."""
    return sysctl_int("kernel.pid_max", 32768)


def _meminfo(field: str) -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def memory_available_bytes() -> int:
    """MemAvailable from /proc/meminfo, in bytes."""
    return _meminfo("MemAvailable")


def open_fd_count(pid: int | None = None) -> int:
    """Descriptors open in a process (this one by default)."""
    return len(os.listdir(f"/proc/{pid or os.getpid()}/fd"))


def _rlimit(which: int) -> int:
    soft, _ = resource.getrlimit(which)
    return 0 if soft == resource.RLIM_INFINITY else soft


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
    #: net.netfilter.nf_conntrack_max, 0 when connection tracking is not loaded
    conntrack_max: int = 0
    #: net.netfilter.nf_conntrack_count: connections tracked now
    conntrack_count: int = 0
    #: whether loopback traffic is tracked (no notrack rule exempts it)
    loopback_tracked: bool = True
    #: net.ipv4.tcp_mem: (low, pressure, high) in pages of ``page_size``
    tcp_mem: tuple[int, int, int] = (0, 0, 0)
    page_size: int = 4096
    #: fs.file-max and the descriptors allocated system-wide now (fs.file-nr)
    file_max: int = 0
    file_nr: int = 0
    #: fs.nr_open: how far RLIMIT_NOFILE may ever be raised
    nr_open: int = 0

    @property
    def threads_per_process(self) -> int:
        """The tightest thread limit."""
        return self.thread_limit()[0]

    def thread_limit(self) -> tuple[int, str]:
        """The tightest thread limit, with the reason it is the tightest."""
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


def machine_limits() -> MachineLimits:
    """Read this machine's limits (read-only)."""
    soft, hard = nofile_limits()
    pids = read_ints("/sys/fs/cgroup/pids.max")
    conntrack_max = sysctl_int("net.netfilter.nf_conntrack_max", 0)
    tcp_mem = read_ints(SYSCTL_ROOT / "net/ipv4/tcp_mem")
    file_nr = read_ints(SYSCTL_ROOT / "fs/file-nr")
    return MachineLimits(
        cpus=cpus(),
        nofile_soft=soft,
        nofile_hard=hard,
        fd_setsize=FD_SETSIZE,
        threads_max=threads_max(),
        pid_max=pid_max(),
        max_map_count=sysctl_int("vm.max_map_count", 65530),
        nproc=_rlimit(resource.RLIMIT_NPROC),
        cgroup_pids_max=pids[0] if pids else 0,
        stack_bytes=_rlimit(resource.RLIMIT_STACK) or 8 * 2**20,
        ephemeral_ports=ephemeral_ports(),
        ephemeral_range=ephemeral_port_range(),
        somaxconn=somaxconn(),
        syn_backlog=sysctl_int("net.ipv4.tcp_max_syn_backlog", 0),
        memory_total=_meminfo("MemTotal"),
        memory_available=memory_available_bytes(),
        conntrack_max=conntrack_max,
        conntrack_count=sysctl_int("net.netfilter.nf_conntrack_count", 0),
        loopback_tracked=bool(conntrack_max) and loopback_tracked(),
        tcp_mem=(tcp_mem[0], tcp_mem[1], tcp_mem[2]) if tcp_mem and len(tcp_mem) == 3 else (0, 0, 0),
        page_size=resource.getpagesize(),
        file_max=sysctl_int("fs.file-max", 0),
        file_nr=file_nr[0] if file_nr else 0,
        nr_open=sysctl_int("fs.nr_open", 0),
    )


def loopback_tracked(ruleset: str | None = None) -> bool:
    """Whether netfilter tracks loopback connections (each then takes a conntrack entry).

    It does unless rules exempt ``lo`` in both directions (``iif lo notrack`` in
    prerouting and ``oif lo notrack`` in output). ``ruleset`` is ``nft list
    ruleset``'s text (read here when None; when nft cannot tell, assume tracked).
    """
    if ruleset is None:
        try:
            ruleset = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True,
                                     timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return True
    exempt = [line for line in ruleset.splitlines() if "notrack" in line]
    inbound = any(re.search(r'\biif(name)? "?lo"?\s', line + " ") for line in exempt)
    outbound = any(re.search(r'\boif(name)? "?lo"?\s', line + " ") for line in exempt)
    return not (inbound and outbound)


def write_sysctl(name: str, value: str) -> str:
    """Set a kernel setting (root only) and return its old value; OSError when refused."""
    path = SYSCTL_ROOT / name.replace(".", "/")
    old = " ".join(path.read_text().split())
    path.write_text(f"{value}\n")
    return old
