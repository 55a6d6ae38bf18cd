"""Round trips appended with their connection, folded into a histogram past the sample budget.

The open loop and the general request loop both record each round trip as it
completes, in any connection's order: the latency (``table.lat``, 8 bytes)
and the local connection (``sample_conn``, 4 bytes), until the sample budget
is full; then they are folded into the process's ``LatencyHistogram`` and the
buffers start over (see ``latency.py``).
"""

from __future__ import annotations

from array import array

import numpy as np

from c10k.load.latency import LatencyHistogram
from c10k.load.phase import Phase, ProgressCallback
from c10k.load.ramp import ConnectRamp
from c10k.load.samples import connection_stats, group_by_connection
from c10k.load.table import ConnectionTable

__all__ = ["SampledPhase"]


class SampledPhase(Phase):
    """A message phase whose samples are appended (12 bytes each) and folded when the budget is full."""

    def __init__(self, table: ConnectionTable, ramp: ConnectRamp, on_progress: ProgressCallback | None,
                 sample_budget: int) -> None:
        super().__init__(table, ramp, on_progress)
        self.sample_conn = array("i")
        self.cap = max(1, sample_budget // 12)  # samples kept raw before folding
        self.seen = 0  # samples the time series has had
        self.folded = 0  # samples folded into the histogram
        self.histogram: LatencyHistogram | None = None

    def echoed_total(self) -> int:
        return self.folded + len(self.t.lat)

    def drain(self) -> None:
        n = len(self.t.lat)
        if n > self.seen:
            self.t.seconds.add(np.frombuffer(self.t.lat[self.seen:n], dtype=np.int64))
            self.seen = n

    def fold(self) -> None:
        """The buffers are full (or the run is over): fold them into the histogram and start over."""
        self.drain()
        if self.histogram is None:
            self.histogram = LatencyHistogram(self.t.connections)
        self.histogram.add(np.frombuffer(self.t.lat, dtype=np.int64), np.frombuffer(self.sample_conn, dtype=np.int32))
        self.folded += len(self.t.lat)
        self.t.lat, self.sample_conn, self.seen = array("q"), array("i"), 0

    fold_rest = fold

    def exact_samples(self) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
        """After the run, within the budget: (every sample ascending, per-connection statistics),
        made in the buffers' place; None (then fold them) in the rare case ``group_by_connection`` cannot."""
        lat = np.frombuffer(self.t.lat, dtype=np.int64)
        counts = group_by_connection(lat, np.frombuffer(self.sample_conn, dtype=np.int32), self.t.connections)
        if counts is None:
            return None
        stats = connection_stats(lat, counts)
        lat.sort()
        return lat, stats
