"""The runner against stand-in servers that misbehave on purpose, and the sampler.

The load is the real `c10k load`; the servers are small scripts written here, so
each failure mode happens for certain: never listening, dying mid-load, never
echoing, ignoring SIGTERM.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from c10k.study.cases import Case
from c10k.study.runner import Commands, find_limit, run_case
from c10k.study.sampler import ProcessTreeSampler

pytestmark = pytest.mark.timeout(120)

PRELUDE = """
import signal, socket, sys
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(128)
print(f"listening on 127.0.0.1:{listener.getsockname()[1]}", flush=True)
"""

STANDINS = {
    "never_listens": "import sys\nprint('c10k serve: error: cannot listen: boom', file=sys.stderr)\nsys.exit(3)\n",
    "dies": PRELUDE + textwrap.dedent("""
        conn, _ = listener.accept()
        conn.recv(100)
        print("fatal: the stand-in gives up", file=sys.stderr, flush=True)
        sys.exit(1)
    """),
    "silent": PRELUDE + textwrap.dedent("""
        held = []
        while True:
            held.append(listener.accept()[0])
    """),
    "takes_five": PRELUDE + textwrap.dedent("""
        held = [listener.accept()[0] for _ in range(5)]
        signal.sigwait({signal.SIGTERM})
    """),
    "stubborn": PRELUDE + textwrap.dedent("""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        conn, _ = listener.accept()
        while data := conn.recv(65536):
            conn.sendall(data)
        while True:
            listener.accept()
    """),
}


class StandIn(Commands):
    """Runs a stand-in script instead of `c10k serve`; the load stays real."""

    def __init__(self, script: Path, **kw: float) -> None:
        super().__init__(**kw)
        self.script = script

    def server(self, case: Case, stats_file: Path) -> list[str]:
        return [self.python, str(self.script)]


@pytest.fixture
def standin(tmp_path):
    def make(name: str, **kw: float) -> StandIn:
        path = tmp_path / f"{name}.py"
        path.write_text(STANDINS[name])
        return StandIn(path, **kw)

    return make


def no_processes_left(result_dir: Path) -> bool:
    me = psutil.Process()
    return not any(str(result_dir) in " ".join(p.cmdline()) for p in me.children(recursive=True))


def test_a_server_that_never_listens_fails_with_its_error(tmp_path, standin):
    result = run_case(Case(1, "select", 1, messages=1), tmp_path, standin("never_listens"))
    assert result.status == "failed"
    assert result.reason == "server did not start: it exited with status 3 (c10k serve: error: cannot listen: boom)"
    assert result.summary is None


def test_a_server_that_dies_during_the_load(tmp_path, standin):
    result = run_case(Case(1, "epoll", 1, messages=5), tmp_path, standin("dies"))
    assert result.status == "failed"
    assert result.reason.startswith("server exited with status 1 during the load (fatal: the stand-in gives up)")
    assert result.server_exit == 1
    assert (tmp_path / "epoll" / "1" / "summary.json").exists()


def test_a_server_that_never_echoes_is_stopped_at_the_case_timeout(tmp_path, standin):
    case = Case(1, "poll", 3, messages=2, timeout_s=3.0)
    result = run_case(case, tmp_path, standin("silent", shutdown_timeout_s=1.0, stop_grace_s=5.0))
    assert result.status == "failed"
    assert result.reason.startswith("timeouts: the server stopped answering in time")
    assert "the load did not finish within 3 s" in result.reason
    assert result.load_status != 0
    # Stopped with SIGINT, the load still wrote what it measured.
    assert (tmp_path / "poll" / "3" / "connections.csv").exists()
    assert no_processes_left(tmp_path)


def test_a_server_that_stops_accepting_is_stopped_at_the_connect_deadline(tmp_path, standin):
    commands = standin("takes_five", connect_grace_s=2.0)
    result = run_case(Case(1, "poll", 40, messages=2), tmp_path, commands)
    assert result.status == "failed"
    assert result.reason.startswith("the server did not take every connection in time (client: the server "
                                    "held at most ")
    assert "not all 40 connections, within 2 s; the load was stopped" in result.reason
    assert result.load_status != 0
    assert no_processes_left(tmp_path)


def test_a_server_that_ignores_sigterm_is_killed_and_fails(tmp_path, standin):
    commands = standin("stubborn", shutdown_timeout_s=0.5, stop_grace_s=1.0)
    result = run_case(Case(1, "asyncio", 1, messages=3), tmp_path, commands)
    assert result.status == "failed"
    assert result.reason == "server did not stop on SIGTERM and was killed (all echoes were correct)"
    assert result.server_exit == -9


def test_a_real_server_passes_and_its_usage_is_sampled(tmp_path):
    result = run_case(Case(1, "poll", 50, messages=20), tmp_path)
    assert result.status == "passed", result.reason
    assert result.server_exit == 0
    assert result.summary is not None and result.summary["messages"]["echoed"] == 1000
    assert result.stats is not None and result.stats["accepted"] == 50
    u = result.usage
    assert u.samples >= 2 and u.peak_rss_bytes > 0 and u.peak_threads >= 1 and u.peak_processes == 1
    case_dir = tmp_path / "poll" / "50"
    rows = (case_dir / "connections.csv").read_text().splitlines()
    assert rows[0].startswith("connection,") and len(rows) == 51
    assert result.directory == "poll/50"


def test_find_limit_brackets_selects_edge(tmp_path):
    study = find_limit("select", tmp_path, start=500, max_connections=2000, step=500, messages=3)
    tried = [(r.case.connections, r.status) for r in study.results]
    assert tried == [(500, "passed"), (1000, "passed"), (2000, "failed"), (1500, "failed")]
    assert study.notes == [
        "select passed at 1000 connections and failed at 1500: " + study.results[-1].reason
    ]
    assert "FD_SETSIZE (1024)" in study.results[-1].reason


def test_sampler_sums_a_process_tree(tmp_path):
    code = textwrap.dedent("""
        import os, subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
        files = [open(os.devnull) for _ in range(50)]
        print("ready", flush=True)
        sys.stdin.read()
        child.stdin.close()
        child.wait()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        sampler = ProcessTreeSampler(proc.pid)
        sampler.sample()
        u = sampler.usage
        assert u.peak_processes == 2
        assert u.peak_fds_per_process >= 50
        assert u.peak_fds > u.peak_fds_per_process
        assert u.peak_rss_bytes > u.idle_rss_bytes / 2 > 0
        assert {p.pid for p in sampler.known_processes()} >= {proc.pid}
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(timeout=30)
        proc.stdout.close()  # type: ignore[union-attr]


def test_cpu_after_every_connection_is_open_leaves_the_connect_phase_out():
    from c10k.study.sampler import Usage

    u = Usage(cpu_s=3.0, series=[(0.0, 1, 1, 7, 0.0), (0.2, 1, 1, 500, 0.4), (0.4, 1, 1, 1006, 1.0),
                                 (0.6, 1, 1, 1006, 2.0)])
    u.settle_cpu(1000)
    assert u.cpu_connected_s == 2.0
    u.settle_cpu(2000)
    assert u.cpu_connected_s is None
