"""`c10k load unix:/path.sock`: the load engine over unix-domain sockets.

The servers are a few lines of blocking Python (``test_load_faults.ThreadServer``
on a unix listener) or `c10k serve ARCH --unix PATH`; every socket file lives in
the test's tmp_path.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from c10k.cli import main
from c10k.load import run_load
from test_load_faults import ML, Handler, ThreadServer, close_after_two, echo


@pytest.fixture
def unix_server(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """``start(handler, backlog=128)`` -> the path of a unix socket served by ``handler`` in threads."""
    servers: list[ThreadServer] = []

    def start(handler: Handler, backlog: int = 128) -> str:
        path = str(tmp_path / f"s{len(servers)}.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(backlog)
        servers.append(ThreadServer(handler, listener=listener))
        return path

    yield start
    for s in servers:
        s.close()


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_unix_echoes_exact_with_counts_and_bandwidth(unix_server, tmp_path: Path) -> None:
    path = unix_server(echo)
    out = tmp_path / "out"
    assert main(["load", f"unix:{path}", "-c", "5", "-n", "20", "--out", str(out), "--quiet"]) == 0
    s = summary(out)
    assert s["target"] == f"unix:{path}" and s["host"] == f"unix:{path}" and s["port"] == 0
    assert s["connections"] == {"requested": 5, "established": 5, "completed": 5, "failed": 0, "peak_open": 5}
    assert s["messages"] == {"sent": 100, "echoed": 100, "mismatched": 0}
    assert s["bytes"] == {"sent": 100 * ML, "echoed": 100 * ML}
    assert s["errors"] == {} and s["timeouts"]["verdict"] is None
    # bandwidth: the byte counts over the message phase, in MiB/s (both rounded to 3 decimals from the
    # unrounded elapsed time, so they may differ from this recomputation in the last digit)
    mib_s = 100 * ML / s["elapsed_s"] / 2**20
    near = pytest.approx(mib_s, rel=0.01, abs=0.0011)
    assert s["bandwidth_mib_s"] == {"up": near, "down": near}
    rows = (out / "connections.csv").read_text().splitlines()
    header = rows[0].split(",")
    for row in rows[1:]:
        cells = dict(zip(header, row.split(","), strict=True))
        assert cells["source"] == "" and cells["messages"] == "20" and cells["error"] == ""


def test_unix_server_that_closes_is_reported(unix_server) -> None:
    path = unix_server(close_after_two)
    r = run_load(unix=path, connections=4, count=10, timeout=5)
    assert not r.ok
    assert r.summary["errors"] == {"closed_early": 4}
    assert r.summary["messages"]["echoed"] == 8
    assert r.summary["timeouts"]["verdict"] is None


def test_unix_processes_and_open_loop(unix_server) -> None:
    path = unix_server(echo)
    closed = run_load(unix=path, connections=6, count=10, processes=2, timeout=10)
    assert closed.ok, closed.summary["errors"]
    assert closed.summary["messages"]["echoed"] == 60
    assert [p["connections"] for p in closed.summary["processes"]] == [3, 3]
    opened = run_load(unix=path, connections=2, rate=100, duration=0.5, timeout=10)
    assert opened.ok, opened.summary["errors"]
    assert opened.summary["messages"]["echoed"] == 50


def test_unix_socket_that_is_not_there(tmp_path: Path) -> None:
    r = run_load(unix=str(tmp_path / "absent.sock"), connections=3, count=1, timeout=5)
    assert r.summary["errors"] == {"ENOENT": 3}
    assert r.summary["connections"]["established"] == 0


@pytest.mark.timeout(60)
def test_unix_full_accept_queue_is_never_accepted(tmp_path: Path) -> None:
    """listen(1) and no accept(): connects past the queue get EAGAIN, are retried, and time out."""
    path = str(tmp_path / "full.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(1)
        r = run_load(unix=path, connections=6, count=3, timeout=1)
    s = r.summary
    t = s["timeouts"]
    assert not r.ok
    assert s["connections"]["established"] < 6
    assert s["errors"].get("connect_timeout", 0) == 6 - s["connections"]["established"]
    assert t["verdict"] == "never_accepted", t
    assert t["queue_full"] > 0 and "accept queue was full" in t["reason"]
    # the connections the queue did take completed their handshake and got no byte back
    assert t["silent"] == s["errors"].get("timeout", 0) == s["connections"]["established"]


@pytest.mark.timeout(120)
def test_load_against_serve_unix(serve, tmp_path: Path) -> None:
    server = serve.config("epoll-unix")
    out = tmp_path / "out"
    assert main(["load", f"unix:{server.address}", "-c", "200", "-n", "20", "--out", str(out), "--quiet"]) == 0
    s = summary(out)
    assert s["messages"] == {"sent": 4000, "echoed": 4000, "mismatched": 0}
    assert server.stop() == 0
    assert server.stats()["accepted"] == 200
