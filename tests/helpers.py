"""Test helpers that talk to `c10k serve` only through its CLI contract and sockets.

Nothing here imports ``c10k``: the servers are black boxes started as
subprocesses (see ``conftest.py``), so these tests hold whatever the
implementation is. Every loop is bounded by a deadline, and waiting is done on
readiness (selectors) rather than with sleeps.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

__all__ = [
    "SERVER_CONFIGS",
    "CONFIG_IDS",
    "UNIX_CONFIGS",
    "UNIX_CONFIG_IDS",
    "ALL_SERVER_CONFIGS",
    "PROCESS_WORKER_CONFIGS",
    "ServerProcess",
    "start_server",
    "connect",
    "connect_many",
    "Conversation",
    "drive",
    "echo_once",
    "assert_echoes",
    "random_bytes",
    "random_chunks",
    "wait_until",
    "settled",
    "socket_fd_count",
    "is_refused",
    "reset_close",
    "read_until_closed",
    "server_command",
    "MiB",
    "Stream",
    "StallResult",
    "stall_then_drain",
    "PeakSampler",
]

#: Every server configuration the behaviour suite runs against: id -> `c10k serve` arguments.
#: The epoll variants run two workers so that hand-off really crosses processes/threads.
SERVER_CONFIGS: dict[str, list[str]] = {
    "threaded": ["threaded"],
    "select": ["select"],
    "poll": ["poll"],
    "epoll": ["epoll", "--workers", "2"],
    "epoll-threads": ["epoll", "--worker-mode", "thread", "--workers", "2"],
    "epoll-reuseport": ["epoll", "--balance", "reuseport", "--workers", "2"],
    "asyncio": ["asyncio"],
    "uvloop": ["uvloop"],
    "gevent": ["gevent"],
    "trio": ["trio"],
    "uring": ["uring", "--workers", "2"],
    "uring-reuseport": ["uring", "--balance", "reuseport", "--workers", "2"],
}
CONFIG_IDS = list(SERVER_CONFIGS)
#: The same servers on a unix-domain socket (`--unix PATH`; start_server puts a path of the test's in place
#: of UNIX_PATH). Not reuseport: SO_REUSEPORT shares a TCP port, and a unix socket has none.
UNIX_PATH = "{unix}"
UNIX_CONFIGS: dict[str, list[str]] = {f"{k}-unix": [*v, "--unix", UNIX_PATH]
                                      for k, v in SERVER_CONFIGS.items() if "reuseport" not in k}
UNIX_CONFIG_IDS = list(UNIX_CONFIGS)
ALL_SERVER_CONFIGS = {**SERVER_CONFIGS, **UNIX_CONFIGS}
#: Configurations whose connections live in worker processes (children of the server).
PROCESS_WORKER_CONFIGS = ["epoll", "epoll-reuseport",
                          "uring", "uring-reuseport"]

LISTENING_RE = re.compile(r"^listening on (?:unix:(?P<path>\S+)|\[?(?P<host>[^\s\]]+)\]?:(?P<port>\d+))$")
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
#: a TCP (host, port), or a unix socket's path
Address = tuple[str, int] | str


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout`` seconds.

    Used only for state that has no event to wait on (another process's
    descriptor table, its memory): the loop is bounded in time and count.
    """
    deadline = time.monotonic() + timeout
    last = None
    for _ in range(int(timeout / interval) + 2):
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last value: {last!r})")


def settled(value_fn, hold: float = 1.0, timeout: float = 30.0, what: str = "value"):
    """The value of ``value_fn()`` once it has not changed for ``hold`` seconds (sampled every
    0.1 s), e.g. a server's descriptor count after the clients it served have gone."""
    history: list = []
    n = max(2, int(hold / 0.1) + 1)

    def still():
        history.append(value_fn())
        return len(history) >= n and len(set(history[-n:])) == 1

    wait_until(still, timeout, interval=0.1, what=f"{what} to settle (last {history[-5:]})")
    return history[-1]


