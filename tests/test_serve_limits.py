"""Focused tests at each architecture's limit (issue 2): select at FD_SETSIZE, threaded when a
thread cannot start, epoll hand-off balance and descriptor hygiene, a dead worker, backpressure
against a client that never reads, and one `c10k serve epoll` holding 25,000 connections."""

from __future__ import annotations

import multiprocessing
import resource
import signal
import socket
import traceback

import psutil
import pytest

from helpers import (
    CONFIG_IDS,
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
    socket_fd_count,
    stall_then_drain,
    wait_until,
)


def _one_byte_round(socks, rng, timeout=60):
    convs = [Conversation(s, [rng.randbytes(8)]) for s in socks]
    drive(convs, timeout=timeout)
    return convs


def _serves(address, payload=b"are you there?") -> bool:
    try:
        return echo_once(address, payload, timeout=5) == payload
    except OSError:
        return False


# --------------------------------------------------------------------------- select


def test_select_refuses_descriptors_at_fd_setsize_and_keeps_serving(serve, rng):
    server = serve("select")
    socks = connect_many(server.address, 1100, source="127.0.0.2")
    try:
        convs = _one_byte_round(socks, rng)
        served = [c for c in convs if not c.error and bytes(c.received) == c.expected]
        refused = [c for c in convs if c not in served]
        assert all(c.eof or c.error for c in refused), [c.describe() for c in refused[:3]]
        assert refused, "1100 connections cannot all fit under FD_SETSIZE"
        assert 900 <= len(served) < 1024, f"{len(served)} served: the server should fill its fd_set"
        assert server.alive()

        # the earlier connections still echo after the burst of refusals
        again = _one_byte_round([c.sock for c in served], rng)
        assert_echoes(again)

        # free some descriptors: a new client is served again
        for c in refused + served[:100]:
            c.sock.close()
        probes = []  # a probe may still land on a descriptor >= 1024 before the server sees the closes

        def probe():
            probes.append(_serves(server.address))
            return probes[-1]

        wait_until(probe, 20, what="select to serve a new client")
    finally:
        for s in socks:
            s.close()
    assert server.stop() == 0
    stats = server.stats()
    assert stats["refused"].get("fd_setsize") == len(refused) + probes.count(False)
    assert 900 <= stats["peak_concurrent"] < 1024
    log = [line for line in server.stderr().splitlines() if "1024" in line or "FD_SETSIZE" in line.upper()]
    assert 1 <= len(log) <= 10, f"refusals must be logged once per burst, not per connection: {log[:12]}"
    assert "Traceback" not in server.stderr()


# --------------------------------------------------------------------------- threaded


