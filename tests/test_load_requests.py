"""`c10k load` against servers that are not echo servers: Redis, line protocols, HTTP/1.1, broken ones.

Each option of the general request loop has a test here that would fail
without it. The servers are real: ``redis-server`` (started on a free loopback
port with no persistence), ``python -m http.server --protocol HTTP/1.1``, and
a few lines of asyncio per protocol, run in a thread on 127.0.0.1 port 0.
No test asserts a duration: the mismatch-at-once tests run with a 30 s
``--timeout`` and check that the error is a mismatch, which a timeout could
not be.
"""

from __future__ import annotations

import asyncio
import csv
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from c10k.cli import main

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class AsyncioServer:
    """``handler(reader, writer)`` per connection, on an asyncio loop in a thread; counts accepts."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.accepted = 0
        self.lines: list[bytes] = []  # what handlers chose to record
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10), "the test server did not start"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=128))
        self.port = self.server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def aserver() -> Iterator[Callable[[Handler], AsyncioServer]]:
    started: list[AsyncioServer] = []

    def start(handler: Handler) -> AsyncioServer:
        started.append(AsyncioServer(handler))
        return started[-1]

    yield start
    for s in started:
        s.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[int]:
    """A redis-server of our own on a free loopback port, no persistence; its port."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server; .ci/run installs it)")
    for _ in range(3):  # the free port may be taken between the probe and redis' bind
        port = free_port()
        proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                 "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            if wait_for_port(port, proc):
                yield port
                return
        finally:
            proc.kill()
            proc.wait(10)
    pytest.fail("redis-server did not start")


def load(tmp_path: Path, port: int, *argv: str) -> tuple[int, dict, list[dict]]:
    """Run `c10k load` in this process; (exit status, summary, connections.csv rows)."""
    out = tmp_path / "out"
    status = main(["load", "-p", str(port), "--out", str(out), "--quiet", *argv])
    summary = json.loads((out / "summary.json").read_text())
    with (out / "connections.csv").open() as f:
        rows = list(csv.DictReader(f))
    return status, summary, rows


# -- Redis ----------------------------------------------------------------------------------

def test_redis_ping_closed_loop(redis: int, tmp_path: Path) -> None:
    status, s, rows = load(tmp_path, redis, "-e", "-m", r"PING\r\n", "--expect", r"+PONG\r\n", "-c", "4", "-n", "200")
    assert status == 0, s["errors"]
    assert s["errors"] == {} and s["messages"] == {"sent": 800, "echoed": 800, "mismatched": 0}
    assert s["bytes"] == {"sent": 800 * 6, "echoed": 800 * 7}
    assert [int(r["bytes"]) for r in rows] == [200 * 7] * 4
    assert s["exchange"]["reply"] == {"kind": "exact", "value": "+PONG\r\n", "framing": "expected length"}


def test_redis_ping_pipelined(redis: int, tmp_path: Path) -> None:
    status, s, _ = load(tmp_path, redis, "-e", "-m", r"PING\r\n", "--expect", r"+PONG\r\n", "-c", "3", "-n", "500",
                        "--pipeline", "32")
    assert status == 0, s["errors"]
    assert s["messages"] == {"sent": 1500, "echoed": 1500, "mismatched": 0}
    assert s["exchange"]["pipeline"] == 32


def test_redis_wrong_expectation_is_a_mismatch_at_once(redis: int, tmp_path: Path) -> None:
    status, s, rows = load(tmp_path, redis, "-e", "-m", r"PING\r\n", "--expect", r"+PING\r\n", "-c", "2",
                           "--timeout", "30")
    assert status == 1
    assert s["errors"] == {"mismatch": 2}  # not "timeout": judged at the first wrong byte
    assert s["error_examples"]["mismatch"] == {"connection": 0, "offset": 2, "got": r"+PONG\r\n",
                                               "expected": r"+PING\r\n"}
    assert [(r["error"], r["mismatch_offset"], r["got"]) for r in rows] == [("mismatch", "2", r"+PONG\r\n")] * 2
    assert s["bytes"]["echoed"] == 0 and s["bytes_received"] == 2 * 7  # wrong replies are not "echoed"


