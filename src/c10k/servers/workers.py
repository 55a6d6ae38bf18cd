"""Epoll workers, and the pool that starts, watches, replaces and stops them.

A worker is one edge-triggered epoll ``Reactor`` (reactor.py) over the
sockets it owns, in its own process (``ProcessPool``) or in a thread of the
acceptor's process (``ThreadPool``). Everything a worker needs is handed to it
in a ``WorkerSpec``: a forked worker never reads its parent's objects, it only
closes the descriptors it inherited (``ProcessPool._forget_parent``).

Each worker talks to its parent over an AF_UNIX SOCK_SEQPACKET pair, which
keeps messages whole: READY once it serves, descriptors (SCM_RIGHTS, at most
253 a message) from an acceptor, STOP with a deadline. EOF on the parent's
end means the worker exited or died: it is never routed to again and, unless
the server is stopping, replaced. Workers publish their counters in shared
memory (``Slots``), field by name, so the parent can balance by live
connections and merge the statistics at the end.
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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from c10k import capacity
from c10k.servers.base import ServerConfig, ShutdownSignal, Stats, log, stop_deadline
from c10k.servers.pollers import EpollPoller
from c10k.servers.reactor import Conn, Reactor
from c10k.servers.refusals import Refusal, Refusals

__all__ = ["Slots", "WorkerSpec", "Worker", "WorkerPool", "ProcessPool", "ThreadPool", "SharedCount", "Closable"]

SCM_MAX_FD = 253
STOP = b"S"
FDS = b"F"
READY = b"R"
SLOTS = capacity.MAX_SERVER_WORKERS  # workers over a server's life, replacements included


class Slots:
    """Shared memory in which each worker publishes its Stats, one row each, read by field name."""

    NAMES: tuple[str, ...] = (*Stats.FIELDS, *(f"refused.{r.value}" for r in Refusal))

    def __init__(self, count: int = SLOTS) -> None:
        self.count = count
        self.width = len(self.NAMES)
        self._at = {name: i for i, name in enumerate(self.NAMES)}
        self.array: Any = multiprocessing.RawArray("q", count * self.width)

    def publish(self, index: int, stats: Stats) -> None:
        row = [getattr(stats, f) for f in Stats.FIELDS] + [stats.refused[r.value] for r in Refusal]
        base = index * self.width
        self.array[base : base + self.width] = row

    def get(self, index: int, name: str) -> int:
        return int(self.array[index * self.width + self._at[name]])

    def column(self, name: str, count: int) -> list[int]:
        """One field of the first ``count`` rows, in one read (the acceptor reads one per accept batch)."""
        at = self._at[name]
        return self.array[at : count * self.width : self.width]

    def set(self, index: int, name: str, value: int) -> None:
        self.array[index * self.width + self._at[name]] = value

    def add_to(self, total: Stats, indexes: range) -> None:
        """Add these workers' counters to ``total`` (not their peaks: a sum of peaks means nothing)."""
        for index in indexes:
            for name in Stats.FIELDS:
                if name != "peak_concurrent":
                    setattr(total, name, getattr(total, name) + self.get(index, name))
            for reason in Refusal:
                total.refused[reason.value] += self.get(index, f"refused.{reason.value}")


class SharedCount:
    """Live connections and their peak across processes (reuseport: no acceptor sees them all)."""

    def __init__(self) -> None:
        self.array: Any = multiprocessing.Array("q", 2)  # live, peak

    @property
    def peak(self) -> int:
        return int(self.array[1])

    def take(self, refusals: Refusals) -> bool:
        """Count one more live connection, unless --max-connections is reached (then the refusal is counted)."""
        counts = self.array
        with counts.get_lock():
            if refusals.full(counts[0]):
                return False
            counts[0] += 1
            if counts[0] > counts[1]:
                counts[1] = counts[0]
        return True

    def release(self) -> None:
        with self.array.get_lock():
            self.array[0] -= 1


class SharedCountReactor(Reactor):
    """A reuseport worker: --max-connections and peak_concurrent are the server's, not one worker's."""

    live: SharedCount

    def admit(self, fd: int) -> bool:
        return self.live.take(self.refusals)

    def _close(self, conn: Conn) -> None:
        if conn.fd in self.conns:
            self.live.release()
        super()._close(conn)


