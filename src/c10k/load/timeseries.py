"""Per-second numbers of a run: connections open, echoes, errors, p50 and p99, over every process.

Each load process bins its run into seconds counted from one origin that
every process shares (the run's start, on the system-wide monotonic clock):
``SecondBins`` gets the round trips of the second as they are drained from the
loop's sample buffer (never from the hot path) and closes a second at its
boundary with a ``Second``: the counts and a sparse HDR histogram of the
second's latencies (3 significant digits). A process ships each ``Second`` as
it closes (over its pipe, or by a callback in a one-process run); the parent's
``TimeSeries`` merges them by second and drops a second's histograms once
every process has reported it, so neither side grows with more than the row.

Precision: an echo belongs to the second in which the loop drained it, at most
one poll (0.1 s) after it arrived; p50/p99 are within half an HDR bucket (at
most 0.05 %, or 256 ns below ~1 ms) of the exact percentiles of the second.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from c10k.load.latency import HDR, merge_sparse, percentiles

__all__ = ["Second", "SecondBins", "TimeSeries", "TIMESERIES_COLUMNS", "write_timeseries"]

TIMESERIES_COLUMNS = ("second", "open", "echoes", "errors", "p50_us", "p99_us")
SECOND_NS = 1_000_000_000


@dataclass
class Second:
    """One process's second: connections open at its end, echoes and failed connections in it."""

    second: int
    open: int
    echoes: int
    errors: int
    idx: np.ndarray  # sparse HDR histogram of the second's round trips: counts indexes...
    counts: np.ndarray  # ... and their counts
    final: bool = False  # the process's last second


class SecondBins:
    """One process's seconds; ``add`` the drained samples, ``close`` at each boundary and at the end."""

    def __init__(self, origin_ns: int, on_second: Callable[[Second], None] | None = None) -> None:
        self.origin = origin_ns
        self.on_second = on_second
        self.second = 0
        self.next_ns = origin_ns + SECOND_NS
        self.pending: list[np.ndarray] = []
        self.echoes = 0
        self.failed_before = 0

    def add(self, ns: np.ndarray) -> None:
        if ns.size:
            self.pending.append(HDR.index(ns).astype(np.uint16))  # HDR.length is 24,576
            self.echoes += int(ns.size)

    def close(self, now: int, open_: int, failed: int, *, final: bool = False) -> None:
        """Close every second that ended by ``now`` (all of it, and the one in progress if ``final``)."""
        while now >= self.next_ns or final:
            idx = np.concatenate(self.pending) if self.pending else np.zeros(0, np.uint16)
            sidx, counts = np.unique(idx, return_counts=True)
            sidx = sidx.astype(np.int64)
            last = final and now < self.next_ns
            row = Second(self.second, open_, self.echoes, failed - self.failed_before, sidx,
                         counts.astype(np.int64), final=last)
            self.pending, self.echoes, self.failed_before = [], 0, failed
            self.second += 1
            self.next_ns += SECOND_NS
            if self.on_second is not None:
                self.on_second(row)
            if last:
                return


class TimeSeries:
    """Seconds from ``processes`` load processes, merged as soon as every process has reported them.

    A process that has ended (its final second came) counts as reporting
    nothing, with no connection open, for every later second.
    """

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self.reported = [-1] * processes
        self.final = [False] * processes
        self.waiting: dict[int, list[Second]] = {}
        self.rows: list[tuple[int, int, int, int, float, float]] = []
        self.next = 0

    def add(self, process: int, s: Second) -> None:
        self.waiting.setdefault(s.second, []).append(s)
        self.reported[process] = s.second
        self.final[process] = self.final[process] or s.final
        while self.next in self.waiting and all(
                r >= self.next or f for r, f in zip(self.reported, self.final, strict=True)):
            self._merge(self.waiting.pop(self.next))

    def finish(self) -> list[tuple[int, int, int, int, float, float]]:
        """Merge what is left (a process that stopped without its final second reports nothing more)."""
        for second in sorted(self.waiting):
            while self.next < second:
                self._merge([])
            self._merge(self.waiting.pop(second))
        return self.rows

    def _merge(self, parts: list[Second]) -> None:
        hist = (np.zeros(0, np.int64), np.zeros(0, np.int64))
        for s in parts:
            hist = merge_sparse(hist, (s.idx, s.counts))
        (p50, _), (p99, _) = percentiles(HDR, *hist, (50.0, 99.0))
        self.rows.append((self.next, sum(s.open for s in parts), sum(s.echoes for s in parts),
                          sum(s.errors for s in parts), p50 / 1000, p99 / 1000))
        self.next += 1

    @property
    def last(self) -> tuple[int, int, int, int, float, float] | None:
        """The latest merged second."""
        return self.rows[-1] if self.rows else None


def write_timeseries(rows: list[tuple[int, int, int, int, float, float]], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(TIMESERIES_COLUMNS)
        for second, open_, echoes, errors, p50, p99 in rows:
            w.writerow([second, open_, echoes, errors, *("" if math.isnan(v) else round(v, 3) for v in (p50, p99))])
