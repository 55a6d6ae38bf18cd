"""Samples from every load process -> statistics, summary.json, connections.csv, timeseries.csv.

While every process kept its samples raw (they fit its sample budget) the
percentiles are exact over the union of every process's samples, with
``numpy.percentile``'s definition, and the summary says ``"latency_precision":
"exact"``. The union is never gathered: each process sorts its own samples in
place and writes them to a file, and the parent finds each percentile by
counting in every file (``samples.py``), so it holds no sample however many
processes there are. Each process also sends its per-connection statistics,
computed in its own buffer. Once any process folded its samples into a
histogram (``latency.py``), the others' raw samples are folded too, a chunk at
a time, percentiles come from the merged histogram and ``latency_error_us``
gives each one's bound; min, mean and max stay exact either way.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from c10k.load.latency import CONN_HDR, HDR, LatencyHistogram, percentiles, precision_words
from c10k.load.request import shown
from c10k.load.samples import STAT_KEYS, SortedSamples, connection_stats, exact_summary_ns
from c10k.load.timeseries import write_timeseries

__all__ = [
    "ProcessResult",
    "LoadResult",
    "latency_summary_us",
    "per_connection_stats",
    "merge_results",
    "write_results",
    "CSV_COLUMNS",
]

#: (key in summary["latency_us"], percentile or None for min/mean/max)
LATENCY_KEYS = ("min", "mean", "p50", "p90", "p99", "p999", "max")
_PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}

CSV_COLUMNS = (
    "connection", "source", "messages", "bytes", "connect_us",
    "min_us", "mean_us", "p50_us", "p99_us", "max_us", "error", "sent", "process",
    "mismatch_offset", "got",
)

_COUNTERS = (
    "established", "completed", "failed", "peak_open", "sent", "echoed", "mismatched",
    "bytes_sent", "bytes_echoed", "bytes_received", "reconnects", "warmup_replies",
    "connect_start_ns", "connect_end_ns",
    "message_start_ns", "message_end_ns",
)


@dataclass
class ProcessResult:
    """What one load process measured, with connection indices local to it."""

    index: int
    first: int  # global number of this process's first connection
    #: every byte-exact echo's round trip, ascending, while within the sample budget (else none)
    samples: SortedSamples
    #: min/mean/p50/p99/max (us) per connection, NaN without a sample (from the histogram once folded)
    connection_latency: dict[str, np.ndarray]
    connect_us: np.ndarray  # float64 per connection, NaN when never established
    echoed: np.ndarray  # int64 byte-exact echoes per connection
    sent: np.ndarray  # int64 messages sent per connection
    errors: list[str]  # '' when the connection completed
    sources: list[str]  # local ip:port of each connection ('' when it never got one)
    counters: dict[str, int] = field(default_factory=dict)
    pid: int = 0
    #: past the sample budget: every sample, folded (``samples`` is then empty)
    histogram: LatencyHistogram | None = None
    #: bytes of each connection's correct replies (None: ``echoed`` x the message's length)
    reply_bytes: np.ndarray | None = None
    #: local connection -> (first differing offset or -1, what came back, what was expected),
    #: for the reply that ended it (see ``ConnectionTable.got``)
    got: dict[int, tuple[int, bytes, bytes]] = field(default_factory=dict)

    @classmethod
    def from_samples(cls, latency_ns: np.ndarray, sample_conn: np.ndarray, **fields: Any) -> ProcessResult:
        """From raw samples in any order and their local connections (the other fields as named)."""
        stats = per_connection_stats(sample_conn, latency_ns, len(fields["errors"]))
        return cls(samples=SortedSamples(np.sort(np.asarray(latency_ns, dtype=np.int64))),
                   connection_latency=stats, **fields)

    @property
    def connections(self) -> int:
        return len(self.errors)

    @property
    def latency_ns(self) -> np.ndarray:
        """Every sample, ascending, in memory (read from the process's file when it is there)."""
        return self.samples.array()

    def save(self, path: Path) -> None:
        """PATH (.npz) and, with samples, PATH.samples: what ``load`` reads (the samples only as needed)."""
        arrays: dict[str, Any] = {f"conn_{k}": v for k, v in self.connection_latency.items()}
        h = self.histogram
        if h is not None:
            arrays.update(h_counts=h.counts, h_totals=np.array([h.n, h.sum, h.min, h.max], dtype=np.int64))
        if self.reply_bytes is not None:
            arrays["reply_bytes"] = self.reply_bytes
        if self.samples.count:
            self.samples.write(path.with_suffix(".samples"))
        np.savez(
            path, connect_us=self.connect_us, echoed=self.echoed, sent=self.sent,
            errors=np.array(self.errors, dtype=str), sources=np.array(self.sources, dtype=str),
            meta=np.array(json.dumps({"index": self.index, "first": self.first, "pid": self.pid,
                                      "counters": self.counters, "samples": self.samples.count,
                                      "samples_total": self.samples.total,
                                      "got": {j: [o, g.hex(), e.hex()] for j, (o, g, e) in self.got.items()}})),
            **arrays,
        )

    @classmethod
    def load(cls, path: Path) -> ProcessResult:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            histogram = None
            if "h_counts" in z:
                histogram = LatencyHistogram(0)
                histogram.counts = z["h_counts"]
                histogram.n, histogram.sum, histogram.min, histogram.max = (int(v) for v in z["h_totals"])
            samples = (SortedSamples(path=path.with_suffix(".samples"), count=meta["samples"],
                                     total=meta["samples_total"]) if meta["samples"] else SortedSamples.empty())
            got = {int(j): (o, bytes.fromhex(g), bytes.fromhex(e)) for j, (o, g, e) in meta.get("got", {}).items()}
            return cls(histogram=histogram, samples=samples, got=got, reply_bytes=z.get("reply_bytes", None),
                index=meta["index"], first=meta["first"], pid=meta["pid"], counters=meta["counters"],
                connection_latency={k: z[f"conn_{k}"] for k in STAT_KEYS},
                connect_us=z["connect_us"], echoed=z["echoed"], sent=z["sent"],
                errors=[str(e) for e in z["errors"]], sources=[str(s) for s in z["sources"]],
            )


def _num(x: float) -> float | None:
    return None if math.isnan(x) else round(float(x), 3)


def latency_summary_us(latency_ns: np.ndarray) -> dict[str, float | None]:
    """min, mean, p50, p90, p99, p999, max in microseconds; None for every key when empty."""
    return exact_summary_us([SortedSamples(np.sort(np.asarray(latency_ns, dtype=np.int64)))])


def exact_summary_us(parts: list[SortedSamples]) -> dict[str, float | None]:
    """``latency_summary_us`` over every process's samples, without gathering them."""
    found = exact_summary_ns(parts, tuple(_PERCENTILES.values()))
    if found is None:
        return {k: None for k in LATENCY_KEYS}
    value = {"min": found["min"], "mean": found["mean"], "max": found["max"],
             **{k: found[str(q)] for k, q in _PERCENTILES.items()}}
    return {k: round(value[k] / 1000, 3) for k in LATENCY_KEYS}


def histogram_summary_us(h: LatencyHistogram) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """(latency_us, latency_error_us) of a histogram: exact min/mean/max, percentiles with their bound."""
    if h.n == 0:
        return {k: None for k in LATENCY_KEYS}, {k: None for k in LATENCY_KEYS}
    idx = np.flatnonzero(h.counts)
    found = percentiles(HDR, idx, h.counts[idx], tuple(_PERCENTILES.values()))
    value: dict[str, float | None] = {"min": h.min / 1000, "mean": h.sum / h.n / 1000, "max": h.max / 1000}
    error: dict[str, float | None] = {"min": 0.0, "mean": 0.0, "max": 0.0}
    for key, (v, bound) in zip(_PERCENTILES, found, strict=True):
        # the exact percentile lies in [min, max]: clamping only brings the estimate closer
        value[key], error[key] = min(max(v, h.min), h.max) / 1000, bound / 1000
    return ({k: round(value[k], 3) for k in LATENCY_KEYS},  # type: ignore[arg-type]
            {k: round(error[k], 3) for k in LATENCY_KEYS})  # type: ignore[arg-type]


def per_connection_stats(conn: np.ndarray, latency_ns: np.ndarray, connections: int) -> dict[str, np.ndarray]:
    """min/mean/p50/p99/max (us) per connection, NaN where a connection has no sample.

    Percentiles interpolate linearly inside each connection's sorted samples, the
    same definition as numpy.percentile's default. (A load process does this in
    place on its own buffer: ``samples.py``.)
    """
    conn = np.asarray(conn, dtype=np.int64)
    lat = np.asarray(latency_ns, dtype=np.int64)
    return connection_stats(lat[np.lexsort((lat, conn))], np.bincount(conn, minlength=connections))


@dataclass
class LoadResult:
    """The merged outcome of a run: the summary dict (the contract) and rows for the CSV."""

    summary: dict[str, Any]
    rows: list[list[Any]]
    #: each process's samples while the percentiles are exact; none once folded (see summary["latency_precision"])
    samples: list[SortedSamples] = field(default_factory=list)
    #: (second, open, echoes, errors, p50_us, p99_us) per second of the run
    timeseries: list[tuple[int, int, int, int, float, float]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.summary["ok"])

    @property
    def latency_ns(self) -> np.ndarray:
        """Every sample, in memory (read from the load processes' files: as big as all of them)."""
        arrays = [s.array() for s in self.samples]
        return np.concatenate(arrays) if arrays else np.zeros(0, np.int64)


def merge_results(parts: list[ProcessResult], *, host: str, port: int, requested: int,
                  extra: dict[str, Any] | None = None,
                  timeseries: list[tuple[int, int, int, int, float, float]] | None = None) -> LoadResult:
    """Merge every process's results into one summary and one row per connection."""
    parts = sorted(parts, key=lambda p: p.first)
    samples = [p.samples for p in parts]
    merged: LatencyHistogram | None = None
    if any(p.histogram is not None for p in parts):
        merged = LatencyHistogram(0)
        for p in parts:
            if p.histogram is None:
                for chunk in p.samples.chunks():
                    merged.add(chunk, None)
            else:
                merged.merge(p.histogram)
        samples = []
    total = Counter({k: 0 for k in _COUNTERS})
    for p in parts:
        for k in ("established", "completed", "failed", "peak_open", "sent", "echoed", "mismatched",
                  "bytes_sent", "bytes_echoed", "bytes_received", "reconnects", "warmup_replies"):
            total[k] += int(p.counters.get(k, 0))

    def span(start: str, end: str) -> float:
        starts = [p.counters[start] for p in parts if p.counters.get(start, 0) > 0]
        ends = [p.counters[end] for p in parts if p.counters.get(end, 0) > 0]
        return max(0.0, (max(ends) - min(starts)) / 1e9) if starts and ends else 0.0

    connect_s = span("connect_start_ns", "connect_end_ns")
    elapsed_s = span("message_start_ns", "message_end_ns")
    errors: Counter[str] = Counter()
    for p in parts:
        errors.update(e for e in p.errors if e)
    missing = requested - sum(p.connections for p in parts)
    if missing > 0:
        errors["not_started"] += missing
    completed = total["completed"]
    summary: dict[str, Any] = {
        "host": host,
        "port": port,
        "connections": {
            "requested": requested,
            "established": total["established"],
            "completed": completed,
            # one meaning everywhere: a connection that ended with an error (its row's
            # error column is set); every requested connection is completed or failed
            "failed": sum(errors.values()),
            "peak_open": total["peak_open"],
        },
        "messages": {"sent": total["sent"], "echoed": total["echoed"], "mismatched": total["mismatched"]},
        "bytes": {"sent": total["bytes_sent"], "echoed": total["bytes_echoed"]},  # echoed: of correct replies only
        "bytes_received": total["bytes_received"],  # every byte that came back, right or wrong
        "reconnects": total["reconnects"],  # new sockets after --lifetime (the same connections)
        "warmup_messages": total["warmup_replies"],  # correct replies in the warm-up, not counted above
        "errors": dict(sorted(errors.items())),
        "error_examples": _error_examples(parts),
        "connect_s": round(connect_s, 6),
        "elapsed_s": round(elapsed_s, 6),
        "messages_per_s": round(total["echoed"] / elapsed_s, 3) if elapsed_s > 0 else 0.0,
        # bytes written and read (right or wrong) over the message phase, as messages_per_s: never per message
        "bandwidth_mib_s": {k: round(total[f"bytes_{b}"] / elapsed_s / 2**20, 3) if elapsed_s > 0 else 0.0
                            for k, b in (("up", "sent"), ("down", "received"))},
    }
    if merged is None:
        summary["latency_us"] = exact_summary_us(samples)
        summary["latency_precision"] = "exact"
        summary["latency_error_us"] = {k: (None if v is None else 0.0) for k, v in summary["latency_us"].items()}
    else:
        summary["latency_us"], summary["latency_error_us"] = histogram_summary_us(merged)
        summary["latency_precision"] = precision_words(HDR)
        summary["latency_hdr"] = merged.to_hdrh().encode().decode()
    summary["ok"] = bool(completed == requested and not errors and total["mismatched"] == 0)
    summary["interrupted"] = any(p.counters.get("interrupted") for p in parts)
    summary["processes"] = [
        {
            "index": p.index, "pid": p.pid, "first": p.first, "connections": p.connections,
            "established": int(p.counters.get("established", 0)), "echoed": int(p.counters.get("echoed", 0)),
            "connect_s": round(max(0, p.counters.get("connect_end_ns", 0) - p.counters.get("connect_start_ns", 0))
                               / 1e9, 6),
            "elapsed_s": round(max(0, p.counters.get("message_end_ns", 0) - p.counters.get("message_start_ns", 0))
                               / 1e9, 6),
        }
        for p in parts
    ]
    for row, p in zip(summary["processes"], parts, strict=True):
        row["messages_per_s"] = round(row["echoed"] / row["elapsed_s"], 3) if row["elapsed_s"] > 0 else 0.0
        row["cpu_s"] = round(p.counters.get("cpu_us", 0) / 1e6, 6)
        row["peak_rss_bytes"] = int(p.counters.get("peak_rss_bytes", 0))
        row["latency_precision"] = "exact" if p.histogram is None else precision_words(CONN_HDR)
    # the load's own CPU time (user + system, all processes) over the message phase
    summary["client_cpu_s"] = round(sum(row["cpu_s"] for row in summary["processes"]), 6)
    summary["client_cpu_us_per_message"] = (round(summary["client_cpu_s"] * 1e6 / total["echoed"], 3)
                                            if total["echoed"] else None)
    if extra:
        summary.update(extra)

    rows: list[list[Any]] = []
    for p in parts:
        cols = [p.connection_latency[k].round(3).tolist() for k in STAT_KEYS]
        connect = p.connect_us.round(3).tolist()
        ml = int(p.counters.get("message_bytes", 0))
        echoed, sent = p.echoed.tolist(), p.sent.tolist()
        nbytes = (p.echoed * ml if p.reply_bytes is None else p.reply_bytes).tolist()
        for j in range(p.connections):
            offset, got, _ = p.got.get(j, (-1, b"", b""))
            rows.append([p.first + j, p.sources[j], echoed[j], nbytes[j], _blank(connect[j]),
                         *(_blank(c[j]) for c in cols), p.errors[j], sent[j], p.index,
                         "" if offset < 0 else offset, shown(got) if j in p.got else ""])
    return LoadResult(summary=summary, rows=rows, samples=samples, timeseries=list(timeseries or []))


def _error_examples(parts: list[ProcessResult]) -> dict[str, dict[str, Any]]:
    """One connection per error reason that kept the reply it ended on: what came back, and where it differs."""
    out: dict[str, dict[str, Any]] = {}
    for p in parts:
        for j, (offset, got, expected) in sorted(p.got.items()):
            why = p.errors[j]
            if why and why not in out:
                out[why] = {"connection": p.first + j, "offset": None if offset < 0 else offset,
                            "got": shown(got), "expected": shown(expected) if expected else None}
    return dict(sorted(out.items()))


def _blank(x: float) -> float | str:
    return "" if math.isnan(x) else x


def write_results(result: LoadResult, out_dir: str | Path) -> tuple[Path, Path]:
    """Write DIR/summary.json, DIR/connections.csv and DIR/timeseries.csv; return the first two's paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary_path, csv_path = out / "summary.json", out / "connections.csv"
    summary_path.write_text(json.dumps(result.summary, indent=2) + "\n")
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        w.writerows(result.rows)
    write_timeseries(result.timeseries, out / "timeseries.csv")
    return summary_path, csv_path
