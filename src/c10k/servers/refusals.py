"""Why a server closes a connection at once, and the one path that does it.

``Refusal`` is the vocabulary: each reason's key (as the stats file and the
study's results name it) and its plain words (as the server's log and the
study's verdict say it). ``Refusals`` is the bookkeeping every server shares:
``refuse`` counts a refusal and logs it once per burst, ``full`` is the
--max-connections check. Free of sockets, so the study imports it cheaply.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from enum import Enum

from c10k.limits import FD_SETSIZE

__all__ = ["Refusal", "Refusals", "log"]


class Refusal(str, Enum):
    """A reason to close a connection at once; its value is the key the stats file uses."""

    FD_SETSIZE = "fd_setsize"
    THREAD_START = "thread_start"
    DESCRIPTOR_LIMIT = "descriptor_limit"
    MAX_CONNECTIONS = "max_connections"
    NO_CAPACITY = "no_capacity"

    @property
    def words(self) -> str:
        """The reason in plain words, with ``{nofile}`` where the descriptor limit goes."""
        return _WORDS[self]

    def explain(self, nofile: int | str = "RLIMIT_NOFILE") -> str:
        """The reason in plain words; ``nofile`` is the descriptor limit it concerns."""
        return self.words.format(nofile=nofile)


_WORDS = {
    Refusal.FD_SETSIZE: f"select() cannot watch descriptors >= FD_SETSIZE ({FD_SETSIZE})",
    Refusal.THREAD_START: "threads could not start",
    Refusal.DESCRIPTOR_LIMIT: "process descriptor limit ({nofile}) reached",
    Refusal.MAX_CONNECTIONS: "the server's --max-connections cap was reached",
    Refusal.NO_CAPACITY: "no worker had room for more connections",
}


def log(message: str) -> None:
    """One line on stderr, prefixed so it can be told from the load's output."""
    print(f"c10k serve: {message}", file=sys.stderr, flush=True)


class Refusals:
    """Counts refusals into ``counts`` and logs them once per burst, not once per connection.

    The first refusal of a burst is logged at once with its reason; when no
    refusal of that reason has come for ``quiet_s`` seconds, ``tick`` logs how
    many the burst held. A flood of 10,000 refused connections costs two lines.

    Args:
        counts: the server's (or worker's) ``Stats.refused``.
        max_connections: the --max-connections cap, 0 for none.
        nofile: the process's descriptor limit, for the log's words.
    """

    def __init__(self, counts: Counter[str], max_connections: int = 0, nofile: int | str = "RLIMIT_NOFILE",
                 quiet_s: float = 1.0) -> None:
        self.counts = counts
        self.max_connections = max_connections
        self.nofile = nofile
        self.quiet_s = quiet_s
        self._bursts: dict[Refusal, list[float]] = {}  # reason -> [count, last time]

    def refuse(self, reason: Refusal, detail: str = "", count: int = 1) -> None:
        """Count ``count`` connections closed at once for ``reason``; the caller closes them."""
        self.counts[reason.value] += count
        now = time.monotonic()
        burst = self._bursts.get(reason)
        if burst is None:
            words = reason.explain(self.nofile) + (f" ({detail})" if detail else "")
            log(f"refusing connections: {words}")
            self._bursts[reason] = [count, now]
        else:
            burst[0] += count
            burst[1] = now

    def full(self, live: int) -> bool:
        """True, and the refusal counted, when ``live`` connections already fill --max-connections."""
        if self.max_connections and live >= self.max_connections:
            self.refuse(Refusal.MAX_CONNECTIONS, f"--max-connections {self.max_connections}")
            return True
        return False

    def tick(self, now: float) -> None:
        """Log the bursts that have ended (call about once a second)."""
        for reason, (count, last) in list(self._bursts.items()):
            if now - last >= self.quiet_s:
                log(f"{int(count)} connection(s) refused in this burst ({reason.value})")
                del self._bursts[reason]

    def flush(self) -> None:
        self.tick(float("inf"))
