"""Study matrices: the seed reproduces the original's cases, quick stays small, TOML parses strictly."""

from __future__ import annotations

import pytest

from c10k.errors import UsageError
from c10k.study.cases import (
    SERVERS,
    filter_servers,
    load_matrix,
    matrix_from_toml,
    quick_matrix,
    seed_matrix,
)

ORIGINAL = [
    ("select", 1, "passed"), ("select", 1000, "passed"), ("select", 2000, "failed"),
    ("threaded", 1, "passed"), ("threaded", 10000, "passed"), ("threaded", 30000, "passed"),
    ("threaded", 35000, "failed"), ("epoll", 1, "passed"), ("epoll", 10000, "passed"),
    ("epoll", 40000, "passed"), ("epoll", 45000, "passed"), ("epoll", 100000, "passed"),
]


def test_seed_starts_with_the_original_twelve_cases_in_order():
    cases = seed_matrix().cases
    assert [(c.server, c.connections, c.original) for c in cases[:12]] == ORIGINAL
    assert [c.number for c in cases] == list(range(1, len(cases) + 1))
    assert all(c.messages == 100 and c.message == "Gary's spamming" for c in cases)
    assert len(cases[0].message.encode()) == 15


def test_seed_runs_the_new_architectures_on_the_merged_ladder():
    cases = [c for c in seed_matrix().cases[12:] if not c.fixed_rate]
    ladder = [1, 1000, 2000, 10000, 30000, 35000, 40000, 45000, 100000]
    for server in ("poll", "epoll-reuseport", "epoll-threads", "asyncio", "uvloop", "gevent", "trio"):
        assert [c.connections for c in cases if c.server == server] == ladder
        assert all(c.original is None for c in cases if c.server == server)
    assert set(seed_matrix().servers) == set(SERVERS)


def test_quick_covers_every_server_and_keeps_select_2000():
    quick = quick_matrix()
    assert set(quick.servers) == set(SERVERS)
    select_2000 = [c for c in quick.cases if (c.server, c.connections) == ("select", 2000)]
    assert len(select_2000) == 1 and select_2000[0].original == "failed"
    assert max(c.connections for c in quick.cases if not c.fixed_rate) <= 2000


def test_fixed_rate_cases_compare_select_poll_and_epoll_with_most_connections_idle():
    for matrix in (seed_matrix(), quick_matrix()):
        fixed = [c for c in matrix.cases if c.fixed_rate]
        assert {"select", "poll", "epoll"} <= {c.server for c in fixed}
        assert all(c.rate == 2000 and c.duration_s == 5.0 for c in fixed)
        assert max(c.connections for c in fixed if c.server == "select") < 1024
        assert len({c.slug for c in matrix.cases if c.server == "select"}) == len(
            [c for c in matrix.cases if c.server == "select"])  # no two cases share a folder
    case = next(c for c in quick_matrix().cases if c.fixed_rate and c.connections == 5000)
    assert case.slug == "5000-rate2000"
    assert case.scenario.endswith("server, 2,000 messages/s in total for 5 s")


def test_scenario_uses_the_originals_wording():
    cases = seed_matrix().cases
    assert cases[0].scenario == "1 client connecting to select server"
    assert cases[4].scenario == "10000 clients connecting to multithreaded server"


def test_toml_matrix_expands_servers_and_counts_in_file_order():
    m = matrix_from_toml(
        """
        name = "mine"
        messages = 7
        [[case]]
        server = ["select", "poll"]
        connections = [1, 50]
        [[case]]
        server = "epoll"
        connections = 10
        messages = 3
        message = "hi"
        timeout = 20
        [[case]]
        server = "poll"
        connections = 100
        rate = 500
        duration = 2.5
        settle = 4
        """
    )
    assert m.name == "mine"
    got = [(c.number, c.server, c.connections, c.messages) for c in m.cases]
    assert got == [(1, "select", 1, 7), (2, "select", 50, 7), (3, "poll", 1, 7), (4, "poll", 50, 7),
                   (5, "epoll", 10, 3), (6, "poll", 100, 7)]
    assert m.cases[4].message == "hi" and m.cases[4].timeout_s == 20.0
    assert m.cases[5].rate == 500 and m.cases[5].duration_s == 2.5 and m.cases[5].slug == "100-rate500"
    assert m.cases[5].settle_s == 4.0 and m.cases[4].settle_s is None
    assert m.cases[5].load_words == "500/s for 2.5 s, after 4 s settled"
    assert not m.cases[4].fixed_rate
    assert m.cases[0].message == "Gary's spamming" and m.cases[0].timeout_s is None


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("not toml [", "not valid TOML"),
        ("name = 'x'", "at least one [[case]]"),
        ("[[case]]\nserver = 'nginx'\nconnections = 1", "unknown server 'nginx'"),
        ("[[case]]\nserver = 'poll'\nconnections = 0", "connections must be a positive integer"),
        ("[[case]]\nserver = 'poll'\nconnections = [1, 'x']", "connections must be a positive integer"),
        ("[[case]]\nserver = 'poll'", "needs server and connections"),
        ("[[case]]\nserver = 'poll'\nconnections = 1\nconections = 2", "unknown key(s) conections"),
        ("[[case]]\nserver = 'poll'\nconnections = 1\ntimeout = -1", "timeout must be a positive"),
        ("messages = 0\n[[case]]\nserver = 'poll'\nconnections = 1", "messages must be a positive"),
        ("[[case]]\nserver = 'poll'\nconnections = 1\nrate = 100", "a rate needs a positive duration"),
        ("[[case]]\nserver = 'poll'\nconnections = 1\nduration = 3", "duration only goes with rate"),
        ("[[case]]\nserver = 'poll'\nconnections = 1\nsettle = -2", "settle must be a number of seconds"),
        ("[[case]]\nserver = 'poll'\nconnections = 1\nsettle = 'soon'", "settle must be a number of seconds"),
    ],
)
def test_toml_matrix_errors_say_what_is_wrong(text, words):
    with pytest.raises(UsageError) as err:
        matrix_from_toml(text)
    assert words in str(err.value)


