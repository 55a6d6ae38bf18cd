"""One load process: the connect ramp, then the closed or the open loop, on one epoll.

The phases share one ``ConnectionTable`` (flat per-descriptor lists, see
``table.py``) and one ``ConnectRamp`` (``ramp.py``):

* with the barrier (the default, and always in the open loop) the
  ``ConnectPhase`` (``phase.py``) opens every connection, ``on_connected`` lets
  the parent hold every process there, then the message phase runs;
* without it the ``ClosedLoop`` (``closed_loop.py``) starts each connection's
  messages as soon as it connects, while the ramp goes on.

The open loop is ``open_loop.py``. A run with an ``Exchange`` (expected
replies other than the echo, pipelining, churn...) uses the general
``RequestLoop`` (``request_loop.py``) instead of either. They all keep raw
samples up to the sample budget and fold the rest into a histogram
(``latency.py``); every phase bins the run into seconds (``timeseries.py``).
Ctrl-C (KeyboardInterrupt) in any phase ends the run and keeps what was measured.
"""

from __future__ import annotations

import gc
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from c10k.load.closed_loop import ClosedLoop
from c10k.load.exchange import Exchange
from c10k.load.open_loop import OpenLoop
from c10k.load.phase import ConnectPhase, ProgressCallback
from c10k.load.ramp import IP_BIND_ADDRESS_NO_PORT, ConnectRamp
from c10k.load.request_loop import RequestLoop
from c10k.load.results import ProcessResult
from c10k.load.samples import SortedSamples
from c10k.load.settings import DEFAULT_SAMPLE_BUDGET
from c10k.load.table import ConnectionTable
from c10k.load.timeseries import Second, SecondBins

__all__ = ["EngineSpec", "run_engine", "peak_rss_bytes", "IP_BIND_ADDRESS_NO_PORT"]


@dataclass
class EngineSpec:
    """What one load process does.

    Connection ``j`` of this process is connection ``first + j`` of the run; its
    source address is ``sources[(first + j) % len(sources)]`` when sources are given.
    """

    address: tuple | str  # sockaddr for connect(), or a unix socket's path
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
    settle: float = 0.0  # seconds every connection stays open and silent after the barrier
    rate: float = 0.0  # open loop: messages per second for this process; 0 = closed loop
    duration: float = 0.0  # open loop: seconds of sending
    index: int = 0
    sample_budget: int = DEFAULT_SAMPLE_BUDGET  # bytes of raw samples before folding into a histogram
    origin_ns: int = 0  # monotonic ns of the run's second 0, shared by every process (0: this engine's start)
    #: a general request/response run (expected replies, pipelining, churn...): the request loop
    #: instead of the echo fast paths; ``rate`` and ``duration`` then pace and bound it
    exchange: Exchange | None = None


