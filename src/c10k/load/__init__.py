"""The load client as a library: open many connections, echo, check and time every byte.

``run_load`` plans the run (``plan.py``), runs one engine per process
(``engine.py``; forked children past one process, each writing its raw samples
to a temporary ``.npz`` file), holds every process at a barrier until all
connections are open, and merges the raw samples into exact statistics
(``results.py``).

Example::

    from c10k.load import run_load, write_results
    result = run_load("127.0.0.1", 7000, connections=1000, count=100)
    write_results(result, "out/")
    print(result.summary["latency_us"]["p99"], result.ok)
"""

from __future__ import annotations

import errno
import multiprocessing
import multiprocessing.connection
import os
import signal
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from c10k.errors import C10kError, UsageError
from c10k.limits import nofile_limits
from c10k.load.engine import EngineSpec, run_engine
from c10k.load.plan import LoadPlan, plan_load
from c10k.load.results import LoadResult, ProcessResult, merge_results, write_results

__all__ = [
    "DEFAULT_MESSAGE",
    "check_options",
    "LoadPlan",
    "LoadResult",
    "Progress",
    "make_message",
    "plan_load",
    "run_load",
    "write_results",
]

#: 15 bytes, the length of the original study's message ("Gary's spamming").
DEFAULT_MESSAGE = b"Gary's spamming"


@dataclass
class Progress:
    """A snapshot for a progress display."""

    phase: str  # "connecting" or "echoing"
    requested: int
    open: int
    established: int
    echoed: int
    failed: int
    expected_messages: int


