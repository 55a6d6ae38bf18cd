"""Hostile conditions (issue 5): each scenario against every architecture where it applies.

Scenario 10 (the load client under faults) lives with the client's tests (tests/test_load*.py).
Numbers in the docstrings are the issue's pass criteria.
"""

from __future__ import annotations

import errno
import os
import random
import resource
import selectors
import signal
import socket
import statistics
import threading
import time
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import (
    CONFIG_IDS,
    PROCESS_WORKER_CONFIGS,
    SERVER_CONFIGS,
    Conversation,
    MiB,
    PeakSampler,
    Stream,
    assert_echoes,
    connect,
    connect_many,
    drive,
    echo_once,
    read_until_closed,
    settled,
    stall_then_drain,
    wait_until,
)


def _serves(address, payload=b"hello?", timeout=2.0) -> bool:
    try:
        return echo_once(address, payload, timeout=timeout) == payload
    except OSError:
        return False


def _warm_up(server, rng, n=2, size=MiB):
    convs = [Conversation(s, [rng.randbytes(size)]) for s in connect_many(server.address, n)]
    drive(convs, timeout=60)
    assert_echoes(convs)
    for c in convs:
        c.sock.close()


def _close_all(socks):
    for s in socks:
        s.close()


# --------------------------------------------------------------------------- 1. descriptor exhaustion

#: "Serves a new client within 1 s" (the issue's figure), with room for a busy 2-core machine
#: where one connect and echo can take a second by itself; a server that leaves new clients
#: in the backlog until some timer or the next connection still fails (the wait allows 10 s).
SERVED_WITHIN = 2.5


def _cpu_share(server, window: float) -> float:
    """CPU seconds the server's tree used per second of a ``window``-second wait."""
    cpu0, t0 = server.cpu_seconds(), time.monotonic()
    time.sleep(window)  # the measurement window itself, not a wait for anything
    return (server.cpu_seconds() - cpu0) / (time.monotonic() - t0)


def _first_served_after(address, since: float, limit: float = 10.0) -> float:
    """Seconds from ``since`` until a new client is served, trying continuously (the
    measurement is the server's delay, not a polling interval); fails after ``limit``."""
    while time.monotonic() < since + limit:
        if _serves(address, timeout=1.0):
            return time.monotonic() - since
    raise AssertionError(f"not serving {limit:.0f} s after the event")



def _nofile_128():
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))


@pytest.mark.parametrize("config", CONFIG_IDS)
def test_1_descriptor_exhaustion(serve, config, rng):
    """RLIMIT_NOFILE 128 and 300 clients: the server stays up, uses < 20% CPU while it cannot
    accept (no busy loop), and serves a new client within 1 s once the load drops (SERVED_WITHIN)."""
    extra = ["--max-workers", "2"] if config in ("epoll", "uring") else []  # no growing out of the limit
    server = serve.config(config, *extra, preexec_fn=_nofile_128)
    rest = server.socket_count()
    assert _serves(server.address)
    socks = connect_many(server.address, 300, source="127.0.0.2")
    try:
        # the server took what it could: its socket count holds still for 1 s
        held = settled(server.socket_count, hold=1.0, timeout=30, what="the server's socket count") - rest
        assert held < 300, "the server held all 300 connections under RLIMIT_NOFILE 128"
        # CPU time of the whole tree while it is saturated, over two windows: a busy loop fills
        # both, while a burst of legitimate work (or a stall of this busy machine) spoils one at most.
        shares = [_cpu_share(server, 2.0) for _ in range(2)]
        assert server.alive(), server.stderr()[-2000:]
        assert min(shares) < 0.20, f"server used {shares[0]:.0%} and {shares[1]:.0%} of a CPU while saturated: " \
                                   "a busy loop"
    finally:
        _close_all(socks)
    dropped = time.monotonic()
    served_after = _first_served_after(server.address, dropped)
    assert served_after < SERVED_WITHIN, f"first new client served {served_after:.2f}s after the load dropped"
    assert server.stop() == 0
    assert "Traceback" not in server.stderr()


