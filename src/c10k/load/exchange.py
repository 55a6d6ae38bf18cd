"""A general request/response run: what each connection sends, what it expects, and the load's shape.

The echo load (``closed_loop.py``, ``open_loop.py``) is the fast path and
stays the default. An ``Exchange`` in ``LoadSettings`` selects the general
loop (``request_loop.py``) instead: expected replies other than the echo,
templates, a first message, pipelining, connection churn, warm-up, a closed
loop bounded by time. Every field is checked here, once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from c10k.errors import UsageError
from c10k.load.reply import ReplyRule
from c10k.load.request import Template

__all__ = ["Exchange"]


@dataclass(frozen=True)
class Exchange:
    """What each connection of a general run does.

    Attributes:
        message: the request (with ``{connection}``/``{seq}`` fields); None: the run's message.
        reply: how each reply is judged and framed (default: the echo of the request).
        first_message: sent once on each new socket before the requests (e.g. AUTH); its
            reply is judged by ``first_reply`` (default: as the other replies) and not timed.
        requests: requests per connection (None: until the run's duration ends).
        pipeline: requests in flight per connection; replies are matched in order.
        lifetime_requests, lifetime_s: close the socket after this many requests or
            seconds (once its replies are in) and open a new one; 0 = never.
        warmup_s: seconds at the start whose round trips are judged but not counted.
    """

    message: Template | None = None
    reply: ReplyRule = field(default_factory=ReplyRule)
    first_message: Template | None = None
    first_reply: ReplyRule | None = None
    requests: int | None = None
    pipeline: int = 1
    lifetime_requests: int = 0
    lifetime_s: float = 0.0
    warmup_s: float = 0.0

    def __post_init__(self) -> None:
        if self.message is not None and not self.message.text:
            raise UsageError("the message must not be empty")
        if self.first_message is not None and not self.first_message.text:
            raise UsageError("--first-message must not be empty")
        if self.first_reply is not None and self.first_message is None:
            raise UsageError("--first-expect needs --first-message")
        if self.requests is not None and self.requests < 0:
            raise UsageError(f"-n/--count must be 0 or more, not {self.requests}")
        if self.pipeline < 1:
            raise UsageError(f"--pipeline must be at least 1, not {self.pipeline}")
        if self.lifetime_requests < 0:
            raise UsageError("--lifetime must not be negative")
        for name, value in (("--lifetime", self.lifetime_s), ("--warmup", self.warmup_s)):
            if not (math.isfinite(value) and value >= 0):
                raise UsageError(f"{name} must be a finite number of seconds, 0 or more, not {value}")

    def describe(self) -> dict[str, Any]:
        """The summary's ``exchange`` entry."""
        out: dict[str, Any] = {"reply": self.reply.describe(), "pipeline": self.pipeline}
        if self.message is not None and not self.message.fixed:
            out["template"] = self.message.text.decode("latin-1")
        if self.first_message is not None:
            out["first_message"] = self.first_message.text.decode("latin-1")
            out["first_reply"] = (self.first_reply or self.reply).describe()
        if self.lifetime_requests or self.lifetime_s:
            out["lifetime"] = ({"requests": self.lifetime_requests} if self.lifetime_requests
                               else {"seconds": self.lifetime_s})
        if self.warmup_s:
            out["warmup_s"] = self.warmup_s
        return out
