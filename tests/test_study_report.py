"""The report from fabricated results: tables, results.json, charts, HTML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from c10k.study.cases import EXPECTED_BEHAVIOR, Case
from c10k.study.report import CHARTS, cpu_per_message_us, results_rows, write_report
from c10k.study.runner import CaseResult, StudyResult
from c10k.study.sampler import Usage
from c10k.study.verdict import PASSED_RESULT

FD_REASON = "select() cannot watch descriptors >= FD_SETSIZE (1024): 977 of 2000 connections refused"


def summary(n: int, mean_us: float, echoed: int | None = None) -> dict:
    echoed = n * 100 if echoed is None else echoed
    return {
        "host": "127.0.0.1", "port": 1,
        "connections": {"requested": n, "established": n, "completed": n, "failed": 0, "peak_open": n},
        "messages": {"sent": n * 100, "echoed": echoed, "mismatched": 0},
        "bytes": {"sent": n * 1500, "echoed": echoed * 15},
        "errors": {}, "connect_s": 0.1, "elapsed_s": 1.0, "messages_per_s": echoed / 1.0,
        "latency_us": {"min": mean_us / 4, "mean": mean_us, "p50": mean_us * 0.9, "p90": mean_us * 1.5,
                       "p99": mean_us * 3, "p999": mean_us * 5, "max": mean_us * 9},
    }


def result(number: int, server: str, n: int, mean_us: float, cpu_s: float, status: str = "passed",
           reason: str = PASSED_RESULT, original: str | None = None) -> CaseResult:
    usage = Usage(peak_rss_bytes=20 * 2**20 + n * 4096, idle_rss_bytes=20 * 2**20, peak_threads=1,
                  peak_fds=n + 6, peak_fds_per_process=n + 6, peak_processes=1, cpu_s=cpu_s, samples=5)
    echoed = n * 100 if status == "passed" else (n - 977) * 100
    return CaseResult(Case(number, server, n, original=original), status, reason, f"{server}/{n}",
                      summary(n, mean_us, echoed), usage, {"accepted": n, "peak_concurrent": n}, 0, 0, 1.5)


def fabricated_study() -> StudyResult:
    results = [
        result(1, "select", 1, 60, 0.06, original="passed"),
        result(2, "select", 1000, 900, 4.0, original="passed"),
        result(3, "select", 2000, 2500, 9.0, "failed", FD_REASON, original="failed"),
        result(4, "poll", 1000, 800, 3.0),
        result(5, "poll", 2000, 1900, 7.5),
        result(6, "epoll", 1, 50, 0.06, original="passed"),
        result(7, "epoll", 1000, 500, 1.5),
        result(8, "epoll", 2000, 1000, 3.0),
        result(9, "threaded", 30000, 5000, 30.0, "failed",
               "process descriptor limit (20000) reached: 10010 of 30000 connections refused",
               original="passed"),
    ]
    machine = {"cpus": 2, "memory_bytes": 24 * 2**30, "platform": "Linux", "python": "3.11",
               "rlimit_nofile": [20000, 20000], "fd_setsize": 1024, "somaxconn": 4096,
               "ephemeral_port_range": [32768, 60999]}
    return StudyResult("fabricated", results, machine, "2026-01-01T00:00:00Z", 42.0)


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    written = write_report(fabricated_study(), out)
    (out / "written.txt").write_text("\n".join(p.name for p in written))
    return out


def table(md: str, header_start: str) -> list[list[str]]:
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split(" | ")])
    return rows


def test_report_md_has_the_originals_test_case_table(report_dir):
    tmp_path = report_dir
    md = (tmp_path / "REPORT.md").read_text()
    rows = table(md, "| Test Case | Scenario |")
    assert rows[0] == ["Test Case", "Scenario", "Expected Behavior", "Actual Results", "Status"]
    body = rows[2:]
    assert len(body) == 9
    assert body[0] == ["1", "1 client connecting to select server", EXPECTED_BEHAVIOR, PASSED_RESULT,
                       "Passed, see Results (1)"]
    assert body[2][1] == "2000 clients connecting to select server"
    assert body[2][3] == FD_REASON and body[2][4] == "Failed, see Results (3)"
    assert body[8][1] == "30000 clients connecting to multithreaded server"


def test_report_md_has_a_results_table_with_the_measures(report_dir):
    tmp_path = report_dir
    md = (tmp_path / "REPORT.md").read_text()
    rows = table(md, "| Test Case | Server |")
    header = rows[0]
    for column in ("Mean (ms)", "p50 (ms)", "p99 (ms)", "Max (ms)", "Messages/s", "Peak memory (MiB)",
                   "Memory/connection (KiB)", "Threads", "Descriptors", "CPU/message (µs)"):
        assert column in header
    select_1000 = dict(zip(header, rows[3], strict=True))
    assert select_1000["Server"] == "select" and select_1000["Connections"] == "1,000"
    assert select_1000["Mean (ms)"] == "0.9"
    assert select_1000["p99 (ms)"] == "2.7"
    assert select_1000["Messages/s"] == "100,000"
    assert select_1000["Memory/connection (KiB)"] == "4"
    assert select_1000["CPU/message (µs)"] == "40"
    assert select_1000["Descriptors"] == "1006"
    assert select_1000["Held at once"] == "1,000"  # the server's own peak_concurrent, not the client's count


def test_against_the_original_explains_the_threaded_difference(report_dir):
    tmp_path = report_dir
    md = (tmp_path / "REPORT.md").read_text()
    rows = table(md, "| Test Case | Scenario | Original |")
    by_case = {r[0]: r for r in rows[2:]}
    assert by_case["1"][2:4] == ["Passed", "Passed"]
    assert by_case["9"][2:4] == ["Passed", "Failed"]
    assert "RLIMIT_NOFILE is 20,000" in by_case["9"][4]
    assert "4" not in by_case  # cases the original did not run are left out


def test_results_json_follows_the_contract(report_dir):
    tmp_path = report_dir
    data = json.loads((tmp_path / "results.json").read_text())
    assert isinstance(data["machine"], dict)
    case = data["cases"][2]
    assert {"case", "server", "connections", "status", "reason", "summary", "server_usage"} <= set(case)
    assert case["case"] == 3 and case["status"] == "failed" and case["reason"] == FD_REASON
    assert {"peak_rss_bytes", "peak_threads", "peak_fds", "cpu_s"} <= set(case["server_usage"])
    again = StudyResult.from_json(data)
    assert [r.reason for r in again.results] == [r.reason for r in fabricated_study().results]
    assert results_rows(again.results) == results_rows(fabricated_study().results)


def test_charts_are_pngs_and_the_html_inlines_them(report_dir):
    tmp_path = report_dir
    written = (tmp_path / "written.txt").read_text().split()
    for name in CHARTS:
        png = tmp_path / name
        assert name in written
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"![{name}]({name})" in (tmp_path / "REPORT.md").read_text()
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(CHARTS)
    assert "<th>Expected Behavior</th>" in page and "Failed, see Results (3)" in page
    assert "&gt;= FD_SETSIZE" in page


def test_cpu_per_message_is_left_out_when_too_small_to_measure():
    tiny = result(1, "epoll", 1, 50, 0.01)
    assert cpu_per_message_us(tiny) is None
    assert cpu_per_message_us(result(2, "epoll", 1000, 50, 1.0)) == 10.0


def test_a_study_without_any_measurements_still_writes_tables(tmp_path):
    empty = CaseResult(Case(1, "select", 5), "failed", "server did not start: it exited with status 1",
                       "select/5")
    study = StudyResult("broken", [empty], {}, "2026-01-01T00:00:00Z")
    written = write_report(study, tmp_path)
    assert not any(p.suffix == ".png" for p in written)
    md = (tmp_path / "REPORT.md").read_text()
    assert "server did not start" in md
