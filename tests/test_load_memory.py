"""Bounded memory: exact samples up to the budget, then an HDR histogram whose percentiles keep their bound."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from c10k import capacity
from c10k.errors import UsageError
from c10k.load import LoadSettings
from c10k.load.latency import CONN_HDR, HDR, HIGHEST_NS, LatencyHistogram, compact, merge_sparse, percentiles, sparse
from c10k.load.results import ProcessResult, merge_results
from c10k.load.samples import SortedSamples

QS = (0.0, 1.0, 50.0, 90.0, 99.0, 99.9, 100.0)
values = st.lists(st.integers(0, HIGHEST_NS), min_size=1, max_size=300)


@settings(max_examples=200, deadline=None)
@given(values, st.sampled_from([HDR, CONN_HDR]))
def test_histogram_percentiles_stay_within_their_bound_of_the_exact_ones(ns: list[int], layout) -> None:
    lat = np.array(ns, dtype=np.int64)
    found = percentiles(layout, *sparse(layout, lat), QS)
    for q, (value, bound) in zip(QS, found, strict=True):
        exact = float(np.percentile(lat, q))
        assert abs(value - exact) <= bound + 1e-6 * exact + 1e-9, (q, value, exact, bound)
        # the bound is the layout's precision (half a bucket: 1/2048 or 1/256 of the wider
        # neighbouring sample), or 256 ns near zero
        assert bound <= max(256, lat.max() / 2 ** (layout.half + 1))


def test_layout_matches_hdrhistogram() -> None:
    rng = np.random.default_rng(5)
    lat = np.concatenate([rng.integers(0, 10_000, 500), (2 ** rng.uniform(0, 41.7, 2_000)).astype(np.int64)])
    for layout in (HDR, CONN_HDR):
        h = layout.new()
        assert layout.index(lat).tolist() == [h.get_counts_array_index(int(v)) for v in lat]
        assert layout.lowest(layout.index(lat)).tolist() == [h.get_lowest_equivalent_value(int(v)) for v in lat]


def test_a_connections_histogram_is_compact_and_loses_no_count() -> None:
    rng = np.random.default_rng(3)
    lat = (2 ** rng.uniform(10, 40, 40_000)).astype(np.int64)  # 1 us .. 18 min: every octave
    h = LatencyHistogram(1)
    for part in np.array_split(lat, 8):  # eight folds: each merges into the compact one
        h.add(part, 0)
    idx, counts = h.conn_hist[0]
    assert (idx.dtype, counts.dtype) == (np.uint16, np.uint32)
    exact_idx, exact_counts = sparse(CONN_HDR, lat)
    assert idx.tolist() == exact_idx.tolist() and counts.tolist() == exact_counts.tolist()
    assert idx.nbytes + counts.nbytes == 6 * idx.size


def test_a_count_past_uint32_keeps_int64() -> None:
    big = np.array([np.iinfo(np.uint32).max], np.int64)
    idx, counts = compact(*merge_sparse((np.array([7], np.uint16), big), (np.array([7]), np.array([2]))))
    assert counts.dtype == np.int64 and int(counts[0]) == int(big[0]) + 2


def test_folded_processes_merge_within_the_stated_bounds() -> None:
    rng = np.random.default_rng(11)
    lat = (rng.lognormal(12, 1.2, 30_000)).astype(np.int64)
    conn = rng.integers(0, 3, lat.size).astype(np.int32)
    h = LatencyHistogram(3)
    h.add(lat[:20_000], conn[:20_000])
    counts = np.bincount(conn, minlength=3)
    folded = ProcessResult(index=0, first=0, samples=SortedSamples.empty(), connection_latency=h.connection_stats(),
                           connect_us=np.full(3, 5.0), echoed=np.bincount(conn[:20_000], minlength=3),
                           sent=counts, errors=[""] * 3, sources=[""] * 3, histogram=h,
                           counters={"completed": 3, "echoed": 20_000})
    raw = ProcessResult.from_samples(lat[20_000:], np.zeros(10_000, np.int32), index=1, first=3,
                                     connect_us=np.full(1, 5.0), echoed=np.array([10_000]), sent=np.array([10_000]),
                                     errors=[""], sources=[""], counters={"completed": 1, "echoed": 10_000})
    r = merge_results([raw, folded], host="h", port=1, requested=4)
    s = r.summary
    assert s["latency_precision"] == "hdr 3 significant digits"
    assert s["latency_us"]["min"] == pytest.approx(lat.min() / 1000, abs=1e-3)
    assert s["latency_us"]["max"] == pytest.approx(lat.max() / 1000, abs=1e-3)
    assert s["latency_us"]["mean"] == pytest.approx(lat.mean() / 1000, abs=1e-3)
    for key, q in (("p50", 50), ("p90", 90), ("p99", 99), ("p999", 99.9)):
        exact = np.percentile(lat, q) / 1000
        assert abs(s["latency_us"][key] - exact) <= s["latency_error_us"][key] + 1e-3, key
        assert 0 < s["latency_error_us"][key] <= max(0.256, exact / 2048)
    # per connection: exact min/max/mean, p50/p99 within 2 significant digits (half a bucket: 1/256)
    for j in range(3):
        mine = lat[:20_000][conn[:20_000] == j] / 1000
        row = r.rows[j]
        assert row[5] == pytest.approx(mine.min(), abs=1e-3) and row[9] == pytest.approx(mine.max(), abs=1e-3)
        assert row[6] == pytest.approx(mine.mean(), abs=1e-3)
        assert row[7] == pytest.approx(np.percentile(mine, 50), rel=1 / 256)
        assert row[8] == pytest.approx(np.percentile(mine, 99), rel=1 / 256)
    assert [p["latency_precision"] for p in s["processes"]] == ["hdr 2 significant digits", "exact"]


def _saved(tmp_path: Path, index: int, lat: np.ndarray, conns: int, folded: bool) -> ProcessResult:
    """A load process's results as it saves them, read back as the parent reads them."""
    conn = (np.arange(lat.size) % conns).astype(np.int32)
    fields = dict(index=index, first=index * conns, connect_us=np.full(conns, 5.0),
                  echoed=np.bincount(conn, minlength=conns), sent=np.bincount(conn, minlength=conns),
                  errors=[""] * conns, sources=[""] * conns, counters={"completed": conns, "echoed": lat.size})
    if folded:
        h = LatencyHistogram(conns)
        h.add(lat, conn)
        p = ProcessResult(samples=SortedSamples.empty(), connection_latency=h.connection_stats(), histogram=h,
                          **fields)  # type: ignore[arg-type]
    else:
        p = ProcessResult.from_samples(lat, conn, **fields)
    p.save(tmp_path / f"process-{index}.npz")
    return ProcessResult.load(tmp_path / f"process-{index}.npz")


