"""The io_uring echo server: fewer kernel crossings than epoll, one ring per worker.

Workers and balance are the epoll server's (epoll.py, workers.py): an acceptor
hands sockets to worker processes (the default, growing past one process's
descriptor limit), or each worker accepts on its own SO_REUSEPORT listener;
only the loop each worker runs differs. A ``UringLoop`` keeps these requests
in its ring (uring_sys.py):

- a multishot accept on its listener (reuseport), or a multishot poll on its
  hand-off inbox; a multishot poll on the shutdown signal's wake socket;
- per connection one multishot receive that takes its buffer from a
  provided-buffer ring, so no receive is re-submitted while data flows;
- per connection at most one send in flight. When nothing is owed, the echo is
  sent straight from the buffer the kernel received into, and the buffer goes
  back to the ring when the send completes: no copy into a Python object.
  Bytes that arrive while a send is in flight are copied into the
  connection's EchoBuffer (and their buffer returned at once); they are sent
  from a snapshot once the send in flight completes. Sends keep order that way.

One ``io_uring_enter`` per loop pass submits everything queued and waits for
completions (with the kernel's min-wait timeout, when it has one, to reap them
in batches); the pass then handles every completion in the queue.

The contract of the other servers holds: a connection owed more than the high
watermark has its receive cancelled until it is owed no more than the low one;
the client's EOF gets every owed byte and then EOF; idle connections close;
--max-connections and EMFILE refuse through refusals.py; SIGTERM stops accepting
and reading, sends what is owed, shuts the write side and drains until EOF.

Closing a connection: an armed request holds its own reference to the socket,
so ``close(fd)`` alone would leave it open. Its requests are cancelled (by
user data, which names the connection by a number never reused, not by its
descriptor, which is) and the kernel closes the socket when the last ends.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import socket
import time
from collections.abc import Callable

from c10k.errors import C10kError
from c10k.limits import nofile_limits
from c10k.servers.base import DescriptorReserve, Server, ServerConfig, ShutdownSignal, Stats
from c10k.servers.echo import EchoBuffer
from c10k.servers.epoll import HandoffServer, ReuseportServer
from c10k.servers.reactor import closed, done, finish, shut_write, tick
from c10k.servers.refusals import Refusals
from c10k.servers.uring_sys import (
    BUFFER_SHIFT,
    F_MORE,
    OP_ACCEPT,
    OP_ASYNC_CANCEL,
    OP_POLL_ADD,
    OP_RECV,
    SETUP_COOP_TASKRUN,
    SETUP_DEFER_TASKRUN,
    SETUP_SINGLE_ISSUER,
    SETUP_SUBMIT_ALL,
    BufferRing,
    Ring,
    UringUnavailable,
    available,
)
from c10k.servers.workers import SharedCount, WorkerSpec, receive_fds

__all__ = ["UringLoop", "uring_server", "run_uring_worker"]

SQ_ENTRIES = 1024
CQ_ENTRIES = 8192
#: provided buffers: 512 x 4 KiB. A buffer is held only while its echo is in flight (bytes
#: owed beyond that are copied out), so few are out at once. The pool's size also caps how
#: far a connection can read past its high watermark: a multishot receive fills buffers
#: for as long as data is there before the loop sees any of them, so the pool is kept
#: small (and small messages, the study's 15 bytes, fit one buffer anyway).
BUF_COUNT = 512
BUF_SIZE = 4096
#: the most a send from the bytes owed copies at once (a snapshot, alive while it is in flight)
SNAPSHOT = 65536
#: A pass waits for up to BATCH completions, but for no more than the last pass brought
#: (halved), so a lone ping-pong client is answered at once; with the kernel's min-wait
#: timeout (6.12+) it returns with what it has after MIN_WAIT_US. Fewer, fuller passes
#: cost less Python per completion and fewer wake-ups.
BATCH = 64
MIN_WAIT_US = 200
ACCEPT_RETRY_S = 0.1  # out of descriptors with nothing to shed: try again this soon

# user_data = connection number << 24 | buffer id << 8 | kind; connection 0 is the loop's own.
RECV, SEND, CANCEL, ACCEPT, WAKE, INBOX = 1, 2, 3, 4, 5, 6
NO_BUFFER = 0xFFFF  # a send from a bytes snapshot, not from a provided buffer

# Connection states, as the Reactor's.
OPEN, HALF_CLOSED, STOPPING, DRAINING = 0, 1, 2, 3


class Conn:
    __slots__ = ("cid", "fd", "state", "last", "out", "sending", "send_addr", "send_bid", "send_data",
                 "receiving", "cancelling")

    def __init__(self, cid: int, fd: int, now: float) -> None:
        self.cid = cid
        self.fd = fd
        self.state = OPEN
        self.last = now
        self.out: EchoBuffer | None = None  # bytes owed after the send in flight
        self.sending = 0  # bytes of the send in flight still to go (0: none)
        self.send_addr = 0
        self.send_bid = NO_BUFFER
        self.send_data: bytes | None = None  # the snapshot a send reads from, kept alive
        self.receiving = False  # a multishot receive is armed
        self.cancelling = False  # ... and its cancellation asked for


def _address_of(data: bytes) -> int:
    """Where a bytes object's contents are (a c_char_p over bytes points into them, no copy)."""
    return ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0


