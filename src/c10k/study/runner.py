"""Run study cases: server subprocess, sampler, load, verdict.

Each case runs in ``OUT/<server>/<connections>/``:

1. start ``c10k serve`` on port 0 and wait for its ``listening on HOST:PORT`` line;
2. sample its process tree (``sampler.ProcessTreeSampler``) while
3. ``c10k load`` runs against it, writing summary.json and connections.csv there;
4. stop the server with SIGTERM (SIGKILL to its process group if it lingers);
5. ``verdict.decide`` turns the evidence into passed, or failed and why.

The two command lines are built in ``Commands`` and nowhere else, so an option
that changes name is a one-line fix, and tests can swap in a stand-in server.
Nothing here raises because a case failed: a failure is a result.

How the runner meets its server (ready, pid to sample, stop, clean-up) is in
``Commands`` too, so that ``study.container`` can run the server in a container.
Over 500 lines because one case's life (start, watch, stop, clean up) reads
best in one place, with the study loops that call it.
"""

from __future__ import annotations

import json
import os
import platform
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil

from c10k import capacity, limits
from c10k.study import conntrack
from c10k.study.cases import SERVERS, Case, Matrix
from c10k.study.sampler import ProcessTreeSampler, Usage
from c10k.study.verdict import Evidence, decide

__all__ = [
    "Commands",
    "CaseResult",
    "StudyResult",
    "run_case",
    "run_study",
    "write_results",
    "find_limit",
    "machine_facts",
]

_LISTENING = re.compile(r"^listening on (?P<host>.+):(?P<port>\d+)\s*$")


@dataclass
class Commands:
    """How to start a server and the load for a case.

    Attributes:
        python: the interpreter that runs ``-m c10k``.
        host: the address the server listens on and the load connects to.
        shutdown_timeout_s: passed to the server as --shutdown-timeout.
        start_timeout_s: how long the server may take to say it is listening.
        stop_grace_s: how long past --shutdown-timeout before SIGKILL.
        connect_grace_s: how long (plus 1 ms per connection) the server may take
            to hold every connection before the load is stopped.
    """

    python: str = sys.executable
    host: str = "127.0.0.1"
    shutdown_timeout_s: float = 5.0
    start_timeout_s: float = 30.0
    stop_grace_s: float = 15.0
    connect_grace_s: float = 20.0

    def workers(self, case: Case) -> int | None:
        """Worker processes for the process-based epoll servers.

        Each process may hold at most RLIMIT_NOFILE descriptors, so 100,000
        connections need at least six of them; never fewer than the cores.
        Reuseport workers cannot be added later and the kernel spreads
        connections over them unevenly, so they get headroom. (uring's
        hand-off starts with the cores and grows as it fills.)
        """
        nofile = limits.nofile_limits()[1]
        if case.server == "epoll-reuseport":
            return capacity.reuseport_workers(case.connections, nofile, limits.cpus())
        if case.server != "epoll":
            return None
        return capacity.server_workers(case.connections, nofile, limits.cpus())

    def server(self, case: Case, stats_file: Path) -> list[str]:
        arch, extra = SERVERS[case.server]
        cmd = [self.python, "-m", "c10k", "serve", arch, "--host", self.host, "-p", "0",
               "--stats-file", str(stats_file), "--shutdown-timeout", str(self.shutdown_timeout_s)]
        workers = self.workers(case)
        if workers is not None:
            cmd += ["--workers", str(workers)]
        return cmd + list(extra)

    def load(self, case: Case, host: str, port: int, out: Path) -> list[str]:
        cmd = [self.python, "-m", "c10k", "load", "--host", host, "-p", str(port),
               "-c", str(case.connections), "-m", case.message, "--out", str(out), "--quiet"]
        if case.settle_s:
            cmd += ["--settle", f"{case.settle_s:g}"]
        if case.fixed_rate:
            return cmd + ["--rate", str(case.rate), "--duration", f"{case.duration_s:g}"]
        return cmd + ["-n", str(case.messages)]

    def topology(self) -> dict[str, Any]:
        """The network the cases run over, for results.json (``study.hosts`` has the netns one)."""
        return {"kind": "loopback", "server": self.host}

    # How the runner meets the server it started; ``study.container`` replaces
    # these for a server in a container (its port, pid and stop are podman's).

    def wait_ready(self, server: subprocess.Popen[bytes], lines: queue.Queue[str | None]) -> tuple[str, int] | None:
        """(host, port) once the server serves, None if it never does: its ``listening on`` line."""
        return _wait_listening(lines, self.start_timeout_s)

    def server_pid(self, server: subprocess.Popen[bytes]) -> int:
        """The root of the process tree the sampler watches."""
        return server.pid

    def stop_server(self, server: subprocess.Popen[bytes]) -> None:
        """Ask the server to stop (the runner then waits for it to exit)."""
        server.send_signal(signal.SIGTERM)

    def server_gone(self, case_dir: Path) -> None:
        """Called once the case's server process has ended, even after a failure or Ctrl-C."""

    def label(self, case: Case) -> str:
        """The server's name in the results (the case's own, unless it ran differently)."""
        return case.server

    def runs_in(self) -> dict[str, Any] | None:
        """Where the last case's server ran, if not as a process of this machine, for results.json."""
        return None

    def connect_deadline_s(self, case: Case) -> float:
        """Seconds the server has to hold every connection (its descriptors, summed)."""
        return self.connect_grace_s + case.connections / 1000.0

    def timeout_s(self, case: Case) -> float:
        """Seconds a case may take before the runner stops its load."""
        if case.timeout_s is not None:
            return case.timeout_s
        settle = case.settle_s or 0.0
        if case.fixed_rate:
            return 60.0 + settle + (case.duration_s or 0.0) * 2 + case.connections / 1000.0
        # Generous: ~4000 messages/s and ~1000 connects/s at worst, plus start-up.
        return 60.0 + settle + case.connections * case.messages / 4000.0 + case.connections / 1000.0


