"""The userspace delay line: its pure schedule, then frames for real between two namespaces (root).

The real test measures a TCP echo's round trip through the line at "delay
20ms": at least 40 ms is physics (20 ms each way); the upper bound is only a
very generous one, since this machine is shared.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from c10k.errors import UsageError
from c10k.topology import Topology, parse_link
from c10k.topology.delayline import RATE_QUEUE_S, Schedule, serve, tap_available
from c10k.topology.netns import choose_carrier, enter_namespace, list_links, list_namespaces, remove_stale, wait_gone
from c10k.topology.plan import run_id_of

T = TypeVar("T")


def frames(n: int, size: int = 100) -> list[bytes]:
    return [i.to_bytes(4, "big") * (size // 4) for i in range(n)]


@given(st.integers(0, 100_000), st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=50))
def test_constant_delay_releases_each_frame_at_arrival_plus_delay_in_order(delay_us: int,
                                                                           gaps: list[float]) -> None:
    s = Schedule(parse_link(f"delay {delay_us}us"))
    arrivals, now = [], 100.0
    for i, gap in enumerate(gaps):
        now += gap / 1000
        arrivals.append(now)
        assert s.admit(now, 1, 0, i.to_bytes(4, "big"))
    released: list[tuple[float, int]] = []
    while (due := s.next_due()) is not None:
        assert s.pop_due(due - 1e-6) == []  # nothing leaves before its time
        released += [(due, int.from_bytes(f, "big")) for _, f in s.pop_due(due)]
    assert [i for _, i in released] == list(range(len(gaps)))
    assert all(abs(t - (arrivals[i] + delay_us / 1e6)) < 1e-9 for t, i in released)
    assert s.queued == 0


def test_directions_are_queued_apart_and_frames_go_to_their_port() -> None:
    s = Schedule(parse_link("delay 10ms"))
    s.admit(0.000, 1, 0, b"c1->server")
    s.admit(0.001, 0, 2, b"server->c2")
    s.admit(0.002, 2, 0, b"c2->server")
    assert s.pop_due(0.0105) == [(0, b"c1->server")]
    assert s.pop_due(0.0125) == [(2, b"server->c2"), (0, b"c2->server")]
    assert s.next_due() is None


def test_jitter_varies_the_delay_within_its_bounds_but_never_reorders() -> None:
    s = Schedule(parse_link("delay 10ms 5ms"), random.Random(7))
    for i, f in enumerate(frames(500)):
        s.admit(i * 1e-4, 1, 0, f)
    dues = [due for due, _ in s.queues[(1, 0)]]
    lags = [due - i * 1e-4 for i, due in enumerate(dues)]
    # never before delay - jitter; never after delay + jitter (waiting for an
    # earlier frame only lifts a due time to one that was itself in bounds)
    assert min(lags) >= 0.005 - 1e-9 and max(lags) <= 0.015 + 1e-9
    assert max(lags) - min(lags) > 0.005  # it did vary
    assert dues == sorted(dues)
    out = []
    while (due := s.next_due()) is not None:
        out += [f for _, f in s.pop_due(due)]
    assert out == frames(500)


def test_loss_drops_that_share_with_a_seeded_rng_and_the_same_seed_drops_the_same() -> None:
    def kept(seed: int) -> list[bytes]:
        s = Schedule(parse_link("loss 10%"), random.Random(seed))
        return [f for f in frames(10_000, 4) if s.admit(0.0, 0, 1, f)]

    first = kept(1)
    assert 8_500 < len(first) < 9_500  # 10% of 10,000: more than 10 sigma of slack either way
    assert kept(1) == first and kept(2) != first


def test_a_rate_paces_each_direction_by_frame_size_and_drops_past_its_queue() -> None:
    s = Schedule(parse_link("rate 8mbit"))  # 1 byte per microsecond
    assert s.admit(0.0, 1, 0, bytes(1000)) and s.admit(0.0, 1, 0, bytes(1000))
    assert s.admit(0.0, 2, 0, bytes(1000))  # another direction has its own pace
    assert s.pop_due(0.000999) == []
    assert [p for p, _ in s.pop_due(0.001)] == [0, 0]  # first of each direction
    assert len(s.pop_due(0.002)) == 1
    accepted = sum(s.admit(0.01, 1, 0, bytes(1000)) for _ in range(200))
    assert accepted == pytest.approx(RATE_QUEUE_S / 0.001, abs=2) and s.dropped == 200 - accepted


def test_a_new_link_applies_to_later_frames_only() -> None:
    s = Schedule(parse_link("delay 25ms"))
    s.admit(0.0, 1, 0, b"old")
    s.set_link(parse_link("none"))
    s.admit(0.001, 1, 0, b"new")  # waits behind the old one: order kept
    assert s.pop_due(0.002) == []
    assert s.pop_due(0.025) == [(0, b"old"), (0, b"new")]


def mac(n: int) -> bytes:
    return bytes([2, 0, 0, 0, 0, n])


def frame(dst: bytes, src: bytes, body: bytes) -> bytes:
    return dst + src + b"\x08\x00" + body


def test_the_line_floods_unknown_destinations_then_forwards_to_the_learned_port() -> None:
    # Datagram socket pairs stand in for TAPs: one read is one frame, as on a TAP.
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(3)]
    for line_end, _ in pairs:
        line_end.setblocking(False)
    control_r, control_w = os.pipe()
    thread = threading.Thread(target=serve, args=([a.fileno() for a, _ in pairs], control_r,
                                                  Schedule(parse_link("delay 1ms"))), daemon=True)
    thread.start()
    hosts = [b for _, b in pairs]
    for h in hosts:
        h.settimeout(10)
    try:
        hosts[1].send(frame(b"\xff" * 6, mac(1), b"who has the server"))  # broadcast: everyone else
        assert hosts[0].recv(100).endswith(b"who has the server")
        assert hosts[2].recv(100).endswith(b"who has the server")
        hosts[0].send(frame(mac(1), mac(0), b"to client 1"))  # learned: port 1 only
        assert hosts[1].recv(100).endswith(b"to client 1")
        hosts[2].send(frame(mac(0), mac(2), b"to the server"))
        assert hosts[0].recv(100).endswith(b"to the server")
        hosts[2].setblocking(False)
        with pytest.raises(BlockingIOError):
            hosts[2].recv(100)  # client 2 got nothing meant for client 1
    finally:
        os.close(control_w)  # the line ends when its control pipe closes
        thread.join(10)
        os.close(control_r)
        for a, b in pairs:
            a.close()
            b.close()
    assert not thread.is_alive()


@pytest.mark.parametrize(("env", "needs", "want"), [("userspace", False, "userspace"), ("netem", True, "netem"),
                                                    ("", False, "netem")])
def test_carrier_choice(monkeypatch: pytest.MonkeyPatch, env: str, needs: bool, want: str) -> None:
    monkeypatch.setenv("C10K_DELAY", env)
    assert choose_carrier(needs) == want


def test_a_bad_carrier_choice_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("C10K_DELAY", "kernel")
    with pytest.raises(UsageError, match="C10K_DELAY must be auto, netem or userspace"):
        choose_carrier(True)


# --- for real -------------------------------------------------------------------------------------

real = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None or not tap_available(),
                          reason="needs root, iproute2 and /dev/net/tun")


def ours() -> set[str]:
    return {n for n in (*list_namespaces(), *list_links()) if run_id_of(n)}


def in_namespace(namespace: str, make: Callable[[], T]) -> T:
    # A socket belongs to the namespace it was made in, whatever the thread does later.
    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter_namespace(namespace)
        return make()
    finally:
        enter_namespace(home)
        os.close(home)


def echo_round_trips(topo: Topology, count: int) -> list[float]:
    server, client = topo.plan.server, topo.plan.clients[0]
    listener = in_namespace(server.namespace, lambda: socket.create_server((server.address, 0)))
    port = listener.getsockname()[1]
    listener.settimeout(10)

    def echo() -> None:
        with listener, listener.accept()[0] as conn:
            while data := conn.recv(100):
                conn.sendall(data)

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    rtts = []
    with in_namespace(client.namespace, lambda: socket.create_connection((server.address, port), 10)) as conn:
        assert conn.getsockname()[0] == client.address
        for _ in range(count):
            t0 = time.monotonic()
            conn.sendall(b"x")
            assert conn.recv(1) == b"x"
            rtts.append(time.monotonic() - t0)
    thread.join(10)
    return rtts


@real
def test_a_20ms_line_gives_a_40ms_round_trip_and_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("C10K_DELAY", "userspace")
    before = ours()
    with Topology.create(1, parse_link("delay 20ms")) as topo:
        assert topo.to_json()["link_carrier"] == "userspace delay line"
        line_pid = topo.line.proc.pid if topo.line else -1
        rtts = echo_round_trips(topo, 5)
        assert min(rtts) >= 0.040  # 20 ms each way is physics
        assert max(rtts) < 1.0  # generous: the machine is shared
        topo.set_link(parse_link("none"))
        assert min(echo_round_trips(topo, 5)) < 0.040
    assert wait_gone(sorted(ours() - before)), f"left behind: {sorted(ours() - before)}"
    with pytest.raises(ProcessLookupError):
        os.kill(line_pid, 0)  # reaped: the line is gone with the run


_HOLDER = """
import os, sys
from c10k.topology import Topology, parse_link
with Topology.create(2, parse_link("delay 5ms")) as topo:
    print(topo.plan.run_id, topo.line.proc.pid, flush=True)
    sys.stdin.read()