def _ring() -> Ring:
    """A ring for one worker thread: with deferred task work if the kernel has it (6.1+)."""
    try:
        return Ring(SQ_ENTRIES, CQ_ENTRIES, SETUP_SINGLE_ISSUER | SETUP_DEFER_TASKRUN | SETUP_SUBMIT_ALL)
    except UringUnavailable as exc:
        if exc.errno != errno.EINVAL:
            raise
    return Ring(SQ_ENTRIES, CQ_ENTRIES, SETUP_COOP_TASKRUN)


class UringLoop:
    """One worker's ring and the connections it serves (the Reactor's counterpart).

    Args as the Reactor's: ``listener`` (reuseport) or ``inbox`` (hand-off)
    brings connections; ``live`` is reuseport's server-wide count.
    """

    def __init__(self, config: ServerConfig, stats: Stats, listener: socket.socket | None = None,
                 shutdown: ShutdownSignal | None = None,
                 inbox: tuple[int, Callable[[], list[int] | float]] | None = None,
                 on_change: Callable[[], None] | None = None, on_close: Callable[[int], None] | None = None,
                 live: SharedCount | None = None) -> None:
        self.config = config
        self.stats = stats
        self.listener = listener
        self.shutdown = shutdown
        self.inbox = inbox
        self.on_change = on_change
        self.on_close = on_close
        self.live = live
        self.ring = _ring()
        self.bufs = BufferRing(self.ring, count=BUF_COUNT, size=BUF_SIZE)
        self.conns: dict[int, Conn] = {}
        self.next_cid = 1
        self.now = time.monotonic()
        self.stopping = False
        self.deadline = float("inf")
        self.accept_retry = float("inf")
        self.starved: set[int] = set()  # connections whose receive ended for want of buffers
        self.short_sends = 0  # sends the kernel took part of (then resubmitted for the rest)
        self.returned: list[int] = []
        self.refusals = Refusals(stats.refused, config.max_connections, nofile_limits()[0])
        self.reserve = DescriptorReserve(self.refusals)
        if listener is not None:
            self._arm_accept()
        if shutdown is not None:
            self._arm_poll(shutdown.wake_fd, WAKE)
        if inbox is not None:
            self._arm_poll(inbox[0], INBOX)

    # -- requests -------------------------------------------------------------

    def _arm_accept(self) -> None:
        assert self.listener is not None
        self.ring.prep(OP_ACCEPT, self.listener.fileno(), ACCEPT, op_flags=socket.SOCK_CLOEXEC, ioprio=1)

    def _arm_poll(self, fd: int, kind: int) -> None:
        self.ring.prep(OP_POLL_ADD, fd, kind, length=1, op_flags=select.POLLIN)  # len 1: multishot

    def _arm_recv(self, conn: Conn) -> None:
        conn.receiving = True
        self.ring.prep(OP_RECV, conn.fd, conn.cid << 24 | RECV, ioprio=2, flags=1 << 5,  # multishot, select buffer
                       buf_group=self.bufs.group)

    def _cancel(self, user_data: int) -> None:
        self.ring.prep(OP_ASYNC_CANCEL, -1, CANCEL, addr=user_data)

    def _send(self, conn: Conn, addr: int, n: int, bid: int) -> None:
        conn.sending, conn.send_addr, conn.send_bid = n, addr, bid
        self.ring.send(conn.fd, addr, n, conn.cid << 24 | bid << 8 | SEND)

    # -- admission --------------------------------------------------------------

    def add(self, fd: int) -> None:
        """Serve an accepted descriptor (counted already by ``live``, if any)."""
        cid = self.next_cid
        self.next_cid += 1
        conn = self.conns[cid] = Conn(cid, fd, self.now)
        self._arm_recv(conn)
        stats = self.stats
        stats.accepted += 1
        if len(self.conns) > stats.peak_concurrent:
            stats.peak_concurrent = len(self.conns)

    def _admit(self, fd: int) -> None:
        if self.stopping:
            os.close(fd)
        elif self.live.take(self.refusals) if self.live is not None else not self.refusals.full(len(self.conns)):
            self.add(fd)
        else:
            os.close(fd)

    def _accepted(self, res: int, flags: int) -> None:
        if res >= 0:
            self._admit(res)
        elif -res in (errno.EMFILE, errno.ENFILE) and self.listener is not None:
            while self.reserve.shed(self.listener):
                pass
            if not flags & F_MORE and not self.stopping:
                # The multishot accept ends on an error. Shed what waits, then accept
                # again a little later: at once would spin if nothing could be shed.
                self.accept_retry = self.now + ACCEPT_RETRY_S
            return
        if not flags & F_MORE and not self.stopping and self.listener is not None:
            self._arm_accept()

    # -- the loop -------------------------------------------------------------

    def run(self, turns: int = -1) -> None:
        """Serve until asked to stop, then stop gracefully; ``turns``: return after that many passes."""
        if self._serve(turns):
            self._finish()  # out here: the loop's views of the buffer memory are gone

    def _serve(self, turns: int) -> bool:
        """The loop; True once it has stopped for good, False when the turns are done."""
        ring = self.ring
        bufs = self.bufs
        conns = self.conns
        get = conns.get
        send = ring.send
        base, size = bufs.base, bufs.size
        memory = bufs.memory
        stats = self.stats
        next_tick = self.now + 1.0
        wait = 1
        while turns:
            turns -= 1
            timeout = min(next_tick, self.deadline, self.accept_retry) - self.now
            ring.enter(wait, timeout if timeout > 0 else 0, MIN_WAIT_US)
            now = self.now = time.monotonic()
            echoed = 0
            returned = self.returned = []  # buffers to hand back, in one go after the pass
            give = returned.append
            completions = ring.completions()
            wait = min(BATCH, len(completions) >> 1) or 1
            for user_data, res, flags in completions:
                kind = user_data & 0xFF
                conn = get(user_data >> 24)
                if kind == RECV:
                    if res > 0:
                        bid = flags >> BUFFER_SHIFT
                        if conn is not None and conn.state == OPEN:
                            conn.last = now
                            if not conn.sending:
                                # The hot path: echo from the buffer the kernel filled.
                                addr = base + bid * size
                                conn.sending, conn.send_addr, conn.send_bid = res, addr, bid
                                send(conn.fd, addr, res, user_data ^ (RECV ^ SEND) | bid << 8)
                                if not flags & F_MORE:
                                    self._recv_ended(conn, res)
                                continue
                            self._owe(conn, memory[bid * size: bid * size + res])
                        give(bid)
                        if conn is not None and not flags & F_MORE:
                            self._recv_ended(conn, res)
                    elif conn is not None:
                        self._recv_ended(conn, res)
                elif kind == SEND:
                    bid = user_data >> 8 & 0xFFFF
                    if conn is not None and res == conn.sending:
                        echoed += res
                        conn.sending = 0
                        if bid != NO_BUFFER:
                            give(bid)
                        else:
                            conn.send_data = None
                            assert conn.out is not None
                            conn.out.consume(res)
                        if conn.out is not None or conn.state != OPEN:
                            self._sent(conn)
                        continue
                    if conn is None:
                        if bid != NO_BUFFER:
                            give(bid)
                    elif res > 0:
                        echoed += res
                        self._short_send(conn, res)
                    else:
                        if bid != NO_BUFFER:
                            give(bid)
                        conn.sending = 0
                        self._close(conn)
                else:
                    self._control(kind, res, flags)
            if returned:
                bufs.give_all(returned)
                if self.starved:
                    self._rearm_starved()
            stats.bytes_echoed += echoed
            if now >= self.accept_retry:
                self.accept_retry = float("inf")
                if not self.stopping and self.listener is not None:
                    self._arm_accept()
            if now >= next_tick:
                next_tick = now + 1.0
                if self.starved:
                    self._rearm_starved()
                tick(self, now)
            if (self.stopping or self.shutdown is not None and self.shutdown.requested) and done(self, now):
                break
        else:
            return False
        return True

    # -- slow paths -----------------------------------------------------------

    def _control(self, kind: int, res: int, flags: int) -> None:
        if kind == ACCEPT:
            self._accepted(res, flags)
        elif kind == WAKE:
            assert self.shutdown is not None
            self.shutdown.drain()  # the loop reads shutdown.requested after the completions
            if not flags & F_MORE:
                self._arm_poll(self.shutdown.wake_fd, WAKE)
        elif kind == INBOX and self.inbox is not None:
            fds = self.inbox[1]()
            if isinstance(fds, float):  # stop by this time (the acceptor's deadline)
                self.inbox = None
                if not self.stopping:
                    self._begin_stop(fds)
                return
            for fd in fds:
                self._admit(fd)
            if not flags & F_MORE:
                self._arm_poll(self.inbox[0], INBOX)
        # CANCEL: nothing to do; the cancelled request's own completion says it ended.

    def _owe(self, conn: Conn, data: memoryview) -> None:
        """Bytes received while a send is in flight: copy them after what is owed; pause if over the watermark."""
        if conn.out is None:
            conn.out = EchoBuffer(self.config.high_watermark, self.config.low_watermark)
        conn.out.push(data)  # type: ignore[arg-type]  # bytearray += memoryview copies it
        if conn.out.paused and conn.receiving and not conn.cancelling:
            conn.cancelling = True
            self._cancel(conn.cid << 24 | RECV)

    def _sent(self, conn: Conn) -> None:
        """A send completed: send what was owed meanwhile, or finish a closing connection."""
        out = conn.out
        if out is not None and len(out):
            data = conn.send_data = bytes(out.pending()[:SNAPSHOT])
            self._send(conn, _address_of(data), len(data), NO_BUFFER)
            if conn.state == OPEN and not out.paused and not conn.receiving and conn.cid not in self.starved:
                self._arm_recv(conn)  # resumed under the low watermark
            return
        conn.out = None  # idle connections keep no buffer
        if conn.state == OPEN:
            if not conn.receiving and conn.cid not in self.starved:
                self._arm_recv(conn)
        elif conn.state == HALF_CLOSED:
            self._close(conn)
        elif conn.state == STOPPING:
            self._shut_write(conn)

    def _short_send(self, conn: Conn, n: int) -> None:
        """The kernel took ``n`` bytes of a send: send the rest from where it stopped."""
        self.short_sends += 1
        conn.last = self.now
        if conn.send_bid == NO_BUFFER:
            assert conn.out is not None
            conn.out.consume(n)
        self._send(conn, conn.send_addr + n, conn.sending - n, conn.send_bid)

    def _recv_ended(self, conn: Conn, res: int) -> None:
        """The multishot receive ended: after data (``res`` > 0: the kernel stopped it, as on a
        full completion queue), at EOF (0), cancelled, out of buffers, or on an error."""
        conn.receiving = False
        conn.cancelling = False
        if res > 0 or res == -errno.ECANCELED:
            self._receive_again(conn)
        elif res == 0:
            self._client_eof(conn)
        elif res == -errno.ENOBUFS:
            self.starved.add(conn.cid)  # re-armed once buffers come back
        else:
            self._close(conn)

    def _receive_again(self, conn: Conn) -> None:
        """Re-arm the receive if the state allows (open and not paused, or draining)."""
        if conn.state == OPEN and (conn.out is None or not conn.out.paused) or conn.state == DRAINING:
            self._arm_recv(conn)

    def _rearm_starved(self) -> None:
        starved, self.starved = self.starved, set()
        for cid in starved:
            conn = self.conns.get(cid)
            if conn is not None and not conn.receiving:
                self._receive_again(conn)

    def _client_eof(self, conn: Conn) -> None:
        if conn.state in (OPEN, STOPPING) and conn.sending:
            conn.state = HALF_CLOSED  # every byte back first, then close
        else:
            self._close(conn)

    def _shut_write(self, conn: Conn) -> None:
        """Everything owed is sent: EOF to the client, then discard what it sends until its EOF."""
        if not shut_write(conn.fd):
            self._close(conn)
            return
        conn.state = DRAINING
        if not conn.receiving:
            self._arm_recv(conn)

    def _close(self, conn: Conn) -> None:
        if self.conns.pop(conn.cid, None) is None:
            return
        self.starved.discard(conn.cid)
        if conn.receiving:
            self._cancel(conn.cid << 24 | RECV)
        if conn.sending:
            self._cancel(conn.cid << 24 | conn.send_bid << 8 | SEND)
        if self.live is not None:
            self.live.release()
        closed(conn.fd, self.stats, self.on_close)  # the socket closes when its cancelled requests end

    def _begin_stop(self, deadline: float) -> None:
        """Stop accepting and reading; owed echoes go out, then EOF, then drain."""
        self.stopping = True
        self.deadline = deadline
        if self.listener is not None:
            # The accept holds the listener open: cancel it, or new clients would
            # wait in a backlog nobody accepts from instead of being refused.
            self._cancel(ACCEPT)
            self.listener.close()
            self.listener = None
        for conn in list(self.conns.values()):
            if conn.state == OPEN:
                conn.state = STOPPING  # what arrives from now on is discarded
                if not conn.sending:
                    self._shut_write(conn)

    def _finish(self) -> None:
        finish(self)
        # Closing the ring cancels what is still armed and lets go of its sockets.
        self.ring.enter(0)
        self.bufs.close()
        self.ring.close()


