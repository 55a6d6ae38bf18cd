"""Run the engines: in this process, or one forked load process each, held at one barrier.

Past one process the parent forks a child per ``EngineSpec``. Each child sends
one small message per phase over a pipe (``connected``, then ``done`` with the
path of its results: an ``.npz`` file, and its raw samples sorted in a
file of their own that the parent reads only in part), one ``second`` a second (its counts and
a small histogram of the second's latencies, for the time series and the live
p50/p99) and publishes its progress in a shared ``ProgressSlot``; the parent
answers ``go`` to every child once all of them are connected (the barrier),
and merges only the seconds itself.

Stopping. SIGINT (Ctrl-C, which reaches the whole process group) and SIGTERM
(``kill PID``, which reaches only the parent) mean the same: stop every load
process, keep what was measured, mark the run interrupted. ``StopSignals``
turns the first of either into KeyboardInterrupt, which the engine catches and
the parent forwards to every child as SIGINT; later ones are only noted, so
that they cannot interrupt the saving of results. A child whose parent is gone
stops by itself: see ``_die_with_parent``.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import multiprocessing.connection
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from c10k.errors import C10kError
from c10k.load.engine import EngineSpec, run_engine
from c10k.load.results import ProcessResult
from c10k.load.timeseries import Second, TimeSeries

__all__ = ["Progress", "StopSignals", "stop_signals", "run_here", "run_forked"]

#: how long the parent waits for interrupted load processes to save their results
STOP_WAIT_S = 15.0


@dataclass
class Progress:
    """A snapshot for a progress display.

    ``failed`` counts connections that have ended with an error so far; at the
    end of a run it is the summary's ``connections.failed``.
    """

    phase: str  # "connecting" or "echoing"
    requested: int
    open: int
    established: int
    echoed: int
    failed: int
    expected_messages: int
    #: echoes, p50 and p99 (us) of the last whole second over every process (None before the first)
    messages_per_s: int | None = None
    p50_us: float | None = None
    p99_us: float | None = None

    @classmethod
    def make(cls, phase: str, requested: int, open_: int, established: int, echoed: int, failed: int,
             expected: int, series: TimeSeries) -> Progress:
        last = series.last
        if last is None:
            return cls(phase, requested, open_, established, echoed, failed, expected)
        _, _, echoes, _, p50, p99 = last
        return cls(phase, requested, open_, established, echoed, failed, expected, echoes,
                   None if p50 != p50 else p50, None if p99 != p99 else p99)  # NaN: no echo in that second


class ProgressSlot(ctypes.Structure):
    """One load process's progress, in memory shared with the parent (written ~4 times a second)."""

    _fields_ = [("open", ctypes.c_int64), ("established", ctypes.c_int64),
                ("echoed", ctypes.c_int64), ("failed", ctypes.c_int64)]


