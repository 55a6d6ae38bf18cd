"""Sample a server's process tree with psutil while the load runs.

A server may be several processes (epoll's workers), so memory, threads and
descriptors are summed over the tree at each sample, and the peak of each sum
is kept. CPU is counted from ``start()`` (after the server is listening) to
``stop()`` (before it is told to stop), per process, so start-up and shutdown
are left out; a worker that exits between samples keeps its last reading.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field

import psutil

__all__ = ["Usage", "ProcessTreeSampler"]


@dataclass
class Usage:
    """What the server used while the load ran.

    ``peak_*`` are maxima of per-sample sums over the process tree;
    ``peak_fds_per_process`` is the most any one process held (the number that
    meets RLIMIT_NOFILE). ``idle_rss_bytes`` is the tree's memory just before
    the load, so ``peak_rss_bytes - idle_rss_bytes`` is what the connections cost.
    ``cpu_s`` covers the whole load; ``cpu_connected_s`` only the part after
    every connection was open (see ``settle_cpu``).
    """

    peak_rss_bytes: int = 0
    idle_rss_bytes: int = 0
    peak_threads: int = 0
    peak_fds: int = 0
    peak_fds_per_process: int = 0
    peak_processes: int = 0
    cpu_s: float = 0.0
    cpu_connected_s: float | None = None
    samples: int = 0
    series: list[tuple[float, int, int, int, float]] = field(default_factory=list)

    def settle_cpu(self, connections: int) -> None:
        """Set ``cpu_connected_s``: CPU from the first sample holding every connection.

        That leaves out the connect phase (accepting, handing sockets over), so
        what remains is the cost of the messages; None if that moment never came.
        """
        for _t, _rss, _threads, fds, cpu in self.series:
            if fds >= connections:
                self.cpu_connected_s = round(max(0.0, self.cpu_s - cpu), 4)
                return
        self.cpu_connected_s = None

    def to_json(self) -> dict[str, object]:
        d = asdict(self)
        d["series"] = [list(row) for row in self.series]
        return d


class ProcessTreeSampler:
    """Poll a process and its descendants every ``interval`` seconds in a thread.

    Args:
        pid: the server's process id.
        interval: seconds between samples.
    """

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self._root = psutil.Process(pid)
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._procs: dict[int, psutil.Process] = {}
        self._cpu_start: dict[int, float] = {}
        self._cpu_last: dict[int, float] = {}
        self._t0 = 0.0
        self.usage = Usage()

    def _tree(self) -> list[psutil.Process]:
        try:
            procs = [self._root, *self._root.children(recursive=True)]
        except psutil.Error:
            return []
        found = []
        for p in procs:
            # Keep one Process object per pid: psutil caches its create time,
            # which guards against a reused pid.
            known = self._procs.setdefault(p.pid, p)
            found.append(known)
        return found

    def sample(self) -> None:
        """Take one sample now (the thread calls this; tests may too)."""
        rss = threads = fds = 0
        max_fds = 0
        alive = 0
        for p in self._tree():
            try:
                with p.oneshot():
                    r = p.memory_info().rss
                    t = p.num_threads()
                    f = p.num_fds()
                    c = p.cpu_times()
            except psutil.Error:
                continue
            alive += 1
            if alive == 1:
                self.usage.samples += 1
            rss += r
            threads += t
            fds += f
            max_fds = max(max_fds, f)
            cpu = c.user + c.system
            # Processes present at the baseline count from there; later ones from zero.
            self._cpu_start.setdefault(p.pid, cpu if self.usage.samples == 1 else 0.0)
            self._cpu_last[p.pid] = cpu
        u = self.usage
        if alive:
            if u.samples == 1:
                u.idle_rss_bytes = rss
            u.peak_rss_bytes = max(u.peak_rss_bytes, rss)
            u.peak_threads = max(u.peak_threads, threads)
            u.peak_fds = max(u.peak_fds, fds)
            u.peak_fds_per_process = max(u.peak_fds_per_process, max_fds)
            u.peak_processes = max(u.peak_processes, alive)
        u.cpu_s = sum(self._cpu_last[pid] - self._cpu_start.get(pid, 0.0) for pid in self._cpu_last)
        u.series.append((round(time.monotonic() - self._t0, 3), rss, threads, fds, round(u.cpu_s, 4)))

    def known_processes(self) -> list[psutil.Process]:
        """Every process of the tree seen so far (to clean up stragglers)."""
        return list(self._procs.values())

    def _run(self) -> None:
        # Counting descriptors lists /proc/PID/fd: with 100,000 connections a
        # sample takes tens of ms, so space samples to keep this under ~10% of a core.
        pause = self._interval
        while not self._stop.wait(pause):
            began = time.monotonic()
            self.sample()
            pause = max(self._interval, 10 * (time.monotonic() - began))

    def start(self) -> None:
        """Take the baseline sample and start sampling in the background."""
        self._t0 = time.monotonic()
        self.sample()
        self._thread = threading.Thread(target=self._run, name="c10k-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> Usage:
        """Take a last sample, stop the thread and return the usage."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.sample()
        return self.usage
