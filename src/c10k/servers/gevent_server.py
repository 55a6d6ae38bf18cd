"""gevent's StreamServer: a greenlet per connection, the long-standing Python answer to C10K.

Each connection gets a greenlet that blocks in recv() and sendall() on a gevent
socket: code written like the threaded server's, scheduled by gevent's hub on
libev/libuv instead of by the kernel and the GIL. A blocked sendall() is the
backpressure (as in the threaded server): a connection that is owed echoes
stops reading, so it costs the server one read (64 KiB) at most. Nothing is
monkey-patched: StreamServer and gevent's sockets need no patching, and
this module is imported only by `c10k serve gevent`.

The echo loop, and stopping without losing echoes, are the threaded
server's (blocking.py).
"""

from __future__ import annotations

import errno
import signal
import time
from typing import Any

import gevent
import gevent.event
from gevent.server import StreamServer

from c10k.limits import nofile_limits
from c10k.servers.base import DescriptorReserve, Server, ServerConfig, announce, open_listener, stop_deadline
from c10k.servers.blocking import BlockingConn, echo_until_eof
from c10k.servers.refusals import Refusals

__all__ = ["GeventServer"]


class _SheddingStreamServer(StreamServer):
    """A StreamServer that sheds one client on EMFILE instead of pausing.

    StreamServer answers an accept() error by logging a traceback and pausing
    accepting for 10 ms, doubling up to a second: clients wait in the backlog
    and the first one served after the load drops may wait a second. Here the
    reserve descriptor (base.py) accepts and closes one waiting client, counted
    as a refusal, and the listener's watcher waits for the next.
    """

    reserve: DescriptorReserve

    def do_read(self) -> Any:
        try:
            return super().do_read()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                self.reserve.shed(self.socket)  # the plain listener: StreamServer unwraps it
                return None
            if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                return None  # that client gave up before we accepted it
            raise


class GeventServer(Server):
    name = "gevent"

    def __init__(self, config: ServerConfig) -> None:
        super().__init__(config)
        self.conns: set[BlockingConn] = set()
        self.stopping = False
        self.refusals = Refusals(self.stats.refused, config.max_connections, nofile_limits()[0])

    def serve(self) -> None:
        cfg = self.config
        listener = open_listener(cfg)
        reserve = DescriptorReserve(self.refusals)
        stop = gevent.event.Event()
        self.all_closed = gevent.event.Event()
        # Installed before the listening line: a SIGTERM right after it is a graceful stop.
        handlers = [gevent.signal_handler(sig, stop.set) for sig in (signal.SIGTERM, signal.SIGINT)]
        server = _SheddingStreamServer(listener, self._handle)
        server.reserve = reserve
        server.start()
        announce(listener.getsockname())
        while not stop.wait(1.0):
            self.refusals.tick(time.monotonic())
        deadline = stop_deadline(cfg.shutdown_timeout)
        self.stopping = True
        server.close()  # stop accepting and close the listener: new connects are refused
        for conn in list(self.conns):
            conn.stop()
        if self.conns:
            self.all_closed.wait(max(0.0, deadline - time.monotonic()))
        for conn in list(self.conns):
            conn.sock.close()  # wakes its greenlet with an error: it ends and counts itself
        gevent.sleep(0)
        for h in handlers:
            h.cancel()
        reserve.close()
        self.refusals.flush()
        self.write_stats()

    def _handle(self, sock: Any, address: Any) -> None:
        if self.stopping or self.refusals.full(len(self.conns)):
            sock.close()
            return
        conn = BlockingConn(sock)
        self.conns.add(conn)
        stats = self.stats
        stats.accepted += 1
        if len(self.conns) > stats.peak_concurrent:
            stats.peak_concurrent = len(self.conns)
        echoed, idle = 0, False
        try:
            # gevent's timeout covers each blocking recv() and the whole of a
            # sendall(): no bytes in, or an echo not taken, for this long ends it.
            echoed, idle = echo_until_eof(conn, self.config.idle_timeout)
        finally:
            sock.close()
            self.conns.discard(conn)
            stats.closed += 1
            stats.bytes_echoed += echoed
            stats.closed_idle += idle
            if self.stopping and not self.conns:
                self.all_closed.set()
