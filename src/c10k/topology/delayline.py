"""A userspace delay line: link delay, jitter, loss and rate without the kernel's netem.

Some kernels (this machine's among them) are built without ``sch_netem``. In
its place, one process is the hosts' switch: it owns a TAP device named
``eth0`` in every host's namespace (port 0 the server, port k client host k)
and forwards each Ethernet frame it reads from one TAP to another after
holding it until its due time. So every frame between a client host and the
server crosses the line once, and "delay 25ms" is 25 ms each way, as with
netem on both ends of a veth pair.

``Schedule`` is the pure part (frames in, due frames out; tested with a
seeded RNG): a FIFO per (source port, destination port), so order within a
direction is kept even with jitter (netem reorders with jitter unless a rate
is set; we never reorder, which TCP likes better and the figures show less
noisily); loss drops a frame with the link's probability; a rate paces each
direction's frames by their size, dropping what would wait over
``RATE_QUEUE_S`` (as tbf's latency 100ms does). ``serve`` is the hot loop;
``main`` (``--parent PID NS...``) runs it in a process of its own, and
``DelayLineProcess`` starts it, changes its link over a pipe and stops it.

Lifetime: the line asks for SIGKILL when its parent dies (PR_SET_PDEATHSIG)
and exits when its control pipe closes. Its TAP devices are not persistent:
they vanish when its descriptors close, or with their namespace.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import os
import random
import select
import signal
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence

from c10k.errors import C10kError, UsageError
from c10k.topology.link import NETEM_LIMIT, Link, parse_link

__all__ = ["Schedule", "DelayLineProcess", "TAP_MTU", "RATE_QUEUE_S", "MECHANISM", "tap_available", "main"]

#: The name results.json and the report give to links carried by this module.
MECHANISM = "userspace delay line"
#: The largest MTU a TAP takes (65535 less the Ethernet header): a bulk
#: transfer then crosses the line in ~45x fewer frames than at 1500.
TAP_MTU = 65521
#: The longest a frame may wait behind others for a rate before it is dropped.
RATE_QUEUE_S = 0.1
#: Frames read from one TAP before the others get a turn.
_BATCH = 64
_READ_SIZE = TAP_MTU + 14

_TUNSETIFF = 0x400454CA
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
_PR_SET_PDEATHSIG = 1
_CLOCK_MONOTONIC = 1
_TFD_TIMER_ABSTIME = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC
_libc = ctypes.CDLL(None, use_errno=True)
_ENTRY = "import sys; from c10k.topology.delayline import main; sys.exit(main())"


class Schedule:
    """When each frame leaves: pure, so its arithmetic is tested without devices.

    Args:
        link: the delay, jitter, loss and rate of each direction.
        rng: the random source for jitter and loss (seed it in tests).
    """

    def __init__(self, link: Link, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()
        self.queues: dict[tuple[int, int], deque[tuple[float, bytes]]] = {}
        self._busy_until: dict[tuple[int, int], float] = {}
        self.queued = 0
        self.dropped = 0
        self.forwarded = 0
        self.set_link(link)

    def set_link(self, link: Link) -> None:
        """Apply ``link`` to frames admitted from now on (queued frames keep their due times)."""
        self.link = link
        self._delay_s = link.delay_us / 1e6
        self._jitter_s = link.jitter_us / 1e6
        self._loss = link.loss_pct / 100.0
        self._seconds_per_bit = 1.0 / link.rate_bps if link.rate_bps else 0.0

    def admit(self, now: float, src: int, dst: int, frame: bytes) -> bool:
        """Queue a frame read at ``now`` from port ``src`` for port ``dst``; False if it was dropped."""
        if (self._loss and self.rng.random() < self._loss) or self.queued >= NETEM_LIMIT:
            self.dropped += 1
            return False
        due = now + self._delay_s
        if self._jitter_s:
            due = max(now, due + self.rng.uniform(-self._jitter_s, self._jitter_s))
        key = (src, dst)
        queue = self.queues.get(key)
        if queue is None:
            queue = self.queues[key] = deque()
        if self._seconds_per_bit:
            # after the frame ahead has left (which also keeps the order)
            start = max(due, self._busy_until.get(key, 0.0))
            if start - due > RATE_QUEUE_S:
                self.dropped += 1
                return False
            due = start + len(frame) * 8 * self._seconds_per_bit  # leaves once serialized
            self._busy_until[key] = due
        elif queue and queue[-1][0] > due:
            due = queue[-1][0]  # never overtake the frame ahead (jitter keeps order)
        queue.append((due, frame))
        self.queued += 1
        return True

    def pop_due(self, now: float) -> list[tuple[int, bytes]]:
        """(destination port, frame) of every frame due by ``now``, in order per direction."""
        out: list[tuple[int, bytes]] = []
        for (_, dst), queue in self.queues.items():
            while queue and queue[0][0] <= now:
                out.append((dst, queue.popleft()[1]))
        self.queued -= len(out)
        self.forwarded += len(out)
        return out

    def next_due(self) -> float | None:
        """The earliest due time of a queued frame, or None when nothing waits."""
        heads = [q[0][0] for q in self.queues.values() if q]
        return min(heads) if heads else None


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class _Timer:
    """A CLOCK_MONOTONIC timerfd armed at absolute times (Python 3.11 has no os.timerfd_*).

    Why not epoll's own timeout: CPython rounds it up to whole milliseconds, so
    a 1 ms delay would come out anywhere between 1 and 2 ms. A timerfd wakes
    the loop within the timer slack (50 us) of the due time, and on
    ``time.monotonic``'s own clock.
    """

    def __init__(self) -> None:
        self.fd = _libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create")
        self._spec = _Itimerspec()

    def arm(self, at: float) -> None:
        sec = int(at)
        self._spec.it_value.tv_sec = sec
        self._spec.it_value.tv_nsec = max(1, int((at - sec) * 1e9))  # all zero would disarm it
        _libc.timerfd_settime(self.fd, _TFD_TIMER_ABSTIME, ctypes.byref(self._spec), None)


def open_tap(namespace: str, name: str = "eth0") -> int:
    """A non-blocking TAP device ``name`` in ``namespace``; it lives while the descriptor is open.

    Why setns first: the device is made in the namespace of the task that
    opens /dev/net/tun (the open binds the file to that namespace), so the
    calling thread enters ``namespace`` before the open and goes back after.
    IFF_TAP: Ethernet frames (ARP passes through as any frame); IFF_NO_PI:
    no 4-byte packet-info header before each frame. No IFF_VNET_HDR and no
    TUNSETOFFLOAD, so the kernel checksums and segments every packet before
    the TAP sees it: each read is one whole frame of at most the MTU, with
    valid checksums, that can be written as is to another TAP.
    """
    from c10k.topology.netns import enter_namespace

    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter_namespace(namespace)
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH22x", name.encode(), _IFF_TAP | _IFF_NO_PI))
        finally:
            enter_namespace(home)
    finally:
        os.close(home)
    return fd


def tap_available() -> bool:
    """Whether this process can open /dev/net/tun (the delay line's one need beyond netns)."""
    try:
        os.close(os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC))
    except OSError:
        return False
    return True


