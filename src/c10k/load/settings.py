"""What a load run is asked to do, validated once.

``LoadSettings`` is the one object that travels from the command line (or a
library caller) to the planner and to every load process: each number is
checked here and nowhere else, so a mistake gets the same one-line message
whichever door it came in by.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from c10k.errors import UsageError
from c10k.load.exchange import Exchange

__all__ = ["DEFAULT_MESSAGE", "DEFAULT_SAMPLE_BUDGET", "MIN_SAMPLE_BUDGET", "LoadSettings", "make_message"]

#: 15 bytes, the length of the original study's message ("Gary's spamming").
DEFAULT_MESSAGE = b"Gary's spamming"
#: Bytes of raw round-trip samples a load process keeps before folding them into a histogram.
DEFAULT_SAMPLE_BUDGET = 64 * 2**20
MIN_SAMPLE_BUDGET = 1024


def make_message(size: int) -> bytes:
    """A printable message of exactly ``size`` bytes."""
    if size < 1:
        raise UsageError("--size must be at least 1 byte")
    pattern = b"0123456789abcdefghijklmnopqrstuvwxyz"
    return (pattern * (size // len(pattern) + 1))[:size]


def _finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise UsageError(f"{name} must be a finite number, not {value}")


@dataclass(frozen=True)
class LoadSettings:
    """One load run, checked on construction (``UsageError`` names the option at fault).

    Attributes:
        host, port: the echo server (TCP).
        unix: the echo server's unix-domain socket path instead (host and port unused).
        message: the bytes every connection sends and expects back.
        count: messages per connection (closed loop).
        connections: connections, all open at once unless ``barrier`` is False.
        processes: load processes (None: the planner picks).
        connect_rate: connects per second over all processes; 0 = as fast as possible.
        timeout: seconds a connect or an echo may take before it counts as "timeout".
        source_ips: source addresses to spread connections over.
        barrier: establish every connection before the first message.
        settle: seconds every connection stays open and silent after the barrier, before
            the first message (a server still taking connections on is then measured once it
            holds them); needs the barrier.
        rate, duration: open loop: ``rate`` messages per second in total, for
            ``duration`` seconds, each round trip timed from its scheduled send.
        tune: raise kernel limits that would stop the run, before it starts (root).
        sample_budget: bytes of raw samples each load process keeps (percentiles
            exact); past it they are folded into an HDR histogram (``latency.py``).
        exchange: a general request/response run (``exchange.py``): expected replies,
            templates, pipelining, churn, warm-up; None keeps the echo fast paths. A
            ``duration`` without a ``rate`` (a closed loop bounded by time) needs one and
            gets the plain echo one when none is given.
    """

    host: str = "127.0.0.1"
    port: int = 7000
    message: bytes = DEFAULT_MESSAGE
    count: int = 100
    connections: int = 1
    processes: int | None = None
    connect_rate: float = 0.0
    timeout: float = 10.0
    source_ips: tuple[str, ...] = field(default=())
    barrier: bool = True
    settle: float = 0.0
    rate: float = 0.0
    duration: float = 0.0
    tune: bool = False
    sample_budget: int = DEFAULT_SAMPLE_BUDGET
    unix: str = ""
    exchange: Exchange | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "source_ips", tuple(self.source_ips))
        if not self.message:
            raise UsageError("-m/--message must not be empty")
        if self.unix and self.source_ips:
            raise UsageError("--source-ip does not apply to a unix socket target")
        if not self.unix and not 0 < self.port < 65536:
            raise UsageError(f"--port must be 1..65535, not {self.port}")
        if self.connections < 1:
            raise UsageError(f"-c/--connections must be at least 1, not {self.connections}")
        if self.count < 0:
            raise UsageError(f"-n/--count must be 0 or more, not {self.count}")
        if self.processes is not None:
            if self.processes < 1:
                raise UsageError(f"--processes must be at least 1, not {self.processes}")
            if self.processes > self.connections:
                raise UsageError(f"--processes {self.processes} is more than the {self.connections} connection(s)")
        for name, value in (("--connect-rate", self.connect_rate), ("--timeout", self.timeout),
                            ("--rate", self.rate), ("--duration", self.duration), ("--settle", self.settle)):
            _finite(name, value)
        if self.settle < 0:
            raise UsageError("--settle must not be negative")
        if self.settle and not self.barrier:
            raise UsageError("--settle needs the barrier: every connection open before it starts (not --no-barrier)")
        if self.connect_rate < 0:
            raise UsageError("--connect-rate must not be negative")
        if not self.timeout > 0:
            raise UsageError("--timeout must be more than 0")
        if self.rate < 0 or self.duration < 0:
            raise UsageError("--rate and --duration must not be negative")
        if self.sample_budget < MIN_SAMPLE_BUDGET:
            raise UsageError(f"--sample-budget must be at least {MIN_SAMPLE_BUDGET} bytes, not {self.sample_budget}")
        if self.rate > 0 and not self.duration > 0:
            raise UsageError("open loop needs both --rate and --duration")
        if self.duration > 0 and not self.open_loop and self.exchange is None:
            object.__setattr__(self, "exchange", Exchange())  # a closed loop bounded by time
        x = self.exchange
        if x is not None and x.requests is None and not self.duration > 0:
            object.__setattr__(self, "exchange", replace(x, requests=self.count))

    @property
    def open_loop(self) -> bool:
        return self.rate > 0

    @property
    def time_bounded(self) -> bool:
        """A closed loop that runs for ``duration`` seconds: how many round trips it makes is not known."""
        return not self.open_loop and self.exchange is not None and self.exchange.requests is None

    @property
    def samples(self) -> int:
        """Round trips the run will make (each process keeps them raw up to ``sample_budget``);
        for a ``time_bounded`` run, a guess of ``count`` per connection."""
        if self.open_loop:
            return int(self.rate * self.duration)
        requests = self.exchange.requests if self.exchange is not None else None
        return self.connections * (self.count if requests is None else requests)
