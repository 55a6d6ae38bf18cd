"""Shared fixtures: start `c10k serve` as a subprocess and always kill it afterwards.

Generic on purpose, so that any test file can use them:

    def test_something(serve):
        server = serve("epoll", "--workers", "2")          # raw `c10k serve` arguments
        server = serve.config("epoll-reuseport")           # a named SERVER_CONFIGS entry
        echo_once(server.address)
        assert server.stop() == 0

Each server gets `-p 0` and (unless ``stats=False``) a `--stats-file` in the
test's tmp_path, and runs in its own session so that the finalizer kills its
worker processes too.
"""

from __future__ import annotations

import random
import re

import pytest

from helpers import ALL_SERVER_CONFIGS, ServerProcess, start_server


class ServerFactory:
    def __init__(self, workdir):
        self.workdir = workdir
        self.started: list[ServerProcess] = []

    def __call__(self, *args: str, stats: bool = True, preexec_fn=None, ready_timeout: float = 30.0,
                 port: int = 0) -> ServerProcess:
        try:
            server = start_server(list(args), self.workdir, stats=stats, preexec_fn=preexec_fn,
                                  ready_timeout=ready_timeout, port=port)
        except AssertionError as exc:
            # The one skip the suites allow: a machine where io_uring cannot work
            # (the server's own one-line refusal says why).
            refusal = re.search(r"cannot serve uring: [^\n;]*", str(exc))
            if args and args[0] == "uring" and refusal:
                pytest.skip(f"io_uring unavailable on this machine: {refusal.group(0)}")
            raise
        self.started.append(server)
        return server

    def config(self, config_id: str, *extra: str, **kw) -> ServerProcess:
        """Start one of ``SERVER_CONFIGS`` (or ``UNIX_CONFIGS``) by id, with extra arguments appended."""
        return self(*ALL_SERVER_CONFIGS[config_id], *extra, **kw)

    def kill_all(self) -> None:
        for server in self.started:
            server.kill()


@pytest.fixture
def serve(tmp_path):
    """Factory fixture: ``serve(*args)`` / ``serve.config(id, *extra)`` -> a ready ServerProcess."""
    factory = ServerFactory(tmp_path / "servers")
    try:
        yield factory
    finally:
        factory.kill_all()


@pytest.fixture
def rng(request):
    """A random generator seeded from the test's id: reproducible data per test."""
    return random.Random(request.node.nodeid)