@dataclass
class WorkerSpec:
    """What one worker is given: nothing else of its parent's is its to read."""

    index: int
    chan: socket.socket  # the worker's end of the pair
    config: ServerConfig
    slots: Slots
    listener: socket.socket | None = None  # reuseport: its own
    live: SharedCount | None = None  # reuseport: the server-wide count
    own_process: bool = True  # a process installs its own shutdown signal


def receive_fds(chan: socket.socket, shutdown_timeout: float) -> list[int] | float:
    """Descriptors waiting in a worker's inbox, or the time to stop by.

    The parent's STOP message carries its deadline on the monotonic clock,
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
        if msg != FDS:  # STOP, or b"" when the parent is gone
            for fd in fds:
                os.close(fd)
            if msg.startswith(STOP):
                return float(msg[len(STOP):])
            return time.monotonic() + shutdown_timeout


def run_worker(spec: WorkerSpec) -> int:
    """Serve what the spec gives until STOP (or the parent's EOF); the exit status."""
    shutdown = ShutdownSignal() if spec.own_process else None
    stats = Stats()
    chan, slots, index = spec.chan, spec.slots, spec.index
    chan.setblocking(False)
    cls = SharedCountReactor if spec.live is not None else Reactor
    reactor = cls(EpollPoller(), spec.config, stats, listener=spec.listener, shutdown=shutdown,
                  inbox=(chan.fileno(), lambda: receive_fds(chan, spec.config.shutdown_timeout)),
                  on_change=lambda: slots.publish(index, stats),
                  on_close=lambda closed: slots.set(index, "closed", closed))
    if isinstance(reactor, SharedCountReactor):
        assert spec.live is not None
        reactor.live = spec.live
    chan.send(READY)
    reactor.run()
    chan.close()
    if shutdown is not None:
        shutdown.close()
    return 0


class Worker:
    """The parent's handle on one worker."""

    __slots__ = ("index", "chan", "pid", "handed", "alive")

    def __init__(self, index: int, chan: socket.socket, pid: int | None) -> None:
        self.index = index
        self.chan = chan  # the parent's end of the pair
        self.pid = pid
        self.handed = 0  # descriptors handed to it (hand-off)
        self.alive = True


class Closable(Protocol):
    def close(self) -> None: ...


class WorkerPool:
    """Starts workers, notices when one is gone, replaces it, stops them all.

    Args:
        config: the server's configuration, passed on to each worker.
        ep: the parent's epoll; each worker's channel is registered in it and
            the parent calls ``on_event`` when one is readable.
        inherited: the parent's own descriptors, which a forked worker closes first.
        live: reuseport's server-wide connection count, or None.
        new_listener: reuseport: a fresh listener of the group for a worker.
        main: what a worker runs (the epoll Reactor's ``run_worker``, or another
            architecture's loop over the same spec, as uring.py's).
    """

    #: the workers share the parent's descriptor table (threads)
    shares_descriptors = False

    def __init__(self, config: ServerConfig, ep: select.epoll, inherited: list[Closable],
                 live: SharedCount | None = None, new_listener: Callable[[], socket.socket] | None = None,
                 main: Callable[[WorkerSpec], int] = run_worker) -> None:
        self.config = config
        self.main = main
        self.ep = ep
        self.live = live
        self.new_listener = new_listener
        self.slots = Slots()
        self.workers: dict[int, Worker] = {}  # parent end's fd -> worker
        self.next_index = 0
        self.started = 0
        self.died = 0
        self.stopping = False
        self.inherited = inherited

    def spawn(self, listener: socket.socket | None = None) -> Worker | None:
        """Start one worker; None when this server has started all it may."""
        if self.next_index >= self.slots.count:
            log(f"not starting worker: {self.slots.count} workers started over this server's life")
            return None
        index = self.next_index
        self.next_index += 1
        if listener is None and self.new_listener is not None:
            listener = self.new_listener()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        spec = WorkerSpec(index, theirs, self.config, self.slots, listener, self.live,
                          own_process=not self.shares_descriptors)
        try:
            pid = self._start(spec, ours)
        except (OSError, RuntimeError) as exc:
            # fork() fails with EAGAIN past RLIMIT_NPROC or pid_max, ENOMEM without
            # memory; a thread that cannot start raises RuntimeError. The server goes
            # on with the workers it has; one line says why it has no more.
            for sock in (ours, theirs, listener):
                if sock is not None:
                    sock.close()
            log(f"cannot start worker {index}: {getattr(exc, 'strerror', None) or exc}")
            return None
        worker = Worker(index, ours, pid)
        # A worker that stops taking sockets must not hang the parent forever.
        ours.settimeout(5.0)
        self.ep.register(ours.fileno(), select.EPOLLIN)
        self.workers[ours.fileno()] = worker
        self.started += 1
        return worker

    def _start(self, spec: WorkerSpec, ours: socket.socket) -> int | None:
        """Run ``run_worker(spec)`` somewhere; its pid if it is a process."""
        raise NotImplementedError

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Return once every worker started so far serves (or has died)."""
        deadline = time.monotonic() + timeout
        for worker in list(self.workers.values()):
            while time.monotonic() < deadline:
                try:
                    if worker.chan.recv(16) == READY:
                        break
                except (TimeoutError, InterruptedError):
                    continue
                break  # b"" or an error: it died; on_event replaces it

    def alive(self) -> list[Worker]:
        return [w for w in self.workers.values() if w.alive]

    def loads(self) -> list[tuple[int, int, Worker]]:
        """(connections held, index, worker) of every live worker, the closed counts read at once."""
        closed = self.slots.column("closed", self.next_index)
        return [(w.handed - closed[w.index], w.index, w) for w in self.workers.values() if w.alive]

    def on_event(self, fd: int) -> None:
        """A worker's channel is readable: a late READY, or EOF because it is gone."""
        worker = self.workers[fd]
        try:
            if worker.chan.recv(16, socket.MSG_DONTWAIT):
                return
        except BlockingIOError:
            return
        except OSError:
            pass
        self._gone(worker)

    def _gone(self, worker: Worker) -> None:
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
        if not self.stopping:
            self.died += 1
            log(f"worker {worker.index} (pid {worker.pid}) died{status}; starting a replacement")
            self.spawn()

    def stop(self, wake: ShutdownSignal) -> None:
        """Tell every worker to stop by the shutdown deadline and wait for them (within the timeout)."""
        self.stopping = True
        deadline = time.monotonic() + self.config.shutdown_timeout
        # Workers close what is left at their deadline; the parent waits a little
        # longer for them to exit, and the whole stays within the timeout.
        stop = STOP + repr(stop_deadline(self.config.shutdown_timeout)).encode()
        for worker in self.alive():
            try:
                worker.chan.send(stop)
            except OSError:
                pass
        while self.workers and time.monotonic() < deadline:
            for fd, _ in self.ep.poll(max(0.0, deadline - time.monotonic())):
                if fd in self.workers:
                    self.on_event(fd)
                elif fd == wake.wake_fd:
                    wake.drain()
        for worker in list(self.workers.values()):
            if worker.pid is not None:
                log(f"worker {worker.index} did not stop in time: killed")
                os.kill(worker.pid, signal.SIGKILL)
                self._gone(worker)

    def add_counts(self, total: Stats) -> None:
        """Add every worker's counters (all it ever started) to ``total``."""
        self.slots.add_to(total, range(self.next_index))


class ThreadPool(WorkerPool):
    """Workers as threads of the parent's process, as in the original study."""

    shares_descriptors = True

    def _start(self, spec: WorkerSpec, ours: socket.socket) -> int | None:
        threading.Thread(target=self.main, args=(spec,), name=f"worker-{spec.index}", daemon=True).start()
        return None


class ProcessPool(WorkerPool):
    """Workers as forked processes: each its own interpreter (no shared GIL) and descriptor limit."""

    def _start(self, spec: WorkerSpec, ours: socket.socket) -> int | None:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                ours.close()
                self._forget_parent(spec)
                code = self.main(spec)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        spec.chan.close()
        if spec.listener is not None:
            spec.listener.close()  # the worker's now; ours would keep it in the group
        return pid

    def _forget_parent(self, spec: WorkerSpec) -> None:
        """In a new worker process: drop every descriptor of the parent's.

        Known objects are closed first, so none closes a reused number later;
        then every other inherited descriptor (clients accepted in the batch
        that made the acceptor fork us, above all) goes too, or those clients
        would never see EOF from their real worker.
        """
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for obj in self.inherited:
            obj.close()
        for w in self.workers.values():
            w.chan.close()
        keep = [spec.chan.fileno()] + ([spec.listener.fileno()] if spec.listener else [])
        low = 3
        for fd in sorted(keep):
            os.closerange(low, fd)
            low = fd + 1
        os.closerange(low, os.sysconf("SC_OPEN_MAX"))


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
