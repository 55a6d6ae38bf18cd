"""Real namespaces (root): made, shaped, removed at the end, after SIGTERM and after SIGKILL.

Every test compares our names (``c10k<RUN>-...``) in ``ip netns list`` and
``ip -o link`` before and after, so nothing of a run may outlive it; other
tools' namespaces on the machine are left out of the comparison.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from c10k.topology import Topology, parse_link, probe
from c10k.topology.netns import list_links, list_namespaces, remove_stale, wait_gone
from c10k.topology.plan import run_id_of

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="network namespaces need root and iproute2")


def ours() -> set[str]:
    return {n for n in (*list_namespaces(), *list_links()) if run_id_of(n)}


@pytest.fixture
def clean_after():
    before = ours()
    yield before
    assert wait_gone(sorted(ours() - before)), f"left behind: {sorted(ours() - before)}"


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True, timeout=30).stdout


def test_hosts_get_their_addresses_ports_and_link_and_all_goes_at_the_end(clean_after) -> None:
    with Topology.create(2, parse_link("rate 1gbit")) as topo:
        made = {*topo.plan.namespaces, *topo.plan.links}
        assert made <= ours()
        for h in topo.plan.hosts:
            assert f"inet {h.address}/24" in ip("-n", h.namespace, "addr", "show", "dev", "eth0")
        c1 = topo.plan.clients[0]
        ports = subprocess.run(["ip", "netns", "exec", c1.namespace, "cat",
                                "/proc/sys/net/ipv4/ip_local_port_range"], capture_output=True, text=True,
                               check=True, timeout=30).stdout.split()
        assert ports == ["1024", "65535"]
        qdiscs = subprocess.run(["tc", "-n", c1.namespace, "qdisc", "show", "dev", "eth0"], capture_output=True,
                                text=True, check=True, timeout=30).stdout
        assert "tbf" in qdiscs and "rate 1Gbit" in qdiscs
        assert "tbf" in subprocess.run(["tc", "qdisc", "show", "dev", c1.veth], capture_output=True, text=True,
                                       check=True, timeout=30).stdout
        topo.set_link(parse_link("none"))
        assert "tbf" not in subprocess.run(["tc", "-n", c1.namespace, "qdisc", "show", "dev", "eth0"],
                                           capture_output=True, text=True, check=True, timeout=30).stdout
        # a server in the server host answers a client host over the bridge
        srv = topo.plan.server
        code = ("import socket,sys; s=socket.create_server((sys.argv[1],0)); print(s.getsockname()[1],flush=True);"
                " c,_=s.accept(); c.sendall(c.recv(100))")
        server = subprocess.Popen(["ip", "netns", "exec", srv.namespace, sys.executable, "-c", code, srv.address],
                                  stdout=subprocess.PIPE, text=True)
        try:
            port = server.stdout.readline().strip()  # type: ignore[union-attr]
            client = ("import socket,sys; c=socket.create_connection((sys.argv[1],int(sys.argv[2])),10);"
                      " c.sendall(b'ping'); print(c.getsockname()[0], c.recv(100).decode())")
            out = subprocess.run(["ip", "netns", "exec", c1.namespace, sys.executable, "-c", client, srv.address,
                                  port], capture_output=True, text=True, timeout=30, check=True).stdout.split()
            assert out == [c1.address, "ping"]
        finally:
            server.kill()
            server.wait(10)
            server.stdout.close()  # type: ignore[union-attr]
    assert not made & ours()


def test_a_failure_while_building_removes_what_was_made(clean_after, monkeypatch) -> None:
    def fail(self: Topology) -> None:
        ip("netns", "add", self.plan.server.namespace)
        raise RuntimeError("boom")

    monkeypatch.setattr(Topology, "_build", fail)
    with pytest.raises(RuntimeError):
        Topology.create(2)


_HOLDER = """
import sys, time
from c10k.topology import Topology
topo = Topology.create(2)
print(topo.plan.run_id, flush=True)
sys.stdin.read()   # until the test closes our stdin (or kills us)
topo.remove()
"""


def _holder() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    run_id = proc.stdout.readline().strip()  # type: ignore[union-attr]
    assert len(run_id) == 6, "the holder did not make its topology"
    return proc, run_id


def test_a_killed_runs_leftovers_are_removed_by_the_next_and_a_live_runs_are_not(clean_after) -> None:
    live, live_id = _holder()
    dead, dead_id = _holder()
    try:
        dead.kill()
        dead.wait(10)
        left = {n for n in ours() if run_id_of(n) == dead_id}
        assert len(left) == 3 + 4  # 3 namespaces; bridge and 3 veths
        removed = set(remove_stale())
        assert left <= removed
        assert not {n for n in removed if run_id_of(n) == live_id}
        assert wait_gone(sorted(left))
        assert {n for n in ours() if run_id_of(n) == live_id}, "a live run's hosts were removed"
    finally:
        live.stdin.close()  # type: ignore[union-attr]
        live.wait(30)
        dead.kill()
        dead.wait(10)
        for p in (live, dead):
            p.stdout.close()  # type: ignore[union-attr]
            if p.stdin and not p.stdin.closed:
                p.stdin.close()
    assert not {n for n in ours() if run_id_of(n) == live_id}


def test_probe_says_what_works_here() -> None:
    facts = probe()
    assert facts["netns"] is True
    assert isinstance(facts["netem"], bool) and isinstance(facts["tbf"], bool)
    assert not {n for n in list_namespaces() if n.endswith("-probe")}


# --- the study over namespaces ---------------------------------------------------------

SMALL = """
name = "netns small"
messages = 20
[[case]]
server = "epoll"
connections = 50
link = ["none", "rate 100mbit"]
"""


def study(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "c10k", "study", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})


def test_a_study_case_over_two_client_hosts(tmp_path: Path, clean_after) -> None:
    matrix = tmp_path / "small.toml"
    matrix.write_text(SMALL)
    links_before = set(list_links())
    proc = study("--matrix", str(matrix), "--topology", "netns", "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    topo = results["topology"]
    assert topo["kind"] == "netns" and len(topo["clients"]) == 2
    case, shaped = results["cases"]
    assert case["status"] == "passed", case["reason"]
    assert shaped["status"] == "passed" and shaped["link"] == "rate 100mbit"
    assert shaped["directory"] == "epoll/50-rate100mbit" and shaped["summary"]["messages"]["echoed"] == 50 * 20
    summary = case["summary"]
    assert summary["host"] == topo["server"] and not summary["host"].startswith("127.")
    assert summary["messages"]["echoed"] == 50 * 20
    assert [h["connections"] for h in summary["client_hosts"]] == [25, 25]
    rows = (tmp_path / "out" / "epoll" / "50" / "connections.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert header[-1] == "host" and len(rows) == 51
    sources = {r.split(",")[header.index("source")].split(":")[0] for r in rows[1:]}
    assert sources == set(topo["clients"])
    for r in rows[1:]:  # each connection left from the address of the host the CSV names
        cells = r.split(",")
        k = int(cells[-1].removeprefix("client")) - 1
        assert cells[header.index("source")].startswith(topo["clients"][k] + ":")
    assert "network namespaces" in (tmp_path / "out" / "REPORT.md").read_text()
    assert set(list_links()) - links_before <= set()  # no link of the run is left


def test_sigterm_mid_study_removes_the_hosts(tmp_path: Path, clean_after) -> None:
    matrix = tmp_path / "long.toml"
    matrix.write_text('messages = 100000\n[[case]]\nserver = "epoll"\nconnections = 20\ntimeout = 120\n')
    before = ours()
    proc = subprocess.Popen([sys.executable, "-m", "c10k", "study", "--matrix", str(matrix), "--topology", "netns",
                             "--out", str(tmp_path / "out")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        made: set[str] = set()
        while time.monotonic() < deadline and not any(n.endswith("-h2") for n in made):
            made = ours() - before
            time.sleep(0.1)
        assert made, "the study never made its hosts"
        # wait until the case's load is running in the client hosts
        client = next(n for n in made if n.endswith("-client1"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not ip("netns", "pids", client).split():
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(90) in (0, 130)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stderr.close()  # type: ignore[union-attr]
    assert wait_gone(sorted(made)), f"left behind: {sorted(made & ours())}"


@pytest.mark.parametrize("args, words", [
    (["--topology", "netns", "--clients", "0"], "--clients must be 1 to"),
    (["--topology", "netns", "--link", "delay 5"], "delay '5' is not a time"),
    (["--topology", "netns", "--link", "speed 1gbit"], "unknown word 'speed'"),
    (["--link", "rate 1gbit"], "need --topology netns"),
    (["--matrix", "wan"], "add --topology netns"),
])
def test_bad_network_options_get_one_line_and_exit_2(args: list[str], words: str, tmp_path: Path) -> None:
    proc = study(*args, "--out", str(tmp_path / "out"), timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()
