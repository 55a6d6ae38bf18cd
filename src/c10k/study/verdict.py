"""Decide a case's verdict, and say why in plain words, from its evidence.

Pure logic, no I/O: the runner gathers ``Evidence`` (the server's stats file,
its exit status and stderr, the load summary, the sampler's figures) and
``decide`` turns it into ("passed" | "failed", reason). The server-side cause
comes first in a reason (it is why the case failed); what the client saw
follows in parentheses.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Any

from c10k import capacity
from c10k.servers.refusals import Refusal

__all__ = ["Evidence", "decide", "PASSED_RESULT"]

PASSED_RESULT = "No errors observed on either side, log file generated successfully"

# Close to the limit counts as reaching it: a process also holds its listener,
# an epoll descriptor, pipes and the interpreter's own files.

# Tracebacks a server may leave, and the refusal (or cause) each one means.
_STDERR_CAUSES: tuple[tuple[str, str], ...] = (
    ("can't start new thread", Refusal.THREAD_START.words),
    ("filedescriptor out of range in select", Refusal.FD_SETSIZE.words),
    ("too many open files", Refusal.DESCRIPTOR_LIMIT.words),
    ("memoryerror", "the server ran out of memory"),
    ("cannot allocate memory", "the server ran out of memory"),
)


@dataclass
class Evidence:
    """Everything the runner observed about one case.

    Attributes:
        connections: connections the case asked for.
        nofile: RLIMIT_NOFILE of the server processes.
        started: the server printed its listening line.
        exit_status: the server's exit status (negative: killed by that signal),
            None if it never exited.
        exited_early: the server exited before it was told to stop.
        killed: the server ignored SIGTERM and had to be killed.
        stderr_tail: the last lines of the server's stderr.
        stats: the server's --stats-file JSON, or None if it wrote none.
        load_status: the load client's exit status, None if it was stopped.
        load_timed_out: the runner stopped the load after the case's timeout.
        load_timeout_s: that timeout.
        connect_stalled: the runner stopped the load because the server never
            held every connection within ``connect_deadline_s``.
        held_connections: the most descriptors the server held (summed).
        load_stderr_tail: the last lines of the load client's stderr.
        summary: the load's summary.json, or None.
        usage: the sampler's figures (keys of ``sampler.Usage``).
    """

    connections: int
    nofile: int = 20000
    started: bool = True
    exit_status: int | None = 0
    exited_early: bool = False
    killed: bool = False
    stderr_tail: list[str] = field(default_factory=list)
    stats: dict[str, Any] | None = None
    load_status: int | None = 0
    load_timed_out: bool = False
    load_timeout_s: float = 0.0
    connect_stalled: bool = False
    connect_deadline_s: float = 0.0
    held_connections: int = 0
    load_stderr_tail: list[str] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    usage: dict[str, Any] = field(default_factory=dict)


def _exit_words(status: int) -> str:
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"exited with status {status}"


def _last_error_line(lines: list[str]) -> str:
    for line in reversed(lines):
        text = line.strip()
        if text and not text.startswith(("File ", "Traceback", "^", "~")):
            return text[:200]
    return ""


def _refusal_causes(ev: Evidence) -> list[str]:
    refused = (ev.stats or {}).get("refused") or {}
    n = ev.connections
    causes = []
    for reason in Refusal:
        count = int(refused.get(reason.value) or 0)
        if count > 0:
            causes.append(f"{reason.explain(ev.nofile)}: {count} of {n} connections refused")
    known = {reason.value for reason in Refusal}
    for key, count in refused.items():
        if key not in known and count:
            causes.append(f"server refused {count} of {n} connections ({key})")
    return causes


def _stderr_causes(ev: Evidence) -> list[str]:
    text = "\n".join(ev.stderr_tail).lower()
    found = []
    for needle, cause in _STDERR_CAUSES:
        if needle in text:
            cause = cause.format(nofile=ev.nofile)
            if cause not in found:
                found.append(cause)
    return found


# The load's error keys (errno names and its own), in words.
_ERROR_WORDS = {
    "closed_early": "closed by the server before their echoes",
    "ECONNRESET": "reset",
    "timeout": "timed out",
    "ECONNREFUSED": "refused at connect",
    "mismatch": "mismatched",
}


def _client_symptoms(ev: Evidence) -> list[str]:
    s = ev.summary
    if s is None:
        return []
    out = []
    conns = s.get("connections") or {}
    established = conns.get("established")
    if established is not None and established < ev.connections:
        out.append(f"{established} of {ev.connections} connections established")
    errors = {k: v for k, v in (s.get("errors") or {}).items() if v}
    for key, count in sorted(errors.items(), key=lambda kv: -kv[1]):
        out.append(f"{count} {_ERROR_WORDS.get(key, key)}")
    msgs = s.get("messages") or {}
    if msgs.get("mismatched") and "mismatch" not in errors:
        out.append(f"{msgs['mismatched']} mismatched")
    return out


def _is_timeout_symptom(ev: Evidence) -> bool:
    errors = (ev.summary or {}).get("errors") or {}
    timeouts = sum(v for k, v in errors.items() if "timeout" in k.lower() or "timedout" in k.lower())
    return timeouts > 0 and timeouts >= sum(errors.values()) / 2


def _load_clean(ev: Evidence) -> bool:
    s = ev.summary
    if ev.load_status != 0 or ev.load_timed_out or s is None:
        return False
    conns = s.get("connections") or {}
    msgs = s.get("messages") or {}
    errors = {k: v for k, v in (s.get("errors") or {}).items() if v}
    return (
        not errors
        and conns.get("failed", 0) == 0
        and conns.get("established", ev.connections) >= ev.connections
        and msgs.get("mismatched", 0) == 0
        and msgs.get("echoed", 0) >= msgs.get("sent", 0)
    )


def decide(ev: Evidence) -> tuple[str, str]:
    """The verdict and its reason.

    Returns:
        ("passed", PASSED_RESULT) when every connection was established, every
        message came back byte-exact and the server stopped cleanly; otherwise
        ("failed", reason) with the most specific cause the evidence supports.
    """
    if not ev.started:
        detail = _last_error_line(ev.stderr_tail)
        what = _exit_words(ev.exit_status) if ev.exit_status is not None else "never said it was listening"
        return "failed", f"server did not start: it {what}" + (f" ({detail})" if detail else "")

    if _load_clean(ev) and not ev.exited_early:
        if ev.killed:
            return "failed", "server did not stop on SIGTERM and was killed (all echoes were correct)"
        if ev.exit_status not in (0, None):
            return "failed", (f"server {_exit_words(ev.exit_status)} when stopped "
                              "(all echoes were correct)")
        return "passed", PASSED_RESULT + _held_note(ev)

    causes = _refusal_causes(ev)
    for cause in _stderr_causes(ev):
        if not any(c.startswith(cause) for c in causes):
            causes.append(cause)
    per_process = int(ev.usage.get("peak_fds_per_process") or 0)
    limit_words = Refusal.DESCRIPTOR_LIMIT.explain(ev.nofile)
    near_limit = per_process >= capacity.connections_per_process(ev.nofile)
    if near_limit and not any(c.startswith(limit_words) for c in causes):
        causes.append(f"{limit_words}: a server process held {per_process} descriptors")
    if ev.exited_early and ev.exit_status is not None:
        detail = _last_error_line(ev.stderr_tail)
        causes.append(f"server {_exit_words(ev.exit_status)} during the load"
                      + (f" ({detail})" if detail else ""))

    symptoms = _client_symptoms(ev)
    if ev.connect_stalled:
        symptoms.insert(0, f"the server held at most {ev.held_connections} descriptors, not all "
                           f"{ev.connections} connections, within {ev.connect_deadline_s:.0f} s; "
                           "the load was stopped")
    elif ev.load_timed_out:
        symptoms.insert(0, f"the load did not finish within {ev.load_timeout_s:.0f} s")
    elif ev.summary is None and not ev.connect_stalled:
        detail = _last_error_line(ev.load_stderr_tail)
        symptoms.append(f"load client exited with status {ev.load_status} without a summary"
                        + (f": {detail}" if detail else ""))

    if not causes:
        if ev.connect_stalled:
            causes.append("the server did not take every connection in time")
        elif ev.load_timed_out or _is_timeout_symptom(ev):
            causes.append("timeouts: the server stopped answering in time")
        elif ev.summary is None:
            causes.append("load client failed")
        else:
            causes.append("the client saw errors")
    if ev.killed:
        causes.append(f"server did not stop on SIGTERM and was killed{'' if ev.stats else ' (no stats file)'}")
    reason = "; ".join(causes)
    if symptoms:
        reason += f" (client: {', '.join(symptoms)})"
    return "failed", reason


def _held_note(ev: Evidence) -> str:
    """Said of a passed case whose server never held every connection at once: the
    client counts a connection in the server's listen backlog as open, the server does not."""
    peak = (ev.stats or {}).get("peak_concurrent")
    if isinstance(peak, int) and 0 <= peak < ev.connections:
        return (f"; but the server held at most {peak:,} of the {ev.connections:,} connections at once "
                "(the others waited in its listen backlog)")
    return ""
