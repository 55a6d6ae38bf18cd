"""A thread per connection: the original study's first server.

Each connection gets a thread that blocks in recv() and sendall(); blocking
send is its backpressure. The acceptor runs in the main thread on poll(), so
a shutdown signal wakes it at once. When a thread cannot start (memory for its
stack, or the process's thread limit) that connection is closed and counted,
and the server goes on.

How a connection is echoed, and stopped without losing echoes, is shared
with the gevent server: blocking.py.
"""

from __future__ import annotations

import _thread
import ctypes
import os
import select
import socket
import sys
import threading
import time
from typing import Any

from c10k.errors import UsageError
from c10k.limits import nofile_limits
from c10k.servers.base import (
    DescriptorReserve,
    Server,
    ShutdownSignal,
    accept_ready,
    announce,
    open_listener,
    stop_deadline,
)
from c10k.servers.blocking import BlockingConn, echo_until_eof
from c10k.servers.refusals import Refusal, Refusals

__all__ = ["ThreadedServer"]

# ctypes.PyDLL calls keep the GIL (CDLL releases it around every call).
_libc = ctypes.PyDLL(None, use_errno=True)
_accept4 = _libc.accept4
_accept4.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)
_accept4.restype = ctypes.c_int


class _GilHoldingListener(socket.socket):
    """A listener whose accept() keeps the GIL.

    socket.accept() releases the GIL around accept4(2), as every socket call
    does, and must win it back to go on: with thousands of connection threads
    coming back from recv() and barging in ahead of it, each of those turns can
    take a long time, and the accepting thread took one per connection. On a
    non-blocking listener accept4 never blocks, so holding the GIL across it
    costs the others microseconds, and one readiness of the listener accepts
    the whole backlog (a batch of accept_ready) in a single GIL turn.
    """

    def _accept(self) -> tuple[int, Any]:
        fd = _accept4(self.fileno(), None, None, socket.SOCK_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))  # EAGAIN gives BlockingIOError, as accept() would
        return fd, None


class ThreadedServer(Server):
    name = "threaded"
    # Threads still draining would make interpreter shutdown fight them for
    # the GIL, thousands of them: the command ends the process at once.
    exit_at_once = True

    def serve(self) -> None:
        cfg = self.config
        if cfg.stack_size:
            try:
                threading.stack_size(cfg.stack_size)
            except ValueError as exc:
                raise UsageError(f"--stack-size {cfg.stack_size}: {exc}") from None
        # CPython hands the GIL over on a timer: every thread waiting for it
        # wakes each switch interval (5 ms by default) to ask for it. With a
        # thousand connection threads that polling alone takes a core, and the
        # unlucky threads starve for seconds. These threads only ever hold the
        # GIL between two blocking calls, so a longer interval costs nothing.
        # Measured here: 0.05 s doubles the echo rate at 1,000 connections
        # against the default; 0.5 s echoes as fast at 1,000 and, with 12,000
        # busy threads, lets the main thread act on SIGTERM within a second
        # and exit in 3.5-5 s, where at 0.05 s it waited 12 s for the GIL and
        # then did not exit within a minute.
        sys.setswitchinterval(0.5)
        plain = open_listener(cfg)
        listener = _GilHoldingListener(plain.family, plain.type, plain.proto, fileno=plain.detach())
        listener.setblocking(False)
        self.lock = threading.Lock()
        self.conns: set[BlockingConn] = set()
        self.all_closed = threading.Event()
        self.stopping = False
        deadline = float("inf")  # set by stop_now()

        def stop_now() -> None:
            # Runs in the signal handler, the first moment the main thread
            # holds the GIL after the signal. With thousands of busy connection
            # threads each later turn to get the GIL back can take seconds (they
            # barge in ahead of a waiting thread), so do here what needs no
            # blocking call: start the clock, and mark every connection stopping
            # (only this thread adds to self.conns, and list() copies it in one
            # step) so that each busy thread shuts its own write side at its
            # next message and the crowd thins. Then close the listener: new
            # connects are refused from the moment close(2) runs.
            nonlocal deadline
            deadline = stop_deadline(cfg.shutdown_timeout)
            for conn in list(self.conns):
                conn.stopping = True
            listener.close()

        shutdown = ShutdownSignal(on_signal=stop_now)
        refusals = Refusals(self.stats.refused, cfg.max_connections, nofile_limits()[0])
        reserve = DescriptorReserve(refusals)
        poller = select.poll()
        poller.register(listener.fileno(), select.POLLIN)
        poller.register(shutdown.wake_fd, select.POLLIN)
        announce(listener.getsockname())
        while not shutdown.requested:
            for fd, _ in poller.poll(1000):
                if shutdown.requested:
                    break  # the wake socket is left full: reading it would cost GIL turns
                if fd == shutdown.wake_fd:
                    shutdown.drain()
                else:
                    self._accept(listener, reserve, refusals)
            refusals.tick(time.monotonic())
        with self.lock:
            self.stopping = True
            conns = list(self.conns)
            if not conns:
                self.all_closed.set()
        # The busy connections stop themselves (see stop_now); give them a
        # moment before shutting the idle ones from here, one shutdown(2) and
        # so one GIL turn each: by then their threads sit in recv() and no
        # longer compete for the GIL.
        self.all_closed.wait(min(1.0, max(0.0, deadline - time.monotonic()) / 4))
        for conn in conns:
            if time.monotonic() >= deadline:
                break
            if not conn.shut:
                conn.stop()
        self.all_closed.wait(max(0.0, deadline - time.monotonic()))
        refusals.flush()
        # No reserve.close() or shutdown.close(): the process ends right after
        # (exit_at_once) and the kernel closes them, while each close(2) here
        # would be one more GIL turn behind the threads still draining.
        with self.lock:
            self.write_stats()

    def _accept(self, listener: socket.socket, reserve: DescriptorReserve, refusals: Refusals) -> None:
        # Nothing here gives up the GIL (see _GilHoldingListener), so a batch
        # of connections costs the acceptor one turn, not several each: a
        # socket object made from a descriptor with its family given makes no
        # system call; settimeout() would (ioctl, GIL released), so the
        # connection's own thread makes it; and _thread.start_new_thread does
        # not wait, where Thread.start() waits for the new thread to run (it
        # must win the GIL) and then for the GIL back.
        for fd in accept_ready(listener, reserve):
            sock = socket.socket(listener.family, socket.SOCK_STREAM, 0, fd)
            if refusals.full(len(self.conns)):
                sock.close()
                continue
            conn = BlockingConn(sock)
            with self.lock:
                self.conns.add(conn)
                live = len(self.conns)
            try:
                _thread.start_new_thread(self._serve_one, (conn,))
            except (RuntimeError, MemoryError) as exc:
                with self.lock:
                    self.conns.discard(conn)
                sock.close()
                refusals.refuse(Refusal.THREAD_START, str(exc))
                continue
            self.stats.accepted += 1
            if live > self.stats.peak_concurrent:
                self.stats.peak_concurrent = live

    def _serve_one(self, conn: BlockingConn) -> None:
        echoed, idle = 0, False
        try:
            echoed, idle = echo_until_eof(conn, self.config.idle_timeout)
        finally:
            conn.sock.close()
            with self.lock:
                self.conns.discard(conn)
                self.stats.closed += 1
                self.stats.bytes_echoed += echoed
                self.stats.closed_idle += idle
                if self.stopping and not self.conns:
                    self.all_closed.set()
