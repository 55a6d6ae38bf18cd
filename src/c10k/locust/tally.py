"""What the echo users of one Locust process counted, and the merge of every worker's counts.

A worker hands its counts to the master in each stats report (every 3 s) and
starts again from zero, as Locust does with its own statistics; the master adds
them up. Times are wall-clock (``time.time``) so that spans can be merged
across machines: keep the load machines' clocks in sync (NTP) for
``connect_s`` and ``elapsed_s`` to mean anything across them.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from c10k.locust.histogram import LatencyHistogram

__all__ = ["EchoTally", "TallyMerger"]

_COUNTS = ("attempted", "established", "completed", "failed", "sent", "echoed", "mismatched",
           "bytes_sent", "bytes_echoed", "finished")
_FIRSTS = ("connect_start", "message_start")
_LASTS = ("connect_end", "message_end")


class EchoTally:
    """Counters, error reasons, open connections and the latency histogram of one process.

    ``finished`` counts users that ended on their own (all echoes done, or failed);
    ``open``/``peak_open`` are this process's connections open now and at most.
    """

    def __init__(self) -> None:
        self.open = 0
        self.peak_open = 0
        self.reset()

    def reset(self) -> None:
        self.attempted = self.established = self.completed = self.failed = self.finished = 0
        self.sent = self.echoed = self.mismatched = self.bytes_sent = self.bytes_echoed = 0
        self.connect_start = self.message_start = math.inf
        self.connect_end = self.message_end = -math.inf
        self.errors: Counter[str] = Counter()
        self.latency = LatencyHistogram()

    # the hot path's bookkeeping, kept to attribute arithmetic ----------------------------

    def connected(self, start: float, end: float) -> None:
        self.attempted += 1
        self.established += 1
        self.open += 1
        if self.open > self.peak_open:
            self.peak_open = self.open
        if start < self.connect_start:
            self.connect_start = start
        if end > self.connect_end:
            self.connect_end = end

    def closed(self) -> None:
        self.open -= 1

    def failed_with(self, reason: str) -> None:
        self.failed += 1
        self.finished += 1
        self.errors[reason] += 1
        if reason == "mismatch":
            self.mismatched += 1

    # transport ---------------------------------------------------------------------------

    def take(self) -> dict[str, Any]:
        """Everything counted since the last take() as a msgpack-friendly dict, then start from zero."""
        data: dict[str, Any] = {name: getattr(self, name) for name in _COUNTS}
        for name in (*_FIRSTS, *_LASTS):
            value = getattr(self, name)
            data[name] = value if math.isfinite(value) else None
        data["errors"] = dict(self.errors)
        data["latency"] = self.latency.to_wire()
        data["open"] = self.open
        data["peak_open"] = self.peak_open
        self.reset()
        return data

    def add(self, data: dict[str, Any]) -> None:
        """Add a take() from this or another process (peaks are handled by TallyMerger)."""
        for name in _COUNTS:
            setattr(self, name, getattr(self, name) + int(data[name]))
        for name in _FIRSTS:
            if data[name] is not None:
                setattr(self, name, min(getattr(self, name), data[name]))
        for name in _LASTS:
            if data[name] is not None:
                setattr(self, name, max(getattr(self, name), data[name]))
        self.errors.update(data["errors"])
        self.latency.merge(LatencyHistogram.from_wire(data["latency"]))


class TallyMerger:
    """The master's sum of every worker's reports.

    ``peak_open`` is the sum of the workers' own peaks: the most connections that
    can have been open at once. It equals the true peak when every worker held its
    peak at the same moment (a run whose connections all stay open to the end).
    """

    def __init__(self) -> None:
        self.total = EchoTally()
        self.peaks: dict[str, int] = {}

    def add(self, source: str, data: dict[str, Any]) -> None:
        self.total.add(data)
        self.peaks[source] = max(self.peaks.get(source, 0), int(data["peak_open"]))

    @property
    def peak_open(self) -> int:
        return sum(self.peaks.values())

    @property
    def sources(self) -> int:
        return len(self.peaks)
