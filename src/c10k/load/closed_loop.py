"""The closed loop: each connection sends its message, waits for the echo, sends again.

Connections own a slot range in one preallocated ``array('q')`` of latencies,
so a byte-exact echo costs one ``os.read``, one ``==`` against the message, one
clock read, one store and one ``os.write``. Measured here (CPU time per call on
a loopback TCP socket): ``os.read(fd, 15)`` ~1.09 us, ``sock.recv_into(buf)``
~1.22 us, ``os.readv(fd, [buf])`` ~1.36 us; ``os.write`` ~0.1 us cheaper than
``send``. The 15-byte bytes object os.read returns comes from pymalloc's free
lists and its ``==`` is a memcmp, cheaper than the buffer-protocol compare of a
preallocated bytearray; partial echoes are assembled in a preallocated
per-connection bytearray.

epoll is level-triggered with EPOLLIN only for established sockets. Anything
else (connect completion = EPOLLOUT, EPOLLERR/EPOLLHUP, a short read, a short
send) leaves the fast path for ``_slow_event``/``_odd_read``, which handle the
general case. After a partial echo the connection reads only the missing bytes
(``want[fd]``), so a server can never slip extra bytes past the check.

Without the barrier the ramp is still connecting while messages flow: its
events come through ``_slow_event`` and each new connection starts at once.
"""

from __future__ import annotations

import os
import time
from array import array

from c10k.load.phase import Phase, ProgressCallback
from c10k.load.ramp import ConnectRamp
from c10k.load.table import CONNECTED, RUNNING, ConnectionTable, reason

__all__ = ["ClosedLoop"]


class ClosedLoop(Phase):
    """``count`` round trips per connection, one outstanding at a time."""

    def __init__(self, table: ConnectionTable, ramp: ConnectRamp, on_progress: ProgressCallback | None,
                 count: int) -> None:
        super().__init__(table, ramp, on_progress)
        self.count = count
        size = table.size
        self.t0 = [0] * size  # send time of the outstanding message
        self.pos = [0] * size  # next latency slot
        self.end = [0] * size  # one past the last latency slot
        table.lat = array("q", [0]) * (table.connections * count)
        table.settle = self._settle

    def _settle(self, fd: int, j: int, outstanding: bool) -> None:
        """Record a running connection's echo count before it closes."""
        t = self.t
        t.echoed[j] = self.pos[fd] - self.count * j
        t.sent[j] = t.echoed[j] + (1 if outstanding else 0)

    def echoed_total(self) -> int:
        t, pos, count = self.t, self.pos, self.count
        return int(t.echoed.sum()) + sum(pos[fd] - count * j for fd, j in t.running.items())

    def scan_timeouts(self, now: int) -> None:
        self.ramp.scan_timeouts(now)
        limit, t0 = self.t.timeout_ns, self.t0
        for fd in [fd for fd in self.t.running if now - t0[fd] > limit]:
            self.t.fail(fd, "timeout")

    def begin(self, fd: int, now: int) -> None:
        """Start a connection: claim its latency slots, send the first message."""
        t = self.t
        j = t.conn[fd]
        count = self.count
        t.state[fd] = RUNNING
        t.running[fd] = j
        self.pos[fd] = base = j * count
        t.want[fd] = t.ml
        self.end[fd] = base + count
        if not t.message_start_ns:
            t.message_start_ns = now
        if count == 0:
            t.finish(fd)
            return
        self.t0[fd] = now
        t.send(fd, t.msg)

    def begin_all(self) -> None:
        """At the barrier: start every connection still open."""
        t = self.t
        t.message_start_ns = time.monotonic_ns()
        for fd in list(t.established_fds):
            if t.state[fd] == CONNECTED:
                self.begin(fd, time.monotonic_ns())

    def _slow_event(self, fd: int, ev: int) -> None:
        if not self.ready_to_read(fd, ev):
            return
        t = self.t
        try:
            data = os.read(fd, t.want[fd])
        except BlockingIOError:
            return
        except OSError as exc:
            t.fail(fd, reason(exc))
            return
        self._odd_read(fd, data)

    def _odd_read(self, fd: int, data: bytes) -> None:
        """A read that was not one whole byte-exact echo: partial, mismatched or EOF."""
        t = self.t
        if t.state[fd] != RUNNING:
            if t.state[fd] == CONNECTED:
                self.ramp.idle_read(fd)
            return
        n = len(data)
        if n == 0:
            t.fail(fd, "closed_early")
            return
        ml = t.ml
        got = t.partial.get(fd)
        if got is None:
            if n == ml:  # whole but different
                t.mismatch(fd)
                return
            buf = t.pbuf[fd] = bytearray(ml)
            buf[:n] = data
            t.partial[fd] = n
            t.want[fd] = ml - n
            return
        t.pbuf[fd][got:got + n] = data
        got += n
        if got < ml:
            t.partial[fd] = got
            t.want[fd] = ml - got
            return
        del t.partial[fd]
        buf = t.pbuf.pop(fd)
        t.want[fd] = ml
        if buf != t.msg:
            t.mismatch(fd)
            return
        now = time.monotonic_ns()
        if now - self.t0[fd] > t.timeout_ns:
            t.late(fd, ml)
            return
        i = self.pos[fd]
        t.lat[i] = now - self.t0[fd]
        i += 1
        self.pos[fd] = i
        if i != self.end[fd]:
            self.t0[fd] = now
            t.send(fd, t.msg)
        else:
            t.finish(fd)

    def run(self) -> None:
        """Until every connection has finished or failed (and, without a barrier, the ramp is done)."""
        tab, ramp = self.t, self.ramp
        poll = tab.ep.poll
        want, t0, pos, end = tab.want, self.t0, self.pos, self.end
        msg, ml, lat, running = tab.msg, tab.ml, tab.lat, tab.running
        now, read, write = time.monotonic_ns, os.read, os.write
        slow, odd, queue, finish, tick = self._slow_event, self._odd_read, tab.queue, tab.finish, self.tick
        late, fail, limit = tab.late, tab.fail, tab.timeout_ns
        if ramp.pending:
            ramp.start(now())
        wait = 0.0
        while running or ramp.pending:
            for fd, ev in poll(wait):
                if ev != 1:  # EPOLLIN alone is the fast path
                    slow(fd, ev)
                    continue
                try:
                    data = read(fd, want[fd])
                except BlockingIOError:
                    continue
                except OSError as exc:
                    fail(fd, reason(exc))
                    continue
                if data != msg:
                    odd(fd, data)
                    continue
                t = now()
                d = t - t0[fd]
                if d > limit:  # the echo came, but after --timeout: the scan ticks too coarsely to catch it
                    late(fd, ml)
                    continue
                i = pos[fd]
                lat[i] = d
                i += 1
                pos[fd] = i
                if i != end[fd]:
                    t0[fd] = t
                    try:
                        k = write(fd, msg)
                    except BlockingIOError:
                        k = 0
                    except OSError as exc:
                        fail(fd, reason(exc), False)
                        continue
                    if k != ml:
                        queue(fd, msg[k:])
                else:
                    finish(fd)
            wait = tick()
