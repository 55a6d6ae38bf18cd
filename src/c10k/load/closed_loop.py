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

Bounded memory. Each connection's slots are its share of the sample budget
(``cap``: all ``count`` when every sample fits). When a connection fills its
slots with messages still to send, the hot path's "last slot" branch
(``_slots_full``, once per ``cap`` echoes) folds them into the process's
``LatencyHistogram`` and starts over at the first slot, so the hot path itself
is the same in both cases.
"""

from __future__ import annotations

import os
import time
from array import array

import numpy as np

from c10k.load.latency import LatencyHistogram
from c10k.load.phase import Phase, ProgressCallback
from c10k.load.ramp import ConnectRamp
from c10k.load.samples import connection_stats, sort_groups
from c10k.load.table import CONNECTED, RUNNING, ConnectionTable, reason

__all__ = ["ClosedLoop"]


class ClosedLoop(Phase):
    """``count`` round trips per connection, one outstanding at a time."""

    def __init__(self, table: ConnectionTable, ramp: ConnectRamp, on_progress: ProgressCallback | None,
                 count: int, sample_budget: int) -> None:
        super().__init__(table, ramp, on_progress)
        self.count = count
        n = table.connections
        #: slots per connection: every sample while they all fit the budget
        self.cap = cap = count if n * count * 8 <= sample_budget else max(1, sample_budget // 8 // n)
        size = table.size
        self.t0 = [0] * size  # send time of the outstanding message
        self.pos = [0] * size  # next latency slot
        self.end = [0] * size  # one past the last latency slot to fill before folding or finishing
        self.seen = [0] * n  # per connection: first slot the time series has not had yet
        self.folded = [0] * n  # per connection: echoes already folded into the histogram
        self.histogram: LatencyHistogram | None = None  # made by the first fold
        table.lat = array("q", [0]) * (n * cap)
        self.view = np.frombuffer(table.lat, dtype=np.int64) if n * cap else np.zeros(0, np.int64)
        table.settle = self._settle

    def _settle(self, fd: int, j: int, outstanding: bool) -> None:
        """Record a running connection's echo count before it closes."""
        t = self.t
        t.echoed[j] = self.folded[j] + self.pos[fd] - self.cap * j
        t.sent[j] = t.echoed[j] + (1 if outstanding else 0)
        t.seconds.add(self.view[self.seen[j]:self.pos[fd]])
        self.seen[j] = self.pos[fd]

    def echoed_total(self) -> int:
        t, pos, cap, folded = self.t, self.pos, self.cap, self.folded
        return int(t.echoed.sum()) + sum(folded[j] + pos[fd] - cap * j for fd, j in t.running.items())

    def drain(self) -> None:
        pos, seen, view = self.pos, self.seen, self.view
        parts = []
        for fd, j in self.t.running.items():
            i = pos[fd]
            if i > seen[j]:
                parts.append(view[seen[j]:i])
                seen[j] = i
        if parts:
            self.t.seconds.add(np.concatenate(parts))

    def _slots_full(self, fd: int) -> None:
        """The connection's last slot was filled: finish it, or fold its slots and go on."""
        t = self.t
        j = t.conn[fd]
        base = j * self.cap
        done = self.folded[j] + self.pos[fd] - base
        if done >= self.count:
            t.finish(fd)
            return
        if self.histogram is None:
            self.histogram = LatencyHistogram(t.connections)
        i = self.pos[fd]
        t.seconds.add(self.view[self.seen[j]:i])
        self.histogram.add(self.view[base:i], j)
        self.folded[j] = done
        self.pos[fd] = self.seen[j] = base
        self.end[fd] = base + min(self.cap, self.count - done)
        self.t0[fd] = time.monotonic_ns()
        t.send(fd, t.msg)

    def fold_rest(self) -> None:
        """After the run, past the budget: fold what is still in the slots, a connection at a time."""
        assert self.histogram is not None
        for j, n in enumerate((np.asarray(self.t.echoed) - np.asarray(self.folded)).tolist()):
            if n:
                self.histogram.add(self.view[j * self.cap:j * self.cap + n], j)

    def exact_samples(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """After the run, within the budget: (every sample ascending, per-connection statistics).

        Each connection's samples are sorted and moved down to follow the
        previous one's, in place; then the whole is sorted in place: the result
        is a view of the slots, so the end of a run near the budget does not
        need the budget again for a copy.
        """
        counts = np.asarray(self.t.echoed, dtype=np.int64)
        view, cap, total = self.view, self.cap, 0
        for j, n in enumerate(counts.tolist()):
            if n and total != j * cap:
                view[total:total + n] = view[j * cap:j * cap + n]  # overlapping moves go left: safe
            total += n
        sort_groups(view[:total], counts)
        stats = connection_stats(view[:total], counts)
        view[:total].sort()
        return view[:total], stats

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
        self.pos[fd] = self.seen[j] = base = j * self.cap
        t.want[fd] = t.ml
        self.end[fd] = base + min(count, self.cap)
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
            if n == ml or data != t.msg[:n]:  # whole but different, or already different: no need to wait
                t.mismatch(fd, data)
                return
            buf = t.pbuf[fd] = bytearray(ml)
            buf[:n] = data
            t.partial[fd] = n
            t.want[fd] = ml - n
            return
        t.pbuf[fd][got:got + n] = data
        if data != t.msg[got:got + n]:
            t.mismatch(fd, bytes(t.pbuf[fd][:got + n]))
            return
        got += n
        if got < ml:
            t.partial[fd] = got
            t.want[fd] = ml - got
            return
        del t.partial[fd]
        buf = t.pbuf.pop(fd)
        t.want[fd] = ml
        if buf != t.msg:
            t.mismatch(fd, bytes(buf))
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
            self._slots_full(fd)

    def run(self) -> None:
        """Until every connection has finished or failed (and, without a barrier, the ramp is done)."""
        tab, ramp = self.t, self.ramp
        poll = tab.ep.poll
        want, t0, pos, end = tab.want, self.t0, self.pos, self.end
        msg, ml, lat, running = tab.msg, tab.ml, tab.lat, tab.running
        now, read, write = time.monotonic_ns, os.read, os.write
        slow, odd, queue, finish, tick = self._slow_event, self._odd_read, tab.queue, self._slots_full, self.tick
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