# --------------------------------------------------------------------------- 2. a reader that never reads


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIG_IDS)
def test_2_reader_that_never_reads(serve, config, rng):
    """256 MiB sent, nothing read: server memory < 8 MiB above baseline; then every byte back in order."""
    server = serve.config(config)
    _warm_up(server, rng)
    sampler = PeakSampler(server)
    stream = Stream(seed=rng.randrange(1 << 30), total=256 * MiB)
    with connect(server.address) as s:
        result = stall_then_drain(s, stream, sample=sampler, timeout=300)
    assert result.sent_before_stall < stream.total
    assert result.in_order, f"echo differs from what was sent at offset {result.first_bad_offset}"
    assert result.received == stream.total
    assert sampler.growth < 8 * MiB, f"server RSS grew {sampler.growth / MiB:.1f} MiB ({sampler.samples} samples)"
    assert server.stop() == 0


# --------------------------------------------------------------------------- 3. half-close under load


@pytest.mark.parametrize("config", CONFIG_IDS)
def test_3_half_close_under_load(serve, config, rng):
    """1,000 concurrent connections each send K bytes then shut their write side: exactly K bytes
    come back, then EOF."""
    server = serve.config(config)
    socks = connect_many(server.address, 1000, source="127.0.0.2")
    try:
        convs = []
        for s in socks:
            data = rng.randbytes(rng.randint(0, 40_000))
            chunks = [data[i : i + 8192] for i in range(0, len(data), 8192)]
            convs.append(Conversation(s, chunks, half_close=True))
        drive(convs, timeout=120)
        assert_echoes(convs)
        assert all(c.eof for c in convs)
    finally:
        _close_all(socks)
    assert server.stop() == 0


