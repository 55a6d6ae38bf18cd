"""The load client as a library: open many connections, echo, check and time every byte.

``LoadSettings`` (``settings.py``) is what to do, validated once; ``plan_load``
(``plan.py``) decides processes and source addresses; ``run_settings`` runs
one engine per process (``engine.py``; forked and supervised past one process,
``supervisor.py``), holds every process at a barrier until all connections are
open, and merges the samples into statistics (``results.py``): exact while
each process's samples fit its ``sample_budget``, from an HDR histogram with
stated error bounds past it (``latency.py``), plus a per-second time series
(``timeseries.py``).

Example::

    from c10k.load import run_load, write_results
    result = run_load("127.0.0.1", 7000, connections=1000, count=100)
    write_results(result, "out/")
    print(result.summary["latency_us"]["p99"], result.ok)
"""

from __future__ import annotations

import errno
import signal
import time
from collections.abc import Callable
from typing import Any

from c10k.errors import C10kError
from c10k.limits import nofile_limits
from c10k.load.diagnosis import ListenWatch
from c10k.load.engine import EngineSpec, peak_rss_bytes
from c10k.load.exchange import Exchange
from c10k.load.plan import LoadPlan, plan_load
from c10k.load.results import LoadResult, ProcessResult, merge_results, write_results
from c10k.load.settings import DEFAULT_MESSAGE, LoadSettings, make_message
from c10k.load.supervisor import Progress, run_forked, run_here, stop_signals
from c10k.load.timeseries import TimeSeries

__all__ = [
    "DEFAULT_MESSAGE",
    "Exchange",
    "LoadPlan",
    "LoadResult",
    "LoadSettings",
    "ProcessResult",
    "Progress",
    "make_message",
    "merge_results",
    "plan_for",
    "plan_load",
    "run_load",
    "run_settings",
    "write_results",
]


def plan_for(settings: LoadSettings) -> LoadPlan:
    """``plan_load`` for these settings."""
    return plan_load(settings.host, settings.port, settings.connections, processes=settings.processes,
                     source_ips=settings.source_ips, samples=settings.samples,
                     message_size=len(settings.message), tune=settings.tune,
                     sample_budget=settings.sample_budget, unix=settings.unix)


def run_load(host: str = "127.0.0.1", port: int = 7000, *, plan: LoadPlan | None = None,
             on_progress: Callable[[Progress], None] | None = None, **options: Any) -> LoadResult:
    """Run a load against an echo server and return the merged, exact results.

    Args:
        host, port: the echo server.
        options: any other ``LoadSettings`` field (``connections``, ``count``,
            ``message``, ``rate``, ``duration``, ...).
        plan, on_progress: as for ``run_settings``.

    Raises:
        UsageError: bad arguments (exit status 2 on the command line).
        C10kError: the run cannot be done on this machine, or a load process died.
    """
    return run_settings(LoadSettings(host=host, port=port, **options), plan=plan, on_progress=on_progress)


def run_settings(settings: LoadSettings, *, plan: LoadPlan | None = None,
                 on_progress: Callable[[Progress], None] | None = None) -> LoadResult:
    """Run the load ``settings`` describe.

    Args:
        settings: what to run.
        plan: a plan from ``plan_for(settings)`` (made here when None).
        on_progress: called about every 0.25 s with a ``Progress`` (with the last
            whole second's messages/s, p50 and p99 once there is one).

    Returns:
        A LoadResult; ``result.ok`` is True only when every connection was
        established and every message came back byte-exact. SIGINT or SIGTERM
        ends the run early and keeps what was measured: the summary then says
        ``"interrupted": true`` and ``"stop_signal"`` names the signal.

    Raises:
        C10kError: the run cannot be done on this machine, or a load process died.
    """
    s = settings
    if plan is None:
        plan = plan_for(s)
    started = time.time()
    origin = time.monotonic_ns()  # second 0 of the time series, in every process
    specs = [EngineSpec(
        address=plan.address, family=plan.family, message=s.message, count=s.count,
        first=share.first, connections=share.connections, sources=plan.sources,
        connect_rate=s.connect_rate * share.connections / s.connections,
        max_connecting=max(16, 1024 // plan.processes), timeout=s.timeout, barrier=s.barrier, settle=s.settle,
        rate=s.rate * share.connections / s.connections, duration=s.duration, index=share.index,
        sample_budget=s.sample_budget, origin_ns=origin, exchange=s.exchange)
        for share in plan.shares]
    series = TimeSeries(len(specs))
    watch = ListenWatch(plan.family, plan.address)  # the host's accept-queue counters, for diagnosis.py
    with stop_signals() as stop:
        if len(specs) == 1:
            parts = [run_here(specs[0], s.connections, s.samples, on_progress, series)]
        else:
            try:
                parts = run_forked(specs, s.connections, s.samples, on_progress, series)
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE):
                    raise
                # The parent keeps a pipe and a sentinel per load process.
                raise C10kError(f"out of descriptors starting {len(specs)} load processes "
                                f"(RLIMIT_NOFILE {nofile_limits()[0]}): raise the limit or use fewer "
                                f"connections") from None
        stop.disarm()  # from here a signal is only noted: the results get written
    extra: dict[str, Any] = {
        "target": plan.target,
        "mode": "open" if s.open_loop else "closed",
        "message_bytes": len(s.message),
        "count": s.count,
        "barrier": s.barrier,
        "settle_s": s.settle,
        "timeout_s": s.timeout,
        "sample_budget_bytes": s.sample_budget,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "plan": plan.as_dict(),
    }
    # Process start-up: from the plan to the last load process's first connect
    # (forking and setting up every load process; at a million connections, 51).
    starts = [p.counters.get("connect_start_ns", 0) for p in parts]
    if all(starts):
        extra["startup_s"] = round(max(0, max(starts) - origin) / 1e9, 6)
    if s.open_loop or s.duration:
        extra.update({"rate": s.rate, "duration_s": s.duration})
    if s.exchange is not None:
        extra["exchange"] = s.exchange.describe()
    if stop.signum is not None:
        extra["stop_signal"] = signal.Signals(stop.signum).name
    result = merge_results(parts, host=plan.target if s.unix else s.host, port=0 if s.unix else s.port,
                           requested=s.connections, extra=extra, timeseries=series.finish())
    result.summary["timeouts"] = watch.diagnose((p.counters for p in parts), result.summary["errors"])
    # this process's peak: the parent that merged the load processes' results, or in a
    # one-process run the load process itself
    result.summary["peak_rss_bytes"] = peak_rss_bytes()
    return result
