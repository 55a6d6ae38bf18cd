"""Issue 5, scenario 10: the load client under its own limits and slow servers.

It must report, time out and exit 1 (or plan around the limit), never hang,
never print a traceback.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_load_faults import ML, ThreadServer, recv_exact


def slow_echo(conn) -> None:
    """Echo each message after 0.3 s."""
    while (m := recv_exact(conn, ML)) is not None:
        time.sleep(0.3)
        conn.sendall(m)


def echo(conn) -> None:
    while (m := recv_exact(conn, ML)) is not None:
        conn.sendall(m)


def load(port: int, out: Path, *args: str, nofile: int | None = None) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    return subprocess.run([sys.executable, "-m", "c10k", "load", "-p", str(port), "--out", str(out), "--quiet", *args],
                          capture_output=True, text=True, timeout=120, preexec_fn=limit)


def load_against(handler, out: Path, *args: str, nofile: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run the load against a ThreadServer running ``handler``, and close the server."""
    server = ThreadServer(handler)
    try:
        return load(server.port, out, *args, nofile=nofile)
    finally:
        server.close()


def test_own_descriptor_limit_too_low_is_one_line_exit_1(tmp_path: Path) -> None:
    run = load_against(echo, tmp_path, "-c", "200", "-n", "2", nofile=64)
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "descriptor" in lines[0] and "64" in lines[0], run.stderr


def test_own_descriptor_limit_is_planned_around_with_processes(tmp_path: Path) -> None:
    run = load_against(echo, tmp_path, "-c", "600", "-n", "2", nofile=400)
    assert run.returncode == 0, run.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["connections"]["established"] == 600
    assert summary["messages"]["echoed"] == 1200
    assert len(summary["processes"]) >= 2, "600 connections cannot fit one process under RLIMIT_NOFILE 400"


def test_slow_server_within_timeout_passes_with_its_latency(tmp_path: Path) -> None:
    run = load_against(slow_echo, tmp_path, "-c", "3", "-n", "3", "--timeout", "10")
    assert run.returncode == 0, run.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["messages"]["echoed"] == 9
    assert summary["latency_us"]["min"] >= 300_000, "each echo was held 0.3 s by the server"


@pytest.mark.parametrize("delay", [0.3, 0.15])
def test_slow_server_past_timeout_is_reported_and_exits_1(tmp_path: Path, delay: float) -> None:
    """An echo later than --timeout is a timeout, whether the periodic scan or the echo comes first."""
    def late_echo(conn) -> None:
        while (m := recv_exact(conn, ML)) is not None:
            time.sleep(delay)
            conn.sendall(m)

    run = load_against(late_echo, tmp_path, "-c", "3", "-n", "3", "--timeout", "0.1")
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["errors"].get("timeout", 0) == 3, summary["errors"]