def test_unescape_is_what_makes_redis_answer(redis: int, tmp_path: Path) -> None:
    # without -e the four characters \ r \ n are sent: Redis waits for the end of the line
    status, s, _ = load(tmp_path, redis, "-m", r"PING\r\n", "--expect", "+PONG\r\n", "-n", "3", "--timeout", "1")
    assert status == 1 and s["errors"] == {"timeout": 1}
    status, s, _ = load(tmp_path, redis, "-e", "-m", r"PING\r\n", "--expect", r"+PONG\r\n", "-n", "3")
    assert status == 0 and s["messages"]["echoed"] == 3


def test_expect_file(redis: int, tmp_path: Path) -> None:
    (tmp_path / "pong").write_bytes(b"+PONG\r\n")
    status, s, _ = load(tmp_path, redis, "-e", "-m", r"PING\r\n", "--expect-file", str(tmp_path / "pong"), "-n", "5")
    assert status == 0 and s["messages"]["echoed"] == 5


def test_first_message_with_its_own_expectation(redis: int, tmp_path: Path) -> None:
    status, s, _ = load(tmp_path, redis, "-e", "--first-message", r"SELECT 1\r\n", "--first-expect", r"+OK\r\n",
                        "-m", r"PING\r\n", "--expect", r"+PONG\r\n", "-c", "2", "-n", "10")
    assert status == 0, s["errors"]
    assert s["messages"] == {"sent": 20, "echoed": 20, "mismatched": 0}  # the first message is not counted
    # judged by --expect instead, the +OK is a mismatch
    status, s, _ = load(tmp_path, redis, "-e", "--first-message", r"SELECT 1\r\n", "-m", r"PING\r\n",
                        "--expect", r"+PONG\r\n", "-n", "10")
    assert status == 1 and s["error_examples"]["mismatch"]["got"] == r"+OK\r\n"


# -- line protocols (asyncio) ---------------------------------------------------------------

