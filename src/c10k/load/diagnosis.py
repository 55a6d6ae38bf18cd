"""Why connections timed out: the server never accepted them, or accepted and did not answer.

From the client alone both look the same: a connection whose handshake
completed, whose message went out, and that got no byte back. What tells them
apart is on the server's host: a listener whose accept queue is full drops
handshakes (``ListenOverflows``/``ListenDrops`` in /proc/net/netstat, read
before and after the run when the target is on this host), and a listener that
never accepts keeps its clients in its queue (its line in /proc/net/tcp, read
after the run; both in ``netstat.py``). A unix-domain socket's full queue is
answered at once: connect() fails with EAGAIN, which the ramp retries and
counts (``queue_full``). So:

* ``never_accepted``: timeouts with no byte back (or connects that never
  completed) while the accept queue overflowed, or still holds connections;
* ``accepted_no_answer``: connections got no byte back, no queue overflowed
  on this host and none is left waiting in the listener's;
* ``answered_then_stalled``: the server answered some messages, then stopped;
* ``connect_unanswered``: connects timed out and no queue overflowed (a
  firewall, a lost route, a host that is down);
* ``unknown``: the target is on another host, whose counters are not readable here.

``diagnose`` is pure (evidence in, verdict out) and tested on made-up evidence;
``ListenWatch`` gathers the evidence around a run.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from c10k.netstat import accept_queue, is_local_address, listen_counters
from c10k.text import plural

__all__ = ["TimeoutEvidence", "diagnose", "ListenWatch"]


@dataclass(frozen=True)
class TimeoutEvidence:
    """What a run saw of its timeouts, and what the kernel counted meanwhile.

    Attributes:
        connect_timeouts: connects that did not complete within --timeout.
        silent: established connections that timed out without one byte back.
        stalled: connections that timed out after some bytes came back.
        listen_overflows, listen_drops: the host's counters' growth over the
            run; None when the target is not on this host (or not TCP).
        unaccepted: connections left in the target listener's accept queue
            after the run; None when not read (not local, no timeouts) or not found.
        queue_full: unix connects refused with EAGAIN (the accept queue was full).
        unix: the target is a unix-domain socket.
    """

    connect_timeouts: int = 0
    silent: int = 0
    stalled: int = 0
    listen_overflows: int | None = None
    listen_drops: int | None = None
    unaccepted: int | None = None
    queue_full: int = 0
    unix: bool = False


def _counts(e: TimeoutEvidence) -> str:
    parts = []
    if e.connect_timeouts:
        parts.append(f"{plural(e.connect_timeouts, 'connect')} timed out")
    if e.silent:
        parts.append(f"{plural(e.silent, 'connection')} got no byte back")
    if e.stalled:
        parts.append(f"{plural(e.stalled, 'connection')} stalled after a reply")
    return ", ".join(parts)


def diagnose(e: TimeoutEvidence) -> dict[str, Any]:
    """The verdict on a run's timeouts: ``{"verdict": str | None, "reason": str, **evidence}``."""
    out: dict[str, Any] = {**asdict(e)}
    del out["unix"]
    quiet = e.connect_timeouts + e.silent
    if quiet + e.stalled == 0:
        return {"verdict": None, "reason": "no timeouts", **out}
    counts = _counts(e)
    if e.unix:
        overflowed = e.queue_full > 0
        evidence = f"connect() was turned away {plural(e.queue_full, 'time')} (EAGAIN: its accept queue was full)"
    else:
        overflowed = bool(e.listen_overflows or e.listen_drops or e.unaccepted)
        evidence = (f"this host counted ListenOverflows +{e.listen_overflows or 0:,}, "
                    f"ListenDrops +{e.listen_drops or 0:,} during the run")
        if e.unaccepted:
            evidence += f", and its listener still holds {plural(e.unaccepted, 'connection')} never accepted"
    known = e.unix or e.listen_overflows is not None
    if quiet and overflowed:
        verdict, why = "never_accepted", f"the server never accepted: {evidence}; {counts}"
    elif not known:
        verdict, why = "unknown", (f"{counts}; the target is not on this host, so whether its accept queue "
                                   "overflowed cannot be read here (nstat TcpExtListenOverflows on the server)")
    elif e.silent:
        verdict, why = "accepted_no_answer", (f"the server accepted but did not answer: {counts}, and no "
                                              "accept queue overflowed or was left waiting")
    elif e.connect_timeouts:
        verdict, why = "connect_unanswered", (f"connects went unanswered though no accept queue overflowed "
                                              f"(a firewall, a lost route, a host that is down): {counts}")
    else:
        verdict, why = "answered_then_stalled", f"the server answered, then stopped: {counts}"
    return {"verdict": verdict, "reason": why, **out}


class ListenWatch:
    """The host's ListenOverflows/ListenDrops before a run, for their growth after it.

    Only for a TCP target on this host: another host's queue is not counted
    here, and a unix socket's full queue shows as EAGAIN instead.
    """

    def __init__(self, family: int, address: tuple | str) -> None:
        self.address = address
        self.unix = family == socket.AF_UNIX
        local = not self.unix and is_local_address(family, address[0])
        self.before = listen_counters() if local else None

    def diagnose(self, counters: Iterable[dict[str, int]], errors: dict[str, int]) -> dict[str, Any]:
        """The verdict, from every load process's counters and the run's error counts."""
        counters = list(counters)
        silent = sum(c.get("silent_timeouts", 0) for c in counters)
        after = listen_counters() if self.before is not None else None
        grew = {k: max(0, after[k] - self.before[k]) for k in after} if after and self.before else {}
        connect_timeouts = errors.get("connect_timeout", 0)
        unaccepted = None
        if self.before is not None and (silent or connect_timeouts):  # /proc/net/tcp only when it matters
            unaccepted = accept_queue(self.address[0], self.address[1])  # type: ignore[arg-type]
        return diagnose(TimeoutEvidence(
            connect_timeouts=connect_timeouts, silent=silent, unaccepted=unaccepted,
            stalled=max(0, errors.get("timeout", 0) - silent),
            listen_overflows=grew.get("ListenOverflows"), listen_drops=grew.get("ListenDrops"),
            queue_full=sum(c.get("queue_full", 0) for c in counters), unix=self.unix))
