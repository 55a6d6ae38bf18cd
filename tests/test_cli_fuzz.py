"""Every option of every subcommand, fed random strings and numbers: exit 0, 1 or 2, never a traceback.

The argument parsers are built for real and each argv goes through ``c10k.cli.main``
in this process; the step that would start the work (serve, run a load, run a
study) is replaced by one that raises ``WouldRun``, so an argv that passes every
check counts as accepted without opening anything. Anything else that escapes
``main`` (a ValueError from a nan, a UnicodeEncodeError from an argument that is
not UTF-8, an OverflowError from 1e308) is what a user would see as a traceback,
and fails the test.
"""

from __future__ import annotations

import argparse
import contextlib
import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import c10k.cli.serve
import c10k.load
import c10k.study
from c10k import limits
from c10k.cli import build_parser, main


class WouldRun(Exception):
    """Raised where the real command would start its work."""


def _would_run(*args, **kwargs):
    raise WouldRun


class _FakeServer:
    exit_at_once = False

    def serve(self) -> None:
        raise WouldRun


#: Values users (and hostile users) type: numbers at the edges, words, not-UTF-8.
NASTY = st.sampled_from(["nan", "inf", "-inf", "1e308", "-1e308", "1e15", "0", "-0", "-1", "1", "2", "65535",
                         "65536", "99999999999999999999", "0.5", "-0.5", "1e-9", "", " ", "x", "10ms", "1s",
                         "\udcff\udcfe", "caf\udce9", "127.0.0.1", "::1", "localhost", "/proc/self",
                         "/nonexistent/dir/file", "a" * 300, "5000", "20001", "0x10", "1_000"])
VALUES = st.one_of(NASTY, st.text(max_size=12), st.integers(-10**20, 10**20).map(str),
                   st.floats(allow_nan=True, allow_infinity=True).map(repr))


def _options(command: str) -> list[argparse.Action]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [a for a in sub.choices[command]._actions if a.option_strings and a.dest != "help"]


def _argv(command: str) -> st.SearchStrategy[list[str]]:
    actions = _options(command)

    @st.composite
    def build(draw) -> list[str]:
        argv = [command]
        if command == "serve":
            argv.append(draw(st.one_of(st.sampled_from(["epoll", "select", "threaded", "poll", "asyncio"]),
                                       VALUES)))
        for action in draw(st.lists(st.sampled_from(actions), max_size=5)):
            flag = draw(st.sampled_from(action.option_strings))
            if action.nargs == 0:
                argv.append(flag)
            elif action.choices:
                argv += [flag, draw(st.one_of(st.sampled_from(list(action.choices)), VALUES))]
            else:
                argv += [flag, draw(VALUES)]
        return argv
    return build()


@pytest.fixture
def contained(monkeypatch, tmp_path):
    """Nothing runs, nothing leaves tmp_path, no kernel setting changes."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(c10k.load, "run_settings", _would_run)
    monkeypatch.setattr(c10k.study, "run_study", _would_run, raising=False)
    monkeypatch.setattr(c10k.study, "find_limit", _would_run, raising=False)
    monkeypatch.setattr(c10k.cli.serve, "make_server", lambda *a, **k: _FakeServer())
    monkeypatch.setattr(c10k.cli.serve, "raise_nofile", lambda: 20000)
    monkeypatch.setattr(limits, "write_sysctl", lambda name, value: "0")
    return tmp_path


def _status(argv: list[str]) -> int:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            return main(argv)
        except SystemExit as exc:  # argparse: usage errors (2)
            return int(exc.code or 0)
        except WouldRun:
            return 0


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("command", ["serve", "load", "study", "doctor"])
def test_every_option_fails_cleanly_or_is_accepted(command, contained):
    @FUZZ
    @given(_argv(command))
    def check(argv: list[str]) -> None:
        if command == "study" and "netns" in argv:
            argv = [a if a != "netns" else "loopback" for a in argv]  # namespaces are tested elsewhere
        assert _status(argv) in (0, 1, 2), argv
    check()


@pytest.mark.parametrize("argv", [
    ["load", "-m", "caf\udce9", "--dry-run"],            # a message that is not UTF-8 is sent as its bytes
    ["load", "--host", "\udcff", "--dry-run"],
    ["load", "--timeout", "nan"], ["load", "--rate", "inf", "--duration", "1"],
    ["load", "--connect-rate", "1e308"], ["load", "--max-p99", "nan"],
    ["load", "-e", "-m", "\\x", "--dry-run"], ["load", "--expect-regex", "[", "--reply-size", "1"],
    ["load", "--expect-file", "/proc/self"], ["load", "--message-file", "\udcff"],
    ["load", "--rate-per-connection", "nan", "--duration", "1"], ["load", "--rate-per-connection", "1e308",
                                                                  "--duration", "1", "-c", "2"],
    ["load", "--lifetime", "1e308s"], ["load", "--warmup", "inf"], ["load", "--pipeline", "-5"],
    ["load", "-e", "--reply-until", "\\0", "--expect-prefix", "\udcff"],
    ["serve", "epoll", "--idle-timeout", "nan"], ["serve", "epoll", "--shutdown-timeout", "inf"],
    ["serve", "\udcff"], ["study", "--out", "caf\udce9", "--list"], ["study", "--matrix", "\udcff"],
    ["doctor", "-c", "1e15"], ["doctor", "-c", "99999999999999999999"],
])
def test_known_hostile_inputs(argv, contained):
    assert _status(argv) in (0, 1, 2), argv
