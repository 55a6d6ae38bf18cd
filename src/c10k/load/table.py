"""The state every phase of a load process shares: flat per-descriptor arrays.

Per-connection state lives in flat lists indexed by the socket's descriptor
number (small integers, below RLIMIT_NOFILE), not in objects: the hot path is a
handful of list subscripts per message. Per-connection results (what ends up
in connections.csv) live in numpy arrays indexed by the connection's local
number. The phases (``ramp.py``, ``closed_loop.py``, ``open_loop.py``) read and
write these lists directly; the table only knows how a connection ends.
"""

from __future__ import annotations

import errno
import resource
import select
import socket
import time
from array import array
from collections.abc import Callable

import numpy as np

from c10k.load.reply import first_difference
from c10k.load.timeseries import SecondBins

__all__ = ["ConnectionTable", "SHOWN", "FREE", "CONNECTING", "CONNECTED", "RUNNING", "reason"]

FREE, CONNECTING, CONNECTED, RUNNING = 0, 1, 2, 3
EPOLLIN, EPOLLOUT = select.EPOLLIN, select.EPOLLOUT
SHOWN = 64  # bytes of a wrong reply kept for connections.csv and the summary


def reason(exc: BaseException | int) -> str:
    """The error column's word for an exception or errno: 'ECONNREFUSED', 'timeout', ..."""
    code = exc if isinstance(exc, int) else getattr(exc, "errno", None)
    if code is None:
        return type(exc).__name__
    return errno.errorcode.get(code, f"errno{code}")


