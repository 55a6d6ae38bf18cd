"""What every phase of a load process shares: the periodic tick, and the connect phase.

A phase is a loop over epoll events. Between polls the tick starts paced
connects, scans for timeouts every quarter second (not per message), reports
progress and, at each second's boundary, drains the round trips recorded since
the last one into the time series (``timeseries.py``). The connect phase runs until every connection is open or
has failed: the barrier, after which the message phase (``closed_loop.py`` or
``open_loop.py``) begins.
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable

import numpy as np

from c10k.load.ramp import TICK_NS, ConnectRamp
from c10k.load.table import CONNECTED, CONNECTING, EPOLLIN, EPOLLOUT, RUNNING, ConnectionTable

__all__ = ["Phase", "ConnectPhase", "SCAN_NS"]

SCAN_NS = 250_000_000  # timeout scan and progress every 0.25 s
_READABLE = EPOLLIN | select.EPOLLERR | select.EPOLLHUP
#: (open, established, echoed, failed connections)
ProgressCallback = Callable[[int, int, int, int], None]


class Phase:
    """The periodic work between polls; subclasses add their own timeouts and echo count."""

    #: bytes of correct replies per connection when they are not ``echoed`` x the message
    #: length (the request loop's replies); None for the echo loops
    reply_bytes: np.ndarray | None = None

    def __init__(self, table: ConnectionTable, ramp: ConnectRamp, on_progress: ProgressCallback | None) -> None:
        self.t = table
        self.ramp = ramp
        self.on_progress = on_progress

    def scan_timeouts(self, now: int) -> None:
        self.ramp.scan_timeouts(now)

    def echoed_total(self) -> int:
        return 0

    def byte_counts(self) -> tuple[int, int, int]:
        """(sent, in correct replies, received) bytes of the message phase."""
        t = self.t
        ok = int(t.echoed.sum()) * t.ml
        return int(t.sent.sum()) * t.ml - t.unsent_bytes, ok, ok + t.extra_rx

    def counters(self) -> dict[str, int]:
        """The phase's own counters for the process's results."""
        return {}

    def drain(self) -> None:
        """Hand the round trips recorded since the last drain to the time series."""

    def close_seconds(self, now: int, *, final: bool = False) -> None:
        t = self.t
        self.drain()
        t.seconds.close(now, t.open, t.failed, final=final)

    def ready_to_read(self, fd: int, ev: int) -> bool:
        """An event off the fast path: hand connect events to the ramp, send what was queued;
        True when the connection is running and has something to read (data, EOF or an error)."""
        t = self.t
        st = t.state[fd]
        if st in (CONNECTING, CONNECTED):
            self.ramp.event(fd, ev)
            return False
        if st != RUNNING:
            return False
        if ev & EPOLLOUT and fd in t.outq:
            t.flush(fd)
            if t.state[fd] != RUNNING:
                return False
        return bool(ev & _READABLE)

    def tick(self) -> float:
        """Periodic work; returns how long the next poll may block (seconds)."""
        t, ramp = self.t, self.ramp
        now = time.monotonic_ns()
        if ramp.next < t.connections or ramp.retry:
            ramp.start(now)
        if now >= t.seconds.next_ns:
            self.close_seconds(now)
        if now >= t.next_tick:
            t.next_tick = now + TICK_NS
            if now >= t.next_scan:
                t.next_scan = now + SCAN_NS
                self.scan_timeouts(now)
                if self.on_progress is not None:
                    self.on_progress(t.open, t.established, self.echoed_total(), t.failed)
        wait = ramp.wait(now)
        if wait is not None:
            return wait
        return max(0.0, min(t.next_tick - now, t.seconds.next_ns - now, TICK_NS) / 1e9)


class ConnectPhase(Phase):
    """Until every connection is established or failed; nothing is sent."""

    def run(self) -> None:
        poll, event, ramp = self.t.ep.poll, self.ramp.event, self.ramp
        ramp.start(time.monotonic_ns())
        wait = 0.0
        while ramp.pending:
            for fd, ev in poll(wait):
                event(fd, ev)
            wait = self.tick()

    def settle(self, seconds: float) -> None:
        """Hold every connection open and silent for ``seconds`` after the barrier (``--settle``).

        A server that takes connections on more slowly than the kernel completes
        them (an acceptor handing sockets to busy workers) may still be taking
        them on when the last connect completes; messages sent then wait in
        socket buffers. A settle lets the run measure the server once it holds
        them. Events are still handled as at the barrier: a server that closes
        or writes first fails the connection as it would there.
        """
        poll, event = self.t.ep.poll, self.ramp.event
        end = time.monotonic_ns() + int(seconds * 1e9)
        wait = 0.0
        while (left := end - time.monotonic_ns()) > 0:
            for fd, ev in poll(min(wait, left / 1e9)):
                event(fd, ev)
            wait = self.tick()
