"""trio's serve_listeners (what trio.serve_tcp runs): a task per connection.

``trio.serve_tcp`` is ``trio.serve_listeners`` over listeners it opens; here
the listener is open_listener's socket (so --send-timeout, the bind errors and
IPv6 behave as in every architecture), accepted from in batches (see
``_BatchListener``). Each connection's
task awaits receive_some() and send_all(); an unfinished send_all() is the
backpressure, so a connection owed echoes stops reading and costs the server
one read (64 KiB) at most.

--idle-timeout is a sweep, as in aio.py, not a deadline per call: each
connection notes when it last read, and once a second (or a quarter of the
timeout) the sweep cancels those quiet for longer. A cancel scope per
receive would cost a timer per message.

Stopping without losing echoes works as in threaded.py: every connection not
in the middle of an echo has its write side shut from the stopping task;
those in the middle shut it themselves right after, then each discards what
its client still sends until its EOF.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections import deque
from functools import partial

import trio

from c10k.limits import nofile_limits
from c10k.servers.base import (
    DescriptorReserve,
    Server,
    ServerConfig,
    accept_ready,
    announce,
    open_listener,
    stop_deadline,
)
from c10k.servers.refusals import Refusals

__all__ = ["TrioServer"]

READ_SIZE = 65536
monotonic = time.monotonic


class _BatchListener(trio.abc.Listener[trio.SocketStream]):
    """A listener that accepts every waiting client in one turn, and sheds on EMFILE.

    trio's SocketListener accepts one client per turn of its task, and a turn
    comes once per pass of the scheduler over every ready task: with thousands
    of connections echoing, a burst of connects waits in the backlog for
    seconds (the study's 10,000 case held 8,000 in 30 s). Here one readiness
    accepts the whole backlog (``accept_ready``, as the other servers do, at
    most ACCEPT_BATCH) and accept() hands them out without yielding.

    On EMFILE serve_listeners would log a traceback and sleep 100 ms while
    clients wait; ``accept_ready`` sheds one waiting client with the reserve
    descriptor instead, counted as a refusal.
    """

    def __init__(self, plain: socket.socket, reserve: DescriptorReserve) -> None:
        self.plain = plain
        self.reserve = reserve
        self.ready: deque[int] = deque()

    async def accept(self) -> trio.SocketStream:
        while not self.ready:
            if self.plain.fileno() == -1:
                raise trio.ClosedResourceError
            await trio.lowlevel.wait_readable(self.plain)
            self.ready.extend(accept_ready(self.plain, self.reserve))
        sock = socket.socket(self.plain.family, socket.SOCK_STREAM, 0, self.ready.popleft())
        return trio.SocketStream(trio.socket.from_stdlib_socket(sock))

    async def aclose(self) -> None:
        trio.lowlevel.notify_closing(self.plain)  # wakes a task waiting on it, as trio's own close does
        self.plain.close()
        while self.ready:
            os.close(self.ready.popleft())
        await trio.lowlevel.checkpoint()


class _Conn:
    __slots__ = ("stream", "scope", "last", "sending", "stopping", "shut", "idle")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.scope = trio.CancelScope()
        self.last = monotonic()
        self.sending = False
        self.stopping = False
        self.shut = False
        self.idle = False

    def stop(self) -> None:
        """From the stopping task: shut the write side unless an echo is in flight."""
        self.stopping = True
        if not self.sending:
            self.shut_write()

    def shut_write(self) -> None:
        if not self.shut:
            self.shut = True
            try:
                self.stream.socket.shutdown(socket.SHUT_WR)
            except OSError:
                pass


class TrioServer(Server):
    name = "trio"

    def __init__(self, config: ServerConfig) -> None:
        super().__init__(config)
        self.conns: set[_Conn] = set()
        self.stopping = False
        self.refusals = Refusals(self.stats.refused, config.max_connections, nofile_limits()[0])

    def serve(self) -> None:
        trio.run(self._main)
        self.refusals.flush()
        self.write_stats()

    async def _main(self) -> None:
        cfg = self.config
        reserve = DescriptorReserve(self.refusals)
        listener = _BatchListener(open_listener(cfg), reserve)
        self.all_closed = trio.Event()
        # Received before the listening line: a SIGTERM right after it is a graceful stop.
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as handlers:
                async with trio.open_nursery() as front:
                    await front.start(partial(trio.serve_listeners, self._handle, [listener],
                                              handler_nursery=handlers))
                    announce(listener.plain.getsockname())
                    front.start_soon(self._sweep)
                    async for _ in signals:
                        break
                    front.cancel_scope.cancel()  # serve_listeners closes the listener: connects are refused
                deadline = stop_deadline(cfg.shutdown_timeout)
                self.stopping = True
                for conn in list(self.conns):
                    conn.stop()
                if self.conns:
                    with trio.move_on_at(trio.current_time() + max(0.0, deadline - monotonic())):
                        await self.all_closed.wait()
                handlers.cancel_scope.cancel()  # what is left is closed now
        reserve.close()

    async def _sweep(self) -> None:
        """Once a second: the refusal log's bursts and, with --idle-timeout, the quiet connections."""
        idle_timeout = self.config.idle_timeout
        every = min(1.0, idle_timeout / 4) if idle_timeout else 1.0
        while True:
            await trio.sleep(every)
            now = monotonic()
            self.refusals.tick(now)
            if idle_timeout:
                cutoff = now - idle_timeout
                for conn in [c for c in self.conns if c.last < cutoff and not c.idle]:
                    conn.idle = True
                    conn.scope.cancel()

    async def _handle(self, stream: trio.SocketStream) -> None:
        if self.stopping or self.refusals.full(len(self.conns)):
            stream.socket.close()
            return
        conn = _Conn(stream)
        self.conns.add(conn)
        stats = self.stats
        stats.accepted += 1
        if len(self.conns) > stats.peak_concurrent:
            stats.peak_concurrent = len(self.conns)
        echoed = 0
        try:
            with conn.scope:
                while True:
                    data = await stream.receive_some(READ_SIZE)
                    if not data:
                        break  # the client's EOF: everything it sent is echoed
                    conn.last = monotonic()
                    if not conn.stopping:
                        conn.sending = True
                        await stream.send_all(data)
                        conn.sending = False
                        echoed += len(data)
                    if conn.stopping:
                        conn.shut_write()  # then discard until the client's EOF
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # reset, or the kernel's --send-timeout (ETIMEDOUT): the peer is gone
        finally:
            stream.socket.close()
            self.conns.discard(conn)
            stats.closed += 1
            stats.bytes_echoed += echoed
            stats.closed_idle += conn.idle and not conn.stopping
            if self.stopping and not self.conns:
                self.all_closed.set()
