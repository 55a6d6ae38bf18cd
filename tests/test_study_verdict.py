"""Verdicts from fabricated evidence: each failure is named for its cause, in plain words."""

from __future__ import annotations

from c10k.study.verdict import PASSED_RESULT, Evidence, decide


def clean_summary(n: int, messages: int = 100, **errors: int) -> dict:
    failed = sum(errors.values())
    return {
        "connections": {"requested": n, "established": n, "completed": n - failed, "failed": failed,
                        "peak_open": n},
        "messages": {"sent": n * messages, "echoed": n * messages - failed, "mismatched": 0},
        "errors": errors,
    }


def test_all_echoes_back_and_a_clean_stop_passes():
    ev = Evidence(connections=1000, summary=clean_summary(1000), stats={"accepted": 1000})
    assert decide(ev) == ("passed", PASSED_RESULT)


def test_select_refusals_name_fd_setsize_and_count():
    ev = Evidence(connections=2000, load_status=1, summary=clean_summary(2000, ECONNRESET=977),
                  stats={"accepted": 2000, "refused": {"fd_setsize": 977}})
    status, reason = decide(ev)
    assert status == "failed"
    assert reason.startswith("select() cannot watch descriptors >= FD_SETSIZE (1024): "
                             "977 of 2000 connections refused")
    assert "977 reset" in reason
    assert "(client: 977 reset)" in reason


def test_descriptor_limit_from_the_stats_file():
    ev = Evidence(connections=30000, nofile=20000, load_status=1, summary=clean_summary(30000, ECONNRESET=10010),
                  stats={"refused": {"descriptor_limit": 10010}})
    status, reason = decide(ev)
    assert status == "failed"
    assert reason.startswith("process descriptor limit (20000) reached: 10010 of 30000 connections refused")


def test_descriptor_limit_seen_only_by_the_sampler():
    ev = Evidence(connections=30000, nofile=20000, load_status=1, summary=clean_summary(30000, timeout=10000),
                  usage={"peak_fds_per_process": 19998})
    status, reason = decide(ev)
    assert status == "failed"
    assert reason.startswith("process descriptor limit (20000) reached: a server process held 19998")


def test_threads_that_cannot_start_are_named_from_stderr():
    ev = Evidence(connections=35000, load_status=1, summary=clean_summary(35000, ECONNRESET=3000),
                  stderr_tail=["Traceback (most recent call last):", "RuntimeError: can't start new thread"])
    assert decide(ev)[1].startswith("threads could not start")


def test_server_that_dies_during_the_load():
    ev = Evidence(connections=10, exit_status=1, exited_early=True, load_status=1,
                  summary=clean_summary(10, ECONNRESET=10),
                  stderr_tail=["Traceback (most recent call last):", '  File "x.py", line 1', "ValueError: boom"])
    status, reason = decide(ev)
    assert status == "failed"
    assert reason.startswith("server exited with status 1 during the load (ValueError: boom)")


def test_server_killed_by_a_signal_says_which():
    ev = Evidence(connections=10, exit_status=-9, exited_early=True, load_status=1, summary=None)
    assert "server was killed by SIGKILL during the load" in decide(ev)[1]


def test_load_stopped_by_the_runner_is_a_timeout():
    ev = Evidence(connections=100, load_status=None, load_timed_out=True, load_timeout_s=61, summary=None)
    status, reason = decide(ev)
    assert status == "failed"
    assert reason.startswith("timeouts")
    assert "did not finish within 61 s" in reason


def test_client_timeouts_alone_are_timeouts():
    ev = Evidence(connections=100, load_status=1, summary=clean_summary(100, timeout=40))
    assert decide(ev)[1].startswith("timeouts: the server stopped answering in time (client: 40 timed out)")


def test_server_that_never_listens():
    ev = Evidence(connections=1, started=False, exit_status=1, load_status=None,
                  stderr_tail=["c10k serve: error: address 127.0.0.1:7000 in use"])
    status, reason = decide(ev)
    assert status == "failed"
    assert reason == "server did not start: it exited with status 1 (c10k serve: error: address 127.0.0.1:7000 in use)"