"""


def wait_dead(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True  # dead, waiting for its parent (the test runner's init) to reap it
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


@real
def test_a_sigkilled_run_takes_its_line_along_and_the_next_run_removes_the_rest(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("C10K_DELAY", "userspace")
    before = ours()
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "C10K_DELAY": "userspace"})
    try:
        words = holder.stdout.readline().split()  # type: ignore[union-attr]
        assert len(words) == 2, "the holder did not make its topology"
        run_id, line_pid = words[0], int(words[1])
        assert {n for n in ours() if run_id_of(n) == run_id} == {f"c10k{run_id}-{h}"
                                                                 for h in ("server", "client1", "client2")}
        holder.kill()
        holder.wait(10)
        assert wait_dead(line_pid), "the delay line outlived its run (PR_SET_PDEATHSIG)"
        assert run_id in {run_id_of(n) for n in remove_stale()}
        assert wait_gone(sorted(ours() - before)), f"left behind: {sorted(ours() - before)}"
    finally:
        holder.kill()
        holder.wait(10)
        holder.stdout.close()  # type: ignore[union-attr]
        holder.stdin.close()  # type: ignore[union-attr]


DELAYED = """
name = "line small"
messages = 10
[[case]]
server = "epoll"
connections = 40
link = ["none", "delay 10ms"]
"""


@real
def test_a_study_with_a_delayed_case_runs_every_case_through_the_line(tmp_path: Path) -> None:
    before = ours()
    (tmp_path / "m.toml").write_text(DELAYED)
    env = {**os.environ, "C10K_DELAY": "userspace", "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "c10k", "study", "--matrix", str(tmp_path / "m.toml"),
                           "--topology", "netns", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["topology"]["link_carrier"] == "userspace delay line"
    plain, delayed = results["cases"]
    assert plain["status"] == delayed["status"] == "passed", (plain["reason"], delayed["reason"])
    # one message in flight per connection: no echo can beat the 20 ms round trip
    assert delayed["summary"]["latency_us"]["p50"] >= 20_000 > plain["summary"]["latency_us"]["p50"]
    assert "userspace delay line" in (tmp_path / "out" / "REPORT.md").read_text()
    assert (tmp_path / "out" / "rtt.png").exists()
    assert wait_gone(sorted(ours() - before)), f"left behind: {sorted(ours() - before)}"
