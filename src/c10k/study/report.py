"""Write a study's report: REPORT.md, report.html, results.json and PNG charts.

The Markdown keeps the original study's test-case table (Test Case | Scenario |
Expected Behavior | Actual Results | Status) and adds a results table and
charts: mean response time per scenario (the original's bar graph, grouped by
connection count), latency percentiles per architecture, and server CPU per
message and memory against connections. The HTML page holds the same tables
with the charts inlined, so it can be mailed as one file. (About 500 lines: the
two renderings of the same tables read best side by side; the network and
time-series charts live in their own modules.)
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from c10k.study.cases import EXPECTED_BEHAVIOR, SERVERS  # noqa: E402
from c10k.study.network_report import RTT_CAPTION, RTT_CHART, network_line, rtt_chart, rtt_notes  # noqa: E402
from c10k.study.runner import CaseResult, StudyResult  # noqa: E402
from c10k.study.timeseries_report import TIMESERIES_CAPTION, TIMESERIES_CHART, timeseries_chart  # noqa: E402

__all__ = ["write_report", "results_rows", "testcase_rows", "cpu_per_message_us", "CHARTS"]

CHARTS = ("mean_response_time.png", "latency_percentiles.png", "cpu_per_message.png",
          "memory_per_connection.png")

TESTCASE_HEADER = ("Test Case", "Scenario", "Expected Behavior", "Actual Results", "Status")
RESULTS_HEADER = ("Test Case", "Server", "Connections", "Held at once", "Load", "Status", "Mean (ms)",
                  "p50 (ms)", "p99 (ms)", "Max (ms)", "Messages/s", "Peak memory (MiB)", "Memory/connection (KiB)",
                  "Threads", "Descriptors", "CPU/message (µs)")

# Why a case here can end differently from the original's (shown next to it).
_AGAINST_ORIGINAL = {
    ("threaded", 30000): "the original raised ulimit -n to 1,000,000; here RLIMIT_NOFILE is 20,000 "
                         "per process (hard), and a thread-per-connection server is one process, "
                         "so it meets the descriptor limit before any thread limit",
    ("threaded", 35000): "the original ran out of threads; here the descriptor limit (20,000 per "
                         "process) comes first",
    ("select", 2000): "select() cannot watch a descriptor >= FD_SETSIZE (1024); the original's "
                      "server crashed, ours refuses those connections and keeps serving the rest",
}

_PALETTE = {name: plt.get_cmap("tab10")(i) for i, name in enumerate(SERVERS)}
_PERCENTILES = (("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p999", "p99.9"), ("max", "max"))


def _latency_ms(r: CaseResult, key: str) -> float | None:
    lat = (r.summary or {}).get("latency_us") or {}
    v = lat.get(key)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v) / 1000.0


def _echoed(r: CaseResult) -> int:
    return int(((r.summary or {}).get("messages") or {}).get("echoed") or 0)


#: Below this much CPU time the kernel's accounting (10 ms ticks) says little.
_MIN_CPU_S = 0.05


def cpu_per_message_us(r: CaseResult) -> float | None:
    """Server CPU time (user + system, all its processes) per echoed message, in µs.

    Counted from the moment the server held every connection when the sampler
    saw it (so accepting them is left out), else over the whole load. None when
    too little CPU was used to measure (a few hundred messages).
    """
    n = _echoed(r)
    cpu = r.usage.cpu_connected_s if r.usage.cpu_connected_s is not None else r.usage.cpu_s
    return cpu / n * 1e6 if n and cpu >= _MIN_CPU_S else None


def memory_per_connection_kib(r: CaseResult) -> float | None:
    """What the server's memory grew by under the load, per connection, in KiB.

    None below 100 connections, where allocator noise outweighs the connections.
    """
    u = r.usage
    if not u.samples or r.case.connections < 100:
        return None
    # Divide by the connections the server really held: its own count, else its descriptors.
    peak = (r.stats or {}).get("peak_concurrent") or min(r.case.connections, max(1, u.peak_fds))
    return max(0, u.peak_rss_bytes - u.idle_rss_bytes) / max(1, peak) / 1024


def _fmt(v: float | None, digits: int = 3) -> str:
    if v is None:
        return "–"
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def testcase_rows(results: Sequence[CaseResult]) -> list[tuple[str, ...]]:
    """The original's test-case table, one row per case."""
    rows: list[tuple[str, ...]] = []
    for r in results:
        status = f"{'Passed' if r.passed else 'Failed'}, see Results ({r.case.number})"
        rows.append((str(r.case.number), r.case.scenario, EXPECTED_BEHAVIOR, r.reason, status))
    return rows


