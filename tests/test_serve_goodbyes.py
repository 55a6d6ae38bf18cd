"""Departed clients (issue 8, "slow goodbyes"): the server lets go of their connections.

A client that floods and exits leaves two kinds of connections behind. Those
with echoes still unread on its side are reset by its kernel: the server must
close them at once (tested here under a flood). Those it had read to the end
become orphans whose FIN waits behind data the server, paused by backpressure,
does not read; under memory pressure their windows collapse and only TCP's
timers end them (see bench/bench_goodbye.py). From the server's side such a
connection looks exactly like a live client that stopped reading, so the server
closes it only when told to: ``--idle-timeout`` (tested here with a client that
stops both reading and writing while echoes are owed).
"""

from __future__ import annotations

import socket
import time

import pytest

from helpers import CONFIG_IDS, connect_many, reset_close, settled, wait_until


def _flood(socks, rounds: int = 20) -> None:
    """Send to every connection until the kernel takes no more, a few times over, reading nothing."""
    chunk = b"x" * 65536
    for _ in range(rounds):
        for s in socks:
            try:
                s.send(chunk)
            except (BlockingIOError, OSError):
                pass


@pytest.mark.parametrize("config", CONFIG_IDS)
def test_flooding_client_that_resets_is_let_go_at_once(serve, config):
    """300 connections flood without reading, then reset: the server's descriptors are back at
    their baseline within a few seconds (1 s is the issue's figure; the bound allows a busy machine)."""
    server = serve.config(config)
    baseline = settled(server.fd_count, what="server descriptor count before the flood")
    socks = connect_many(server.address, 300, source="127.0.0.2")
    _flood(socks)
    for s in socks:
        reset_close(s)
    wait_until(lambda: server.fd_count() <= baseline, 5.0,
               what=f"server descriptors back at {baseline} (now {server.fd_count()})")
    assert server.stop() == 0


@pytest.mark.parametrize("config", CONFIG_IDS)
def test_stalled_client_with_echoes_owed_is_closed_by_the_idle_timeout(serve, config):
    """A client that stops reading and writing while the server owes it echoes (what a departed
    client whose FIN is stuck behind its unsent data looks like) is closed after --idle-timeout."""
    server = serve.config(config, "--idle-timeout", "1")
    baseline = settled(server.fd_count, what="server descriptor count before the flood")
    socks = connect_many(server.address, 20, source="127.0.0.2")
    try:
        _flood(socks)
        stalled = time.monotonic()
        wait_until(lambda: server.fd_count() <= baseline, 15.0,
                   what=f"server descriptors back at {baseline} (now {server.fd_count()})")
        assert time.monotonic() - stalled >= 0.9, "closed before the idle timeout"
    finally:
        for s in socks:
            s.close()
    assert server.stop() == 0
    assert server.stats()["closed_idle"] == 20


@pytest.mark.parametrize("config", CONFIG_IDS)
def test_a_peer_that_takes_no_echo_is_closed_by_the_send_timeout(serve, config):
    """--send-timeout (TCP_USER_TIMEOUT on the listener, inherited by every accepted socket) ends a
    connection whose peer's window stays shut: the zero-window deadlock a departed flooder's orphan can
    leave, here made by a client that stops reading. The idle timeout plays no part (closed_idle 0)."""
    server = serve.config(config, "--send-timeout", "1")
    baseline = settled(server.fd_count, what="server descriptor count before the flood")
    socks = connect_many(server.address, 20, source="127.0.0.3")
    try:
        for s in socks:  # the client's receive window shuts soon, so the server's echoes stop moving
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        _flood(socks)
        wait_until(lambda: server.fd_count() <= baseline, 30.0,
                   what=f"server descriptors back at {baseline} (now {server.fd_count()})")
    finally:
        for s in socks:
            s.close()
    assert server.stop() == 0
    assert server.stats()["closed_idle"] == 0
