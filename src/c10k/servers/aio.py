"""asyncio Protocol echo servers, on the standard loop and on uvloop.

What a Python user would reach for instead of writing an event loop. The
transport's write-buffer limits are the watermarks: above ``high`` the
protocol pauses reading until the buffer drains below ``low``.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from c10k.servers.base import Server, announce, open_listener, stop_deadline

__all__ = ["AsyncioServer", "UvloopServer"]


class EchoProtocol(asyncio.Protocol):
    __slots__ = ("server", "transport", "last", "stopping")

    def __init__(self, server: AsyncioServer) -> None:
        self.server = server
        self.transport: Any = None
        self.last = server.tick
        self.stopping = False

    def connection_made(self, transport: Any) -> None:
        srv = self.server
        self.transport = transport
        limit = srv.config.max_connections
        if srv.stopping or (limit and len(srv.conns) >= limit):
            srv.stats.refused["max_connections"] += not srv.stopping
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
        self.last = self.server.tick

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

    def new_loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.new_event_loop()

    def serve(self) -> None:
        self.conns: set[EchoProtocol] = set()
        self.tick = 0.0
        self.echoed = 0
        self.stopping = False
        self.all_closed: asyncio.Event | None = None
        loop = self.new_loop()
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()
        self.stats.bytes_echoed = self.echoed
        self.write_stats()

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.config
        listener = open_listener(cfg)
        stop = asyncio.Event()
        self.all_closed = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        server = await loop.create_server(lambda: EchoProtocol(self), sock=listener, backlog=cfg.backlog)
        announce(listener.getsockname())
        while not stop.is_set():
            self.tick = loop.time()
            if cfg.idle_timeout:
                cutoff = self.tick - cfg.idle_timeout
                for proto in [p for p in self.conns if p.last < cutoff]:
                    self.stats.closed_idle += 1
                    proto.transport.close()
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
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


class UvloopServer(AsyncioServer):
    name = "uvloop"

    def new_loop(self) -> asyncio.AbstractEventLoop:
        import uvloop

        return uvloop.new_event_loop()
