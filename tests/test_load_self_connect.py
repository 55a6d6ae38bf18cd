"""Issue 8, defect 2: a connection to itself is an error, never an echo.

TCP allows a self-connect: when nothing listens on a loopback port and the
kernel picks that same port as the source port, the SYN meets itself
(simultaneous open) and connect() succeeds, so every byte sent comes straight
back. To make it happen every time, the test runs the load in a network
namespace of its own whose ephemeral port range starts at the target port: the
kernel tries the port of the range's low end's parity first, so the very first
connect gets source port == target port.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

TARGET_PORT = 40000

needs_netns = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2 to make a network namespace")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@pytest.fixture
def namespace() -> Iterator[str]:
    """A fresh network namespace with loopback up and ephemeral ports TARGET_PORT..TARGET_PORT+1."""
    name = f"c10k-self-{uuid.uuid4().hex[:8]}"
    ip("netns", "add", name)
    try:
        ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        subprocess.run(["ip", "netns", "exec", name, "sysctl", "-w",
                        f"net.ipv4.ip_local_port_range={TARGET_PORT} {TARGET_PORT + 1}"],
                       check=True, capture_output=True, text=True, timeout=30)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=30)


@needs_netns
@pytest.mark.timeout(120)
def test_self_connect_is_an_error_not_an_echo(namespace: str, tmp_path: Path) -> None:
    # --source-ip and --processes 1 keep the planner's arithmetic away from the two-port range.
    run = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, "-m", "c10k", "load", "--host", "127.0.0.1",
         "-p", str(TARGET_PORT), "-c", "1", "-n", "20", "--timeout", "5", "--processes", "1",
         "--source-ip", "127.0.0.1", "--out", str(tmp_path), "--quiet"],
        capture_output=True, text=True, timeout=90)
    assert "Traceback" not in run.stderr, run.stderr
    s = json.loads((tmp_path / "summary.json").read_text())
    rows = (tmp_path / "connections.csv").read_text().splitlines()
    header = rows[0].split(",")
    row = dict(zip(header, rows[1].split(","), strict=True))
    # The kernel did pick the target port as the source port: this run was a self-connect.
    assert row["source"] == f"127.0.0.1:{TARGET_PORT}", row
    assert run.returncode == 1, (run.stdout, run.stderr)
    assert s["errors"] == {"self_connect": 1}
    assert s["messages"]["echoed"] == 0 and s["bytes"]["echoed"] == 0
    assert s["connections"]["completed"] == 0 and s["connections"]["failed"] == 1
    assert s["latency_us"]["p50"] is None
    assert row["error"] == "self_connect" and row["messages"] == "0"
    assert "self_connect=1" in run.stderr
