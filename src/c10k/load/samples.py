"""Raw round trips in bounded memory: per-connection statistics and exact merged percentiles, no copies.

A load process that kept every round trip raw (they fit its sample budget)
ends with them in one int64 buffer. Everything here works on that buffer in
place, so the end of a run costs no second budget:

* ``group_by_connection`` sorts samples that came in arrival order (the open
  loop) by (connection, latency), in place, with the connection in the high bits;
* ``connection_stats`` reads each connection's min, mean, p50, p99 and max from a
  buffer where each connection's samples are contiguous (``sort_groups`` sorts
  each in place);
* ``SortedSamples`` is one process's samples, ascending, in memory or in a
  file, and ``exact_summary_ns`` finds percentiles over several of them by
  bisecting on the value: a percentile's rank is found by counting, in each
  process's samples, those at most a value (a bisection of its own). The
  parent that merges the load processes thus reads a few thousand samples
  from each process's file, never the whole of any.

Percentiles interpolate between ranks as ``numpy.percentile`` does by default.
"""

from __future__ import annotations

import bisect
import os
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from c10k.load.latency import CHUNK

__all__ = ["SortedSamples", "connection_stats", "exact_summary_ns", "group_by_connection",
           "sort_groups", "STAT_KEYS"]

STAT_KEYS = ("min", "mean", "p50", "p99", "max")


def sort_groups(view: np.ndarray, counts: np.ndarray) -> None:
    """Sort each connection's samples (``counts[j]`` of them, contiguous, in connection order) in place."""
    a = 0
    for n in counts.tolist():
        if n > 1:
            view[a:a + n].sort()
        a += n


def group_by_connection(view: np.ndarray, conn: np.ndarray, connections: int) -> np.ndarray | None:
    """Sort samples (int64 ns) in place by (connection, value); return the count per connection.

    Each sample is tagged with its connection in the bits above the value, the
    buffer sorted once and the tags cleared, chunk by chunk, so no copy of the
    buffer is made. None (nothing changed) when a value is too large for the
    bits left, which takes a round trip of hours (2**43 ns with 1,048,576
    connections): the caller then folds the samples instead.
    """
    shift = 63 - max(1, int(connections - 1).bit_length())
    if view.size and (int(view.max()) >> shift or int(view.min()) < 0):
        return None
    for a in range(0, view.size, CHUNK):
        view[a:a + CHUNK] |= conn[a:a + CHUNK].astype(np.int64) << shift
    view.sort()
    np.bitwise_and(view, (1 << shift) - 1, out=view)
    return np.bincount(conn, minlength=connections).astype(np.int64)


def connection_stats(view: np.ndarray, counts: np.ndarray) -> dict[str, np.ndarray]:
    """min/mean/p50/p99/max (us) per connection, NaN where a connection has no sample.

    ``view`` holds each connection's samples contiguous, ascending, in connection order.
    """
    size = counts.size
    out = {k: np.full(size, np.nan) for k in STAT_KEYS}
    has = counts > 0
    if not has.any():
        return out
    starts = (np.cumsum(counts) - counts)[has]
    n = counts[has]
    out["min"][has] = view[starts] / 1000
    out["max"][has] = view[starts + n - 1] / 1000
    # int64 sums (a float reduceat would copy the whole buffer): a closed-loop connection's
    # round trips add up to less than the run's length, nowhere near 2**63 ns
    out["mean"][has] = np.add.reduceat(view, starts) / n / 1000
    for key, q in (("p50", 0.5), ("p99", 0.99)):
        pos = starts + (n - 1) * q
        lo, hi = np.floor(pos).astype(np.int64), np.ceil(pos).astype(np.int64)
        a, b = view[lo].astype(np.float64), view[hi].astype(np.float64)
        out[key][has] = (a + (b - a) * (pos - lo)) / 1000
    return out


class _FileColumn:
    """The int64 samples of a file, read one at a time (for ``bisect``)."""

    def __init__(self, fd: int, n: int) -> None:
        self.fd, self.n = fd, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return int.from_bytes(os.pread(self.fd, 8, i * 8), "little", signed=True)


