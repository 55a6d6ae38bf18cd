"""The report's time-series chart: each case's messages/s and p99, second by second.

Reads each case's ``<server>/<slug>/timeseries.csv`` (written by ``c10k load``)
and draws one line per case, coloured by architecture: echoes per second on
top, p99 per second below (log scale). A case with no file (an older load, or
one that never started) is left out.
"""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from c10k.study.cases import SERVERS  # noqa: E402
from c10k.study.runner import CaseResult  # noqa: E402

__all__ = ["TIMESERIES_CHART", "TIMESERIES_CAPTION", "read_timeseries", "timeseries_chart"]

TIMESERIES_CHART = "timeseries.png"
TIMESERIES_CAPTION = ("Second by second, each case's echoes per second (top) and p99 response time (bottom), "
                      "over every load process (from its timeseries.csv; second 0 is the load's start, "
                      "connect phase included).")


def read_timeseries(path: Path) -> list[tuple[int, int, float | None]]:
    """(second, echoes, p99 ms or None) per row of a timeseries.csv; [] when there is none."""
    try:
        with path.open(newline="") as f:
            return [(int(row["second"]), int(row["echoes"]), float(row["p99_us"]) / 1000 if row["p99_us"] else None)
                    for row in csv.DictReader(f)]
    except (OSError, KeyError, ValueError):
        return []


def timeseries_chart(results: list[CaseResult], out_dir: Path, path: Path) -> bool:
    """Draw the chart when at least one case has a time series; say whether it did."""
    series = [(r, rows) for r in results if (rows := read_timeseries(out_dir / r.directory / "timeseries.csv"))]
    if not series:
        return False
    palette = {name: plt.get_cmap("tab10")(i) for i, name in enumerate(SERVERS)}
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    for r, rows in series:
        label = f"{r.case.server} {r.case.slug}"
        color = palette.get(r.case.server, "grey")
        top.plot([s for s, _, _ in rows], [e for _, e, _ in rows], color=color, linewidth=1.2, alpha=0.8,
                 label=label)
        pts = [(s, p) for s, _, p in rows if p is not None and p > 0]
        if pts:
            bottom.plot(*zip(*pts, strict=True), color=color, linewidth=1.2, alpha=0.8)
    top.set_ylabel("echoes per second")
    top.set_ylim(bottom=0)
    bottom.set_ylabel("p99 (ms, log scale)")
    bottom.set_yscale("log")
    bottom.set_xlabel("second of the load")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    if len(series) <= 16:
        top.legend(fontsize=7, ncol=2, loc="upper right")
    else:  # one entry per architecture
        servers = dict.fromkeys(r.case.server for r, _ in series)
        top.legend(handles=[Line2D([], [], color=palette.get(s, "grey"), label=s) for s in servers], fontsize=8,
                   loc="upper right")
    fig.suptitle("Each case over time", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
