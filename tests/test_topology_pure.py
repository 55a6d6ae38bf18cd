"""The topology's pure parts: names, address plan, link specs, matrix links, the RTT report.

Nothing here needs root or makes a namespace (see test_topology_netns.py for that).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from c10k.errors import UsageError
from c10k.study.cases import Case, has_links, link_slug, load_matrix, matrix_from_toml
from c10k.study.network_report import network_line, rtt_chart, rtt_notes
from c10k.study.runner import CaseResult, StudyResult
from c10k.topology.clientload import add_host_column, processes_for
from c10k.topology.link import NETEM_LIMIT, parse_link
from c10k.topology.plan import IFNAMSIZ, MAX_CLIENTS, SUBNET, plan_hosts, run_id_of

# --- names and addresses -----------------------------------------------------


@pytest.mark.parametrize("clients", [1, 2, 4, MAX_CLIENTS])
def test_plan_names_fit_and_carry_the_run_id(clients: int) -> None:
    plan = plan_hosts(clients, "a1b2c3")
    assert len(plan.clients) == clients
    for name in (*plan.links, *plan.namespaces):
        assert run_id_of(name) == "a1b2c3"
    assert all(len(link) <= IFNAMSIZ for link in plan.links)
    assert plan.links[-1] == plan.bridge  # veths come off the bridge before it goes
    assert len(set(plan.links)) == len(plan.links) and len(set(plan.namespaces)) == len(plan.namespaces)


def test_plan_addresses_are_private_distinct_and_not_loopback() -> None:
    plan = plan_hosts(MAX_CLIENTS)
    addrs = [ipaddress.IPv4Address(h.address) for h in plan.hosts]
    assert len(set(addrs)) == len(addrs)
    assert all(a in SUBNET and a.is_private and not a.is_loopback for a in addrs)
    assert plan.server.address == "10.210.0.1" and plan.clients[0].address == "10.210.0.11"


def test_run_ids_differ_and_foreign_names_are_not_ours() -> None:
    assert len({plan_hosts(1).run_id for _ in range(20)}) > 1
    for name in ("eth0", "c10k-server", "c10kXYZ123-s", "docker0", "c10kabcdef"):
        assert run_id_of(name) is None


@pytest.mark.parametrize("clients", [0, -1, MAX_CLIENTS + 1])
def test_plan_refuses_bad_client_counts(clients: int) -> None:
    with pytest.raises(ValueError):
        plan_hosts(clients)


def test_plan_refuses_a_malformed_run_id() -> None:
    with pytest.raises(ValueError):
        plan_hosts(2, "nothex")


# --- link specs ----------------------------------------------------------------


def test_delay_becomes_netem_with_a_lifted_limit() -> None:
    link = parse_link("delay 5ms")
    assert (link.delay_us, link.rtt_ms, link.needs_netem) == (5000, 10.0, True)
    assert link.tc_commands("eth0") == [
        ["qdisc", "add", "dev", "eth0", "root", "handle", "1:", "netem", "limit", str(NETEM_LIMIT),
         "delay", "5000us"]]


def test_delay_jitter_and_loss() -> None:
    link = parse_link("delay 25ms 2ms loss 0.1%")
    assert (link.delay_us, link.jitter_us, link.loss_pct) == (25000, 2000, 0.1)
    (cmd,) = link.tc_commands("veth")
    assert cmd[-5:] == ["delay", "25000us", "2000us", "loss", "0.1%"] and "netem" in cmd


def test_rate_alone_is_tbf_and_with_delay_hangs_under_netem() -> None:
    (only,) = parse_link("rate 1gbit").tc_commands("eth0")
    assert only[6:9] == ["1:", "tbf", "rate"] and only[9] == "1000000000bit"
    assert not parse_link("rate 1gbit").needs_netem
    netem, tbf = parse_link("rate 100mbit delay 1ms").tc_commands("eth0")
    assert "netem" in netem and tbf[4:9] == ["parent", "1:1", "handle", "10:", "tbf"]


@pytest.mark.parametrize("spec", [None, "", "none", "  NONE "])
def test_no_link_is_unshaped(spec: str | None) -> None:
    link = parse_link(spec)
    assert not link.shaped and link.tc_commands("eth0") == [] and link.rtt_ms == 0


@pytest.mark.parametrize("spec, word", [
    ("delay", "needs a value"), ("delay 5", "'5'"), ("delay fast", "'fast'"), ("loss 5", "'5'"),
    ("loss 101%", "'101%'"), ("rate fast", "'fast'"), ("rate 0gbit", "'0gbit'"), ("jitter 5ms", "'jitter'"),
    ("delay 5ms delay 6ms", "twice"), ("delay 5ms 2", "'2'"),
])
def test_bad_specs_get_one_line_naming_the_word(spec: str, word: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_link(spec)
    assert word in str(err.value) and "\n" not in str(err.value)


@given(st.integers(0, 10_000), st.integers(0, 999), st.integers(1, 999))
def test_parsed_values_match_what_was_written(delay_ms: int, loss_tenths: int, mbit: int) -> None:
    link = parse_link(f"rate {mbit}mbit delay {delay_ms}ms loss {loss_tenths / 10}%")
    assert link.delay_us == delay_ms * 1000 and link.rate_bps == mbit * 10**6
    assert link.loss_pct == pytest.approx(loss_tenths / 10)


# --- matrices with links ---------------------------------------------------------


def test_wan_matrix_is_every_architecture_at_two_counts_and_three_delays() -> None:
    wan = load_matrix("wan")
    rtts = {(c.server, c.connections): set() for c in wan.cases}
    for c in wan.cases:
        rtts[(c.server, c.connections)].add(parse_link(c.link).rtt_ms)
    assert {n for _, n in rtts} == {1000, 10000}
    assert all(v == {0.0, 2.0, 50.0} for v in rtts.values())
    assert has_links(wan) and not has_links(load_matrix("quick"))
    slugs = [(c.server, c.slug) for c in wan.cases]
    assert len(set(slugs)) == len(slugs)  # each case its own folder


def test_a_toml_case_can_give_links() -> None:
    m = matrix_from_toml('[[case]]\nserver = "epoll"\nconnections = 10\nlink = ["none", "delay 2ms"]\n')
    assert [c.link for c in m.cases] == ["none", "delay 2ms"]
    assert [c.slug for c in m.cases] == ["10", "10-delay2ms"]
    with pytest.raises(UsageError, match="case 1: --link 'delay 2'"):
        matrix_from_toml('[[case]]\nserver = "epoll"\nconnections = 10\nlink = "delay 2"\n')


def test_link_slug() -> None:
    assert link_slug(None) == "" and link_slug("none") == ""
    assert link_slug("delay 25ms 2ms loss 0.1%") == "-delay25ms2msloss0.1pct"


# --- the client hosts' load ------------------------------------------------------------


@pytest.mark.parametrize("connections, hosts, planned, expected", [
    (1, 2, 1, 1), (50, 2, 1, 2), (5000, 2, 1, 2), (5000, 2, 3, 4), (3, 4, 1, 3), (100, 3, 2, 3)])
def test_processes_are_a_multiple_of_the_hosts(connections: int, hosts: int, planned: int,
                                                expected: int) -> None:
    assert processes_for(connections, hosts, planned) == expected


def test_host_column_follows_the_load_process(tmp_path: Path) -> None:
    csv_path = tmp_path / "connections.csv"
    csv_path.write_text("connection,source,process\n0,a,0\n1,b,1\n2,c,2\n3,d,3\n")
    add_host_column(csv_path, ["client1", "client2"])
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "connection,source,process,host"
    assert [line.rsplit(",", 1)[1] for line in lines[1:]] == ["client1", "client2", "client1", "client2"]


# --- the report's network parts ------------------------------------------------------


def _fake(number: int, server: str, n: int, link: str, mps: float, p99_us: float) -> CaseResult:
    summary = {"messages_per_s": mps, "latency_us": {"p99": p99_us}, "messages": {"echoed": n * 100}}
    return CaseResult(Case(number, server, n, link=link), "passed", "ok", "", summary)


def test_rtt_chart_and_notes_from_fabricated_results(tmp_path: Path) -> None:
    results = [_fake(i, s, n, link, mps, p99)
               for i, (s, n, link, mps, p99) in enumerate([
                   ("epoll", 1000, "none", 40000, 900), ("epoll", 1000, "delay 25ms", 19000, 60000),
                   ("poll", 1000, "none", 30000, 1200), ("poll", 1000, "delay 25ms", 18000, 61000),
                   ("epoll", 10000, "none", 42000, 9000), ("epoll", 10000, "delay 25ms", 41000, 250000)])]
    topo = {"kind": "netns", "server": "10.210.0.1", "clients": ["10.210.0.11", "10.210.0.12"],
            "link": {"spec": "none"}, "server_cpu": 0, "client_cpu": 1}
    study = StudyResult("wan", results, {}, "now", topology=topo)
    assert rtt_chart(study, tmp_path / "rtt.png") and (tmp_path / "rtt.png").stat().st_size > 10_000
    notes = rtt_notes(study)
    assert len(notes) == 2
    # 1,000 / 50 ms = 20,000/s, under what epoll did without delay: the round trip sets the pace
    assert "20,000 messages/s" in notes[0] and "round trip, not the server's CPU" in notes[0]
    # 10,000 / 50 ms = 200,000/s, above 42,000/s: the CPU still sets the pace
    assert "200,000 messages/s" in notes[1] and "CPU, not the round trip" in notes[1]
    assert "10.210.0.11, 10.210.0.12" in network_line(topo) and "CPU 0" in network_line(topo)
    assert "netem" in network_line(topo) and "delay line" not in network_line(topo)
    line = network_line({**topo, "link_carrier": "userspace delay line", "delay_line_cpu": 1})
    assert "userspace delay line" in line and "on CPU 1" in line


def test_no_rtt_chart_for_a_single_round_trip(tmp_path: Path) -> None:
    study = StudyResult("quick", [_fake(1, "epoll", 10, "none", 1.0, 1.0)], {}, "now")
    assert not rtt_chart(study, tmp_path / "rtt.png") and rtt_notes(study) == []
    assert network_line(study.topology).startswith("Network: loopback")
