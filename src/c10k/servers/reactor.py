"""One thread's event loop over many connections: select, poll and epoll.

A ``Reactor`` owns a poller and the connections registered with it. It may own
a listening socket (select, poll, epoll with SO_REUSEPORT) or receive accepted
sockets from an acceptor through an ``inbox`` (epoll hand-off, see epoll.py).

Connections are bare descriptors: ``os.read`` and ``os.write`` on an int cost
less than socket methods, and there is no socket object per connection to
build when a descriptor arrives from another process.

Edge-triggered epoll, the traps:
- An edge is reported once. After EPOLLIN the loop must read until the socket
  is drained, or the rest waits for the client's next write, which in a closed
  loop never comes. "Drained" is EAGAIN, or a read shorter than asked for: for
  a stream socket a short read means the receive queue was empty at that
  instant (epoll(7)), and any later byte raises a new edge. That saves the
  EAGAIN read the C reference makes. EPOLLRDHUP is the exception: with the
  client's FIN queued we read on until read() returns b"".
- When we stop reading early (backpressure, shutdown) the edge is spent, so
  whoever lets reading resume must read at once instead of waiting for an event.
- EPOLLOUT is armed only while an echo is pending; otherwise every send that
  leaves room in the buffer would wake the loop.
Level-triggered pollers (select, poll) read once per event and simply stop
asking for POLLIN while a connection may not read.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

from c10k.limits import nofile_limits
from c10k.servers.base import (
    DescriptorReserve,
    ServerConfig,
    ShutdownSignal,
    Stats,
    accept_ready,
    stop_deadline,
)
from c10k.servers.echo import EchoBuffer
from c10k.servers.pollers import ERR, OUT, RDHUP, READ_EVENTS, Poller
from c10k.servers.refusals import Refusals

__all__ = ["Reactor", "Conn", "shut_write", "closed", "tick", "done", "finish"]

READ_SIZE = 65536

# Connection states.
OPEN = 0  # echoing
HALF_CLOSED = 1  # client sent EOF: flush what is owed, then close
STOPPING = 2  # server stopping: flush what is owed, then shut the write side
DRAINING = 3  # write side shut: discard what the client still sends until its EOF


class Conn:
    __slots__ = ("fd", "out", "last", "state", "reading", "writing")

    def __init__(self, fd: int, now: float) -> None:
        self.fd = fd
        self.out: EchoBuffer | None = None
        self.last = now
        self.state = OPEN
        self.reading = True  # what the poller was last told
        self.writing = False


def shut_write(fd: int) -> bool:
    """Send EOF on a connection's write side; False if the connection is gone."""
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, fd)
        s.shutdown(socket.SHUT_WR)
        s.detach()
    except OSError:
        return False
    return True


def closed(fd: int, stats: Stats, on_close: Callable[[int], None] | None) -> None:
    """Close a connection's descriptor and count it (its loop has forgotten it)."""
    try:
        os.close(fd)
    except OSError:
        pass
    stats.closed += 1
    if on_close:
        on_close(stats.closed)


def tick(loop: Any, now: float) -> None:
    """Once a second: close idle connections, log the refusal bursts that ended, publish the counters."""
    idle = loop.config.idle_timeout
    if idle:
        for conn in [c for c in loop.conns.values() if c.last < now - idle]:
            loop._close(conn)
            loop.stats.closed_idle += 1
    loop.refusals.tick(now)
    if loop.on_change:
        loop.on_change()


def done(loop: Any, now: float) -> bool:
    """At the end of a pass of a loop that is stopping or asked to: True when it is done.

    A shutdown signal begins the stop (``loop._begin_stop``); a stopping loop is
    done once its connections are gone or its deadline has come.
    """
    if loop.stopping:
        return not loop.conns or now >= loop.deadline
    loop._begin_stop(stop_deadline(loop.config.shutdown_timeout, now))
    return not loop.conns


def finish(loop: Any) -> None:
    """A loop has stopped: close what is left, log the last refusals, publish the counters."""
    for conn in list(loop.conns.values()):
        loop._close(conn)
    loop.refusals.flush()
    loop.reserve.close()
    if loop.listener is not None:
        loop.listener.close()
    if loop.on_change:
        loop.on_change()


