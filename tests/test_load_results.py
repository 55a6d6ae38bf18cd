"""Exact statistics: per-connection and merged percentiles equal numpy's on the raw samples."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from c10k.load import run_load, write_results
from c10k.load.results import CSV_COLUMNS, ProcessResult, latency_summary_us, merge_results, per_connection_stats
from test_load_faults import ThreadServer, echo

REQUIRED_COLUMNS = "connection,source,messages,bytes,connect_us,min_us,mean_us,p50_us,p99_us,max_us,error"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 10**9)), max_size=200))
def test_per_connection_stats_match_numpy(samples: list[tuple[int, int]]) -> None:
    conns = 7
    conn = np.array([c for c, _ in samples], dtype=np.int32)
    lat = np.array([v for _, v in samples], dtype=np.int64)
    stats = per_connection_stats(conn, lat, conns)
    for j in range(conns):
        mine = lat[conn == j] / 1000.0
        if mine.size == 0:
            assert all(np.isnan(stats[k][j]) for k in stats)
            continue
        assert stats["min"][j] == pytest.approx(mine.min())
        assert stats["max"][j] == pytest.approx(mine.max())
        assert stats["mean"][j] == pytest.approx(mine.mean())
        assert stats["p50"][j] == pytest.approx(np.percentile(mine, 50))
        assert stats["p99"][j] == pytest.approx(np.percentile(mine, 99))


def _part(index: int, first: int, lat_by_conn: list[list[int]]) -> ProcessResult:
    lat = np.array([v for vs in lat_by_conn for v in vs], dtype=np.int64)
    conn = np.array([j for j, vs in enumerate(lat_by_conn) for _ in vs], dtype=np.int32)
    n = len(lat_by_conn)
    counts = np.array([len(vs) for vs in lat_by_conn], dtype=np.int64)
    return ProcessResult.from_samples(
        lat, conn, index=index, first=first, connect_us=np.full(n, 10.0),
        echoed=counts, sent=counts, errors=[""] * n, sources=["127.0.0.1:1"] * n,
        counters={"established": n, "completed": n, "echoed": int(counts.sum()), "sent": int(counts.sum()),
                  "connect_start_ns": 100, "connect_end_ns": 200 + index,
                  "message_start_ns": 1000 + index, "message_end_ns": 2_000_001_000, "message_bytes": 4})


def test_merge_is_exact_over_the_union() -> None:
    rng = np.random.default_rng(7)
    a = [rng.integers(1_000, 5_000_000, size=50).tolist() for _ in range(3)]
    b = [rng.integers(1_000, 9_000_000, size=80).tolist() for _ in range(2)]
    r = merge_results([_part(1, 3, b), _part(0, 0, a)], host="h", port=1, requested=5)
    union = np.array([v for vs in a + b for v in vs], dtype=np.float64) / 1000
    s = r.summary
    assert s["messages"]["echoed"] == 310
    assert s["latency_us"]["p99"] == pytest.approx(np.percentile(union, 99), abs=1e-3)
    assert s["latency_us"]["p999"] == pytest.approx(np.percentile(union, 99.9), abs=1e-3)
    assert s["latency_us"]["max"] == pytest.approx(union.max(), abs=1e-3)
    assert s["elapsed_s"] == pytest.approx(2.0, abs=1e-6)
    assert s["messages_per_s"] == pytest.approx(155.0, rel=1e-6)
    assert [row[0] for row in r.rows] == [0, 1, 2, 3, 4]
    assert r.rows[3][7] == pytest.approx(np.percentile(np.array(b[0]) / 1000, 50), abs=1e-3)
    assert r.ok


def test_empty_latency_summary() -> None:
    assert latency_summary_us(np.zeros(0, np.int64)) == dict.fromkeys(
        ("min", "mean", "p50", "p90", "p99", "p999", "max"))


def test_process_result_round_trips(tmp_path: Path) -> None:
    p = _part(2, 10, [[5, 6], [], [7]])
    p.errors[1] = "ECONNREFUSED"
    p.save(tmp_path / "p.npz")
    q = ProcessResult.load(tmp_path / "p.npz")
    assert q.errors == ["", "ECONNREFUSED", ""]
    assert q.first == 10 and q.index == 2 and q.counters == p.counters
    assert q.latency_ns.tolist() == [5, 6, 7]


@pytest.mark.timeout(120)
def test_two_processes_merge_every_sample(tmp_path: Path) -> None:
    srv = ThreadServer(echo)
    try:
        r = run_load("127.0.0.1", srv.port, connections=12, count=40, processes=2, timeout=10)
    finally:
        srv.close()
    s = r.summary
    assert r.ok, s["errors"]
    assert s["messages"] == {"sent": 480, "echoed": 480, "mismatched": 0}
    assert [p["connections"] for p in s["processes"]] == [6, 6]
    assert r.latency_ns.size == 480
    lat = r.latency_ns / 1000
    for key, q in (("p50", 50), ("p90", 90), ("p99", 99), ("p999", 99.9)):
        assert s["latency_us"][key] == pytest.approx(np.percentile(lat, q), abs=1e-3)
    write_results(r, tmp_path)
    with (tmp_path / "connections.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert ",".join(CSV_COLUMNS).startswith(REQUIRED_COLUMNS)
    assert [int(row["connection"]) for row in rows] == list(range(12))
    assert sum(int(row["messages"]) for row in rows) == 480
    assert all(row["error"] == "" and row["source"].startswith("127.0.0.1:") for row in rows)
    assert {int(row["process"]) for row in rows} == {0, 1}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["connections"]["peak_open"] == 12


def test_failed_means_connections_that_ended_with_an_error() -> None:
    """One meaning of "failed": every requested connection is completed or failed, and a failed
    one has its reason in the error column (a process that never reported counts as not_started)."""
    p = _part(0, 0, [[5, 6], [], [7]])
    p.errors[1] = "ECONNREFUSED"
    p.counters["completed"] = 2
    r = merge_results([p], host="h", port=1, requested=5)  # connections 3 and 4: no process reported them
    c = r.summary["connections"]
    assert r.summary["errors"] == {"ECONNREFUSED": 1, "not_started": 2}
    assert c["failed"] == 3 == sum(r.summary["errors"].values()) == c["requested"] - c["completed"]
    assert not r.ok
