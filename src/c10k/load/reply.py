"""What a correct reply is, where it ends, and judging it as its bytes arrive (no I/O here).

A ``ReplyRule`` is an expectation plus a framing rule:

* expectation: the echo of the request (the default), exact bytes, a prefix,
  or a bytes regular expression the whole reply must match (``fullmatch``,
  with ``.`` matching newlines too);
* framing, where a reply ends: a fixed size, a delimiter (``\\r\\n``), HTTP/1.1
  (headers up to the blank line, then ``Content-Length`` bytes of body), or,
  when none is given, the length of the exact bytes expected (echo or
  ``--expect``). A prefix or a regex says nothing about the length, so they
  need an explicit framing rule.

``ReplyReader`` holds one connection's bytes received and the queue of the
replies it is owed, in the order the requests were sent (so pipelined replies
match in order). It judges each reply as soon as it can: a byte that already
differs from the known bytes (the echo, ``--expect``, the prefix) is a
mismatch at once, not when the frame ends nor at the timeout; bytes past an
exact reply's end before its frame ends, too. A regex can only be judged when
its frame is complete. A mismatch keeps the first differing offset and what
came back, for the connection's row and the summary's example.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import Any

from c10k.errors import UsageError
from c10k.load.request import Template

__all__ = ["ECHO", "EXACT", "PREFIX", "REGEX", "Framing", "ReplyRule", "ReplyReader", "Failure"]

ECHO, EXACT, PREFIX, REGEX = "echo", "exact", "prefix", "regex"
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)[ \t]*\r\n", re.IGNORECASE)
_HEADERS_END = b"\r\n\r\n"


@dataclass(frozen=True)
class Framing:
    """Where a reply ends: ``size`` bytes, up to and including ``until``, HTTP/1.1, or (all unset)
    the length of the exact bytes expected."""

    size: int = 0
    until: bytes = b""
    http: bool = False

    def __post_init__(self) -> None:
        if self.size < 0:
            raise UsageError(f"--reply-size must be at least 1 byte, not {self.size}")
        if sum((self.size > 0, bool(self.until), self.http)) > 1:
            raise UsageError("give one framing rule: --reply-size, --reply-until or --reply-http")

    @property
    def given(self) -> bool:
        return bool(self.size or self.until or self.http)

    def describe(self) -> str:
        if self.size:
            return f"size {self.size}"
        if self.until:
            return f"until {self.until!r}"
        return "http" if self.http else "expected length"


@dataclass(frozen=True)
class ReplyRule:
    """How one kind of reply is judged (``kind`` is ECHO, EXACT, PREFIX or REGEX) and framed."""

    kind: str = ECHO
    text: Template | None = None  # EXACT and PREFIX: the bytes, with the request's template fields
    pattern: re.Pattern[bytes] | None = None  # REGEX
    framing: Framing = Framing()

    def __post_init__(self) -> None:
        if self.kind in (PREFIX, REGEX) and not self.framing.given:
            raise UsageError(f"--expect-{self.kind} says nothing about where a reply ends: add --reply-size, "
                             "--reply-until or --reply-http")
        if self.kind in (EXACT, PREFIX) and (self.text is None or not self.text.text):
            raise UsageError(f"the expected {self.kind} must not be empty")

    @classmethod
    def regex(cls, source: bytes, framing: Framing, what: str = "--expect-regex") -> ReplyRule:
        try:
            pattern = re.compile(source, re.DOTALL)
        except re.error as exc:
            raise UsageError(f"{what}: not a regular expression: {exc}") from None
        return cls(REGEX, pattern=pattern, framing=framing)

    def known(self, request: bytes, connection: int, seq: int) -> bytes | None:
        """The bytes a reply to ``request`` must begin with (None: a regex, nothing known ahead)."""
        if self.kind == ECHO:
            return request
        if self.text is not None:
            return self.text.render(connection, seq)
        return None

    def describe(self) -> dict[str, Any]:
        value: Any = None
        if self.text is not None:
            value = self.text.text.decode("latin-1")
        elif self.pattern is not None:
            value = self.pattern.pattern.decode("latin-1")
        return {"kind": self.kind, "value": value, "framing": self.framing.describe()}


@dataclass
class Failure:
    """Why a connection's replies went wrong: the error word, the first differing offset
    (-1 when it is not known, e.g. a regex), and what came back."""

    reason: str
    offset: int
    got: bytes
    expected: bytes | None = None


def first_difference(a: bytes | bytearray, b: bytes | bytearray) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class ReplyReader:
    """One connection's replies, framed and judged in order as bytes arrive.

    ``owe(rule, known, tag)`` queues a reply (``tag`` is returned with it, e.g.
    the send time); ``feed(data)`` returns (tag, length) of the replies completed
    and correct, and on the first wrong byte sets ``failure`` and stops (the
    connection is over). ``ok_bytes`` counts the bytes of correct replies.
    """

    __slots__ = ("buf", "queue", "checked", "scanned", "body_end", "failure", "ok_bytes")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.queue: deque[tuple[ReplyRule, bytes | None, Any]] = deque()
        self.checked = 0  # bytes of the current reply compared with its known bytes
        self.scanned = 0  # bytes of the current reply searched for the delimiter
        self.body_end = -1  # HTTP: where the current reply ends, once its headers are in
        self.failure: Failure | None = None
        self.ok_bytes = 0

    def owe(self, rule: ReplyRule, known: bytes | None, tag: Any) -> None:
        self.queue.append((rule, known, tag))

    @property
    def owed(self) -> int:
        return len(self.queue)

    def feed(self, data: bytes) -> list[tuple[Any, int]]:
        buf = self.buf
        buf += data
        done: list[tuple[Any, int]] = []
        while buf:
            if not self.queue:
                self.failure = Failure("unexpected_data", 0, bytes(buf))
                break
            rule, known, tag = self.queue[0]
            n = len(buf)
            if known is not None and self.checked < n:
                upto = min(n, len(known))
                if buf[self.checked:upto] != known[self.checked:upto]:
                    self._mismatch(first_difference(buf, known), known)
                    break
                self.checked = upto
            end = self._frame_end(rule, known, n)
            if end < 0:
                if rule.kind in (ECHO, EXACT) and known is not None and n > len(known):
                    self._mismatch(len(known), known)  # longer than the exact reply, and not over yet
                break
            if not _correct(rule, known, buf, end):
                self._mismatch(-1 if known is None else first_difference(buf[:end], known), known, end)
                break
            del buf[:end]
            self.ok_bytes += end
            self.checked = self.scanned = 0
            self.body_end = -1
            self.queue.popleft()
            done.append((tag, end))
        return done

    def _frame_end(self, rule: ReplyRule, known: bytes | None, n: int) -> int:
        """Where the current reply ends in the buffer, or -1 while it is incomplete."""
        f, buf = rule.framing, self.buf
        if f.size:
            return f.size if n >= f.size else -1
        if f.until:
            i = buf.find(f.until, max(0, self.scanned - len(f.until) + 1))
            if i < 0:
                self.scanned = n
                return -1
            return i + len(f.until)
        if f.http:
            if self.body_end < 0:
                i = buf.find(_HEADERS_END, max(0, self.scanned - 3))
                if i < 0:
                    self.scanned = n
                    return -1
                m = _CONTENT_LENGTH.search(buf, 0, i + 2)
                self.body_end = i + 4 + (int(m.group(1)) if m else 0)
            return self.body_end if n >= self.body_end else -1
        assert known is not None
        return len(known) if n >= len(known) else -1

    def _mismatch(self, offset: int, known: bytes | None, end: int | None = None) -> None:
        got = bytes(self.buf if end is None else self.buf[:end])
        self.failure = Failure("mismatch", offset, got, known)


def _correct(rule: ReplyRule, known: bytes | None, buf: bytearray, end: int) -> bool:
    if rule.kind == PREFIX:
        assert known is not None
        return end >= len(known)  # its bytes were compared as they came
    if rule.kind == REGEX:
        assert rule.pattern is not None
        return rule.pattern.fullmatch(buf, 0, end) is not None
    assert known is not None
    return end == len(known)  # ECHO, EXACT: same bytes so far, and the same length