@dataclass
class CaseResult:
    """A case's outcome and the evidence behind it."""

    case: Case
    status: str
    reason: str
    directory: str
    summary: dict[str, Any] | None = None
    usage: Usage = field(default_factory=Usage)
    stats: dict[str, Any] | None = None
    server_exit: int | None = None
    load_status: int | None = None
    duration_s: float = 0.0
    container: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_json(self) -> dict[str, Any]:
        c = self.case
        usage = self.usage.to_json()
        return {
            "case": c.number,
            "server": c.server,
            "connections": c.connections,
            "messages": c.messages,
            "message": c.message,
            "rate": c.rate,
            "send_duration_s": c.duration_s,
            "link": c.link,
            "settle_s": c.settle_s,
            "scenario": c.scenario,
            "original": c.original,
            "status": self.status,
            "reason": self.reason,
            "directory": self.directory,
            "summary": self.summary,
            "server_usage": usage,
            "server_stats": self.stats,
            "server_exit": self.server_exit,
            "load_status": self.load_status,
            "duration_s": round(self.duration_s, 3),
            "container": self.container,
        }


@dataclass
class StudyResult:
    """All cases of a run, plus the machine they ran on."""

    matrix: str
    results: list[CaseResult]
    machine: dict[str, Any]
    started_at: str
    duration_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False
    topology: dict[str, Any] = field(default_factory=lambda: {"kind": "loopback"})

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StudyResult:
        """Rebuild a study from its results.json (to re-render a report)."""
        results = []
        for c in data["cases"]:
            case = Case(c["case"], c["server"], c["connections"], c.get("messages", 100),
                        c.get("message", "Gary's spamming"), c.get("original"), None, c.get("rate"),
                        c.get("send_duration_s"), c.get("link"), c.get("settle_s"))
            usage_json = c.get("server_usage") or {}
            fields = {k: v for k, v in usage_json.items() if k in Usage.__dataclass_fields__}
            usage = Usage(**fields)
            usage.series = [tuple(row) for row in usage.series]  # type: ignore[misc]
            results.append(CaseResult(case, c["status"], c["reason"], c.get("directory", ""),
                                      c.get("summary"), usage, c.get("server_stats"), c.get("server_exit"),
                                      c.get("load_status"), c.get("duration_s", 0.0), c.get("container")))
        return cls(data.get("matrix", "study"), results, data.get("machine", {}),
                   data.get("started_at", ""), data.get("duration_s", 0.0), list(data.get("notes", [])),
                   topology=data.get("topology") or {"kind": "loopback"})

    def to_json(self) -> dict[str, Any]:
        return {
            "matrix": self.matrix,
            "started_at": self.started_at,
            "duration_s": round(self.duration_s, 3),
            "machine": self.machine,
            "topology": self.topology,
            "notes": self.notes,
            "cases": [r.to_json() for r in self.results],
        }


