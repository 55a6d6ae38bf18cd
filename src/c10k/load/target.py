"""Where a load goes, as the user writes it: ``HOST:PORT``, ``tcp://HOST:PORT``, ``unix:/path.sock``.

The positional TARGET of ``c10k load`` and the older ``--host``/``-p`` both
name it; ``merge_target`` makes one address of them, or a one-line usage error
when they disagree. IPv6 addresses are written in brackets, ``[::1]:7000``, as
in URLs, so that the port is not read as part of the address. TLS is not
spoken: ``tls://`` and ``https://`` are refused by name.
"""

from __future__ import annotations

from dataclasses import dataclass

from c10k.errors import UsageError

__all__ = ["Target", "parse_target", "merge_target"]

_FORMS = "HOST:PORT, tcp://HOST:PORT, [IPv6]:PORT or unix:/path.sock"


@dataclass(frozen=True)
class Target:
    """A TCP address (``host``, ``port``; either may be unset: None) or a unix socket ``path``."""

    host: str | None = None
    port: int | None = None
    path: str = ""

    @property
    def unix(self) -> bool:
        return bool(self.path)


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UsageError(f"target {whole!r}: the port must be 1..65535, not {text!r}")
    return int(text)


def parse_target(text: str) -> Target:
    """Read a TARGET argument; UsageError names what is wrong with it."""
    whole = text
    if text.startswith("unix:"):
        path = text[len("unix:"):]
        if path.startswith("//"):  # unix:///run/x.sock, the URL spelling
            path = path[2:]
        if not path:
            raise UsageError(f"target {whole!r}: a unix socket needs a path (unix:/path.sock)")
        return Target(path=path)
    scheme, sep, rest = text.partition("://")
    if sep:
        if scheme.lower() != "tcp":
            tls = " (TLS is not supported)" if scheme.lower() in ("tls", "ssl", "https") else ""
            raise UsageError(f"target {whole!r}: unknown scheme {scheme + '://'!r}{tls}; use {_FORMS}")
        text = rest.rstrip("/")
    if text.startswith("["):
        host, bracket, after = text[1:].partition("]")
        if not bracket or not host or (after and not after.startswith(":")):
            raise UsageError(f"target {whole!r}: write an IPv6 address as [::1]:7000")
        return Target(host=host, port=_port(after[1:], whole) if after else None)
    if text.count(":") > 1:
        raise UsageError(f"target {whole!r}: write an IPv6 address in brackets, e.g. [{text}] or [::1]:7000")
    host, colon, port = text.partition(":")
    if not host:
        raise UsageError(f"target {whole!r}: no host; use {_FORMS}")
    return Target(host=host, port=_port(port, whole) if colon else None)


def merge_target(text: str | None, host: str | None, port: int | None) -> Target:
    """One target from TARGET and --host/-p: either may give each part, but they must agree."""
    if text is None:
        return Target(host=host, port=port)
    target = parse_target(text)
    if target.unix:
        if host is not None or port is not None:
            raise UsageError(f"target {text!r} is a unix socket: --host/-p do not apply")
        return target
    if host is not None and host != target.host:
        raise UsageError(f"target {text!r} and --host {host} disagree; give one of them")
    if port is not None and target.port is not None and port != target.port:
        raise UsageError(f"target {text!r} and -p {port} disagree; give one of them")
    return Target(host=target.host, port=target.port if target.port is not None else port)
