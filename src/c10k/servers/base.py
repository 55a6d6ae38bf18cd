"""What every architecture shares: configuration, the listening socket,
statistics, logging, and the shutdown signal.

The contract (DESIGN.md): print ``listening on HOST:PORT`` once, flushed, when
connections are accepted; on SIGTERM or SIGINT stop accepting and reading, send
the echo of everything already read, shut the write side, drain until the
client's EOF and exit 0 within ``shutdown_timeout``.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from c10k.errors import C10kError
from c10k.servers.echo import DEFAULT_HIGH_WATERMARK, DEFAULT_LOW_WATERMARK
from c10k.servers.refusals import Refusal, Refusals, log
from c10k.servers.unix import open_unix_listener
from c10k.text import host_port, unix_address

__all__ = [
    "ServerConfig", "Stats", "Server", "open_listener", "ShutdownSignal", "DescriptorReserve",
    "log", "announce", "stop_deadline", "accept_ready",
]


@dataclass
class ServerConfig:
    """Everything ``c10k serve`` can be told. The one home of its defaults: the CLI reads them here."""

    host: str = "127.0.0.1"
    port: int = 7000
    unix: str = ""  # a unix-domain socket path to listen on instead of host and port (servers/unix.py)
    backlog: int = 4096
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    max_workers: int = 64  # epoll hand-off grows to this many workers (see epoll.py)
    worker_mode: str = "process"
    balance: str = "handoff"
    max_connections: int = 0  # 0: no limit but the machine's
    idle_timeout: float = 0.0  # 0: never
    send_timeout: float = 0.0  # 0: never (TCP_USER_TIMEOUT: echoes a peer does not take for this long)
    shutdown_timeout: float = 5.0
    stats_file: str | None = None
    high_watermark: int = DEFAULT_HIGH_WATERMARK
    low_watermark: int = DEFAULT_LOW_WATERMARK
    stack_size: int = 0  # threaded: 0 keeps the platform's default


class Stats:
    """Counters one server (or one worker) keeps; merged for the stats file."""

    FIELDS = ("accepted", "closed", "bytes_echoed", "peak_concurrent", "closed_idle")

    def __init__(self) -> None:
        self.accepted = 0
        self.closed = 0
        self.bytes_echoed = 0
        self.peak_concurrent = 0
        self.closed_idle = 0
        self.refused: Counter[str] = Counter()

    def to_json(self, architecture: str, workers: dict[str, int] | None = None) -> dict[str, Any]:
        return {
            "architecture": architecture,
            "accepted": self.accepted,
            "refused": {k: v for k, v in self.refused.items() if v},
            "peak_concurrent": self.peak_concurrent,
            "bytes_echoed": self.bytes_echoed,
            "closed_idle": self.closed_idle,
            "workers": workers or {"started": 0, "died": 0},
        }


def announce(address: tuple[Any, ...] | str) -> None:
    """The one line the contract promises once connections are accepted."""
    if isinstance(address, str):  # a unix socket's getsockname() is its path
        print(f"listening on {unix_address(address)}", flush=True)
        return
    host, port = address[:2]
    print(f"listening on {host_port(host, port)}", flush=True)  # [::1]:7000 for IPv6


def open_listener(config: ServerConfig, reuseport: bool = False, join_port: int | None = None) -> socket.socket:
    """A non-blocking listening TCP socket (or unix socket, ``config.unix``), or a one-line C10kError.

    Args:
        reuseport: the first listener of a new SO_REUSEPORT group (on ``config.port``).
        join_port: another listener of our own group, already bound on this port.
    """
    if config.unix:  # the CLI refuses --balance reuseport with --unix (no ports to share)
        return open_unix_listener(config.unix, config.backlog)
    port = config.port if join_port is None else join_port
    try:
        infos = socket.getaddrinfo(config.host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise C10kError(f"cannot resolve host {config.host!r}: {exc.strerror}") from None
    family, kind, proto, _, addr = infos[0]
    if reuseport and join_port is None:
        # SO_REUSEPORT lets any socket of the same user that also sets it bind
        # a port already listened on, and the kernel then splits the traffic:
        # a second server would silently take half of the first one's. So the
        # group's first listener checks with a plain bind (no SO_REUSEPORT),
        # which fails with EADDRINUSE if anyone listens there, and takes the
        # port that bind got (port 0 resolves here, once for every worker).
        probe = _bind(config, family, kind, proto, addr, port, reuseport=False, listen=False)
        addr = probe.getsockname()
        port = addr[1]
        probe.close()
    return _bind(config, family, kind, proto, addr, port, reuseport=reuseport or join_port is not None)


def _bind(config: ServerConfig, family: int, kind: int, proto: int, addr: Any, port: int,
          reuseport: bool, listen: bool = True) -> socket.socket:
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # Accepted sockets inherit TCP_NODELAY from the listener on Linux, which
        # saves one setsockopt per connection.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if config.send_timeout > 0:
            # A peer that takes no echo for this long is gone (nginx's send_timeout).
            # TCP_USER_TIMEOUT bounds both unacknowledged data and zero-window
            # probing, so it also ends the deadlock a departed flooder can leave:
            # its orphaned socket still has unsent bytes our paused (backpressured)
            # connection will not read, and under TCP memory pressure its window
            # is zero, so neither side's data moves and only the kernel's retry
            # timers (tens of seconds) would end it. Inherited by accepted sockets.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, max(1, int(config.send_timeout * 1000)))
        sock.bind(addr)
        if listen:
            # The kernel caps the backlog at net.core.somaxconn silently.
            sock.listen(max(config.backlog, 1))
            sock.setblocking(False)
    except OSError as exc:
        sock.close()
        where = host_port(config.host, port)
        if exc.errno == errno.EADDRINUSE:
            raise C10kError(f"address {where} is already in use") from None
        if exc.errno == errno.EACCES:
            raise C10kError(f"permission denied to listen on {where}") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise C10kError(f"address {where} is not on this machine") from None
        raise C10kError(f"cannot listen on {where}: {exc.strerror}") from None
    return sock


class ShutdownSignal:
    """SIGTERM and SIGINT set a flag and wake the event loop through a socket.

    ``signal.set_wakeup_fd`` writes the signal number to ``wake_fd``'s peer from
    C, so a loop blocked in select/poll/epoll returns at once (the self-pipe
    trick, as trio's wakeup socketpair does); the Python handler sets the flag
    and, the first time, calls ``on_signal``. Install in the thread and process
    that runs the loop.

    ``on_signal`` runs inside the Python handler, the first moment the main
    thread holds the GIL after the signal: for a server whose main thread
    competes with thousands of others for the GIL, the place to stop accepting
    without waiting for more turns.
    """

    def __init__(self, on_signal: Callable[[], None] | None = None) -> None:
        self.requested = False
        self._on_signal = on_signal
        self._rsock, self._wsock = socket.socketpair()
        self._rsock.setblocking(False)
        self._wsock.setblocking(False)
        self.wake_fd = self._rsock.fileno()
        signal.set_wakeup_fd(self._wsock.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        if not self.requested and self._on_signal is not None:
            self._on_signal()
        self.requested = True

    def drain(self) -> None:
        """Empty the wake socket (call when ``wake_fd`` is readable)."""
        try:
            while self._rsock.recv(4096):
                pass
        except OSError:
            pass

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        self._rsock.close()
        self._wsock.close()


class Server:
    """One architecture. Subclasses set ``name`` and implement ``serve``."""

    name = ""
    #: the command should end the process with os._exit once serve() returns
    exit_at_once = False

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.stats = Stats()
        self.workers_started = 0
        self.workers_died = 0

    def serve(self) -> None:
        """Listen, announce, serve until a shutdown signal, then stop gracefully."""
        raise NotImplementedError

    def write_stats(self) -> None:
        if not self.config.stats_file:
            return
        data = self.stats.to_json(self.name, {"started": self.workers_started, "died": self.workers_died})
        tmp = f"{self.config.stats_file}.tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(data, f, indent=1)
            os.replace(tmp, self.config.stats_file)
        except OSError as exc:  # checked at start; the folder may have gone since
            log(f"cannot write --stats-file {self.config.stats_file}: {exc.strerror or exc}")


def stop_deadline(shutdown_timeout: float, now: float | None = None) -> float:
    """When to close what is left, keeping a margin to exit within the timeout."""
    now = time.monotonic() if now is None else now
    return now + shutdown_timeout - min(0.5, shutdown_timeout / 4)


class DescriptorReserve:
    """One spare descriptor, given up to accept-and-close when out of them.

    On EMFILE or ENFILE the listener stays readable with nothing we can do, and
    a poll loop would spin on it. Closing the spare lets us accept the next
    client and close it at once: it learns now instead of hanging in the
    backlog, and the loop waits again. (libev and libuv do the same.)
    """

    def __init__(self, refusals: Refusals) -> None:
        self.refusals = refusals
        self._fd: int | None = None
        self._take()

    def _take(self) -> None:
        try:
            self._fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._fd = None  # a closing connection frees one; we try again next time

    def shed(self, listener: socket.socket) -> bool:
        """Accept one pending client with the spare, close it and count it; True if one was."""
        if self._fd is None:
            self._take()
            if self._fd is None:
                return False
        os.close(self._fd)
        self._fd = None
        try:
            listener.accept()[0].close()
        except OSError:
            return False
        finally:
            self._take()
        self.refusals.refuse(Refusal.DESCRIPTOR_LIMIT)
        return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


#: accepts per readiness event: enough to drain a burst, few enough that one
#: listener cannot starve the connections sharing its loop
ACCEPT_BATCH = 256


def accept_ready(listener: socket.socket, reserve: DescriptorReserve, limit: int = ACCEPT_BATCH) -> Iterator[int]:
    """Accept the clients waiting on a non-blocking listener, as raw descriptors.

    Out of descriptors (EMFILE, ENFILE), the reserve sheds (and counts) one
    waiting client. Errors that concern one client only (it gave up
    before we accepted it) are skipped; anything else is logged and ends the batch.
    """
    for _ in range(limit):
        try:
            sock, _ = listener.accept()
        except BlockingIOError:
            return
        except OSError as exc:
            if listener.fileno() == -1:
                return  # closed by a shutdown signal's handler while we were accepting
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                if reserve.shed(listener):
                    continue
                return
            if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                continue
            log(f"accept failed: {exc.strerror}")
            return
        yield sock.detach()
