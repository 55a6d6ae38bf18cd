"""Unit tests of the I/O core: ``EchoBuffer`` (sans-IO) and ``Reactor`` over real loopback pairs.

In the way trio and CPython test their I/O cores: no server process, no sleeps.
The reactor is stepped one poll at a time (``run(turns=1)``) only when the test
has made an event pending, and short writes are forced by filling a socket until
EAGAIN (trio's ``fill_socket``), so each test follows the same path every run.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from c10k.servers.base import ServerConfig, Stats
from c10k.servers.echo import EchoBuffer
from c10k.servers.pollers import EpollPoller, PollPoller, SelectPoller
from c10k.servers.reactor import Reactor

HIGH, LOW = 64 * 1024, 16 * 1024
POLLERS = {"epoll": EpollPoller, "poll": PollPoller, "select": SelectPoller}


# --------------------------------------------------------------------------- EchoBuffer


@given(chunks=st.lists(st.binary(min_size=0, max_size=5000), max_size=20), data=st.data())
def test_echo_buffer_gives_back_every_byte_in_order(chunks, data):
    buf = EchoBuffer(high=4096, low=1024)
    out = bytearray()
    for chunk in chunks:
        buf.push(chunk)
        # the socket takes some of what is owed: nothing, a byte, all of it, or anything between
        take = data.draw(st.integers(0, len(buf)))
        out += buf.pending()[:take]
        buf.consume(take)
    out += buf.pending()
    buf.consume(len(buf))
    assert bytes(out) == b"".join(chunks)
    assert len(buf) == 0 and not buf.paused


def test_echo_buffer_pauses_at_high_and_resumes_only_at_low():
    buf = EchoBuffer(high=100, low=40)
    buf.push(b"x" * 99)
    assert not buf.paused
    buf.push(b"x")
    assert buf.paused, "owing `high` bytes must stop reading"
    buf.consume(59)  # 41 owed: above low
    assert buf.paused
    buf.consume(1)  # 40 owed: at low
    assert not buf.paused
    buf.push(b"x" * 30)  # 70 owed: below high again, still reading
    assert not buf.paused


def test_echo_buffer_byte_by_byte():
    buf = EchoBuffer(high=8, low=2)
    for i in range(8):
        buf.push(bytes([i]))
    assert buf.paused and bytes(buf.pending()) == bytes(range(8))
    for i in range(6):
        assert buf.pending()[0] == i
        buf.consume(1)
    assert not buf.paused and len(buf) == 2


@pytest.mark.parametrize(("high", "low"), [(10, 11), (10, -1)])
def test_echo_buffer_refuses_watermarks_out_of_order(high, low):
    with pytest.raises(ValueError):
        EchoBuffer(high=high, low=low)


# --------------------------------------------------------------------------- Reactor


def tcp_pair() -> tuple[socket.socket, int]:
    """A loopback TCP connection: (the client's blocking socket, the server's non-blocking fd)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=10)
        server, _ = listener.accept()
    server.setblocking(False)
    return client, server.detach()


def fill_socket(sock: socket.socket) -> int:
    """Send until the kernel takes no more (EAGAIN); the number of bytes it took."""
    sock.setblocking(False)
    sent = 0
    try:
        for _ in range(100_000):
            sent += sock.send(b"x" * 65536)
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(10)
    return sent


def drain_socket(sock: socket.socket) -> bytes:
    """Everything readable right now, without waiting."""
    sock.setblocking(False)
    got = bytearray()
    try:
        for _ in range(100_000):
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            got += chunk
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(10)
    return bytes(got)


