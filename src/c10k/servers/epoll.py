"""The original study's epoll design, and its SO_REUSEPORT sibling.

Hand-off (``HandoffServer``, the default): an acceptor with its own epoll
queue accepts, picks the least-loaded worker and passes it the socket; each
worker runs an edge-triggered epoll Reactor over the sockets it owns (the
workers and their pool: workers.py).

Why workers are processes by default: the GIL keeps Python threads on one
core, and a process may hold at most RLIMIT_NOFILE descriptors (20,000 on the
machines this was built on, hard). Sockets travel to worker processes with
SCM_RIGHTS (``socket.send_fds``); the acceptor then closes its copy, so it
holds no client descriptor for longer than one accept batch. When every
worker nears its descriptor limit the acceptor forks another (up to
``--max-workers``): one server holds 100,000 connections without tuning. A
dead worker is replaced and never routed to again; its clients see EOF or a
reset when the kernel closes its descriptors.

``--worker-mode thread`` keeps the original's threads: the same workers, in
the acceptor's process (and within its one descriptor limit).

``--balance reuseport`` (``ReuseportServer``): no acceptor; N processes each
accept on their own SO_REUSEPORT listener and the kernel spreads connections
by a hash of the address pair. A replaced process gets a new listener;
connections waiting in a dead process's accept queue are reset by the kernel
(a known limit of SO_REUSEPORT).
"""

from __future__ import annotations

import heapq
import os
import select
import signal
import socket
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from c10k import capacity
from c10k.errors import C10kError
from c10k.limits import nofile_limits
from c10k.servers.base import (
    DescriptorReserve,
    Server,
    ServerConfig,
    ShutdownSignal,
    Stats,
    accept_ready,
    announce,
    log,
    open_listener,
)
from c10k.servers.refusals import Refusal, Refusals
from c10k.servers.workers import (
    FDS,
    SCM_MAX_FD,
    Closable,
    ProcessPool,
    SharedCount,
    ThreadPool,
    Worker,
    WorkerPool,
    WorkerSpec,
    run_worker,
)

__all__ = ["HandoffServer", "ReuseportServer", "LeastLoadedFirst", "epoll_server", "connections_per_worker"]

#: descriptors a worker process keeps for itself (epoll, inbox, wake pair, std streams, reserve)
def connections_per_worker(fd_limit: int, workers: int, shared_table: bool) -> int:
    """Connections one worker may be handed before the acceptor starts another.

    ``c10k.capacity`` owns the arithmetic (the doctor and the study plan with
    the same): a worker process keeps some descriptors for itself; thread
    workers share one process's table, less what the acceptor and each keep.
    """
    if shared_table:
        return capacity.thread_worker_share(fd_limit, workers)
    return capacity.connections_per_process(fd_limit)


W = TypeVar("W")


class LeastLoadedFirst(Generic[W]):
    """Where one accept batch goes: the least-loaded worker takes connections until it
    is full, then the next least-loaded, and so on.

    Why a batch, not connection by connection: spreading a batch fd by fd over
    many workers costs a sendmsg and a worker wake-up per connection; with 51
    workers (a million connections) that made the acceptor cost 30 µs and the
    workers 45 µs a connection, against 11 and 18 with one worker (measured;
    with this: 24 and 27, and 5-7 and 2 when a full accept queue is drained).
    A batch grows when the acceptor falls behind, so the busier the server the
    fewer messages per connection, and the spread stays within a batch
    (ACCEPT_BATCH) of even. A heap: no scan of every worker per connection.

    Args:
        loads: (connections held, a unique number, worker) for each live worker.
        capacity: connections a worker may hold.
    """

    def __init__(self, loads: list[tuple[int, int, W]], capacity: int) -> None:
        self.loads = loads
        heapq.heapify(self.loads)
        self.capacity = capacity
        self.worker: W | None = None
        self.room = 0  # connections the current worker may still take

    def next(self) -> W | None:
        """The worker for the next connection, counted as taken; None when every worker is full."""
        if not self.room:
            self.worker = None
            while self.loads:
                held, _, worker = heapq.heappop(self.loads)
                if held < self.capacity:
                    self.worker, self.room = worker, self.capacity - held
                    break
            if self.worker is None:
                return None
        self.room -= 1
        return self.worker

    def add(self, worker: W) -> None:
        """A new worker, holding nothing: it takes the next connections."""
        self.worker, self.room = worker, self.capacity


