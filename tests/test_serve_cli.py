"""`c10k serve` command-line contract: the listening line, and bad input refused with
one error line and the right exit status, never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys

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


def assert_port_in_use(result: subprocess.CompletedProcess, port: int) -> None:
    """Exit 1 with one line that names the address; no traceback."""
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"want one line, got {result.stderr!r}"
    assert f"127.0.0.1:{port}" in lines[0]


@pytest.mark.parametrize("config", CONFIG_IDS)
def test_port_in_use(config):
    """Port in use: exit 1 with one line that names the address; no traceback."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        assert_port_in_use(run_serve(*SERVER_CONFIGS[config], "-p", str(port)), port)


@pytest.mark.parametrize("config", CONFIG_IDS)
def test_port_held_by_a_reuseport_listener_is_in_use(config):
    """A port someone listens on with SO_REUSEPORT (as a running `--balance reuseport` server
    does) is in use too, whatever our balance mode: joining that group would silently take
    half of its traffic (issue 8, defect 3)."""
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        assert_port_in_use(run_serve(*SERVER_CONFIGS[config], "-p", str(port)), port)


def test_a_second_reuseport_server_on_a_served_port_is_refused(serve):
    """Two `c10k serve epoll --balance reuseport` on one port: the second exits 1 naming the
    address, and the first goes on serving alone."""
    first = serve.config("epoll-reuseport")
    assert_port_in_use(run_serve(*SERVER_CONFIGS["epoll-reuseport"], "-p", str(first.port), timeout=20), first.port)
    for _ in range(20):  # the kernel would spread these over both groups' listeners
        assert echo_once(first.address, b"still mine") == b"still mine"
    assert first.stop() == 0
    assert first.stats()["accepted"] == 20


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


def _serve_without(package: str, architecture: str) -> subprocess.CompletedProcess:
    """`c10k serve ARCH` in an interpreter where ``package`` cannot be imported (as if not installed)."""
    code = (f"import sys; sys.modules[{package!r}] = None; from c10k.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, "serve", architecture, "-p", "0"], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("architecture", ["gevent", "trio"])
def test_a_server_whose_package_is_missing_is_one_line_exit_1(architecture):
    result = _serve_without(architecture, architecture)
    assert result.returncode == 1, result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "pip install 'c10k[servers]'" in result.stderr, result.stderr


def test_only_their_own_servers_import_gevent_and_trio():
    """The other commands, and `c10k serve` of any other architecture, load neither package
    (gevent in particular changes the process it is imported into)."""
    code = ("import sys; from c10k.cli import build_parser; from c10k.servers import ServerConfig, make_server; "
            "build_parser(); [make_server(a, ServerConfig()) for a in sys.argv[1:]]; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'gevent', 'greenlet', 'trio'}))")
    others = ["threaded", "select", "poll", "epoll", "asyncio", "uvloop"]
    out = subprocess.run([sys.executable, "-c", code, *others], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", (out.stdout, out.stderr)
    out = subprocess.run([sys.executable, "-c", code, "gevent"], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "['gevent', 'greenlet']", "the check above can see an import"