async def ok_lines(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers each line with 'OK ' + the line, in two writes (a reply may arrive in pieces)."""
    while line := await reader.readline():
        writer.write(b"OK ")
        await writer.drain()
        writer.write(line)
        await writer.drain()


def test_line_protocol_prefix_until(aserver: Callable[[Handler], AsyncioServer], tmp_path: Path) -> None:
    srv = aserver(ok_lines)
    status, s, rows = load(tmp_path, srv.port, "-e", "-m", r"hello there\n", "--expect-prefix", "OK ",
                           "--reply-until", r"\n", "-c", "3", "-n", "50")
    assert status == 0, s["errors"]
    assert s["messages"]["echoed"] == 150
    assert s["bytes"]["echoed"] == 150 * len(b"OK hello there\n")
    assert [int(r["bytes"]) for r in rows] == [50 * 15] * 3
    # without --reply-until a prefix has no end: a usage error, not a guess
    assert main(["load", "-p", str(srv.port), "--expect-prefix", "OK ", "-q", "--out", str(tmp_path / "x")]) == 2


def test_line_protocol_regex_and_templates(aserver: Callable[[Handler], AsyncioServer], tmp_path: Path) -> None:
    srv = aserver(ok_lines)
    status, s, _ = load(tmp_path, srv.port, "-e", "-m", r"c{connection} s{seq}\n", "--expect-regex",
                        rb"OK c\d+ s\d+\n".decode(), "--reply-until", r"\n", "-c", "2", "-n", "20")
    assert status == 0, s["errors"]
    # a regex that does not match the whole reply is a mismatch
    status, s, _ = load(tmp_path, srv.port, "-e", "-m", r"c{connection}\n", "--expect-regex", r"OK c\d",
                        "--reply-until", r"\n", "-n", "1")
    assert status == 1 and s["errors"] == {"mismatch": 1}


def test_templates_make_every_request_distinct(aserver: Callable[[Handler], AsyncioServer], tmp_path: Path) -> None:
    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            srv.lines.append(line)
            writer.write(line)  # an echo: the default expectation is the rendered request

    srv = aserver(record)
    status, s, _ = load(tmp_path, srv.port, "-e", "-m", r"conn {connection} seq {seq}\n", "-c", "3", "-n", "4")
    assert status == 0, s["errors"]
    assert sorted(srv.lines) == sorted(f"conn {c} seq {q}\n".encode() for c in range(3) for q in range(4))


def test_reply_size(aserver: Callable[[Handler], AsyncioServer], tmp_path: Path) -> None:
    async def eight(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readline():
            writer.write(b"ACK\x00\x01\x02\xff\n")

    srv = aserver(eight)
    status, s, _ = load(tmp_path, srv.port, "-e", "-m", r"x\n", "--expect-prefix", "ACK", "--reply-size", "8",
                        "-n", "30")
    assert status == 0 and s["bytes"]["echoed"] == 30 * 8


def test_pipeline_is_what_a_batching_server_needs(aserver: Callable[[Handler], AsyncioServer],
                                                  tmp_path: Path) -> None:
    async def batches_of_four(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            lines = [await reader.readuntil(b"\n") for _ in range(4)]  # answers only whole batches
            writer.write(b"".join(lines))

    srv = aserver(batches_of_four)
    status, s, _ = load(tmp_path, srv.port, "-e", "-m", r"q{seq}\n", "-n", "8", "--pipeline", "4")
    assert status == 0, s["errors"]
    status, s, _ = load(tmp_path, srv.port, "-e", "-m", r"q{seq}\n", "-n", "8", "--timeout", "1")
    assert status == 1 and s["errors"] == {"timeout": 1}


def test_first_message_prefix(aserver: Callable[[Handler], AsyncioServer], tmp_path: Path) -> None:
    async def hello_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await reader.readline() != b"HELLO\n":
            return  # hangs up on a client that did not say hello
        writer.write(b"WELCOME v1.2\n")
        while line := await reader.readline():
            writer.write(line)

    srv = aserver(hello_first)
    status, s, _ = load(tmp_path, srv.port, "-e", "--first-message", r"HELLO\n", "--first-expect-prefix", "WELCOME",
                        "--reply-until", r"\n", "-m", r"ping {seq}\n", "-c", "2", "-n", "5")
    assert status == 0, s["errors"]
    assert s["messages"]["echoed"] == 10
    status, s, _ = load(tmp_path, srv.port, "-e", "-m", r"ping {seq}\n", "-n", "5", "--reply-until", r"\n")
    assert status == 1 and s["errors"] == {"closed_early": 1}


def test_lifetime_requests_reconnects(aserver: Callable[[Handler], AsyncioServer], tmp_path: Path) -> None:
    srv = aserver(ok_lines)
    status, s, _ = load(tmp_path, srv.port, "-e", "-m", r"hi\n", "--expect", r"OK hi\n", "-c", "2", "-n", "10",
                        "--lifetime", "3")
    assert status == 0, s["errors"]
    assert s["messages"]["echoed"] == 20
    assert srv.accepted == 2 * 4  # 3 + 3 + 3 + 1 requests per connection
    assert s["reconnects"] == 6 and s["connections"]["established"] == 2


def test_lifetime_seconds_reconnects(aserver: Callable[[Handler], AsyncioServer], tmp_path: Path) -> None:
    srv = aserver(ok_lines)
    status, s, _ = load(tmp_path, srv.port, "-e", "-m", r"hi\n", "--expect", r"OK hi\n", "--duration", "1s",
                        "--lifetime", "100ms")
    assert status == 0, s["errors"]
    assert s["reconnects"] >= 1
    # the last socket may have connected as the duration ended and sent nothing: its accept can lag
    deadline = time.monotonic() + 10
    while srv.accepted < s["reconnects"] + 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert srv.accepted == s["reconnects"] + 1


# -- load shapes against an echo server ------------------------------------------------------

async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


def test_message_file_is_sent_as_it_is(aserver: Callable[[Handler], AsyncioServer], tmp_path: Path) -> None:
    srv = aserver(echo)
    payload = bytes(range(256)) + b"\\r\\n{seq}"  # every byte value; backslashes and braces stay as they are
    (tmp_path / "req.bin").write_bytes(payload)
    status, s, _ = load(tmp_path, srv.port, "--message-file", str(tmp_path / "req.bin"), "-n", "7")
    assert status == 0, s["errors"]
    assert s["bytes"] == {"sent": 7 * len(payload), "echoed": 7 * len(payload)}
    assert "exchange" not in s  # a message alone, from a file or -e, keeps the echo fast path


def test_closed_loop_bounded_by_time(aserver: Callable[[Handler], AsyncioServer], tmp_path: Path) -> None:
    srv = aserver(echo)
    status, s, _ = load(tmp_path, srv.port, "--duration", "1s", "-c", "2")
    assert status == 0, s["errors"]
    assert s["mode"] == "closed" and s["duration_s"] == 1.0
    assert s["elapsed_s"] >= 1.0  # it ran until the duration was over, not for -n's default 100
    assert s["messages"]["echoed"] == s["messages"]["sent"] > 0
    # -n bounds it too
    status, s, _ = load(tmp_path, srv.port, "--duration", "60s", "-c", "2", "-n", "5")
    assert status == 0 and s["messages"]["echoed"] == 10


def test_warmup_is_judged_but_not_counted(aserver: Callable[[Handler], AsyncioServer], tmp_path: Path) -> None:
    srv = aserver(echo)
    status, s, _ = load(tmp_path, srv.port, "-n", "20", "--warmup", "300ms")
    assert status == 0, s["errors"]
    assert s["warmup_messages"] > 0
    assert s["messages"] == {"sent": 20, "echoed": 20, "mismatched": 0}  # -n counts after the warm-up


@pytest.mark.parametrize("extra", [[], ["--expect", "Gary's spamming"]], ids=["echo", "general"])
def test_rate_per_connection(aserver: Callable[[Handler], AsyncioServer], tmp_path: Path, extra: list[str]) -> None:
    srv = aserver(echo)
    status, s, _ = load(tmp_path, srv.port, "-c", "2", "--rate-per-connection", "20", "--duration", "1s", *extra)
    assert status == 0, s["errors"]
    assert s["rate"] == 40.0 and s["mode"] == "open"
    assert 20 <= s["messages"]["sent"] <= 40 and s["messages"]["echoed"] == s["messages"]["sent"]


# -- HTTP/1.1 keep-alive ---------------------------------------------------------------------

def test_http_keepalive_get(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text("<p>hello</p>\n" * 50)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", "--protocol", "HTTP/1.1", "-b", "127.0.0.1",
                             "-d", str(tmp_path / "site"), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for_port(port, proc), "http.server did not start"
        status, s, _ = load(tmp_path, port, "-e", "-m", r"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
                            "--expect-prefix", "HTTP/1.1 200", "--reply-http", "-c", "2", "-n", "10")
        assert status == 0, s["errors"]
        assert s["messages"]["echoed"] == 20
        assert s["bytes"]["echoed"] > 20 * 650  # headers and the whole body of every reply
        # a 404 is a mismatch at its 10th byte
        status, s, _ = load(tmp_path, port, "-e", "-m", r"GET /missing HTTP/1.1\r\nHost: localhost\r\n\r\n",
                            "--expect-prefix", "HTTP/1.1 200", "--reply-http", "-n", "2")
        assert status == 1 and s["error_examples"]["mismatch"]["offset"] == 9
    finally:
        proc.kill()
        proc.wait(10)


# -- mismatch at once --------------------------------------------------------------------------

async def one_wrong_byte_then_stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1)
    writer.write(b"X")
    await writer.drain()
    await asyncio.sleep(120)  # stalls (the fixture cancels it)


@pytest.mark.parametrize("extra", [[], ["--expect", "Gary's spamming"], ["--expect-prefix", "G", "--reply-size", "4"]],
                         ids=["echo", "exact", "prefix"])
def test_one_wrong_byte_is_a_mismatch_at_once(aserver: Callable[[Handler], AsyncioServer], tmp_path: Path,
                                             extra: list[str]) -> None:
    srv = aserver(one_wrong_byte_then_stall)
    status, s, rows = load(tmp_path, srv.port, "--timeout", "30", "-c", "2", *extra)
    assert status == 1
    assert s["errors"] == {"mismatch": 2}  # a timeout would need the 30 s and say "timeout"
    assert s["error_examples"]["mismatch"]["got"] == "X"
    assert s["error_examples"]["mismatch"]["offset"] == 0
    assert [r["got"] for r in rows] == ["X", "X"]


def test_forked_load_processes_carry_replies_and_mismatches(redis: int, tmp_path: Path) -> None:
    status, s, rows = load(tmp_path, redis, "-e", "-m", r"PING\r\n", "--expect", r"+PONG\r\n", "-c", "4", "-n", "50",
                           "--processes", "2", "--no-barrier")
    assert status == 0, s["errors"]
    assert [int(r["bytes"]) for r in rows] == [50 * 7] * 4 and len(s["processes"]) == 2
    status, s, rows = load(tmp_path, redis, "-e", "-m", r"PING\r\n", "--expect", r"+PANG\r\n", "-c", "4",
                           "--processes", "2")
    assert status == 1 and s["errors"] == {"mismatch": 4}
    assert {(r["process"], r["mismatch_offset"], r["got"]) for r in rows} == {("0", "2", r"+PONG\r\n"),
                                                                             ("1", "2", r"+PONG\r\n")}


def test_paced_pipelined_timetable(aserver: Callable[[Handler], AsyncioServer], tmp_path: Path) -> None:
    srv = aserver(echo)
    status, s, _ = load(tmp_path, srv.port, "-c", "2", "--rate-per-connection", "50", "--duration", "1s",
                        "--pipeline", "4", "-e", "-m", r"r{seq}\n")
    assert status == 0, s["errors"]
    assert 50 <= s["messages"]["sent"] <= 100 and s["messages"]["echoed"] == s["messages"]["sent"]


def test_a_timeout_keeps_the_part_of_the_reply_that_came(aserver: Callable[[Handler], AsyncioServer],
                                                         tmp_path: Path) -> None:
    async def half_then_stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.read(15)
        writer.write(request[:5])  # right so far, and then nothing
        await writer.drain()
        await asyncio.sleep(120)

    srv = aserver(half_then_stall)
    for extra in ([], ["--expect", "Gary's spamming"]):  # the echo fast path, the general loop
        status, s, rows = load(tmp_path, srv.port, "--timeout", "1", *extra)
        assert status == 1 and s["errors"] == {"timeout": 1}
        assert s["error_examples"]["timeout"]["got"] == "Gary'" and s["error_examples"]["timeout"]["offset"] is None
        assert rows[0]["got"] == "Gary'" and rows[0]["mismatch_offset"] == ""


def test_progress_of_a_closed_loop_bounded_by_time_counts_seconds(aserver: Callable[[Handler], AsyncioServer],
                                                                  tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    srv = aserver(echo)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)  # the bar is drawn on a terminal only
    status = main(["load", "-p", str(srv.port), "--out", str(tmp_path / "out"), "--duration", "1s", "-c", "2"])
    out = capsys.readouterr().out
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert status == 0
    # the bar's total is the duration, not -n's default 100 per connection (200 echoes)
    assert f"{s['messages']['echoed']:,} echoed, 1 s" in out, out
    assert "/200" not in out, out
