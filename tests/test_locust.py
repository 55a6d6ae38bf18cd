"""Issue 11: distributed echo load on Locust (`c10k locust`), tested for real.

Locust runs only in subprocesses: importing it here would monkey-patch this
test process for gevent. The pure parts (histogram, tallies, summary, options)
are tested in-process.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from c10k.locust.histogram import RELATIVE_ERROR, LatencyHistogram, bucket_us
from c10k.locust.options import EchoOptions, parse_host
from c10k.locust.summary import build_summary, default_summary_path
from c10k.locust.tally import EchoTally, TallyMerger
from helpers import reset_close, wait_until
from netns import Hosts, netns_available
from test_load_faults import ML, ThreadServer, recv_exact

LOCUST = [sys.executable, "-m", "c10k", "locust"]


def test_locust_is_installed_and_not_imported_by_the_cli() -> None:
    assert importlib.util.find_spec("locust") is not None, "pip install -e '.[dev]' installs Locust"
    code = ("import sys, c10k.cli; c10k.cli.build_parser(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'gevent', 'locust'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def c10k_locust(*args: str, code: str = "pass") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", f"import sys; {code}; from c10k.cli import main; "
                           f"sys.exit(main(sys.argv[1:]))", "locust", *args],
                          capture_output=True, text=True, timeout=120)


def test_help_lists_the_c10k_options_then_locusts() -> None:
    run = c10k_locust("--help")
    assert run.returncode == 0, run.stderr
    c10k_part, _, locust_part = run.stdout.partition("Usage: locust")
    assert all(f"--{o}" in c10k_part for o in ("message", "size", "count", "think-time", "user-rate",
                                                "echo-timeout", "c10k-summary"))
    assert "--expect-workers" in locust_part


def test_wrapper_mistakes_are_one_line_errors() -> None:
    run = c10k_locust("-f", "mine.py")
    assert run.returncode == 2 and run.stderr.strip().count("\n") == 0 and "-f" in run.stderr, run.stderr
    run = c10k_locust("--headless", code="sys.modules['locust'] = None")  # as if Locust were not installed
    assert run.returncode == 1 and "pip install 'c10k[locust]'" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("args, word", [([], "--host"), (["--host", "tcp://h"], "--host"),
                                        (["--count", "-1"], "--count"), (["--size", "-2"], "--size")])
def test_option_mistakes_are_one_line_exit_2_before_any_connection(args, word) -> None:
    host = [] if "--host" in args or not args else ["--host", "tcp://127.0.0.1:9"]
    run = c10k_locust("--headless", "-u", "1", "-t", "5s", *host, *args)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert [line for line in run.stderr.splitlines() if "error" in line] == \
        [line for line in run.stderr.splitlines() if line.startswith("c10k locust: error:") and word in line]


# --------------------------------------------------------------------------- pure parts


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10**11), min_size=1, max_size=400),
       st.sampled_from([50.0, 90.0, 99.0, 99.9, 100.0]))
def test_histogram_percentiles_are_within_their_stated_bound(latencies_ns, q) -> None:
    h = LatencyHistogram()
    for ns in latencies_ns:
        h.record_ns(ns)
    exact = sorted(latencies_ns)[max(1, math.ceil(q / 100 * len(latencies_ns))) - 1] / 1000  # nearest rank
    assert abs(h.percentile_us(q) - exact) <= exact * RELATIVE_ERROR + 1.0
    s = h.summary_us()
    assert s["min"] == round(min(latencies_ns) / 1000, 3) and s["max"] == round(max(latencies_ns) / 1000, 3)
    assert s["mean"] == pytest.approx(sum(latencies_ns) / len(latencies_ns) / 1000, abs=1e-3)


@given(st.lists(st.integers(min_value=0, max_value=10**10), max_size=100),
       st.lists(st.integers(min_value=0, max_value=10**10), max_size=100))
def test_histograms_merge_over_the_wire_as_if_recorded_together(a, b) -> None:
    ha, hb, both = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    for ns in a:
        ha.record_ns(ns)
        both.record_ns(ns)
    for ns in b:
        hb.record_ns(ns)
        both.record_ns(ns)
    merged = LatencyHistogram.from_wire(json.loads(json.dumps(ha.to_wire())))
    merged.merge(LatencyHistogram.from_wire(json.loads(json.dumps(hb.to_wire()))))
    assert merged.to_wire() == both.to_wire()


def test_buckets_keep_three_significant_digits() -> None:
    assert [bucket_us(u) for u in (0, 999, 1000, 1234, 1235, 99_949, 99_950, 123_456_789)] == \
        [0, 999, 1000, 1230, 1240, 99_900, 100_000, 123_000_000]


def test_worker_tallies_add_up_at_the_master_and_make_the_summary() -> None:
    merger = TallyMerger()
    for worker, (t0, n) in enumerate([(100.0, 3), (101.0, 2)]):
        tally = EchoTally()
        for i in range(n):
            tally.connected(t0 + i, t0 + i + 0.5)
        tally.message_start, tally.message_end = t0 + 1, t0 + 5
        tally.sent = tally.echoed = 10 * n
        tally.bytes_sent = tally.bytes_echoed = 150 * n
        for ns in range(1000, 1000 * (10 * n + 1), 1000):
            tally.latency.record_ns(ns)
        tally.completed = tally.finished = n - 1
        tally.closed()
        tally.failed_with("mismatch")
        merger.add(f"w{worker}", tally.take())
        assert tally.take()["echoed"] == 0, "take() starts again from zero"
    s = build_summary(merger.total, host="h", port=7, requested=6, peak_open=merger.peak_open, processes=2,
                      count=10, message_bytes=15)
    assert s["connections"] == {"requested": 6, "established": 5, "completed": 3, "failed": 3, "peak_open": 5}
    assert s["messages"] == {"sent": 50, "echoed": 50, "mismatched": 2}
    assert s["errors"] == {"mismatch": 2, "not_started": 1}
    assert s["connect_s"] == pytest.approx(102.5 - 100.0) and s["elapsed_s"] == pytest.approx(106 - 101)
    assert s["messages_per_s"] == pytest.approx(10.0)
    assert s["latency_us"]["min"] == 1.0 and s["latency_us"]["max"] == 30.0
    assert s["ok"] is False and s["latency_precision"]


def test_summary_says_when_locust_started_more_connections_than_users() -> None:
    tally = EchoTally()
    for _ in range(5):
        tally.connected(1.0, 2.0)
    tally.completed = tally.finished = 5
    s = build_summary(tally, host="h", port=7, requested=4, peak_open=5, processes=2, count=1, message_bytes=1)
    assert s["connections"]["requested"] == 5 and s["connections"]["failed"] == 0 and s["locust_users"] == 4
    assert "lost" in s["note"]


def test_summary_goes_beside_the_csv_files() -> None:
    assert default_summary_path("out/run") == Path("out/summary.json")
    assert default_summary_path("run") == Path("summary.json")
    assert default_summary_path(None) is None


def _opts(**kw):
    base = dict(message="hi", size=0, count=3, think_time=0.0, user_rate=0.0, echo_timeout=1.0)
    return SimpleNamespace(**{**base, **kw})


def test_options_say_which_one_is_wrong() -> None:
    assert parse_host("tcp://[::1]:7000") == ("::1", 7000)
    assert EchoOptions.parse("tcp://h:1", _opts(size=4)).message == b"0123"
    for host in (None, "", "tcp://h", "http://h:1", "h:1", "tcp://h:1/x", "tcp://h:99999"):
        with pytest.raises(ValueError, match="--host"):
            EchoOptions.parse(host, _opts())
    for kw, word in [({"size": -1}, "--size"), ({"message": ""}, "--message"), ({"count": -1}, "--count"),
                     ({"think_time": 1, "user_rate": 1}, "either"), ({"echo_timeout": 0}, "--echo-timeout")]:
        with pytest.raises(ValueError, match=word):
            EchoOptions.parse("tcp://h:1", _opts(**kw))


# --------------------------------------------------------------------------- Locust in subprocesses


class LocustProcess:
    """`c10k locust ARGS` in its own session, output to files; kill() is always safe."""

    def __init__(self, args: list[str], workdir: Path, name: str, preexec_fn=None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.stdout_path, self.stderr_path = workdir / f"{name}.stdout", workdir / f"{name}.stderr"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen([*LOCUST, *args], stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         start_new_session=True, preexec_fn=preexec_fn, cwd=workdir)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"locust {self.name} still running after {timeout}s; "
                                 f"stderr: {self.stderr()[-3000:]}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)


@pytest.fixture
def locusts(tmp_path):
    """Factory: ``locusts(args, name=..., preexec_fn=...)`` -> a started LocustProcess, killed at teardown."""
    started: list[LocustProcess] = []

    def start(args: list[str], name: str = "locust", preexec_fn=None) -> LocustProcess:
        p = LocustProcess(args, tmp_path, name, preexec_fn)
        started.append(p)
        return p

    try:
        yield start
    finally:
        for p in started:
            p.kill()


def stats_rows(prefix: Path) -> dict[str, dict[str, str]]:
    """Locust's PREFIX_stats.csv as {Name: row}."""
    with open(f"{prefix}_stats.csv", newline="") as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


