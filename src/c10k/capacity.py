"""The one place that turns this machine's limits into plans.

Every part of c10k that decides how many processes, source addresses or bytes
a number of connections needs asks this module, so the tool that advises
(``c10k doctor``) gives the numbers the tools that act (``c10k load``, the
study runner, the epoll server's worker growth) will use. Everything here is
pure arithmetic over numbers read by ``c10k.limits``: tests pin one answer per
question with made-up machines.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from c10k.limits import MachineLimits

__all__ = [
    "KernelLimit",
    "kernel_limits",
    "blocking",
    "tune",
    "KERNEL_BYTES_PER_SOCKET",
    "RESERVED_FDS",
    "PORT_HEADROOM",
    "EXPLICIT_PORT_HEADROOM",
    "LARGE_RUN",
    "MAX_SERVER_WORKERS",
    "connections_per_process",
    "select_connections",
    "thread_worker_share",
    "processes_needed",
    "load_processes",
    "ports_per_source",
    "source_addresses_needed",
    "server_workers",
    "reuseport_workers",
    "REUSEPORT_SPREAD",
    "kernel_bytes",
    "load_memory_bytes",
]

#: Measured here with C programs: 100,000 loopback connections took ~1 GB of
#: kernel memory, i.e. ~5 KB per socket (a loopback connection has two).
KERNEL_BYTES_PER_SOCKET = 5 * 1024

#: Descriptors a process keeps for itself: std streams, listener, epoll, pipes
#: to its parent or workers, result files, the reserve descriptor for EMFILE,
#: modules being imported. The rest of RLIMIT_NOFILE is for connections.
RESERVED_FDS = 64

#: Use at most this share of a source address's ephemeral ports toward one
#: destination. Why 0.4: connect() picks a port by scanning even ports first
#: (odd ones are left for bind()), so once about half the range is taken toward
#: one destination each connect() walks thousands of used ports in
#: __inet_hash_connect and the ramp turns quadratic (measured here: ~150
#: connects/s at 20k per address). Loopback source addresses cost nothing, so
#: use more of them instead.
PORT_HEADROOM = 0.4
#: When the user names the source addresses, use up to this share: connects
#: slow down past half the range, but they work.
EXPLICIT_PORT_HEADROOM = 0.9

#: Worker processes or threads an epoll server may start over its life, replacements
#: included (the size of its shared table of per-worker counters).
MAX_SERVER_WORKERS = 1024

#: From this many connections on, at least one load process per CPU.
LARGE_RUN = 2000

#: A load process's user space before any connection: an interpreter with numpy
#: imported and the per-descriptor lists sized by RLIMIT_NOFILE. The message and
#: per-connection figures below were fitted to peak RSS summed over a run's
#: processes, measured here (``tests/test_capacity.py`` keeps the fit within 2x):
#: 1 x 15 B: 32 MiB; 1 x 100 MB: 479 MiB; 10 x 10 MB: 168 MiB; 1,000 x 100 kB:
#: 69 MiB; 3,000 x 15 B: 80 MiB; 5,000 x 15 B x 100 messages: 88 MiB.
LOAD_PROCESS_BYTES = 40 * 2**20
#: Copies of the message a load process holds: the message, the receive buffer,
#: a received chunk, the slice of a send still in progress.
LOAD_MESSAGE_COPIES_PER_PROCESS = 4
#: A connection with a message in flight assembles a partial echo in a buffer of
#: the message's size; on average about half of them are partial at the peak.
LOAD_MESSAGE_COPIES_PER_CONNECTION = 0.5
#: Per connection: socket object, per-connection arrays, the result row.
LOAD_BYTES_PER_CONNECTION = 2 * 1024
#: Per kept round-trip sample: 8 bytes in the closed loop's slots, 12 in the open
#: loop's buffers (with its connection); sorted and summarized in place, and the
#: parent reads them from a file, a few at a time (load/samples.py).
LOAD_BYTES_PER_SAMPLE = 12


def connections_per_process(nofile: int) -> int:
    """Connections one process may hold under RLIMIT_NOFILE ``nofile``."""
    return max(1, nofile - RESERVED_FDS)


def select_connections(fd_setsize: int) -> int:
    """Connections a select() server can watch: descriptors below FD_SETSIZE, less its own
    (std streams, listener, wake-up pipe, the reserve descriptor for EMFILE: 16 is ample)."""
    return max(1, fd_setsize - 16)


def thread_worker_share(nofile: int, workers: int) -> int:
    """Connections each of ``workers`` threads in one process may hold: they share one
    descriptor table, and each worker keeps an epoll descriptor and a hand-off channel."""
    workers = max(1, workers)
    return max(1, (connections_per_process(nofile) - 4 * workers) // workers)


def processes_needed(connections: int, nofile: int) -> int:
    """Fewest processes that can hold ``connections`` descriptors between them."""
    return max(1, math.ceil(connections / connections_per_process(nofile)))


def load_processes(connections: int, nofile: int, cpus: int) -> int:
    """Load processes for a run: enough for the descriptors, one per CPU for large runs."""
    needed = processes_needed(connections, nofile)
    return max(needed, min(cpus, connections) if connections >= LARGE_RUN else 1)


def ports_per_source(ports: int, *, explicit: bool = False) -> int:
    """Connections one source address should open toward one destination.

    Never below one, so a machine whose ephemeral range holds one or two ports
    still gets a plan (the run may then fail to connect, which it reports).
    """
    share = EXPLICIT_PORT_HEADROOM if explicit else PORT_HEADROOM
    return max(1, int(max(0, ports) * share))


def source_addresses_needed(connections: int, ports: int, *, explicit: bool = False) -> int:
    """Source addresses ``connections`` toward one destination need (1: the kernel's choice suffices)."""
    return max(1, math.ceil(connections / ports_per_source(ports, explicit=explicit)))


def server_workers(connections: int, nofile: int, cpus: int) -> int:
    """Worker processes a process-based epoll server starts with for ``connections``."""
    return max(cpus, processes_needed(connections, nofile))


#: A reuseport server cannot choose which worker takes a connection: the kernel
#: picks a listener by a hash of the address pair, so the workers fill unevenly
#: (about N/W + sqrt(2 (N/W) ln W) in the fullest of W, balls into bins) and the
#: fullest must stay under its descriptor limit. Plan each to 90% of it: at a
#: million connections 51 workers would put the fullest near 20,000, past the
#: 19,936 a process may hold here; 56 leave it near 18,250.
REUSEPORT_SPREAD = 0.9


def reuseport_workers(connections: int, nofile: int, cpus: int) -> int:
    """Worker processes a reuseport epoll server needs for ``connections`` (they are not added later)."""
    per_worker = max(1, int(connections_per_process(nofile) * REUSEPORT_SPREAD))
    return max(cpus, math.ceil(connections / per_worker))


def kernel_bytes(connections: int, *, loopback: bool = True) -> int:
    """Kernel memory for the sockets: both ends live on this machine over loopback."""
    return connections * KERNEL_BYTES_PER_SOCKET * (2 if loopback else 1)


def load_memory_bytes(connections: int, processes: int, *, message_size: int, samples: int,
                      in_flight: int = 1, loopback: bool = True, sample_budget: int | None = None) -> int:
    """Memory a load run needs: kernel sockets plus every load process's user space.

    A message costs memory in every process (a few copies of it) and in every
    connection that has one in flight (its partial echo). ``in_flight`` is how
    many messages a connection may have outstanding (1 in a closed loop). A
    process keeps at most ``sample_budget`` bytes of 8-byte samples (None: no
    limit); the rest are folded into a histogram of constant size.
    """
    if sample_budget is not None:
        samples = min(samples, processes * (sample_budget // 8))
    per_process = LOAD_PROCESS_BYTES + LOAD_MESSAGE_COPIES_PER_PROCESS * message_size
    per_connection = LOAD_BYTES_PER_CONNECTION + int(in_flight * LOAD_MESSAGE_COPIES_PER_CONNECTION
                                                     * message_size)
    return (kernel_bytes(connections, loopback=loopback) + processes * per_process
            + connections * per_connection + samples * LOAD_BYTES_PER_SAMPLE)


#: Bytes the kernel charges a socket for one small queued message (an skb's truesize).
SKB_OVERHEAD = 1024
#: Ask for this much more than a run needs when raising a limit.
RAISE_MARGIN = 1.25


@dataclass(frozen=True)
class KernelLimit:
    """One kernel limit a run meets, against what the run needs.

    ``status`` is "ok", "warn" (the run goes on, slower or with retries) or
    "blocks" (the run cannot reach its connections). ``fix`` is the command that
    raises it; ``sysctl`` the setting and value ``c10k doctor --fix`` /
    ``c10k load --tune`` would write (None when no sysctl fixes it).
    """

    name: str
    value: str
    needed: str
    status: str
    why: str
    fix: str = ""
    sysctl: tuple[str, str] | None = None


def _raise_to(name: str, needed: int) -> tuple[str, tuple[str, str]]:
    value = str(int(needed * RAISE_MARGIN))
    return f"sysctl -w {name}={value}", (name, value)


def kernel_limits(connections: int, lim: MachineLimits, *, message_size: int = 15,
                  loopback: bool = True) -> list[KernelLimit]:
    """Every kernel limit a run of ``connections`` connections meets on this machine.

    Args:
        connections: connections open at once.
        lim: the machine's limits (``c10k.limits.machine_limits()``, or made up).
        message_size: bytes in flight per busy connection.
        loopback: server and client on this machine (both ends' sockets count here).

    Returns:
        One ``KernelLimit`` per limit, in the order a run meets them.
    """
    out: list[KernelLimit] = []
    ends = 2 if loopback else 1
    # Connection tracking: once netfilter's conntrack is loaded (Podman's port
    # publishing loads it), every tracked connection, loopback included, takes
    # an entry; a full table drops the SYN ("nf_conntrack: table full") and the
    # connect times out. One entry covers both directions of a connection.
    name = "net.netfilter.nf_conntrack_max"
    if lim.conntrack_max <= 0:
        out.append(KernelLimit(name, "not loaded", f"{connections:,}", "ok", "connection tracking is not loaded"))
    elif loopback and not lim.loopback_tracked:
        out.append(KernelLimit(name, f"{lim.conntrack_max:,}", "0 (loopback not tracked)", "ok",
                               "loopback is exempt from connection tracking"))
    else:
        needed = lim.conntrack_count + connections
        blocks = needed > lim.conntrack_max
        fix, setting = _raise_to(name, needed)
        out.append(KernelLimit(
            name, f"{lim.conntrack_max:,} ({lim.conntrack_count:,} in use)", f"{needed:,}",
            "blocks" if blocks else "ok",
            "every tracked connection takes an entry; a full table drops new connections",
            fix + (" (or exempt loopback: nft add rule ... iif lo notrack / oif lo notrack)" if loopback else ""),
            setting if blocks else None))
    # Descriptors system-wide: every socket of both ends is an open file.
    name = "fs.file-max"
    if lim.file_max > 0:
        needed = lim.file_nr + ends * connections
        blocks = needed > lim.file_max
        fix, setting = _raise_to(name, needed)
        out.append(KernelLimit(name, f"{lim.file_max:,} ({lim.file_nr:,} open)", f"{needed:,}",
                               "blocks" if blocks else "ok", "open files in the whole system",
                               fix if blocks else "", setting if blocks else None))
    if lim.nr_open > 0:
        out.append(KernelLimit("fs.nr_open", f"{lim.nr_open:,}", f"{lim.nofile_hard:,} per process", "ok",
                               "caps RLIMIT_NOFILE; c10k spreads connections over processes instead"))
    # TCP memory: a busy connection has a message queued on one of its sockets.
    # Past the pressure threshold the kernel trims buffers; past the high one
    # sends and receives fail ("TCP: out of memory").
    low, pressure, high = lim.tcp_mem
    if high > 0:
        pages = math.ceil(connections * (message_size + SKB_OVERHEAD) / lim.page_size)
        status = "blocks" if pages > high else "warn" if pages > pressure else "ok"
        fix, tcp_setting = "", None
        if status != "ok":
            value = int(pages * RAISE_MARGIN)
            wanted = f"{max(low, value // 2)} {value} {value * 3 // 2}"
            fix, tcp_setting = f'sysctl -w net.ipv4.tcp_mem="{wanted}"', ("net.ipv4.tcp_mem", wanted)
        out.append(KernelLimit("net.ipv4.tcp_mem", f"{pressure:,} / {high:,} pages (pressure / high)",
                               f"~{pages:,} pages", status,
                               "socket buffer memory of messages in flight", fix, tcp_setting))
    # Listen backlog: the kernel silently caps every listen() backlog at somaxconn.
    status = "warn" if lim.somaxconn < 1024 and connections > lim.somaxconn else "ok"
    fix, setting = _raise_to("net.core.somaxconn", 4096)
    out.append(KernelLimit("net.core.somaxconn", f"{lim.somaxconn:,}", "1,024+", status,
                           "caps listen backlogs: a burst of connects beyond it is dropped and retried",
                           fix if status != "ok" else "", setting if status != "ok" else None))
    if lim.syn_backlog:
        status = "warn" if lim.syn_backlog < 1024 and connections > lim.syn_backlog else "ok"
        out.append(KernelLimit("net.ipv4.tcp_max_syn_backlog", f"{lim.syn_backlog:,}", "1,024+", status,
                               "half-open connections waiting for their handshake"))
    # Ephemeral ports: per source address toward one destination.
    sources = source_addresses_needed(connections, lim.ephemeral_ports)
    out.append(KernelLimit(
        "net.ipv4.ip_local_port_range", f"{lim.ephemeral_range[0]}-{lim.ephemeral_range[1]} "
        f"({lim.ephemeral_ports:,} ports)", f"{sources} source address(es)",
        "ok" if loopback or sources == 1 else "blocks",
        "connections per source address to one server address" + ("" if loopback else
                                                                   "; a remote server needs --source-ip")))
    # Processes and threads: load processes and server workers take pids.
    pids = load_processes(connections, lim.nofile_hard, lim.cpus) + server_workers(
        connections, lim.nofile_hard, lim.cpus)
    threads, thread_why = lim.thread_limit()
    out.append(KernelLimit("kernel.pid_max / threads", f"{threads:,} ({thread_why})", f"{pids:,} processes",
                           "blocks" if pids > threads else "ok",
                           "load processes and server workers (a thread per connection needs one each)"))
    return out


def blocking(found: list[KernelLimit]) -> list[KernelLimit]:
    """The limits that would stop the run."""
    return [k for k in found if k.status == "blocks"]


def tune(found: list[KernelLimit], write: Callable[[str, str], str]) -> list[str]:
    """Raise every limit that blocks or warns and has a sysctl fix; say each change.

    ``write(name, value)`` sets a sysctl and returns its old value
    (``c10k.limits.write_sysctl``); nothing is restored afterwards, and every
    change is returned as ``"name: old -> new"`` for the caller to print.
    """
    changes = []
    for k in found:
        if k.status != "ok" and k.sysctl is not None:
            name, value = k.sysctl
            old = write(name, value)
            changes.append(f"{name}: {old} -> {value}")
    return changes
