"""Hosts on one machine: network namespaces joined by a bridge, made by a test and always removed.

    with Hosts("srv", "mst", "w1") as hosts:
        hosts.address("srv")                                     # '10.201.N.1'
        subprocess.Popen(argv, preexec_fn=hosts.enter("srv"))    # a process on that host

Each host is a namespace with one veth interface ``eth0`` whose peer sits on a
bridge in a hub namespace, with an address 10.201.N.(i+1)/24; N comes from the
test process's pid so that parallel runs do not meet. Everything is made with
``ip`` and removed in ``__exit__`` (deleting a namespace deletes its interfaces),
even when the test fails halfway through making them.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

__all__ = ["Hosts", "netns_available"]

CLONE_NEWNET = 0x40000000
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded before any fork: preexec_fn must not load libraries


def netns_available() -> bool:
    """True when ``ip netns`` can be used here (root, iproute2)."""
    return shutil.which("ip") is not None and os.geteuid() == 0


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


class Hosts:
    def __init__(self, *names: str, subnet: int | None = None) -> None:
        self.tag = f"c10kl{os.getpid() % 100000}"
        self.subnet = subnet if subnet is not None else os.getpid() % 250 + 1
        self.names = list(names)
        self.hub = f"{self.tag}-hub"
        self.made: list[str] = []

    def netns(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def address(self, name: str) -> str:
        return f"10.201.{self.subnet}.{self.names.index(name) + 1}"

    def __enter__(self) -> Hosts:
        try:
            self._make()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def _add_netns(self, ns: str) -> None:
        # a namespace of this name can only be left over by an earlier test process with our pid
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        _ip("netns", "add", ns)
        self.made.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")

    def _make(self) -> None:
        self._add_netns(self.hub)
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.hub, "link", "set", "br0", "up")
        for i, name in enumerate(self.names):
            ns = self.netns(name)
            self._add_netns(ns)
            peer = f"v{i}"
            _ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", peer, "netns", self.hub)
            _ip("-n", self.hub, "link", "set", peer, "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{self.address(name)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")

    def remove(self) -> None:
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self.made.clear()

    def enter(self, name: str) -> Callable[[], None]:
        """A ``preexec_fn`` that moves the child process into host ``name``'s network namespace."""
        path = f"/run/netns/{self.netns(name)}"

        def preexec() -> None:
            # setns(2) on the namespace's bind mount; os.setns exists only from Python 3.12
            fd = os.open(path, os.O_RDONLY)
            if _LIBC.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns {path}")
            os.close(fd)

        return preexec