def _held(r: CaseResult) -> str:
    """The most connections the server itself held at once (its own count, not the client's)."""
    peak = (r.stats or {}).get("peak_concurrent")
    return f"{peak:,}" if isinstance(peak, int) else "–"


def results_rows(results: Sequence[CaseResult]) -> list[tuple[str, ...]]:
    """The results table: response times, throughput and what the server used."""
    rows: list[tuple[str, ...]] = []
    for r in results:
        s = r.summary or {}
        rate = s.get("messages_per_s")
        u = r.usage
        rows.append((
            str(r.case.number), r.case.server, f"{r.case.connections:,}", _held(r), r.case.load_words, r.status,
            _fmt(_latency_ms(r, "mean")), _fmt(_latency_ms(r, "p50")), _fmt(_latency_ms(r, "p99")),
            _fmt(_latency_ms(r, "max")), _fmt(float(rate)) if rate else "–",
            _fmt(u.peak_rss_bytes / 2**20) if u.samples else "–",
            _fmt(memory_per_connection_kib(r)),
            str(u.peak_threads) if u.samples else "–",
            str(u.peak_fds) if u.samples else "–",
            _fmt(cpu_per_message_us(r)),
        ))
    return rows


def _against_original_rows(results: Sequence[CaseResult]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for r in results:
        if r.case.original is None:
            continue
        same = r.case.original == r.status
        note = "as in the original" if same else _AGAINST_ORIGINAL.get(
            (r.case.server, r.case.connections), r.reason)
        if same and (r.case.server, r.case.connections) in _AGAINST_ORIGINAL and not r.passed:
            note = f"as in the original: {_AGAINST_ORIGINAL[(r.case.server, r.case.connections)]}"
        rows.append((str(r.case.number), r.case.scenario, r.case.original.capitalize(),
                     r.status.capitalize(), note))
    return rows


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --- charts -----------------------------------------------------------------

_COUNT_TICKS = FuncFormatter(lambda v, _pos: f"{v:,.0f}" if v >= 1 else ("0" if v == 0 else ""))


def _count_axis(ax: Any, largest: int) -> None:
    ax.set_xscale("symlog", linthresh=1)
    ax.xaxis.set_major_formatter(_COUNT_TICKS)
    ax.set_xlim(0.7, max(10, largest) * 1.6)


def _servers_in(results: Sequence[CaseResult]) -> list[str]:
    return list(dict.fromkeys(r.case.server for r in results))


def _ms_label(v: float) -> str:
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:.2g}" if v < 10 else f"{v:.0f}"


