"""Study a server that runs in a container (``c10k study --server-command TEMPLATE``).

The template is a ``podman run`` (or ``docker run``) line that stays in the
foreground, with these fields:

- ``{port}``: a free host port the runner picks for the case, to publish the
  container's port on (``-p {port}:7000``); the load connects to 127.0.0.1:{port};
- ``{name}``: a container name unique to the case (``--name {name}``), which the
  runner inspects, stops and removes the container by;
- ``{stats}`` (optional): a host folder, empty and writable by anyone, to
  bind-mount (``-v {stats}:/stats``); a server told ``--stats-file
  /stats/server-stats.json`` leaves its statistics there for the verdict.

``ContainerCommands`` is the runner's ``Commands`` with the server's side
replaced: the server is ready when the host port answers an echo (the
container's own ``listening on`` line names its port, not the host's); the
sampler watches the container's PID 1 as the host sees it (``podman inspect
.State.Pid``) and its children, so CPU, memory, threads and descriptors are the
container's own; the server is stopped as ``docker stop`` does (SIGTERM, SIGKILL
after the timeout) and its exit status is the container's, which ``podman run``
in the foreground passes on; the container is removed after every case, even
after a failure or Ctrl-C, and at the end of the run any container a killed run
left.
"""

from __future__ import annotations

import os
import queue
import random
import shlex
import shutil
import socket
import string
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from c10k import limits
from c10k.errors import C10kError, UsageError
from c10k.study.cases import Case
from c10k.study.netavark import drop_tables_netavark_made, nft_tables
from c10k.study.runner import Commands

__all__ = ["ServerTemplate", "ContainerCommands", "container_commands", "NAME_PREFIX"]

#: Every container the runner names starts with this, then the study's pid.
NAME_PREFIX = "c10k-study-"
_FIELDS = ("port", "name", "stats")
_ENGINES = ("podman", "docker")
_PROBE = b"c10k study: ready?\n"


