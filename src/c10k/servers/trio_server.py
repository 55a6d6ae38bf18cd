"""trio's serve_listeners (what trio.serve_tcp runs): a task per connection.

The listener is open_listener's socket (so --send-timeout, the bind errors and
IPv6 behave as in every architecture) handed to ``trio.serve_listeners``,
which is all ``trio.serve_tcp`` adds to opening its own. Each connection's
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

import errno
import signal
import socket
import time
from functools import partial

import trio

from c10k.limits import nofile_limits
from c10k.servers.base import DescriptorReserve, Server, ServerConfig, announce, open_listener, stop_deadline
from c10k.servers.refusals import Refusals

__all__ = ["TrioServer"]

READ_SIZE = 65536
monotonic = time.monotonic


class _SheddingListener(trio.abc.Listener[trio.SocketStream]):
    """trio's SocketListener, but one client is shed on EMFILE instead of raising.

    serve_listeners answers EMFILE by logging the error with its traceback and
    sleeping 100 ms while clients wait in the backlog. Here the reserve
    descriptor (base.py) accepts and closes one waiting client, counted as a
    refusal, and accept() goes back to waiting. (SocketListener is final, so
    this wraps it.)
    """

    def __init__(self, plain: socket.socket, reserve: DescriptorReserve) -> None:
        self.inner = trio.SocketListener(trio.socket.from_stdlib_socket(plain))
        self.plain = plain
        self.reserve = reserve

    async def accept(self) -> trio.SocketStream:
        while True:
            try:
                return await self.inner.accept()
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE):
                    raise
            if not self.reserve.shed(self.plain):
                await trio.sleep(0.1)  # not even one spare descriptor: wait, do not spin
            await trio.lowlevel.checkpoint()  # a burst of sheds leaves the connections their turns

    async def aclose(self) -> None:
        await self.inner.aclose()


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
        listener = _SheddingListener(open_listener(cfg), reserve)
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
