"""`c10k load`'s options for servers other than echo: requests, expected replies, load shapes.

``add_options`` declares them; ``message_from`` and ``exchange_from`` turn them
into the request's bytes and the library's ``Exchange`` (None when no option
needs more than the echo fast path). The library is imported only when a load runs.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from c10k.errors import UsageError

if TYPE_CHECKING:
    from c10k.load import Exchange
    from c10k.load.reply import Framing, ReplyRule

__all__ = ["OPTIONS", "add_options", "exchange_from", "message_from", "seconds"]

#: the dests of these options (for "were no arguments given at all")
OPTIONS = ("unescape", "message_file", "first_message", "first_expect", "first_expect_prefix", "expect",
           "expect_file", "expect_prefix", "expect_regex", "reply_size", "reply_until", "reply_http",
           "pipeline", "lifetime", "rate_per_connection", "warmup")
#: options that need the general request loop (the others only change the message's bytes)
_GENERAL = tuple(k for k in OPTIONS if k not in ("unescape", "message_file"))


def add_options(p: argparse.ArgumentParser) -> None:
    r = p.add_argument_group(
        "requests", "what each connection sends. In -m, --first-message and the expectations, {connection} "
                    "(the connection's number) and {seq} (the request's number on it, from 0) are filled in, "
                    "so that every request can be distinct")
    r.add_argument("-e", "--unescape", action="store_true", default=None,
                   help=r"turn \r \n \t \0 \xNN and \\ in -m, --first-message, the expectations and "
                        r"--reply-until into the bytes they name (e.g. -e -m 'PING\r\n')")
    r.add_argument("--message-file", metavar="PATH",
                   help="send the bytes of this file, as they are (no escapes, no fields)")
    r.add_argument("--first-message", metavar="TEXT",
                   help="send this first on each new socket (e.g. an AUTH or a protocol hello); requests follow "
                        "once its reply is in; its reply is checked (as the others, unless --first-expect...) "
                        "but not timed nor counted")
    first = r.add_mutually_exclusive_group()
    first.add_argument("--first-expect", metavar="TEXT", help="the exact reply to --first-message")
    first.add_argument("--first-expect-prefix", metavar="TEXT",
                       help="what the reply to --first-message begins with (needs a --reply-... rule)")
    e = p.add_argument_group(
        "replies", "what a correct reply is (default: the echo of the request) and where it ends (default: the "
                   "length of the exact reply expected). Each reply is judged as its bytes arrive: a byte that "
                   "differs is a mismatch at once, recorded with its offset and what came back")
    exp = e.add_mutually_exclusive_group()
    exp.add_argument("--expect", metavar="TEXT",
                     help="the exact reply to every request (e.g. -e --expect '+PONG\\r\\n')")
    exp.add_argument("--expect-file", metavar="PATH",
                     help="the exact reply: the bytes of this file, as they are")
    exp.add_argument("--expect-prefix", metavar="TEXT",
                     help="what every reply begins with (e.g. 'HTTP/1.1 200'); needs a --reply-... rule")
    exp.add_argument("--expect-regex", metavar="REGEX",
                     help="a Python bytes regular expression the whole reply must match (. matches newlines "
                          "too; its own escapes, not -e's); judged when the reply's end is found; needs a "
                          "--reply-... rule")
    frame = e.add_mutually_exclusive_group()
    frame.add_argument("--reply-size", type=int, metavar="BYTES", help="every reply is BYTES bytes")
    frame.add_argument("--reply-until", metavar="BYTES",
                       help="a reply ends with these bytes, e.g. -e --reply-until '\\r\\n' for a line protocol")
    frame.add_argument("--reply-http", action="store_true", default=None,
                       help="HTTP/1.1 replies: headers up to the blank line, then Content-Length bytes of body "
                            "(chunked bodies are not supported)")
    s = p.add_argument_group("load shapes")
    s.add_argument("--pipeline", type=int, metavar="N",
                   help="requests in flight on each connection (default 1); replies are matched in order")
    s.add_argument("--lifetime", type=_lifetime, metavar="N|TIME",
                   help="close each socket after N requests (e.g. 100) or TIME (e.g. 2s, 500ms), once its replies "
                        "are in, and connect again: measures accept and close, not just messages")
    s.add_argument("--rate-per-connection", type=float, metavar="MSG_PER_S",
                   help="open loop, as --rate, given per connection (--rate = this x --connections); needs --duration")
    s.add_argument("--warmup", type=seconds, metavar="TIME",
                   help="judge but do not count the round trips sent in the first TIME (e.g. 2s); "
                        "--duration and -n count after it")


def seconds(text: str) -> float:
    from c10k.text import parse_seconds

    try:
        return parse_seconds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _lifetime(text: str) -> tuple[int, float]:
    """(requests, seconds): a bare whole number is requests, a number with a unit is time."""
    if text.strip().isdigit():
        n = int(text)
        if n < 1:
            raise argparse.ArgumentTypeError(f"a lifetime of at least 1 request, not {text!r}")
        return n, 0.0
    value = seconds(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"a lifetime of more than 0 s, not {text!r}")
    return 0, value


def _read(path: str, option: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise UsageError(f"{option}: cannot read {path}: {exc.strerror or exc}") from None
    if not data:
        raise UsageError(f"{option}: {path} is empty")
    return data


def _text(args: argparse.Namespace, value: str, option: str) -> bytes:
    from c10k.load.request import unescape

    data = os.fsencode(value)  # the bytes typed, even when they are not UTF-8
    return unescape(data, option) if args.unescape else data


def message_from(args: argparse.Namespace) -> bytes | None:
    """The request's bytes from -m (unescaped with -e) or --message-file; None: neither was given."""
    given = [o for o, v in (("-m/--message", args.message), ("--size", args.size),
                            ("--message-file", args.message_file)) if v is not None]
    if len(given) > 1:
        raise UsageError(f"give one of -m/--message, --size and --message-file, not {' and '.join(given)}")
    if args.message_file is not None:
        return _read(args.message_file, "--message-file")
    if args.message is not None:
        return _text(args, args.message, "-m/--message")
    return None