def failure_rows(prefix: Path) -> Counter[tuple[str, str]]:
    """Locust's PREFIX_failures.csv as {(Name, Error): occurrences}."""
    with open(f"{prefix}_failures.csv", newline="") as f:
        return Counter({(row["Name"], row["Error"]): int(row["Occurrences"]) for row in csv.DictReader(f)})


def corrupt_one_byte(conn) -> None:
    while (m := recv_exact(conn, ML)) is not None:
        conn.sendall(m[:3] + bytes([m[3] ^ 0x20]) + m[4:])


def close_early(conn) -> None:
    recv_exact(conn, ML)  # read the whole message, then close without answering: FIN, not RST


def reset_after_reading(conn) -> None:
    recv_exact(conn, ML)
    reset_close(conn)


def never_answer(conn) -> None:
    while conn.recv(4096):  # until the client gives up and closes (ThreadServer's 5 s timeout bounds it)
        pass


RUDE = {"mismatch": corrupt_one_byte, "closed_early": close_early, "ECONNRESET": reset_after_reading,
        "timeout": never_answer}


@pytest.mark.parametrize("reason", [*RUDE, "ECONNREFUSED"])
def test_rude_servers_are_failures_named_by_reason_and_the_run_ends_clean(reason, tmp_path, locusts) -> None:
    users = 8
    server = ThreadServer(RUDE[reason]) if reason in RUDE else None
    if server is not None:
        port = server.port
    else:  # a port nothing listens on
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    prefix = tmp_path / "out" / "run"
    try:
        run = locusts(["--host", f"tcp://127.0.0.1:{port}", "--headless", "-u", str(users), "-r", str(users),
                       "-t", "60s", "--count", "5", "--echo-timeout", "1", "--csv", str(prefix)])
        rc = run.wait(timeout=120)
    finally:
        if server is not None:
            server.close()
    err = run.stderr()
    assert rc == 1, err  # Locust's exit status when requests failed
    assert "Traceback" not in err
    assert f"all {users} connections finished" in err, "the run ended on its own, before -t"
    name = "connect" if reason == "ECONNREFUSED" else "echo"
    assert failure_rows(prefix) == Counter({(name, reason): users})
    assert int(stats_rows(prefix)[name]["Failure Count"]) == users
    summary = json.loads((prefix.parent / "summary.json").read_text())
    assert summary["errors"] == {reason: users}
    assert summary["connections"]["failed"] == users and summary["connections"]["completed"] == 0
    assert summary["messages"]["mismatched"] == (users if reason == "mismatch" else 0)
    assert summary["messages"]["echoed"] == 0 and summary["ok"] is False


