"""asyncio Protocol echo servers, on the standard loop and on uvloop.

What a Python user would reach for instead of writing an event loop. The
transport's write-buffer limits are the watermarks: above ``high`` the
protocol pauses reading until the buffer drains below ``low``.
"""

from __future__ import annotations

import asyncio
import errno
import signal
import socket
import time
from typing import Any

from c10k.limits import nofile_limits
from c10k.servers.base import (
    DescriptorReserve,
    Server,
    ServerConfig,
    announce,
    log,
    open_listener,
    stop_deadline,
)
from c10k.servers.refusals import Refusal, Refusals

__all__ = ["AsyncioServer", "UvloopServer"]

monotonic = time.monotonic


class SheddingListener(socket.socket):
    """A listener whose accept() sheds one client on EMFILE instead of failing.

    asyncio (3.11) answers EMFILE by scheduling a retry and then trying accept
    again, ``backlog`` times in a row: 4096 timers a second, a busy loop.
    Here the reserve descriptor (base.py) accepts and closes one waiting client
    and accept() reports "nothing to accept", so the loop waits quietly.
    uvloop accepts in C and has libuv's own reserve; it never calls this.
    """

    reserve: DescriptorReserve

    def accept(self) -> tuple[socket.socket, Any]:
        try:
            return super().accept()
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            self.reserve.shed(self)
            raise BlockingIOError(errno.EAGAIN, "descriptor limit: shed one client") from None


class EchoProtocol(asyncio.Protocol):
    __slots__ = ("server", "transport", "last", "stopping")

    def __init__(self, server: AsyncioServer) -> None:
        self.server = server
        self.transport: Any = None
        self.last = time.monotonic()
        self.stopping = False

    def connection_made(self, transport: Any) -> None:
        srv = self.server
        self.transport = transport
        if srv.stopping or srv.refusals.full(len(srv.conns)):
            transport.abort()
            return
        transport.set_write_buffer_limits(srv.config.high_watermark, srv.config.low_watermark)
        srv.conns.add(self)
        srv.stats.accepted += 1
        if len(srv.conns) > srv.stats.peak_concurrent:
            srv.stats.peak_concurrent = len(srv.conns)

    def data_received(self, data: bytes) -> None:
        if self.stopping:
            return  # draining after our EOF: the client's late bytes are not echoed
        self.transport.write(data)
        self.server.echoed += len(data)
        self.last = monotonic()

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()

    def eof_received(self) -> bool:
        return False  # close once every byte is written: the client gets them all, then EOF

    def connection_lost(self, exc: Exception | None) -> None:
        srv = self.server
        if self in srv.conns:
            srv.conns.discard(self)
            srv.stats.closed += 1
            if srv.stopping and not srv.conns and srv.all_closed is not None:
                srv.all_closed.set()

    def stop(self) -> None:
        """Send what is owed, then EOF; discard what still comes until the client's EOF."""
        self.stopping = True
        self.transport.write_eof()
        self.transport.resume_reading()


class AsyncioServer(Server):
    name = "asyncio"

    def __init__(self, config: ServerConfig) -> None:
        super().__init__(config)
        self.conns: set[EchoProtocol] = set()
        self.echoed = 0
        self.stopping = False
        self.all_closed: asyncio.Event | None = None
        self.refusals = Refusals(self.stats.refused, config.max_connections, nofile_limits()[0])
        self.paused_said = False

    def new_loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.new_event_loop()

    def serve(self) -> None:
        loop = self.new_loop()
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()
        self.stats.bytes_echoed = self.echoed
        self.refusals.flush()
        self.write_stats()

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.config
        plain = open_listener(cfg)
        listener = SheddingListener(plain.family, plain.type, plain.proto, fileno=plain.detach())
        listener.setblocking(False)
        listener.reserve = reserve = DescriptorReserve(self.refusals)
        stop = asyncio.Event()
        self.all_closed = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.set_exception_handler(self._on_loop_error)
        server = await loop.create_server(lambda: EchoProtocol(self), sock=listener, backlog=cfg.backlog)
        announce(listener.getsockname())
        sweep = min(1.0, cfg.idle_timeout / 4) if cfg.idle_timeout else 1.0
        while not stop.is_set():
            now = time.monotonic()
            self.refusals.tick(now)
            if cfg.idle_timeout:
                cutoff = now - cfg.idle_timeout
                for proto in [p for p in self.conns if p.last < cutoff]:
                    self.stats.closed_idle += 1
                    proto.transport.close()
            try:
                await asyncio.wait_for(stop.wait(), sweep)
            except asyncio.TimeoutError:
                pass
        deadline = stop_deadline(cfg.shutdown_timeout, loop.time())
        self.stopping = True
        server.close()  # stop listening: new connects are refused
        for proto in list(self.conns):
            proto.stop()
        if self.conns:
            try:
                await asyncio.wait_for(self.all_closed.wait(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                pass
        for proto in list(self.conns):
            proto.transport.abort()
        await asyncio.sleep(0)  # let the aborts run their connection_lost
        reserve.close()

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # asyncio pauses accepting for a second on EMFILE and logs a traceback
        # each time; one line per burst says it better. Clients wait in the backlog.
        if str(context.get("message", "")).startswith("socket.accept() out of system resource"):
            # Not a refusal (nothing is closed): said once, in the refusal's words.
            if not self.paused_said:
                self.paused_said = True
                log(f"{Refusal.DESCRIPTOR_LIMIT.explain(nofile_limits()[0])}: accepting paused, "
                    "clients wait in the backlog")
            return
        loop.default_exception_handler(context)


class UvloopServer(AsyncioServer):
    name = "uvloop"

    def new_loop(self) -> asyncio.AbstractEventLoop:
        import uvloop

        return uvloop.new_event_loop()
