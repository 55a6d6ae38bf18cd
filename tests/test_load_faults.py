"""`c10k load` against deliberately broken servers: it must report, exit 1, never hang.

Each broken server is a few lines of blocking Python in threads on 127.0.0.1 port 0,
alive for a bounded time; none of the project's servers is involved.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from c10k.cli import main
from c10k.load import DEFAULT_MESSAGE, Progress, run_load

ML = len(DEFAULT_MESSAGE)
Handler = Callable[[socket.socket], None]


class ThreadServer:
    """Accepts on a loopback port 0 (or on ``listener``) and runs ``handler(conn)`` in a thread per connection."""

    def __init__(self, handler: Handler, lifetime: float = 30.0, listener: socket.socket | None = None) -> None:
        self.handler = handler
        self.listener = listener or socket.create_server(("127.0.0.1", 0), backlog=128)
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1] if listener is None else 0
        self.stop = threading.Event()
        self.deadline = time.monotonic() + lifetime
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(5.0)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self.threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                self.handler(conn)
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.acceptor.join(5)
        self.listener.close()
        for t in self.threads:
            t.join(6)


def recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        data = conn.recv(n - len(buf))
        if not data:
            return None
        buf += data
    return buf


def echo(conn: socket.socket) -> None:
    while (m := recv_exact(conn, ML)) is not None:
        conn.sendall(m)


def corrupt_third(conn: socket.socket) -> None:
    k = 0
    while (m := recv_exact(conn, ML)) is not None:
        k += 1
        conn.sendall(bytes([m[0] ^ 0x20]) + m[1:] if k == 3 else m)


def close_after_two(conn: socket.socket) -> None:
    """Two echoes, then EOF; drains what comes next so the close never turns into a reset."""
    for _ in range(2):
        m = recv_exact(conn, ML)
        if m is None:
            return
        conn.sendall(m)
    conn.shutdown(socket.SHUT_WR)
    while conn.recv(1024):
        pass


def reset_after_one(conn: socket.socket) -> None:
    m = recv_exact(conn, ML)
    if m is not None:
        conn.sendall(m)
        recv_exact(conn, ML)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def stall(conn: socket.socket) -> None:
    end = time.monotonic() + 5
    while time.monotonic() < end and conn.recv(1024):
        pass


def close_at_once(conn: socket.socket) -> None:
    pass


def trickle(conn: socket.socket) -> None:
    """Echo correctly, one byte per send: the client must reassemble partial reads."""
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while (m := recv_exact(conn, ML)) is not None:
        for b in m:
            conn.sendall(bytes([b]))
            time.sleep(0.0005)


def echo_plus_one(conn: socket.socket) -> None:
    while (m := recv_exact(conn, ML)) is not None:
        conn.sendall(m + b"!")


@pytest.fixture
def broken_server() -> Iterator[Callable[[Handler], ThreadServer]]:
    servers: list[ThreadServer] = []

    def start(handler: Handler) -> ThreadServer:
        servers.append(ThreadServer(handler))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def closed_port() -> tuple[socket.socket, int]:
    """A port that surely refuses: bound (so nobody else takes it) but not listening."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s, s.getsockname()[1]


def test_good_server_exits_0(broken_server, tmp_path: Path) -> None:
    srv = broken_server(echo)
    assert main(["load", "-p", str(srv.port), "-c", "5", "-n", "20", "--out", str(tmp_path), "--quiet"]) == 0
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["connections"] == {"requested": 5, "established": 5, "completed": 5, "failed": 0, "peak_open": 5}
    assert s["messages"] == {"sent": 100, "echoed": 100, "mismatched": 0}
    assert s["bytes"] == {"sent": 100 * ML, "echoed": 100 * ML}
    assert s["errors"] == {}
    assert 0 < s["latency_us"]["min"] <= s["latency_us"]["p50"] <= s["latency_us"]["p99"] <= s["latency_us"]["max"]


def test_partial_echoes_are_reassembled(broken_server) -> None:
    srv = broken_server(trickle)
    r = run_load("127.0.0.1", srv.port, connections=3, count=5, timeout=5)
    assert r.ok, r.summary["errors"]
    assert r.summary["messages"]["echoed"] == 15


