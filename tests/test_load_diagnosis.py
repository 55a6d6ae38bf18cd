"""Why connections timed out: "the server never accepted" against "accepted but did not answer".

The verdict is pure logic, tested on made-up evidence; the counters' reader is
tested on made-up /proc/net/netstat files; and two real runs tell the cases
apart. Those run server and load in a network namespace of their own, so that
ListenOverflows counts only their listener, not whatever else this host runs.
"""

from __future__ import annotations

import json
import selectors
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from c10k import netstat
from c10k.load import run_load
from c10k.load.diagnosis import TimeoutEvidence, diagnose
from c10k.netstat import is_local_address, listen_counters
from netns import Hosts, netns_available
from test_load_faults import ThreadServer, stall

HEADER = "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPHPHits\n"


@pytest.mark.parametrize(("evidence", "verdict", "words"), [
    (TimeoutEvidence(), None, "no timeouts"),
    (TimeoutEvidence(connect_timeouts=8, silent=2, listen_overflows=24, listen_drops=24), "never_accepted",
     "ListenOverflows +24, ListenDrops +24"),
    (TimeoutEvidence(silent=3, listen_overflows=0, listen_drops=1), "never_accepted", "ListenDrops +1"),
    (TimeoutEvidence(connect_timeouts=4, silent=2, queue_full=90, unix=True), "never_accepted",
     "turned away 90 times"),
    (TimeoutEvidence(silent=3, listen_overflows=0, listen_drops=0, unaccepted=3), "never_accepted",
     "still holds 3 connections never accepted"),
    (TimeoutEvidence(silent=10, listen_overflows=0, listen_drops=0), "accepted_no_answer",
     "10 connections got no byte back"),
    (TimeoutEvidence(silent=10, listen_overflows=0, listen_drops=0, unaccepted=0), "accepted_no_answer",
     "10 connections got no byte back"),
    (TimeoutEvidence(silent=1, unix=True), "accepted_no_answer", "1 connection got no byte back"),
    (TimeoutEvidence(connect_timeouts=5, listen_overflows=0, listen_drops=0), "connect_unanswered", "5 connects"),
    (TimeoutEvidence(stalled=2, listen_overflows=7, listen_drops=7), "answered_then_stalled",
     "2 connections stalled"),
    (TimeoutEvidence(silent=4), "unknown", "not on this host"),
    (TimeoutEvidence(connect_timeouts=4), "unknown", "not on this host"),
])
def test_verdicts(evidence: TimeoutEvidence, verdict: str | None, words: str) -> None:
    found = diagnose(evidence)
    assert found["verdict"] == verdict
    assert words in found["reason"]
    assert found["silent"] == evidence.silent and found["listen_overflows"] == evidence.listen_overflows


def test_counters_are_read_from_the_tcpext_lines(tmp_path: Path, monkeypatch) -> None:
    fake = tmp_path / "netstat"
    monkeypatch.setattr(netstat, "PROC_NET", tmp_path)
    fake.write_text(HEADER + "TcpExt: 1 55132 55140 9\nIpExt: InNoRoutes\nIpExt: 0\n")
    assert listen_counters() == {"ListenOverflows": 55132, "ListenDrops": 55140}
    fake.write_text("IpExt: InNoRoutes\nIpExt: 0\n" + HEADER + "TcpExt: 1 2 3 4\n")
    assert listen_counters() == {"ListenOverflows": 2, "ListenDrops": 3}
    fake.write_text(HEADER + "TcpExt: 1 two 3 4\n")
    assert listen_counters() is None
    fake.unlink()
    assert listen_counters() is None


TCP = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"