# --------------------------------------------------------------------------- server process


@dataclass
class ServerProcess:
    """A running `c10k serve` subprocess in its own session (so its workers can be killed with it)."""

    proc: subprocess.Popen
    host: str
    port: int
    stats_path: Path | None
    stderr_path: Path
    args: list[str]
    unix: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def address(self) -> Address:
        """(host, port), or the path of a unix socket (``--unix``)."""
        return self.host if self.unix else (self.host, self.port)

    def ps(self) -> psutil.Process:
        return psutil.Process(self.proc.pid)

    def tree(self) -> list[psutil.Process]:
        """The server process and all its descendants (workers), alive right now."""
        root = self.ps()
        try:
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return [root]

    def workers(self) -> list[psutil.Process]:
        try:
            return self.ps().children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def _sum(self, fn) -> int:
        total = 0
        for p in self.tree():
            try:
                total += fn(p)
            except (psutil.NoSuchProcess, psutil.ZombieProcess, FileNotFoundError, ProcessLookupError):
                pass
        return total

    def rss(self) -> int:
        """Resident memory summed over the process tree, in bytes."""
        return self._sum(lambda p: p.memory_info().rss)

    def cpu_seconds(self) -> float:
        """user+system CPU time summed over the process tree."""
        total = 0.0
        for p in self.tree():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                pass
        return total

    def fd_count(self) -> int:
        """Open descriptors summed over the process tree."""
        return self._sum(lambda p: p.num_fds())

    def socket_count(self) -> int:
        """Open socket descriptors summed over the process tree."""
        return self._sum(lambda p: socket_fd_count(p.pid))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Wait for the server to exit; fail (not hang) if it takes longer than ``timeout``."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"server {self.args} still running {timeout}s after being asked to stop; "
                f"stderr: {self.stderr()[-2000:]}"
            ) from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        self.send(sig)
        return self.wait(timeout)

    def stats(self) -> dict:
        assert self.stats_path is not None, "server started without a stats file"
        assert self.stats_path.exists(), f"no stats file written; stderr: {self.stderr()[-2000:]}"
        return json.loads(self.stats_path.read_text())

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        """Kill the server and everything in its session; always safe to call."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
        else:
            # The server exited; its workers may not have (they share its process group).
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        if self.proc.stdout:
            self.proc.stdout.close()


def server_command(args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "c10k", "serve", *args]


def start_server(
    args: Sequence[str],
    workdir: Path,
    *,
    stats: bool = True,
    preexec_fn=None,
    ready_timeout: float = 30.0,
    port: int = 0,
) -> ServerProcess:
    """Start `c10k serve ARGS -p PORT` and wait for its `listening on HOST:PORT` line."""
    workdir.mkdir(parents=True, exist_ok=True)
    n = len(list(workdir.glob("server-*.stderr")))
    stderr_path = workdir / f"server-{n}.stderr"
    stats_path = workdir / f"server-{n}.stats.json" if stats else None
    if "--unix" in args:  # no port; UNIX_PATH becomes a socket in workdir
        sock = workdir / f"server-{n}.sock"
        assert len(str(sock)) < 108, f"unix socket path too long for sun_path: {sock}"
        full = [str(sock) if a == UNIX_PATH else a for a in args]
    else:
        full = [*args, "-p", str(port)]
    if stats_path is not None:
        full += ["--stats-file", str(stats_path)]
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            server_command(full),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,
            preexec_fn=preexec_fn,
        )
    server = ServerProcess(proc, "", 0, stats_path, stderr_path, full)
    try:
        line = _read_line(proc, ready_timeout)
    except AssertionError as e:
        server.kill()
        raise AssertionError(f"c10k serve {' '.join(full)}: {e}; stderr: {server.stderr()[-2000:]}") from None
    except BaseException:
        server.kill()
        raise
    m = LISTENING_RE.match(line)
    if not m:
        server.kill()
        raise AssertionError(f"expected 'listening on HOST:PORT', got {line!r}; stderr: {server.stderr()}")
    if m["path"]:
        server.host, server.unix = m["path"], True
    else:
        server.host, server.port = m["host"], int(m["port"])
    return server


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    try:
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"server printed no 'listening on' line within {timeout}s (got {buf!r})")
            if not sel.select(left):
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                rc = proc.wait(timeout=10)
                raise AssertionError(f"server exited with {rc} before listening (stdout {buf!r})")
            buf += chunk
    finally:
        sel.close()
    return buf.split(b"\n", 1)[0].decode()


# --------------------------------------------------------------------------- sockets


def socket_fd_count(pid: int) -> int:
    """Socket descriptors open in process ``pid`` (0 if it is gone)."""
    base = f"/proc/{pid}/fd"
    n = 0
    try:
        names = os.listdir(base)
    except OSError:
        return 0
    for name in names:
        try:
            if os.readlink(f"{base}/{name}").startswith("socket:"):
                n += 1
        except OSError:
            pass
    return n


def _stream_socket(address: Address) -> socket.socket:
    """A TCP socket with TCP_NODELAY (small writes go out as written), or a unix one for a path."""
    if isinstance(address, str):
        return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def connect(address: Address, timeout: float = 10.0, source: str | None = None) -> socket.socket:
    """A blocking connection to (host, port) over TCP, or to a unix socket's path."""
    s = _stream_socket(address)
    try:
        if source:
            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((source, 0))
        s.settimeout(timeout)
        s.connect(address)
    except BaseException:
        s.close()
        raise
    return s


