"""`c10k doctor`: the capacity plan over made-up machines, and the command's output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest

from c10k.capacity import KERNEL_BYTES_PER_SOCKET
from c10k.limits import MachineLimits, machine_limits
from c10k.study.capacity import plan_capacity

HERE = MachineLimits(
    cpus=2, nofile_soft=20000, nofile_hard=20000, fd_setsize=1024, threads_max=192729, pid_max=32768,
    max_map_count=65530, nproc=96364, cgroup_pids_max=0, stack_bytes=8 * 2**20, ephemeral_ports=28232,
    ephemeral_range=(32768, 60999), somaxconn=4096, syn_backlog=2048, memory_total=24 * 2**30,
    memory_available=23 * 2**30,
)


def by_server(cap):
    return {a.server: a for a in cap.architectures}


def test_100000_connections_need_six_processes_and_nine_source_addresses():
    cap = plan_capacity(100000, HERE)
    assert cap.server_processes == 6 and cap.load_processes == 6
    assert cap.source_addresses == 9  # 40% of 28,232 ports each: c10k load's own plan
    assert cap.kernel_bytes == 100000 * 2 * KERNEL_BYTES_PER_SOCKET
    assert cap.memory_ok
    archs = by_server(cap)
    assert archs["epoll"].can_hold and archs["epoll-reuseport"].can_hold
    for single in ("poll", "threaded", "epoll-threads", "asyncio", "uvloop", "gevent", "trio"):
        assert not archs[single].can_hold
        assert "20,000 descriptors" in archs[single].why
    assert not archs["select"].can_hold and "FD_SETSIZE (1024)" in archs["select"].why


def test_select_holds_up_to_fd_setsize_only():
    archs = by_server(plan_capacity(1000, HERE))
    assert archs["select"].can_hold
    assert archs["select"].max_connections < 1024
    assert not by_server(plan_capacity(2000, HERE))["select"].can_hold


def test_threads_become_the_limit_when_they_are_tighter_than_descriptors():
    lim = replace(HERE, nofile_hard=1_000_000, max_map_count=20000)
    assert lim.thread_limit() == (10000, "vm.max_map_count (20000) / 2 maps per thread stack")
    threaded = by_server(plan_capacity(15000, lim))["threaded"]
    assert not threaded.can_hold
    assert threaded.why.startswith("thread limit: vm.max_map_count (20000)")
    lim = replace(lim, cgroup_pids_max=500)
    assert lim.thread_limit()[0] == 500


def test_memory_that_does_not_fit_is_said_so():
    lim = replace(HERE, memory_available=512 * 2**20)
    cap = plan_capacity(100000, lim)
    assert not cap.memory_ok
    assert any("kernel memory" in w for w in cap.warnings)
    assert not by_server(cap)["epoll"].can_hold
    assert by_server(cap)["epoll"].why.startswith("memory:")


def test_small_backlog_warns():
    cap = plan_capacity(10, replace(HERE, somaxconn=128))
    assert any("somaxconn is 128" in w for w in cap.warnings)


def test_zero_connections_is_an_error():
    with pytest.raises(ValueError):
        plan_capacity(0, HERE)


def test_machine_limits_reads_this_machine():
    lim = machine_limits()
    assert lim.nofile_hard >= lim.nofile_soft > 0
    assert lim.fd_setsize == 1024
    assert lim.ephemeral_ports == lim.ephemeral_range[1] - lim.ephemeral_range[0] + 1
    assert lim.thread_limit()[0] > 0


def doctor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "c10k", "doctor", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "COLUMNS": "200"})


def test_doctor_prints_the_limits_and_the_plan():
    out = doctor("-c", "30000")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for words in ("RLIMIT_NOFILE", "FD_SETSIZE", "threads per process", "vm.max_map_count",
                  "ephemeral ports", "net.core.somaxconn", "memory", "30,000 connections need",
                  "source address", "kernel memory", "Who can hold 30,000 connections here"):
        assert words in text, words
    rows = {line.split("│")[1].strip(): line for line in text.splitlines()
            if line.count("│") >= 4 and line.split("│")[1].strip() in ("select", "epoll", "poll")}
    assert "yes" in rows["epoll"] and "no" in rows["select"]


def test_doctor_json_is_machine_readable():
    out = doctor("--json", "-c", "100000")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["connections"] == 100000
    assert {a["server"] for a in data["architectures"]} >= {"select", "epoll", "threaded"}
    assert data["limits"]["fd_setsize"] == 1024


def test_max_workers_caps_what_the_epoll_server_can_hold():
    assert by_server(plan_capacity(1_000_000, HERE))["epoll"].can_hold
    few = by_server(plan_capacity(1_000_000, HERE, max_workers=8))["epoll"]
    assert not few.can_hold and few.max_connections == 8 * 19936 and "--max-workers" in few.why


def test_memory_verdict_and_figure_agree():
    """The doctor said 'does NOT fit in 21.1 GiB' while printing 19.1 GiB: the margin is now in the figure."""
    n = 2_000_000
    need = n * 2 * KERNEL_BYTES_PER_SOCKET
    cap = plan_capacity(n, replace(HERE, memory_available=int(need * 1.1)))
    assert not cap.memory_ok and cap.memory_needed > cap.limits.memory_available


def test_doctor_max_workers_option():
    out = doctor("-c", "1000000", "--max-workers", "8")
    assert out.returncode == 0, out.stderr
    epoll = next(line for line in out.stdout.splitlines() if line.startswith("│ epoll "))
    assert "159,488" in epoll and " no " in epoll


def test_doctor_rejects_a_bad_count_with_exit_2():
    out = doctor("-c", "0")
    assert out.returncode == 2
    assert "must be at least 1" in out.stderr and "Traceback" not in out.stderr
    for bad in (["-c", "1e15"], ["-c", str(10**15)], ["--max-workers", "0"]):
        out = doctor(*bad)
        assert out.returncode == 2, bad
        assert len(out.stderr.strip().splitlines()) <= 2 and "Traceback" not in out.stderr, bad