@pytest.mark.parametrize("first_folded", [False, True])
def test_merging_saved_processes_holds_none_of_their_samples(tmp_path: Path, first_folded: bool) -> None:
    """The parent's merge reads each process's samples in place: its memory does not grow with them."""
    rng = np.random.default_rng(3)
    lats = [rng.lognormal(11, 1.0, 2_000_000).astype(np.int64) for _ in range(2)]  # 16 MB each
    union = np.concatenate(lats)
    exact = {key: np.percentile(union, q) / 1000 for key, q in (("p50", 50), ("p90", 90), ("p99", 99),
                                                                 ("p999", 99.9))}
    parts = [_saved(tmp_path, k, lat, 8, folded=first_folded and k == 0) for k, lat in enumerate(lats)]
    del lats
    tracemalloc.start()
    try:
        r = merge_results(parts, host="h", port=1, requested=16)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    s = r.summary
    # raw, the samples alone are 32 MB; folding reads them a chunk at a time (its temporaries, ~4 MB)
    assert peak < (6 if first_folded else 1) * 2**20, peak
    assert s["latency_precision"] == ("hdr 3 significant digits" if first_folded else "exact")
    for key, value in exact.items():
        assert abs(s["latency_us"][key] - value) <= s["latency_error_us"][key] + 1e-3, key
    assert s["latency_us"]["mean"] == pytest.approx(union.mean() / 1000, abs=1e-3)
    assert [p["latency_precision"] for p in s["processes"]] == [
        "hdr 2 significant digits" if first_folded else "exact", "exact"]