@dataclass(frozen=True)
class ServerTemplate:
    """A checked ``--server-command``: its words, each maybe holding ``{port}``, ``{name}``, ``{stats}``."""

    text: str
    words: tuple[str, ...]
    fields: frozenset[str]

    @classmethod
    def parse(cls, text: str) -> ServerTemplate:
        """Check a template; every mistake is a UsageError of one line."""
        try:
            words = tuple(shlex.split(text))
        except ValueError as exc:
            raise UsageError(f"--server-command: {exc}") from None
        if not words:
            raise UsageError("--server-command is empty")
        found: set[str] = set()
        for word in words:
            try:
                parsed = list(string.Formatter().parse(word))
            except ValueError as exc:
                raise UsageError(f"--server-command: {exc} in {word!r} (write {{{{ and }}}} for braces)") from None
            for _text, name, _spec, _conv in parsed:
                if name is None:
                    continue
                if name not in _FIELDS:
                    raise UsageError(f"--server-command: unknown field {{{name}}} "
                                     f"(known: {', '.join('{' + f + '}' for f in _FIELDS)})")
                found.add(name)
        for needed, why in (("port", "the host port to publish, e.g. -p {port}:7000"),
                            ("name", "the container's name, e.g. --name {name}")):
            if needed not in found:
                raise UsageError(f"--server-command needs {{{needed}}}: {why}")
        if Path(words[0]).name not in _ENGINES:
            raise UsageError(f"--server-command must start with podman or docker, not {words[0]!r} "
                             "(the runner inspects, stops and removes the container with it)")
        if any(w in ("-d", "--detach") or w.startswith("--detach=") for w in words):
            raise UsageError("--server-command must stay in the foreground: drop -d/--detach")
        if shutil.which(words[0]) is None:
            raise UsageError(f"--server-command: {words[0]} is not installed")
        return cls(text, words, frozenset(found))

    @property
    def engine(self) -> str:
        return self.words[0]

    def render(self, port: int, name: str, stats: Path | None) -> list[str]:
        return [w.format(port=port, name=name, stats=stats) for w in self.words]


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` and outside the ephemeral range.

    Outside it, because the load's own connections take their source ports from
    that range: a published port inside it could also be a connection's source
    port, and the host would then have two uses for one port.
    """
    low, high = limits.ephemeral_port_range()
    ports = list(range(10000, low)) if low > 11000 else list(range(high + 1, 65536))
    for port in random.sample(ports, min(200, len(ports))):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise C10kError(f"no free port on {host} outside the ephemeral range {low}-{high}")


def echo_answers(host: str, port: int, timeout_s: float = 2.0) -> bool:
    """One connection, one line echoed back byte for byte."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as s:
            s.sendall(_PROBE)
            got = b""
            while len(got) < len(_PROBE):
                chunk = s.recv(len(_PROBE) - len(got))
                if not chunk:
                    return False
                got += chunk
            return got == _PROBE
    except OSError:
        return False


@dataclass
class ContainerCommands(Commands):
    """Commands for cases whose server is ``template`` (see the module docstring).

    ``server_name``: the server's name in the results; by default the case's
    server followed by `` (container)``.
    """

    template: ServerTemplate | None = None
    server_name: str | None = None
    _name: str = ""
    _port: int = 0
    _stats_dir: Path | None = None
    _count: int = 0
    names: list[str] = field(default_factory=list)
    removed_stale: list[str] = field(default_factory=list)
    dropped_tables: list[str] = field(default_factory=list)

    def _tpl(self) -> ServerTemplate:
        assert self.template is not None, "ContainerCommands needs a template"
        return self.template

    def engine(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``podman ARGS``; one that hangs past ``timeout`` counts as failed (exit 124), not as an error."""
        cmd = [self._tpl().engine, *args]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(cmd, 124, "", f"timed out after {timeout:g} s")

    def remove(self, name: str) -> None:
        """Remove the container, killing it first if it still runs; no error if it is gone."""
        if Path(self._tpl().engine).name == "podman":
            # --time 0: SIGKILL at once (podman waits 10 s by default); docker rm -f does so anyway.
            self.engine("rm", "--force", "--ignore", "--time", "0", name)
        else:
            self.engine("rm", "--force", name)

    def server(self, case: Case, stats_file: Path) -> list[str]:
        self._count += 1
        self._name = f"{NAME_PREFIX}{os.getpid()}-{case.number}-{self._count}"
        self.names.append(self._name)
        self._port = free_port(self.host)
        self._stats_dir = None
        if "stats" in self._tpl().fields:
            self._stats_dir = stats_file.parent / "stats"
            self._stats_dir.mkdir()
            # The container's server runs as its own user, which needs to write here.
            self._stats_dir.chmod(0o777)
        return self._tpl().render(self._port, self._name, self._stats_dir)

    def wait_ready(self, server: subprocess.Popen[bytes], lines: queue.Queue[str | None]) -> tuple[str, int] | None:
        # Polled: nothing tells the host when the published port starts to
        # answer (podman's NAT rules come first, the server's listen after).
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if server.poll() is not None:
                return None
            if echo_answers(self.host, self._port):
                return self.host, self._port
            time.sleep(0.2)
        return None

    def server_pid(self, server: subprocess.Popen[bytes]) -> int:
        done = self.engine("inspect", "--format", "{{.State.Pid}}", self._name)
        try:
            pid = int(done.stdout.strip())
        except ValueError:
            pid = 0
        if done.returncode != 0 or pid <= 0:
            raise C10kError(f"cannot find container {self._name}'s process: "
                            f"{done.stderr.strip() or done.stdout.strip()}")
        return pid

    def stop_server(self, server: subprocess.Popen[bytes]) -> None:
        # docker stop: SIGTERM to the container's PID 1, SIGKILL after -t seconds
        # (then `podman run` exits 137). The runner waits for `podman run` to exit.
        wait = round(self.shutdown_timeout_s + self.stop_grace_s / 2)
        self.engine("stop", "-t", str(wait), self._name, timeout=wait + 60)

    def server_gone(self, case_dir: Path) -> None:
        # Also after a failure or Ctrl-C: killing `podman run` leaves the container running.
        self.remove(self._name)
        if self._stats_dir is not None:
            written = self._stats_dir / "server-stats.json"
            if written.exists():
                written.replace(case_dir / "server-stats.json")

    def label(self, case: Case) -> str:
        return self.server_name or f"{case.server} (container)"

    def runs_in(self) -> dict[str, Any] | None:
        return {"name": self._name, "engine": self._tpl().engine, "host_port": self._port,
                "command": self._tpl().text, "stats": "stats" in self._tpl().fields}

    def topology(self) -> dict[str, Any]:
        return {"kind": "container", "server": self.host, "engine": self._tpl().engine,
                "command": self._tpl().text}

    def remove_leftovers(self) -> list[str]:
        """Remove containers a killed run left (named by this runner, their study's pid gone)."""
        done = self.engine("ps", "--all", "--format", "{{.Names}}")
        removed = []
        for name in done.stdout.split():
            if not name.startswith(NAME_PREFIX):
                continue
            pid = name[len(NAME_PREFIX):].split("-", 1)[0]
            if pid.isdigit() and (int(pid) == os.getpid() or not Path(f"/proc/{pid}").exists()):
                self.remove(name)
                removed.append(name)
        return removed


@contextmanager
def container_commands(template: ServerTemplate, server_name: str | None = None,
                       **kw: Any) -> Iterator[ContainerCommands]:
    """Commands for the length of the block; afterwards no container of the run is left,
    nor the nftables tables that publishing its ports made (see ``study.netavark``)."""
    tables_before = nft_tables()
    cmds = ContainerCommands(template=template, server_name=server_name, **kw)
    cmds.removed_stale = cmds.remove_leftovers()
    try:
        yield cmds
    finally:
        for name in cmds.names:
            cmds.remove(name)
        cmds.dropped_tables = drop_tables_netavark_made(tables_before)
