"""Link conditions: ``--link "delay 25ms 2ms loss 0.1% rate 1gbit"`` -> tc commands.

Pure: ``parse_link`` turns a spec into a ``Link`` (or raises ``UsageError``
with one line naming the bad word), and ``Link.tc_commands(dev)`` says which
``tc`` command lines shape one device's egress. Delay, jitter and loss are
netem's; a rate is tbf's. With both, tbf hangs under netem (``parent 1:1``),
so packets are first delayed, then paced.

A link is applied on both ends of each client host's veth pair, so "delay 25ms"
is 25 ms each way: 50 ms round trip between a client host and the server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from c10k.errors import UsageError

__all__ = ["Link", "parse_link", "NETEM_LIMIT"]

#: netem queues every packet it delays; its default limit of 1000 packets would
#: drop most of what 10,000 connections send within one delay, so lift it.
NETEM_LIMIT = 1_000_000

_TIME = re.compile(r"^(\d+(?:\.\d+)?)(us|ms|s)$")
_PERCENT = re.compile(r"^(\d+(?:\.\d+)?)%$")
_RATE = re.compile(r"^(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit|tbit)$")
_TIME_US = {"us": 1.0, "ms": 1000.0, "s": 1e6}
_RATE_BPS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12}
_HELP = 'e.g. "delay 5ms", "delay 25ms 2ms loss 0.1%", "rate 1gbit"'


@dataclass(frozen=True)
class Link:
    """One direction of a client host's link; all zero means unshaped.

    Attributes:
        delay_us: added one-way delay.
        jitter_us: random variation of that delay (netem's second delay number).
        loss_pct: share of packets dropped, 0-100.
        rate_bps: bandwidth in bits per second; 0 for none.
    """

    delay_us: float = 0.0
    jitter_us: float = 0.0
    loss_pct: float = 0.0
    rate_bps: int = 0
    spec: str = "none"

    @property
    def shaped(self) -> bool:
        return bool(self.delay_us or self.loss_pct or self.rate_bps)

    @property
    def needs_netem(self) -> bool:
        return bool(self.delay_us or self.loss_pct)

    @property
    def rtt_ms(self) -> float:
        """Round trip added between a client host and the server (both ways delayed)."""
        return 2 * self.delay_us / 1000.0

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec, "delay_ms": self.delay_us / 1000.0, "jitter_ms": self.jitter_us / 1000.0,
                "loss_pct": self.loss_pct, "rate_bps": self.rate_bps, "rtt_ms": self.rtt_ms}

    def tc_commands(self, dev: str) -> list[list[str]]:
        """``tc`` argument lists (without ``tc`` and ``-n NS``) that shape ``dev``'s egress."""
        if not self.shaped:
            return []
        tbf = ["tbf", "rate", f"{self.rate_bps}bit", "burst", f"{self._burst_bytes()}b", "latency", "100ms"]
        if not self.needs_netem:
            return [["qdisc", "add", "dev", dev, "root", "handle", "1:", *tbf]]
        netem = ["netem", "limit", str(NETEM_LIMIT)]
        if self.delay_us:
            netem += ["delay", f"{self.delay_us:g}us"]
            if self.jitter_us:
                netem += [f"{self.jitter_us:g}us"]
        if self.loss_pct:
            netem += ["loss", f"{self.loss_pct:g}%"]
        cmds = [["qdisc", "add", "dev", dev, "root", "handle", "1:", *netem]]
        if self.rate_bps:
            cmds.append(["qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", *tbf])
        return cmds

    def _burst_bytes(self) -> int:
        # tbf needs a bucket of at least rate / HZ (one timer tick's worth of
        # bytes) or it cannot reach its rate; never under a few full packets.
        return max(16 * 1024, self.rate_bps // 8 // 250)


def _time_us(word: str, what: str, spec: str) -> float:
    m = _TIME.match(word.lower())
    if not m:
        raise UsageError(f"--link {spec!r}: {what} {word!r} is not a time like 5ms, 250us or 1s")
    return float(m[1]) * _TIME_US[m[2]]


def parse_link(spec: str | None) -> Link:
    """Parse a link spec: ``delay TIME [JITTER]``, ``loss PERCENT%``, ``rate RATE``, in any order.

    ``""``, ``None`` and ``"none"`` give an unshaped link.

    Raises:
        UsageError: a word it does not know, a missing or malformed value, or a
            keyword given twice; the message names the word and gives examples.
    """
    text = (spec or "").strip()
    if text.lower() in ("", "none"):
        return Link(spec="none")
    words = text.split()
    seen: set[str] = set()
    fields: dict[str, Any] = {}
    i = 0
    while i < len(words):
        key = words[i].lower()
        if key not in ("delay", "loss", "rate"):
            raise UsageError(f"--link {text!r}: unknown word {words[i]!r} ({_HELP})")
        if key in seen:
            raise UsageError(f"--link {text!r}: {key} given twice")
        seen.add(key)
        if i + 1 >= len(words):
            raise UsageError(f"--link {text!r}: {key} needs a value ({_HELP})")
        value = words[i + 1]
        i += 2
        if key == "delay":
            fields["delay_us"] = _time_us(value, "delay", text)
            if i < len(words) and words[i][:1].isdigit():
                fields["jitter_us"] = _time_us(words[i], "jitter", text)
                i += 1
        elif key == "loss":
            m = _PERCENT.match(value)
            if not m or float(m[1]) > 100:
                raise UsageError(f"--link {text!r}: loss {value!r} is not a percentage like 0.1%")
            fields["loss_pct"] = float(m[1])
        else:
            m = _RATE.match(value.lower())
            if not m or float(m[1]) <= 0:
                raise UsageError(f"--link {text!r}: rate {value!r} is not a rate like 100mbit or 1gbit")
            fields["rate_bps"] = int(float(m[1]) * _RATE_BPS[m[2]])
    return Link(spec=" ".join(words), **fields)
