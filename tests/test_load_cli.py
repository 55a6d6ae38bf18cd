"""`c10k load` usage errors (exit 2, one line, no traceback), the plan, the prompts."""

from __future__ import annotations

import builtins
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from c10k import limits
from c10k.cli import main
from c10k.errors import C10kError, UsageError
from c10k.load import make_message
from c10k.load.plan import plan_load, plan_source_addresses
from test_load_faults import ThreadServer, echo


@pytest.mark.parametrize(
    "argv",
    [
        ["-c", "0"],
        ["-n", "-1"],
        ["--size", "20", "-m", "hello"],
        ["--size", "0"],
        ["-m", ""],
        ["--host", "no-such-host.invalid"],
        ["-p", "0"],
        ["-p", "70000"],
        ["--processes", "0"],
        ["--rate", "100"],
        ["--duration", "soon"],
        ["--rate-per-connection", "10"],
        ["--rate", "10", "--rate-per-connection", "10", "--duration", "1"],
        ["--expect", "x", "--expect-prefix", "x"],
        ["--expect-regex", "("],
        ["--expect-regex", "x"],
        ["--expect-prefix", "x"],
        ["--expect-file", "/nonexistent/reply"],
        ["--message-file", "/nonexistent/request"],
        ["--message-file", "/etc/hostname", "-m", "x"],
        ["-e", "-m", "bad \\q escape"],
        ["-e", "-m", "x", "--expect", "\\x4"],
        ["--reply-size", "0"],
        ["--reply-size", "4", "--reply-until", "x"],
        ["--first-expect", "+OK"],
        ["--pipeline", "0"],
        ["--lifetime", "0"],
        ["--lifetime", "-1s"],
        ["--warmup", "-1"],
        ["--timeout", "0"],
        ["--source-ip", "not-an-ip"],
        ["-c", "2", "--processes", "3"],
        ["-c", "many"],
        ["--rate", "inf", "--duration", "1"],
        ["--rate", "10", "--duration", "inf"],
        ["--connect-rate", "nan"],
        ["--timeout", "inf"],
        ["--sample-budget", "100"],
        ["--sample-budget", "lots"],
        ["--sample-budget", "64 parsecs"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        status = main(["load", "--out", str(tmp_path / "out"), "-q", *argv])
        raise SystemExit(status)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("c10k load: error: ")
    assert all(line.startswith(("usage:", " ")) for line in err[:-1])  # argparse adds its usage
    assert not (tmp_path / "out").exists()


def test_usage_error_from_the_shell_has_no_traceback() -> None:
    run = subprocess.run([sys.executable, "-m", "c10k", "load", "-c", "0"], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == ["c10k load: error: -c/--connections must be at least 1, not 0"]


def test_plan_spreads_processes_and_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    # loopback untracked: a conntrack table other runs filled for the moment would refuse the plan
    monkeypatch.setattr(limits, "loopback_tracked", lambda ruleset=None: False)
    plan = plan_load("127.0.0.1", 7000, 100_000, cpus=2)
    assert plan.processes >= 6
    assert all(s.connections + 64 <= plan.nofile for s in plan.shares)
    assert sum(s.connections for s in plan.shares) == 100_000
    assert plan.sources[0] == "127.0.0.2" and len(plan.sources) >= 4
    assert "100,000 connections to" in plan.describe()
    small = plan_load("localhost", 7000, 10, cpus=2)
    assert small.processes == 1 and small.sources == []


def test_plan_refuses_what_cannot_work() -> None:
    with pytest.raises(C10kError, match="RLIMIT_NOFILE"):
        plan_load("127.0.0.1", 7000, 30_000, processes=1)
    with pytest.raises(C10kError, match="--source-ip"):
        plan_source_addresses("192.0.2.1", socket.AF_INET, 100_000, ports=28_000)
    with pytest.raises(C10kError, match="source addresses"):
        plan_source_addresses("127.0.0.1", socket.AF_INET, 100_000, ["127.0.0.2"], ports=28_000)
    with pytest.raises(UsageError, match="unknown host"):
        plan_load("no-such-host.invalid", 7000, 1)
    assert plan_source_addresses("192.0.2.1", socket.AF_INET, 50_000, ["10.0.0.1", "10.0.0.2"],
                                 ports=28_000) == ["10.0.0.1", "10.0.0.2"]


def test_make_message_is_exact() -> None:
    assert len(make_message(1)) == 1
    assert len(make_message(100_000)) == 100_000


def test_explicit_source_ip_is_used(tmp_path: Path) -> None:
    srv = ThreadServer(echo)
    try:
        status = main(["load", "-p", str(srv.port), "-c", "4", "-n", "2", "--source-ip", "127.0.0.3,127.0.0.4",
                       "--processes", "2", "--out", str(tmp_path), "-q"])
    finally:
        srv.close()
    assert status == 0
    rows = (tmp_path / "connections.csv").read_text().splitlines()[1:]
    assert [row.split(",")[1].rsplit(":", 1)[0] for row in rows] == ["127.0.0.3", "127.0.0.4"] * 2


def test_prompts_when_no_arguments_on_a_terminal(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    srv = ThreadServer(echo)
    answers = iter(["fifteen bytes!!", "3", "2"])
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(builtins, "input", lambda *a: next(answers))
    monkeypatch.chdir(tmp_path)
    import c10k.cli.load as cli_load

    monkeypatch.setitem(cli_load.DEFAULTS, "port", srv.port)
    try:
        status = main(["load"])
    finally:
        srv.close()
    assert status == 0
    s = json.loads((tmp_path / "results" / "load" / "summary.json").read_text())
    assert s["messages"]["echoed"] == 6 and s["message_bytes"] == 15
    assert "6 echoed on 2/2 connections" in capsys.readouterr().out


def test_unwritable_out_is_one_line_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["load", "-p", "9", "-q", "--out", "/proc/no-such-dir/out"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("c10k load: error: cannot write to --out")


def test_an_existing_but_unwritable_out_is_found_before_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    """/proc/self exists, so mkdir succeeds, but no file can be made in it (not even by root)."""
    assert main(["load", "-p", "9", "-q", "--out", "/proc/self"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("c10k load: error: cannot write to --out /proc/self")


def test_thresholds_and_rate_zero_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    from c10k.load.thresholds import Thresholds, broken

    summary = {"latency_us": {"p50": 900.0, "p99": 61_200.0}, "errors": {"timeout": 2}, "messages_per_s": 900.0}
    assert broken(summary, Thresholds(max_p99_us=50_000)) == ["p99 61.2 ms > --max-p99 50.0 ms"]
    assert broken(summary, Thresholds(max_p50_us=1000, max_errors=2, min_rate=500)) == []
    assert broken(summary, Thresholds(max_errors=0, min_rate=1000)) == [
        "2 errors > --max-errors 0", "900 messages/s < --min-rate 1,000"]
    assert main(["load", "--rate", "0", "--duration", "1"]) == 2
    assert "--rate must be more than 0" in capsys.readouterr().err


def test_dry_run_prints_the_plan_and_opens_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        assert main(["load", "-p", str(port), "-c", "5", "--dry-run"]) == 0
        assert capsys.readouterr().out.startswith(f"plan: 5 connections to 127.0.0.1:{port} in 1 process ")
        assert main(["load", "-p", str(port), "-c", "1", "--dry-run", "--json"]) == 0
        plan = json.loads(capsys.readouterr().out)
        assert plan["connections"] == 1 and plan["processes"] == 1 and plan["sources"] == []
        with pytest.raises(BlockingIOError):
            listener.accept()


def test_json_prints_the_summary_and_thresholds_fail_the_run(serve, tmp_path) -> None:
    server = serve("epoll", "--workers", "1")
    port = str(server.address[1])
    run = subprocess.run([sys.executable, "-m", "c10k", "load", "-p", port, "-c", "2", "-n", "3", "--json",
                          "--out", str(tmp_path / "a"), "--max-errors", "0", "--max-p99", "60s"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == json.loads((tmp_path / "a" / "summary.json").read_text())
    run = subprocess.run([sys.executable, "-m", "c10k", "load", "-p", port, "-c", "2", "-n", "3", "-q",
                          "--out", str(tmp_path / "b"), "--max-p50", "0.001us"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert run.stderr.startswith("c10k load: threshold broken: p50 ") and "> --max-p50 0.0 µs" in run.stderr
