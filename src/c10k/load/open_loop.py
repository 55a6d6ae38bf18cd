"""The open loop (wrk2-style): sends follow a fixed timetable, whatever the echoes do.

Every round trip is measured from its scheduled send time, so a stalled server
cannot hide behind the client waiting for it (coordinated omission). Messages
are pipelined on each connection; echoes come back in order, so the m-th echo
belongs to the m-th scheduled send. It starts after the barrier: every
connection is open before the first send.

The timeout scan (every 0.25 s) looks only at the connections that owe an
echo (``waiting``), not at every open one: at a million connections and a
steady rate almost all of them are idle, and a scan over every open
connection cost about 3 ms per 20,000 per scan in each load process (0.7 of a
core over 51 processes), growing with the open connections instead of the
messages.

Round trips are appended with their connection until the sample budget is
full, then folded (``sampled.py``). When the timetable ends, every connection
stays open until the run's last echo is in (or timed out); then all close.
"""

from __future__ import annotations

import time

from c10k.load.phase import ProgressCallback
from c10k.load.ramp import ConnectRamp
from c10k.load.sampled import SampledPhase
from c10k.load.table import CONNECTED, RUNNING, ConnectionTable, reason

__all__ = ["OpenLoop"]


class OpenLoop(SampledPhase):
    """``rate`` messages per second for ``duration`` seconds, round-robin over the connections."""

    def __init__(self, table: ConnectionTable, ramp: ConnectRamp, on_progress: ProgressCallback | None,
                 rate: float, duration: float, sample_budget: int) -> None:
        super().__init__(table, ramp, on_progress, sample_budget)
        self.rate = rate
        self.duration = duration
        self.progress_ns = [0] * table.size  # last echo, or the first outstanding send
        self.waiting: set[int] = set()  # fds owed an echo: the only ones the timeout scan looks at
        self.bigbuf = bytearray(1 << 16)
        self.bigview = memoryview(self.bigbuf)
        self.slot: dict[int, int] = {}  # fd -> its place in the round-robin
        self.ne = 0  # connections in the round-robin
        self.period_ns = 1e9 / rate
        self.start_ns = 0

    def scan_timeouts(self, now: int) -> None:
        self.ramp.scan_timeouts(now)
        t = self.t
        prog, sent, echoed, conn, limit = self.progress_ns, t.sent, t.echoed, t.conn, t.timeout_ns
        late = [fd for fd in self.waiting if now - prog[fd] > limit]
        for fd in late:
            self.waiting.discard(fd)
            if t.state[fd] == RUNNING and sent[conn[fd]] > echoed[conn[fd]]:
                t.fail(fd, "timeout")

    def _event(self, fd: int, ev: int) -> None:
        if self.ready_to_read(fd, ev):
            self._read(fd)

    def _read(self, fd: int) -> None:
        t = self.t
        s = t.sock[fd]
        assert s is not None
        try:
            n = s.recv_into(self.bigbuf)
        except BlockingIOError:
            return
        except OSError as exc:
            t.fail(fd, reason(exc))
            return
        if n == 0:
            t.fail(fd, "closed_early")
            return
        now = time.monotonic_ns()
        ml, msg, j = t.ml, t.msg, t.conn[fd]
        if t.sent[j] > t.echoed[j] and now - self.progress_ns[fd] > t.timeout_ns:
            t.late(fd, n)
            return
        got = t.partial.get(fd, 0)
        data = bytes(self.bigview[:n])
        if got:
            data = bytes(t.pbuf[fd][:got]) + data
        off = 0
        m = int(t.echoed[j])
        slot, ne, period, t0 = self.slot[fd], self.ne, self.period_ns, self.start_ns
        sent = int(t.sent[j])
        while off + ml <= len(data):
            if m >= sent:
                t.extra_rx += len(data) - off
                t.fail(fd, "unexpected_data")
                return
            if data[off:off + ml] != msg:
                t.echoed[j] = m
                t.mismatch(fd, data[off:off + ml])
                return
            t.lat.append(now - (t0 + int((m * ne + slot) * period)))
            self.sample_conn.append(j)
            m += 1
            off += ml
        t.echoed[j] = m
        if len(t.lat) >= self.cap:
            self.fold()
        self.progress_ns[fd] = now
        if m == sent:
            self.waiting.discard(fd)
        rest = len(data) - off
        if rest and data[off:] != msg[:rest]:  # already different: no need to wait for the rest
            t.mismatch(fd, data[off:])
            return
        if rest:
            buf = t.pbuf.get(fd)
            if buf is None:
                buf = t.pbuf[fd] = bytearray(ml)
            buf[:rest] = data[off:]
            t.partial[fd] = rest
        else:
            t.partial.pop(fd, None)

    def run(self) -> None:
        t = self.t
        # connections still open at the barrier (a descriptor closed early may be listed twice)
        fds = [fd for fd in dict.fromkeys(t.established_fds) if t.state[fd] == CONNECTED]
        self.ne = ne = len(fds)
        self.slot = {fd: k for k, fd in enumerate(fds)}
        total = int(round(self.rate * self.duration)) if ne else 0
        period = self.period_ns
        start = time.monotonic_ns()
        self.start_ns = start
        t.message_start_ns = start
        for fd in fds:
            t.state[fd] = RUNNING
            t.running[fd] = t.conn[fd]
            self.progress_ns[fd] = start
        seq = 0
        poll, msg, now = t.ep.poll, t.msg, time.monotonic_ns
        sent, echoed, state, conn = t.sent, t.echoed, t.state, t.conn
        event, waiting = self._event, self.waiting
        while True:
            clock = now()
            while seq < total and start + int(seq * period) <= clock:
                fd = fds[seq % ne]
                seq += 1
                if state[fd] != RUNNING:
                    continue
                j = conn[fd]
                if sent[j] == echoed[j]:
                    self.progress_ns[fd] = clock  # the clock for a timeout starts at the first outstanding send
                    waiting.add(fd)
                sent[j] += 1
                t.send(fd, msg)
            if seq >= total:
                for fd in [fd for fd in waiting if state[fd] != RUNNING]:  # failed while owed an echo
                    waiting.discard(fd)
                # Every connection stays open until the last echo of the run is in (or timed
                # out), then they all close: closing the idle ones while others still wait
                # would make the server spend their wait on a storm of closes (at a million,
                # in the machine's own namespace, thousands of last echoes timed out so).
                if not waiting:
                    for fd in list(t.running):
                        t.finish(fd)
                    break
                wait = 0.05
            else:
                wait = max(0.0, (start + int(seq * period) - now()) / 1e9)
            for fd, ev in poll(min(wait, 0.05)):
                event(fd, ev)
            self.tick()
