"""Issue 8, defect 1: SIGTERM stops a load like Ctrl-C, and no load process outlives its parent.

Each test holds the run in its message phase with a server that reads one
message per connection and never answers, so the client is surely waiting when
the signal comes; the server counts those messages, which is the event the test
waits on (no sleeps).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from test_load_faults import ML, ThreadServer, default_sigint, recv_exact

CONNECTIONS = 4


class HoldingServer:
    """Reads one message per connection, then holds the connection (no echo, no close)."""

    def __init__(self) -> None:
        self.waiting = threading.Semaphore(0)
        self.done = threading.Event()
        self.server = ThreadServer(self._hold)

    def _hold(self, conn: socket.socket) -> None:
        if recv_exact(conn, ML) is not None:
            self.waiting.release()  # a message is outstanding: the run is in its message phase
            self.done.wait(40)

    def wait_for_messages(self, n: int) -> None:
        for _ in range(n):
            assert self.waiting.acquire(timeout=30), "the load never reached its message phase"


@pytest.fixture
def holding_server() -> Iterator[HoldingServer]:
    srv = HoldingServer()
    try:
        yield srv
    finally:
        srv.done.set()
        srv.server.close()


def start_load(port: int, out: Path, processes: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "c10k", "load", "-p", str(port), "-c", str(CONNECTIONS), "-n", "5",
         "--timeout", "300", "--processes", str(processes), "--out", str(out), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=default_sigint)


def load_processes(parent: int, expected: int) -> list[psutil.Process]:
    """The parent's forked load processes (multiprocessing may add none of its own with fork)."""
    children = psutil.Process(parent).children()
    assert len(children) == expected, children
    return children


def stop_all(proc: subprocess.Popen[str], others: list[psutil.Process]) -> None:
    for p in [psutil.Process(proc.pid)] if proc.poll() is None else []:
        p.kill()
    for p in others:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.communicate()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("processes", [1, 2])
def test_sigterm_writes_what_was_measured_and_exits_143(holding_server: HoldingServer, tmp_path: Path,
                                                        processes: int) -> None:
    proc = start_load(holding_server.server.port, tmp_path, processes)
    children: list[psutil.Process] = []
    try:
        holding_server.wait_for_messages(CONNECTIONS)
        children = load_processes(proc.pid, processes if processes > 1 else 0)
        proc.send_signal(signal.SIGTERM)  # to the parent only, as `kill PID` or a supervisor does
        _, err = proc.communicate(timeout=30)
        gone, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"load processes still running after the parent exited: {alive}"
    finally:
        holding_server.done.set()
        stop_all(proc, children)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert "interrupted" in err
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["interrupted"] is True
    assert s["errors"] == {"interrupted": CONNECTIONS}
    assert s["messages"] == {"sent": CONNECTIONS, "echoed": 0, "mismatched": 0}
    rows = (tmp_path / "connections.csv").read_text().splitlines()
    assert len(rows) == CONNECTIONS + 1


@pytest.mark.timeout(90)
def test_sigterm_to_the_whole_group_is_one_stop(holding_server: HoldingServer, tmp_path: Path) -> None:
    """`kill -TERM -PGID` reaches every load process too: none may die before saving its part."""
    proc = start_load(holding_server.server.port, tmp_path, 2)
    try:
        holding_server.wait_for_messages(CONNECTIONS)
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        holding_server.done.set()
        stop_all(proc, [])
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["interrupted"] is True and s["errors"] == {"interrupted": CONNECTIONS}


@pytest.mark.timeout(90)
def test_load_processes_stop_when_their_parent_dies(holding_server: HoldingServer, tmp_path: Path) -> None:
    proc = start_load(holding_server.server.port, tmp_path, 2)
    children: list[psutil.Process] = []
    try:
        holding_server.wait_for_messages(CONNECTIONS)
        children = load_processes(proc.pid, 2)
        proc.kill()  # SIGKILL: the parent can neither forward anything nor clean up
        proc.wait(10)
        gone, alive = psutil.wait_procs(children, timeout=15)
        assert not alive, f"load processes outlived their parent: {alive}"
    finally:
        holding_server.done.set()
        stop_all(proc, children)
