"""Make, shape and remove a run's hosts: network namespaces on a bridge (needs root and iproute2).

``Topology`` builds what ``plan_hosts`` names: a bridge in the root namespace
with no address, and per host a namespace whose ``eth0`` is one end of a veth
pair, the other end on the bridge. Client hosts get a wide ephemeral port
range of their own (``net.ipv4.ip_local_port_range`` is per namespace).

Removal is the point of this module. A run holds an exclusive ``flock`` on
``LOCK_DIR/<run>.lock`` while it lives; the kernel drops the lock when the
process dies, however it dies (SIGKILL included). So at the start of a run,
``remove_stale`` takes every ``c10k<RUN>-...`` namespace and link whose lock
it can take (or that has none): the run that made it is gone. Processes still
inside a stale namespace are killed first, since a namespace with processes
in it outlives ``ip netns del`` (and so would its veth, on our bridge).

Two carriers (``choose_carrier``): veth pairs on a bridge, shaped by tc (netem
for delay and loss, tbf for a rate), or, where the kernel has no netem (or
``C10K_DELAY=userspace``), TAP devices joined by the userspace delay line
(``delayline.py``), which then carries every case of the run, unshaped ones
too, so that cases differ by their link and not by their path.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from c10k.errors import C10kError, UsageError
from c10k.topology.delayline import MECHANISM, TAP_MTU, DelayLineProcess, tap_available
from c10k.topology.link import Link
from c10k.topology.plan import HostPlan, new_run_id, plan_hosts, run_id_of

__all__ = ["Topology", "check_can_run", "enter_namespace", "namespace_fd", "remove_stale",
           "list_namespaces", "list_links", "probe", "probe_line", "require_delay", "choose_carrier",
           "wait_gone", "LOCK_DIR", "TAP_TXQUEUELEN"]

LOCK_DIR = Path("/run/c10k")
#: Client hosts' ephemeral ports: all but the well-known ones, ~4x the default
#: range, so one client address can hold tens of thousands of connections.
CLIENT_PORT_RANGE = (1024, 65535)
#: Frames a host's TAP holds for the delay line before it drops them (tun's
#: default is 1000, under what 10,000 connections send in one burst).
TAP_TXQUEUELEN = 100_000
_NETNS_DIR = Path("/run/netns")
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _run(*argv: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise C10kError(f"{' '.join(argv)}: {exc}") from None
    if check and proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise C10kError(f"{' '.join(argv)}: {why}")
    return proc


def check_can_run() -> None:
    """Raise UsageError (exit 2) with one line when namespaces cannot be made here."""
    if os.geteuid() != 0:
        raise UsageError("--topology netns needs root (it creates network namespaces, veth pairs and qdiscs)")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise UsageError(f"--topology netns needs iproute2 ('{tool}' is not on PATH)")
    if not hasattr(_libc, "setns"):
        raise UsageError("--topology netns needs setns(2), which this C library lacks")


def namespace_fd(name: str) -> int:
    """An O_CLOEXEC descriptor of namespace ``name`` (for ``enter_namespace``)."""
    return os.open(_NETNS_DIR / name, os.O_RDONLY | os.O_CLOEXEC)


def enter_namespace(fd_or_name: int | str) -> None:
    """Move the calling thread into a network namespace (setns(2)).

    Why the calling thread only: setns(CLONE_NEWNET) changes one task's network
    namespace. Sockets created afterwards, and processes forked afterwards by
    this thread, live there; threads started earlier stay where they were. So
    call it first thing in a freshly forked child, before any socket.
    """
    fd = namespace_fd(fd_or_name) if isinstance(fd_or_name, str) else fd_or_name
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns: {os.strerror(err)}")
    finally:
        if isinstance(fd_or_name, str):
            os.close(fd)


def list_namespaces() -> list[str]:
    out = _run("ip", "netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def list_links() -> list[str]:
    out = _run("ip", "-o", "link", "show").stdout
    # "7: c10ka1b2c3-h1@if2: <...>": the name, without the peer's "@ifN"
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]


def _lock_path(run_id: str) -> Path:
    return LOCK_DIR / f"{run_id}.lock"


def _hold_lock(run_id: str) -> int:
    """Take run ``run_id``'s lock for as long as the returned descriptor is open."""
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    fd = os.open(_lock_path(run_id), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _release_lock(run_id: str, fd: int) -> None:
    _lock_path(run_id).unlink(missing_ok=True)
    os.close(fd)


def _run_is_alive(run_id: str) -> bool:
    try:
        fd = os.open(_lock_path(run_id), os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _kill_namespace_processes(namespace: str) -> None:
    # A namespace with processes in it survives `ip netns del`; a killed run's
    # server or load may still be running in one.
    proc = _run("ip", "netns", "pids", namespace, check=False)
    for word in proc.stdout.split():
        try:
            os.kill(int(word), signal.SIGKILL)
        except (ValueError, ProcessLookupError):
            pass


def _remove(namespaces: Sequence[str], links: Sequence[str]) -> None:
    for ns in namespaces:
        _kill_namespace_processes(ns)
    present = set(list_links())
    for link in links:  # deleting a veth end deletes its peer in the namespace
        if link in present:
            _run("ip", "link", "del", link, check=False)
    for ns in namespaces:
        _run("ip", "netns", "del", ns, check=False)


def remove_stale() -> list[str]:
    """Remove every namespace and link of ours whose run is gone; return their names."""
    stale_ns = [n for n in list_namespaces() if (r := run_id_of(n)) and not _run_is_alive(r)]
    stale_links = [n for n in list_links() if (r := run_id_of(n)) and not _run_is_alive(r)]
    # veths before bridges, so that no link is left half attached
    stale_links.sort(key=lambda name: name.endswith("-br"))
    _remove(stale_ns, stale_links)
    for run_id in {run_id_of(n) for n in (*stale_ns, *stale_links)}:
        if run_id:
            _lock_path(run_id).unlink(missing_ok=True)
    return [*stale_ns, *stale_links]


@dataclass
class Topology:
    """A server host and client hosts on one bridge; ``with Topology.create(...)`` removes them.

    Attributes:
        plan: names and addresses (``plan_hosts``).
        link: the link currently shaping every client host's veth pair (or the line).
        removed_stale: names of a killed run's leftovers removed before this one.
        carrier: "netem" (veth pairs on a bridge, tc) or "userspace" (TAPs and the delay line).
    """

    plan: HostPlan
    link: Link
    removed_stale: list[str]
    _lock_fd: int = -1
    carrier: str = "netem"
    line_cpu: int | None = None
    line: DelayLineProcess | None = None

    @classmethod
    def create(cls, clients: int, link: Link | None = None, any_delay: bool = False,
               line_cpu: int | None = None) -> Topology:
        """Remove stale leftovers, then make the hosts; on any failure remove what was made.

        Args:
            any_delay: some case of the run will ask for a delay or loss (this
                picks the carrier for the whole run, see ``choose_carrier``).
            line_cpu: the CPU the userspace delay line is pinned to, if it runs.

        Raises:
            UsageError: not root, no iproute2, or a delay the kernel and this process cannot give.
            C10kError: a command failed.
        """
        check_can_run()
        link = link or Link()
        carrier = choose_carrier(any_delay or link.needs_netem)
        if any_delay or link.needs_netem:
            require_delay(carrier)
        stale = remove_stale()
        run_id = new_run_id()
        fd = _hold_lock(run_id)
        topo = cls(plan_hosts(clients, run_id), Link(), stale, fd, carrier=carrier, line_cpu=line_cpu)
        try:
            with _signals_deferred():
                topo._build()
            topo.set_link(link)
        except BaseException:
            topo.remove()
            raise
        return topo

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def _build(self) -> None:
        p = self.plan
        for ns in p.namespaces:
            _run("ip", "netns", "add", ns)
        if self.carrier == "userspace":
            self._build_taps()
        else:
            self._build_bridge()
        lo, hi = CLIENT_PORT_RANGE
        for h in p.clients:
            _run("ip", "netns", "exec", h.namespace, "sysctl", "-q", "-w",
                 f"net.ipv4.ip_local_port_range={lo} {hi}")

    def _build_bridge(self) -> None:
        p = self.plan
        _run("ip", "link", "add", p.bridge, "type", "bridge")
        _run("ip", "link", "set", p.bridge, "up")
        for h in p.hosts:
            _run("ip", "link", "add", h.veth, "type", "veth", "peer", "name", h.interface, "netns", h.namespace)
            _run("ip", "link", "set", h.veth, "master", p.bridge, "up")
            self._address(h.namespace, h.interface, h.address)

    def _build_taps(self) -> None:
        # The line makes each host's eth0 (a TAP) in its namespace; the
        # addresses, MTU and queue length are set here, once they exist.
        self.line = DelayLineProcess.start(self.plan.namespaces, self.line_cpu)
        for h in self.plan.hosts:
            _run("ip", "-n", h.namespace, "link", "set", h.interface, "mtu", str(TAP_MTU),
                 "txqueuelen", str(TAP_TXQUEUELEN))
            self._address(h.namespace, h.interface, h.address)

    def _address(self, namespace: str, interface: str, address: str) -> None:
        _run("ip", "-n", namespace, "link", "set", "lo", "up")
        _run("ip", "-n", namespace, "addr", "add", f"{address}/{self.plan.prefix_len}", "dev", interface)
        _run("ip", "-n", namespace, "link", "set", interface, "up")

    def set_link(self, link: Link) -> None:
        """Shape both ends of every client host's veth pair (replacing the previous link)."""
        if link == self.link:
            return
        if self.line is not None:
            self.line.set_link(link)
            self.link = link
            return
        if link.needs_netem:
            require_delay("netem")
        with _signals_deferred():
            for h in self.plan.clients:
                for ns, dev in ((h.namespace, h.interface), (None, h.veth)):
                    where = ["-n", ns] if ns else []
                    if self.link.shaped:
                        _run("tc", *where, "qdisc", "del", "dev", dev, "root")
                    for cmd in link.tc_commands(dev):
                        _run("tc", *where, *cmd)
            self.link = link

    def remove(self) -> None:
        """Remove every namespace and link of this run (idempotent; signals wait until it is done)."""
        if self._lock_fd < 0:
            return
        with _signals_deferred():
            if self.line is not None:
                self.line.stop()
                self.line = None
            _remove(self.plan.namespaces, self.plan.links)
            _release_lock(self.plan.run_id, self._lock_fd)
            self._lock_fd = -1

    def to_json(self) -> dict[str, Any]:
        return {"kind": "netns", "server": self.plan.server.address,
                "clients": [h.address for h in self.plan.clients], "link": self.link.to_json(),
                "client_port_range": list(CLIENT_PORT_RANGE), "run_id": self.plan.run_id,
                "link_carrier": MECHANISM if self.carrier == "userspace" else "netem",
                "delay_line_cpu": self.line_cpu if self.carrier == "userspace" else None}


@contextmanager
def _signals_deferred() -> Iterator[None]:
    # Ctrl-C or SIGTERM in the middle of making or removing links would leave
    # half of them behind; hold the signals until the commands are done.
    blocked = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _try_probe() -> dict[str, Any]:
    run_id = new_run_id()
    ns = f"c10k{run_id}-probe"
    facts: dict[str, Any] = {"netns": False, "netem": False, "tbf": False, "why": ""}
    lock = _hold_lock(run_id)  # so that another run's remove_stale leaves the probe alone
    try:
        _run("ip", "netns", "add", ns)
        _run("ip", "-n", ns, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1")
        facts["netns"] = True
        for kind, args in (("netem", ["netem", "delay", "1ms"]), ("tbf", ["tbf", "rate", "1gbit", "burst",
                                                                         "64kb", "latency", "50ms"])):
            r = _run("tc", "-n", ns, "qdisc", "add", "dev", "probe0", "root", *args, check=False)
            facts[kind] = r.returncode == 0
            if r.returncode != 0:
                facts["why"] = (facts["why"] + "; " if facts["why"] else "") + \
                    f"{kind}: {(r.stderr.strip().splitlines() or ['failed'])[-1]}"
            _run("tc", "-n", ns, "qdisc", "del", "dev", "probe0", "root", check=False)
    except C10kError as exc:
        facts["why"] = str(exc)
    finally:
        _run("ip", "netns", "del", ns, check=False)
        _release_lock(run_id, lock)
    return facts


_probed: dict[str, Any] | None = None


def probe() -> dict[str, Any]:
    """Whether namespaces, netem and tbf work here: {"netns", "netem", "tbf": bool, "why": str}.

    Tried for real in a namespace made and removed for it (once per process).
    """
    global _probed
    if _probed is None:
        try:
            check_can_run()
        except UsageError as exc:
            return {"netns": False, "netem": False, "tbf": False, "why": str(exc)}
        _probed = _try_probe()
    return _probed


def probe_line() -> str:
    """One line for ``c10k doctor``."""
    f = probe()
    yes = {True: "yes", False: "no"}
    line = (f"--topology netns: namespaces {yes[f['netns']]}, link delay/loss (netem) {yes[f['netem']]}, "
            f"link rate (tbf) {yes[f['tbf']]}")
    line += f", userspace delay line (TAP) {yes[tap_available()]}"
    return line + (f" ({f['why']})" if f["why"] else "")


def choose_carrier(needs_delay: bool) -> str:
    """What carries a run's links: "netem" (veth, bridge, tc) or "userspace" (the delay line).

    ``C10K_DELAY`` decides when set to ``netem`` or ``userspace``; by default
    (``auto``) the delay line only when a delay or loss is needed and the
    kernel has no netem.

    Raises:
        UsageError: ``C10K_DELAY`` holds another word.
    """
    choice = os.environ.get("C10K_DELAY", "").strip().lower() or "auto"
    if choice not in ("auto", "netem", "userspace"):
        raise UsageError(f"C10K_DELAY must be auto, netem or userspace, not {choice!r}")
    if choice == "auto":
        return "userspace" if needs_delay and not probe()["netem"] else "netem"
    return choice


def require_delay(carrier: str | None = None) -> None:
    """UsageError unless a delay or loss can be applied here by ``carrier`` (default: the chosen one)."""
    carrier = carrier or choose_carrier(True)
    if carrier == "userspace":
        if not tap_available():
            raise UsageError("--link delay/loss without netem needs /dev/net/tun for the userspace delay line")
        return
    f = probe()
    if not f["netem"]:
        raise UsageError("--link delay/loss needs the netem qdisc, which this kernel lacks "
                         f"({f['why'] or 'probe failed'}); C10K_DELAY=userspace uses a userspace delay line")


def wait_gone(names: Sequence[str], timeout_s: float = 10.0) -> bool:
    """Wait until none of ``names`` is a link or namespace (deletion can lag a moment)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not set(names) & {*list_links(), *list_namespaces()}:
            return True
        time.sleep(0.1)
    return False
