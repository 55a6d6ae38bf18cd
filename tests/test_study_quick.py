"""The quick matrix, whole, as CI runs it: every architecture up to 2000 connections.

Slow (a minute or two), still run by `make test`: issue 4 asks CI to run it and
check that select at 2000 connections fails for the FD_SETSIZE reason.
"""

from __future__ import annotations

import json

import pytest

from c10k.study.cases import quick_matrix
from test_study_cli import md_table, study


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quick_matrix_reports_select_2000_failing_for_fd_setsize(tmp_path):
    out = tmp_path / "quick"
    proc = study("--matrix", "quick", "--out", str(out), timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cases = json.loads((out / "results.json").read_text())["cases"]
    assert len(cases) == len(quick_matrix().cases)

    failed = [c for c in cases if c["status"] != "passed"]
    select_2000 = [c for c in cases if c["server"] == "select" and c["connections"] == 2000 and not c.get("rate")]
    assert len(select_2000) == 1
    assert select_2000[0]["status"] == "failed"
    assert select_2000[0]["reason"].startswith("select() cannot watch descriptors >= FD_SETSIZE (1024): ")
    assert failed == select_2000, [(c["server"], c["connections"], c["reason"]) for c in failed]

    md = (out / "REPORT.md").read_text()
    table = md_table(md, "| Test Case | Scenario |")
    assert len(table) == len(cases)
    assert sum(row["Status"].startswith("Failed") for row in table) == 1
    results = md_table(md, "| Test Case | Server |")
    assert len(results) == len(cases)
    assert (out / "report.html").stat().st_size > 0