def epoll_server(config: ServerConfig) -> Server:
    """The epoll server ``--balance`` asks for (the registry's entry for "epoll")."""
    if config.balance == "reuseport":
        return ReuseportServer(config)
    return HandoffServer(config)


class EpollPoolServer(Server):
    """What both epoll servers do: start a pool of workers, watch it until a shutdown
    signal, stop it, merge the counters. Subclasses say how connections reach workers."""

    name = "epoll"
    #: what each worker runs (the uring server runs its own loop in the same pools)
    worker_main: Callable[[WorkerSpec], int] = staticmethod(run_worker)

    def __init__(self, config: ServerConfig) -> None:
        super().__init__(config)
        self.fd_limit = nofile_limits()[0]
        self.refusals = Refusals(self.stats.refused, config.max_connections, self.fd_limit)

    def serve(self) -> None:
        shutdown = ShutdownSignal()
        ep = select.epoll()
        ep.register(shutdown.wake_fd, select.EPOLLIN)
        listener = self.open()
        address = listener.getsockname()
        pool = self.start(listener, ep, inherited=[ep, shutdown])
        if not pool.workers:
            raise C10kError("no worker could start (see above); nothing is served")
        # SIGCHLD wakes the loop through the wakeup fd, so a dead worker is
        # replaced at once even if its end of the pair lingers.
        signal.signal(signal.SIGCHLD, lambda *_: None)
        pool.wait_ready()
        announce(address)
        try:
            while not shutdown.requested:
                for fd, _ in ep.poll(1.0):
                    if fd == shutdown.wake_fd:
                        shutdown.drain()
                    elif fd in pool.workers:
                        pool.on_event(fd)
                    else:
                        self.on_ready(fd)
                self.refusals.tick(time.monotonic())
        finally:
            self.stop_accepting(ep)
            pool.stop(shutdown)
            self.refusals.flush()
            ep.close()
            shutdown.close()
        self.workers_started, self.workers_died = pool.started, pool.died
        total = Stats()
        total.refused.update(self.stats.refused)  # refused before any worker saw them
        pool.add_counts(total)
        total.peak_concurrent = self.peak()
        self.stats = total
        self.write_stats()

    def open(self) -> socket.socket:
        raise NotImplementedError

    def start(self, listener: socket.socket, ep: select.epoll, inherited: list[Closable]) -> WorkerPool:
        """Start the first workers; the pool they are in. A forked worker closes ``inherited`` first."""
        raise NotImplementedError

    def on_ready(self, fd: int) -> None:
        """A descriptor of the subclass's in ``ep`` is readable."""

    def stop_accepting(self, ep: select.epoll) -> None:
        """The shutdown signal came: new connections must be refused from now on."""

    def peak(self) -> int:
        """The most connections the server held at once."""
        raise NotImplementedError


