"""Room in the connection-tracking table between a study's cases.

Once netfilter's conntrack is loaded and loopback is tracked (Podman's port
publishing does both), every connection of a case takes a table entry, and
closing the connection does not free it: the entry lives on in TIME_WAIT for
``net.netfilter.nf_conntrack_tcp_timeout_time_wait`` (120 s by default). A
matrix that runs 100,000 connections, then 30,000 and 35,000 a minute later,
can find the table still full of the earlier cases' entries; ``c10k load``
then refuses the case (rightly: a full table drops SYNs). That is the study's
own leftover, not the server's limit, so before a case the runner waits,
bounded, for the entries to expire, and says so in the report's notes.

A case larger than the table itself is not waited for: no amount of waiting
frees room, and ``c10k load`` names the limit and the command that raises it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from c10k import limits
from c10k.text import duration_words

__all__ = ["CONNTRACK_MAX", "room_note", "too_small_note", "wait_for_room"]

CONNTRACK_MAX = "net.netfilter.nf_conntrack_max"
#: how long to wait for room: TIME_WAIT's default lifetime (120 s) and a margin
WAIT_S = 150.0


def _tracked_max() -> int:
    """The table's size when loopback connections take entries, else 0."""
    lim = limits.machine_limits()
    return lim.conntrack_max if lim.conntrack_max and lim.loopback_tracked else 0


def wait_for_room(connections: int, *, timeout_s: float = WAIT_S,
                  table_max: Callable[[], int] = _tracked_max,
                  count: Callable[[], int] = lambda: limits.sysctl_int("net.netfilter.nf_conntrack_count", 0),
                  sleep: Callable[[float], None] = time.sleep,
                  clock: Callable[[], float] = time.monotonic) -> float:
    """Wait until the table can take ``connections`` more entries; the seconds waited.

    Returns at once when loopback is not tracked, when there is room, or when
    the case is larger than the whole table; otherwise polls every second for
    at most ``timeout_s`` (then the case runs and meets the limit itself).
    """
    size = table_max()
    if not size or connections >= size or count() + connections <= size:
        return 0.0
    start = clock()
    while clock() - start < timeout_s:
        sleep(1.0)
        if count() + connections <= size:
            break
    return clock() - start


def room_note(case_number: int, waited_s: float) -> str:
    """The report's note for a case that waited for conntrack entries to expire."""
    return (f"Case {case_number} waited {duration_words(waited_s)} for the connection-tracking entries "
            f"of earlier cases to expire ({CONNTRACK_MAX}: loopback connections are tracked here).")


def too_small_note(largest: int, table_max: Callable[[], int] = _tracked_max) -> str | None:
    """A warning before a study whose largest case cannot fit the conntrack table, or None."""
    size = table_max()
    if not size or largest < size:
        return None
    return (f"{CONNTRACK_MAX} is {size:,} and loopback connections are tracked: cases of {size:,} "
            f"connections or more will be refused; raise it first: sysctl -w {CONNTRACK_MAX}={2 * largest} "
            f"(or c10k doctor -c {largest} --fix)")
