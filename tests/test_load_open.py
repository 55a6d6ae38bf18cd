"""Open loop: round trips are timed from their scheduled send, so a stall shows in the tail."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
import pytest

from c10k.load import Progress, run_load

# A single-threaded selectors echo server in its own process, so SIGSTOP freezes it.
ECHO_SERVER = r"""
import selectors, socket, sys, time
sel = selectors.DefaultSelector()
ls = socket.create_server(("127.0.0.1", 0))
ls.setblocking(False)
sel.register(ls, selectors.EVENT_READ)
print("listening on 127.0.0.1:%d" % ls.getsockname()[1], flush=True)
end = time.monotonic() + 60
while time.monotonic() < end:
    for key, _ in sel.select(0.5):
        if key.fileobj is ls:
            c, _ = ls.accept()
            c.setblocking(False)
            sel.register(c, selectors.EVENT_READ)
            continue
        try:
            data = key.fileobj.recv(65536)
        except OSError:
            data = b""
        if not data:
            sel.unregister(key.fileobj)
            key.fileobj.close()
            continue
        key.fileobj.setblocking(True)
        key.fileobj.sendall(data)
        key.fileobj.setblocking(False)
"""


@pytest.fixture
def echo_process() -> Iterator[tuple[subprocess.Popen[str], int]]:
    proc = subprocess.Popen([sys.executable, "-c", ECHO_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on "), line
        yield proc, int(line.rsplit(":", 1)[1])
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.timeout(60)
def test_open_loop_steady(echo_process: tuple[subprocess.Popen[str], int]) -> None:
    _, port = echo_process
    r = run_load("127.0.0.1", port, connections=4, rate=400, duration=1.0)
    s = r.summary
    assert r.ok, s["errors"]
    assert s["mode"] == "open"
    assert s["messages"]["sent"] == s["messages"]["echoed"] == 400
    assert s["latency_us"]["p99"] == pytest.approx(np.percentile(r.latency_ns / 1000, 99), abs=1e-3)


@pytest.mark.timeout(60)
def test_open_loop_sees_a_one_second_stall(echo_process: tuple[subprocess.Popen[str], int]) -> None:
    proc, port = echo_process
    stall: dict[str, float] = {}

    def freeze_then_thaw(p: Progress) -> None:
        # Driven by the run's own progress (about every 0.25 s), not by a wall-clock timer
        # started beside it: the freeze surely falls in the message phase, once echoes flow,
        # and it lasts at least 1 s, however busy the machine.
        now = time.monotonic()
        if "stopped" not in stall and p.echoed > 0:
            os.kill(proc.pid, signal.SIGSTOP)
            stall["stopped"] = now
        elif "stopped" in stall and "resumed" not in stall and now - stall["stopped"] >= 1.0:
            os.kill(proc.pid, signal.SIGCONT)
            stall["resumed"] = now

    try:
        r = run_load("127.0.0.1", port, connections=5, rate=500, duration=4.0, timeout=10,
                     on_progress=freeze_then_thaw)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert "stopped" in stall and "resumed" in stall, stall
    s = r.summary
    assert r.ok, s["errors"]
    assert s["messages"]["echoed"] == 2000
    # Messages scheduled in the first 0.2 s of a stall of >= 1 s wait > 0.8 s: ~100 of 2000 (5%).
    assert s["latency_us"]["p99"] > 800_000
    assert s["latency_us"]["max"] > 800_000
    # Only messages scheduled in the stall's first (stall - 0.8) s wait longer than 0.8 s: the
    # median stays below unless the stall lasts over 2.8 s (the thaw comes ~0.25 s after 1 s).
    assert s["latency_us"]["p50"] < 800_000


def test_no_connection_closes_before_the_runs_last_echo() -> None:
    """The end of an open loop: connections that are done wait for the last echo of the run, so the
    server does not spend that echo's wait on the others' closes."""
    import socket
    import threading

    events: list[str] = []
    lock = threading.Lock()
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)
    port = listener.getsockname()[1]

    def serve(c: socket.socket, slow: bool) -> None:
        with c:
            c.settimeout(60)
            while data := c.recv(4096):
                if slow:
                    time.sleep(1.0)  # the server's behaviour under test: one echo comes late
                c.sendall(data)
                if slow:
                    with lock:
                        events.append("slow echo sent")
            with lock:
                events.append("closed by the load")

    def accept() -> None:
        with listener:
            listener.settimeout(60)
            for k in range(4):
                c, _ = listener.accept()
                threading.Thread(target=serve, args=(c, k == 0), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    r = run_load("127.0.0.1", port, connections=4, rate=40, duration=0.1, timeout=30, processes=1)
    assert r.summary["messages"]["echoed"] == 4 and not r.summary["errors"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and events.count("closed by the load") < 4:
        time.sleep(0.01)
    assert events[0] == "slow echo sent", events  # every close came after the last echo
    assert events.count("closed by the load") == 4
