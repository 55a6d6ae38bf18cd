"""The report's network parts: which network a study used, and how a round trip changes the results.

``network_line`` says loopback or namespaces (addresses, CPUs, link, and
what carried the link: netem on veth pairs, or the userspace delay line).
``rtt_chart`` draws messages/s and p99 against the round-trip time the link
added, per architecture, one column per connection count (the ``wan``
matrix). ``rtt_notes`` puts the closed loop's arithmetic next to it: a
connection with one message in flight completes at most one per round trip,
so N connections cannot ask for more than N / RTT messages/s, whatever the CPU.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from c10k.errors import UsageError  # noqa: E402
from c10k.study.cases import SERVERS  # noqa: E402
from c10k.study.runner import CaseResult, StudyResult  # noqa: E402
from c10k.topology.link import parse_link  # noqa: E402

__all__ = ["RTT_CHART", "RTT_CAPTION", "network_line", "rtt_of", "rtt_chart", "rtt_notes"]

RTT_CHART = "rtt.png"
RTT_CAPTION = ("Messages/s (top) and p99 response time (bottom) against the round trip the link adds "
               "between the client hosts and the server, per architecture (x: the case failed; black bar: "
               "N / RTT, the most a closed loop of N connections can ask for).")


def network_line(topology: dict[str, Any]) -> str:
    """One sentence: the network the study's cases ran over."""
    if topology.get("kind") == "container":
        dropped = topology.get("nft_tables_removed")
        tables = (f" The nftables tables that publishing made ({', '.join(dropped)}) were removed after the run."
                  if dropped else "")
        return (f"Network: loopback to a port {topology.get('engine', 'podman')} published on "
                f"{topology.get('server', '127.0.0.1')}, NATed into the server's container (its own network "
                f"namespace on the container bridge), client and server on one kernel.{tables}")
    if topology.get("kind") != "netns":
        return f"Network: loopback ({topology.get('server', '127.0.0.1')}), client and server on one kernel."
    clients = topology.get("clients") or []
    cpu = ""
    if topology.get("server_cpu") is not None:
        cpu = f" server on CPU {topology['server_cpu']}, client hosts on CPU {topology.get('client_cpu')};"
    link = (topology.get("link") or {}).get("spec") or "none"
    ports = topology.get("client_port_range")
    ports_text = f" ephemeral ports {ports[0]}–{ports[1]} per client host;" if ports else ""
    if topology.get("link_carrier") == "userspace delay line":
        line_cpu = topology.get("delay_line_cpu")
        on = f"on CPU {line_cpu}" if line_cpu is not None else "unpinned"
        where = ("network namespaces joined by a userspace delay line (one process forwarding the hosts' "
                 f"TAP frames after the link's delay, {on}; every case crossed it, 0 ms ones too)")
    else:
        where = "network namespaces on a bridge (links by netem/tbf)"
    return (f"Network: {where}: server {topology.get('server')}, "
            f"{len(clients)} client host(s) {', '.join(clients)};{cpu}{ports_text} link {link!r} each way "
            "(a case's own link, if it has one, instead).")


def rtt_of(result: CaseResult, topology: dict[str, Any]) -> float:
    """Round-trip milliseconds the link added for this case (0 on loopback)."""
    spec = result.case.link if result.case.link is not None else (topology.get("link") or {}).get("spec")
    try:
        return parse_link(spec).rtt_ms
    except UsageError:
        return 0.0


def _mps(r: CaseResult) -> float | None:
    v = (r.summary or {}).get("messages_per_s")
    return float(v) if v else None


def _p99_ms(r: CaseResult) -> float | None:
    v = ((r.summary or {}).get("latency_us") or {}).get("p99")
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v) / 1000.0


def _closed(study: StudyResult) -> list[CaseResult]:
    return [r for r in study.results if not r.case.fixed_rate and r.summary]