class ConnectionTable:
    """Descriptor-indexed state, per-connection results and the run's counters."""

    def __init__(self, connections: int, message: bytes, timeout: float) -> None:
        self.msg = bytes(message)
        self.ml = len(self.msg)
        self.connections = connections
        self.timeout_ns = int(timeout * 1e9)
        size = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        size = size if 0 < size < 1 << 22 else 1 << 20
        self.size = size
        # per descriptor
        self.sock: list[socket.socket | None] = [None] * size
        self.conn = [-1] * size  # local connection number
        self.state = bytearray(size)
        # os.read(fd, want[fd]) asks for exactly what the connection is owed: the whole
        # echo, the rest of it after a partial read (so the fast path's == can only match
        # a complete echo), or 0 before the first send (so any event leaves the fast path).
        self.want = [0] * size
        self.partial: dict[int, int] = {}  # fd -> bytes of the current echo already received
        self.pbuf: dict[int, bytearray] = {}
        self.outq: dict[int, bytes] = {}  # fd -> bytes still to send (the send buffer was full)
        self.connecting: dict[int, int] = {}  # fd -> connect start ns
        self.running: dict[int, int] = {}  # fd -> local connection, in the message phase
        self.established_fds: list[int] = []
        # per connection
        self.connect_us = np.full(connections, np.nan)
        self.echoed = np.zeros(connections, np.int64)
        self.sent = np.zeros(connections, np.int64)
        self.errors = [""] * connections
        #: connection -> (first differing offset or -1, what came back, what was expected): the
        #: reply that ended it (a mismatch, or the part of a reply that timed out), cut to SHOWN + 1 bytes
        self.got: dict[int, tuple[int, bytes, bytes]] = {}
        self.sources = [""] * connections
        self.lat = array("q")  # round trips in ns; the message phase sizes it (up to its sample budget)
        self.seconds = SecondBins(time.monotonic_ns())  # the engine gives it the run's origin
        # counters
        self.open = 0
        self.peak_open = 0
        self.established = 0
        self.completed = 0
        self.failed = 0  # connections with an error (the summary's failed = requested - completed)
        self.mismatched = 0
        self.extra_rx = 0  # bytes received that were not part of a byte-exact echo
        self.silent_timeouts = 0  # connections that timed out without one byte back (diagnosis.py)
        self.unsent_bytes = 0
        self.connect_start_ns = 0
        self.connect_end_ns = 0
        self.message_start_ns = 0
        self.message_end_ns = 0
        self.next_tick = 0
        self.next_scan = 0
        self.ep = select.epoll(min(connections, 65536) or 1)
        #: the message phase's bookkeeping for a connection that ends while running:
        #: (fd, connection, outstanding message or not) -> None
        self.settle: Callable[[int, int, bool], None] = lambda fd, j, outstanding: None

    def close(self, fd: int) -> None:
        s = self.sock[fd]
        self.sock[fd] = None
        self.want[fd] = 0
        self.state[fd] = FREE
        self.running.pop(fd, None)
        self.connecting.pop(fd, None)
        self.partial.pop(fd, None)
        self.pbuf.pop(fd, None)
        left = self.outq.pop(fd, None)
        if left:
            self.unsent_bytes += len(left)
        if s is not None:
            try:
                self.ep.unregister(fd)
            except (OSError, ValueError):
                pass
            s.close()
            self.open -= 1

    def fail(self, fd: int, why: str, outstanding: bool = True, heard: bool = False) -> None:
        """End a connection with an error; its first error is the one reported.

        ``heard``: bytes came back that are counted already (a late echo), so a
        timeout is not a silent one.
        """
        j = self.conn[fd]
        first = not self.errors[j]
        if first:
            self.errors[j] = why
            self.failed += 1
        if self.state[fd] == RUNNING:
            self.settle(fd, j, outstanding)
        got = self.partial.get(fd, 0)
        if first and why == "timeout" and not (heard or got or self.echoed[j]):
            self.silent_timeouts += 1
        if got:  # the part of an echo that came (e.g. before a timeout)
            self.note_reply(j, -1, self.pbuf[fd][:got], self.msg)
        self.extra_rx += got
        self.close(fd)

    def fail_unopened(self, j: int, why: str) -> None:
        """A connection that never got a socket."""
        self.errors[j] = why
        self.failed += 1

    def finish(self, fd: int) -> None:
        """End a connection that got every echo it was owed."""
        j = self.conn[fd]
        if self.state[fd] == RUNNING:
            self.settle(fd, j, False)
        self.completed += 1
        self.close(fd)

    def late(self, fd: int, received: int) -> None:
        """Bytes that arrived after --timeout: a timeout, as if the scan had seen it first."""
        self.extra_rx += received
        self.fail(fd, "timeout", heard=True)

    def note_reply(self, j: int, offset: int, got: bytes | bytearray, expected: bytes | None) -> None:
        """Keep the start of the reply that ended connection ``j`` (its first one only)."""
        if j not in self.got:
            self.got[j] = (offset, bytes(got[:SHOWN + 1]), (expected or b"")[:SHOWN + 1])

    def mismatch(self, fd: int, got: bytes = b"") -> None:
        """The echo came back different (``got``: the whole echo, or as much as came)."""
        self.note_reply(self.conn[fd], first_difference(got, self.msg), got, self.msg)
        self.mismatched += 1
        self.extra_rx += len(got) if got else self.ml
        self.partial.pop(fd, None)
        self.fail(fd, "mismatch", outstanding=True)

    def send(self, fd: int, data: bytes) -> None:
        """Send, or queue what the socket's buffer did not take (after what is already queued)."""
        if fd in self.outq:
            self.outq[fd] += data
            return
        try:
            n = self.sock[fd].send(data)  # type: ignore[union-attr]
        except BlockingIOError:
            n = 0
        except OSError as exc:
            self.fail(fd, reason(exc), outstanding=False)
            return
        if n != len(data):
            self.queue(fd, data[n:])

    def queue(self, fd: int, rest: bytes) -> None:
        """The send buffer is full: keep the rest and wait for EPOLLOUT."""
        self.outq[fd] = rest
        self.ep.modify(fd, EPOLLIN | EPOLLOUT)

    def flush(self, fd: int) -> None:
        data = self.outq.pop(fd)
        try:
            n = self.sock[fd].send(data)  # type: ignore[union-attr]
        except BlockingIOError:
            n = 0
        except OSError as exc:
            self.outq[fd] = data
            self.fail(fd, reason(exc))
            return
        if n != len(data):
            self.outq[fd] = data[n:]
        else:
            self.ep.modify(fd, EPOLLIN)

    def open_fds(self) -> list[int]:
        """Every descriptor still open (a descriptor reused after a close may be listed twice)."""
        fds = list(self.running) + list(self.connecting) + self.established_fds
        return [fd for fd in dict.fromkeys(fds) if self.sock[fd] is not None]