def _chart_mean_response(results: Sequence[CaseResult], path: Path) -> None:
    """The original's bar graph: mean response time per scenario, grouped by connections."""
    counts = sorted({r.case.connections for r in results})
    servers = _servers_in(results)
    widest = max(sum(1 for r in results if r.case.connections == c) for c in counts)
    fig, ax = plt.subplots(figsize=(min(16.0, max(8.0, 0.9 * len(counts) + 0.22 * len(results))), 5.8))
    means = [v for r in results if (v := _latency_ms(r, "mean"))]
    lowest, highest = min(means, default=0.01), max(means, default=1.0)
    width = 0.84 / widest
    for i, count in enumerate(counts):
        group = sorted((r for r in results if r.case.connections == count),
                       key=lambda r: servers.index(r.case.server))
        for j, r in enumerate(group):
            # Only the servers that ran at this count, centred on its tick.
            x = i + (j - (len(group) - 1) / 2) * width
            mean = _latency_ms(r, "mean")
            color = _PALETTE.get(r.case.server, "grey")
            if mean is not None:
                ax.bar(x, mean, width * 0.92, color=color, alpha=1.0 if r.passed else 0.45,
                       hatch=None if r.passed else "///", edgecolor="black" if not r.passed else color,
                       linewidth=0.6)
                ax.text(x, mean * 1.08, _ms_label(mean) + (" ✗" if not r.passed else ""), ha="center",
                        va="bottom", rotation=90, fontsize=7,
                        color="#b00020" if not r.passed else "#333333")
            elif not r.passed:
                # No response times to show: mark the failure with the server's name.
                ax.text(x, lowest / 1.9, f"✗ {r.case.server}", ha="center", va="bottom", rotation=90,
                        color=color, fontsize=7.5, fontweight="bold")
    ax.set_yscale("log")
    ax.set_ylim(lowest / 2, highest * 12)
    ax.set_xticks(range(len(counts)), [f"{c:,}" for c in counts])
    ax.set_xlim(-0.6, len(counts) - 0.4)
    ax.set_xlabel("concurrent connections")
    ax.set_ylabel("mean response time (ms, log scale)")
    ax.set_title("Mean response time per scenario (labels in ms)")
    handles = [Patch(color=_PALETTE.get(s, "grey"), label=s) for s in servers]
    handles.append(Patch(facecolor="white", edgecolor="black", hatch="///", label="failed (✗)"))
    ax.grid(axis="y", which="major", alpha=0.3)
    ncol = min(len(handles), max(4, int(fig.get_figwidth() / 1.5)))
    legend_rows = math.ceil(len(handles) / ncol)
    fig.tight_layout(rect=(0, 0.035 + 0.045 * legend_rows, 1, 1))
    fig.legend(handles=handles, ncol=ncol, fontsize=8.5, loc="lower center", frameon=False)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _chart_percentiles(results: Sequence[CaseResult], path: Path) -> None:
    """One panel per architecture: p50 .. max response time against connections."""
    servers = _servers_in(results)
    cols = min(4, len(servers))
    rows = math.ceil(len(servers) / cols)
    height = 3.0 * rows + 1.0
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols + 0.6, height),
                             sharey=True, squeeze=False)
    colors = plt.get_cmap("viridis")
    for ax, server in zip(axes.flat, servers, strict=False):
        mine = sorted((r for r in results if r.case.server == server), key=lambda r: r.case.connections)
        for i, (key, label) in enumerate(_PERCENTILES):
            pts = [(r.case.connections, v, r.passed) for r in mine if (v := _latency_ms(r, key)) is not None]
            if not pts:
                continue
            xs, ys, ok = zip(*pts, strict=True)
            shade = colors(i / (len(_PERCENTILES) - 1))
            ax.plot(xs, ys, "-", color=shade, label=label, linewidth=1.6)
            good = [(x, y) for x, y, o in zip(xs, ys, ok, strict=True) if o]
            if good:
                gx, gy = zip(*good, strict=True)
                ax.scatter(gx, gy, color=shade, s=14, zorder=3)
            bad = [(x, y) for x, y, o in zip(xs, ys, ok, strict=True) if not o]
            if bad:
                bx, by = zip(*bad, strict=True)
                ax.scatter(bx, by, marker="x", color="#b00020", s=40, zorder=4)
        ax.set_title(server, color=_PALETTE.get(server, "black"), fontweight="bold")
        _count_axis(ax, max(r.case.connections for r in results))
        ax.tick_params(axis="x", labelsize=7)
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="major")
        ax.set_xlabel("connections")
    for ax in axes[:, 0]:
        ax.set_ylabel("response time (ms)")
    for ax in list(axes.flat)[len(servers):]:
        ax.axis("off")
    handles = [Line2D([], [], color=colors(i / (len(_PERCENTILES) - 1)), label=label)
               for i, (_, label) in enumerate(_PERCENTILES)]
    handles.append(Line2D([], [], marker="x", color="#b00020", linestyle="", label="case failed"))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.75 / height))
    fig.suptitle("Response-time percentiles per architecture", fontsize=13, y=1 - 0.08 / height, va="top")
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=9, frameon=False,
               bbox_to_anchor=(0.5, 1 - 0.38 / height))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _chart_metric(panels: Sequence[tuple[Sequence[CaseResult], str]], path: Path, metric: Any,
                  ylabel: str, title: str, note: str, log_y: bool = False) -> None:
    # Each panel its own scale: a fixed rate costs select() and poll() far more per message.
    fig, axes = plt.subplots(1, len(panels), figsize=(9 if len(panels) == 1 else 13, 5.4), squeeze=False)
    largest = max(r.case.connections for results, _ in panels for r in results)
    for ax, (results, subtitle) in zip(axes[0], panels, strict=True):
        for server in _servers_in(results):
            pts = sorted((r.case.connections, v, r.passed) for r in results
                         if r.case.server == server and (v := metric(r)) is not None and (v > 0 or not log_y))
            if not pts:
                continue
            xs, ys, ok = zip(*pts, strict=True)
            color = _PALETTE.get(server, "grey")
            ax.plot(xs, ys, "-o", color=color, label=server, markersize=4, linewidth=1.8)
            bad = [(x, y) for x, y, o in zip(xs, ys, ok, strict=True) if not o]
            if bad:
                bx, by = zip(*bad, strict=True)
                ax.scatter(bx, by, marker="x", color="#b00020", s=60, zorder=4)
        _count_axis(ax, largest)
        if log_y:
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        ax.set_xlabel("concurrent connections (log scale)")
        if subtitle:
            ax.set_title(subtitle, fontsize=10)
        ax.grid(alpha=0.3)
        handles, _labels = ax.get_legend_handles_labels()
        handles.append(Line2D([], [], marker="x", color="#b00020", linestyle="", label="case failed"))
        ax.legend(handles=handles, fontsize=9, loc="upper left")
        ax.set_ylabel(ylabel)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.text(0.5, 0.01, note, ha="center", va="bottom", fontsize=8.5, color="#555555")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write_charts(results: Sequence[CaseResult], out_dir: Path) -> list[str]:
    with_data = [r for r in results if r.summary or r.usage.samples]
    if not with_data:
        return []
    # The original's charts are of its closed loop; fixed-rate cases get their own CPU panel.
    closed_only = [r for r in with_data if not r.case.fixed_rate]
    fixed = [r for r in with_data if r.case.fixed_rate]
    closed = closed_only or with_data
    _chart_mean_response(closed, out_dir / CHARTS[0])
    _chart_percentiles(closed, out_dir / CHARTS[1])
    panels: list[tuple[Sequence[CaseResult], str]] = []
    if closed_only:
        panels.append((closed_only, "closed loop: every connection always busy"))
    if fixed:
        rate = fixed[0].case.rate or 0
        panels.append((fixed, f"fixed rate: {rate:,} messages/s over all connections (most idle)"))
    # Log scale: the thread-per-connection server pays milliseconds per message
    # where the others pay microseconds; a linear axis would flatten them all.
    _chart_metric(panels, out_dir / CHARTS[2], cpu_per_message_us, "server CPU per message (µs, log scale)",
                  "Server CPU per echoed message against connections",
                  "user + system time of every server process, from the moment it held every "
                  "connection (accepting them is left out) to the end of the load", log_y=True)
    _chart_metric([(closed, "")], out_dir / CHARTS[3], memory_per_connection_kib,
                  "server memory per connection (KiB, log scale)", "Server memory per connection",
                  "(peak RSS − idle RSS) ÷ connections, summed over the server's processes", log_y=True)
    return list(CHARTS)