def rtt_chart(study: StudyResult, path: Path) -> bool:
    """Draw the chart when the closed-loop cases ran at two or more round trips; say whether it did."""
    results = _closed(study)
    rtts = sorted({rtt_of(r, study.topology) for r in results})
    if len(rtts) < 2:
        return False
    counts = sorted({r.case.connections for r in results})
    fig, axes = plt.subplots(2, len(counts), figsize=(5.5 * len(counts), 8), squeeze=False)
    x_of = {rtt: i for i, rtt in enumerate(rtts)}
    palette = {name: plt.get_cmap("tab10")(i) for i, name in enumerate(SERVERS)}
    for col, n in enumerate(counts):
        for row, (metric, label) in enumerate(((_mps, "messages/s"), (_p99_ms, "p99 (ms, log scale)"))):
            ax = axes[row][col]
            by_server: dict[str, list[tuple[int, float, bool]]] = defaultdict(list)
            for r in results:
                v = metric(r)
                if r.case.connections == n and v:
                    by_server[r.case.server].append((x_of[rtt_of(r, study.topology)], v, r.passed))
            for server, points in by_server.items():
                points.sort()
                color = palette.get(server, "black")
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=color, label=server)
                bad = [p for p in points if not p[2]]
                ax.scatter([p[0] for p in bad], [p[1] for p in bad], marker="x", s=80, color="#b00020", zorder=3)
            if row == 0:
                _draw_ceiling(ax, n, rtts, max((p[1] for pts in by_server.values() for p in pts), default=0.0))
            ax.set_xticks(range(len(rtts)), [f"{rtt:g} ms" for rtt in rtts])
            ax.set_xlabel("round trip added by the link")
            ax.set_ylabel(label)
            if row == 1:
                ax.set_yscale("log")
            ax.set_title(f"{n:,} connections", fontsize=10)
            ax.grid(alpha=0.3)
            if by_server and row == 0 and col == 0:
                ax.legend(fontsize=8)
    fig.suptitle("Round-trip time against throughput and p99, closed loop", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _draw_ceiling(ax: Any, connections: int, rtts: list[float], highest: float) -> None:
    # N / RTT: what a closed loop of N connections can ask for at most. Drawn
    # only where it is near the measured figures, or it would flatten them.
    points = [(i, connections / (rtt / 1000.0)) for i, rtt in enumerate(rtts) if rtt > 0]
    points = [(i, c) for i, c in points if c <= 1.5 * highest]
    if points:
        ax.scatter([p[0] for p in points], [p[1] for p in points], marker="_", s=600, color="black", zorder=4,
                   label="N / RTT ceiling")


def rtt_notes(study: StudyResult) -> list[str]:
    """Paragraphs on what the largest round trip means for each connection count."""
    results = _closed(study)
    rtts = sorted({rtt_of(r, study.topology) for r in results})
    if len(rtts) < 2 or rtts[-1] <= 0:
        return []
    top = rtts[-1]
    notes = []
    for n in sorted({r.case.connections for r in results}):
        at = [r for r in results if r.case.connections == n]
        base = max((_mps(r) or 0 for r in at if rtt_of(r, study.topology) == rtts[0]), default=0.0)
        slow = [(r, _mps(r) or 0.0) for r in at if rtt_of(r, study.topology) == top]
        if not slow:
            continue
        ceiling = n / (top / 1000.0)
        best, best_mps = max(slow, key=lambda t: t[1])
        verdict = ("so the round trip, not the server's CPU, sets the pace: the fastest server at "
                   f"{rtts[0]:g} ms did {base:,.0f}/s, more than the loop can ask for"
                   if base > ceiling else
                   f"above what the fastest server did at {rtts[0]:g} ms ({base:,.0f}/s), so a server "
                   "can still be kept busy and its CPU, not the round trip, sets the pace")
        notes.append(f"With a {top:g} ms round trip, {n:,} connections in a closed loop (one message in "
                     f"flight each) can ask for at most {n:,} / {top / 1000:g} s = {ceiling:,.0f} "
                     f"messages/s, {verdict}. Measured at {top:g} ms: {best.case.server} "
                     f"{best_mps:,.0f}/s ({best_mps / ceiling:.0%} of that ceiling).")
    return notes
