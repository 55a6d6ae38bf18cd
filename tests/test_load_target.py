"""`c10k load TARGET`: HOST:PORT, tcp://HOST:PORT, [IPv6]:PORT, unix:/path.sock, and --host/-p beside it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from c10k.cli import main
from c10k.errors import UsageError
from c10k.load.target import Target, merge_target, parse_target


@pytest.mark.parametrize(("text", "target"), [
    ("127.0.0.1:7000", Target("127.0.0.1", 7000)),
    ("localhost:80", Target("localhost", 80)),
    ("echo.example", Target("echo.example", None)),
    ("tcp://10.0.0.1:9000", Target("10.0.0.1", 9000)),
    ("TCP://10.0.0.1:9000/", Target("10.0.0.1", 9000)),
    ("[::1]:7000", Target("::1", 7000)),
    ("tcp://[fe80::1%eth0]:7", Target("fe80::1%eth0", 7)),
    ("[::1]", Target("::1", None)),
    ("unix:/run/echo.sock", Target(path="/run/echo.sock")),
    ("unix:///run/echo.sock", Target(path="/run/echo.sock")),
    ("unix:relative.sock", Target(path="relative.sock")),
])
def test_target_forms(text: str, target: Target) -> None:
    assert parse_target(text) == target


@pytest.mark.parametrize(("text", "words"), [
    ("unix:", "needs a path"),
    ("::1:7000", "in brackets"),
    ("[::1:7000", "as [::1]:7000"),
    ("[::1]7000", "as [::1]:7000"),
    ("host:0", "1..65535"),
    ("host:70000", "1..65535"),
    ("host:http", "1..65535"),
    (":7000", "no host"),
    ("tls://host:443", "TLS is not supported"),
    ("https://host", "TLS is not supported"),
    ("udp://host:53", "unknown scheme"),
])
def test_target_mistakes_are_named(text: str, words: str) -> None:
    with pytest.raises(UsageError, match=words.replace("[", r"\[").replace("]", r"\]")):
        parse_target(text)


def test_target_and_host_port_merge_or_disagree() -> None:
    assert merge_target(None, "h", 5) == Target("h", 5)
    assert merge_target("h:5", "h", 5) == Target("h", 5)  # agreeing is fine
    assert merge_target("h", None, 5) == Target("h", 5)  # the port from -p
    with pytest.raises(UsageError, match="--host other disagree"):
        merge_target("h:5", "other", None)
    with pytest.raises(UsageError, match="-p 6 disagree"):
        merge_target("h:5", None, 6)
    with pytest.raises(UsageError, match="unix socket"):
        merge_target("unix:/x.sock", None, 7000)


@pytest.mark.parametrize("argv", [
    ["unix:/tmp/x.sock", "-p", "7000"],
    ["127.0.0.1:7000", "--host", "127.0.0.2"],
    ["127.0.0.1:7000", "-p", "7001"],
    ["::1:7000"],
    ["tls://127.0.0.1:7000"],
    ["unix:/tmp/x.sock", "--source-ip", "127.0.0.2"],
])
def test_target_usage_errors_from_the_shell(argv: list[str], tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "c10k", "load", *argv, "--out", str(tmp_path), "--quiet"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert not (tmp_path / "summary.json").exists()


def test_ipv6_target_in_brackets(serve, tmp_path: Path) -> None:
    server = serve("select", "--host", "::1")
    assert main(["load", f"[::1]:{server.port}", "-c", "3", "-n", "10", "--out", str(tmp_path), "--quiet"]) == 0
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["target"] == f"[::1]:{server.port}" and s["host"] == "::1" and s["port"] == server.port
    assert s["messages"]["echoed"] == 30


def test_target_with_the_port_from_p(serve, tmp_path: Path) -> None:
    server = serve("select")
    assert main(["load", "tcp://127.0.0.1", "-p", str(server.port), "-c", "2", "-n", "5",
                 "--out", str(tmp_path), "--quiet"]) == 0
    assert json.loads((tmp_path / "summary.json").read_text())["messages"]["echoed"] == 10


def test_dry_run_names_the_unix_target(capsys, tmp_path: Path) -> None:
    path = str(tmp_path / "x.sock")
    assert main(["load", f"unix:{path}", "-c", "3", "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["target"] == f"unix:{path}" and plan["sources"] == []
