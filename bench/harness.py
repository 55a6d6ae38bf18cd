"""What the large-run benchmarks share: a server in its own session, process trees, kernel counters.

Not a benchmark itself (``run.py`` runs only ``bench_*.py``). The kernel's
figures come from files whose cost does not grow with the connections:
``/proc/net/sockstat`` (TCP sockets in use and their buffer memory, in
pages), ``/proc/net/snmp`` (CurrEstab counts both ends of a loopback
connection), ``/proc/net/netstat`` (listen-queue overflows, SYN retransmits)
and ``/proc/meminfo`` (slab). A ``Sampler`` thread records them, with the CPU
time of the server's and the load's process trees, four times a second.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
C10K = str(Path(sys.executable).with_name("c10k"))

#: /proc/net/netstat TcpExt counters worth watching while connecting
TCPEXT = ("ListenOverflows", "ListenDrops", "TCPSynRetrans", "TCPReqQFullDrop", "SyncookiesSent")


def start_server(arch: str, extra: list[str]) -> tuple[subprocess.Popen[str], int]:
    """``c10k serve ARCH -p 0 EXTRA`` in its own session; returns once it says ``listening on``."""
    proc = subprocess.Popen([C10K, "serve", arch, "-p", "0", *extra], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening on "):
        proc.kill()
        raise SystemExit(f"server did not start: {line!r} (exit {proc.wait(10)})")
    return proc, int(line.strip().rsplit(":", 1)[1])


def stop_server(proc: subprocess.Popen[str], timeout: float = 60.0) -> int | None:
    """SIGTERM to the server (it stops its own workers), then SIGKILL to its session if it lingers."""
    try:
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)
        return None
    finally:
        if proc.stdout is not None:
            proc.stdout.close()


class Tree:
    """A process and its descendants; the list is refreshed at most every ``refresh_s``."""

    def __init__(self, pid: int, refresh_s: float = 2.0) -> None:
        self.root = psutil.Process(pid)
        self.refresh_s = refresh_s
        self.procs: list[psutil.Process] = [self.root]
        self.listed = 0.0
        self.last: dict[int, tuple[float, float]] = {}  # pid -> its last (user, system): one that ends keeps it

    def members(self) -> list[psutil.Process]:
        now = time.monotonic()
        if now - self.listed >= self.refresh_s:
            self.listed = now
            try:
                self.procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        return self.procs

    def cpu(self) -> tuple[float, float]:
        """(user, system) seconds of every member seen so far (one that ended: its last reading)."""
        for p in self.members():
            try:
                t = p.cpu_times()
            except psutil.Error:
                continue
            self.last[p.pid] = (t.user, t.system)
        return sum(u for u, _ in self.last.values()), sum(s for _, s in self.last.values())

    def pss(self) -> int:
        """Proportional set size summed over the members (shared pages split between their users)."""
        total = 0
        for p in self.members():
            try:
                total += p.memory_full_info().pss
            except psutil.Error:
                continue
        return total

    def pin(self, cpus: list[int]) -> int:
        """Restrict every member (and what it forks later) to ``cpus``; how many were pinned."""
        done = 0
        self.listed = 0.0
        for p in self.members():
            try:
                p.cpu_affinity(cpus)
                done += 1
            except psutil.Error:
                continue
        return done


def _table(path: str, prefix: str) -> dict[str, int]:
    """The ``prefix:`` header/value line pair of /proc/net/snmp or /proc/net/netstat."""
    lines = [line.split() for line in Path(path).read_text().splitlines() if line.startswith(prefix + ":")]
    return {k: int(v) for k, v in zip(lines[0][1:], lines[1][1:], strict=True)}


def kernel() -> dict[str, int]:
    """TCP sockets, their memory and the counters that explain a slow connect, right now."""
    out: dict[str, int] = {}
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            words = line.split()[1:]
            for k, v in zip(words[::2], words[1::2], strict=True):
                out[f"tcp_{k}"] = int(v)  # inuse, orphan, tw, alloc, mem (pages)
    out["tcp_mem_bytes"] = out.pop("tcp_mem", 0) * os.sysconf("SC_PAGE_SIZE")
    tcp = _table("/proc/net/snmp", "Tcp")
    out.update(estab=tcp["CurrEstab"], active_opens=tcp["ActiveOpens"], retrans_segs=tcp["RetransSegs"])
    ext = _table("/proc/net/netstat", "TcpExt")
    out.update({k: ext.get(k, 0) for k in TCPEXT})
    mem = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
           if line.split(":")[0] in ("MemAvailable", "Slab", "SUnreclaim")}
    out.update(mem_available=mem["MemAvailable"], slab=mem["Slab"], slab_unreclaim=mem["SUnreclaim"])
    return out


def accept_queue(port: int) -> int:
    """Connections waiting in the accept queues of the listeners on ``port`` (reuseport: all of them)."""
    try:
        out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return -1
    return sum(int(line.split()[1]) for line in out.splitlines() if line.split())


class QueueWatcher(threading.Thread):
    """The accept queues of ``port``, read again and again in a thread of their own: ``ss`` takes
    seconds with a million connections open on a busy machine (9 s measured, 0.3 s of it CPU),
    which must not hold up the samples. ``latest`` is (seconds since ``t0`` it was read at, value)."""

    def __init__(self, t0: float, port: int) -> None:
        super().__init__(daemon=True)
        self.t0, self.port = t0, port
        self.latest: tuple[float, int] = (0.0, -1)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            at = time.monotonic() - self.t0
            self.latest = (round(at, 3), accept_queue(self.port))
            self.done.wait(0.5)


class Sampler(threading.Thread):
    """Every ``interval`` s: time since ``t0``, the kernel's figures, server and load CPU, and the
    accept queue as last read (``accept_queue``, read at ``accept_queue_t``; see ``QueueWatcher``).

    ``on_sample(row)`` is called in this thread after each row (e.g. to take a
    one-off measurement when every connection is up); when it returns true the
    accept queues are no longer read (``ss`` costs the kernel a walk of its
    socket tables, which a latency measurement must not share the machine with).
    """

    def __init__(self, t0: float, server: Tree, load: Tree, port: int, interval: float = 0.25,
                 on_sample: Callable[[dict[str, Any]], bool | None] | None = None) -> None:
        super().__init__(daemon=True)
        self.t0, self.server, self.load, self.port = t0, server, load, port
        self.interval = interval
        self.on_sample = on_sample
        self.rows: list[dict[str, Any]] = []
        self.done = threading.Event()
        self.queue = QueueWatcher(t0, port)

    def run(self) -> None:
        self.queue.start()
        while not self.done.is_set():
            row: dict[str, Any] = {"t": round(time.monotonic() - self.t0, 3), **kernel()}
            row["server_user"], row["server_sys"] = self.server.cpu()
            row["load_user"], row["load_sys"] = self.load.cpu()
            row["accept_queue_t"], row["accept_queue"] = self.queue.latest
            self.rows.append(row)
            if self.on_sample is not None and self.on_sample(row):
                self.queue.done.set()
            self.done.wait(self.interval)

    def stop(self) -> list[dict[str, Any]]:
        self.done.set()
        self.queue.done.set()
        self.join(30)
        self.queue.join(30)
        return self.rows


#: The kernel's count of established connections is the whole machine's: other
#: traffic moves it by a few thousand, so "all up" is 99.5% of both ends (at a
#: million, 10,000 short: well under a second of connects).
ALL_UP = 0.995


def all_up(estab: int, base: int, connections: int, share: float = 1.0) -> bool:
    """Whether the kernel counts ``share`` of both ends of ``connections`` established since ``base``."""
    return estab - base >= 2 * connections * share * ALL_UP


def first(rows: list[dict[str, Any]], test: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    """The first sample for which ``test`` holds."""
    return next((r for r in rows if test(r)), None)


def cpu_between(a: dict[str, Any], b: dict[str, Any], who: str) -> float:
    """CPU seconds (user + system) of ``who`` ("server" or "load") between two samples."""
    return (b[f"{who}_user"] + b[f"{who}_sys"]) - (a[f"{who}_user"] + a[f"{who}_sys"])


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "load_avg": os.getloadavg(), "memory_bytes": psutil.virtual_memory().total}


def save(name: str, result: dict[str, Any]) -> Path:
    path = HERE / "results" / f"{name}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path


def load_while_sampling(cmd: list[str], server: Tree, port: int, wait_s: float,
                        on_sample: Callable[[dict[str, Any], Tree], bool | None] | None = None,
                        ) -> tuple[int, float, list[dict[str, Any]]]:
    """Run a ``c10k load`` command while a ``Sampler`` watches; (exit status, wall seconds, samples).

    ``on_sample(row, load)`` gets each sample and the load's process tree (a true
    result stops the accept-queue reads, see ``Sampler``).
    """
    print("$", shlex.join(cmd), flush=True)
    launched = time.monotonic()
    run = subprocess.Popen(cmd)
    load = Tree(run.pid, refresh_s=0.5)
    sampler = Sampler(launched, server, load, port,
                      on_sample=None if on_sample is None else lambda row: on_sample(row, load))
    sampler.start()
    try:
        code = run.wait(timeout=wait_s)
    finally:
        rows = sampler.stop()
    return code, time.monotonic() - launched, rows


NAMESPACE_ENV = "C10K_BENCH_NAMESPACE"


def rerun_in_own_namespace(connections: int) -> int:
    """Run this script again, whole, in a network namespace made for ``connections``; its exit status.

    Why: at a million, the machine's own network costs every packet two hash
    walks that a namespace does not. The TCP established hash was sized at boot
    (262,144 buckets here) and holds two sockets per connection, and once
    Podman's nftables rules exist, connection tracking follows loopback too,
    in a table of the same size. A namespace made while
    ``net.ipv4.tcp_child_ehash_entries`` is set gets a hash of its own of that
    size (the sysctl is read when a namespace is created, then put back), and
    has no nftables rules, so no connection tracking. The script runs inside
    it (``/proc/net`` then shows the namespace's own counters), and the
    namespace is removed after. Root only.
    """
    name = f"c10k-bench-{os.getpid()}"
    knob = Path("/proc/sys/net/ipv4/tcp_child_ehash_entries")
    before = knob.read_text()
    # two sockets per loopback connection; the kernel rounds up to a power of two
    knob.write_text(str(min(2 * connections, 1 << 24)))
    try:
        subprocess.run(["ip", "netns", "add", name], check=True)
    finally:
        knob.write_text(before)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        print(f"in network namespace {name} (TCP hash for {2 * connections:,} sockets, no conntrack)", flush=True)
        return subprocess.run(["ip", "netns", "exec", name, sys.executable, *sys.argv],
                              env={**os.environ, NAMESPACE_ENV: name}).returncode
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def in_own_namespace() -> str | None:
    """The namespace ``rerun_in_own_namespace`` made, when this process runs in it."""
    return os.environ.get(NAMESPACE_ENV)


def read_summary(out: Path, code: int) -> dict[str, Any]:
    """The load's summary.json in ``out``, or exit with one line."""
    path = out / "summary.json"
    if not path.exists():
        raise SystemExit(f"c10k load wrote no summary (exit {code})")
    return json.loads(path.read_text())  # type: ignore[no-any-return]