def test_clean_load_but_a_bad_stop_still_fails():
    killed = Evidence(connections=5, summary=clean_summary(5), killed=True, exit_status=-9)
    assert decide(killed) == ("failed", "server did not stop on SIGTERM and was killed (all echoes were correct)")
    status1 = Evidence(connections=5, summary=clean_summary(5), exit_status=1)
    assert decide(status1)[1].startswith("server exited with status 1 when stopped")


def test_a_mismatched_echo_fails_even_with_exit_zero():
    s = clean_summary(5)
    s["messages"]["mismatched"] = 2
    status, reason = decide(Evidence(connections=5, summary=s))
    assert status == "failed" and "2 mismatched" in reason


def test_missing_connections_fail():
    s = clean_summary(5)
    s["connections"]["established"] = 3
    status, reason = decide(Evidence(connections=5, summary=s, load_status=1))
    assert status == "failed" and "3 of 5 connections established" in reason


def test_several_refusal_kinds_are_all_reported():
    ev = Evidence(connections=100, load_status=1, summary=clean_summary(100, ECONNRESET=30),
                  stats={"refused": {"thread_start": 10, "max_connections": 20}})
    reason = decide(ev)[1]
    assert "threads could not start: 10 of 100 connections refused" in reason
    assert "--max-connections cap was reached: 20 of 100" in reason


def test_a_stalled_connect_phase_keeps_the_server_side_cause_first():
    ev = Evidence(connections=30000, nofile=20000, load_status=None, connect_stalled=True,
                  connect_deadline_s=90, held_connections=19990, summary=None,
                  stats={"refused": {"descriptor_limit": 7}})
    status, reason = decide(ev)
    assert status == "failed"
    assert reason == ("process descriptor limit (20000) reached: 7 of 30000 connections refused "
                      "(client: the server held at most 19990 descriptors, not all 30000 connections, "
                      "within 90 s; the load was stopped)")


def test_a_server_killed_after_a_failed_load_says_so_after_the_cause():
    ev = Evidence(connections=25000, nofile=20000, load_status=1, killed=True, exit_status=-9,
                  summary=clean_summary(25000, timeout=19806), usage={"peak_fds_per_process": 20000})
    reason = decide(ev)[1]
    assert reason.startswith("process descriptor limit (20000) reached: a server process held 20000 "
                             "descriptors; server did not stop on SIGTERM and was killed (no stats file)")


def test_a_server_that_never_held_every_connection_at_once_is_said_so():
    """Threaded at 500 'passed' while the server held at most 216 at once: the client counts
    connections still in the listen backlog as open, so the server's own peak is what the report says."""
    ev = Evidence(connections=500, summary=clean_summary(500), stats={"accepted": 500, "peak_concurrent": 216})
    status, reason = decide(ev)
    assert status == "passed"
    assert reason.startswith(PASSED_RESULT)
    assert "the server held at most 216 of the 500 connections at once" in reason
    ev.stats = {"accepted": 500, "peak_concurrent": 500}
    assert decide(ev) == ("passed", PASSED_RESULT)


def test_every_refusal_reason_is_named_in_the_servers_words():
    from c10k.servers.refusals import Refusal

    for reason in Refusal:
        ev = Evidence(connections=10, nofile=512, load_status=1, summary=clean_summary(10, ECONNRESET=3),
                      stats={"refused": {reason.value: 3}})
        assert decide(ev)[1].startswith(f"{reason.explain(512)}: 3 of 10 connections refused (client: 3 reset)")


def test_the_load_clients_reset_key_reads_as_reset():
    """The load client writes errno names (ECONNRESET), not "reset"."""
    ev = Evidence(connections=10, load_status=1, summary=clean_summary(10, ECONNRESET=4))
    assert "(client: 4 reset)" in decide(ev)[1]
