"""One load process: a paced connect ramp on epoll, then closed- or open-loop echoes.

Why it looks the way it does:

* Per-connection state lives in flat lists indexed by the socket's descriptor
  number (small integers, below RLIMIT_NOFILE), not in objects: the hot path is a
  handful of list subscripts per message. Connections own a slot range in one
  preallocated ``array('q')`` of latencies, so a byte-exact echo costs one
  ``os.read``, one ``==`` against the message, one clock read, one store and one
  ``os.write``. Measured here (CPU time per call on a loopback TCP socket):
  ``os.read(fd, 15)`` ~1.09 us, ``sock.recv_into(buf)`` ~1.22 us,
  ``os.readv(fd, [buf])`` ~1.36 us; ``os.write`` ~0.1 us cheaper than ``send``.
  The 15-byte bytes object os.read returns comes from pymalloc's free lists and
  its ``==`` is a memcmp, cheaper than the buffer-protocol compare of a
  preallocated bytearray; partial echoes are assembled in a preallocated
  per-connection bytearray.
* epoll is level-triggered with EPOLLIN only for established sockets. Anything
  else (connect completion = EPOLLOUT, EPOLLERR/EPOLLHUP, a short read, a short
  send) leaves the fast path for ``_slow_event``/``_odd_read``, which handle the
  general case. After a partial echo the connection reads only the missing bytes
  (``want[fd]``), so a server can never slip extra bytes past the check.
* Non-blocking connects (EINPROGRESS, completion reported as EPOLLOUT and
  SO_ERROR) are started by the periodic tick, paced by ``connect_rate`` and capped
  in flight, so a burst of SYNs does not overflow the server's accept queue.
* With many connections the kernel's ephemeral ports toward one destination run
  out (~28k per source address); binding to ``(source, 0)`` with
  IP_BIND_ADDRESS_NO_PORT lets the kernel pick the port at connect() time, per
  destination, instead of reserving one per source address at bind() time.
* Timeouts are checked by a scan every quarter second, not per message.
* Open loop (wrk2-style): sends follow a fixed timetable and every round trip is
  measured from its scheduled send time, so a stalled server cannot hide behind
  the client waiting for it (coordinated omission). Messages are pipelined on
  each connection; echoes come back in order, so the m-th echo belongs to the
  m-th scheduled send.
"""

from __future__ import annotations

import errno
import gc
import os
import resource
import select
import socket
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from c10k.load.results import ProcessResult

__all__ = ["EngineSpec", "run_engine", "IP_BIND_ADDRESS_NO_PORT"]

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

_EPOLLIN, _EPOLLOUT = select.EPOLLIN, select.EPOLLOUT
_TICK_NS = 100_000_000  # connect pacing and bookkeeping every 0.1 s
_SCAN_NS = 250_000_000  # timeout scan and progress every 0.25 s
_FREE, _CONNECTING, _CONNECTED, _RUNNING = 0, 1, 2, 3


@dataclass
class EngineSpec:
    """What one load process does.

    Connection ``j`` of this process is connection ``first + j`` of the run; its
    source address is ``sources[(first + j) % len(sources)]`` when sources are given.
    """

    address: tuple  # sockaddr for connect()
    family: int
    message: bytes
    count: int
    first: int
    connections: int
    sources: Sequence[str] = ()
    connect_rate: float = 0.0  # connects per second for this process; 0 = unpaced
    max_connecting: int = 512  # connects in flight at once
    timeout: float = 10.0  # connect timeout, and longest wait for an echo
    barrier: bool = True
    rate: float = 0.0  # open loop: messages per second for this process; 0 = closed loop
    duration: float = 0.0  # open loop: seconds of sending
    index: int = 0


def _reason(exc: BaseException | int) -> str:
    code = exc if isinstance(exc, int) else getattr(exc, "errno", None)
    if code is None:
        return type(exc).__name__
    return errno.errorcode.get(code, f"errno{code}")


