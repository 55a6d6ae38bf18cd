"""One behaviour suite, run against every server configuration (cf. CPython's test_selectors).

Each test talks to `c10k serve` through sockets only; the parameter is a key of
``helpers.SERVER_CONFIGS``, or of ``helpers.UNIX_CONFIGS``: the same servers on a
unix-domain socket (``--unix PATH``).
"""

from __future__ import annotations

import os
import signal

import pytest

from helpers import (
    ALL_SERVER_CONFIGS,
    CONFIG_IDS,
    UNIX_CONFIG_IDS,
    Conversation,
    MiB,
    assert_echoes,
    check_echoes,
    connect,
    connect_many,
    drive,
    random_chunks,
    read_until_closed,
    wait_until,
)

pytestmark = pytest.mark.parametrize("config", CONFIG_IDS + UNIX_CONFIG_IDS)



def test_random_chunks_many_connections(serve, config, rng):
    """Random binary data in random chunk sizes over 50 concurrent connections comes back byte-exact."""
    server = serve.config(config)
    socks = connect_many(server.address, 50)
    convs = []
    for s in socks:
        data = rng.randbytes(rng.randint(1, 200_000))
        max_chunk = rng.choice([1, 7, 100, 1460, 4096, 65536, 200_000])
        if max_chunk == 1:
            data = data[:2000]  # byte-by-byte sends are slow in Python; keep them short
        convs.append(Conversation(s, random_chunks(rng, data, max_chunk)))
    check_echoes(convs, timeout=90)


def test_one_mebibyte_messages(serve, config, rng):
    """1 MiB messages, written while the echo is read concurrently (so backpressure cannot deadlock)."""
    server = serve.config(config)
    socks = connect_many(server.address, 4)
    convs = [Conversation(s, [rng.randbytes(MiB), rng.randbytes(MiB)]) for s in socks]
    check_echoes(convs, timeout=90)


def test_one_byte_writes(serve, config, rng):
    """1-byte writes: streamed on 5 connections, and ping-pong (each byte waits for its echo)."""
    server = serve.config(config)
    socks = connect_many(server.address, 5)
    convs = [Conversation(s, [bytes([b]) for b in rng.randbytes(1000)]) for s in socks]
    check_echoes(convs, timeout=60)
    with connect(server.address) as s:
        for b in rng.randbytes(200):
            s.sendall(bytes([b]))
            assert s.recv(16) == bytes([b])


def test_half_close(serve, config, rng):
    """shutdown(SHUT_WR) -> every byte comes back, then EOF (also for 0 bytes and beyond the watermark)."""
    server = serve.config(config)
    sizes = [0, 1, 100, 65536, 300_000, 1_000_000]
    socks = connect_many(server.address, len(sizes))
    convs = [Conversation(s, [rng.randbytes(n)] if n else [], half_close=True)
             for s, n in zip(socks, sizes, strict=True)]
    try:
        drive(convs, timeout=90)
        assert_echoes(convs)
        assert all(c.eof for c in convs)
    finally:
        for s in socks:
            s.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_exit_zero_and_stats(serve, config, rng, sig):
    """SIGTERM/SIGINT: an open idle client gets EOF, the server exits 0, and its stats file is right."""
    server = serve.config(config, "--shutdown-timeout", "10")
    rest = server.socket_count()  # listeners and hand-off channels, before any client
    socks = connect_many(server.address, 8)
    convs = [Conversation(s, [rng.randbytes(rng.randint(1, 50_000))]) for s in socks]
    drive(convs, timeout=60)
    assert_echoes(convs)
    for s in socks[1:]:
        s.close()
    wait_until(lambda: server.socket_count() <= rest + 1, 20, what="server to close the finished connections")
    idle = socks[0]  # still open and idle when the signal arrives
    server.send(sig)
    data, how = read_until_closed(idle, timeout=15)
    assert (data, how) == (b"", "eof"), "an idle connection must be ended with EOF (write side shut)"
    idle.close()
    assert server.wait(15) == 0, server.stderr()
    if server.unix:
        assert not os.path.exists(server.address), "the server removes its unix socket's file at exit"
    else:
        with pytest.raises(ConnectionRefusedError):
            connect(server.address, timeout=5).close()

    stats = server.stats()
    assert ALL_SERVER_CONFIGS[config][0] in stats["architecture"]
    assert stats["accepted"] == len(socks)
    assert stats["bytes_echoed"] == sum(c.expected_len for c in convs)
    assert len(socks) <= stats["peak_concurrent"] <= stats["accepted"]
    assert stats["refused"] == {}, "refused lists only non-zero reasons; nothing was refused"
    assert stats["closed_idle"] == 0
    assert stats["workers"]["died"] == 0
    assert isinstance(stats["workers"]["started"], int)
    assert "Traceback" not in server.stderr()

