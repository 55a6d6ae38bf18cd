"""Resource requests the machine cannot meet: one line and an exit status, never a traceback.

Fork and thread start are made to fail for real with a pids cgroup (root is not
exempt from it, unlike RLIMIT_NPROC): the server goes on with the workers it
could start, or exits 1 when it could start none.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from helpers import echo_once, start_server


def serve(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "c10k", "serve", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_thousands_of_workers_are_refused_with_one_line():
    out = serve("epoll", "-p", "0", "--workers", "3000")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("c10k serve: error: argument --workers: at most 1024")
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("stats", ["/proc/self/stats.json", "/nonexistent-dir/stats.json"])
def test_an_unwritable_stats_file_is_found_before_listening(stats):
    out = serve("epoll", "-p", "0", "--workers", "1", "--stats-file", stats)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [f"c10k serve: error: cannot write --stats-file {stats}: "
                                               + out.stderr.split(": ")[-1].strip()]


def _pids_root() -> Path:
    v1 = Path("/sys/fs/cgroup/pids")
    if (v1 / "cgroup.procs").exists():
        return v1
    v2 = Path("/sys/fs/cgroup")
    controllers = v2 / "cgroup.controllers"
    if controllers.exists() and "pids" in controllers.read_text().split():
        (v2 / "cgroup.subtree_control").write_text("+pids\n")
        return v2
    pytest.fail("no pids cgroup controller (v1 /sys/fs/cgroup/pids, or v2 with pids)")


@pytest.fixture
def pids_cgroup():
    """A pids cgroup (v1 or v2) whose ``pids.max`` the test sets; removed afterwards."""
    root = _pids_root()
    group = root / f"c10k-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        yield group
    finally:
        for pid in (group / "cgroup.procs").read_text().split():
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10  # killed processes leave the group once reaped
        while time.monotonic() < deadline:
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.05)


def _into(group: Path):
    def enter() -> None:
        (group / "cgroup.procs").write_text(str(os.getpid()))
    return enter


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_workers_that_cannot_start_are_said_and_the_rest_serve(pids_cgroup, tmp_path, mode):
    # The server's main thread and its interpreter's own take a few pids; two more workers fit.
    (pids_cgroup / "pids.max").write_text("3\n")
    server = start_server(["epoll", "--workers", "6", "--worker-mode", mode], tmp_path, preexec_fn=_into(pids_cgroup))
    try:
        assert echo_once(server.address)
        (pids_cgroup / "pids.max").write_text("max\n")
        assert server.stop() == 0
    finally:
        server.kill()
    err = server.stderr()
    assert "cannot start worker" in err
    assert "Traceback" not in err


def test_a_server_that_can_start_no_worker_exits_1(pids_cgroup):
    (pids_cgroup / "pids.max").write_text("1\n")
    out = subprocess.run([sys.executable, "-m", "c10k", "serve", "epoll", "-p", "0", "--workers", "2"],
                         capture_output=True, text=True, timeout=60, preexec_fn=_into(pids_cgroup))
    assert out.returncode == 1 and "listening on" not in out.stdout
    lines = out.stderr.strip().splitlines()
    assert lines[-1] == "c10k serve: error: no worker could start (see above); nothing is served"
    assert all(line.startswith("c10k serve: cannot start worker") for line in lines[:-1])
    assert "Traceback" not in out.stderr