class _Engine:
    def __init__(self, spec: EngineSpec, on_connected: Callable[[int, int], None] | None,
                 on_progress: Callable[[int, int, int, int], None] | None) -> None:
        if not spec.message and spec.count:
            raise ValueError("the message must not be empty")
        self.spec = spec
        self.on_connected = on_connected
        self.on_progress = on_progress
        self.msg = bytes(spec.message)
        self.ml = len(self.msg)
        n = spec.connections
        size = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        size = size if 0 < size < 1 << 22 else 1 << 20
        self.size = size
        # per descriptor
        self.sock: list[socket.socket | None] = [None] * size
        self.conn = [-1] * size
        self.state = bytearray(size)
        self.t0 = [0] * size  # closed: send time of the outstanding message; connecting: connect start
        self.pos = [0] * size  # closed: next latency slot
        self.end = [0] * size  # closed: one past the last latency slot
        # os.read(fd, want[fd]) asks for exactly what the connection is owed: the whole
        # echo, the rest of it after a partial read (so the fast path's == can only match
        # a complete echo), or 0 before the first send (so any event leaves the fast path).
        self.want = [0] * size
        self.partial: dict[int, int] = {}  # fd -> bytes of the current echo already received
        self.pbuf: dict[int, bytearray] = {}
        self.outq: dict[int, bytes] = {}  # fd -> bytes still to send (the send buffer was full)
        self.connecting: dict[int, int] = {}  # fd -> connect start ns
        self.running: dict[int, int] = {}  # fd -> local connection
        self.established_fds: list[int] = []
        # per connection
        self.connect_us = np.full(n, np.nan)
        self.echoed = np.zeros(n, np.int64)
        self.sent = np.zeros(n, np.int64)
        self.errors = [""] * n
        self.sources = [""] * n
        self.rbuf = bytearray(max(self.ml, 1))
        self.lat = array("q", [0]) * (n * spec.count) if not spec.rate else array("q")
        self.sample_conn = array("i")
        # counters
        self.next_connect = 0  # local connection to start next
        self.connect_due = 0  # ns when the next paced connect may start
        self.open = 0
        self.peak_open = 0
        self.established = 0
        self.completed = 0
        self.failed = 0
        self.mismatched = 0
        self.extra_rx = 0  # bytes received that were not part of a byte-exact echo
        self.unsent_bytes = 0
        self.connect_start_ns = 0
        self.connect_end_ns = 0
        self.message_start_ns = 0
        self.message_end_ns = 0
        self.next_tick = 0
        self.next_scan = 0
        self.sending = not spec.barrier  # messages may flow
        self.open_loop = spec.rate > 0
        self.interrupted = False
        self.cpu_start = self.cpu_end = 0.0  # process CPU time (user + system) around the message phase
        self.ep = select.epoll(min(n, 65536) or 1)
        # open loop
        self.progress_ns = [0] * size if self.open_loop else []
        self.bigbuf = bytearray(1 << 16 if self.open_loop else 0)
        self.bigview = memoryview(self.bigbuf)
        self.slot: dict[int, int] = {}
        self.ne = 0
        self.period_ns = 0.0
        self.open_t0 = 0
        self.sends_done = False

    # -- bookkeeping ------------------------------------------------------------------

    def _echoed_total(self) -> int:
        if self.open_loop:
            return len(self.lat)
        return int(self.echoed.sum()) + sum(self.pos[fd] - self.spec.count * self.conn[fd] for fd in self.running)

    def _close(self, fd: int) -> None:
        s = self.sock[fd]
        self.sock[fd] = None
        self.want[fd] = 0
        self.state[fd] = _FREE
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

    def _settle(self, fd: int, j: int) -> None:
        """Record a closed-loop connection's echo count before it closes."""
        if not self.open_loop and self.state[fd] == _RUNNING:
            self.echoed[j] = self.pos[fd] - self.spec.count * j

    def _fail(self, fd: int, reason: str, outstanding: bool = True) -> None:
        j = self.conn[fd]
        if not self.errors[j]:
            self.errors[j] = reason
            self.failed += 1
        if self.state[fd] == _RUNNING and not self.open_loop:
            self._settle(fd, j)
            self.sent[j] = self.echoed[j] + (1 if outstanding else 0)
        self.extra_rx += self.partial.get(fd, 0)
        self._close(fd)

    def _finish(self, fd: int) -> None:
        j = self.conn[fd]
        self._settle(fd, j)
        if not self.open_loop:
            self.sent[j] = self.spec.count
        self.completed += 1
        self._close(fd)

    # -- connecting -------------------------------------------------------------------

    def _start_connects(self, now: int) -> None:
        spec = self.spec
        rate = spec.connect_rate
        while self.next_connect < spec.connections and len(self.connecting) < spec.max_connecting:
            if rate > 0:
                if now < self.connect_due:
                    return
                self.connect_due = max(self.connect_due, now - _TICK_NS) + int(1e9 / rate)
            j = self.next_connect
            self.next_connect += 1
            self._connect(j)

    def _connect(self, j: int) -> None:
        spec = self.spec
        if not self.connect_start_ns:
            self.connect_start_ns = time.monotonic_ns()
        try:
            s = socket.socket(spec.family, socket.SOCK_STREAM)
        except OSError as exc:
            self.errors[j] = _reason(exc)
            self.failed += 1
            return
        fd = s.fileno()
        self.sock[fd] = s
        self.conn[fd] = j
        self.state[fd] = _CONNECTING
        self.open += 1
        if self.open > self.peak_open:
            self.peak_open = self.open
        try:
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if spec.sources:
                s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                s.bind((spec.sources[(spec.first + j) % len(spec.sources)], 0))
            err = s.connect_ex(spec.address)
        except OSError as exc:
            self._fail(fd, _reason(exc))
            return
        if err not in (0, errno.EINPROGRESS):
            self._fail(fd, _reason(err))
            return
        self.connecting[fd] = time.monotonic_ns()
        self.ep.register(fd, _EPOLLOUT)

    def _connected(self, fd: int) -> None:
        s = self.sock[fd]
        assert s is not None
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._fail(fd, _reason(err))
            return
        now = time.monotonic_ns()
        j = self.conn[fd]
        started = self.connecting.pop(fd)
        self.connect_us[j] = (now - started) / 1000
        self.connect_end_ns = now
        try:
            host, port = s.getsockname()[:2]
            self.sources[j] = f"{host}:{port}"
        except OSError:
            pass
        self.established += 1
        self.state[fd] = _CONNECTED
        self.ep.modify(fd, _EPOLLIN)
        self.established_fds.append(fd)
        if self.sending and not self.open_loop:
            self._begin(fd, now)

    # -- closed loop ------------------------------------------------------------------

    def _begin(self, fd: int, now: int) -> None:
        """Start a closed-loop connection: claim its latency slots, send the first message."""
        j = self.conn[fd]
        count = self.spec.count
        self.state[fd] = _RUNNING
        self.running[fd] = j
        self.pos[fd] = base = j * count
        self.want[fd] = self.ml
        self.end[fd] = base + count
        if not self.message_start_ns:
            self.message_start_ns = now
        if count == 0:
            self._finish(fd)
            return
        self.t0[fd] = now
        self._send(fd, self.msg)

    def _send(self, fd: int, data: bytes) -> None:
        if fd in self.outq:
            self.outq[fd] += data
            return
        try:
            n = self.sock[fd].send(data)  # type: ignore[union-attr]
        except BlockingIOError:
            n = 0
        except OSError as exc:
            self._fail(fd, _reason(exc), outstanding=False)
            return
        if n != len(data):
            self._queue(fd, data[n:])

    def _queue(self, fd: int, rest: bytes) -> None:
        """The send buffer is full: keep the rest and wait for EPOLLOUT."""
        self.outq[fd] = rest
        self.ep.modify(fd, _EPOLLIN | _EPOLLOUT)

    def _flush(self, fd: int) -> None:
        data = self.outq.pop(fd)
        try:
            n = self.sock[fd].send(data)  # type: ignore[union-attr]
        except BlockingIOError:
            n = 0
        except OSError as exc:
            self.outq[fd] = data
            self._fail(fd, _reason(exc))
            return
        if n != len(data):
            self.outq[fd] = data[n:]
        else:
            self.ep.modify(fd, _EPOLLIN)

    def _slow_event(self, fd: int, ev: int) -> None:
        st = self.state[fd]
        if st == _CONNECTING:
            self._connected(fd)
            return
        if st == _FREE:
            return
        if ev & _EPOLLOUT and fd in self.outq:
            self._flush(fd)
            if self.state[fd] == _FREE:
                return
        if ev & (_EPOLLIN | select.EPOLLERR | select.EPOLLHUP):
            if st == _CONNECTED:
                self._idle_read(fd)
            elif self.open_loop:
                self._open_read(fd)
            else:
                try:
                    data = os.read(fd, self.want[fd])
                except BlockingIOError:
                    return
                except OSError as exc:
                    self._fail(fd, _reason(exc))
                    return
                self._odd_read(fd, data)

    def _idle_read(self, fd: int) -> None:
        """Data or an error on a connection that has not sent anything yet."""
        try:
            n = self.sock[fd].recv_into(self.rbuf)  # type: ignore[union-attr]
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(fd, _reason(exc), outstanding=False)
            return
        self._fail(fd, "closed_early" if n == 0 else "unexpected_data", outstanding=False)
        self.extra_rx += n

    def _odd_read(self, fd: int, data: bytes) -> None:
        """A read that was not one whole byte-exact echo: partial, mismatched or EOF."""
        if self.state[fd] != _RUNNING:
            if self.state[fd] == _CONNECTED:
                self._idle_read(fd)
            return
        n = len(data)
        if n == 0:
            self._fail(fd, "closed_early")
            return
        ml = self.ml
        got = self.partial.get(fd)
        if got is None:
            if n == ml:  # whole but different
                self._mismatch(fd)
                return
            buf = self.pbuf[fd] = bytearray(ml)
            buf[:n] = data
            self.partial[fd] = n
            self.want[fd] = ml - n
            return
        self.pbuf[fd][got:got + n] = data
        got += n
        if got < ml:
            self.partial[fd] = got
            self.want[fd] = ml - got
            return
        del self.partial[fd]
        buf = self.pbuf.pop(fd)
        self.want[fd] = ml
        if buf != self.msg:
            self._mismatch(fd)
            return
        t = time.monotonic_ns()
        if t - self.t0[fd] > self.spec.timeout * 1e9:
            self._late(fd, ml)
            return
        i = self.pos[fd]
        self.lat[i] = t - self.t0[fd]
        i += 1
        self.pos[fd] = i
        if i != self.end[fd]:
            self.t0[fd] = t
            self._send(fd, self.msg)
        else:
            self._finish(fd)

    def _late(self, fd: int, received: int) -> None:
        """Bytes that arrived after --timeout: a timeout, as if the scan had seen it first."""
        self.extra_rx += received
        self._fail(fd, "timeout")

    def _mismatch(self, fd: int) -> None:
        self.mismatched += 1
        self.extra_rx += self.ml
        self.partial.pop(fd, None)
        self._fail(fd, "mismatch", outstanding=True)

    def _run_closed(self) -> None:
        poll = self.ep.poll
        want, t0, pos, end = self.want, self.t0, self.pos, self.end
        msg, ml, lat = self.msg, self.ml, self.lat
        now, read, write = time.monotonic_ns, os.read, os.write
        slow, odd, queue, finish, tick = self._slow_event, self._odd_read, self._queue, self._finish, self._tick
        late, limit = self._late, int(self.spec.timeout * 1e9)
        wait = 0.0
        while self.busy:
            for fd, ev in poll(wait):
                if ev != 1:  # EPOLLIN alone is the fast path
                    slow(fd, ev)
                    continue
                try:
                    data = read(fd, want[fd])
                except BlockingIOError:
                    continue
                except OSError as exc:
                    self._fail(fd, _reason(exc))
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
                        self._fail(fd, _reason(exc), outstanding=False)
                        continue
                    if k != ml:
                        queue(fd, msg[k:])
                else:
                    finish(fd)
            wait = tick()

    # -- open loop --------------------------------------------------------------------

    def _open_read(self, fd: int) -> None:
        s = self.sock[fd]
        assert s is not None
        try:
            n = s.recv_into(self.bigbuf)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(fd, _reason(exc))
            return
        if n == 0:
            self._fail(fd, "closed_early")
            return
        t = time.monotonic_ns()
        ml, msg, j = self.ml, self.msg, self.conn[fd]
        if self.sent[j] > self.echoed[j] and t - self.progress_ns[fd] > self.spec.timeout * 1e9:
            self._late(fd, n)
            return
        got = self.partial.get(fd, 0)
        data = bytes(self.bigview[:n])
        if got:
            data = bytes(self.pbuf[fd][:got]) + data
        off = 0
        m = int(self.echoed[j])
        slot, ne, period, t0 = self.slot[fd], self.ne, self.period_ns, self.open_t0
        sent = int(self.sent[j])
        while off + ml <= len(data):
            if m >= sent:
                self.extra_rx += len(data) - off
                self._fail(fd, "unexpected_data")
                return
            if data[off:off + ml] != msg:
                self.echoed[j] = m
                self._mismatch(fd)
                return
            self.lat.append(t - (t0 + int((m * ne + slot) * period)))
            self.sample_conn.append(j)
            m += 1
            off += ml
        self.echoed[j] = m
        self.progress_ns[fd] = t
        if m == sent and self.sends_done:
            self._finish(fd)
            return
        rest = len(data) - off
        if rest:
            buf = self.pbuf.get(fd)
            if buf is None:
                buf = self.pbuf[fd] = bytearray(ml)
            buf[:rest] = data[off:]
            self.partial[fd] = rest
        else:
            self.partial.pop(fd, None)

    def _run_open(self) -> None:
        spec = self.spec
        # connections still open at the barrier (a descriptor closed early may be listed twice)
        fds = [fd for fd in dict.fromkeys(self.established_fds) if self.state[fd] == _CONNECTED]
        self.ne = ne = len(fds)
        self.slot = {fd: k for k, fd in enumerate(fds)}
        total = int(round(spec.rate * spec.duration)) if ne else 0
        self.period_ns = period = 1e9 / spec.rate
        start = time.monotonic_ns()
        self.open_t0 = start
        self.message_start_ns = start
        for fd in fds:
            self.state[fd] = _RUNNING
            self.running[fd] = self.conn[fd]
            self.progress_ns[fd] = start
        seq = 0
        poll, msg, now = self.ep.poll, self.msg, time.monotonic_ns
        sent = self.sent
        slow = self._slow_event
        while True:
            t = now()
            while seq < total and start + int(seq * period) <= t:
                fd = fds[seq % ne]
                seq += 1
                if self.state[fd] != _RUNNING:
                    continue
                j = self.conn[fd]
                if sent[j] == self.echoed[j]:
                    self.progress_ns[fd] = t  # the clock for a timeout starts at the first outstanding send
                sent[j] += 1
                self._send(fd, msg)
            if seq >= total:
                if not self.sends_done:  # from now on each connection ends with its last echo
                    self.sends_done = True
                    for fd in [fd for fd, j in self.running.items() if sent[j] == self.echoed[j]]:
                        self._finish(fd)
                if not self.running:
                    break
                wait = 0.05
            else:
                wait = max(0.0, (start + int(seq * period) - now()) / 1e9)
            for fd, ev in poll(min(wait, 0.05)):
                slow(fd, ev)
            self._tick()

    # -- time -------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        if self.sending:
            return bool(self.running or self.connecting or self.next_connect < self.spec.connections)
        return bool(self.connecting or self.next_connect < self.spec.connections)

    def _tick(self) -> float:
        """Periodic work; returns how long the next poll may block (seconds)."""
        now = time.monotonic_ns()
        if self.next_connect < self.spec.connections:
            self._start_connects(now)
        if now >= self.next_tick:
            self.next_tick = now + _TICK_NS
            if now >= self.next_scan:
                self.next_scan = now + _SCAN_NS
                self._scan_timeouts(now)
                if self.on_progress is not None:
                    self.on_progress(self.open, self.established, self._echoed_total(), self.failed)
        if self.next_connect < self.spec.connections and len(self.connecting) < self.spec.max_connecting:
            return max(0.0, (self.connect_due - now) / 1e9)
        return max(0.0, min(self.next_tick - now, _TICK_NS) / 1e9)

    def _scan_timeouts(self, now: int) -> None:
        limit = int(self.spec.timeout * 1e9)
        late = [fd for fd, t in self.connecting.items() if now - t > limit]
        for fd in late:
            self._fail(fd, "connect_timeout")
        if self.open_loop:
            prog, sent, echoed, conn = self.progress_ns, self.sent, self.echoed, self.conn
            late = [fd for fd in self.running
                    if sent[conn[fd]] > echoed[conn[fd]] and now - prog[fd] > limit]
        else:
            t0 = self.t0
            late = [fd for fd in self.running if now - t0[fd] > limit]
        for fd in late:
            self._fail(fd, "timeout")

    # -- the run ----------------------------------------------------------------------

    def run(self) -> ProcessResult:
        try:
            self._run()
        except KeyboardInterrupt:
            # Ctrl-C (or SIGINT from the parent) ends the run early but keeps what was measured.
            self.interrupted = True
            if not self.message_end_ns and self.message_start_ns:
                self.message_end_ns = time.monotonic_ns()
        finally:
            self.cpu_end = time.process_time()
            for fd in list(self.running) + list(self.connecting) + self.established_fds:
                if self.sock[fd] is not None:
                    self._fail(fd, "interrupted")
            for j in range(self.next_connect, self.spec.connections):
                self.errors[j] = "not_started"
            self.ep.close()
        return self._result()

    def _run(self) -> None:
        spec = self.spec
        self.cpu_start = time.process_time()
        self._start_connects(time.monotonic_ns())
        if spec.barrier or self.open_loop:
            self.sending = False
            self._run_closed()  # only connect events happen before the barrier
            if self.on_connected is not None:
                self.on_connected(self.established, self.failed)
            self.sending = True
            self.cpu_start = time.process_time()  # CPU of the message phase only
            if self.open_loop:
                self._run_open()
                self.message_end_ns = time.monotonic_ns()
                return
            now = time.monotonic_ns()
            self.message_start_ns = now
            for fd in list(self.established_fds):
                if self.state[fd] == _CONNECTED:
                    self._begin(fd, time.monotonic_ns())
            self._run_closed()
        else:
            self.sending = True
            self._run_closed()
            if self.on_connected is not None:
                self.on_connected(self.established, self.failed)
        self.message_end_ns = time.monotonic_ns()

    def _result(self) -> ProcessResult:
        spec = self.spec
        if self.open_loop:
            latency = np.frombuffer(self.lat, dtype=np.int64).copy()
            conn = np.frombuffer(self.sample_conn, dtype=np.int32).copy()
        else:
            counts = self.echoed
            total = int(counts.sum())
            conn = np.repeat(np.arange(spec.connections, dtype=np.int32), counts)
            starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
            idx = conn.astype(np.int64) * spec.count + (np.arange(total) - np.repeat(starts, counts))
            latency = np.frombuffer(self.lat, dtype=np.int64)[idx] if total else np.zeros(0, np.int64)
        echoed = int(self.echoed.sum())
        sent = int(self.sent.sum())
        counters = {
            "established": self.established, "completed": self.completed,
            "failed": spec.connections - self.completed, "peak_open": self.peak_open,
            "sent": sent, "echoed": echoed, "mismatched": self.mismatched,
            "bytes_sent": sent * self.ml - self.unsent_bytes, "bytes_echoed": echoed * self.ml + self.extra_rx,
            "connect_start_ns": self.connect_start_ns, "connect_end_ns": self.connect_end_ns,
            "message_start_ns": self.message_start_ns if self.established else 0,
            "message_end_ns": self.message_end_ns if self.established else 0,
            "message_bytes": self.ml,
            "interrupted": int(self.interrupted),
            "cpu_us": int((self.cpu_end - self.cpu_start) * 1e6),
        }
        return ProcessResult(
            index=spec.index, first=spec.first, latency_ns=latency, sample_conn=conn,
            connect_us=self.connect_us, echoed=self.echoed, sent=self.sent, errors=self.errors,
            sources=self.sources, counters=counters,
        )


def run_engine(spec: EngineSpec, *, on_connected: Callable[[int, int], None] | None = None,
               on_progress: Callable[[int, int, int, int], None] | None = None) -> ProcessResult:
    """Run one load process's share of the connections and return its raw results.

    Args:
        spec: the connections, message and mode for this process.
        on_connected: called once with (established, failed) when the connect phase
            is over and before the first message (the barrier); it may block.
        on_progress: called about every 0.25 s with (open, established, echoed, failed).

    Returns:
        A ProcessResult with every byte-exact round trip in nanoseconds.
    """
    # The hot loop allocates a tuple per epoll event, which keeps triggering the cyclic
    # GC (measured: ~6% of the interpreter's time); it creates no cycles, so pause it.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _Engine(spec, on_connected, on_progress).run()
    finally:
        if was_enabled:
            gc.enable()