class StopSignals:
    """SIGINT and SIGTERM end the run once: the first raises KeyboardInterrupt, later ones are noted.

    ``signum`` is the first signal received (None: none). After ``disarm()`` a
    signal is only noted, so that writing the results cannot be interrupted.
    Signals belong to the main thread: elsewhere this does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.armed = True
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            return
        self.signum = signum
        if self.armed:
            raise KeyboardInterrupt

    def disarm(self) -> None:
        self.armed = False

    def install(self, *, keep_ignored: bool = True) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.SIGNALS:
            if keep_ignored and signal.getsignal(sig) == signal.SIG_IGN:
                continue  # e.g. a background job's SIGINT: whoever ignored it meant it
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


_active: list[StopSignals] = []


@contextlib.contextmanager
def stop_signals() -> Iterator[StopSignals]:
    """Handle SIGINT and SIGTERM as ``StopSignals`` inside the block (the outermost block's object)."""
    if _active:
        yield _active[-1]
        return
    stop = StopSignals()
    stop.install()
    _active.append(stop)
    try:
        yield stop
    finally:
        _active.remove(stop)
        stop.restore()


def run_here(spec: EngineSpec, requested: int, expected: int,
             on_progress: Callable[[Progress], None] | None, series: TimeSeries) -> ProcessResult:
    """The whole run in this process; its seconds go to ``series``."""
    phase = ["connecting"]

    def connected(established: int, failed: int) -> None:
        phase[0] = "echoing"

    def progress(open_: int, established: int, echoed: int, failed: int) -> None:
        if on_progress is not None:
            on_progress(Progress.make(phase[0], requested, open_, established, echoed, failed, expected, series))

    result = run_engine(spec, on_connected=connected, on_progress=progress if on_progress else None,
                        on_second=lambda s: series.add(0, s))
    result.pid = os.getpid()
    return result


def run_forked(specs: list[EngineSpec], requested: int, expected: int,
               on_progress: Callable[[Progress], None] | None, series: TimeSeries) -> list[ProcessResult]:
    """One forked load process per spec, their seconds merged into ``series``; KeyboardInterrupt
    here stops them all and keeps their results."""
    # fork: children inherit the plan and the imported modules at no cost, and
    # each sends back one small message per phase; results travel as files.
    ctx = multiprocessing.get_context("fork")
    slots = ctx.Array(ProgressSlot, len(specs), lock=False)
    parent = os.getpid()
    with tempfile.TemporaryDirectory(prefix="c10k-load-") as out:
        procs, pipes = [], []
        try:
            for spec in specs:
                parent_end, child_end = ctx.Pipe()
                p = ctx.Process(target=_child, args=(spec, child_end, slots[spec.index], out, parent), daemon=True)
                p.start()
                child_end.close()
                procs.append(p)
                pipes.append(parent_end)
            return _Supervisor(procs, pipes, slots, requested, expected, on_progress, series).run()
        finally:
            for p in procs:
                if p.is_alive():
                    p.kill()  # only on the way out of an error: SIGTERM would make it save results
            for p in procs:
                p.join(5)


# -- in the load process ----------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    # Why: a load process that outlives its parent goes on loading the server with
    # nobody to stop it or read its results (seen: ten minutes against a server after
    # the parent was killed). prctl(PR_SET_PDEATHSIG) makes the kernel send SIGKILL
    # when the parent dies; SIGKILL because nothing the child could still save would
    # be read, and the kernel closes its sockets. The signal is tied to the thread
    # that forked, which is the thread running the load, alive until every child
    # has reported. A parent that died between fork() and prctl() sends nothing, so
    # check once afterwards that the parent is still the one that forked us.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the getppid() checks below and the broken pipe still stop it
    if os.getppid() != parent:
        os._exit(1)


def _child(spec: EngineSpec, conn: multiprocessing.connection.Connection, slot: ProgressSlot, out: str,
           parent: int) -> None:
    _die_with_parent(parent)
    # The group's Ctrl-C and the parent's forwarded SIGINT both arrive, or a group-wide
    # SIGTERM: the first ends the run (the engine keeps its results), later ones must
    # not interrupt the saving of those results. Installed even where the parent ignores
    # SIGINT (a background job): the parent forwards its stop as SIGINT.
    StopSignals().install(keep_ignored=False)

    def connected(established: int, failed: int) -> None:
        conn.send(("connected", established, failed))
        if conn.recv() != "go":
            raise SystemExit(1)

    def progress(open_: int, established: int, echoed: int, failed: int) -> None:
        slot.open, slot.established, slot.echoed, slot.failed = open_, established, echoed, failed

    def second(s: Second) -> None:
        conn.send(("second", s))

    try:
        result = run_engine(spec, on_connected=connected, on_progress=progress, on_second=second)
        result.pid = os.getpid()
        path = Path(out) / f"process-{spec.index}.npz"
        result.save(path)
        conn.send(("done", str(path)))
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass
    except Exception as exc:  # reported by the parent as one line
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


# -- in the parent ----------------------------------------------------------------------

class _Supervisor:
    def __init__(self, procs: list[Any], pipes: list[multiprocessing.connection.Connection], slots: Any,
                 requested: int, expected: int, on_progress: Callable[[Progress], None] | None,
                 series: TimeSeries) -> None:
        self.series = series
        self.procs = procs
        self.pipes = pipes
        self.slots = slots
        self.requested = requested
        self.expected = expected
        self.on_progress = on_progress
        self.index = {id(c): k for k, c in enumerate(pipes)}
        self.live = list(pipes)
        self.connected: set[int] = set()
        self.paths: dict[int, str] = {}
        self.phase = "connecting"
        self.stop_by = 0.0  # after a stop signal: when to give up waiting for the children's results

    def run(self) -> list[ProcessResult]:
        while len(self.paths) < len(self.procs):
            try:
                self._collect()
                if self.on_progress is not None:
                    slots = self.slots
                    self.on_progress(Progress.make(
                        self.phase, self.requested, sum(s.open for s in slots),
                        sum(s.established for s in slots), sum(s.echoed for s in slots),
                        sum(s.failed for s in slots), self.expected, self.series))
            except KeyboardInterrupt:
                self._stop()
            if self.stop_by and time.monotonic() > self.stop_by:
                raise C10kError(f"interrupted, and the load processes did not stop within {STOP_WAIT_S:.0f} s")
        return [ProcessResult.load(Path(self.paths[k])) for k in sorted(self.paths)]

    def _stop(self) -> None:
        if self.stop_by:
            return
        self.stop_by = time.monotonic() + STOP_WAIT_S
        for k, p in enumerate(self.procs):
            if k not in self.paths and p.is_alive():
                os.kill(p.pid, signal.SIGINT)

    def _collect(self) -> None:
        for c in multiprocessing.connection.wait(self.live, timeout=0.1):
            assert isinstance(c, multiprocessing.connection.Connection)
            k = self.index[id(c)]
            try:
                msg = c.recv()
            except EOFError:
                raise C10kError(f"load process {k} exited unexpectedly (status {self.procs[k].exitcode})") from None
            if msg[0] == "second":
                self.series.add(k, msg[1])
            elif msg[0] == "connected":
                self.connected.add(k)
                if len(self.connected) == len(self.procs) and not self.stop_by:
                    self.phase = "echoing"
                    for p in self.pipes:
                        p.send("go")  # the barrier: every connection of every process is open
            elif msg[0] == "done":
                self.paths[k] = msg[1]
                self.live.remove(c)
            else:
                raise C10kError(f"load process {k} failed: {msg[1]}")