def serve(taps: Sequence[int], control: int, schedule: Schedule) -> None:
    """Forward frames between ``taps`` through ``schedule`` until ``control`` closes.

    A learning switch: a frame goes to the port its destination MAC was last
    seen on, else (broadcast, ARP, not yet seen) to every other port. Each
    control line is a link spec to apply (the reply: ``ok`` or the error) or
    ``stats`` (the reply: ``stats FORWARDED DROPPED``, frame counts so far).
    """
    timer = _Timer()
    epoll = select.epoll()
    try:
        _forward(taps, control, schedule, timer, epoll)
    finally:
        epoll.close()
        os.close(timer.fd)


def _forward(taps: Sequence[int], control: int, schedule: Schedule, timer: _Timer, epoll: select.epoll) -> None:
    # The hot path: every frame between the hosts passes here, so names are
    # bound once outside the loop and a batch of frames shares one clock read
    # (they were all waiting in the TAP by then).
    port_of = {fd: port for port, fd in enumerate(taps)}
    for fd in (*taps, timer.fd, control):
        epoll.register(fd, select.EPOLLIN)
    ports = range(len(taps))
    macs: dict[bytes, int] = {}
    admit, pop_due, now_of, read, write = schedule.admit, schedule.pop_due, time.monotonic, os.read, os.write
    armed = 0.0
    while True:
        for fd, _ in epoll.poll():
            src = port_of.get(fd)
            if src is not None:
                now = now_of()
                for _ in range(_BATCH):
                    try:
                        frame = read(fd, _READ_SIZE)
                    except BlockingIOError:
                        break
                    macs[frame[6:12]] = src
                    dst = macs.get(frame[:6])
                    if dst is not None and dst != src:
                        admit(now, src, dst, frame)
                    elif dst is None:
                        for other in ports:
                            if other != src:
                                admit(now, src, other, frame)
            elif fd == timer.fd:
                try:
                    read(fd, 8)
                except BlockingIOError:
                    pass
            elif not _obey(control, schedule):
                return
        for dst, frame in pop_due(now_of()):
            try:
                write(taps[dst], frame)
            except OSError:  # the host's stack refused it (device down): a lost frame
                schedule.dropped += 1
        due = schedule.next_due()
        if due is not None and due != armed:
            timer.arm(due)
            armed = due


