"""Addresses as users read and type them."""

from __future__ import annotations

__all__ = ["host_port"]


def host_port(host: str, port: int | str) -> str:
    """``HOST:PORT``, with an IPv6 address in brackets (``[::1]:7000``) so the port is unambiguous."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"
