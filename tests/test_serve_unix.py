"""`c10k serve ARCH --unix PATH`: a stale socket file is replaced, a live one refused, and the file removed at exit.

The echo behaviour on unix sockets is the behaviour suite's (``UNIX_CONFIGS``);
these are the socket file's rules and the options --unix excludes.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from helpers import echo_once, server_command


def run_serve(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(server_command(args), capture_output=True, text=True, timeout=timeout)


def one_line_error(run: subprocess.CompletedProcess, status: int) -> str:
    assert run.returncode == status, (run.stdout, run.stderr)
    assert "Traceback" not in run.stderr
    assert run.stdout == ""
    return run.stderr.strip().splitlines()[-1]


def test_stale_socket_file_is_replaced_and_removed_at_exit(serve, tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:  # bound, then gone: the file stays
        dead.bind(str(path))
    assert path.is_socket()
    server = serve("poll", "--unix", str(path))
    assert server.address == str(path)
    assert echo_once(server.address, b"after a stale file") == b"after a stale file"
    assert server.stop() == 0
    assert not path.exists()


def test_a_live_socket_is_refused_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "live.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(path))
        live.listen(8)
        line = one_line_error(run_serve("select", "--unix", str(path)), 1)
        assert f"a server already listens on unix:{path}" in line
        assert path.is_socket()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.connect(str(path))  # still the first listener's


def test_a_file_that_is_not_a_socket_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("precious")
    line = one_line_error(run_serve("select", "--unix", str(path)), 1)
    assert "is not a socket" in line
    assert path.read_text() == "precious"


@pytest.mark.parametrize(("extra", "words"), [
    (["-p", "7000"], "either --unix or --host/--port"),
    (["--host", "127.0.0.1"], "either --unix or --host/--port"),
    (["--balance", "reuseport"], "a unix socket has no port"),
    (["--send-timeout", "5"], "TCP_USER_TIMEOUT"),
])
def test_options_unix_sockets_do_not_have(tmp_path: Path, extra: list[str], words: str) -> None:
    path = tmp_path / "x.sock"
    line = one_line_error(run_serve("epoll", "--unix", str(path), *extra), 2)
    assert words in line
    assert not path.exists()


def test_listening_line_names_the_socket(serve, tmp_path: Path) -> None:
    path = tmp_path / "named.sock"
    server = serve("asyncio", "--unix", str(path))
    assert server.unix and server.address == str(path)
    assert oct(os.stat(path).st_mode)[:4] == "0o14"  # S_IFSOCK
