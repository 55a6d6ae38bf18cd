"""How long a matrix will take, said before it starts (``c10k study --list``, ``make run``).

A rough model, fitted to this project's runs on two cores: the seed matrix took
54 minutes, the quick one about two. Each case pays a start and stop of its
server and load (~3 s), a connect ramp (~2,500 connects/s), and its messages at
the rate its architecture sustains here, or, for a fixed-rate case, its sending
time. A case that fails early takes less; one that stalls runs until the
runner's deadline, so the estimate is a guide, not a promise.
"""

from __future__ import annotations

from collections.abc import Sequence

from c10k import capacity, limits
from c10k.study.capacity import ONE_PROCESS
from c10k.study.cases import Case
from c10k.text import duration_words

__all__ = ["estimate_case_s", "estimate_s", "duration_words"]

#: Seconds to start and stop a case's server and load.
CASE_OVERHEAD_S = 3.0
#: Connects per second the load's ramp reaches here.
CONNECTS_PER_S = 2500.0
#: Closed-loop messages per second measured here, by architecture (the rest: DEFAULT_RATE).
#: (gevent and trio at 10,000 connections, 2026-11-29.)
MESSAGES_PER_S = {"threaded": 12_000.0, "select": 25_000.0, "poll": 25_000.0, "gevent": 28_000.0,
                  "trio": 10_000.0}
DEFAULT_RATE = 40_000.0
#: A case past its architecture's limit here fails once its refused connections time out.
FAILING_CASE_S = 30.0


def _most(server: str) -> int | None:
    if server == "select":
        return capacity.select_connections(limits.FD_SETSIZE)
    if server == "threaded" or server in ONE_PROCESS:
        return capacity.connections_per_process(limits.nofile_limits()[1])
    return None


def estimate_case_s(case: Case) -> float:
    """Seconds one case is expected to take."""
    ramp = case.connections / CONNECTS_PER_S
    most = _most(case.server)
    if most is not None and case.connections > most:
        return CASE_OVERHEAD_S + ramp + FAILING_CASE_S
    if case.fixed_rate:
        return CASE_OVERHEAD_S + ramp + float(case.duration_s or 0.0)
    rate = MESSAGES_PER_S.get(case.server, DEFAULT_RATE)
    return CASE_OVERHEAD_S + ramp + case.connections * case.messages / rate


def estimate_s(cases: Sequence[Case]) -> float:
    """Seconds a list of cases is expected to take."""
    return sum(estimate_case_s(c) for c in cases)