def _obey(control: int, schedule: Schedule) -> bool:
    data = os.read(control, 4096)
    if not data:
        return False
    for line in data.decode().splitlines():
        if line == "stats":
            os.write(1, f"stats {schedule.forwarded} {schedule.dropped}\n".encode())
            continue
        try:
            schedule.set_link(parse_link(line))
            os.write(1, b"ok\n")
        except UsageError as exc:
            os.write(1, f"error {exc}\n".encode())
    return True


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m c10k.topology.delayline")
    ap.add_argument("--parent", type=int, required=True, help="die with this process")
    ap.add_argument("--link", default="none")
    ap.add_argument("namespaces", nargs="+", help="the server host's namespace first")
    args = ap.parse_args(argv)
    # Why PR_SET_PDEATHSIG: a SIGKILLed run cannot stop its line, and a line
    # left running keeps its TAPs' namespaces alive; the kernel kills it then.
    # The parent may have died before the prctl: check after it.
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != args.parent:
        return 1
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the run's to handle; it closes our pipe
    taps = [open_tap(ns) for ns in args.namespaces]
    os.write(1, b"ready\n")
    serve(taps, 0, Schedule(parse_link(args.link)))
    return 0


class DelayLineProcess:
    """The delay line as a child process: ``start`` it, ``set_link`` per case, ``stop`` it."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    @classmethod
    def start(cls, namespaces: Sequence[str], cpu: int | None = None, timeout_s: float = 10.0) -> DelayLineProcess:
        """Start the line and wait until its TAP devices exist (each still down, with no address).

        Raises:
            C10kError: it did not start, or said something else than ready.
        """
        pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
        # -c, not -m: the package's __init__ imports this module, and runpy
        # warns when asked to run a module that is already imported.
        argv = [*pin, sys.executable, "-c", _ENTRY, "--parent", str(os.getpid()), *namespaces]
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        line = cls(proc)
        try:
            line._expect("ready", timeout_s)
        except BaseException:
            line.stop()
            raise
        return line

    def _expect(self, word: str, timeout_s: float) -> list[str]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        reply = os.read(self.proc.stdout.fileno(), 4096).decode().split() if ready else []
        if reply[:1] != [word]:
            why = " ".join(reply) or ("exited" if self.proc.poll() is not None else f"no answer in {timeout_s:g} s")
            raise C10kError(f"userspace delay line: {why}")
        return reply[1:]

    def _ask(self, line: str, word: str, timeout_s: float) -> list[str]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(f"{line}\n".encode())
        except BrokenPipeError:
            raise C10kError("userspace delay line: it is gone") from None
        return self._expect(word, timeout_s)

    def set_link(self, link: Link, timeout_s: float = 10.0) -> None:
        self._ask(link.spec, "ok", timeout_s)

    def stats(self, timeout_s: float = 10.0) -> dict[str, int]:
        """Frames forwarded and dropped so far, and the line's CPU time (ns of user + system)."""
        forwarded, dropped = self._ask("stats", "stats", timeout_s)
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime: the kernel work done on its writes too
        return {"forwarded": int(forwarded), "dropped": int(dropped),
                "cpu_ns": ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")}

    def stop(self, timeout_s: float = 5.0) -> None:
        """Close its pipe (it exits, and its TAPs go); kill it if it does not."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


if __name__ == "__main__":
    sys.exit(main())
