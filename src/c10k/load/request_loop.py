"""The general request/response loop: any expected reply, pipelining, churn, warm-up, a time bound.

Chosen by the engine only when the run has an ``Exchange`` (``exchange.py``);
the plain echo load keeps its fast paths (``closed_loop.py``, ``open_loop.py``).
Each running socket has a ``ReplyReader`` (``reply.py``) that frames and
judges its replies in order as bytes arrive, and a little state:

* a first message (``--first-message``) goes out alone on each new socket;
  requests follow once its reply is in;
* up to ``pipeline`` requests are in flight; each is sent as soon as there is
  room, or, with a rate, when its turn on the connection's timetable comes
  (its round trip is then timed from that turn, as in the open loop, so a slow
  server cannot hide behind the client waiting for it);
* with a lifetime the socket stops sending after so many requests or seconds,
  takes its last replies, closes and is replaced by a new connect (counted in
  ``reconnects``; the connection keeps its number and its counts);
* round trips sent before the warm-up ends are judged but not counted;
* with a duration, sending stops when it ends and each socket finishes once
  its last replies are in.
"""

from __future__ import annotations

import heapq
import os
import time

import numpy as np

from c10k.load.exchange import Exchange
from c10k.load.phase import ProgressCallback
from c10k.load.ramp import ConnectRamp
from c10k.load.reply import ReplyReader, ReplyRule
from c10k.load.request import Template
from c10k.load.sampled import SampledPhase
from c10k.load.table import RUNNING, ConnectionTable, reason

__all__ = ["RequestLoop"]

FIRST, WARM, MEASURED = 0, 1, 2  # what a reply owed is: the first message's, a warm-up one, a counted one
READ_SIZE = 1 << 16


class _Socket:
    """One running socket's conversation."""

    __slots__ = ("j", "reader", "sent", "born", "greeted", "closing", "waiting")

    def __init__(self, j: int, now: int, greeted: bool) -> None:
        self.j = j
        self.reader = ReplyReader()
        self.sent = 0  # requests sent on this socket (for --lifetime)
        self.born = now
        self.greeted = greeted  # the first message's reply is in (or there is none)
        self.closing = False  # its lifetime is over: no more requests
        self.waiting = False  # on the timetable, for its next turn


