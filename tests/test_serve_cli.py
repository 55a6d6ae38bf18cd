"""`c10k serve` command-line contract: the listening line, and bad input refused with
one error line and the right exit status, never a traceback."""

from __future__ import annotations

import socket
import subprocess

import pytest

from helpers import CONFIG_IDS, SERVER_CONFIGS, echo_once, server_command


def run_serve(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(server_command(args), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def assert_usage_error(result: subprocess.CompletedProcess, *mentions: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, f"want exactly one error line, got: {result.stderr!r}"
    assert result.stderr.strip().splitlines()[-1] == errors[0], "the error line comes last"
    for m in mentions:
        assert m in errors[0], f"{m!r} not in {errors[0]!r}"


def test_unknown_architecture():
    assert_usage_error(run_serve("nosuchthing", "-p", "0"), "nosuchthing")


@pytest.mark.parametrize("port", ["70000", "-1", "http"])
def test_port_out_of_range_or_not_a_number(port):
    assert_usage_error(run_serve("epoll", "-p", port), port)


def test_missing_architecture():
    assert_usage_error(run_serve("-p", "0"))


@pytest.mark.parametrize("option", ["--workers", "--max-connections", "--idle-timeout", "--stack-size"])
def test_option_value_not_a_number(option):
    assert_usage_error(run_serve("epoll", "-p", "0", option, "lots"), option.lstrip("-").split("-")[0])


@pytest.mark.parametrize("config", CONFIG_IDS)
def test_port_in_use(config):
    """Port in use: exit 1 with one line that names the address; no traceback."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        result = run_serve(*SERVER_CONFIGS[config], "-p", str(port))
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"want one line, got {result.stderr!r}"
    assert f"127.0.0.1:{port}" in lines[0]


@pytest.mark.parametrize("config", CONFIG_IDS)
def test_listening_line_is_the_only_stdout(serve, config):
    """Exactly one `listening on HOST:PORT` line, flushed; the port answers; nothing else on stdout."""
    server = serve.config(config)
    assert server.host == "127.0.0.1"
    assert 0 < server.port < 65536
    assert echo_once(server.address, b"hello") == b"hello"
    assert server.stop() == 0
    rest = server.proc.stdout.read()
    assert rest == b"", f"stdout after the listening line: {rest!r}"