# --- documents --------------------------------------------------------------

_CHART_CAPTIONS = {
    CHARTS[0]: "Mean response time per scenario, the original study's bar graph, grouped by "
               "connection count (hatched bars: the case failed).",
    CHARTS[1]: "Response-time percentiles per architecture as connections grow.",
    CHARTS[2]: "Server CPU per echoed message: what each architecture pays per message as "
               "connections grow. select() and poll() scan every descriptor on each call, epoll "
               "reports only the ready ones: with every connection busy (left) the scan is shared by "
               "many ready sockets; at a fixed rate with most connections idle (right) it is paid "
               "for few messages, and grows with the connections.",
    CHARTS[3]: "Server memory per connection (user space; the kernel adds about 5 KB per socket).",
    RTT_CHART: RTT_CAPTION,
    TIMESERIES_CHART: TIMESERIES_CAPTION,
}


def _machine_line(machine: dict[str, Any]) -> str:
    mem = machine.get("memory_bytes") or 0
    soft, hard = (machine.get("rlimit_nofile") or [0, 0])[:2]
    return (f"{machine.get('cpus')} CPUs, {mem / 2**30:.0f} GiB, {machine.get('platform')}, "
            f"Python {machine.get('python')}; RLIMIT_NOFILE {soft}/{hard}, "
            f"FD_SETSIZE {machine.get('fd_setsize')}, somaxconn {machine.get('somaxconn')}, "
            f"ephemeral ports {'–'.join(str(p) for p in machine.get('ephemeral_port_range', []))}")