# --------------------------------------------------------------------------- 4. resets


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIG_IDS)
def test_4_resets_mid_stream(serve, config, rng):
    """5,000 connections (in waves of 500, so select can hold each wave), 30% reset mid-stream with
    SO_LINGER 0: the rest stay byte-exact and the server's descriptor count returns to baseline."""
    server = serve.config(config)
    _warm_up(server, rng, size=64 * 1024)
    baseline = settled(server.fd_count, what="server descriptor count after the warm-up")
    total, wave = 5000, 500
    resets = set(rng.sample(range(total), total * 3 // 10))
    exact = 0
    for start in range(0, total, wave):
        socks = connect_many(server.address, wave, source="127.0.0.3")
        try:
            convs = []
            for k, s in enumerate(socks, start):
                data = rng.randbytes(rng.randint(2, 32_000))
                chunks = [data[i : i + 4096] for i in range(0, len(data), 4096)]
                cut = rng.randint(1, len(data) - 1) if k in resets else None
                convs.append(Conversation(s, chunks, reset_after=cut))
            drive(convs, timeout=120)
            kept = [c for c in convs if c.reset_after is None]
            assert_echoes(kept)
            exact += len(kept)
        finally:
            _close_all(socks)
        assert server.alive(), server.stderr()[-2000:]
    assert exact == total - len(resets)
    wait_until(lambda: server.fd_count() == baseline, 60,
               what=f"server descriptors back to baseline {baseline} (now {server.fd_count()})")
    assert _serves(server.address)
    assert server.stop() == 0
    assert "Traceback" not in server.stderr()


# --------------------------------------------------------------------------- 5. graceful stop


@dataclass
class Pinger:
    """A closed-loop client: send a message, wait for its echo, send the next."""

    sock: socket.socket
    rng: random.Random
    sent: bytearray = field(default_factory=bytearray)
    received: bytearray = field(default_factory=bytearray)
    pending: bytes = b""
    messages: int = 0
    eof: bool = False
    error: str | None = None

    def next_message(self) -> None:
        msg = self.rng.randbytes(512)
        self.sent += msg
        self.pending = msg
        self.flush()

    def flush(self) -> None:
        try:
            n = self.sock.send(self.pending)
        except BlockingIOError:
            return
        except OSError as e:
            self.error = f"send: {e!r}"
            return
        self.pending = self.pending[n:]

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as e:
            self.error = f"recv: {e!r}"
            return
        if not data:
            self.eof = True
            return
        self.received += data
        if len(self.received) == len(self.sent) and not self.pending:
            self.messages += 1
            self.next_message()

    @property
    def finished(self) -> bool:
        return self.eof or self.error is not None


@pytest.mark.parametrize("config", CONFIG_IDS)
def test_5_graceful_stop_under_load(serve, config, rng):
    """SIGTERM during a 1,000-connection run: new connections refused at once, every connection
    gets back a byte-exact prefix of what it sent and then EOF (no reset), the server's bytes_echoed
    equals what the clients received, and it exits 0 within --shutdown-timeout."""
    shutdown_timeout = 10.0
    server = serve.config(config, "--shutdown-timeout", str(shutdown_timeout))
    socks = connect_many(server.address, 1000, source="127.0.0.2")
    pingers = [Pinger(s, random.Random(rng.random())) for s in socks]
    try:
        prober = _run_then_stop(server, pingers, warmed=lambda: all(p.messages >= 3 for p in pingers))
        rc = server.wait(shutdown_timeout + 10)
        exited_after = time.monotonic() - prober.signalled
    finally:
        _close_all(socks)
    # "At once", with headroom for a busy machine: a server that accepts while it drains fails.
    assert prober.refused_after is not None and prober.refused_after < 5.0, \
        f"new connections still accepted {prober.refused_after or prober.limit:.1f} s after SIGTERM"
    assert rc == 0, server.stderr()[-2000:]
    assert exited_after < shutdown_timeout + 2, f"exit {exited_after:.1f}s after SIGTERM"
    bad = [p for p in pingers if p.error or not p.eof or bytes(p.received) != bytes(p.sent[: len(p.received)])]
    assert not bad, (f"{len(bad)} connections not ended cleanly with a byte-exact echo: "
                     f"{[(p.error, p.eof, len(p.sent), len(p.received)) for p in bad[:5]]}")
    stats = server.stats()
    assert stats["bytes_echoed"] == sum(len(p.received) for p in pingers)
    # a probe that connected before the listener closed may have been accepted too
    assert len(socks) <= stats["accepted"] <= len(socks) + prober.connected


def _refused(address) -> bool:
    probe = socket.socket()
    probe.settimeout(2)
    try:
        return probe.connect_ex(address) == errno.ECONNREFUSED
    finally:
        probe.close()


class _Prober(threading.Thread):
    """From SIGTERM on, connect to the server every 10 ms until a connect is refused (for at
    most ``limit`` seconds), in its own thread so that the clients' loop cannot delay it.
    Blocking connects release the GIL: the probes keep their pace however busy that loop is."""

    def __init__(self, address, limit: float = 10.0) -> None:
        super().__init__(daemon=True)
        self.address, self.limit = address, limit
        self.signalled = time.monotonic()
        self.refused_after: float | None = None
        self.connected = 0

    def run(self) -> None:
        for _ in range(int(self.limit / 0.01)):
            if _refused(self.address):
                self.refused_after = time.monotonic() - self.signalled
                return
            self.connected += 1
            time.sleep(0.01)


def _run_then_stop(server, pingers, warmed) -> _Prober:
    """Drive the clients until every one has done a few round trips, send SIGTERM, and keep
    driving (each client sends its next message after every echo) until every connection has
    ended; meanwhile a _Prober checks that new connects are refused."""
    prober: _Prober | None = None
    sel = selectors.DefaultSelector()
    for p in pingers:
        p.sock.setblocking(False)
        sel.register(p.sock, selectors.EVENT_READ, p)
        p.next_message()
    deadline = time.monotonic() + 120
    live = len(pingers)
    try:
        while live:
            assert time.monotonic() < deadline, f"{live} connections still open (SIGTERM sent: {prober is not None})"
            if prober is None and warmed():
                server.send(signal.SIGTERM)
                prober = _Prober(server.address)
                prober.start()
            for key, _ in sel.select(0.2):
                p = key.data
                p.on_readable()
                if p.finished:
                    sel.unregister(p.sock)
                    p.sock.close()  # as a client does at EOF: the server's drain ends
                    live -= 1
            for p in pingers:
                if p.pending and not p.finished:
                    p.flush()
    finally:
        sel.close()
    assert prober is not None
    prober.join(prober.limit + 5)
    return prober


# --------------------------------------------------------------------------- 6. idle and drip clients


@pytest.mark.parametrize("config", CONFIG_IDS)
def test_6_idle_and_drip_clients_closed(serve, config, rng):
    """--idle-timeout 1: idle clients and drip clients (1 byte, then silence longer than the
    timeout) are closed after the timeout, never before; active clients are unaffected."""
    timeout = 1.0
    server = serve.config(config, "--idle-timeout", str(timeout))
    idle = connect_many(server.address, 10)
    drip = connect_many(server.address, 10)
    active = connect_many(server.address, 10)
    socks = idle + drip + active
    last_activity = {s.fileno(): time.monotonic() for s in socks}
    closed_at: dict[int, float] = {}
    got = {s.fileno(): bytearray() for s in socks}
    expect = {s.fileno(): bytearray() for s in socks}
    drip_byte = {s.fileno(): bytes([rng.randrange(256)]) for s in drip}
    for s in drip:
        s.send(drip_byte[s.fileno()])
        expect[s.fileno()] += drip_byte[s.fileno()]
        last_activity[s.fileno()] = time.monotonic()
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    start = time.monotonic()
    next_send = start
    run_for = 3.5 * timeout
    try:
        quiet = {s.fileno() for s in idle + drip}
        while time.monotonic() - start < run_for or len(quiet & closed_at.keys()) < len(quiet):
            now = time.monotonic()
            assert now - start < run_for + 15, f"only {len(quiet & closed_at.keys())} of 20 idle/drip clients closed"
            if now >= next_send and now - start < run_for:
                for s in active:  # active: a message every timeout/4
                    if s.fileno() in closed_at:
                        continue
                    msg = rng.randbytes(100)
                    try:
                        s.send(msg)
                    except OSError:  # closed (or reset) by the server: the assertions below say so
                        closed_at[s.fileno()] = time.monotonic()
                        sel.unregister(s)
                        continue
                    expect[s.fileno()] += msg
                next_send = now + timeout / 4
            for key, _ in sel.select(0.05):
                s = key.fileobj
                try:
                    data = s.recv(65536)
                except ConnectionResetError:
                    data = b""
                if data:
                    got[s.fileno()] += data
                else:
                    closed_at[s.fileno()] = time.monotonic()
                    sel.unregister(s)
    finally:
        sel.close()
        for s in socks:
            s.close()
    idle_fds = list(last_activity)[: len(idle)]
    drip_fds = list(last_activity)[len(idle) : len(idle) + len(drip)]
    active_fds = list(last_activity)[len(idle) + len(drip) :]
    for fd in idle_fds + drip_fds:
        assert fd in closed_at, "an idle client was never closed"
        lived = closed_at[fd] - last_activity[fd]
        assert lived >= 0.9 * timeout, f"closed {lived:.2f}s after its last byte, before the idle timeout"
        assert got[fd] == expect[fd], "a drip client's byte was not echoed before the close"
    for fd in active_fds:
        assert fd not in closed_at, (f"an active client (a message every {timeout / 4}s) was closed "
                                     f"{closed_at[fd] - start:.2f}s into the run")
        assert got[fd] == expect[fd]
    assert server.stop() == 0
    assert server.stats()["closed_idle"] == len(idle) + len(drip)


# --------------------------------------------------------------------------- 7. --max-connections


@pytest.mark.parametrize("config", CONFIG_IDS)
def test_7_max_connections(serve, config, rng):
    """--max-connections 20: connection 21 is closed within 100 ms (median of 5 tries, none above
    1 s; checked with margins for a busy machine) without an echo, and the live count never exceeds 20."""
    m = 20
    server = serve.config(config, "--max-connections", str(m))
    held = connect_many(server.address, m)
    try:
        convs = [Conversation(s, [rng.randbytes(64)]) for s in held]
        drive(convs, timeout=30)
        assert_echoes(convs)
        delays = []
        for _ in range(5):
            extra = connect(server.address)
            t0 = time.monotonic()
            try:
                try:
                    extra.send(b"x")
                except OSError:
                    pass
                data, how = read_until_closed(extra, timeout=5)
            finally:
                extra.close()
            delays.append(time.monotonic() - t0)
            assert data == b"", "connection M+1 was served"
            assert how in ("eof", "reset"), f"connection M+1 not closed within 5 s ({how})"
        # "Within 100 ms" is the figure; a busy 2-core machine delays a few tries by
        # hundreds of ms. A close left to the 1 s tick (or to no one) has a median near 0.5 s or more.
        assert statistics.median(delays) < 0.300, f"close delays {delays}"
        assert max(delays) < 2.5, f"close delays {delays}"
        # the held connections still echo
        convs = [Conversation(s, [rng.randbytes(64)]) for s in held]
        drive(convs, timeout=30)
        assert_echoes(convs)
        # one leaves: a new one is served
        held[0].close()
        wait_until(lambda: _serves(server.address), 10, what="a free slot to be reused")
    finally:
        _close_all(held)
    assert server.stop() == 0
    stats = server.stats()
    assert stats["peak_concurrent"] <= m, "peak_concurrent must be the server's simultaneous peak"
    assert stats["refused"].get("max_connections", 0) >= 5


# --------------------------------------------------------------------------- 8. worker killed


def _client_ports_by_worker(server):
    out = {}
    for w in server.workers():
        ports = {c.raddr.port for c in w.net_connections(kind="tcp") if c.raddr and c.raddr.port}
        out[w.pid] = ports
    return out


@pytest.mark.parametrize("config", PROCESS_WORKER_CONFIGS)
def test_8_worker_killed(serve, config, rng):
    """Kill a worker (SIGKILL): its clients see EOF or reset, the others keep echoing, new
    connections are served within 1 s, none is routed to the dead worker, the worker is replaced,
    and (hand-off) the acceptor's descriptors stay flat over 1,000 hand-offs."""
    handoff = "reuseport" not in SERVER_CONFIGS[config]
    server = serve.config(config)
    wait_until(lambda: len(server.workers()) == 2, 30, what="2 worker processes")
    _warm_up(server, rng, size=1024)
    acceptor = server.ps()
    base_fds = acceptor.num_fds()

    socks = connect_many(server.address, 1000, source="127.0.0.2")
    try:
        convs = [Conversation(s, [rng.randbytes(32)]) for s in socks]
        drive(convs, timeout=60)
        assert_echoes(convs)
        if handoff:
            wait_until(lambda: acceptor.num_fds() == base_fds, 20,
                       what=f"acceptor flat at {base_fds} descriptors while 1,000 hand-offs are open")
        by_worker = _client_ports_by_worker(server)
        victim_pid = max(by_worker, key=lambda pid: len(by_worker[pid]))
        victim_ports = by_worker[victim_pid]
        assert victim_ports, f"no client connection found in any worker: {by_worker}"
        victims = [s for s in socks if s.getsockname()[1] in victim_ports]
        others = [s for s in socks if s.getsockname()[1] not in victim_ports]

        killed_at = time.monotonic()
        os.kill(victim_pid, signal.SIGKILL)

        served_after = _first_served_after(server.address, killed_at)
        assert served_after < SERVED_WITHIN, f"first new client served {served_after:.2f}s after the kill"

        for s in victims:
            data, how = read_until_closed(s, timeout=10)
            assert data == b"" and how in ("eof", "reset"), (data, how)
        convs = [Conversation(s, [rng.randbytes(32)]) for s in others]
        drive(convs, timeout=60)
        assert_echoes(convs)

        # nothing routed to the dead worker: every new connection is served
        fresh = connect_many(server.address, 200, source="127.0.0.3")
        try:
            convs = [Conversation(s, [rng.randbytes(32)]) for s in fresh]
            drive(convs, timeout=60)
            assert_echoes(convs)
        finally:
            _close_all(fresh)
        wait_until(lambda: len(server.workers()) == 2 and victim_pid not in {w.pid for w in server.workers()},
                   20, what="the dead worker to be replaced")
    finally:
        _close_all(socks)
    if handoff:
        wait_until(lambda: acceptor.num_fds() == base_fds, 20,
                   what=f"acceptor back to {base_fds} descriptors after the replacement")
    assert server.stop() == 0
    assert server.stats()["workers"]["died"] == 1


# --------------------------------------------------------------------------- 9. fuzzed traffic


@st.composite
def traffic(draw):
    conns = draw(st.integers(1, 12))
    plan = []
    for _ in range(conns):
        writes = draw(st.lists(
            st.tuples(st.integers(1, 70_000), st.sampled_from([0.0, 0.0, 0.001, 0.01, 0.05])),
            min_size=0, max_size=6))
        plan.append((writes, draw(st.booleans()), draw(st.integers(0, 2**32 - 1))))
    return plan


@pytest.mark.parametrize("config", CONFIG_IDS)
def test_9_fuzzed_traffic(serve, config):
    """Hypothesis-generated writes, sizes, pauses and half-closes across many connections:
    byte-exact on every architecture."""
    server = serve.config(config)

    @settings(max_examples=12, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(plan=traffic())
    def run(plan):
        socks = connect_many(server.address, len(plan))
        try:
            convs = []
            for s, (writes, half_close, seed) in zip(socks, plan, strict=True):
                r = random.Random(seed)
                chunks = [r.randbytes(n) for n, _ in writes]
                pauses = [p for _, p in writes]
                convs.append(Conversation(s, chunks, pauses=pauses or None, half_close=half_close))
            drive(convs, timeout=60)
            assert_echoes(convs)
        finally:
            _close_all(socks)

    run()
    assert server.alive()
    assert server.stop() == 0