def test_accept_queue_is_the_listeners_rx_queue(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(netstat, "PROC_NET", tmp_path)
    (tmp_path / "tcp").write_text(TCP + "".join(f"{i:4}: {local} 00000000:0000 {st} 00000000:{rx} 00:0 0 0 0 1\n"
                                                for i, (local, st, rx) in enumerate([
        ("0100007F:1B58", "0A", "00000003"),  # 127.0.0.1:7000, listening, 3 waiting
        ("00000000:1B58", "0A", "00000002"),  # 0.0.0.0:7000, a SO_REUSEPORT sibling: 2 more
        ("0200007F:1B58", "0A", "00000009"),  # 127.0.0.2:7000: another address
        ("0100007F:1B59", "0A", "00000009"),  # another port
        ("0100007F:1B58", "01", "00000040"),  # an established connection's receive queue
    ])))
    (tmp_path / "tcp6").write_text(TCP + "   0: 00000000000000000000000001000000:1B58 "
                                         "00000000000000000000000000000000:0000 0A 00000000:00000004 00:0 0 0 0 1\n")
    assert netstat.accept_queue("127.0.0.1", 7000) == 5
    assert netstat.accept_queue("::1", 7000) == 4
    assert netstat.accept_queue("127.0.0.1", 7002) is None


@pytest.mark.timeout(60)
def test_silent_timeouts_are_counted_across_load_processes() -> None:
    srv = ThreadServer(stall)  # reads, never answers
    try:
        r = run_load("127.0.0.1", srv.port, connections=4, count=3, processes=2, timeout=0.5)
    finally:
        srv.close()
    t = r.summary["timeouts"]
    assert r.summary["errors"] == {"timeout": 4}
    assert (t["silent"], t["stalled"], t["connect_timeouts"]) == (4, 0, 0)
    assert t["unaccepted"] == 0  # all four were accepted


def test_only_this_hosts_addresses_are_local() -> None:
    assert is_local_address(socket.AF_INET, "127.0.0.1")
    assert is_local_address(socket.AF_INET, "127.0.0.9")  # all of 127/8
    assert not is_local_address(socket.AF_INET, "192.0.2.1")  # TEST-NET-1, nobody's


# Both servers print their port, then hold their connections until stdin closes.
NEVER_ACCEPTS = """
import socket, sys
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
print(s.getsockname()[1], flush=True)
sys.stdin.read()
"""
NEVER_ACCEPTS_ROOMY = NEVER_ACCEPTS.replace("listen(1)", "listen(128)")
ACCEPTS_NEVER_ANSWERS = """
import socket, sys, threading
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(128)
held = []
threading.Thread(target=lambda: [held.append(s.accept()) for _ in range(1000)], daemon=True).start()
print(s.getsockname()[1], flush=True)
sys.stdin.read()
"""


@pytest.fixture
def host() -> Iterator[Hosts]:
    if not netns_available():
        pytest.skip("needs root and iproute2 to make a network namespace")
    with Hosts("solo") as hosts:
        yield hosts


def run_in(hosts: Hosts, server: str, connections: int, out: Path) -> dict:
    """Start ``server`` and run `c10k load` against it, both inside the namespace; the summary."""
    enter = hosts.enter("solo")
    with subprocess.Popen([sys.executable, "-c", server], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          preexec_fn=enter) as proc:
        try:
            assert proc.stdout is not None
            with selectors.DefaultSelector() as sel:
                sel.register(proc.stdout, selectors.EVENT_READ)
                assert sel.select(30), "the server printed no port within 30 s"
            port = int(proc.stdout.readline())
            load = subprocess.run(
                [sys.executable, "-m", "c10k", "load", f"127.0.0.1:{port}", "-c", str(connections), "-n", "3",
                 "--timeout", "2", "--out", str(out), "--quiet"],
                capture_output=True, text=True, timeout=90, preexec_fn=enter)
        finally:
            proc.kill()
    assert load.returncode == 1 and "Traceback" not in load.stderr, load.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["timeouts"]["reason"] in load.stderr  # the verdict is on the one error line too
    return s


@pytest.mark.timeout(180)
def test_tiny_backlog_never_accepting_is_never_accepted(host: Hosts, tmp_path: Path) -> None:
    s = run_in(host, NEVER_ACCEPTS, 8, tmp_path)
    t = s["timeouts"]
    assert t["verdict"] == "never_accepted", t
    assert t["listen_overflows"] > 0 and f"ListenOverflows +{t['listen_overflows']}" in t["reason"]
    assert s["connections"]["completed"] == 0 and s["messages"]["echoed"] == 0
    # past the queue the handshake never completed; in it, no byte ever came back
    assert t["connect_timeouts"] == s["errors"].get("connect_timeout", 0) > 0
    assert t["silent"] == s["errors"].get("timeout", 0)


@pytest.mark.timeout(180)
def test_roomy_backlog_never_accepting_is_never_accepted(host: Hosts, tmp_path: Path) -> None:
    """No overflow at all: the connections wait in the listener's queue, which says so."""
    s = run_in(host, NEVER_ACCEPTS_ROOMY, 8, tmp_path)
    t = s["timeouts"]
    assert t["verdict"] == "never_accepted", t
    assert t["listen_overflows"] == 0 and t["unaccepted"] == 8 == t["silent"]
    assert "still holds 8 connections never accepted" in t["reason"]


@pytest.mark.timeout(180)
def test_accepting_but_never_answering_is_accepted_no_answer(host: Hosts, tmp_path: Path) -> None:
    s = run_in(host, ACCEPTS_NEVER_ANSWERS, 8, tmp_path)
    t = s["timeouts"]
    assert t["verdict"] == "accepted_no_answer", t
    assert t["listen_overflows"] == 0 and t["connect_timeouts"] == 0 and t["unaccepted"] == 0
    assert t["silent"] == s["errors"]["timeout"] == 8