def test_threaded_survives_a_thread_that_cannot_start(serve, rng):
    """With a 1 GiB stack per thread and the address space capped below one more stack,
    the next connection's thread cannot start: that connection is closed and counted, the
    others go on, and once a thread ends a new connection is served again."""
    gib = 1 << 30
    server = serve("threaded", "--stack-size", str(gib))
    first = connect(server.address)
    try:
        first.sendall(b"first")
        assert first.recv(16) == b"first"
        vms = server.ps().memory_info().vms
        limit = vms + gib // 2  # room for malloc, not for another 1 GiB stack
        server.ps().rlimit(psutil.RLIMIT_AS, (limit, limit))

        second = connect(server.address)
        try:
            second.sendall(b"x")
            data, how = read_until_closed(second, timeout=10)
            assert data == b"" and how in ("eof", "reset"), (data, how)
        finally:
            second.close()
        assert server.alive()
        first.sendall(b"still")
        assert first.recv(16) == b"still"
    finally:
        first.close()
    # the first thread ends and its stack is unmapped: there is room for one thread again
    wait_until(lambda: server.ps().memory_info().vms < limit - gib // 4, 20, what="thread stack unmapped")
    wait_until(lambda: _serves(server.address), 20, what="a new connection to be served")
    assert server.stop() == 0
    stats = server.stats()
    assert stats["refused"].get("thread_start", 0) >= 1
    assert "Traceback" not in server.stderr()


# --------------------------------------------------------------------------- epoll hand-off


def test_epoll_handoff_spreads_10000_connections_and_acceptor_leaks_nothing(serve, rng):
    workers_n = 4
    n = 10_000
    server = serve("epoll", "--workers", str(workers_n))
    wait_until(lambda: len(server.workers()) == workers_n, 30, what=f"{workers_n} worker processes")
    assert echo_once(server.address) == b"ping"
    acceptor = server.ps()
    workers = server.workers()
    settled(server.socket_count, what="server sockets after the first echo")
    base_acceptor_fds = acceptor.num_fds()
    base = {w.pid: socket_fd_count(w.pid) for w in workers}

    socks = connect_many(server.address, n, source="127.0.0.2", timeout=120)
    try:
        def held():
            return {pid: socket_fd_count(pid) - b for pid, b in base.items()}

        wait_until(lambda: sum(held().values()) >= n, 60, what="workers to hold every connection")
        counts = held()
        fair = n / workers_n
        assert all(0.8 * fair <= c <= 1.2 * fair for c in counts.values()), f"uneven hand-off: {counts}"
        assert_echoes(_one_byte_round(socks, rng, timeout=120))
    finally:
        for s in socks:
            s.close()
    wait_until(lambda: all(socket_fd_count(pid) <= b for pid, b in base.items()), 60,
               what="workers to close every connection")
    wait_until(lambda: acceptor.num_fds() == base_acceptor_fds, 30,
               what=f"acceptor back to {base_acceptor_fds} descriptors")
    assert {w.pid for w in server.workers()} == set(base), "no worker died or was added"
    assert server.stop() == 0
    assert server.stats()["accepted"] == n + 1


def test_epoll_worker_killed_server_keeps_serving(serve, rng):
    server = serve("epoll", "--workers", "2")
    wait_until(lambda: len(server.workers()) == 2, 30, what="2 worker processes")
    victim = server.workers()[0]
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    socks = connect_many(server.address, 20)
    try:
        assert_echoes(_one_byte_round(socks, rng))
    finally:
        for s in socks:
            s.close()
    assert server.alive()
    assert victim.pid not in {w.pid for w in server.workers()}
    assert server.stop() == 0
    assert server.stats()["workers"]["died"] >= 1


# --------------------------------------------------------------------------- backpressure


def _autotune_max(name: str) -> int:
    with open(f"/proc/sys/net/ipv4/{name}") as f:
        return int(f.read().split()[2])


@pytest.mark.parametrize("config", CONFIG_IDS)
def test_client_that_never_reads_does_not_grow_server_memory(serve, config, rng):
    """More than every kernel buffer on the way can hold, sent without reading: the server stops
    reading at its watermark (RSS growth < 8 MiB), and once the client reads, every byte comes back
    in order. The kernel's buffers autotune up to tcp_rmem/tcp_wmem's maximum (32 MiB to receive
    since Linux 6.15), so the stream is sized from them, not fixed."""
    server = serve.config(config)
    warm = [Conversation(s, [rng.randbytes(MiB)]) for s in connect_many(server.address, 2)]
    drive(warm, timeout=60)
    assert_echoes(warm)
    for c in warm:
        c.sock.close()
    sampler = PeakSampler(server)
    rmem, wmem = _autotune_max("tcp_rmem"), _autotune_max("tcp_wmem")
    with connect(server.address) as s:
        # Our own receive buffer is fixed small; the server's receive and send buffers and our
        # send buffer may still grow to their maxima before the server must stop reading.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        stream = Stream(seed=rng.randrange(1 << 30), total=rmem + 2 * wmem + 16 * MiB)
        result = stall_then_drain(s, stream, sample=sampler)
    assert result.sent_before_stall < stream.total, "the server kept reading a client that never reads"
    assert result.in_order, f"echo differs from what was sent at offset {result.first_bad_offset}"
    assert result.received == stream.total
    assert sampler.growth < 8 * MiB, f"server RSS grew {sampler.growth / MiB:.1f} MiB"
    assert server.stop() == 0


# --------------------------------------------------------------------------- 25,000 connections


def _hold(address, n, source, pipe):
    """Client process: open n connections, report, echo one message on each when told, close."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        socks = connect_many(address, n, source=source, timeout=240, window=256)
        pipe.send(("open", len(socks)))
        if not pipe.poll(300) or pipe.recv() != "echo":
            raise RuntimeError("no echo command")
        convs = [Conversation(s, [f"{source} #{i} says hello".encode()]) for i, s in enumerate(socks)]
        drive(convs, timeout=240)
        ok = sum(1 for c in convs if not c.error and bytes(c.received) == c.expected)
        bad = next((c.describe() for c in convs if c.error or bytes(c.received) != c.expected), None)
        pipe.send(("echoed", ok, bad))
        pipe.poll(300)
        for s in socks:
            s.close()
        pipe.send(("closed", 0))
    except BaseException:
        pipe.send(("error", traceback.format_exc()))


def _expect(pipe, kind, timeout):
    assert pipe.poll(timeout), f"client process sent nothing within {timeout}s (waiting for {kind})"
    msg = pipe.recv()
    assert msg[0] == kind, f"client process: {msg}"
    return msg


@pytest.mark.slow
def test_epoll_holds_25000_concurrent_connections(serve):
    """More than one process may hold (RLIMIT_NOFILE is 20,000): the default `c10k serve epoll`
    must spread them over its workers. Two client processes, from 127.0.0.2 and 127.0.0.3."""
    total, sources = 25_000, ["127.0.0.2", "127.0.0.3"]
    per = total // len(sources)
    server = serve("epoll", "--shutdown-timeout", "30")
    rest = server.socket_count()
    ctx = multiprocessing.get_context("fork")
    procs, pipes = [], []
    try:
        for src in sources:
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_hold, args=(server.address, per, src, child), daemon=True)
            p.start()
            child.close()
            procs.append(p)
            pipes.append(parent)
        for pipe in pipes:
            assert _expect(pipe, "open", 300)[1] == per
        # all 25,000 open at once, held by the server's processes
        wait_until(lambda: server.socket_count() - rest >= total, 120,
                   what=f"server to hold {total} connections")
        holders = [p for p in server.tree() if socket_fd_count(p.pid) > 1000]
        assert len(holders) >= 2, "25,000 descriptors cannot fit in one process here"
        for pipe in pipes:
            pipe.send("echo")
        for pipe in pipes:
            _, ok, bad = _expect(pipe, "echoed", 300)
            assert ok == per, f"only {ok} of {per} echoed; first failure: {bad}"
        for pipe in pipes:
            pipe.send("close")
        for pipe in pipes:
            _expect(pipe, "closed", 120)
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join(10)
        for pipe in pipes:
            pipe.close()
    assert server.stop(timeout=60) == 0
    stats = server.stats()
    assert stats["accepted"] == total
    assert stats["peak_concurrent"] >= total
    assert stats["refused"] == {}


def test_client_connection_count_helpers_are_bounded():
    """connect_many closes what it opened when a connect fails (nothing listens here)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: connects are refused
        with pytest.raises(OSError):
            connect_many(("127.0.0.1", port), 10, timeout=10)