def read_available(sock: socket.socket, into: bytearray) -> bool:
    """Read what one recv gives without waiting; True at EOF."""
    try:
        chunk = sock.recv(1 << 20, socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    into.extend(chunk)
    return not chunk


class Inbox:
    """The acceptor's side of a reactor's inbox (as epoll.py's hand-off uses it)."""

    def __init__(self) -> None:
        self.rsock, self.wsock = socket.socketpair()
        self.rsock.setblocking(False)
        self.queue: list[int] | float = []

    def receive(self) -> list[int] | float:
        try:
            self.rsock.recv(64)
        except BlockingIOError:
            pass
        got, self.queue = self.queue, []
        return got

    def send(self, what: list[int] | float) -> None:
        self.queue = what
        self.wsock.send(b"!")

    def close(self) -> None:
        self.rsock.close()
        self.wsock.close()


@pytest.fixture(params=list(POLLERS))
def reactor(request):
    inbox = Inbox()
    stats = Stats()
    r = Reactor(POLLERS[request.param](), ServerConfig(high_watermark=HIGH, low_watermark=LOW), stats,
                inbox=(inbox.rsock.fileno(), inbox.receive))
    r.test_inbox = inbox  # type: ignore[attr-defined]
    yield r
    for fd in list(r.conns):
        r._close(r.conns[fd])
    r.reserve.close()
    r.poller.close()
    inbox.close()


def pump(r: Reactor, until, what: str, turns: int = 500) -> None:
    """Step the reactor one poll at a time until ``until()``; fail after ``turns`` polls."""
    for _ in range(turns):
        if until():
            return
        r.run(turns=1)
    assert until(), f"not reached in {turns} polls: {what}"


def connected(r: Reactor) -> tuple[socket.socket, int]:
    client, fd = tcp_pair()
    r.add(fd)
    return client, fd


def test_echoes_what_arrives(reactor):
    client, fd = connected(reactor)
    with client:
        client.sendall(b"hello")
        got = bytearray()
        pump(reactor, lambda: got.extend(drain_socket(client)) or got == b"hello", "the echo")
        assert reactor.stats.bytes_echoed == 5
        assert reactor.conns[fd].out is None, "an idle connection keeps no buffer"


def test_a_client_that_does_not_read_pauses_the_connection_within_its_watermark(reactor):
    """Short writes: the server owes at most HIGH plus one read, stops reading, and once the
    client reads, resumes by itself (an edge-triggered reactor must read at once: its edge is spent)."""
    client, fd = connected(reactor)
    with client:
        sent = bytearray()

        def paused() -> bool:
            n = fill_socket(client)
            sent.extend(b"x" * n)
            conn = reactor.conns[fd]
            return conn.out is not None and conn.out.paused

        pump(reactor, paused, "the connection paused")
        assert len(reactor.conns[fd].out) < HIGH + 65536 * 2
        assert not reactor.conns[fd].reading, "a paused connection must not be polled for reading"
        # the client now reads everything; the reactor must echo all it was sent, no more writes needed
        got = bytearray()
        pump(reactor, lambda: got.extend(drain_socket(client)) or len(got) >= len(sent), "every byte back",
             turns=5000)
        assert len(got) == len(sent) and set(got) == {ord("x")}
        assert reactor.conns[fd].out is None and reactor.conns[fd].reading


def test_client_eof_while_owed_gets_every_byte_then_eof(reactor):
    client, fd = connected(reactor)
    with client:
        payload = os.urandom(300_000)
        client.setblocking(False)
        view = memoryview(payload)
        got = bytearray()
        eof = False

        def done() -> bool:
            nonlocal view, eof
            if view:
                try:
                    view = view[client.send(view):]
                except BlockingIOError:
                    pass
                if not view:
                    client.shutdown(socket.SHUT_WR)
            eof = eof or read_available(client, got)
            return eof

        pump(reactor, done, "all echoed, then EOF", turns=5000)
        assert bytes(got) == payload
        assert fd not in reactor.conns and reactor.stats.closed == 1


def test_reset_while_paused_closes_the_connection(reactor):
    client, fd = connected(reactor)
    pump(reactor, lambda: fill_socket(client) == 0 and reactor.conns[fd].out is not None
         and reactor.conns[fd].out.paused, "the connection paused")
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    pump(reactor, lambda: fd not in reactor.conns, "the reset connection closed")
    assert reactor.stats.closed == 1
    with pytest.raises(OSError) as e:
        os.fstat(fd)
    assert e.value.errno == errno.EBADF


def test_client_gone_with_unread_echoes_is_closed_at_once(reactor):
    """A client that stops and exits while the server still owes it echoes: the server must not
    keep the connection, whether or not it was paused (issue 8, slow goodbyes)."""
    client, fd = connected(reactor)
    fill_socket(client)
    reactor.run(turns=1)
    client.close()  # unread echoes in its receive queue: the kernel resets
    pump(reactor, lambda: fd not in reactor.conns, "the departed client's connection closed")


def test_stop_sends_what_is_owed_then_eof_then_drains_until_the_clients_eof(reactor):
    client, fd = connected(reactor)
    with client:
        sent = 0

        def owing() -> bool:
            nonlocal sent
            sent += fill_socket(client)
            return reactor.conns[fd].out is not None

        pump(reactor, owing, "an echo still owed when the stop comes")
        reactor.test_inbox.send(float("inf"))  # the acceptor's STOP, with no deadline
        got = bytearray()
        eof = False

        def echoed_then_eof() -> bool:
            nonlocal eof
            eof = eof or read_available(client, got)
            return eof

        pump(reactor, echoed_then_eof, "owed echoes, then EOF", turns=5000)
        assert 0 < len(got) <= sent, "an echo of what was read, never more"
        assert fd in reactor.conns, "after its EOF the server waits for the client's"
        # what the client sent and the server never read is discarded, not answered with a reset
        client.shutdown(socket.SHUT_WR)
        pump(reactor, lambda: fd not in reactor.conns, "closed after the client's EOF", turns=5000)
        assert client.recv(10, socket.MSG_DONTWAIT) == b""
