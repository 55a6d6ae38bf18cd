"""The per-second time series (timeseries.csv) and the live numbers of the progress line."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from c10k.load import Progress, run_load, write_results
from c10k.load.latency import HDR, sparse
from c10k.load.timeseries import TIMESERIES_COLUMNS, Second, TimeSeries
from test_load_faults import ThreadServer, echo


def _second(second: int, ns: list[int], *, open_: int = 1, errors: int = 0, final: bool = False) -> Second:
    idx, counts = sparse(HDR, np.array(ns, dtype=np.int64))
    return Second(second, open_, len(ns), errors, idx, counts, final=final)


def test_seconds_merge_over_processes_once_all_reported() -> None:
    series = TimeSeries(2)
    series.add(0, _second(0, [1_000_000, 2_000_000]))
    assert series.rows == []  # process 1 has not reported second 0 yet
    series.add(1, _second(0, [3_000_000], open_=2, errors=1))
    series.add(1, _second(1, [4_000_000], open_=0, final=True))  # process 1 ends in second 1
    series.add(0, _second(1, [5_000_000]))
    series.add(0, _second(2, [6_000_000], open_=0, final=True))  # second 2: process 0 alone
    rows = series.finish()
    assert [r[:4] for r in rows] == [(0, 3, 3, 1), (1, 1, 2, 0), (2, 0, 1, 0)]
    p50, p99 = rows[0][4:]
    assert p50 == pytest.approx(2000, rel=1e-3) and p99 == pytest.approx(2980, rel=1e-3)


@pytest.mark.timeout(120)
def test_open_loop_run_has_a_row_per_second_that_adds_up(tmp_path: Path) -> None:
    srv = ThreadServer(echo)
    seen: list[Progress] = []
    try:
        r = run_load("127.0.0.1", srv.port, connections=4, processes=2, rate=400, duration=3, timeout=10,
                     on_progress=seen.append)
    finally:
        srv.close()
    s = r.summary
    assert r.ok, s["errors"]
    write_results(r, tmp_path)
    with (tmp_path / "timeseries.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == TIMESERIES_COLUMNS
    assert [int(row["second"]) for row in rows] == list(range(len(rows)))
    assert 3 <= len(rows) <= 5  # 3 s of sending, the connect phase before and the last echoes after
    assert sum(int(row["echoes"]) for row in rows) == s["messages"]["echoed"] == 1200
    assert sum(int(row["errors"]) for row in rows) == s["connections"]["failed"] == 0
    assert int(rows[0]["open"]) == 4 and int(rows[-1]["open"]) == 0
    lat = s["latency_us"]
    for row in rows:
        if row["p99_us"]:
            slack = float(row["p99_us"]) / 2048 + 0.3  # half an HDR bucket
            assert lat["min"] - slack <= float(row["p50_us"]) <= float(row["p99_us"]) <= lat["max"] + slack
    busy = [row for row in rows if int(row["echoes"]) >= 300]
    assert len(busy) >= 2  # 400 msg/s spread over the seconds, not lumped into one
    live = [p for p in seen if p.messages_per_s is not None]
    assert live, "the progress never carried a whole second's numbers"
    assert all(p.p50_us is None or p.p50_us <= p.p99_us for p in live)  # type: ignore[operator]
    assert max(p.messages_per_s or 0 for p in live) >= 300


@pytest.mark.timeout(120)
def test_closed_loop_series_counts_every_echo_with_and_without_folding(tmp_path: Path) -> None:
    srv = ThreadServer(echo)
    try:
        exact = run_load("127.0.0.1", srv.port, connections=6, count=300, processes=2, timeout=10)
        folded = run_load("127.0.0.1", srv.port, connections=6, count=300, processes=2, timeout=10,
                          sample_budget=1024)
    finally:
        srv.close()
    for r in (exact, folded):
        assert r.ok, r.summary["errors"]
        assert sum(row[2] for row in r.timeseries) == r.summary["messages"]["echoed"] == 1800
    assert exact.summary["latency_precision"] == "exact"
    assert folded.summary["latency_precision"] == "hdr 3 significant digits"


def test_the_study_report_draws_each_cases_time_series(tmp_path: Path) -> None:
    from c10k.load.timeseries import write_timeseries
    from c10k.study.cases import Case
    from c10k.study.report import write_report
    from c10k.study.runner import CaseResult, StudyResult
    from c10k.study.timeseries_report import TIMESERIES_CHART, read_timeseries

    cases = [CaseResult(Case(1, "epoll", 10), "passed", "ok", "epoll/10"),
             CaseResult(Case(2, "poll", 10), "passed", "ok", "poll/10"),
             CaseResult(Case(3, "select", 10), "failed", "never started", "select/10")]
    for r, scale in zip(cases[:2], (1.0, 3.0), strict=True):
        (tmp_path / r.directory).mkdir(parents=True)
        write_timeseries([(s, 10, 1000 * s, 0, 100.0 * scale, 900.0 * scale) for s in range(4)]
                         + [(4, 0, 0, 0, float("nan"), float("nan"))], tmp_path / r.directory / "timeseries.csv")
    assert read_timeseries(tmp_path / "poll/10/timeseries.csv")[1] == (1, 1000, 2.7)
    assert read_timeseries(tmp_path / "select/10/timeseries.csv") == []
    written = write_report(StudyResult("t", cases, {}, "2026-01-01T00:00:00Z"), tmp_path)
    assert tmp_path / TIMESERIES_CHART in written
    assert (tmp_path / TIMESERIES_CHART).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"![{TIMESERIES_CHART}]({TIMESERIES_CHART})" in (tmp_path / "REPORT.md").read_text()
    assert f'alt="{TIMESERIES_CHART}"' in (tmp_path / "report.html").read_text()
    # no time series anywhere: no chart
    bare = tmp_path / "bare"
    write_report(StudyResult("t", cases[2:], {}, "2026-01-01T00:00:00Z"), bare)
    assert not (bare / TIMESERIES_CHART).exists()
