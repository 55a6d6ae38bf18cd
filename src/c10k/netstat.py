"""What the kernel tells of a server's accept queue: ListenOverflows/ListenDrops, and each listener's queue.

When a listener's accept queue (its backlog) is full, Linux drops the SYN or
the handshake's last ACK and counts it in ``TcpExt: ListenOverflows`` (and in
``ListenDrops``, which also counts other drops at a listener) of
``/proc/net/netstat``. The counters are per network namespace, not per socket:
a delta over a run says that *some* listener of this host overflowed meanwhile,
which is the server under test when nothing else here is that busy.

A queue that never filled says nothing by those counters, yet a server that
never calls accept() leaves its clients there, handshake done. The listener's
own line in /proc/net/tcp (state 0A, LISTEN) shows it: for a listener the
``rx_queue`` column is the accept queue's current length (``sk_ack_backlog``),
read by ``accept_queue``.

Everything is read under ``PROC_NET`` (tests may point it at a made-up folder),
as ``limits.py`` reads sysctls under ``SYSCTL_ROOT``.
"""

from __future__ import annotations

import socket
from pathlib import Path

__all__ = ["PROC_NET", "LISTEN_COUNTERS", "tcp_ext", "listen_counters", "accept_queue", "is_local_address"]

#: Where the counters are read from (this process's network namespace).
PROC_NET = Path("/proc/net")
LISTEN_COUNTERS = ("ListenOverflows", "ListenDrops")
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column


def tcp_ext() -> dict[str, int]:
    """The ``TcpExt:`` counters by name ({} when the file cannot be read or parsed)."""
    try:
        lines = (PROC_NET / "netstat").read_text().splitlines()
    except OSError:
        return {}
    # The file is pairs of lines: "TcpExt: Name1 Name2 ..." then "TcpExt: 12 0 ...".
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:") and values.startswith("TcpExt:"):
            try:
                return dict(zip(names.split()[1:], map(int, values.split()[1:]), strict=True))
            except ValueError:
                return {}
    return {}


def listen_counters() -> dict[str, int] | None:
    """ListenOverflows and ListenDrops now, or None when this kernel does not report them."""
    found = tcp_ext()
    if not all(name in found for name in LISTEN_COUNTERS):
        return None
    return {name: found[name] for name in LISTEN_COUNTERS}


def _address(family: int, hexed: str) -> str:
    """An address as /proc/net/tcp{,6} prints it: 32-bit words in host byte order (little-endian here)."""
    raw = b"".join(bytes.fromhex(hexed[i:i + 8])[::-1] for i in range(0, len(hexed), 8))
    return socket.inet_ntop(family, raw)


def accept_queue(address: str, port: int) -> int | None:
    """Connections waiting to be accepted by this host's listeners on ``address``:``port``.

    Listeners bound to the wildcard (0.0.0.0, ::) count too, and SO_REUSEPORT
    siblings add up. None when no such listener is found (or /proc is unreadable).
    """
    wanted = {address, "::"} | ({"0.0.0.0", f"::ffff:{address}"} if ":" not in address else set())
    total, found = 0, False
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            lines = (PROC_NET / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) < 5 or f[3] != _LISTEN:
                continue
            local, _, local_port = f[1].partition(":")
            try:
                if int(local_port, 16) != port or _address(family, local) not in wanted:
                    continue
                total += int(f[4].partition(":")[2], 16)
            except ValueError:
                continue
            found = True
    return total if found else None


def is_local_address(family: int, address: str) -> bool:
    """True when ``address`` belongs to this host (its listener's counters are the ones read here).

    Binding to it is the kernel's own answer, loopback and every interface's
    addresses alike; port 0 takes no port for good (the socket is closed at once).
    """
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:  # EADDRNOTAVAIL: not ours
            return False
    return True