def make_message(size: int) -> bytes:
    """A printable message of exactly ``size`` bytes."""
    if size < 1:
        raise UsageError("--size must be at least 1 byte")
    pattern = b"0123456789abcdefghijklmnopqrstuvwxyz"
    return (pattern * (size // len(pattern) + 1))[:size]


def run_load(
    host: str = "127.0.0.1",
    port: int = 7000,
    *,
    message: bytes = DEFAULT_MESSAGE,
    count: int = 100,
    connections: int = 1,
    processes: int | None = None,
    connect_rate: float = 0.0,
    timeout: float = 10.0,
    source_ips: Sequence[str] = (),
    barrier: bool = True,
    rate: float = 0.0,
    duration: float = 0.0,
    plan: LoadPlan | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> LoadResult:
    """Run a load against an echo server and return the merged, exact results.

    Args:
        host, port: the echo server.
        message: the bytes every connection sends and expects back.
        count: messages per connection (closed loop).
        connections: connections, all open at once unless ``barrier`` is False.
        processes: load processes (None: see ``plan_load``).
        connect_rate: connects per second over all processes; 0 = as fast as possible.
        timeout: seconds a connect or an echo may take before it counts as "timeout".
        source_ips: source addresses to spread connections over.
        barrier: establish every connection before the first message.
        rate, duration: open loop: ``rate`` messages per second in total, for
            ``duration`` seconds, each round trip timed from its scheduled send.
        plan: a plan from ``plan_load`` (made here when None).
        on_progress: called about every 0.25 s with a ``Progress``.

    Returns:
        A LoadResult; ``result.ok`` is True only when every connection was
        established and every message came back byte-exact.

    Raises:
        UsageError: bad arguments (exit status 2 on the command line).
        C10kError: the run cannot be done on this machine, or a load process died.
    """
    check_options(message, count, connections, connect_rate, timeout, rate, duration)
    open_loop = rate > 0
    samples = int(rate * duration) if open_loop else connections * count
    if plan is None:
        plan = plan_load(host, port, connections, processes=processes, source_ips=source_ips, samples=samples)
    specs = []
    for share in plan.shares:
        specs.append(EngineSpec(
            address=plan.address, family=plan.family, message=message, count=count,
            first=share.first, connections=share.connections, sources=plan.sources,
            connect_rate=connect_rate * share.connections / connections,
            max_connecting=max(16, 1024 // plan.processes), timeout=timeout, barrier=barrier,
            rate=rate * share.connections / connections, duration=duration, index=share.index))
    expected = samples
    started = time.time()
    if len(specs) == 1:
        parts = [_run_here(specs[0], connections, expected, on_progress)]
    else:
        try:
            parts = _run_forked(specs, connections, expected, on_progress)
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            # The parent keeps a pipe and a sentinel per load process.
            raise C10kError(f"out of descriptors starting {len(specs)} load processes "
                            f"(RLIMIT_NOFILE {nofile_limits()[0]}): raise the limit or use fewer connections"
                            ) from None
    extra: dict[str, Any] = {
        "mode": "open" if open_loop else "closed",
        "message_bytes": len(message),
        "count": count,
        "barrier": barrier,
        "timeout_s": timeout,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "plan": plan.as_dict(),
    }
    if open_loop:
        extra.update({"rate": rate, "duration_s": duration})
    return merge_results(parts, host=host, port=port, requested=connections, extra=extra)


def check_options(message: bytes, count: int, connections: int, connect_rate: float, timeout: float,
           rate: float, duration: float) -> None:
    if not message:
        raise UsageError("the message must not be empty")
    if count < 0:
        raise UsageError(f"--count must be 0 or more, not {count}")
    if connections < 1:
        raise UsageError(f"--connections must be at least 1, not {connections}")
    if connect_rate < 0:
        raise UsageError("--connect-rate must not be negative")
    if not timeout > 0:
        raise UsageError("--timeout must be more than 0")
    if rate < 0 or duration < 0:
        raise UsageError("--rate and --duration must not be negative")
    if (rate > 0) != (duration > 0):
        raise UsageError("open loop needs both --rate and --duration")


def _run_here(spec: EngineSpec, requested: int, expected: int,
              on_progress: Callable[[Progress], None] | None) -> ProcessResult:
    phase = ["connecting"]

    def connected(established: int, failed: int) -> None:
        phase[0] = "echoing"

    def progress(open_: int, established: int, echoed: int, failed: int) -> None:
        if on_progress is not None:
            on_progress(Progress(phase[0], requested, open_, established, echoed, failed, expected))

    result = run_engine(spec, on_connected=connected, on_progress=progress if on_progress else None)
    result.pid = os.getpid()
    return result


def _child(spec: EngineSpec, conn: multiprocessing.connection.Connection, shared: Any, out: str) -> None:
    k = spec.index
    hits = [0]

    def first_sigint_only(signum: int, frame: object) -> None:
        # Ctrl-C reaches every process of the group and the parent forwards one more:
        # the first ends the run (the engine keeps its results), later ones must not
        # interrupt the saving of those results.
        hits[0] += 1
        if hits[0] == 1:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, first_sigint_only)

    def connected(established: int, failed: int) -> None:
        conn.send(("connected", established, failed))
        if conn.recv() != "go":
            raise SystemExit(1)

    def progress(open_: int, established: int, echoed: int, failed: int) -> None:
        shared[4 * k], shared[4 * k + 1], shared[4 * k + 2], shared[4 * k + 3] = open_, established, echoed, failed

    try:
        result = run_engine(spec, on_connected=connected, on_progress=progress)
        result.pid = os.getpid()
        path = Path(out) / f"process-{k}.npz"
        result.save(path)
        conn.send(("done", str(path)))
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass
    except Exception as exc:  # reported by the parent as one line
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


def _run_forked(specs: list[EngineSpec], requested: int, expected: int,
                on_progress: Callable[[Progress], None] | None) -> list[ProcessResult]:
    # fork: children inherit the plan and the imported modules at no cost, and
    # each sends back one small message per phase; samples travel as .npz files.
    ctx = multiprocessing.get_context("fork")
    shared = ctx.Array("q", 4 * len(specs), lock=False)
    with tempfile.TemporaryDirectory(prefix="c10k-load-") as out:
        procs, pipes = [], []
        try:
            for spec in specs:
                parent_end, child_end = ctx.Pipe()
                p = ctx.Process(target=_child, args=(spec, child_end, shared, out), daemon=True)
                p.start()
                child_end.close()
                procs.append(p)
                pipes.append(parent_end)
            return _supervise(procs, pipes, shared, requested, expected, on_progress)
        finally:
            for p in procs:
                if p.is_alive():
                    p.terminate()
            for p in procs:
                p.join(5)


def _supervise(procs: list[Any], pipes: list[multiprocessing.connection.Connection], shared: Any,
               requested: int, expected: int,
               on_progress: Callable[[Progress], None] | None) -> list[ProcessResult]:
    connected: set[int] = set()
    paths: dict[int, str] = {}
    phase = "connecting"
    index = {id(c): k for k, c in enumerate(pipes)}
    live = list(pipes)
    stop_by = 0.0  # after Ctrl-C: when to give up waiting for the children's results
    previous = None
    try:
        while len(paths) < len(procs):
            try:
                _collect(live, index, procs, pipes, connected, paths, stop_by > 0)
                if len(connected) == len(procs) and phase == "connecting" and not stop_by:
                    phase = "echoing"
                if on_progress is not None:
                    v = list(shared)
                    on_progress(Progress(phase, requested, sum(v[0::4]), sum(v[1::4]), sum(v[2::4]),
                                         sum(v[3::4]), expected))
            except KeyboardInterrupt:
                if stop_by:
                    continue
                stop_by = time.monotonic() + 15
                previous = _ignore_sigint()
                for k, p in enumerate(procs):
                    if k not in paths and p.is_alive():
                        os.kill(p.pid, signal.SIGINT)
            if stop_by and time.monotonic() > stop_by:
                raise C10kError("interrupted, and the load processes did not stop within 15 s")
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return [ProcessResult.load(Path(paths[k])) for k in sorted(paths)]


def _collect(live: list[multiprocessing.connection.Connection], index: dict[int, int], procs: list[Any],
             pipes: list[multiprocessing.connection.Connection], connected: set[int], paths: dict[int, str],
             stopping: bool) -> None:
    for c in multiprocessing.connection.wait(live, timeout=0.1):
        assert isinstance(c, multiprocessing.connection.Connection)
        k = index[id(c)]
        try:
            msg = c.recv()
        except EOFError:
            raise C10kError(f"load process {k} exited unexpectedly (status {procs[k].exitcode})") from None
        if msg[0] == "connected":
            connected.add(k)
            if len(connected) == len(procs) and not stopping:
                for p in pipes:
                    p.send("go")  # the barrier: every connection of every process is open
        elif msg[0] == "done":
            paths[k] = msg[1]
            live.remove(c)
        else:
            raise C10kError(f"load process {k} failed: {msg[1]}")


def _ignore_sigint() -> Any:
    try:
        return signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: signals are not ours to manage
        return None
