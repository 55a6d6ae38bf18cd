"""Echo latencies as a mergeable histogram in microseconds, 3 significant digits.

Locust's own statistics round response times to about 2 significant digits of
a millisecond (0.4 ms becomes 0, 147 ms becomes 150): too coarse for loopback
echoes that take tens of microseconds. Each Locust worker therefore also keeps
this histogram and ships it to the master with its stats reports; the master
merges them and computes the c10k summary's percentiles.

A latency is truncated to whole microseconds, kept exactly below 1,000 us, and
rounded to 3 significant digits above (1234 us -> 1230 us), so a bucket is
within 0.5 % of every latency in it and there are at most 900 buckets a decade.
Count, sum, min and max are kept exactly.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["LatencyHistogram", "bucket_us", "LATENCY_PRECISION", "RELATIVE_ERROR"]

#: How precise the summary's percentiles are (written into summary.json).
LATENCY_PRECISION = "histogram: 1 us below 1 ms, 3 significant digits above (within 0.5%)"
RELATIVE_ERROR = 0.005

# (upper bound, rounding step): latencies under the bound round to a multiple of the step.
_STEPS = tuple((10 ** (k + 3), 10**k) for k in range(1, 13))

_PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9))


def bucket_us(us: int) -> int:
    """The bucket of a latency of ``us`` whole microseconds (3 significant digits, half up)."""
    if us < 1000:
        return us
    for bound, step in _STEPS:
        if us < bound:
            return (us + step // 2) // step * step
    return us


class LatencyHistogram:
    """Counts per bucket plus exact count, sum, min and max; merge() adds another one."""

    __slots__ = ("counts", "count", "sum_ns", "min_ns", "max_ns")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.count = 0
        self.sum_ns = 0
        self.min_ns = 0
        self.max_ns = 0

    def record_ns(self, ns: int) -> None:
        """Add one latency of ``ns`` nanoseconds."""
        key = bucket_us(ns // 1000)
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1
        if self.count == 0 or ns < self.min_ns:
            self.min_ns = ns
        if ns > self.max_ns:
            self.max_ns = ns
        self.count += 1
        self.sum_ns += ns

    def merge(self, other: LatencyHistogram) -> None:
        if other.count == 0:
            return
        for key, n in other.counts.items():
            self.counts[key] = self.counts.get(key, 0) + n
        self.min_ns = other.min_ns if self.count == 0 else min(self.min_ns, other.min_ns)
        self.max_ns = max(self.max_ns, other.max_ns)
        self.count += other.count
        self.sum_ns += other.sum_ns

    def percentile_us(self, q: float) -> float:
        """The nearest-rank ``q``-th percentile (0 < q <= 100) in microseconds, clamped to [min, max]."""
        if self.count == 0:
            raise ValueError("no latencies recorded")
        rank = max(1, math.ceil(q / 100.0 * self.count))
        seen = 0
        for key in sorted(self.counts):
            seen += self.counts[key]
            if seen >= rank:
                return min(max(float(key), self.min_ns / 1000.0), self.max_ns / 1000.0)
        return self.max_ns / 1000.0

    def summary_us(self) -> dict[str, float | None]:
        """min, mean, p50, p90, p99, p999, max in microseconds (the summary.json keys); None when empty."""
        keys = ("min", "mean", *(k for k, _ in _PERCENTILES), "max")
        if self.count == 0:
            return {k: None for k in keys}
        out = {"min": self.min_ns / 1000.0, "mean": self.sum_ns / self.count / 1000.0}
        out.update({k: self.percentile_us(q) for k, q in _PERCENTILES})
        out["max"] = self.max_ns / 1000.0
        return {k: round(out[k], 3) for k in keys}

    def to_wire(self) -> dict[str, Any]:
        """A msgpack-friendly dict (what a worker sends to the master)."""
        return {"counts": self.counts, "count": self.count, "sum_ns": self.sum_ns,
                "min_ns": self.min_ns, "max_ns": self.max_ns}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> LatencyHistogram:
        h = cls()
        h.counts = {int(k): int(v) for k, v in data["counts"].items()}
        h.count, h.sum_ns = int(data["count"]), int(data["sum_ns"])
        h.min_ns, h.max_ns = int(data["min_ns"]), int(data["max_ns"])
        return h
