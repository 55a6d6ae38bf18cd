"""Remove the nftables tables that publishing a container's port left behind.

Publishing a port makes netavark (podman's network backend) create the host's
nftables ``ip nat`` and ``ip filter`` tables; they outlive the container, and
while they exist the kernel tracks every connection on the machine in
conntrack, loopback included (nf_conntrack_max is 262,144 here), which the
loopback studies should not pay for. So a run that published ports removes the
tables that appeared during it, if they hold nothing but netavark's chains
(podman makes them again when it needs them). Without ``nft``, nothing is done.
"""

from __future__ import annotations

import shutil
import subprocess

__all__ = ["nft_tables", "drop_tables_netavark_made"]

_BASE_CHAINS = {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}


def _nft(*args: str) -> str:
    return subprocess.run(["nft", *args], capture_output=True, text=True, timeout=30).stdout


def nft_tables() -> set[str]:
    """The host's nftables tables, as "FAMILY NAME"."""
    if shutil.which("nft") is None:
        return set()
    return {line.split(None, 1)[1] for line in _nft("list", "tables").splitlines() if line.startswith("table ")}


def drop_tables_netavark_made(before: set[str]) -> list[str]:
    """Delete the tables not in ``before`` that hold only netavark's chains; return them."""
    dropped = []
    for table in sorted(nft_tables() - before):
        chains = {line.split()[1] for line in _nft("list", "table", *table.split()).splitlines()
                  if line.strip().startswith("chain ")}
        if all(chain in _BASE_CHAINS or chain.startswith("NETAVARK") for chain in chains):
            _nft("delete", "table", *table.split())
            dropped.append(table)
    return dropped