def run_uring_worker(spec: WorkerSpec) -> int:
    """A worker of the pool (workers.py) running a UringLoop; the exit status."""
    shutdown = ShutdownSignal() if spec.own_process else None
    stats = Stats()
    chan, slots, index = spec.chan, spec.slots, spec.index
    chan.setblocking(False)
    loop = UringLoop(spec.config, stats, listener=spec.listener, shutdown=shutdown,
                     inbox=(chan.fileno(), lambda: receive_fds(chan, spec.config.shutdown_timeout)),
                     on_change=lambda: slots.publish(index, stats),
                     on_close=lambda closed: slots.set(index, "closed", closed), live=spec.live)
    chan.send(b"R")  # READY
    loop.run()
    chan.close()
    if shutdown is not None:
        shutdown.close()
    return 0


class UringHandoffServer(HandoffServer):
    name = "uring"
    worker_main = staticmethod(run_uring_worker)


class UringReuseportServer(ReuseportServer):
    name = "uring"
    worker_main = staticmethod(run_uring_worker)


def uring_server(config: ServerConfig) -> Server:
    """The uring server ``--balance`` asks for, or a one-line refusal where io_uring cannot work."""
    why = available()
    if why is not None:
        raise C10kError(f"cannot serve uring: {why}")
    if config.balance == "reuseport":
        return UringReuseportServer(config)
    return UringHandoffServer(config)