def _framing(args: argparse.Namespace) -> Framing:
    from c10k.load.reply import Framing

    until = b"" if args.reply_until is None else _text(args, args.reply_until, "--reply-until")
    if args.reply_until is not None and not until:
        raise UsageError("--reply-until must not be empty")
    if args.reply_size is not None and args.reply_size < 1:
        raise UsageError(f"--reply-size must be at least 1 byte, not {args.reply_size}")
    return Framing(size=args.reply_size or 0, until=until, http=bool(args.reply_http))


def _rule(args: argparse.Namespace, framing: Framing, exact: bytes | None, prefix: str | None,
          regex: str | None, option: str) -> ReplyRule:
    from c10k.load.reply import EXACT, PREFIX, ReplyRule
    from c10k.load.request import Template

    if exact is not None:
        return ReplyRule(EXACT, Template(exact, fields=args.expect_file is None), framing=framing)
    if prefix is not None:
        return ReplyRule(PREFIX, Template(_text(args, prefix, f"{option}-prefix")), framing=framing)
    if regex is not None:
        return ReplyRule.regex(os.fsencode(regex), framing, f"{option}-regex")
    return ReplyRule(framing=framing)


def exchange_from(args: argparse.Namespace, message: bytes, count_given: bool) -> tuple[Exchange | None, float]:
    """(the Exchange the options ask for or None, the total rate from --rate-per-connection or 0)."""
    from c10k.load import Exchange
    from c10k.load.request import Template

    rate = 0.0
    if args.rate_per_connection is not None:
        if args.rate:
            raise UsageError("give either --rate or --rate-per-connection, not both")
        if not (args.rate_per_connection > 0 and args.rate_per_connection < float("inf")):
            raise UsageError(f"--rate-per-connection must be a finite number above 0, not {args.rate_per_connection}")
        rate = args.rate_per_connection * args.connections
    template = Template(message, fields=args.message_file is None)  # a file's bytes go as they are
    closed_by_time = bool(args.duration) and not (args.rate or rate)
    if all(getattr(args, k) is None for k in _GENERAL) and template.fixed and not closed_by_time:
        return None, rate
    framing = _framing(args)
    exact = None
    if args.expect_file is not None:
        exact = _read(args.expect_file, "--expect-file")
    elif args.expect is not None:
        exact = _text(args, args.expect, "--expect")
    reply = _rule(args, framing, exact, args.expect_prefix, args.expect_regex, "--expect")
    first_message = first_reply = None
    if args.first_message is not None:
        first_message = Template(_text(args, args.first_message, "--first-message"))
        if args.first_expect is not None or args.first_expect_prefix is not None:
            first_exact = None if args.first_expect is None else _text(args, args.first_expect, "--first-expect")
            first_reply = _rule(args, framing, first_exact, args.first_expect_prefix, None, "--first-expect")
    elif args.first_expect is not None or args.first_expect_prefix is not None:
        raise UsageError("--first-expect needs --first-message")
    lifetime: tuple[int, float] = args.lifetime or (0, 0.0)
    options: dict[str, Any] = {}
    if args.pipeline is not None:
        options["pipeline"] = args.pipeline
    if args.warmup is not None:
        options["warmup_s"] = args.warmup
    # a closed loop bounded by --duration runs until it ends, unless -n bounds it too
    requests = args.count if count_given or not args.duration else None
    return Exchange(message=template, reply=reply, first_message=first_message, first_reply=first_reply,
                    requests=requests, lifetime_requests=lifetime[0], lifetime_s=lifetime[1], **options), rate