def _summary_line(study: StudyResult) -> str:
    passed = sum(r.passed for r in study.results)
    return (f"{len(study.results)} cases, {passed} passed, {len(study.results) - passed} failed, "
            f"in {study.duration_s:.0f} s.")


def _markdown(study: StudyResult, charts: list[str]) -> str:
    parts = [
        f"# c10k study: {study.matrix}",
        "",
        f"Run {study.started_at} on {_machine_line(study.machine)}.",
        "",
        network_line(study.topology),
        "",
        _summary_line(study),
        "",
    ]
    for note in study.notes:
        parts += [f"**{note}**", ""]
    parts += ["## Test cases", "", _md_table(TESTCASE_HEADER, testcase_rows(study.results)), ""]
    against = _against_original_rows(study.results)
    if against:
        parts += ["## Against the original", "",
                  _md_table(("Test Case", "Scenario", "Original", "Here", "Why"), against), ""]
    parts += [
        "## Results", "",
        "Held at once is the server's own peak count of open connections (a connection still waiting "
        "in the listen backlog is open for the client, not for the server). "
        "Response times are per message (send to full echo), over every message of every connection; "
        "memory, threads and descriptors are peaks summed over the server's processes; CPU per "
        "message is the server's user + system time, once every connection was open, divided by the "
        "messages echoed.", "",
        _md_table(RESULTS_HEADER, results_rows(study.results)), "",
    ]
    if charts:
        parts += ["## Charts", ""]
        for name in charts:
            parts += [f"![{name}]({name})", "", f"*{_CHART_CAPTIONS[name]}*", ""]
        for note in rtt_notes(study):
            parts += [note, ""]
    parts += ["Each case's per-connection log is in `<server>/<connections>/connections.csv`, "
              "with the load's `summary.json`, the server's `server-stats.json` and both logs.", ""]
    return "\n".join(parts)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1400px;
