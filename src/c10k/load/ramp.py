"""The connect ramp: paced non-blocking connects, their completion, and self-connects.

* Non-blocking connects (EINPROGRESS, completion reported as EPOLLOUT and
  SO_ERROR) are started by the periodic tick, paced by ``connect_rate`` and capped
  in flight, so a burst of SYNs does not overflow the server's accept queue.
* With many connections the kernel's ephemeral ports toward one destination run
  out (~28k per source address); binding to ``(source, 0)`` with
  IP_BIND_ADDRESS_NO_PORT lets the kernel pick the port at connect() time, per
  destination, instead of reserving one per source address at bind() time.
* A TCP self-connect: aimed at a port nobody listens on, a connect whose
  kernel-picked source port equals the target port sends its SYN to itself,
  the simultaneous-open rules complete it, and every byte sent comes straight
  back, a perfect "echo" from no server at all. RFC 793 allows it and Linux
  does it; it happens when the ephemeral range covers the target port. The only
  sign is the socket's local address being its peer address, so that is
  checked once per connect and counted as the error ``self_connect``.
* A unix-domain socket (``family`` AF_UNIX) has no ports, no Nagle and no
  self-connect. Its non-blocking connect() never waits: it succeeds at once, or
  fails with EAGAIN while the server's accept queue is full. That is the unix
  form of a TCP SYN the kernel dropped for a full queue, so it is retried the way
  TCP retransmits a SYN (on the next tick, until ``--timeout``: then
  ``connect_timeout``), and counted in ``queue_full`` as the evidence that the
  server was not accepting (see ``diagnosis.py``).
"""

from __future__ import annotations

import errno
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence

from c10k.load.table import CONNECTED, CONNECTING, EPOLLIN, EPOLLOUT, ConnectionTable, reason

__all__ = ["ConnectRamp", "IP_BIND_ADDRESS_NO_PORT", "TICK_NS"]

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
TICK_NS = 100_000_000  # connect pacing and bookkeeping every 0.1 s
RETRY_NS = 20_000_000  # a unix connect turned away (EAGAIN) is tried again after 20 ms