class SortedSamples:
    """One load process's round trips (int64 ns), ascending: an array, or a file the process wrote.

    A file's samples are read with ``pread`` as they are needed (``count_le``, a
    few of them; ``chunks``, a chunk at a time), so the process that holds it
    holds none of them. The file may be removed once this object exists.
    """

    def __init__(self, array: np.ndarray | None = None, *, path: Path | None = None, count: int = 0,
                 total: int | None = None) -> None:
        self._array = array
        self._fd = -1
        if path is not None:
            # a descriptor, not a file object: it lives as long as this object, with no
            # ResourceWarning, and keeps the data readable after the file is removed
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            weakref.finalize(self, os.close, self._fd)
        self.count = int(array.size) if array is not None else count
        self._column: np.ndarray | _FileColumn = array if array is not None else _FileColumn(self._fd, self.count)
        #: exact sum in ns (for the mean)
        self.total = total if total is not None else sum(_exact_sum(c) for c in self.chunks())

    @classmethod
    def empty(cls) -> SortedSamples:
        return cls(np.zeros(0, np.int64))

    def write(self, path: Path) -> None:
        """The samples as raw little-endian int64 (what ``SortedSamples(path=...)`` reads)."""
        assert self._array is not None
        self._array.astype("<i8", copy=False).tofile(path)

    def count_le(self, value: int) -> int:
        if self._array is not None:
            return int(np.searchsorted(self._array, value, side="right"))
        return bisect.bisect_right(self._column, value)

    def __getitem__(self, i: int) -> int:
        return int(self._column[i])

    def chunks(self) -> Iterator[np.ndarray]:
        if self._array is not None:
            for a in range(0, self.count, CHUNK):
                yield self._array[a:a + CHUNK]
            return
        buf = np.empty(min(self.count, CHUNK), "<i8")
        for a in range(0, self.count, CHUNK):
            n = min(CHUNK, self.count - a)
            got = os.preadv(self._fd, [buf[:n].data.cast("B")], a * 8)
            if got != n * 8:
                raise OSError(f"short read of samples: {got} of {n * 8} bytes")
            yield buf[:n]

    def array(self) -> np.ndarray:
        """Every sample in memory (a copy when they are in a file)."""
        if self._array is not None:
            return self._array
        return np.concatenate([c.copy() for c in self.chunks()]) if self.count else np.zeros(0, np.int64)


def _exact_sum(ascending: np.ndarray) -> int:
    # numpy's int64 sum wraps around silently: past ~9.8 hours a sample (x CHUNK), add as Python ints
    if not ascending.size or int(ascending[-1]) < (1 << 63) // ascending.size:
        return int(ascending.sum())
    return sum(ascending.tolist())


def _order_statistic(parts: list[SortedSamples], k: int, lo: int, hi: int) -> int:
    """The k-th smallest (0-based) of every part's samples, all within [lo, hi]."""
    while lo < hi:
        mid = (lo + hi) // 2
        if sum(p.count_le(mid) for p in parts) > k:
            hi = mid
        else:
            lo = mid + 1
    return lo


def exact_summary_ns(parts: list[SortedSamples], qs: tuple[float, ...]) -> dict[str, float] | None:
    """min, mean, max and each percentile of ``qs`` (keys ``"q"`` as given) over every part, in ns.

    None when there is no sample.
    """
    parts = [p for p in parts if p.count]
    n = sum(p.count for p in parts)
    if n == 0:
        return None
    lo, hi = min(p[0] for p in parts), max(p[p.count - 1] for p in parts)
    out: dict[str, float] = {"min": float(lo), "max": float(hi), "mean": sum(p.total for p in parts) / n}
    for q in qs:
        rank = q / 100 * (n - 1)
        below = _order_statistic(parts, int(np.floor(rank)), lo, hi)
        above = below if rank == np.floor(rank) else _order_statistic(parts, int(np.ceil(rank)), lo, hi)
        out[str(q)] = float(below + (above - below) * (rank - np.floor(rank)))
    return out