class RequestLoop(SampledPhase):
    """Requests and judged replies on every connection, until each is done or the duration ends."""

    reply_bytes: np.ndarray  # always kept: a reply's length is not the message's

    def __init__(self, table: ConnectionTable, ramp: ConnectRamp, on_progress: ProgressCallback | None, *,
                 exchange: Exchange, message: bytes, first: int, rate: float, duration: float,
                 sample_budget: int) -> None:
        super().__init__(table, ramp, on_progress, sample_budget)
        x = self.x = exchange
        self.template = x.message or Template(message)
        self.rule: ReplyRule = x.reply
        self.first_rule: ReplyRule = x.first_reply or x.reply
        self.first = first  # the run's number of local connection 0
        self.requests = x.requests
        self.pipeline = x.pipeline
        self.duration_ns = int(duration * 1e9)
        n = table.connections
        #: with a rate: ns between two requests of one connection, and each connection's next turn
        self.interval_ns = n * 1e9 / rate if rate > 0 else 0.0
        self.due = [0.0] * n
        self.timetable: list[tuple[float, int, int, _Socket]] = []  # (turn, tie, fd, socket) waiting for a turn
        self.ties = 0
        self.seq = [0] * n  # next {seq} of each connection, across its sockets
        self.reply_bytes = np.zeros(n, np.int64)  # bytes of counted correct replies
        self.socks: dict[int, _Socket] = {}
        self.started: set[int] = set()
        self.reconnects = 0
        self.warm_replies = 0
        self.received = 0  # every byte read in this phase
        self.sent_bytes = 0
        self.start_ns = self.warm_end = self.end_ns = 0
        self.connect_end = 0
        self.sends_done = False
        table.settle = lambda fd, j, outstanding: self._forget(fd)

    # -- bookkeeping for the engine -------------------------------------------------

    def byte_counts(self) -> tuple[int, int, int]:
        t = self.t
        return self.sent_bytes - t.unsent_bytes, int(self.reply_bytes.sum()), self.received

    def counters(self) -> dict[str, int]:
        return {"reconnects": self.reconnects, "warmup_replies": self.warm_replies}

    def scan_timeouts(self, now: int) -> None:
        self.ramp.scan_timeouts(now)
        limit = self.t.timeout_ns
        for fd, s in list(self.socks.items()):
            q = s.reader.queue
            if q and now - q[0][2][0] > limit:
                self._note(s, -1, q[0][1])
                self.t.fail(fd, "timeout")

    # -- the conversation -----------------------------------------------------------

    def _start_clock(self, now: int) -> None:
        self.start_ns = now
        self.warm_end = now + int(self.x.warmup_s * 1e9)
        self.end_ns = self.warm_end + self.duration_ns if self.duration_ns else 0
        self.t.message_start_ns = self.warm_end
        if self.interval_ns:
            n = self.t.connections
            self.due = [now + self.interval_ns * j / n for j in range(n)]

    def begin_all(self) -> None:
        """At the barrier: start every connection still open; later (re)connects start as they come."""
        t = self.t
        self._start_clock(time.monotonic_ns())
        self.ramp.on_established = self.begin
        for fd in list(dict.fromkeys(t.established_fds)):
            if t.sock[fd] is not None and t.state[fd] != RUNNING:
                self.begin(fd, time.monotonic_ns())

    def begin(self, fd: int, now: int) -> None:
        t = self.t
        if not self.start_ns:
            self._start_clock(now)
        j = t.conn[fd]
        if j in self.started:  # a reconnect after --lifetime: not a new connection
            t.established -= 1
            t.connect_end_ns = self.connect_end
            self.reconnects += 1
        else:
            self.started.add(j)
            self.connect_end = t.connect_end_ns
        if self.sends_done:
            t.finish(fd)
            return
        t.state[fd] = RUNNING
        t.running[fd] = j
        s = self.socks[fd] = _Socket(j, now, greeted=self.x.first_message is None)
        if self.x.first_message is not None:
            seq = self.seq[j]
            first = self.x.first_message.render(self.first + j, seq)
            s.reader.owe(self.first_rule, self.first_rule.known(first, self.first + j, seq), (now, FIRST))
            self._send(fd, first)
            return
        self._fill(fd, s, now)

    def _send(self, fd: int, data: bytes) -> None:
        self.sent_bytes += len(data)
        self.t.send(fd, data)

    def _fill(self, fd: int, s: _Socket, now: int) -> None:
        """Send what may be sent now; end or recycle the socket when it has nothing left to do."""
        if not s.greeted:
            return
        x, t, j, reader = self.x, self.t, s.j, s.reader
        if x.lifetime_s and now - s.born >= x.lifetime_s * 1e9:
            s.closing = True
        if x.lifetime_requests and s.sent >= x.lifetime_requests:
            s.closing = True
        batch = []
        conn = self.first + j
        while not (s.closing or self.sends_done) and reader.owed < self.pipeline:
            if self.interval_ns:
                turn = self.due[j]
                if turn > now:
                    self._wait_turn(fd, s, turn)
                    break
                self.due[j] = turn + self.interval_ns
                t0 = int(turn)
            else:
                t0 = now
            measured = t0 >= self.warm_end
            if measured and self.requests is not None and t.sent[j] >= self.requests:
                break
            seq = self.seq[j]
            self.seq[j] = seq + 1
            request = self.template.render(conn, seq)
            reader.owe(self.rule, self.rule.known(request, conn, seq), (t0, MEASURED if measured else WARM))
            if measured:
                t.sent[j] += 1
            s.sent += 1
            batch.append(request)
            if x.lifetime_requests and s.sent >= x.lifetime_requests:
                s.closing = True
        if batch:
            self._send(fd, b"".join(batch))
            if t.state[fd] != RUNNING:
                return
        if reader.owed:
            return
        if self.sends_done or self._all_sent(j):
            t.finish(fd)
        elif s.closing:
            self._recycle(fd, j)

    def _all_sent(self, j: int) -> bool:
        return self.requests is not None and int(self.t.sent[j]) >= self.requests

    def _wait_turn(self, fd: int, s: _Socket, turn: float) -> None:
        if not s.waiting:  # once: a reply that comes while it waits must not queue it again
            s.waiting = True
            self.ties += 1
            heapq.heappush(self.timetable, (turn, self.ties, fd, s))

    def _recycle(self, fd: int, j: int) -> None:
        """The socket's lifetime is over: close it and connect again, as the same connection."""
        self.socks.pop(fd, None)
        self.t.close(fd)
        self.ramp.reconnect(j)  # its completion calls begin() again (ramp.on_established)

    def _forget(self, fd: int) -> None:
        self.socks.pop(fd, None)

    def _note(self, s: _Socket, offset: int, expected: bytes | None) -> None:
        self.t.note_reply(s.j, offset, s.reader.buf, expected)

    def _event(self, fd: int, ev: int) -> None:
        if not self.ready_to_read(fd, ev):
            return
        s = self.socks.get(fd)
        t = self.t
        if s is None:
            return
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._note(s, -1, None)
            t.fail(fd, reason(exc))
            return
        if not data:
            q = s.reader.queue
            self._note(s, -1, q[0][1] if q else None)
            t.fail(fd, "closed_early")
            return
        self.received += len(data)
        reader = s.reader
        done = reader.feed(data)
        now = time.monotonic_ns()
        for (t0, kind), size in done:
            if now - t0 > t.timeout_ns:  # it came, but after --timeout: the scan ticks too coarsely to catch it
                t.fail(fd, "timeout")
                return
            if kind == MEASURED:
                j = s.j
                t.echoed[j] += 1
                self.reply_bytes[j] += size
                t.lat.append(now - t0)
                self.sample_conn.append(j)
            elif kind == WARM:
                self.warm_replies += 1
            else:
                s.greeted = True
        if len(t.lat) >= self.cap:
            self.fold()
        failure = reader.failure
        if failure is not None:
            t.note_reply(s.j, failure.offset, failure.got, failure.expected)
            if failure.reason == "mismatch":
                t.mismatched += 1
            t.fail(fd, failure.reason)
            return
        self._fill(fd, s, now)

    def _stop_sending(self) -> None:
        """The duration is over: no more requests; sockets with nothing owed finish now."""
        self.sends_done = True
        self.timetable.clear()
        for fd, s in list(self.socks.items()):
            if not s.reader.owed:
                self.t.finish(fd)

    def _turns(self, now: int) -> None:
        """Send the requests whose turn has come."""
        tt = self.timetable
        while tt and tt[0][0] <= now:
            _, _, fd, s = heapq.heappop(tt)
            s.waiting = False
            if self.socks.get(fd) is s:
                self._fill(fd, s, now)

    def run(self) -> None:
        t, ramp = self.t, self.ramp
        poll, event = t.ep.poll, self._event
        if ramp.pending:
            ramp.start(time.monotonic_ns())
        wait = 0.0
        while t.running or ramp.pending:
            for fd, ev in poll(wait):
                event(fd, ev)
            now = time.monotonic_ns()
            if self.end_ns and not self.sends_done and now >= self.end_ns:
                self._stop_sending()
            if self.timetable:
                self._turns(now)
            wait = self.tick()
            now = time.monotonic_ns()
            if self.end_ns and not self.sends_done:
                wait = min(wait, max(0.0, (self.end_ns - now) / 1e9))
            if self.timetable:
                wait = min(wait, max(0.0, (self.timetable[0][0] - now) / 1e9))