class ConnectRamp:
    """Starts this process's connections and completes them, one event at a time."""

    def __init__(self, table: ConnectionTable, *, address: tuple | str, family: int, first: int,
                 sources: Sequence[str], connect_rate: float, max_connecting: int) -> None:
        self.t = table
        self.address = address
        self.family = family
        self.first = first
        self.sources = list(sources)
        self.rate = connect_rate
        self.max_connecting = max_connecting
        self.next = 0  # local connection to start next
        self.due = 0  # ns when the next paced connect may start
        self.rbuf = bytearray(max(table.ml, 1))
        self.tcp = family != socket.AF_UNIX
        #: unix connects refused with EAGAIN (accept queue full): (connection, first attempt ns)
        self.retry: deque[tuple[int, int]] = deque()
        self.queue_full = 0  # EAGAIN answers to a unix connect
        self.retry_due = 0
        #: what to do with a connection once established (the closed loop without a barrier
        #: starts sending at once); None leaves it waiting for the barrier
        self.on_established: Callable[[int, int], None] | None = None

    @property
    def pending(self) -> bool:
        """Connections still to start or still connecting."""
        return bool(self.t.connecting) or self.next < self.t.connections or bool(self.retry)

    def start(self, now: int) -> None:
        """Start as many connects as the pace and the in-flight cap allow."""
        n, connecting = self.t.connections, self.t.connecting
        if self.retry and now >= self.retry_due:
            self._retry(now)
        while self.next < n and len(connecting) < self.max_connecting:
            if self.rate > 0:
                if now < self.due:
                    return
                self.due = max(self.due, now - TICK_NS) + int(1e9 / self.rate)
            j = self.next
            self.next += 1
            self._connect(j)

    def wait(self, now: int) -> float | None:
        """Seconds until the next paced connect, or None when the ramp waits for nothing."""
        if self.next < self.t.connections and len(self.t.connecting) < self.max_connecting:
            return max(0.0, (self.due - now) / 1e9)
        if self.retry:
            return max(0.0, (self.retry_due - now) / 1e9)
        return None

    def _retry(self, now: int) -> None:
        """Unix connects the server's full accept queue turned away: again, or a timeout."""
        self.retry_due = now + RETRY_NS
        for _ in range(len(self.retry)):
            j, first = self.retry.popleft()
            if now - first > self.t.timeout_ns:
                self.t.fail_unopened(j, "connect_timeout")
            else:
                self._connect(j, first)

    def reconnect(self, j: int) -> None:
        """Open connection ``j`` again (``--lifetime``: its socket was closed on purpose);
        its completion calls ``on_established`` as the first connect did."""
        self._connect(j)

    def _connect(self, j: int, first: int = 0) -> None:
        t = self.t
        if not t.connect_start_ns:
            t.connect_start_ns = time.monotonic_ns()
        try:
            s = socket.socket(self.family, socket.SOCK_STREAM)
        except OSError as exc:
            t.fail_unopened(j, reason(exc))
            return
        fd = s.fileno()
        t.sock[fd] = s
        t.conn[fd] = j
        t.state[fd] = CONNECTING
        t.open += 1
        if t.open > t.peak_open:
            t.peak_open = t.open
        try:
            s.setblocking(False)
            if self.tcp:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.sources:
                s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                s.bind((self.sources[(self.first + j) % len(self.sources)], 0))
            err = s.connect_ex(self.address)
        except OSError as exc:
            t.fail(fd, reason(exc))
            return
        if err == errno.EAGAIN and not self.tcp:
            self.queue_full += 1
            self.retry.append((j, first or time.monotonic_ns()))
            t.close(fd)
            return
        if err not in (0, errno.EINPROGRESS):
            t.fail(fd, reason(err))
            return
        t.connecting[fd] = first or time.monotonic_ns()  # a retried connect is timed from its first try
        t.ep.register(fd, EPOLLOUT)

    def completed(self, fd: int) -> None:
        """EPOLLOUT (or an error) on a connecting socket: it connected or it failed."""
        t = self.t
        s = t.sock[fd]
        assert s is not None
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            t.fail(fd, reason(err))
            return
        now = time.monotonic_ns()
        j = t.conn[fd]
        started = t.connecting.pop(fd)
        try:
            local, peer = s.getsockname(), s.getpeername()
        except OSError as exc:  # reset between the event and now
            t.fail(fd, reason(exc))
            return
        if self.tcp:  # an unnamed unix socket has no source to tell, and cannot reach itself
            t.sources[j] = f"{local[0]}:{local[1]}"
            if local[:2] == peer[:2]:
                t.fail(fd, "self_connect", outstanding=False)
                return
        t.connect_us[j] = (now - started) / 1000
        t.connect_end_ns = now
        t.established += 1
        t.state[fd] = CONNECTED
        t.ep.modify(fd, EPOLLIN)
        t.established_fds.append(fd)
        if self.on_established is not None:
            self.on_established(fd, now)

    def idle_read(self, fd: int) -> None:
        """Data or an error on a connection that has not sent anything yet."""
        t = self.t
        try:
            n = t.sock[fd].recv_into(self.rbuf)  # type: ignore[union-attr]
        except BlockingIOError:
            return
        except OSError as exc:
            t.fail(fd, reason(exc), outstanding=False)
            return
        t.fail(fd, "closed_early" if n == 0 else "unexpected_data", outstanding=False)
        t.extra_rx += n

    def scan_timeouts(self, now: int) -> None:
        limit = self.t.timeout_ns
        for fd in [fd for fd, started in self.t.connecting.items() if now - started > limit]:
            self.t.fail(fd, "connect_timeout")

    def event(self, fd: int, ev: int) -> None:
        """Any event on a socket that is connecting, or connected and waiting for the barrier."""
        st = self.t.state[fd]
        if st == CONNECTING:
            self.completed(fd)
        elif st == CONNECTED:
            self.idle_read(fd)