@pytest.mark.parametrize(
    ("handler", "reason", "echoed"),
    [
        (corrupt_third, "mismatch", 2),
        (close_after_two, "closed_early", 2),
        (reset_after_one, "ECONNRESET", 1),
        (close_at_once, None, 0),
        (echo_plus_one, "mismatch", 1),
    ],
)
def test_broken_server_is_reported(broken_server, tmp_path: Path, handler: Handler, reason: str | None,
                                   echoed: int) -> None:
    srv = broken_server(handler)
    status = main(["load", "-p", str(srv.port), "-c", "4", "-n", "10", "--timeout", "3",
                   "--out", str(tmp_path), "--quiet"])
    assert status == 1
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["connections"]["completed"] == 0
    assert s["connections"]["failed"] == 4
    assert sum(s["errors"].values()) == 4
    if reason is not None:
        assert s["errors"] == {reason: 4}
    else:  # closed before the first message: EOF or a reset, depending on timing
        assert set(s["errors"]) <= {"closed_early", "ECONNRESET", "EPIPE"}
    assert s["messages"]["echoed"] == 4 * echoed
    if reason == "mismatch":
        assert s["messages"]["mismatched"] == 4
    rows = (tmp_path / "connections.csv").read_text().splitlines()
    assert len(rows) == 5
    header = rows[0].split(",")
    for row in rows[1:]:
        cells = dict(zip(header, row.split(","), strict=True))
        assert cells["error"] in s["errors"]
        assert int(cells["messages"]) == echoed


@pytest.mark.timeout(30)
def test_stalled_server_times_out(broken_server, tmp_path: Path) -> None:
    srv = broken_server(stall)
    started = time.monotonic()
    status = main(["load", "-p", str(srv.port), "-c", "3", "-n", "5", "--timeout", "0.5",
                   "--out", str(tmp_path), "--quiet"])
    assert status == 1
    assert time.monotonic() - started < 20
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["errors"] == {"timeout": 3}
    assert s["messages"] == {"sent": 3, "echoed": 0, "mismatched": 0}


def test_absent_server_is_refused(tmp_path: Path) -> None:
    holder, port = closed_port()
    with holder:
        status = main(["load", "-p", str(port), "-c", "3", "--out", str(tmp_path), "--quiet"])
    assert status == 1
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["errors"] == {"ECONNREFUSED": 3}
    assert s["connections"]["established"] == 0
    assert s["latency_us"]["p50"] is None


