"""The io_uring layer (uring_sys.py) and the uring loop's own mechanics, below the CLI.

The behaviour, fault and goodbye suites run the uring server like every other
architecture (helpers.SERVER_CONFIGS); these tests hold what they cannot see:
the rings wrap around, overflowed completions are not lost, provided buffers
cycle and run out cleanly, a send the kernel takes part of is resubmitted, and
a machine without io_uring gets a one-line refusal.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
import time

import pytest

from c10k.errors import C10kError
from c10k.servers import uring, uring_sys
from c10k.servers.base import ServerConfig, Stats
from c10k.servers.uring_sys import (
    BUFFER_SHIFT,
    F_BUFFER,
    F_MORE,
    OP_NOP,
    OP_RECV,
    BufferRing,
    Ring,
    UringUnavailable,
)

WHY = uring_sys.available()
needs_uring = pytest.mark.skipif(WHY is not None, reason=f"io_uring unavailable on this machine: {WHY}")


def _nops(ring: Ring, first: int, n: int) -> None:
    for i in range(first, first + n):
        ring.prep(OP_NOP, -1, i)


def _reap(ring: Ring, n: int, limit: float = 10.0) -> list[tuple[int, int, int]]:
    """Exactly ``n`` completions, waiting for them (bounded in time)."""
    got: list[tuple[int, int, int]] = []
    deadline = time.monotonic() + limit
    while len(got) < n and time.monotonic() < deadline:
        ring.enter(1, 0.5)
        got += ring.completions()
    assert len(got) == n, f"{len(got)} completions of {n}"
    return got


@needs_uring
def test_ring_setup_and_a_no_op_round_trip():
    ring = Ring(8, 16)
    try:
        assert (ring.sq_entries, ring.cq_entries) == (8, 16)
        ring.prep(OP_NOP, -1, 42)
        assert ring.queued == 1
        assert _reap(ring, 1) == [(42, 0, 0)]
        assert ring.queued == 0
    finally:
        ring.close()


@needs_uring
def test_submission_and_completion_queues_wrap_around():
    """Passes of 3 entries on a 4-entry queue: the indexes wrap dozens of times, every
    completion comes back once, in order; 10 entries queued at once (more than the queue
    holds) go in as the queue fills."""
    ring = Ring(4, 8)
    try:
        for p in range(50):
            _nops(ring, p * 3, 3)
            assert [c[0] for c in _reap(ring, 3)] == [p * 3, p * 3 + 1, p * 3 + 2]
        _nops(ring, 1000, 10)
        assert sorted(c[0] for c in _reap(ring, 10)) == list(range(1000, 1010))
    finally:
        ring.close()


@needs_uring
def test_completions_beyond_the_queue_are_kept_and_reaped():
    """64 completions into a 16-entry completion queue, none reaped meanwhile: the kernel
    keeps the overflow (FEAT_NODROP), ``completions`` brings it in, nothing is lost."""
    ring = Ring(8, 16)
    try:
        assert ring.features & uring_sys.FEAT_NODROP
        for p in range(8):
            _nops(ring, p * 8, 8)
            ring.enter(0)
        assert ring.needs_flush(), "64 completions should have overflowed a 16-entry queue"
        got = ring.completions()
        assert [c[0] for c in got] == list(range(64))
        assert ring.overflowed() == 0 and not ring.needs_flush()
    finally:
        ring.close()


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


@needs_uring
def test_provided_buffers_cycle_through_the_ring(pair):
    """A multishot receive over 4 buffers of 8 bytes, 20 messages, each buffer given back after
    use: the buffer ring wraps five times and every message arrives in the buffer named."""
    ours, peer = pair
    ring = Ring(8, 64)
    bufs = BufferRing(ring, count=4, size=8)
    try:
        ring.prep(OP_RECV, ours.fileno(), 7, ioprio=2, flags=1 << 5, buf_group=0)
        seen = set()
        for i in range(20):
            msg = f"m{i:02d}".encode()
            peer.send(msg)
            (ud, res, flags), = _reap(ring, 1)
            assert ud == 7 and res == len(msg) and flags & F_BUFFER and flags & F_MORE
            bid = flags >> BUFFER_SHIFT
            seen.add(bid)
            assert bytes(bufs.memory[bid * 8: bid * 8 + res]) == msg
            bufs.give(bid)
            bufs.publish()
        assert seen == {0, 1, 2, 3}
    finally:
        bufs.close()
        ring.close()


@needs_uring
def test_running_out_of_buffers_ends_the_receive_with_enobufs(pair):
    ours, peer = pair
    ring = Ring(8, 64)
    bufs = BufferRing(ring, count=2, size=8)
    try:
        ring.prep(OP_RECV, ours.fileno(), 7, ioprio=2, flags=1 << 5, buf_group=0)
        results = []
        for _ in range(3):
            peer.send(b"x")
            results += _reap(ring, 1)
        assert [r[1] for r in results[:2]] == [1, 1]
        ud, res, flags = results[2]
        assert res == -errno.ENOBUFS and not flags & F_MORE, "the receive must end, not spin"
    finally:
        bufs.close()
        ring.close()


@needs_uring
def test_a_short_send_is_resubmitted_and_the_echo_stays_byte_exact():
    """A client writes 1 MiB while another thread reads in small pieces: the kernel takes part
    of some sends (small socket buffers), the loop sends the rest from where it stopped, and
    the echo is exact."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server_end, _ = listener.accept()
    listener.close()
    server_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.settimeout(60)
    loop = uring.UringLoop(ServerConfig(port=0), Stats())
    loop.add(server_end.detach())
    data = bytes(range(256)) * 4096
    received = bytearray()

    def read() -> None:
        with contextlib.suppress(OSError):
            while len(received) < len(data):
                chunk = client.recv(4096)
                if not chunk:
                    return
                received.extend(chunk)

    def write() -> None:
        with contextlib.suppress(OSError):
            client.sendall(data)

    writer = threading.Thread(target=write, daemon=True)
    reader = threading.Thread(target=read, daemon=True)
    writer.start()
    reader.start()
    deadline = time.monotonic() + 60
    try:
        while reader.is_alive() and time.monotonic() < deadline:
            loop.run(turns=1)
        assert len(received) == len(data), f"{len(received)} of {len(data)} bytes echoed in time"
        assert received == data
        assert loop.short_sends > 0, "no send was short: the test did not test resubmission"
        assert loop.stats.bytes_echoed == len(data)
    finally:
        client.close()
        loop.deadline = 0.0
        loop.stopping = True
        loop.run()


def test_no_io_uring_is_a_one_line_refusal(monkeypatch):
    """Where io_uring cannot be set up, `c10k serve uring` says why in one line (exit 1: a C10kError)."""
    def refuse(*args, **kwargs):
        raise UringUnavailable(errno.EPERM, "io_uring_setup: Operation not permitted")

    monkeypatch.setattr(uring_sys, "Ring", refuse)
    why = uring_sys.available()
    assert why is not None and "\n" not in why and "Operation not permitted" in why
    monkeypatch.setattr(uring, "available", lambda: why)
    with pytest.raises(C10kError) as exc:
        uring.uring_server(ServerConfig(port=0))
    assert exc.value.exit_status == 1
    assert str(exc.value) == f"cannot serve uring: {why}"
