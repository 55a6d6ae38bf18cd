"""`c10k study` end to end: a reduced quick matrix with the real servers and load.

select at 2000 connections must fail for the FD_SETSIZE reason, as in the
original; the others pass; the report holds the original's tables.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from c10k.study.cases import EXPECTED_BEHAVIOR, quick_matrix
from c10k.study.report import CHARTS
from c10k.study.verdict import PASSED_RESULT

REDUCED = """
name = "reduced quick"
messages = 10

[[case]]
server = "select"
connections = [1, 2000]

[[case]]
server = ["poll", "epoll"]
connections = 300

[[case]]
server = "poll"
connections = 200
rate = 1000
duration = 2
"""


def study(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "c10k", "study", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})


def md_table(md: str, header_start: str) -> list[dict[str, str]]:
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    header = [c.strip() for c in lines[start].strip("|").split(" | ")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, [c.strip() for c in line.strip("|").split(" | ")], strict=True)))
    return rows


@pytest.fixture(scope="module")
def reduced_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    root = tmp_path_factory.mktemp("study")
    matrix = root / "reduced.toml"
    matrix.write_text(REDUCED)
    out = root / "results"
    return study("--matrix", str(matrix), "--out", str(out)), out


@pytest.mark.timeout(600)
def test_the_study_runs_and_exits_0_although_a_case_fails(reduced_run):
    proc, out = reduced_run
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line[:3].strip().isdigit()]
    assert len(lines) == 5  # one line per case when stdout is not a terminal
    assert "5 cases: 4 passed, 1 failed" in proc.stdout


def test_select_2000_fails_for_the_fd_setsize_reason(reduced_run):
    _, out = reduced_run
    cases = {(c["server"], c["connections"]): c for c in json.loads((out / "results.json").read_text())["cases"]}
    select_2000 = cases[("select", 2000)]
    assert select_2000["status"] == "failed"
    assert select_2000["reason"].startswith("select() cannot watch descriptors >= FD_SETSIZE (1024): ")
    refused = select_2000["server_stats"]["refused"]["fd_setsize"]
    assert 900 < refused < 1100
    assert f"{refused} of 2000 connections refused" in select_2000["reason"]
    for key in (("select", 1), ("poll", 300), ("epoll", 300), ("poll", 200)):
        assert cases[key]["status"] == "passed", cases[key]["reason"]
    fixed = cases[("poll", 200)]
    assert fixed["rate"] == 1000 and fixed["summary"]["messages"]["echoed"] == 2000


def test_report_md_has_the_test_case_and_results_tables(reduced_run):
    _, out = reduced_run
    md = (out / "REPORT.md").read_text()
    cases = md_table(md, "| Test Case | Scenario |")
    assert [c["Scenario"] for c in cases] == [
        "1 client connecting to select server", "2000 clients connecting to select server",
        "300 clients connecting to poll server", "300 clients connecting to epoll server",
        "200 clients connecting to poll server, 1,000 messages/s in total for 2 s"]
    assert all(c["Expected Behavior"] == EXPECTED_BEHAVIOR for c in cases)
    assert cases[1]["Status"] == "Failed, see Results (2)"
    assert "FD_SETSIZE (1024)" in cases[1]["Actual Results"]
    assert cases[0]["Actual Results"] == PASSED_RESULT and cases[0]["Status"] == "Passed, see Results (1)"
    results = md_table(md, "| Test Case | Server |")
    assert [(r["Server"], r["Connections"], r["Load"], r["Status"]) for r in results] == [
        ("select", "1", "10 each", "passed"), ("select", "2,000", "10 each", "failed"),
        ("poll", "300", "10 each", "passed"), ("epoll", "300", "10 each", "passed"),
        ("poll", "200", "1,000/s for 2 s", "passed")]
    for r in results[2:]:
        assert float(r["Mean (ms)"]) > 0
        assert float(r["Messages/s"].replace(",", "")) > 0
        assert int(r["Descriptors"]) >= 1
    # Sampled every 0.2 s: only the 2-second fixed-rate case surely shows its plateau.
    assert int(results[4]["Descriptors"]) >= 200


def test_every_case_keeps_its_connections_csv_and_the_charts_exist(reduced_run):
    _, out = reduced_run
    for server, folder, n in (("select", "1", 1), ("select", "2000", 2000), ("poll", "300", 300),
                              ("epoll", "300", 300), ("poll", "200-rate1000", 200)):
        rows = (out / server / folder / "connections.csv").read_text().splitlines()
        assert rows[0].startswith("connection,")
        assert len(rows) == n + 1
    for name in CHARTS:
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert "data:image/png;base64," in (out / "report.html").read_text()


def test_list_and_servers_filter_the_quick_matrix():
    proc = study("--matrix", "quick", "--servers", "select,uvloop", "--list", timeout=60)
    assert proc.returncode == 0, proc.stderr
    *cases, total = proc.stdout.splitlines()
    assert total.startswith("matrix quick: ") and "about" in total
    listed = [line.split()[1:3] for line in cases]
    expected = [[c.server, f"{c.connections:,}"] for c in quick_matrix().cases if c.server in ("select", "uvloop")]
    assert listed == expected


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--matrix", "nope"], "neither seed, quick, wan, million nor a readable TOML file"),
        (["--servers", "nginx", "--list"], "unknown server 'nginx'"),
        (["--find-limit", "nginx"], "unknown server 'nginx'"),
        (["--find-limit", "select", "--start", "5000", "--max", "100"], "--start must not exceed --max"),
        (["--messages", "0", "--list"], "--messages must be at least 1"),
    ],
)
def test_usage_errors_exit_2_in_one_line(args, words):
    proc = study(*args, timeout=60)
    assert proc.returncode == 2
    assert words in proc.stderr and "Traceback" not in proc.stderr


def test_report_only_rebuilds_the_report_from_results_json(reduced_run, tmp_path):
    _, out = reduced_run
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "results.json").write_text((out / "results.json").read_text())
    proc = study("--report-only", "--out", str(copy), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (copy / "REPORT.md").read_text().count("\n| ") == (out / "REPORT.md").read_text().count("\n| ")
    assert all((copy / name).exists() for name in CHARTS)
    missing = study("--report-only", "--out", str(tmp_path / "nothing"), timeout=60)
    assert missing.returncode == 2 and "cannot read" in missing.stderr


@pytest.mark.timeout(240)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_stops_the_study_and_keeps_a_report_of_what_ran(tmp_path, signum):
    matrix = tmp_path / "two.toml"
    matrix.write_text("[[case]]\nserver = 'poll'\nconnections = 1\nmessages = 5\n"
                      "[[case]]\nserver = 'poll'\nconnections = 2\nrate = 1\nduration = 100\n")
    out = tmp_path / "results"
    proc = subprocess.Popen([sys.executable, "-m", "c10k", "study", "--matrix", str(matrix), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200"},
                            # Ctrl-C must work even when pytest runs in a background job (SIGINT ignored).
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("c10k study: matrix two, 2 cases, about ")
        first = proc.stdout.readline()
        assert "poll" in first and "passed" in first
        proc.send_signal(signum)
        # Stopping the running case may wait for its load and server to end
        # (up to about 50 s on a busy machine): generous, but bounded.
        rest, err = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "Interrupted after 1 of 2 cases." in rest
    data = json.loads((out / "results.json").read_text())
    assert [c["connections"] for c in data["cases"]] == [1]
    assert "Interrupted after 1 of 2 cases." in (out / "REPORT.md").read_text()
    assert not processes_mentioning(str(out))


def processes_mentioning(text: str) -> list[int]:
    """Processes whose command line names ``text`` (the server's stats file, the load's --out)."""
    import psutil

    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        if any(text in part for part in p.info["cmdline"] or ()):
            found.append(p.info["pid"])
    return found


def test_list_the_million_matrix():
    proc = study("--matrix", "million", "--list", timeout=60)
    assert proc.returncode == 0, proc.stderr
    *cases, total = proc.stdout.splitlines()
    assert total.startswith("matrix million: 3 cases, about ")
    assert [line.split()[1:3] for line in cases] == [
        ["epoll", "1,000,000"], ["epoll-reuseport", "1,000,000"], ["uring", "1,000,000"]]
    assert all("20,000/s for 60 s" in line for line in cases)
