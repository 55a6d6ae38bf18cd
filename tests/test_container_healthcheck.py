"""The image's HEALTHCHECK script (container/healthcheck.py), run on the host.

Inside the container it finds the server's port in /proc/net/tcp; here the host's
tables hold many listeners, so these tests look for the ones they opened.
"""

from __future__ import annotations

import importlib.util
import socket
import threading
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "container" / "healthcheck.py"
_spec = importlib.util.spec_from_file_location("c10k_healthcheck", SCRIPT)
assert _spec is not None and _spec.loader is not None
healthcheck = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(healthcheck)


@pytest.mark.parametrize(("family", "bind", "expected"), [
    (socket.AF_INET, "127.0.0.1", "127.0.0.1"),
    (socket.AF_INET, "0.0.0.0", "127.0.0.1"),  # a wildcard listener is reached over loopback
    (socket.AF_INET6, "::1", "::1"),
])
def test_listening_finds_a_socket_it_did_not_open(family, bind, expected):
    try:
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.bind((bind, 0))
    except OSError as error:
        pytest.fail(f"cannot listen on {bind}: {error}")
    with listener:
        listener.listen()
        port = listener.getsockname()[1]
        assert (expected, port) in healthcheck.listening()
    assert (expected, port) not in healthcheck.listening()


def serve_once(listener: socket.socket, reply) -> threading.Thread:
    def run():
        conn, _ = listener.accept()
        with conn:
            conn.sendall(reply(conn.recv(1024)))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(("reply", "passes"), [
    (lambda data: data, True),
    (lambda data: data[:-1] + b"!", False),  # same length, one byte wrong
    (lambda data: b"", False),  # closed without an echo
])
def test_echo_passes_only_on_a_byte_exact_echo(reply, passes):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        thread = serve_once(listener, reply)
        if passes:
            healthcheck.echo(listener.getsockname())
        else:
            with pytest.raises(ConnectionError):
                healthcheck.echo(listener.getsockname())
        thread.join(timeout=10)