def test_absent_server_from_the_shell_one_line_no_traceback(tmp_path: Path) -> None:
    holder, port = closed_port()
    with holder:
        run = subprocess.run([sys.executable, "-m", "c10k", "load", "-p", str(port), "-c", "2",
                              "--out", str(tmp_path), "--quiet"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert "ECONNREFUSED" in run.stderr


@pytest.mark.timeout(60)
def test_multiprocess_stalled_server_times_out(broken_server, tmp_path: Path) -> None:
    srv = broken_server(stall)
    r = run_load("127.0.0.1", srv.port, connections=4, count=3, processes=2, timeout=0.5)
    assert not r.ok
    assert r.summary["errors"] == {"timeout": 4}
    assert len(r.summary["processes"]) == 2


@pytest.mark.timeout(60)
def test_startup_covers_every_load_process(broken_server) -> None:
    # startup_s: from the plan to the last load process's first connect (forking them).
    srv = broken_server(echo)
    started = time.monotonic()
    r = run_load("127.0.0.1", srv.port, connections=4, count=2, processes=2, timeout=5)
    wall = time.monotonic() - started
    assert r.ok, r.summary["errors"]
    assert 0 < r.summary["startup_s"] < wall


@pytest.mark.timeout(60)
def test_open_loop_stalled_server_times_out(broken_server) -> None:
    # The open loop's timeout scan looks only at connections owed an echo: each
    # connection's first send puts it there, and a server that never answers
    # must still time every one of them out.
    srv = broken_server(stall)
    r = run_load("127.0.0.1", srv.port, connections=3, rate=30, duration=1.0, timeout=0.5)
    assert not r.ok
    assert r.summary["errors"] == {"timeout": 3}
    assert r.summary["messages"]["echoed"] == 0


@pytest.mark.timeout(60)
def test_open_loop_idle_connection_is_not_a_timeout(broken_server) -> None:
    # 3 connections at 3 messages/s: each sends once a second and waits idle in
    # between, twice as long as --timeout. Idle is not late: no error.
    srv = broken_server(echo)
    r = run_load("127.0.0.1", srv.port, connections=3, rate=3, duration=3.0, timeout=0.5)
    assert r.ok, r.summary["errors"]
    assert r.summary["messages"]["echoed"] == 9


def test_no_barrier_and_paced_connects(broken_server) -> None:
    srv = broken_server(echo)
    r = run_load("127.0.0.1", srv.port, connections=6, count=5, barrier=False, connect_rate=500, timeout=5)
    s = r.summary
    assert r.ok, s["errors"]
    assert s["barrier"] is False
    assert s["messages"] == {"sent": 30, "echoed": 30, "mismatched": 0}
    assert 1 <= s["connections"]["peak_open"] <= 6


def test_failed_connections_have_one_meaning(broken_server) -> None:
    """Half the connections are closed at once by the server: those, and only those, are failed,
    in the summary, in the rows and in the last progress report."""
    lock, accepted = threading.Lock(), [0]

    def every_other(conn: socket.socket) -> None:
        with lock:
            accepted[0] += 1
            k = accepted[0]
        if k % 2:
            echo(conn)

    srv = broken_server(every_other)
    seen: list[Progress] = []
    r = run_load("127.0.0.1", srv.port, connections=6, count=3, timeout=5, on_progress=seen.append)
    c = r.summary["connections"]
    assert c["completed"] == 3 and c["failed"] == 3
    assert c["failed"] == sum(r.summary["errors"].values()) == c["requested"] - c["completed"]
    assert sum(1 for row in r.rows if row[10]) == 3
    assert all(p.failed <= 3 for p in seen)


def test_zero_messages_only_connects(broken_server) -> None:
    srv = broken_server(echo)
    r = run_load("127.0.0.1", srv.port, connections=4, count=0)
    assert r.ok
    assert r.summary["connections"]["completed"] == 4
    assert r.summary["messages"]["sent"] == 0


def default_sigint() -> None:
    """Ctrl-C must work in the client even when pytest runs in a background job (SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("processes", ["1", "2"])
def test_ctrl_c_keeps_what_was_measured(broken_server, tmp_path: Path, processes: str) -> None:
    waiting = threading.Semaphore(0)
    done = threading.Event()

    def stall_counted(conn: socket.socket) -> None:
        if recv_exact(conn, ML) is not None:
            waiting.release()  # a message is outstanding: the run is in its message phase
            done.wait(40)  # hold it (no echo, no close) until the test has seen the client stop

    srv = broken_server(stall_counted)
    proc = subprocess.Popen([sys.executable, "-m", "c10k", "load", "-p", str(srv.port), "-c", "4", "-n", "5",
                             "--timeout", "30", "--processes", processes, "--out", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=default_sigint)
    try:
        for _ in range(4):
            assert waiting.acquire(timeout=20)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
        _, err = proc.communicate(timeout=30)
    finally:
        done.set()
        if proc.poll() is None:
            proc.kill()
        proc.communicate()  # reaps it and closes its pipes
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["interrupted"] is True
    assert set(s["errors"]) <= {"interrupted", "not_started"}
    assert s["errors"] == {"interrupted": 4}
    assert s["messages"] == {"sent": 4, "echoed": 0, "mismatched": 0}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("processes", [1, 2])
def test_progress_reports_while_waiting(broken_server, processes: int) -> None:
    srv = broken_server(stall)
    seen: list[Progress] = []
    r = run_load("127.0.0.1", srv.port, connections=4, count=2, processes=processes, timeout=0.8,
                 on_progress=seen.append)
    assert r.summary["errors"] == {"timeout": 4}
    assert seen, "no progress while waiting 0.8 s for echoes"
    assert {p.phase for p in seen} <= {"connecting", "echoing"}
    assert all(p.requested == 4 and p.expected_messages == 8 and p.echoed == 0 for p in seen)
    assert max(p.established for p in seen) == 4
