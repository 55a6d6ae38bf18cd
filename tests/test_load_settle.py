"""--settle: every connection stays open and silent after the barrier, so a server slow to take
connections on is measured once it holds them."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from c10k.cli import main
from c10k.errors import UsageError
from c10k.load import LoadSettings

CONNECTIONS = 5


class SlowToAccept(threading.Thread):
    """Accepts nothing for ``delay`` seconds (the kernel completes the connects meanwhile), then takes
    every connection on, noting whether its first message was already waiting, and echoes."""

    def __init__(self, delay: float) -> None:
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self.listener.getsockname()[1]
        self.delay = delay
        self.waiting_at_accept: list[bool] = []
        self.done = threading.Event()

    def run(self) -> None:
        time.sleep(self.delay)  # the behaviour under test: a server late to take connections on
        self.listener.settimeout(60)
        conns = []
        for _ in range(CONNECTIONS):
            c, _ = self.listener.accept()
            try:
                c.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                self.waiting_at_accept.append(True)
            except BlockingIOError:
                self.waiting_at_accept.append(False)
            conns.append(c)
        self.listener.close()
        for c in conns:
            threading.Thread(target=self._echo, args=(c,), daemon=True).start()
        self.done.set()

    @staticmethod
    def _echo(c: socket.socket) -> None:
        with c:
            c.settimeout(60)
            while data := c.recv(4096):
                c.sendall(data)


def test_settle_holds_the_first_message_until_the_server_took_every_connection_on(tmp_path: Path) -> None:
    server = SlowToAccept(delay=0.5)
    server.start()
    status = main(["load", "-p", str(server.port), "-c", str(CONNECTIONS), "-n", "3", "--settle", "10s",
                   "--timeout", "60", "--out", str(tmp_path), "--quiet"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert status == 0, summary["errors"]
    assert server.done.is_set()
    assert server.waiting_at_accept == [False] * CONNECTIONS  # nothing was sent before the server held them
    assert summary["settle_s"] == 10.0
    assert summary["messages"]["echoed"] == 3 * CONNECTIONS


def test_settle_is_checked() -> None:
    with pytest.raises(UsageError, match="--settle must not be negative"):
        LoadSettings(settle=-1.0)
    with pytest.raises(UsageError, match="--settle needs the barrier"):
        LoadSettings(settle=5.0, barrier=False)


def test_settle_rejects_a_bad_time(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["load", "-p", "7000", "--settle", "soon"])
    assert exc.value.code == 2
    assert "--settle" in capsys.readouterr().err
