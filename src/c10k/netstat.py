"""The kernel's TCP counters that tell a full accept queue: ListenOverflows and ListenDrops.

When a listener's accept queue (its backlog) is full, Linux drops the SYN or
the handshake's last ACK and counts it in ``TcpExt: ListenOverflows`` (and in
``ListenDrops``, which also counts other drops at a listener) of
``/proc/net/netstat``. The counters are per network namespace, not per socket:
a delta over a run says that *some* listener of this host overflowed meanwhile,
which is the server under test when nothing else here is that busy. Everything
is read through one reader, ``tcp_ext``, under ``NETSTAT_PATH`` (tests may
point it at a made-up file), as ``limits.py`` reads sysctls.
"""

from __future__ import annotations

import socket
from pathlib import Path

__all__ = ["NETSTAT_PATH", "LISTEN_COUNTERS", "tcp_ext", "listen_counters", "is_local_address"]

#: Where the counters are read from (this process's network namespace).
NETSTAT_PATH = Path("/proc/net/netstat")
LISTEN_COUNTERS = ("ListenOverflows", "ListenDrops")


def tcp_ext() -> dict[str, int]:
    """The ``TcpExt:`` counters by name ({} when the file cannot be read or parsed)."""
    try:
        lines = NETSTAT_PATH.read_text().splitlines()
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
