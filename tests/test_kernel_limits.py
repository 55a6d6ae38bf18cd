"""Kernel limits a run meets, read through one reader pointed at a made-up /proc/sys tree,
and for real in a network namespace (the ephemeral port range is per namespace)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from c10k import capacity, limits
from c10k.cli import main
from c10k.errors import C10kError
from c10k.load.plan import plan_load

SETTINGS = {
    "net/netfilter/nf_conntrack_max": "262144", "net/netfilter/nf_conntrack_count": "100",
    "net/ipv4/tcp_mem": "287898\t383867\t575796", "fs/file-max": "2466170", "fs/file-nr": "3000\t0\t2466170",
    "fs/nr_open": "1048576", "net/core/somaxconn": "4096", "net/ipv4/tcp_max_syn_backlog": "2048",
    "net/ipv4/ip_local_port_range": "32768\t60999", "kernel/threads-max": "192729", "kernel/pid_max": "4194304",
    "vm/max_map_count": "1000000",
}


@pytest.fixture
def sysctl(tmp_path, monkeypatch):
    """A writable made-up /proc/sys; ``sysctl(name=value)`` changes it."""
    root = tmp_path / "sys"
    for rel, value in SETTINGS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(value + "\n")
    monkeypatch.setattr(limits, "SYSCTL_ROOT", root)
    monkeypatch.setattr(limits, "loopback_tracked", lambda ruleset=None: True)

    def set_(**values: str) -> Path:
        for name, value in values.items():
            (root / name.replace("__", "/")).write_text(value + "\n")
        return root
    return set_


def by_name(found):
    return {k.name: k for k in found}


def test_the_reader_reads_every_limit_from_the_tree(sysctl):
    lim = limits.machine_limits()
    assert (lim.conntrack_max, lim.conntrack_count) == (262144, 100)
    assert lim.tcp_mem == (287898, 383867, 575796)
    assert (lim.file_max, lim.file_nr, lim.nr_open) == (2466170, 3000, 1048576)
    assert (lim.somaxconn, lim.syn_backlog, lim.ephemeral_ports) == (4096, 2048, 28232)


def test_a_full_conntrack_table_blocks_and_names_its_fix(sysctl):
    sysctl(net__netfilter__nf_conntrack_count="262000")
    found = by_name(capacity.kernel_limits(1000, limits.machine_limits()))
    conntrack = found["net.netfilter.nf_conntrack_max"]
    assert conntrack.status == "blocks"
    assert "sysctl -w net.netfilter.nf_conntrack_max=" in conntrack.fix
    with pytest.raises(C10kError, match=r"net.netfilter.nf_conntrack_max is 262,144 .*--tune"):
        plan_load("127.0.0.1", 7000, 1000)


def test_tune_raises_the_limit_and_says_so(sysctl):
    root = sysctl(net__netfilter__nf_conntrack_count="262000")
    plan = plan_load("127.0.0.1", 7000, 1000, tune=True)
    raised = int((root / "net/netfilter/nf_conntrack_max").read_text())
    assert raised >= 263000
    assert plan.notes[0] == f"tuned net.netfilter.nf_conntrack_max: 262144 -> {raised}"


def test_untracked_loopback_or_no_conntrack_is_fine(sysctl, monkeypatch):
    sysctl(net__netfilter__nf_conntrack_count="262000")
    lim = limits.machine_limits()
    from dataclasses import replace
    assert by_name(capacity.kernel_limits(1000, replace(lim, loopback_tracked=False)))[
        "net.netfilter.nf_conntrack_max"].status == "ok"
    assert by_name(capacity.kernel_limits(1000, replace(lim, conntrack_max=0)))[
        "net.netfilter.nf_conntrack_max"].value == "not loaded"


def test_tight_tcp_mem_blocks_and_a_small_somaxconn_slows(sysctl):
    sysctl(net__ipv4__tcp_mem="100 200 300", net__core__somaxconn="128")
    found = by_name(capacity.kernel_limits(10_000, limits.machine_limits()))
    assert found["net.ipv4.tcp_mem"].status == "blocks"
    assert found["net.ipv4.tcp_mem"].fix.startswith('sysctl -w net.ipv4.tcp_mem="')
    assert found["net.core.somaxconn"].status == "warn"
    with pytest.raises(C10kError, match="net.ipv4.tcp_mem"):
        plan_load("127.0.0.1", 7000, 10_000)


def test_too_few_files_system_wide_blocks(sysctl):
    sysctl(**{"fs__file-max": "5000"})
    found = by_name(capacity.kernel_limits(10_000, limits.machine_limits()))
    assert found["fs.file-max"].status == "blocks" and found["fs.file-max"].needed == "23,000"


def test_doctor_shows_and_fixes_the_blocking_limit(sysctl, capsys):
    root = sysctl(net__netfilter__nf_conntrack_count="262000")
    assert main(["doctor", "-c", "5000", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    stops = [k["name"] for k in data["kernel_limits"] if k["status"] == "blocks"]
    assert stops == ["net.netfilter.nf_conntrack_max"]
    assert main(["doctor", "-c", "5000", "--fix", "--json"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("changed net.netfilter.nf_conntrack_max: 262144 -> ")
    assert int((root / "net/netfilter/nf_conntrack_max").read_text()) > 267000


def test_loopback_exemption_is_read_from_the_ruleset():
    exempt = ('table ip raw {\n chain pre { type filter hook prerouting priority raw; iif "lo" notrack\n }\n'
              ' chain out { type filter hook output priority raw; oif "lo" notrack\n }\n}\n')
    assert limits.loopback_tracked(exempt) is False
    assert limits.loopback_tracked('iifname "lo" notrack\n') is True  # only one direction
    assert limits.loopback_tracked("") is True


@pytest.fixture
def netns():
    name = f"c10k-test-{uuid.uuid4().hex[:8]}"
    if subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode != 0:
        pytest.fail("cannot create a network namespace (root and iproute2 are needed)")
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_a_namespace_with_a_tiny_port_range_plans_more_source_addresses(netns):
    """The ephemeral port range is per namespace: doctor reads the one it runs in, and plans as load does."""
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 40009"],
                   check=True)
    out = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-m", "c10k", "doctor", "--json",
                          "-c", "100"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["limits"]["ephemeral_ports"] == 10
    assert data["source_addresses"] == 25  # 4 of 10 ports per address
    ports = next(k for k in data["kernel_limits"] if k["name"] == "net.ipv4.ip_local_port_range")
    assert ports["value"].startswith("40000-40009") and ports["needed"] == "25 source address(es)"