def test_load_matrix_reads_names_and_files(tmp_path):
    assert load_matrix("seed").name == "seed"
    assert load_matrix("quick").name == "quick"
    path = tmp_path / "small.toml"
    path.write_text("[[case]]\nserver = 'asyncio'\nconnections = 5\n")
    m = load_matrix(str(path))
    assert m.name == "small" and [(c.server, c.connections) for c in m.cases] == [("asyncio", 5)]
    with pytest.raises(UsageError, match="neither seed, quick, wan, million nor a readable TOML file"):
        load_matrix(str(tmp_path / "missing.toml"))


def test_filter_servers_keeps_numbers_and_rejects_unknown_names():
    m = filter_servers(seed_matrix(), ["select", "epoll"])
    assert [c.number for c in m.cases if not c.fixed_rate] == [1, 2, 3, 8, 9, 10, 11, 12]
    assert m.servers == ("select", "epoll")
    with pytest.raises(UsageError, match="unknown server"):
        filter_servers(seed_matrix(), ["apache"])
    with pytest.raises(UsageError, match="has no such cases"):
        filter_servers(matrix_from_toml("[[case]]\nserver='poll'\nconnections=1"), ["select"])


def test_million_matrix_is_a_steady_million_on_the_process_architectures(monkeypatch, tmp_path):
    from dataclasses import replace

    from c10k import capacity
    from c10k.limits import machine_limits
    from c10k.study import runner
    from c10k.study.capacity import plan_capacity

    m = load_matrix("million")
    assert m.name == "million"
    assert [(c.number, c.server, c.connections) for c in m.cases] == [
        (1, "epoll", 1_000_000), (2, "epoll-reuseport", 1_000_000), (3, "uring", 1_000_000)]
    assert all(c.fixed_rate and c.rate == 20_000 and c.duration_s == 60 for c in m.cases)
    assert {c.slug for c in m.cases} == {"1000000-rate20000"}
    # a machine of this project's shape (20,000 descriptors a process, 2 cores, 24 GiB) holds each
    here = replace(machine_limits(), cpus=2, nofile_soft=20000, nofile_hard=20000,
                   memory_total=24 * 2**30, memory_available=23 * 2**30)
    held = {a.server: a for a in plan_capacity(1_000_000, here).architectures}
    for c in m.cases:
        assert held[c.server].can_hold, held[c.server].why
    # the dry plan: the commands the runner would start, with workers enough for a million
    monkeypatch.setattr(runner.limits, "nofile_limits", lambda: (20000, 20000))
    monkeypatch.setattr(runner.limits, "cpus", lambda: 2)
    commands = runner.Commands(python="python")
    per = capacity.connections_per_process(20000)
    for c in m.cases:
        server = commands.server(c, tmp_path / "stats.json")
        if c.server == "uring":  # its hand-off starts with the cores and grows as it fills
            assert "--workers" not in server
        else:
            assert int(server[server.index("--workers") + 1]) * per >= c.connections
        assert ("--balance" in server) == (c.server == "epoll-reuseport")
        load = commands.load(c, "127.0.0.1", 7000, tmp_path)
        assert load[load.index("-c") + 1] == "1000000"
        assert load[load.index("--rate") + 1] == "20000" and load[load.index("--duration") + 1] == "60"
        assert load[load.index("--settle") + 1] == "30"  # the server holds them all before the first message
        assert commands.timeout_s(c) > c.connections / 2500 + 60 + 30  # room for the ramp, settle and sending
    reuseport = commands.server(m.cases[1], tmp_path / "stats.json")
    assert int(reuseport[reuseport.index("--workers") + 1]) == capacity.reuseport_workers(1_000_000, 20000, 2)