class _Engine:
    def __init__(self, spec: EngineSpec, on_connected: Callable[[int, int], None] | None,
                 on_progress: ProgressCallback | None, on_second: Callable[[Second], None] | None) -> None:
        if not spec.message and spec.count:
            raise ValueError("the message must not be empty")
        self.spec = spec
        self.on_connected = on_connected
        self.table = t = ConnectionTable(spec.connections, spec.message, spec.timeout)
        t.seconds = SecondBins(spec.origin_ns or time.monotonic_ns(), on_second)
        self.ramp = ConnectRamp(t, address=spec.address, family=spec.family, first=spec.first,
                                sources=spec.sources, connect_rate=spec.connect_rate,
                                max_connecting=spec.max_connecting)
        self.connect_phase = ConnectPhase(t, self.ramp, on_progress)
        self.messages: ClosedLoop | OpenLoop | RequestLoop
        if spec.exchange is not None:
            self.messages = RequestLoop(t, self.ramp, on_progress, exchange=spec.exchange, message=spec.message,
                                        first=spec.first, rate=spec.rate, duration=spec.duration,
                                        sample_budget=spec.sample_budget)
        elif spec.rate > 0:
            self.messages = OpenLoop(t, self.ramp, on_progress, spec.rate, spec.duration, spec.sample_budget)
        else:
            self.messages = ClosedLoop(t, self.ramp, on_progress, spec.count, spec.sample_budget)
        self.interrupted = False
        self.cpu_start = self.cpu_end = 0.0  # process CPU time (user + system) around the message phase

    def run(self) -> ProcessResult:
        t = self.table
        try:
            self._run()
        except KeyboardInterrupt:
            # Ctrl-C (or SIGINT from the parent) ends the run early but keeps what was measured.
            self.interrupted = True
            if not t.message_end_ns and t.message_start_ns:
                t.message_end_ns = time.monotonic_ns()
        finally:
            self.cpu_end = time.process_time()
            for fd in t.open_fds():
                t.fail(fd, "interrupted")
            for j in [*range(self.ramp.next, self.spec.connections), *(j for j, _ in self.ramp.retry)]:
                t.fail_unopened(j, "not_started")
            t.ep.close()
            self.messages.close_seconds(time.monotonic_ns(), final=True)
        return self._result()

    def _run(self) -> None:
        self.cpu_start = time.process_time()
        messages = self.messages
        if self.spec.barrier or isinstance(messages, OpenLoop):
            self.connect_phase.run()
            if self.on_connected is not None:
                self.on_connected(self.table.established, self.table.failed)
            if self.spec.settle > 0:
                self.connect_phase.settle(self.spec.settle)
            self.cpu_start = time.process_time()  # CPU of the message phase only
            if not isinstance(messages, OpenLoop):
                messages.begin_all()
            messages.run()
        else:
            self.ramp.on_established = messages.begin
            messages.run()
            if self.on_connected is not None:
                self.on_connected(self.table.established, self.table.failed)
        self.table.message_end_ns = time.monotonic_ns()

    def _result(self) -> ProcessResult:
        spec, t = self.spec, self.table
        messages = self.messages
        exact = messages.exact_samples() if messages.histogram is None else None
        if exact is None:  # past the budget: the rest goes the same way
            messages.fold_rest()
            assert messages.histogram is not None
            samples, stats = SortedSamples.empty(), messages.histogram.connection_stats()
        else:
            samples, stats = SortedSamples(exact[0]), exact[1]
        echoed = int(t.echoed.sum())
        sent = int(t.sent.sum())
        bytes_sent, bytes_echoed, bytes_received = self.messages.byte_counts()
        counters = {
            "established": t.established, "completed": t.completed,
            "failed": t.failed, "peak_open": t.peak_open,
            "sent": sent, "echoed": echoed, "mismatched": t.mismatched,
            "bytes_sent": bytes_sent, "bytes_echoed": bytes_echoed, "bytes_received": bytes_received,
            "connect_start_ns": t.connect_start_ns, "connect_end_ns": t.connect_end_ns,
            "message_start_ns": t.message_start_ns if t.established else 0,
            "message_end_ns": t.message_end_ns if t.established else 0,
            "message_bytes": t.ml,
            "interrupted": int(self.interrupted),
            # the evidence diagnosis.py reads: timeouts with no byte back, unix connects turned away
            "silent_timeouts": t.silent_timeouts, "queue_full": self.ramp.queue_full,
            "cpu_us": int((self.cpu_end - self.cpu_start) * 1e6),
            "peak_rss_bytes": peak_rss_bytes(),  # so far, samples folded included
        }
        counters.update(self.messages.counters())
        return ProcessResult(
            index=spec.index, first=spec.first, samples=samples, connection_latency=stats,
            connect_us=t.connect_us, echoed=t.echoed, sent=t.sent, errors=t.errors,
            sources=t.sources, counters=counters, histogram=messages.histogram,
            reply_bytes=messages.reply_bytes, got=t.got,
        )


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far.

    Why VmHWM and not getrusage's ru_maxrss: Linux keeps in ru_maxrss the peak of
    the image a process replaced at exec, so a ``c10k load`` started by a large
    process (the study, pytest) would report that process's size. VmHWM is the
    peak of this process's own memory (pages shared with a parent at fork count,
    as they do in RSS).
    """
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def run_engine(spec: EngineSpec, *, on_connected: Callable[[int, int], None] | None = None,
               on_progress: ProgressCallback | None = None,
               on_second: Callable[[Second], None] | None = None) -> ProcessResult:
    """Run one load process's share of the connections and return its raw results.

    Args:
        spec: the connections, message and mode for this process.
        on_connected: called once with (established, failed) when the connect phase
            is over and before the first message (the barrier); it may block.
        on_progress: called about every 0.25 s with (open, established, echoed, failed).
        on_second: called with each second of the run as it ends, and with the last
            (partial) one at the end.

    Returns:
        A ProcessResult with every byte-exact round trip in nanoseconds (ascending) and
        each connection's statistics, or, past the sample budget, no round trip and a
        LatencyHistogram of them all.
    """
    # The hot loop allocates a tuple per epoll event, which keeps triggering the cyclic
    # GC (measured: ~6% of the interpreter's time); it creates no cycles, so pause it.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _Engine(spec, on_connected, on_progress, on_second).run()
    finally:
        if was_enabled:
            gc.enable()
