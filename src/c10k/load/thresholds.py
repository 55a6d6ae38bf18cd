"""Pass/fail thresholds for CI pipelines: a run that breaks one exits 1 and names it.

Pure logic over a finished run's ``summary.json`` dict, so it is tested without
running anything. Latencies are judged in microseconds, as the summary keeps them.
"""

from __future__ import annotations

from dataclasses import dataclass

from c10k.text import latency_words

__all__ = ["Thresholds", "broken"]


@dataclass(frozen=True)
class Thresholds:
    """Limits a run must stay within; None means no limit."""

    max_p50_us: float | None = None
    max_p99_us: float | None = None
    max_errors: int | None = None
    min_rate: float | None = None

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.max_p50_us, self.max_p99_us, self.max_errors, self.min_rate))


def broken(summary: dict, limits: Thresholds) -> list[str]:
    """Every threshold the run broke, in words (empty when it kept them all)."""
    out = []
    latency = summary.get("latency_us") or {}
    for key, limit, option in (("p50", limits.max_p50_us, "--max-p50"), ("p99", limits.max_p99_us, "--max-p99")):
        if limit is None:
            continue
        value = latency.get(key)
        if value is None:
            out.append(f"{key} unknown (no echo came back), {option} {latency_words(limit)}")
        elif value > limit:
            out.append(f"{key} {latency_words(value)} > {option} {latency_words(limit)}")
    if limits.max_errors is not None:
        errors = sum((summary.get("errors") or {}).values())
        if errors > limits.max_errors:
            out.append(f"{errors:,} errors > --max-errors {limits.max_errors:,}")
    if limits.min_rate is not None:
        rate = float(summary.get("messages_per_s") or 0.0)
        if rate < limits.min_rate:
            out.append(f"{rate:,.0f} messages/s < --min-rate {limits.min_rate:,.0f}")
    return out
