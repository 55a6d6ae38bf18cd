"""The original study's epoll design, and its SO_REUSEPORT sibling.

Hand-off (default): an acceptor with its own epoll queue accepts, picks the
least-loaded worker and passes it the socket; each worker runs an
edge-triggered epoll Reactor (reactor.py) over the sockets it owns.

Why workers are processes by default: the GIL keeps Python threads on one
core, and a process may hold at most RLIMIT_NOFILE descriptors (20,000 on the
machines this was built on, hard). Sockets travel to worker processes with
SCM_RIGHTS (``socket.send_fds``) over an AF_UNIX SOCK_SEQPACKET pair, which
keeps messages whole, at most 253 descriptors each (SCM_MAX_FD); the acceptor
then closes its copy, so it holds no client descriptor for longer than one
accept batch. When every worker nears its descriptor limit the acceptor forks
another (up to ``--max-workers``): one server holds 100,000 connections
without tuning. The same pair tells the acceptor a worker died (EOF on its
end); a dead worker is replaced and never routed to again. Its clients see
EOF or a reset when the kernel closes its descriptors.

``--worker-mode thread`` keeps the original's threads: the same workers, in
the acceptor's process (and within its one descriptor limit).

``--balance reuseport``: no acceptor; N processes each accept on their own
SO_REUSEPORT listener and the kernel spreads connections by a hash of the
address pair. A replaced process gets a new listener; connections waiting in
a dead process's accept queue are reset by the kernel (a known limit of
SO_REUSEPORT).
"""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import socket
import threading
import time
import traceback
from typing import Any

from c10k.limits import nofile_limits
from c10k.servers.base import (
    DESCRIPTOR_LIMIT_WHY,
    DescriptorReserve,
    RefusalLog,
    Server,
    ShutdownSignal,
    Stats,
    accept_ready,
    announce,
    log,
    open_listener,
    stop_deadline,
)
from c10k.servers.reactor import Conn, EpollPoller, Reactor

__all__ = ["EpollServer"]

SCM_MAX_FD = 253
STOP = b"S"
FDS = b"F"
READY = b"R"
#: descriptors a worker keeps for itself (epoll, inbox, wake pair, std streams, reserve)
WORKER_OVERHEAD = 64
DEFAULT_MAX_WORKERS = 64
SLOTS = 1024  # workers over a server's life, replacements included


class Slots:
    """Shared memory in which each worker publishes its Stats row."""

    def __init__(self, count: int) -> None:
        self.width = Stats.row_size()
        self.count = count
        self.array: Any = multiprocessing.RawArray("q", count * self.width)

    def publish(self, index: int, stats: Stats) -> None:
        base = index * self.width
        self.array[base : base + self.width] = stats.as_row()

    def row(self, index: int) -> list[int]:
        base = index * self.width
        return list(self.array[base : base + self.width])

    def set_closed(self, index: int, closed: int) -> None:
        self.array[index * self.width + 1] = closed

    def closed(self, index: int) -> int:
        return int(self.array[index * self.width + 1])  # Stats.FIELDS[1]


class Worker:
    __slots__ = ("index", "chan", "pid", "thread", "handed", "alive")

    def __init__(self, index: int, chan: socket.socket, pid: int | None, thread: threading.Thread | None):
        self.index = index
        self.chan = chan
        self.pid = pid
        self.thread = thread
        self.handed = 0
        self.alive = True


def receive_fds(chan: socket.socket, shutdown_timeout: float) -> list[int] | float:
    """Descriptors waiting in a worker's inbox, or the time to stop by.

    The acceptor's STOP message carries its deadline on the monotonic clock,
    which every process on the machine shares; an orphaned worker takes its own.
    """
    fds: list[int] = []
    while True:
        try:
            msg, got, flags, _ = socket.recv_fds(chan, 16, SCM_MAX_FD)
        except BlockingIOError:
            return fds
        except OSError:
            msg, got, flags = b"", [], 0
        if flags & socket.MSG_CTRUNC:
            log("a hand-off lost descriptors: this worker is out of descriptors")
        fds.extend(got)
        if msg != FDS:  # STOP, or b"" when the acceptor is gone
            for fd in fds:
                os.close(fd)
            if msg.startswith(STOP):
                return float(msg[len(STOP):])
            return time.monotonic() + shutdown_timeout


