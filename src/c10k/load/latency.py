"""Latency in bounded memory: exact samples while they fit a budget, then an HDR histogram.

A load process keeps every round trip as a raw 8-byte sample (12 in the open
loop, which also keeps the connection of each) until its ``--sample-budget``
is full; past it the samples are *folded*: counted into an HdrHistogram of 3
significant digits over 1 us .. 1 hour (the ``hdrhistogram`` package's bucket
layout, so a histogram can be exported in its standard encoding), and the
buffer is reused. Memory then stays constant however long the run.

What stays exact after folding: the count, sum (so the mean), min and max, in
total and per connection. What becomes approximate: percentiles. They are
read from bucket midpoints with the same rank interpolation as
``numpy.percentile``, so each is within half a bucket's width of the exact
value (``percentiles`` returns that bound with each value): at most 1/2048 of
the value, or 256 ns below ~1 ms. Per connection, a sparse histogram of 2
significant digits (half a bucket: at most 1/256 of the value, 0.4 %) keeps
per-connection p50/p99 meaningful without a sample each.

Values above one hour are counted as one hour (a run needs ``--timeout`` above
an hour to see one).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hdrh.histogram import HdrHistogram

__all__ = ["HDR", "CONN_HDR", "Layout", "LatencyHistogram", "percentiles",
           "precision_words"]

CHUNK = 1 << 16  # samples folded at once: a fold's temporaries stay near 2 MiB
LOWEST_NS = 1_000
HIGHEST_NS = 3_600 * 10**9


@dataclass(frozen=True)
class Layout:
    """An HdrHistogram bucket layout, computed on numpy arrays (``hdrh`` records one value per call)."""

    sig_figs: int
    unit: int  # log2 of the smallest bucket's width (lowest 1 us -> 512 ns)
    half: int  # log2 of half the sub-buckets per bucket
    length: int  # counts per histogram

    @classmethod
    def of(cls, sig_figs: int) -> Layout:
        h = HdrHistogram(LOWEST_NS, HIGHEST_NS, sig_figs)
        return cls(sig_figs, h.unit_magnitude, h.sub_bucket_half_count_magnitude, h.counts_len)

    def new(self) -> HdrHistogram:
        return HdrHistogram(LOWEST_NS, HIGHEST_NS, self.sig_figs)

    def index(self, ns: np.ndarray) -> np.ndarray:
        """The counts index of each value (hdrh's ``_counts_index_for``, vectorized)."""
        v = np.clip(np.asarray(ns, dtype=np.int64), 0, HIGHEST_NS)
        mask = ((1 << (self.half + 1)) - 1) << self.unit
        # bit_length(v | mask): frexp's exponent, exact for integers below 2**53
        bits = np.frexp((v | mask).astype(np.float64))[1].astype(np.int64)
        bucket = bits - self.unit - (self.half + 1)
        return ((bucket + 1) << self.half) + (v >> (bucket + self.unit)) - (1 << self.half)

    def _bucket_sub(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.asarray(idx, dtype=np.int64)
        bucket = (idx >> self.half) - 1
        sub = (idx & ((1 << self.half) - 1)) + (1 << self.half)
        first = bucket < 0
        return np.where(first, 0, bucket), np.where(first, sub - (1 << self.half), sub)

    def lowest(self, idx: np.ndarray) -> np.ndarray:
        bucket, sub = self._bucket_sub(idx)
        return sub << (bucket + self.unit)

    def width(self, idx: np.ndarray) -> np.ndarray:
        bucket, _ = self._bucket_sub(idx)
        return np.left_shift(1, bucket + self.unit)


HDR = Layout.of(3)
CONN_HDR = Layout.of(2)
assert CONN_HDR.length <= 1 << 16  # compact() stores its indexes as uint16


def precision_words(layout: Layout = HDR) -> str:
    return f"hdr {layout.sig_figs} significant digits"


def sparse(layout: Layout, ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted counts indexes, counts) of some samples."""
    idx, counts = np.unique(layout.index(ns), return_counts=True)
    return idx, counts.astype(np.int64)


def percentiles(layout: Layout, idx: np.ndarray, counts: np.ndarray,
                qs: tuple[float, ...]) -> list[tuple[float, float]]:
    """(value, error bound) in ns of each percentile of a sparse histogram (idx ascending).

    Ranks interpolate as ``numpy.percentile`` does, over bucket midpoints: every
    sample is within half its bucket's width of its midpoint, so the result is
    within half the wider bucket's width of the exact percentile.
    """
    idx = np.asarray(idx, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    keep = counts > 0
    idx, counts = idx[keep], counts[keep]
    total = int(counts.sum())
    if total == 0:
        return [(float("nan"), float("nan")) for _ in qs]
    cum = np.cumsum(counts)
    half = layout.width(idx) / 2
    mid = layout.lowest(idx) + half
    rank = np.array(qs, dtype=np.float64) / 100 * (total - 1)
    lo = np.searchsorted(cum, np.floor(rank), side="right")
    hi = np.searchsorted(cum, np.ceil(rank), side="right")
    value = mid[lo] + (mid[hi] - mid[lo]) * (rank - np.floor(rank))
    return [(float(v), float(b)) for v, b in zip(value, np.maximum(half[lo], half[hi]), strict=True)]


def merge_sparse(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    idx, inverse = np.unique(np.concatenate((a[0], b[0])), return_inverse=True)
    # int64 weights: bincount's float64 would round counts above 2**53
    counts = np.zeros(idx.size, np.int64)
    np.add.at(counts, inverse, np.concatenate((a[1], b[1])).astype(np.int64))
    return idx, counts


def compact(idx: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A per-connection sparse histogram in 6 bytes a bucket instead of 16.

    A connection keeps its histogram for the whole run, and a thousand
    connections whose latencies spread over many octaves hold hundreds of
    buckets each: the index fits uint16 (CONN_HDR has 3,456 buckets) and a
    count fits uint32 unless one connection passes 4 billion echoes in a
    bucket, when that histogram keeps int64.
    """
    small = counts.size == 0 or int(counts.max()) <= np.iinfo(np.uint32).max
    return idx.astype(np.uint16), counts.astype(np.uint32 if small else np.int64)


class LatencyHistogram:
    """Samples one load process has folded: an HDR histogram plus exact count, sum, min and max,
    in total and per connection (with a sparse 2-digit histogram per connection)."""

    def __init__(self, connections: int) -> None:
        self.counts = np.zeros(HDR.length, np.int64)
        self.n = self.sum = 0
        self.min = np.iinfo(np.int64).max
        self.max = 0
        self.conn_n = np.zeros(connections, np.int64)
        self.conn_sum = np.zeros(connections, np.int64)
        self.conn_min = np.full(connections, np.iinfo(np.int64).max, np.int64)
        self.conn_max = np.zeros(connections, np.int64)
        self.conn_hist: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def add(self, ns: np.ndarray, conn: np.ndarray | int | None) -> None:
        """Fold samples of one connection (``conn`` an int), of many (one connection each), or of none."""
        # in chunks: the temporaries of a fold stay small however big the buffer
        for a in range(0, len(ns), CHUNK):
            self._add(ns[a:a + CHUNK], conn if conn is None or isinstance(conn, int) else conn[a:a + CHUNK])

    def _add(self, ns: np.ndarray, conn: np.ndarray | int | None) -> None:
        ns = np.asarray(ns, dtype=np.int64)
        self.counts += np.bincount(HDR.index(ns), minlength=HDR.length)
        self.n += int(ns.size)
        self.sum += int(ns.sum())
        self.min = min(self.min, int(ns.min()))
        self.max = max(self.max, int(ns.max()))
        if conn is None:
            return
        if isinstance(conn, int):
            self._add_connection(conn, ns)
            return
        order = np.argsort(conn, kind="stable")
        ns, conn = ns[order], np.asarray(conn)[order]
        present, starts = np.unique(conn, return_index=True)
        ends = np.append(starts[1:], conn.size)
        for j, a, b in zip(present.tolist(), starts.tolist(), ends.tolist(), strict=True):
            self._add_connection(j, ns[a:b])

    def _add_connection(self, j: int, ns: np.ndarray) -> None:
        self.conn_n[j] += ns.size
        self.conn_sum[j] += int(ns.sum())
        self.conn_min[j] = min(int(self.conn_min[j]), int(ns.min()))
        self.conn_max[j] = max(int(self.conn_max[j]), int(ns.max()))
        new = sparse(CONN_HDR, ns)
        old = self.conn_hist.get(j)
        self.conn_hist[j] = compact(*(new if old is None else merge_sparse(old, new)))

    def merge(self, other: LatencyHistogram) -> None:
        """Add another process's histogram (its connections are its own: only the totals merge)."""
        self.counts += other.counts
        self.n += other.n
        self.sum += other.sum
        if other.n:
            self.min, self.max = min(self.min, other.min), max(self.max, other.max)

    def connection_stats(self) -> dict[str, np.ndarray]:
        """min/mean/p50/p99/max (us) per connection, NaN where a connection has no sample."""
        size = self.conn_n.size
        out = {k: np.full(size, np.nan) for k in ("min", "mean", "p50", "p99", "max")}
        has = self.conn_n > 0
        out["min"][has] = self.conn_min[has] / 1000
        out["max"][has] = self.conn_max[has] / 1000
        out["mean"][has] = self.conn_sum[has] / self.conn_n[has] / 1000
        for j, (idx, counts) in self.conn_hist.items():
            (p50, _), (p99, _) = percentiles(CONN_HDR, idx, counts, (50.0, 99.0))
            # a midpoint may lie past the exact min or max: the bound allows it, the column need not
            out["p50"][j] = min(max(p50, self.conn_min[j]), self.conn_max[j]) / 1000
            out["p99"][j] = min(max(p99, self.conn_min[j]), self.conn_max[j]) / 1000
        return out

    def to_hdrh(self) -> HdrHistogram:
        """The histogram as an ``hdrh`` HdrHistogram (for its standard encoding)."""
        h = HDR.new()
        nz = np.flatnonzero(self.counts)
        if nz.size:
            np.ctypeslib.as_array(h.counts)[:] = self.counts
            h.set_internal_tacking_values(int(nz[0]), int(nz[-1]), int(self.counts.sum()))
        return h
