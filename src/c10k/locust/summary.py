"""The c10k ``summary.json`` of a Locust run, from the merged tallies (the contract in DESIGN.md)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from c10k.locust.histogram import LATENCY_PRECISION, RELATIVE_ERROR
from c10k.locust.tally import EchoTally

__all__ = ["build_summary", "write_summary", "default_summary_path"]


def _span(start: float, end: float) -> float:
    return round(max(0.0, end - start), 6) if math.isfinite(start) and math.isfinite(end) else 0.0


def build_summary(tally: EchoTally, *, host: str, port: int, requested: int, peak_open: int,
                  processes: int, count: int, message_bytes: int) -> dict[str, Any]:
    """The summary of a run whose users counted ``tally`` (summed over every process).

    ``requested`` is the number of Locust users asked for (one connection each);
    ``count`` the echoes per connection (0: until the run stopped). A connection
    completed when it did all its echoes, or with ``count`` 0 when it was still
    echoing without error at the end.
    """
    users = requested
    # Locust starts a lost worker's users again on the others (a worker is lost after 3 s
    # without a heartbeat, usually because it is overloaded): then more connections were
    # attempted than users asked for, and the attempts are what was requested of the server.
    requested = max(users, tally.attempted)
    errors = dict(tally.errors)
    not_started = requested - tally.attempted
    if not_started > 0:
        errors["not_started"] = not_started
    completed = tally.completed
    elapsed_s = _span(tally.message_start, tally.message_end)
    summary: dict[str, Any] = {
        "host": host,
        "port": port,
        "connections": {
            "requested": requested,
            "established": tally.established,
            "completed": completed,
            "failed": requested - completed,
            "peak_open": peak_open,
        },
        "messages": {"sent": tally.sent, "echoed": tally.echoed, "mismatched": tally.mismatched},
        "bytes": {"sent": tally.bytes_sent, "echoed": tally.bytes_echoed},
        "errors": dict(sorted(errors.items())),
        "connect_s": _span(tally.connect_start, tally.connect_end),
        "elapsed_s": elapsed_s,
        "messages_per_s": round(tally.echoed / elapsed_s, 3) if elapsed_s > 0 else 0.0,
        "latency_us": tally.latency.summary_us(),
        "latency_precision": LATENCY_PRECISION,
        "latency_relative_error": RELATIVE_ERROR,
        "ok": bool(completed == requested and not errors and tally.mismatched == 0),
        "tool": "locust",
        "locust_users": users,
        "processes": processes,
        "count": count,
        "message_bytes": message_bytes,
    }
    if requested > users:
        summary["note"] = (f"{requested} connections for {users} Locust users: a worker was lost (no heartbeat "
                           f"for 3 s, usually overloaded) and Locust started its users again on the others")
    return summary


def default_summary_path(csv_prefix: str | None) -> Path | None:
    """summary.json in the folder of Locust's ``--csv PREFIX`` files; None without --csv."""
    if not csv_prefix:
        return None
    return Path(os.path.dirname(csv_prefix) or ".") / "summary.json"


def write_summary(summary: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=1) + "\n")
    os.replace(tmp, path)
    return path