class Reactor:
    """Echo every connection it is given until ``stop`` and then drain them.

    Args:
        poller: the system call to wait with.
        config: watermarks, idle timeout, shutdown deadline, max connections.
        stats: counters to update (shared with whoever reports them).
        listener: a non-blocking listening socket to accept from, or None.
        shutdown: the process's shutdown signal (a thread worker has none:
            its acceptor stops it through the inbox).
        inbox: (fd, receive) where ``receive()`` returns new descriptors to
            serve, or the time.monotonic() by which to stop.
    """

    def __init__(
        self,
        poller: Poller,
        config: ServerConfig,
        stats: Stats,
        listener: socket.socket | None = None,
        shutdown: ShutdownSignal | None = None,
        inbox: tuple[int, Callable[[], list[int] | float]] | None = None,
        on_change: Callable[[], None] | None = None,
        on_close: Callable[[int], None] | None = None,
    ) -> None:
        self.poller = poller
        self.config = config
        self.stats = stats
        self.listener = listener
        self.shutdown = shutdown
        wake_fd = shutdown.wake_fd if shutdown else None
        self.inbox_fd: int | None = inbox[0] if inbox else None
        self.receive: Callable[[], list[int] | float] | None = inbox[1] if inbox else None
        self.on_change = on_change
        self.on_close = on_close
        self.conns: dict[int, Conn] = {}
        self.now = time.monotonic()
        self.stopping = False
        self.deadline = float("inf")  # set when stopping: close what is left then
        self.refusals = Refusals(stats.refused, config.max_connections, nofile_limits()[0])
        for fd in (listener.fileno() if listener else None, wake_fd, self.inbox_fd):
            if fd is not None:
                poller.add_control(fd)
        self.reserve = DescriptorReserve(self.refusals)  # for EMFILE on accept, see base.py

    # -- admission ------------------------------------------------------------

    def admit(self, fd: int) -> bool:
        """Whether to serve a new connection; if not, the refusal is counted (the caller closes it)."""
        return not self.refusals.full(len(self.conns))

    def add(self, fd: int) -> None:
        """Serve an accepted, non-blocking descriptor."""
        self.conns[fd] = Conn(fd, self.now)
        self.poller.add(fd)
        stats = self.stats
        stats.accepted += 1
        if len(self.conns) > stats.peak_concurrent:
            stats.peak_concurrent = len(self.conns)

    def _accept(self) -> None:
        assert self.listener is not None
        for fd in accept_ready(self.listener, self.reserve):
            if not self.admit(fd):
                os.close(fd)
                continue
            os.set_blocking(fd, False)
            self.add(fd)

    # -- the loop -------------------------------------------------------------

    def run(self, turns: int = -1) -> None:
        """Serve until asked to stop, then stop gracefully (see ``_begin_stop``).

        ``turns``: return after this many polls, still serving (tests step the loop).
        """
        conns = self.conns
        poll = self.poller.poll
        read = os.read
        write = os.write
        edge = self.poller.edge_triggered
        stats = self.stats
        next_tick = self.now + 1.0
        while turns:
            turns -= 1
            timeout = min(next_tick, self.deadline) - self.now
            events = poll(timeout if timeout > 0 else 0)
            now = self.now = time.monotonic()
            echoed = 0
            for fd, ev in events:
                conn = conns.get(fd)
                if conn is None:
                    self._control(fd)
                    continue
                if conn.out is None and conn.state == OPEN and ev & READ_EVENTS:
                    # The hot path: read, write it all back, done.
                    conn.last = now
                    while True:
                        try:
                            data = read(fd, READ_SIZE)
                        except BlockingIOError:
                            break
                        except OSError:
                            self._close(conn)
                            break
                        if not data:
                            self._client_eof(conn)
                            break
                        try:
                            n = write(fd, data)
                        except BlockingIOError:
                            n = 0
                        except OSError:
                            self._close(conn)
                            break
                        echoed += n
                        if n != len(data):
                            self._owe(conn, data[n:])
                            if fd in conns:
                                self._read_more(conn)
                            break
                        if not edge or (len(data) < READ_SIZE and not ev & RDHUP):
                            break
                    continue
                self._slow_event(conn, ev)
            stats.bytes_echoed += echoed
            if now >= next_tick:
                next_tick = now + 1.0
                tick(self, now)
            if (self.stopping or self.shutdown is not None and self.shutdown.requested) and done(self, now):
                break
        else:
            return  # the turns asked for are done
        self._finish()

    # -- slow paths -----------------------------------------------------------

    def _control(self, fd: int) -> None:
        if self.listener is not None and fd == self.listener.fileno():
            if not self.stopping:
                self._accept()
        elif fd == self.inbox_fd:
            assert self.receive is not None
            fds = self.receive()
            if isinstance(fds, float):  # stop by this time (the acceptor's deadline)
                self.poller.remove(fd)
                self.inbox_fd = None
                if not self.stopping:
                    self._begin_stop(fds)
                return
            for new in fds:
                if self.stopping:
                    os.close(new)
                else:
                    self.add(new)
        elif self.shutdown is not None and fd == self.shutdown.wake_fd:
            self.shutdown.drain()  # the loop reads shutdown.requested after the events

    def _slow_event(self, conn: Conn, ev: int) -> None:
        if ev & OUT and not self._flush(conn):
            return
        if ev & ERR and conn.out is not None and not self._flush(conn):
            # Reset or hung up while owing bytes to a paused reader: the read
            # below would not happen (paused), so the write tells us it is gone.
            return
        if ev & READ_EVENTS:
            conn.last = self.now
            self._read_more(conn)

    def _read_more(self, conn: Conn) -> None:
        """Read what the state allows: echo it (OPEN) or discard it (DRAINING)."""
        fd = conn.fd
        while True:
            if conn.state == OPEN:
                if conn.out is not None and conn.out.paused:
                    return
            elif conn.state != DRAINING:
                return  # STOPPING or HALF_CLOSED: read nothing more
            try:
                data = os.read(fd, READ_SIZE)
            except BlockingIOError:
                return
            except OSError:
                self._close(conn)
                return
            if not data:
                self._client_eof(conn)
                return
            if conn.state == OPEN:
                self._owe(conn, data)
                if conn.fd not in self.conns:
                    return
            if not self.poller.edge_triggered:
                return

    def _owe(self, conn: Conn, data: bytes) -> None:
        """Queue bytes the socket did not take and try to send them.

        The caller goes on reading (or not) by itself, so no resume here.
        """
        if conn.out is None:
            conn.out = EchoBuffer(self.config.high_watermark, self.config.low_watermark)
        conn.out.push(data)
        self._flush(conn, resume=False)

    def _flush(self, conn: Conn, resume: bool = True) -> bool:
        """Write what is owed; False if the connection was closed.

        With ``resume``, a connection that may read again after being paused
        reads at once: under edge triggering the edge that brought its unread
        bytes is spent.
        """
        out = conn.out
        if out is not None:
            was_paused = out.paused
            try:
                n = os.write(conn.fd, out.pending())
            except BlockingIOError:
                n = 0
            except OSError:
                self._close(conn)
                return False
            if n:
                out.consume(n)
                self.stats.bytes_echoed += n
                conn.last = self.now
            if not len(out):
                conn.out = None  # idle connections keep no buffer
            if conn.state == OPEN:
                self._interest(conn)
                if resume and was_paused and self.poller.edge_triggered and (conn.out is None or not out.paused):
                    self._read_more(conn)
                    return conn.fd in self.conns
                return True
            if conn.out is not None:
                self._interest(conn)
                return True
        if conn.state == HALF_CLOSED:
            self._close(conn)
            return False
        if conn.state == STOPPING:
            self._shut_write(conn)
            return conn.fd in self.conns
        self._interest(conn)
        return True

    def _interest(self, conn: Conn) -> None:
        out = conn.out
        write = out is not None and len(out) > 0
        if conn.state == OPEN:
            read = out is None or not out.paused
        else:
            read = conn.state == DRAINING
        if read != conn.reading or write != conn.writing:
            conn.reading, conn.writing = read, write
            self.poller.interest(conn.fd, read, write)

    def _client_eof(self, conn: Conn) -> None:
        if conn.state in (OPEN, STOPPING) and conn.out is not None and len(conn.out):
            conn.state = HALF_CLOSED  # every byte back first, then EOF
            self._interest(conn)
        else:
            self._close(conn)

    def _shut_write(self, conn: Conn) -> None:
        """Everything owed is sent: send EOF, then discard until the client's EOF.

        Closing instead would make the kernel answer the client's next bytes
        with a reset, and a reset destroys echoes still unread on its side.
        """
        if not shut_write(conn.fd):
            self._close(conn)
            return
        conn.state = DRAINING
        self._interest(conn)
        self._read_more(conn)

    def _close(self, conn: Conn) -> None:
        if self.conns.pop(conn.fd, None) is None:
            return
        self.poller.remove(conn.fd)
        closed(conn.fd, self.stats, self.on_close)


    def _begin_stop(self, deadline: float) -> None:
        """Stop accepting and reading; owed echoes go out, then EOF, then drain."""
        self.stopping = True
        self.deadline = deadline
        if self.listener is not None:
            self.poller.remove(self.listener.fileno())
            # Closing the listener makes new connects fail at once (RST)
            # instead of waiting in a backlog nobody will accept from.
            self.listener.close()
            self.listener = None
        for conn in list(self.conns.values()):
            if conn.state == OPEN:
                conn.state = STOPPING
                if conn.out is None or not len(conn.out):
                    self._shut_write(conn)
                else:
                    self._interest(conn)

    def _finish(self) -> None:
        finish(self)
        self.poller.close()