def _listening_port(pid: int) -> int | None:
    ports = [c.laddr.port for c in psutil.Process(pid).net_connections("tcp") if c.status == psutil.CONN_LISTEN]
    return ports[0] if ports else None


def _echo_requests(web_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/stats/requests", timeout=10) as r:
        stats = json.load(r)["stats"]
    return sum(s["num_requests"] for s in stats if s["name"] == "echo")


def test_web_ui_shows_the_echo_count_growing_during_a_run(serve, tmp_path, locusts) -> None:
    server = serve("epoll", "--workers", "1")
    run = locusts(["--host", f"tcp://127.0.0.1:{server.port}", "--web-host", "127.0.0.1", "--web-port", "0",
                   "--autostart", "-u", "4", "-r", "4", "--count", "0", "--think-time", "0.01"])
    web_port = wait_until(lambda: run.proc.poll() is None and _listening_port(run.proc.pid), 60,
                          interval=0.2, what="Locust's web UI to listen")
    first = wait_until(lambda: _echo_requests(web_port), 60, interval=0.5, what="echoes in /stats/requests")
    wait_until(lambda: _echo_requests(web_port) > first, 60, interval=0.5, what="the echo count to grow")
    run.proc.send_signal(signal.SIGTERM)
    assert run.wait(timeout=60) == 0, run.stderr()
    assert "Traceback" not in run.stderr()


def test_master_and_two_workers_on_their_own_hosts_echo_10000_connections(serve, tmp_path, locusts) -> None:
    """The original's setup: a server host and two client hosts (plus the master), 10,000 connections x 20."""
    assert netns_available(), "needs root and iproute2 to make the hosts (network namespaces)"
    users, count, workers = 10_000, 20, 2
    prefix = tmp_path / "out" / "run"
    with Hosts("srv", "mst", "w1", "w2") as hosts:
        server = serve("epoll", "--host", hosts.address("srv"), preexec_fn=hosts.enter("srv"))
        # --user-rate 2: each connection stays open ~10 s, so most are open at once
        master = locusts(["--master", "--headless", "--expect-workers", str(workers),
                          "--expect-workers-max-wait", "120", "-u", str(users), "-r", "2000", "-t", "300s",
                          "--host", f"tcp://{server.host}:{server.port}", "--count", str(count),
                          "--user-rate", "2", "--csv", str(prefix)],
                         name="master", preexec_fn=hosts.enter("mst"))
        for w in ("w1", "w2"):
            locusts(["--worker", "--master-host", hosts.address("mst")], name=w, preexec_fn=hosts.enter(w))
        rc = master.wait(timeout=400)
        err = master.stderr()
        assert rc == 0, err[-3000:]
        assert server.alive()
    assert "Traceback" not in err
    assert f"all {users} connections finished" in err
    rows = stats_rows(prefix)
    assert (int(rows["connect"]["Request Count"]), int(rows["connect"]["Failure Count"])) == (users, 0)
    assert (int(rows["echo"]["Request Count"]), int(rows["echo"]["Failure Count"])) == (users * count, 0)
    assert failure_rows(prefix) == Counter()
    summary = json.loads((prefix.parent / "summary.json").read_text())
    assert summary["connections"] == {**summary["connections"], "requested": users, "established": users,
                                      "completed": users, "failed": 0}
    assert summary["messages"] == {"sent": users * count, "echoed": users * count, "mismatched": 0}
    assert summary["errors"] == {} and summary["ok"] is True and summary["processes"] == workers
    assert summary["messages"]["echoed"] == int(rows["echo"]["Request Count"])
    assert summary["bytes"]["echoed"] == int(float(rows["echo"]["Average Content Size"]) * users * count)
    assert 0 < summary["latency_us"]["min"] <= summary["latency_us"]["p50"] <= summary["latency_us"]["max"]
    print(f"peak open {summary['connections']['peak_open']}, {summary['messages_per_s']:.0f} msg/s, "
          f"connect {summary['connect_s']:.1f} s, message phase {summary['elapsed_s']:.1f} s")