# Two runs of ``--processes 2`` with 1 MiB sample budgets in a fresh interpreter: first a tiny
# one, then one whose two load processes each end with (nearly) a full budget of raw samples,
# or, with 3 connections, one folded and one not. What the second adds to the parent's peak
# RSS (its own: VmHWM, see engine.peak_rss_bytes) is what the merge costs it.
PARENT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from c10k.load import run_load
    from c10k.load.engine import peak_rss_bytes as peak

    port, conns, count = (int(a) for a in sys.argv[1:])
    run_load("127.0.0.1", port, connections=conns, count=10, processes=2, sample_budget=2**20)
    before = peak()
    r = run_load("127.0.0.1", port, connections=conns, count=count, processes=2, sample_budget=2**20,
                 timeout=120)
    growth = peak() - before
    s = r.summary
    lat = r.latency_ns  # read from the load processes' files, after the peak was taken
    exact = {key: np.percentile(lat, q) / 1000 for key, q in
             (("p50", 50), ("p90", 90), ("p99", 99), ("p999", 99.9))} if lat.size else None
    print(json.dumps({"growth": growth, "after": peak(), "summary": s, "exact": exact}))
""")


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("conns, count", [(4, 65_000), (3, 100_000)])
def test_the_parent_holds_no_samples_of_its_load_processes(conns: int, count: int) -> None:
    server = subprocess.Popen([sys.executable, "-m", "c10k", "serve", "epoll", "-p", "0"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.startswith("listening on "), line
        out = subprocess.run([sys.executable, "-c", PARENT, line.rsplit(":", 1)[1].strip(), str(conns), str(count)],
                             capture_output=True, text=True, timeout=280)
    finally:
        server.terminate()
        server.wait(30)
        assert server.stdout is not None
        server.stdout.close()
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout)
    s = got["summary"]
    assert s["ok"] and s["messages"]["echoed"] == conns * count
    precisions = [p["latency_precision"] for p in s["processes"]]
    if conns == 4:  # 2 x 65,000 x 8 bytes: each load process ends exact, with 99 % of its budget
        assert precisions == ["exact", "exact"] and s["latency_precision"] == "exact"
        for key, value in got["exact"].items():
            assert s["latency_us"][key] == pytest.approx(value, abs=1e-3), key
        # before the merge read the samples in place, the parent held them, then copies: +10.7 MiB
        assert got["growth"] < 2**20, got["growth"]
    else:  # 2 connections x 100,000 fold, 1 x 100,000 fit: the exact one is folded in the parent
        assert sorted(precisions) == ["exact", "hdr 2 significant digits"]
        assert s["latency_precision"] == "hdr 3 significant digits"
        assert all(s["latency_error_us"][k] > 0 for k in ("p50", "p90", "p99", "p999"))
        from hdrh.histogram import HdrHistogram

        assert HdrHistogram.decode(s["latency_hdr"]).get_total_count() == conns * count
        assert got["growth"] < 6 * 2**20, got["growth"]  # a fold's temporaries, not the samples
    assert 0 < s["peak_rss_bytes"] <= got["after"]  # the parent's own peak, in the summary too


def test_sample_budget_is_checked_and_caps_the_plan() -> None:
    with pytest.raises(UsageError, match="--sample-budget"):
        LoadSettings(sample_budget=100)
    uncapped = capacity.load_memory_bytes(2000, 2, message_size=15, samples=200_000_000)
    capped = capacity.load_memory_bytes(2000, 2, message_size=15, samples=200_000_000, sample_budget=64 * 2**20)
    small = capacity.load_memory_bytes(2000, 2, message_size=15, samples=1000, sample_budget=64 * 2**20)
    assert capped == uncapped - (200_000_000 - 2 * 8 * 2**20) * capacity.LOAD_BYTES_PER_SAMPLE
    assert small == capacity.load_memory_bytes(2000, 2, message_size=15, samples=1000)


# 50,000,000 round trips through the closed loop's recording path (its slots, the fold when a
# connection's slots are full, the fold of what is left at the end) with a 64 MiB budget, in a
# fresh interpreter so that its peak RSS is its own. The sockets are left out: ``send`` is a no-op.
FIFTY_MILLION = textwrap.dedent("""
    import json, resource, sys
    import numpy as np
    from c10k.load.closed_loop import ClosedLoop
    from c10k.load.ramp import ConnectRamp
    from c10k.load.table import CONNECTED, ConnectionTable

    conns, count, budget = 100, 500_000, 64 * 2**20
    t = ConnectionTable(conns, b"x" * 15, 10.0)
    t.send = lambda fd, data: None
    ramp = ConnectRamp(t, address=("127.0.0.1", 9), family=2, first=0, sources=(), connect_rate=0,
                       max_connecting=1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    loop = ClosedLoop(t, ramp, None, count, budget)
    for j in range(conns):
        fd = 100 + j
        t.conn[fd], t.state[fd] = j, CONNECTED
        loop.begin(fd, 0)
    rng = np.random.default_rng(1)
    done = 0
    while t.running:
        for fd in list(t.running):
            lo, hi = loop.pos[fd], loop.end[fd]
            loop.view[lo:hi] = rng.integers(20_000, 2_000_000, hi - lo)  # what the hot path stores
            loop.pos[fd] = hi
            done += hi - lo
            loop._slots_full(fd)
            if fd % 10 == 0:  # as the tick does once a second
                loop.close_seconds(t.seconds.next_ns)
    loop.fold_rest()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    h = loop.histogram
    print(json.dumps({"samples": done, "folded": h.n, "echoed": int(t.echoed.sum()), "before": before,
                      "peak": peak, "cap": loop.cap}))
""")


@pytest.mark.timeout(600)
def test_fifty_million_samples_stay_within_the_budget() -> None:
    out = subprocess.run([sys.executable, "-c", FIFTY_MILLION], capture_output=True, text=True, timeout=580)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout)
    assert got["samples"] == got["folded"] == got["echoed"] == 50_000_000
    assert got["cap"] * 100 * 8 <= 64 * 2**20
    growth = got["peak"] - got["before"]
    # raw, they would take 400 MB; the budget's slots plus the histograms and a fold's temporaries
    assert growth < 64 * 2**20 + 40 * 2**20, growth


@pytest.mark.timeout(120)
def test_sample_budget_option_reaches_the_engines(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from c10k.cli import main
    from test_load_faults import ThreadServer, echo

    srv = ThreadServer(echo)
    try:
        status = main(["load", "-p", str(srv.port), "-c", "4", "-n", "300", "--processes", "2",
                       "--sample-budget", "1KiB", "--out", str(tmp_path), "--json"])
    finally:
        srv.close()
    assert status == 0
    s = json.loads(capsys.readouterr().out)
    assert s["sample_budget_bytes"] == 1024
    assert s["latency_precision"] == "hdr 3 significant digits" and s["messages"]["echoed"] == 1200
    from hdrh.histogram import HdrHistogram

    assert HdrHistogram.decode(s["latency_hdr"]).get_total_count() == 1200
    assert (tmp_path / "timeseries.csv").read_text().startswith("second,open,echoes,errors,p50_us,p99_us\n")