color:#222;padding:0 1em;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.scroll{overflow-x:auto}table{border-collapse:collapse;width:100%;font-size:.86em;margin:.6em 0}
table.results{font-size:.8em}table.results td{white-space:nowrap}
th,td{border:1px solid #d0d0d0;padding:.3em .5em;vertical-align:top}
th{background:#f3f3f3;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.failed td.status{background:#fde7ea;color:#9b0020;font-weight:600}
tr.passed td.status{background:#e6f4ea;color:#1e6b34;font-weight:600}
.meta{color:#555}figure{margin:1.4em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}code{background:#f4f4f4;padding:0 .2em}
"""


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]], status_col: int | None,
                numeric_from: int | None = None, status_of: Sequence[str] | None = None,
                klass: str = "") -> str:
    out = [f'<div class="scroll"><table class="{klass}"><thead><tr>',
           *(f"<th>{html.escape(h)}</th>" for h in header), "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        cls = status_of[i] if status_of else ""
        out.append(f'<tr class="{cls}">')
        for j, cell in enumerate(row):
            classes = []
            if j == status_col:
                classes.append("status")
            if numeric_from is not None and j >= numeric_from:
                classes.append("num")
            attr = f' class="{" ".join(classes)}"' if classes else ""
            out.append(f"<td{attr}>{html.escape(str(cell))}</td>")
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _html(study: StudyResult, charts: list[str], out_dir: Path) -> str:
    statuses = [r.status for r in study.results]
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>c10k study: {html.escape(study.matrix)}</title><style>{_CSS}</style></head><body>",
        f"<h1>c10k study: {html.escape(study.matrix)}</h1>",
        f'<p class="meta">Run {html.escape(study.started_at)} on {html.escape(_machine_line(study.machine))}.'
        f"<br>{html.escape(network_line(study.topology))}<br>{html.escape(_summary_line(study))}</p>",
    ]
    for note in study.notes:
        parts.append(f"<p><strong>{html.escape(note)}</strong></p>")
    parts += ['<h2 id="test-cases">Test cases</h2>',
              _html_table(TESTCASE_HEADER, testcase_rows(study.results), 4, status_of=statuses)]
    against = _against_original_rows(study.results)
    if against:
        parts += ['<h2 id="against-the-original">Against the original</h2>',
                  _html_table(("Test Case", "Scenario", "Original", "Here", "Why"), against, 3,
                              status_of=[row[3].lower() for row in against])]
    parts += ['<h2 id="results">Results</h2>',
              "<p>Held at once is the server's own peak count of open connections (a connection "
              "still waiting in the listen backlog is open for the client, not for the server). "
              "Response times are per message (send to full echo); memory, threads and descriptors "
              "are peaks summed over the server's processes; CPU per message is the server's user + "
              "system time, once every connection was open, divided by the messages echoed.</p>",
              _html_table(RESULTS_HEADER, results_rows(study.results), 5, numeric_from=6,
                          status_of=statuses, klass="results")]
    if charts:
        parts.append('<h2 id="charts">Charts</h2>')
        for name in charts:
            data = base64.b64encode((out_dir / name).read_bytes()).decode()
            parts.append(f'<figure><img alt="{name}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{html.escape(_CHART_CAPTIONS[name])}</figcaption></figure>")
        parts += [f"<p>{html.escape(note)}</p>" for note in rtt_notes(study)]
    parts.append("<p class=meta>Each case's per-connection log: <code>&lt;server&gt;/&lt;connections&gt;/"
                 "connections.csv</code>.</p></body></html>")
    return "\n".join(parts)


def write_report(study: StudyResult, out_dir: Path) -> list[Path]:
    """Write results.json, the charts, REPORT.md and report.html into ``out_dir``.

    Returns:
        The paths written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(study.to_json(), indent=1) + "\n")
    charts = _write_charts(study.results, out_dir)
    if rtt_chart(study, out_dir / RTT_CHART):
        charts.append(RTT_CHART)
    if timeseries_chart(study.results, out_dir, out_dir / TIMESERIES_CHART):
        charts.append(TIMESERIES_CHART)
    (out_dir / "REPORT.md").write_text(_markdown(study, charts))
    (out_dir / "report.html").write_text(_html(study, charts, out_dir))
    return [out_dir / n for n in ("results.json", "REPORT.md", "report.html", *charts)]
