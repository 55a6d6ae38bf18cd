"""The study waits for an earlier case's conntrack entries to expire (study/conntrack.py).

A made-up table and a made-up clock: the count falls as entries expire, and
the wait must stop when the case fits, never run past its bound, and not
start at all when waiting cannot help.
"""

from __future__ import annotations

from c10k.study import conntrack


class Table:
    """A conntrack table whose count falls by ``expire`` entries per simulated second."""

    def __init__(self, size: int, count: int, expire: int) -> None:
        self.size, self.count, self.expire = size, count, expire
        self.now = 0.0
        self.sleeps = 0

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += seconds
        self.count = max(0, self.count - int(self.expire * seconds))

    def wait(self, connections: int, timeout_s: float = 150.0) -> float:
        return conntrack.wait_for_room(connections, timeout_s=timeout_s, table_max=lambda: self.size,
                                       count=lambda: self.count, sleep=self.sleep, clock=lambda: self.now)


def test_waits_until_the_case_fits_then_stops() -> None:
    t = Table(size=262_144, count=250_000, expire=10_000)
    waited = t.wait(45_000)
    assert t.count + 45_000 <= t.size  # room when it returned
    assert waited == t.now and 0 < waited < 150
    assert t.sleeps == 4  # 250,000 -> 210,000: the first second with room, not one more


def test_no_wait_with_room_untracked_loopback_or_a_case_larger_than_the_table() -> None:
    assert Table(size=262_144, count=1_000, expire=0).wait(45_000) == 0.0
    untracked = Table(size=0, count=250_000, expire=0)
    assert untracked.wait(45_000) == 0.0 and untracked.sleeps == 0
    larger = Table(size=262_144, count=250_000, expire=0)
    assert larger.wait(300_000) == 0.0 and larger.sleeps == 0  # waiting cannot free room


def test_the_wait_is_bounded_when_entries_never_expire() -> None:
    t = Table(size=262_144, count=250_000, expire=0)
    waited = t.wait(45_000, timeout_s=30.0)
    assert 30.0 <= waited <= 31.0
    assert t.sleeps == 30


def test_notes_name_the_setting_and_the_fix() -> None:
    note = conntrack.room_note(38, 95.0)
    assert "Case 38" in note and conntrack.CONNTRACK_MAX in note
    warning = conntrack.too_small_note(1_000_000, table_max=lambda: 262_144)
    assert warning is not None
    assert "262,144" in warning and f"sysctl -w {conntrack.CONNTRACK_MAX}=2000000" in warning
    assert "c10k doctor -c 1000000 --fix" in warning
    assert conntrack.too_small_note(100_000, table_max=lambda: 262_144) is None
    assert conntrack.too_small_note(1_000_000, table_max=lambda: 0) is None
