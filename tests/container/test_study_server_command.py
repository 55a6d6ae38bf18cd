"""`c10k study --server-command`: the Dockerized epoll server as a study's rows, under podman.

Marked ``container`` (``make container-test``): needs root and podman, and the
image the session's ``image`` fixture builds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from container_helpers import ENV, podman

from c10k.study.container import NAME_PREFIX
from c10k.study.verdict import PASSED_RESULT
from helpers import wait_until

pytestmark = pytest.mark.container

# epoll at 1 and 1000 connections, 20 messages each.
TINY = 'name = "container tiny"\n[[case]]\nserver = "epoll"\nconnections = [1, 1000]\nmessages = 20\n'


def test_study_runs_the_image_as_its_server_samples_it_and_leaves_no_container(image, tmp_path):
    matrix = tmp_path / "tiny.toml"
    matrix.write_text(TINY)
    out = tmp_path / "out"
    template = f"podman run --rm --name {{name}} -p {{port}}:7000 {image} -p 7000"
    proc = subprocess.run([sys.executable, "-m", "c10k", "study", "--matrix", str(matrix), "--server-command",
                           template, "--out", str(out)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **ENV})
    assert proc.returncode == 0, proc.stdout + proc.stderr

    results = json.loads((out / "results.json").read_text())
    assert results["topology"]["kind"] == "container"
    cases = {c["connections"]: c for c in results["cases"]}
    assert sorted(cases) == [1, 1000]
    for n, case in cases.items():
        assert case["status"] == "passed", case["reason"]
        assert case["reason"] == PASSED_RESULT
        assert case["server"] == "epoll (container)"
        assert case["container"]["name"].startswith(NAME_PREFIX)
        assert case["container"]["engine"] == "podman"
        assert case["server_exit"] == 0  # podman stop's SIGTERM, and the container's own exit status
        usage = case["server_usage"]
        assert usage["peak_rss_bytes"] > 0 and usage["samples"] > 0
        # The sampler watched the container's PID 1 and its workers (the host's view of them), not
        # the `podman run` client, which is one process (conmon, not the client, runs the container).
        assert usage["peak_processes"] >= 2 and usage["peak_fds"] > 0
        assert case["summary"]["messages"]["echoed"] == n * 20
        # No {stats} in the template: the container's server wrote no stats file.
        assert case["server_stats"] is None
    assert cases[1000]["server_usage"]["cpu_s"] > 0
    assert any("wrote no stats file" in note for note in results["notes"])
    report = (out / "REPORT.md").read_text()
    assert "epoll (container)" in report and "NATed into the server's container" in report

    assert study_containers() == []


def study_containers() -> list[str]:
    return [n for n in podman("ps", "--all", "--format", "{{.Names}}").stdout.split() if n.startswith(NAME_PREFIX)]


def test_sigterm_mid_case_stops_the_study_and_removes_its_container(image, tmp_path):
    matrix = tmp_path / "long.toml"
    # An open loop that would send for 100 s: the container is surely running when the signal comes.
    matrix.write_text('[[case]]\nserver = "epoll"\nconnections = 10\nrate = 10\nduration = 100\n')
    template = f"podman run --rm --name {{name}} -p {{port}}:7000 {image} -p 7000"
    proc = subprocess.Popen([sys.executable, "-m", "c10k", "study", "--matrix", str(matrix), "--server-command",
                             template, "--out", str(tmp_path / "out")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **ENV})
    try:
        wait_until(lambda: bool(study_containers()), timeout=120, interval=0.5, what="the case's container")
        proc.send_signal(signal.SIGTERM)  # the study stops as on Ctrl-C
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err
    assert study_containers() == []