def machine_facts() -> dict[str, Any]:
    """The machine and the limits that shape the results."""
    soft, hard = limits.nofile_limits()
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "rlimit_nofile": [soft, hard],
        "fd_setsize": limits.FD_SETSIZE,
        "somaxconn": limits.somaxconn(),
        "ephemeral_port_range": list(limits.ephemeral_port_range()),
        "threads_max": limits.threads_max(),
        "pid_max": limits.pid_max(),
    }


def _tail(path: Path, lines: int = 40) -> list[str]:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            return f.read().decode(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _pump_lines(stream: Any, lines: queue.Queue[str | None]) -> None:
    # Reads the server's stdout to its end so the pipe never fills up.
    for raw in stream:
        lines.put(raw.decode(errors="replace"))
    lines.put(None)


def _wait_listening(lines: queue.Queue[str | None], timeout_s: float) -> tuple[str, int] | None:
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            return None
        if line is None:
            return None
        m = _LISTENING.match(line.strip())
        if m:
            return m["host"].strip("[]"), int(m["port"])
    return None


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    # Each child leads its own process group (start_new_session), so this
    # reaches an epoll server's workers too, and nothing of ours.
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def _kill_leftovers(procs: Sequence[psutil.Process]) -> None:
    # Workers that outlived their parent; psutil checks each is still the same process.
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass


def _watch_load(load: subprocess.Popen[bytes], sampler: ProcessTreeSampler, case: Case,
                commands: Commands, ev: Evidence) -> int | None:
    """Wait for the load; stop it at the case's timeout, or early if the server
    never gets to hold every connection (a server at its descriptor limit
    leaves the rest in the listen backlog, and the load could wait for long)."""
    start = time.monotonic()
    connect_deadline = start + commands.connect_deadline_s(case)
    deadline = start + ev.load_timeout_s
    while True:
        try:
            return load.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        held = sampler.usage.peak_fds
        if now >= connect_deadline and held < case.connections:
            ev.connect_stalled = True
            ev.connect_deadline_s = commands.connect_deadline_s(case)
            ev.held_connections = held
        elif now >= deadline:
            ev.load_timed_out = True
        else:
            continue
        return _interrupt(load)


def _default_sigint() -> None:
    # A study started in the background of a script inherits SIGINT ignored,
    # and so would the load; _interrupt relies on SIGINT stopping it cleanly.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt(load: subprocess.Popen[bytes]) -> int | None:
    # SIGINT, like Ctrl-C to the load's process group: it stops and still writes
    # summary.json and connections.csv with what it measured. SIGKILL if it lingers.
    try:
        os.killpg(load.pid, signal.SIGINT)
        return load.wait(timeout=30)
    except (ProcessLookupError, PermissionError):
        return load.wait(timeout=5)
    except subprocess.TimeoutExpired:
        _kill_group(load)
        return None


def run_case(case: Case, out_dir: Path, commands: Commands | None = None) -> CaseResult:
    """Run one case in ``out_dir/<server>/<connections>/`` and decide its verdict."""
    commands = commands or Commands()
    case_dir = out_dir / case.server / case.slug
    if case_dir.exists():
        shutil.rmtree(case_dir)
    case_dir.mkdir(parents=True)
    rel = str(case_dir.relative_to(out_dir))
    stats_file = case_dir / "server-stats.json"
    server_log = case_dir / "server.log"
    load_log = case_dir / "load.log"
    t0 = time.monotonic()
    ev = Evidence(connections=case.connections, nofile=limits.nofile_limits()[1])
    usage = Usage()
    server: subprocess.Popen[bytes] | None = None
    pump: threading.Thread | None = None
    load: subprocess.Popen[bytes] | None = None
    sampler: ProcessTreeSampler | None = None
    try:
        with server_log.open("wb") as err:
            server = subprocess.Popen(commands.server(case, stats_file), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=err, start_new_session=True)
        lines: queue.Queue[str | None] = queue.Queue()
        pump = threading.Thread(target=_pump_lines, args=(server.stdout, lines), daemon=True)
        pump.start()
        address = commands.wait_ready(server, lines)
        if address is None:
            ev.started = False
            try:
                ev.exit_status = server.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                ev.exit_status = None
        else:
            host, port = address
            sampler = ProcessTreeSampler(commands.server_pid(server))
            sampler.start()
            ev.load_timeout_s = commands.timeout_s(case)
            with load_log.open("wb") as log:
                load = subprocess.Popen(commands.load(case, host, port, case_dir), stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                        preexec_fn=_default_sigint)
            ev.load_status = _watch_load(load, sampler, case, commands, ev)
            usage = sampler.stop()
            usage.settle_cpu(case.connections)
            if ev.load_status != 0:
                # A server that crashed made the load fail; give its exit a moment to be seen.
                try:
                    server.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    pass
            ev.exited_early = server.poll() is not None
            if not ev.exited_early:
                commands.stop_server(server)
                try:
                    server.wait(timeout=commands.shutdown_timeout_s + commands.stop_grace_s)
                except subprocess.TimeoutExpired:
                    ev.killed = True
            ev.exit_status = server.returncode
    finally:
        if load is not None:
            _kill_group(load)
        if server is not None:
            _kill_group(server)
            if ev.started and ev.exit_status is None:
                ev.exit_status = server.returncode
            if pump is not None:
                pump.join(timeout=5)  # EOF comes once every process holding the pipe is gone
            if server.stdout is not None and (pump is None or not pump.is_alive()):
                server.stdout.close()
        if sampler is not None:
            _kill_leftovers(sampler.known_processes())
        commands.server_gone(case_dir)
    ev.stderr_tail = _tail(server_log)
    ev.load_stderr_tail = _tail(load_log)
    ev.stats = _read_json(stats_file)
    ev.summary = _read_json(case_dir / "summary.json")
    ev.usage = usage.to_json()
    status, reason = decide(ev)
    return CaseResult(replace(case, server=commands.label(case)), status, reason, rel, ev.summary, usage,
                      ev.stats, ev.exit_status, ev.load_status, time.monotonic() - t0, commands.runs_in())


#: Called before a case (result None) and after it (with its result).
ProgressCallback = Callable[[Case, "CaseResult | None"], None]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_results(study: StudyResult, path: Path) -> None:
    """Write results.json atomically (the runner does after every case)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(study.to_json(), indent=1) + "\n")
    os.replace(tmp, path)


def run_study(matrix: Matrix, out_dir: Path, commands: Commands | None = None,
              progress: ProgressCallback | None = None) -> StudyResult:
    """Run every case of ``matrix`` in order; a failing case does not stop the study.

    Ctrl-C stops it: the running case's processes are stopped, and the study
    returns what ran, with ``interrupted`` set. ``out_dir/results.json`` is
    rewritten after every case, so a run cut short still leaves its results
    (``c10k study --report-only`` turns them into a report).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    study = StudyResult(matrix.name, [], machine_facts(), _now())
    study.topology = (commands or Commands()).topology()
    t0 = time.monotonic()
    try:
        for case in matrix.cases:
            _run_and_record(study, case, out_dir, commands, progress, t0)
    except KeyboardInterrupt:
        # The case's processes are already stopped (run_case's finally); keep what ran.
        study.interrupted = True
        study.notes.append(f"Interrupted after {len(study.results)} of {len(matrix.cases)} cases.")
    study.duration_s = time.monotonic() - t0
    return study


def _run_and_record(study: StudyResult, case: Case, out_dir: Path, commands: Commands | None,
                    progress: ProgressCallback | None, t0: float) -> CaseResult:
    """Run one case, add it to the study and rewrite results.json, so a cut-short run keeps it."""
    if progress:
        progress(case, None)
    if study.topology.get("kind") in ("loopback", "container"):  # both ends' connections tracked here
        waited = conntrack.wait_for_room(case.connections)
        if waited:
            study.notes.append(conntrack.room_note(case.number, waited))
    result = run_case(case, out_dir, commands)
    study.results.append(result)
    study.duration_s = time.monotonic() - t0
    write_results(study, out_dir / "results.json")
    if progress:
        progress(case, result)
    return result


def find_limit(server: str, out_dir: Path, *, start: int = 1000, max_connections: int = 100000,
               step: int = 1000, messages: int = 100, commands: Commands | None = None,
               progress: ProgressCallback | None = None) -> StudyResult:
    """Raise the connection count until ``server`` fails, then narrow the edge.

    Doubles from ``start`` up to ``max_connections``; after the first failure,
    bisects between the last count that passed and the first that failed until
    they are at most ``step`` apart. At most about log2(max/start) + log2(max/step)
    cases run. The result's notes say the largest count that passed and why
    the next one failed.
    """
    if server not in SERVERS:
        raise ValueError(f"unknown server {server!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    study = StudyResult(f"find-limit {server}", [], machine_facts(), _now())
    study.topology = (commands or Commands()).topology()
    t0 = time.monotonic()
    template = Case(0, server, start, messages=messages)

    def probe(n: int) -> CaseResult:
        case = replace(template, number=len(study.results) + 1, connections=n)
        return _run_and_record(study, case, out_dir, commands, progress, t0)

    best: CaseResult | None = None
    first_fail: CaseResult | None = None
    n = max(1, min(start, max_connections))
    try:
        while True:
            r = probe(n)
            if not r.passed:
                first_fail = r
                break
            best = r
            if n >= max_connections:
                break
            n = min(n * 2, max_connections)
        if first_fail is not None and best is not None:
            lo, hi = best.case.connections, first_fail.case.connections
            while hi - lo > step:
                mid = (lo + hi) // 2
                r = probe(mid)
                if r.passed:
                    best, lo = r, mid
                else:
                    first_fail, hi = r, mid
    except KeyboardInterrupt:
        study.interrupted = True
        study.notes.append(f"Interrupted after {len(study.results)} cases; the edge is not narrowed down.")
    if best is None and first_fail is not None:
        study.notes.append(f"{server} failed already at {first_fail.case.connections} connections: "
                           f"{first_fail.reason}")
    elif first_fail is None and best is not None:
        study.notes.append(f"{server} passed every count up to the maximum asked for, "
                           f"{best.case.connections} connections")
    elif best is not None and first_fail is not None:
        study.notes.append(f"{server} passed at {best.case.connections} connections and failed at "
                           f"{first_fail.case.connections}: {first_fail.reason}")
    study.duration_s = time.monotonic() - t0
    return study