class HandoffServer(EpollPoolServer):
    """An acceptor hands each connection to the least-loaded worker."""

    def __init__(self, config: ServerConfig) -> None:
        super().__init__(config)
        self.threads = config.worker_mode == "thread"
        self.max_workers = max(config.max_workers, config.workers)
        self.listener: socket.socket | None = None
        self.reserve = DescriptorReserve(self.refusals)  # for EMFILE on accept, see base.py
        self.pool: WorkerPool | None = None
        self.peak_live = 0

    def open(self) -> socket.socket:
        self.listener = open_listener(self.config)
        return self.listener

    def start(self, listener: socket.socket, ep: select.epoll, inherited: list[Closable]) -> WorkerPool:
        ep.register(listener.fileno(), select.EPOLLIN)
        pool_class = ThreadPool if self.threads else ProcessPool
        self.pool = pool_class(self.config, ep, inherited=[*inherited, listener, self.reserve],
                               main=self.worker_main)
        for _ in range(self.config.workers):
            self.pool.spawn()
        return self.pool

    def on_ready(self, fd: int) -> None:
        if self.listener is not None and fd == self.listener.fileno():
            self._accept_batch()

    def capacity(self) -> int:
        """Connections one worker may be handed."""
        assert self.pool is not None
        return connections_per_worker(self.fd_limit, len(self.pool.workers), self.pool.shares_descriptors)

    def _accept_batch(self) -> None:
        assert self.listener is not None and self.pool is not None
        capacity = self.capacity()
        loads = self.pool.loads()
        live = sum(held for held, _, _ in loads)
        alive = len(loads)
        placer = LeastLoadedFirst(loads, capacity)
        batch: dict[Worker, list[int]] = {}
        for fd in accept_ready(self.listener, self.reserve):
            if self.refusals.full(live):
                os.close(fd)
                continue
            worker = placer.next()
            if worker is None:  # every worker is full
                worker = self._grow(alive, capacity)
                if worker is None:
                    os.close(fd)
                    continue
                alive += 1
                placer.add(worker)
                worker = placer.next()
                assert worker is not None
            os.set_blocking(fd, False)  # shared with the worker's copy
            batch.setdefault(worker, []).append(fd)
            live += 1
            worker.handed += 1
        self.peak_live = max(self.peak_live, live)
        for worker, fds in batch.items():
            self._hand(worker, fds)

    def _grow(self, workers: int, capacity: int) -> Worker | None:
        """Every worker is full: a new one, or None with the refusal counted."""
        assert self.pool is not None
        if self.threads:
            self.refusals.refuse(Refusal.DESCRIPTOR_LIMIT, "thread workers share it")
            return None
        worker = self.pool.spawn() if workers < self.max_workers else None
        if worker is None:
            self.refusals.refuse(Refusal.NO_CAPACITY,
                                 f"{workers} workers (--max-workers) hold {capacity} connections each")
            return None
        log(f"all workers near their descriptor limit ({capacity}): started worker {worker.index}")
        return worker

    def _hand(self, worker: Worker, fds: list[int]) -> None:
        for i in range(0, len(fds), SCM_MAX_FD):
            chunk = fds[i : i + SCM_MAX_FD]
            try:
                socket.send_fds(worker.chan, [FDS], chunk)
            except OSError as exc:
                # The worker died or stalled; its EOF will retire it. These
                # clients get EOF: the server could not keep them.
                self.refusals.refuse(Refusal.NO_CAPACITY, f"hand-off to worker {worker.index} failed: {exc}",
                                     count=len(chunk))
                worker.handed -= len(chunk)
            for fd in chunk:
                os.close(fd)

    def stop_accepting(self, ep: select.epoll) -> None:
        if self.listener is not None:
            ep.unregister(self.listener.fileno())
            self.listener.close()
            self.listener = None
        self.reserve.close()

    def peak(self) -> int:
        return self.peak_live


class ReuseportServer(EpollPoolServer):
    """N worker processes, each accepting on its own SO_REUSEPORT listener."""

    def __init__(self, config: ServerConfig) -> None:
        super().__init__(config)
        if config.worker_mode == "thread":
            # Threads of one process would share one descriptor table anyway.
            log("--balance reuseport runs worker processes; --worker-mode thread ignored")
        self.live = SharedCount()
        self.port = config.port

    def open(self) -> socket.socket:
        # The group's first listener: it refuses a port someone already listens on.
        listener = open_listener(self.config, reuseport=True)
        self.port = listener.getsockname()[1]
        return listener

    def _join(self) -> socket.socket:
        return open_listener(self.config, join_port=self.port)

    def start(self, listener: socket.socket, ep: select.epoll, inherited: list[Closable]) -> WorkerPool:
        pool = ProcessPool(self.config, ep, inherited, live=self.live, new_listener=self._join,
                           main=self.worker_main)
        pool.spawn(listener)
        for _ in range(self.config.workers - 1):
            pool.spawn()
        return pool

    def peak(self) -> int:
        return self.live.peak
