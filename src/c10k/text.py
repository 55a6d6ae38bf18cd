"""How c10k writes numbers, counts and addresses for people to read."""

from __future__ import annotations

import math
import re

__all__ = ["host_port", "unix_address", "plural", "latency_words", "duration_words", "parse_seconds"]

_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def host_port(host: str, port: int | str) -> str:
    """``HOST:PORT``, with an IPv6 address in brackets (``[::1]:7000``) so the port is unambiguous."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def unix_address(path: str) -> str:
    """A unix-domain socket as a target is written ``unix:/run/echo.sock``."""
    return f"unix:{path}"


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """``1 connection``, ``2,000 connections``."""
    return f"{n:,} {noun if n == 1 else (nouns or noun + 's')}"


def latency_words(us: float | None) -> str:
    """A latency in microseconds in the unit that reads best: ``870 µs``, ``12.4 ms``, ``3.10 s``."""
    if us is None:
        return "-"
    if us < 1000:
        return f"{us:.0f} µs" if us >= 10 else f"{us:.1f} µs"
    if us < 1_000_000:
        ms = us / 1000
        return f"{ms:.1f} ms" if ms < 100 else f"{ms:.0f} ms"
    return f"{us / 1_000_000:.2f} s"


def duration_words(seconds: float) -> str:
    """``45 s``, ``12 min``, ``1 h 5 min``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def parse_seconds(text: str, default_unit: str = "s") -> float:
    """``"50ms"`` -> 0.05, ``"2s"`` -> 2.0, ``"1.5m"`` -> 90.0; a bare number is in ``default_unit``.

    Raises ValueError for anything else, negative or not finite (argparse turns
    it into a one-line usage error).
    """
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zµ]*)\s*", text)
    if not m or (m[2] or default_unit) not in _UNITS:
        raise ValueError(f"not a duration: {text!r} (e.g. 800us, 50ms, 2s, 1m)")
    value = float(m[1]) * _UNITS[m[2] or default_unit]
    if not math.isfinite(value):
        raise ValueError(f"not a finite duration: {text!r}")
    return value
