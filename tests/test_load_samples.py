"""Raw samples handled in place: per-connection statistics and merged percentiles equal numpy's."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from c10k.load.results import per_connection_stats
from c10k.load.samples import SortedSamples, connection_stats, exact_summary_ns, group_by_connection, sort_groups

QS = (0.0, 1.0, 50.0, 90.0, 99.0, 99.9, 100.0)
samples = st.lists(st.tuples(st.integers(0, 6), st.integers(0, 10**10)), max_size=200)


@settings(max_examples=80, deadline=None)
@given(samples)
def test_grouping_in_place_gives_numpys_per_connection_statistics(pairs: list[tuple[int, int]]) -> None:
    conn = np.array([c for c, _ in pairs], dtype=np.int32)
    lat = np.array([v for _, v in pairs], dtype=np.int64)
    view = lat.copy()
    counts = group_by_connection(view, conn, 7)
    assert counts is not None
    assert sorted(view.tolist()) == sorted(lat.tolist())  # the same samples, only moved
    expected = per_connection_stats(conn, lat, 7)
    got = connection_stats(view, counts)
    for j in range(7):
        mine = lat[conn == j] / 1000
        if mine.size == 0:
            assert all(np.isnan(got[k][j]) for k in got)
            continue
        assert got["min"][j] == pytest.approx(mine.min()) and got["max"][j] == pytest.approx(mine.max())
        assert got["mean"][j] == pytest.approx(mine.mean())
        assert got["p50"][j] == pytest.approx(np.percentile(mine, 50))
        assert got["p99"][j] == pytest.approx(np.percentile(mine, 99))
        assert all(got[k][j] == pytest.approx(expected[k][j]) for k in got)


def test_grouping_declines_values_too_large_for_the_tag() -> None:
    view = np.array([5, 2**60], dtype=np.int64)
    assert group_by_connection(view, np.array([0, 1], np.int32), 1000) is None
    assert view.tolist() == [5, 2**60]  # untouched: the caller folds them instead


def test_sort_groups_sorts_each_connection_alone() -> None:
    view = np.array([3, 1, 2, 9, 7, 8, 4], dtype=np.int64)
    sort_groups(view, np.array([3, 0, 1, 3]))
    assert view.tolist() == [1, 2, 3, 9, 4, 7, 8]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.lists(st.integers(0, 10**12), max_size=60), min_size=1, max_size=4), st.data())
def test_merged_percentiles_equal_numpys_over_the_union(parts: list[list[int]], data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sorted_parts = []
        for k, values in enumerate(parts):
            s = SortedSamples(np.sort(np.array(values, dtype=np.int64)))
            if data.draw(st.booleans(), label=f"part {k} in a file"):
                s.write(Path(tmp) / f"{k}")
                s = SortedSamples(path=Path(tmp) / f"{k}", count=s.count, total=s.total)
            sorted_parts.append(s)
        found = exact_summary_ns(sorted_parts, QS)
    union = np.array([v for vs in parts for v in vs], dtype=np.int64)
    if union.size == 0:
        assert found is None
        return
    assert found is not None
    assert found["min"] == union.min() and found["max"] == union.max()
    assert found["mean"] == pytest.approx(union.mean(), rel=1e-12)
    for q in QS:
        assert found[str(q)] == pytest.approx(np.percentile(union, q), rel=1e-12, abs=1e-6), q


def test_a_file_stays_readable_after_it_is_removed(tmp_path: Path) -> None:
    values = np.arange(200_000, dtype=np.int64) * 3
    SortedSamples(values).write(tmp_path / "s")
    s = SortedSamples(path=tmp_path / "s", count=values.size, total=int(values.sum()))
    (tmp_path / "s").unlink()
    assert s.count_le(299_999) == 100_000 and s[199_999] == 599_997
    assert s.array().tolist() == values.tolist()
    assert sum(c.size for c in s.chunks()) == values.size


@pytest.mark.timeout(120)
def test_open_loop_processes_merge_exactly() -> None:
    """The open loop's samples, grouped in place in each load process, merge to numpy's percentiles."""
    from c10k.load import run_load
    from test_load_faults import ThreadServer, echo

    srv = ThreadServer(echo)
    try:
        r = run_load("127.0.0.1", srv.port, connections=6, rate=600, duration=1.0, processes=2, timeout=30)
    finally:
        srv.close()
    s = r.summary
    assert r.ok, s["errors"]
    assert s["latency_precision"] == "exact" and [p["latency_precision"] for p in s["processes"]] == ["exact"] * 2
    lat = r.latency_ns
    assert lat.size == s["messages"]["echoed"] == 600
    for key, q in (("p50", 50), ("p90", 90), ("p99", 99), ("p999", 99.9)):
        assert s["latency_us"][key] == pytest.approx(np.percentile(lat, q) / 1000, abs=1e-3), key
    assert min(row[5] for row in r.rows) == pytest.approx(lat.min() / 1000, abs=1e-3)
    assert max(row[9] for row in r.rows) == pytest.approx(lat.max() / 1000, abs=1e-3)
    assert sum(row[2] for row in r.rows) == 600
    assert sum(row[6] * row[2] for row in r.rows) / 600 == pytest.approx(lat.mean() / 1000, rel=1e-6)
