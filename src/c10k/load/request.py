"""What a connection sends: escapes typed on a command line, and per-connection templates.

``unescape`` turns the escapes a user can type in a shell argument (``\\r \\n
\\t \\0 \\xNN \\\\``) into bytes; anything else after a backslash is a mistake
and says so. ``Template`` fills ``{connection}`` (the run's connection number)
and ``{seq}`` (the request's number on that connection, from 0) into a
message, so that every request can be distinct; only those two exact fields
are replaced, any other brace is sent as it is. ``shown`` is the reverse of
``unescape`` for bytes that came back: printable ASCII as it is, the rest
escaped, so that a reply can be quoted on one line of a CSV or a terminal.
"""

from __future__ import annotations

import re

from c10k.errors import UsageError

__all__ = ["FIELDS", "Template", "shown", "unescape"]

FIELDS = (b"{connection}", b"{seq}")
_ESCAPES = {"r": b"\r", "n": b"\n", "t": b"\t", "0": b"\0", "\\": b"\\"}
_ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|.|$)", re.DOTALL)
_SHOWN = {0x0D: "\\r", 0x0A: "\\n", 0x09: "\\t", 0x5C: "\\\\"}


def unescape(data: bytes, what: str) -> bytes:
    """``data`` with its escapes replaced; ``UsageError`` naming ``what`` for an unknown escape."""

    def one(m: re.Match[bytes]) -> bytes:
        code = m.group(1).decode("latin-1")
        if len(code) == 3:
            return bytes([int(code[1:], 16)])
        if code in _ESCAPES:
            return _ESCAPES[code]
        raise UsageError(f"{what}: unknown escape '{m.group(0).decode('latin-1')}' "
                         "(known: \\r \\n \\t \\0 \\xNN \\\\)")

    return _ESCAPE.sub(one, data)


def shown(data: bytes, limit: int = 64) -> str:
    """Up to ``limit`` bytes of ``data`` as one printable line (``+PONG\\r\\n``), ``...`` when cut."""
    text = "".join(_SHOWN.get(b) or (chr(b) if 32 <= b < 127 else f"\\x{b:02x}") for b in data[:limit])
    return text + ("..." if len(data) > limit else "")


class Template:
    """A message with optional ``{connection}`` and ``{seq}`` fields.

    ``render(connection, seq)`` costs a join only when the template has fields;
    a plain message is returned as it is.
    """

    def __init__(self, text: bytes, fields: bool = True) -> None:
        self.text = bytes(text)
        # split into literal pieces and field names, in order (``fields=False``: bytes sent as they are)
        pieces = re.split(rb"(\{connection\}|\{seq\})", self.text) if fields else [self.text]
        self.pieces = [p for p in pieces if p]
        self.fixed = not fields or not any(p in FIELDS for p in self.pieces)

    def render(self, connection: int, seq: int) -> bytes:
        if self.fixed:
            return self.text
        values = {FIELDS[0]: str(connection).encode(), FIELDS[1]: str(seq).encode()}
        return b"".join(values.get(p, p) for p in self.pieces)

    def __repr__(self) -> str:
        return f"Template({self.text!r})"
