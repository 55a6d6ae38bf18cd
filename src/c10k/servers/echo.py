"""Per-connection echo buffering with high and low watermarks, free of I/O.

Every architecture wraps this one class (sans-IO, in the manner of h11): bytes
read from a client go in with ``push``, what is still owed comes out of
``pending`` and ``consume`` says how much the socket took. When the owed bytes
pass the high watermark the connection must stop reading; it may read again
once they fall to the low watermark. So a client that sends without reading
costs the server at most ``high`` bytes plus one read, whatever it does.
"""

from __future__ import annotations

__all__ = ["EchoBuffer", "DEFAULT_HIGH_WATERMARK", "DEFAULT_LOW_WATERMARK"]

DEFAULT_HIGH_WATERMARK = 256 * 1024
DEFAULT_LOW_WATERMARK = 64 * 1024


class EchoBuffer:
    """Bytes owed to one client, in order.

    Args:
        high: stop reading when this many bytes are owed.
        low: read again when no more than this many are owed.
    """

    __slots__ = ("_owed", "high", "low", "paused")

    def __init__(self, high: int = DEFAULT_HIGH_WATERMARK, low: int = DEFAULT_LOW_WATERMARK) -> None:
        if not 0 <= low <= high:
            raise ValueError("watermarks need 0 <= low <= high")
        # bytearray deletes from the front in O(1) (it moves its start
        # pointer), so consume() never copies what is left.
        self._owed = bytearray()
        self.high = high
        self.low = low
        self.paused = False

    def __len__(self) -> int:
        return len(self._owed)

    def push(self, data: bytes) -> None:
        """Owe ``data`` to the client, after everything owed already."""
        self._owed += data
        if len(self._owed) >= self.high:
            self.paused = True

    def pending(self) -> bytearray:
        """What to write next. Write it, then ``consume``; do not keep or change it."""
        return self._owed

    def consume(self, n: int) -> None:
        """The socket took the first ``n`` owed bytes."""
        del self._owed[:n]
        if self.paused and len(self._owed) <= self.low:
            self.paused = False
