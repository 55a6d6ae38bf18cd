"""`c10k.capacity`: one answer per question, the same for the tool that advises and the tools that act."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace

import pytest

from c10k import capacity
from c10k.limits import MachineLimits, machine_limits
from c10k.load.plan import plan_load, plan_source_addresses
from c10k.study.capacity import plan_capacity

HERE = MachineLimits(
    cpus=2, nofile_soft=20000, nofile_hard=20000, fd_setsize=1024, threads_max=192729, pid_max=32768,
    max_map_count=65530, nproc=96364, cgroup_pids_max=0, stack_bytes=8 * 2**20, ephemeral_ports=28232,
    ephemeral_range=(32768, 60999), somaxconn=4096, syn_backlog=2048, memory_total=24 * 2**30,
    memory_available=23 * 2**30,
)


def test_one_answer_for_100000_connections_here():
    assert capacity.connections_per_process(20000) == 19936
    assert capacity.processes_needed(100_000, 20000) == 6
    assert capacity.load_processes(100_000, 20000, cpus=2) == 6
    assert capacity.server_workers(100_000, 20000, cpus=2) == 6
    assert capacity.source_addresses_needed(100_000, 28232) == 9
    cap = plan_capacity(100_000, HERE)
    assert (cap.load_processes, cap.source_addresses, cap.server_processes) == (6, 9, 6)


@pytest.mark.parametrize("ports", [0, 1, 2])
def test_a_tiny_ephemeral_range_still_plans(ports):
    assert capacity.ports_per_source(ports) == 1
    assert capacity.source_addresses_needed(3, ports) == 3
    assert plan_source_addresses("127.0.0.1", socket.AF_INET, 3, ports=ports) == [
        "127.0.0.2", "127.0.0.3", "127.0.0.4"]
    assert plan_source_addresses("127.0.0.1", socket.AF_INET, 1, ports=ports) == []
    cap = plan_capacity(3, replace(HERE, ephemeral_ports=ports, ephemeral_range=(40000, 40000 + ports - 1)))
    assert cap.source_addresses == 3


def test_memory_grows_with_the_message_size():
    small = capacity.load_memory_bytes(1, 1, message_size=15, samples=2)
    big = capacity.load_memory_bytes(1, 1, message_size=100 * 10**6, samples=2)
    assert big - small >= 4 * (100 * 10**6 - 15)


def test_doctor_and_load_plan_the_same_processes_and_source_addresses():
    """The numbers `c10k doctor` prints are the ones `c10k load` plans (and uses) on this machine."""
    # Both commands as a user runs them, except that loopback counts as untracked by conntrack:
    # a table other runs on this machine filled for the moment would make the load refuse (rightly),
    # and this test is about the two plans agreeing, not about the table.
    untracked = ("import sys; from c10k import limits; limits.loopback_tracked = lambda ruleset=None: False; "
                 "from c10k.cli import main; sys.exit(main(sys.argv[1:]))")
    for n in (1, 1000, 30_000, 100_000):
        doctor = subprocess.run([sys.executable, "-c", untracked, "doctor", "--json", "-c", str(n)],
                                capture_output=True, text=True, timeout=60)
        assert doctor.returncode == 0, doctor.stderr
        load = subprocess.run([sys.executable, "-c", untracked, "load", "--dry-run", "--json", "-c", str(n)],
                              capture_output=True, text=True, timeout=60)
        assert load.returncode == 0, load.stderr
        advice, plan = json.loads(doctor.stdout), json.loads(load.stdout)
        assert advice["load_processes"] == plan["processes"], n
        assert advice["source_addresses"] == max(1, len(plan["sources"])), n


def test_doctor_imports_no_heavy_libraries():
    code = ("import sys, io, contextlib\n"
            "from c10k.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    assert main(['doctor', '-c', '1000']) == 0\n"
            "print(sorted(m for m in ('matplotlib', 'numpy', 'psutil') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_machine_limits_reads_this_machine():
    lim = machine_limits()
    assert lim.nofile_hard >= lim.nofile_soft > 0
    assert lim.cpus == len(os.sched_getaffinity(0))


#: Forks the load from a fresh, small interpreter: a child's ru_maxrss keeps the high-water
#: mark of the memory it was forked with, and a child of pytest starts with all of pytest's.
_SPAWN = ("import os, sys\n"
          "pid = os.fork()\n"
          "if pid == 0:\n"
          "    os.execv(sys.executable, [sys.executable, '-m', 'c10k', 'load', *sys.argv[1:]])\n"
          "_, status, usage = os.wait4(pid, 0)\n"
          "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024)\n")


def _peak_rss_of_load(port: int, *args: str) -> tuple[int, int]:
    """(exit status, peak RSS in bytes) of a one-process `c10k load` run (wait4's rusage is exact)."""
    out = subprocess.run([sys.executable, "-c", _SPAWN, "-p", str(port), "--quiet", "--processes", "1", *args],
                         capture_output=True, text=True, timeout=300)
    status, peak = out.stdout.split()
    return int(status), int(peak)


@pytest.mark.parametrize("connections,size,count", [(1, 20 * 10**6, 2), (4, 4 * 10**6, 2), (1000, 15, 20)])
def test_planned_memory_is_within_2x_of_the_real_peak(serve, tmp_path, connections, size, count):
    server = serve("epoll", "--workers", "1")
    status, peak = _peak_rss_of_load(server.address[1], "-c", str(connections), "--size", str(size),
                                     "-n", str(count), "--timeout", "300", "--out", str(tmp_path / "out"))
    assert status == 0, (tmp_path / "out" / "summary.json").read_text()[:2000]
    plan = plan_load("127.0.0.1", server.address[1], connections, processes=1, samples=connections * count,
                     message_size=size)
    user = plan.memory_bytes - capacity.kernel_bytes(connections)
    assert peak / 2 <= user <= peak * 2, (user, peak)


def test_localhost_falls_back_to_ipv6_and_ipv6_is_bracketed():
    from c10k.load.plan import resolve
    from c10k.text import host_port

    with socket.socket(socket.AF_INET6) as listener:
        listener.bind(("::1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        family, sockaddr = resolve("localhost", port)
        assert family == socket.AF_INET6 and sockaddr[0] == "::1"
        plan = plan_load("localhost", port, 1)
        assert f"to [::1]:{port} in" in plan.describe()
    assert host_port("127.0.0.1", 7000) == "127.0.0.1:7000"
    assert host_port("::1", 7000) == "[::1]:7000"


def test_reuseport_workers_leave_room_for_the_kernels_uneven_spread():
    # The kernel hashes each connection to a listener: model it as uniform random, many times over.
    import numpy as np

    per = capacity.connections_per_process(20000)
    for n in (40_000, 100_000, 1_000_000):
        workers = capacity.reuseport_workers(n, 20000, cpus=2)
        assert workers >= capacity.server_workers(n, 20000, cpus=2)
        spreads = np.random.default_rng(n).multinomial(n, [1 / workers] * workers, size=50)
        assert spreads.max() < per, f"{n:,} over {workers} workers: one got {spreads.max():,}"
    assert capacity.reuseport_workers(1_000_000, 20000, cpus=2) == 56
    assert capacity.reuseport_workers(1000, 20000, cpus=2) == 2
