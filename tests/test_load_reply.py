"""The reply judge and the request side, free of I/O: bytes in whole, byte by byte and in random chunks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from c10k.errors import UsageError
from c10k.load.reply import ECHO, EXACT, PREFIX, Framing, ReplyReader, ReplyRule
from c10k.load.request import Template, shown, unescape


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False) if b > a]


def feed_all(reader: ReplyReader, pieces: list[bytes]) -> list:
    done = []
    for p in pieces:
        done += reader.feed(p)
        if reader.failure:
            break
    return done


PONG = ReplyRule(EXACT, Template(b"+PONG\r\n"))
LINE = ReplyRule(PREFIX, Template(b"OK "), framing=Framing(until=b"\r\n"))
HTTP = ReplyRule(PREFIX, Template(b"HTTP/1.1 200"), framing=Framing(http=True))


@given(st.integers(1, 20), st.lists(st.integers(0, 10_000), max_size=30))
def test_pipelined_exact_replies_in_any_chunks(n: int, cuts: list[int]) -> None:
    reader = ReplyReader()
    for k in range(n):
        reader.owe(PONG, PONG.known(b"PING\r\n", 0, k), k)
    done = feed_all(reader, chunks(b"+PONG\r\n" * n, cuts))
    assert reader.failure is None
    assert done == [(k, 7) for k in range(n)] and reader.ok_bytes == 7 * n and reader.owed == 0


@given(st.lists(st.binary(max_size=20).filter(lambda b: b"\r\n" not in b and not b.endswith(b"\r")),
                min_size=1, max_size=8),
       st.lists(st.integers(0, 10_000), max_size=30))
def test_delimited_replies_in_any_chunks(bodies: list[bytes], cuts: list[int]) -> None:
    reader = ReplyReader()
    for k in range(len(bodies)):
        reader.owe(LINE, LINE.known(b"x", 0, k), k)
    stream = b"".join(b"OK " + b + b"\r\n" for b in bodies)
    done = feed_all(reader, chunks(stream, cuts))
    assert reader.failure is None
    assert [size for _, size in done] == [len(b) + 5 for b in bodies]


@given(st.lists(st.integers(0, 10_000), max_size=20))
def test_http_replies_framed_by_content_length(cuts: list[int]) -> None:
    one = b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 12\r\n\r\nhello\r\n\r\nxyz"
    empty = b"HTTP/1.1 200 OK\r\ncontent-length:0\r\n\r\n"
    reader = ReplyReader()
    for k in range(3):
        reader.owe(HTTP, HTTP.known(b"GET", 0, k), k)
    done = feed_all(reader, chunks(one + empty + one, cuts))
    assert reader.failure is None and [s for _, s in done] == [len(one), len(empty), len(one)]


def test_a_wrong_byte_is_a_mismatch_before_the_reply_ends() -> None:
    reader = ReplyReader()
    reader.owe(PONG, PONG.known(b"PING\r\n", 0, 0), 0)
    assert reader.feed(b"+PO") == [] and reader.failure is None
    assert reader.feed(b"O") == []  # "+POO": already wrong, though 3 bytes are still owed
    assert reader.failure is not None and (reader.failure.reason, reader.failure.offset) == ("mismatch", 3)
    assert reader.failure.got == b"+POO"


def test_a_longer_reply_is_a_mismatch_as_soon_as_it_is_longer() -> None:
    rule = ReplyRule(EXACT, Template(b"OK\n"), framing=Framing(until=b"\r\n"))
    reader = ReplyReader()
    reader.owe(rule, rule.known(b"", 0, 0), 0)
    reader.feed(b"OK\nmore")
    assert reader.failure is not None and reader.failure.offset == 3


def test_echo_of_the_request_and_unexpected_data() -> None:
    rule = ReplyRule(ECHO)
    reader = ReplyReader()
    reader.owe(rule, rule.known(b"abc", 0, 0), 0)
    assert reader.feed(b"abcX") == [(0, 3)]
    assert reader.failure is not None and reader.failure.reason == "unexpected_data" and reader.failure.got == b"X"


def test_regex_is_judged_on_the_whole_reply() -> None:
    rule = ReplyRule.regex(rb"\+PO.G\r\n", Framing(until=b"\r\n"))
    reader = ReplyReader()
    reader.owe(rule, None, 0)
    reader.owe(rule, None, 1)
    assert reader.feed(b"+PONG\r\n+PANG!\r\n") == [(0, 7)]
    assert reader.failure is not None and reader.failure.offset == -1 and reader.failure.got == b"+PANG!\r\n"


def test_rules_need_what_they_cannot_guess() -> None:
    with pytest.raises(UsageError, match="says nothing about where a reply ends"):
        ReplyRule(PREFIX, Template(b"OK"))
    with pytest.raises(UsageError, match="not a regular expression"):
        ReplyRule.regex(b"(", Framing(size=3))
    with pytest.raises(UsageError, match="one framing rule"):
        Framing(size=3, until=b"\n")


def test_unescape_and_shown_are_inverse() -> None:
    assert unescape(rb"PING\r\n\t\0\x41\\", "-m") == b"PING\r\n\t\0A\\"
    with pytest.raises(UsageError, match=r"unknown escape '\\q'"):
        unescape(rb"a\q", "-m")
    with pytest.raises(UsageError, match="unknown escape"):
        unescape(b"a\\", "-m")


@given(st.binary(max_size=80))
def test_shown_round_trips_through_unescape(data: bytes) -> None:
    text = shown(data, limit=100)
    assert "\n" not in text and "\r" not in text
    assert unescape(text.encode(), "x") == data


def test_template_fields() -> None:
    t = Template(b"GET /{connection}/{seq}?{x}")
    assert t.render(7, 3) == b"GET /7/3?{x}" and not t.fixed
    assert Template(b"{seq}", fields=False).render(1, 2) == b"{seq}"
    assert Template(b"plain").fixed