class SharedCountReactor(Reactor):
    """A reuseport worker: live connections and their peak are counted server-wide,
    so --max-connections and peak_concurrent mean the server's, not one worker's."""

    live: Any = None  # multiprocessing.Value("q", [live, peak]) shared by every worker

    def admit(self, fd: int) -> str | None:
        limit = self.config.max_connections
        with self.live.get_lock():
            if limit and self.live[0] >= limit:
                return "max_connections"
            self.live[0] += 1
            if self.live[0] > self.live[1]:
                self.live[1] = self.live[0]
        return None

    def _close(self, conn: Conn) -> None:
        if conn.fd in self.conns:
            with self.live.get_lock():
                self.live[0] -= 1
        super()._close(conn)


class EpollServer(Server):
    name = "epoll"

    def serve(self) -> None:
        cfg = self.config
        self.threads = cfg.worker_mode == "thread"
        self.reuseport = cfg.balance == "reuseport"
        if self.reuseport and self.threads:
            # Threads of one process would share one descriptor table anyway.
            log("--balance reuseport runs worker processes; --worker-mode thread ignored")
            self.threads = False
        self.max_workers = max(cfg.max_workers or DEFAULT_MAX_WORKERS, cfg.workers)
        self.fd_limit = nofile_limits()[0]
        self.workers: dict[int, Worker] = {}  # acceptor end's fd -> worker
        self.next_index = 0
        self.slots = Slots(SLOTS)
        self.refusals = RefusalLog()
        self.shutdown = ShutdownSignal()
        self.live_total: Any = None
        if self.reuseport:
            self.live_total = multiprocessing.Array("q", 2)  # live, peak
        self.ep = select.epoll()
        self.ep.register(self.shutdown.wake_fd, select.EPOLLIN)
        # Handoff: the acceptor's listener. Reuseport: the first worker's,
        # bound here so that port 0 resolves once for every worker.
        first = open_listener(cfg, reuseport=self.reuseport)
        address = first.getsockname()
        self.port = address[1]
        self.listener: socket.socket | None = None
        self.reserve: DescriptorReserve | None = None
        if self.reuseport:
            for i in range(cfg.workers):
                self._spawn(first if i == 0 else None)
        else:
            self.listener = first
            self.ep.register(first.fileno(), select.EPOLLIN)
            self.reserve = DescriptorReserve()  # for EMFILE on accept, see base.py
            for _ in range(cfg.workers):
                self._spawn()
        # SIGCHLD wakes the loop through the wakeup fd, so a dead worker is
        # replaced at once even if its end of the pair lingers.
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self._wait_ready()
        announce(address)
        try:
            self._loop()
        finally:
            self._stop_workers()
        self._merge_stats()
        self.write_stats()

    # -- workers ------------------------------------------------------------

    def _spawn(self, listener: socket.socket | None = None) -> Worker | None:
        if self.next_index >= SLOTS:
            log(f"not starting worker: {SLOTS} workers started over this server's life")
            return None
        index = self.next_index
        self.next_index += 1
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if self.reuseport and listener is None:
            listener = open_listener(self.config, reuseport=True, port=self.port)
        if self.threads:
            thread = threading.Thread(target=self._worker_body, args=(index, theirs, listener, False),
                                      name=f"worker-{index}", daemon=True)
            thread.start()
            worker = Worker(index, ours, None, thread)
        else:
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    ours.close()
                    self._forget_parent(keep=[theirs.fileno()] + ([listener.fileno()] if listener else []))
                    code = self._worker_body(index, theirs, listener, True)
                except BaseException:
                    traceback.print_exc()
                finally:
                    os._exit(code)
            theirs.close()
            if listener is not None:
                listener.close()  # the worker's now; ours would keep it in the group
            worker = Worker(index, ours, pid, None)
        # A worker that stops taking sockets must not hang the acceptor forever.
        ours.settimeout(5.0)
        self.ep.register(ours.fileno(), select.EPOLLIN)
        self.workers[ours.fileno()] = worker
        self.workers_started += 1
        return worker

    def _wait_ready(self) -> None:
        """Announce only once every first worker is serving: the line means ready."""
        deadline = time.monotonic() + 30.0
        for worker in list(self.workers.values()):
            while time.monotonic() < deadline:
                try:
                    if worker.chan.recv(16) == READY:
                        break
                except TimeoutError:
                    continue
                except InterruptedError:
                    continue
                break  # b"" or an error: it died; the loop replaces it

    def _worker_event(self, worker: Worker) -> None:
        """Its end of the pair is readable: a late READY, or EOF because it is gone."""
        try:
            if worker.chan.recv(16, socket.MSG_DONTWAIT):
                return
        except BlockingIOError:
            return
        except OSError:
            pass
        self._worker_gone(worker)

    def _forget_parent(self, keep: list[int]) -> None:
        """In a new worker process: drop the acceptor's descriptors.

        Known objects are closed first, so none closes a reused number later;
        then every other inherited descriptor (clients accepted in the batch
        that made the acceptor fork us, above all) goes too, or those clients
        would never see EOF from their real worker.
        """
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        self.shutdown.close()
        self.ep.close()
        if self.listener is not None:
            self.listener.close()
        if self.reserve is not None:
            self.reserve.close()
        for w in self.workers.values():
            w.chan.close()
        low = 3
        for fd in sorted(set(keep)):
            os.closerange(low, fd)
            low = fd + 1
        os.closerange(low, self.fd_limit)

    def _worker_body(self, index: int, chan: socket.socket, listener: socket.socket | None, own: bool) -> int:
        shutdown = ShutdownSignal() if own else None
        stats = Stats()
        chan.setblocking(False)
        cls = SharedCountReactor if self.live_total is not None else Reactor
        reactor = cls(EpollPoller(), self.config, stats, listener=listener, shutdown=shutdown,
                      inbox=(chan.fileno(), lambda: receive_fds(chan, self.config.shutdown_timeout)),
                      on_change=lambda: self.slots.publish(index, stats),
                      on_close=lambda closed: self.slots.set_closed(index, closed))
        if isinstance(reactor, SharedCountReactor):
            reactor.live = self.live_total
        chan.send(READY)
        reactor.run()
        chan.close()
        if shutdown is not None:
            shutdown.close()
        return 0

    def _worker_gone(self, worker: Worker) -> None:
        """Its end of the pair closed: it exited or died. Never route to it again."""
        worker.alive = False
        self.ep.unregister(worker.chan.fileno())
        del self.workers[worker.chan.fileno()]
        worker.chan.close()
        status = ""
        if worker.pid is not None:
            try:
                _, code = os.waitpid(worker.pid, 0)
                status = f" ({_describe(code)})"
            except ChildProcessError:
                pass
        if not self.shutdown.requested:
            self.workers_died += 1
            log(f"worker {worker.index} (pid {worker.pid}) died{status}; starting a replacement")
            self._spawn()

    def _alive(self) -> list[Worker]:
        return [w for w in self.workers.values() if w.alive]

    # -- the acceptor loop ------------------------------------------------------

    def _loop(self) -> None:
        listener_fd = self.listener.fileno() if self.listener else -1
        wake_fd = self.shutdown.wake_fd
        while not self.shutdown.requested:
            for fd, _ in self.ep.poll(1.0):
                if fd == listener_fd:
                    self._accept_batch()
                elif fd == wake_fd:
                    self.shutdown.drain()
                elif fd in self.workers:
                    self._worker_event(self.workers[fd])
            self.refusals.tick(time.monotonic())

    def _capacity(self) -> int:
        """Connections one worker may be handed."""
        if self.threads:  # one process: the workers share its descriptor table
            n = max(1, len(self.workers))
            return max(1, (self.fd_limit - 32 - 4 * n) // n)
        return self.fd_limit - WORKER_OVERHEAD

    def _refuse(self, fd: int, reason: str, why: str) -> None:
        os.close(fd)
        self.stats.refused[reason] += 1
        self.refusals.note(reason, why, time.monotonic())

    def _accept_batch(self) -> None:
        assert self.listener is not None
        limit = self.config.max_connections
        capacity = self._capacity()
        load = {w: w.handed - self.slots.closed(w.index) for w in self._alive()}
        live = sum(load.values())
        batch: dict[Worker, list[int]] = {}
        for fd in accept_ready(self.listener, self.reserve, self._count_shed):
            if limit and live >= limit:
                self._refuse(fd, "max_connections", f"--max-connections {limit} reached")
                continue
            worker = min(load, key=load.__getitem__) if load else None
            if worker is None or load[worker] >= capacity:
                worker = None
                if not self.threads and len(load) < self.max_workers:
                    worker = self._spawn()
                    if worker is not None:
                        log(f"all workers near their descriptor limit ({capacity}): started worker {worker.index}")
                        load[worker] = 0
                if worker is None:
                    if self.threads:
                        self._refuse(fd, "descriptor_limit",
                                     f"process descriptor limit ({self.fd_limit}) reached (thread workers share it)")
                    else:
                        self._refuse(fd, "no_capacity",
                                     f"{len(load)} workers (--max-workers) hold {capacity} connections each")
                    continue
            os.set_blocking(fd, False)  # shared with the worker's copy
            batch.setdefault(worker, []).append(fd)
            load[worker] += 1
            live += 1
            worker.handed += 1
            self.stats.accepted += 1
        if live > self.stats.peak_concurrent:
            self.stats.peak_concurrent = live
        for worker, fds in batch.items():
            self._hand(worker, fds)

    def _hand(self, worker: Worker, fds: list[int]) -> None:
        for i in range(0, len(fds), SCM_MAX_FD):
            chunk = fds[i : i + SCM_MAX_FD]
            try:
                socket.send_fds(worker.chan, [FDS], chunk)
            except OSError as exc:
                # The worker died or stalled; its EOF will retire it. These
                # clients get EOF: the server could not keep them.
                log(f"hand-off to worker {worker.index} failed ({exc}): {len(chunk)} connection(s) closed")
                self.stats.refused["no_capacity"] += len(chunk)
                self.stats.accepted -= len(chunk)
                worker.handed -= len(chunk)
            for fd in chunk:
                os.close(fd)

    def _count_shed(self) -> None:
        self.stats.refused["descriptor_limit"] += 1
        self.refusals.note("descriptor_limit", DESCRIPTOR_LIMIT_WHY, time.monotonic())

    # -- stopping ---------------------------------------------------------------

    def _stop_workers(self) -> None:
        """Stop accepting, tell every worker to stop, wait for them."""
        if self.listener is not None:
            self.ep.unregister(self.listener.fileno())
            self.listener.close()
            self.listener = None
        # Workers close what is left at `deadline`; the acceptor waits a little
        # longer for them to exit, and the whole stays within the timeout.
        deadline = time.monotonic() + self.config.shutdown_timeout
        stop = STOP + repr(stop_deadline(self.config.shutdown_timeout)).encode()
        for worker in self._alive():
            try:
                worker.chan.send(stop)
            except OSError:
                pass
        while self.workers and time.monotonic() < deadline:
            for fd, _ in self.ep.poll(max(0.0, deadline - time.monotonic())):
                if fd in self.workers:
                    self._worker_event(self.workers[fd])
                elif fd == self.shutdown.wake_fd:
                    self.shutdown.drain()
        for worker in list(self.workers.values()):
            if worker.pid is not None:
                log(f"worker {worker.index} did not stop in time: killed")
                os.kill(worker.pid, signal.SIGKILL)
                self._worker_gone(worker)
        self.refusals.flush()
        self.ep.close()
        self.shutdown.close()

    def _merge_stats(self) -> None:
        total = Stats()
        for index in range(self.next_index):
            total.add_row(self.slots.row(index))
        if self.reuseport:
            total.peak_concurrent = self.live_total[1]
            self.stats = total
            return
        self.stats.bytes_echoed = total.bytes_echoed
        self.stats.closed_idle = total.closed_idle


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