def connect_many(
    address: Address,
    n: int,
    *,
    timeout: float = 60.0,
    source: str | None = None,
    window: int = 512,
) -> list[socket.socket]:
    """Open ``n`` connections with non-blocking connects, at most ``window`` in flight.

    Returns non-blocking sockets. Fails if any connect fails or the deadline passes
    (on failure every socket opened so far is closed).
    """
    deadline = time.monotonic() + timeout
    done: list[socket.socket] = []
    pending: dict[int, socket.socket] = {}
    sel = selectors.DefaultSelector()
    started = 0
    try:
        while len(done) < n:
            while started < n and len(pending) < window:
                s = _stream_socket(address)
                pending[s.fileno()] = s
                s.setblocking(False)
                if source:
                    s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                    s.bind((source, 0))
                err = s.connect_ex(address)
                started += 1
                if err == 0:
                    del pending[s.fileno()]
                    done.append(s)
                elif err == errno.EINPROGRESS:
                    sel.register(s, selectors.EVENT_WRITE)
                else:
                    raise OSError(err, f"connect #{started}: {os.strerror(err)}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"only {len(done)} of {n} connections established within {timeout}s")
            for key, _ in sel.select(min(left, 1.0)):
                s = key.fileobj
                sel.unregister(s)
                del pending[s.fileno()]
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    s.close()
                    raise OSError(err, f"connect failed after {len(done)} connections: {os.strerror(err)}")
                done.append(s)
    except BaseException:
        for s in [*done, *pending.values()]:
            s.close()
        raise
    finally:
        sel.close()
    return done


def reset_close(s: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a RST instead of a FIN."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def is_refused(address: tuple[str, int], timeout: float = 5.0) -> bool:
    """True if a new connection to ``address`` is refused (nothing listens)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        return s.connect_ex(address) == errno.ECONNREFUSED
    finally:
        s.close()


def read_until_closed(s: socket.socket, timeout: float = 10.0, limit: int = 1 << 20) -> tuple[bytes, str]:
    """Read until EOF or reset: returns (data, "eof" | "reset" | "timeout")."""
    s.settimeout(None)
    s.setblocking(False)
    data = bytearray()
    deadline = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    sel.register(s, selectors.EVENT_READ)
    try:
        while len(data) <= limit:
            left = deadline - time.monotonic()
            if left <= 0:
                return bytes(data), "timeout"
            if not sel.select(left):
                continue
            try:
                chunk = s.recv(65536)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                return bytes(data), "reset"
            if not chunk:
                return bytes(data), "eof"
            data += chunk
        return bytes(data), "overflow"
    finally:
        sel.close()


def random_bytes(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n)


def random_chunks(rng: random.Random, data: bytes, max_chunk: int) -> list[bytes]:
    """Split ``data`` into chunks of random sizes 1..max_chunk."""
    out = []
    i = 0
    while i < len(data):
        k = rng.randint(1, max_chunk)
        out.append(data[i : i + k])
        i += k
    return out


# --------------------------------------------------------------------------- conversation driver


@dataclass
class Conversation:
    """One connection's script: write ``chunks`` (each its own send, after an optional pause),
    read concurrently, optionally shut the write side, and check what comes back.

    ``pauses[i]`` (seconds) is waited before chunk ``i`` is sent.
    ``reset_after``: after that many bytes were sent, close with SO_LINGER 0 (a RST) and stop.
    ``half_close``: shutdown(SHUT_WR) after the last chunk, then expect every byte back, then EOF.
    Without it the conversation ends once every byte came back (the socket stays open).
    """

    sock: socket.socket
    chunks: list[bytes]
    pauses: list[float] | None = None
    half_close: bool = False
    reset_after: int | None = None
    # results
    received: bytearray = field(default_factory=bytearray)
    sent: int = 0
    eof: bool = False
    error: str | None = None
    done: bool = False
    # internals
    _i: int = 0
    _off: int = 0
    _not_before: float = 0.0
    _shut: bool = False

    @property
    def expected(self) -> bytes:
        return b"".join(self.chunks)

    @property
    def expected_len(self) -> int:
        return sum(len(c) for c in self.chunks)

    def describe(self) -> str:
        return (
            f"sent {self.sent}/{self.expected_len}, received {len(self.received)}, "
            f"eof={self.eof}, error={self.error}, half_close={self.half_close}"
        )


def drive(convs: Sequence[Conversation], timeout: float = 60.0, on_tick=None) -> None:
    """Run every conversation concurrently on one selector until all are done.

    Fails with a summary of the unfinished ones when ``timeout`` passes. Mismatches
    are not raised here: check ``conv.received`` against ``conv.expected``.
    ``on_tick`` (if given) is called about every 0.1 s (e.g. to sample server memory).
    """
    sel = selectors.DefaultSelector()
    start = time.monotonic()
    deadline = start + timeout
    live = 0
    for c in convs:
        c.sock.setblocking(False)
        if not c.chunks and not c.half_close:
            c.done = True  # nothing to send, nothing to wait for
            continue
        c._not_before = start + (c.pauses[0] if c.pauses else 0.0)
        sel.register(c.sock, selectors.EVENT_READ, c)
        live += 1
        _want_write(sel, c, start)
    next_tick = start
    paused = [c for c in convs if c.pauses]
    try:
        while live:
            now = time.monotonic()
            if now >= deadline:
                unfinished = [c for c in convs if not c.done]
                raise AssertionError(
                    f"{len(unfinished)} of {len(convs)} conversations unfinished after {timeout}s; "
                    f"first: {unfinished[0].describe()}"
                )
            if on_tick is not None and now >= next_tick:
                on_tick()
                next_tick = now + 0.1
            wait = min(deadline - now, 0.1 if on_tick else 1.0)
            for c in paused:  # wake for the earliest pending pause
                if not c.done and c._i < len(c.chunks) and c._not_before > now:
                    wait = min(wait, c._not_before - now)
            events = sel.select(max(wait, 0.0))
            now = time.monotonic()
            for key, mask in events:
                c = key.data
                if c.done:
                    continue
                if mask & selectors.EVENT_READ:
                    _on_read(c)
                if not c.done and mask & selectors.EVENT_WRITE:
                    _on_write(c, now)
                if c.done:
                    sel.unregister(c.sock)
                    live -= 1
                    if c.reset_after is not None and c.error is None:
                        reset_close(c.sock)
                else:
                    _want_write(sel, c, now)
            # conversations whose pause has ended need write interest
            for c in paused:
                if not c.done and c._i < len(c.chunks) and c._not_before <= now:
                    _want_write(sel, c, now)
    finally:
        sel.close()


def _want_write(sel: selectors.BaseSelector, c: Conversation, now: float) -> None:
    writing = c._i < len(c.chunks) and c._not_before <= now
    if not writing and c._i >= len(c.chunks) and c.half_close and not c._shut:
        c.sock.shutdown(socket.SHUT_WR)
        c._shut = True
    mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0)
    if sel.get_key(c.sock).events != mask:
        sel.modify(c.sock, mask, c)


def _on_write(c: Conversation, now: float) -> None:
    while c._i < len(c.chunks) and c._not_before <= now:
        chunk = c.chunks[c._i]
        view = memoryview(chunk)[c._off :]
        if c.reset_after is not None:
            view = view[: max(0, c.reset_after - c.sent)]
        try:
            n = c.sock.send(view) if len(view) else 0
        except BlockingIOError:
            return
        except (ConnectionResetError, BrokenPipeError) as e:
            c.error = f"send: {e!r}"
            c.done = True
            return
        c.sent += n
        c._off += n
        if c.reset_after is not None and c.sent >= c.reset_after:
            c.done = True
            return
        if c._off < len(chunk):
            return  # kernel buffer full: wait for writability
        c._i += 1
        c._off = 0
        if c.pauses and c._i < len(c.chunks):
            c._not_before = now + c.pauses[c._i]
            return


def _on_read(c: Conversation) -> None:
    for _ in range(64):
        try:
            data = c.sock.recv(262144)
        except BlockingIOError:
            return
        except ConnectionResetError as e:
            c.error = f"recv: {e!r}"
            c.done = True
            return
        if not data:
            c.eof = True
            if not c.half_close or c._i < len(c.chunks):
                c.error = c.error or "early EOF"
            c.done = True
            return
        c.received += data
        if len(c.received) > c.expected_len:
            c.error = "more bytes than sent"
            c.done = True
            return
        if not c.half_close and c.reset_after is None and len(c.received) == c.expected_len:
            c.done = True
            return


def assert_echoes(convs: Iterable[Conversation]) -> None:
    """Every conversation got back exactly what it sent (and EOF after a half-close)."""
    bad = []
    for k, c in enumerate(convs):
        if c.error or bytes(c.received) != c.expected or (c.half_close and not c.eof):
            first_diff = next(
                (i for i, (a, b) in enumerate(zip(c.received, c.expected, strict=False)) if a != b), None
            )
            bad.append(f"#{k}: {c.describe()}, first differing byte at {first_diff}")
    assert not bad, f"{len(bad)} conversations not byte-exact: " + "; ".join(bad[:5])


def check_echoes(convs: Sequence[Conversation], timeout: float = 60.0) -> None:
    """Drive every conversation, assert each came back byte-exact, and close the sockets."""
    try:
        drive(convs, timeout=timeout)
        assert_echoes(convs)
    finally:
        for c in convs:
            c.sock.close()


def echo_once(
    address: Address, payload: bytes = b"ping", timeout: float = 10.0, source: str | None = None
) -> bytes:
    """Connect, send ``payload``, read it back, close. Returns what came back."""
    with connect(address, timeout=timeout, source=source) as s:
        s.sendall(payload)
        got = bytearray()
        deadline = time.monotonic() + timeout
        while len(got) < len(payload) and time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        return bytes(got)


# --------------------------------------------------------------------------- long deterministic streams

MiB = 1 << 20


class Stream:
    """A deterministic pseudo-random byte stream of ``total`` bytes, made and checked in 1 MiB blocks,
    so hundreds of MiB can be sent and verified in order without holding them in memory."""

    def __init__(self, seed: int, total: int):
        self.seed = seed
        self.total = total
        self._cache: dict[int, bytes] = {}

    def block(self, k: int) -> bytes:
        b = self._cache.get(k)
        if b is None:
            if len(self._cache) >= 4:
                self._cache.pop(min(self._cache))
            b = self._cache[k] = random.Random(self.seed * 1_000_003 + k).randbytes(MiB)
        return b

    def view(self, offset: int, n: int) -> memoryview:
        """Up to ``n`` bytes at ``offset`` (never crossing a block boundary)."""
        k, i = divmod(offset, MiB)
        n = min(n, MiB - i, self.total - offset)
        return memoryview(self.block(k))[i : i + n]

    def matches(self, offset: int, data: bytes | memoryview) -> bool:
        data = memoryview(data)
        pos = 0
        while pos < len(data):
            want = self.view(offset + pos, len(data) - pos)
            if len(want) == 0 or data[pos : pos + len(want)] != want:
                return False
            pos += len(want)
        return True


@dataclass
class StallResult:
    sent_before_stall: int
    received: int
    in_order: bool
    first_bad_offset: int | None


def stall_then_drain(
    sock: socket.socket,
    stream: Stream,
    *,
    sample=None,
    stall_s: float = 1.0,
    timeout: float = 180.0,
) -> StallResult:
    """A client that writes ``stream`` without reading until the connection takes no more data for
    ``stall_s`` seconds (every buffer on the way is full), then reads everything back while it
    writes the rest, checking order. ``sample()`` is called about every 0.1 s in both phases."""
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_WRITE)
    deadline = time.monotonic() + timeout
    next_tick = 0.0
    sent = 0

    def tick():
        nonlocal next_tick
        now = time.monotonic()
        if sample is not None and now >= next_tick:
            sample()
            next_tick = now + 0.1
        if now > deadline:
            raise AssertionError(f"stall_then_drain: timed out (sent {sent})")

    try:
        while sent < stream.total:  # phase 1: write only
            tick()
            if not sel.select(stall_s):
                break
            try:
                sent += sock.send(stream.view(sent, 256 * 1024))
            except BlockingIOError:
                pass
        stalled_at = sent
        if sample is not None:  # a few samples while stalled
            for _ in range(5):
                sample()
                sel.select(0.1)
        received = 0
        bad = None
        sel.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        writing = True
        while received < stream.total:  # phase 2: read and write
            tick()
            for _key, mask in sel.select(1.0):
                if mask & selectors.EVENT_READ:
                    try:
                        data = sock.recv(262144)
                    except BlockingIOError:
                        data = None
                    if data == b"":
                        raise AssertionError(f"EOF after {received} of {stream.total} bytes")
                    if data:
                        if bad is None and not stream.matches(received, data):
                            bad = received
                        received += len(data)
                if writing and mask & selectors.EVENT_WRITE:
                    try:
                        sent += sock.send(stream.view(sent, 256 * 1024))
                    except BlockingIOError:
                        pass
                    if sent >= stream.total:
                        writing = False
                        sel.modify(sock, selectors.EVENT_READ)
        return StallResult(stalled_at, received, bad is None, bad)
    finally:
        sel.close()


class PeakSampler:
    """Samples a server's tree RSS; ``peak - baseline`` is the growth."""

    def __init__(self, server: ServerProcess):
        self.server = server
        self.baseline = server.rss()
        self.peak = self.baseline
        self.samples = 0

    def __call__(self) -> None:
        self.peak = max(self.peak, self.server.rss())
        self.samples += 1

    @property
    def growth(self) -> int:
        return self.peak - self.baseline
