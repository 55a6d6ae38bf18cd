"""The hand-off acceptor's placement of an accept batch, and the worker counters it reads, without I/O."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from c10k.servers.epoll import LeastLoadedFirst
from c10k.servers.workers import Slots


def take(placer: LeastLoadedFirst[str], n: int) -> list[str | None]:
    return [placer.next() for _ in range(n)]


def test_the_least_loaded_worker_takes_the_batch_until_full_then_the_next():
    placer = LeastLoadedFirst([(5, 0, "a"), (2, 1, "b"), (9, 2, "c")], capacity=10)
    got = take(placer, 15)
    assert got == ["b"] * 8 + ["a"] * 5 + ["c"] + [None]
    assert placer.next() is None, "every worker is full: nothing until one is added"


def test_a_new_worker_takes_the_next_connections():
    placer = LeastLoadedFirst([(3, 0, "a")], capacity=3)
    assert placer.next() is None
    placer.add("d")
    assert take(placer, 4) == ["d", "d", "d", None]


def test_no_worker_yet():
    placer: LeastLoadedFirst[str] = LeastLoadedFirst([], capacity=100)
    assert placer.next() is None


@given(held=st.lists(st.integers(0, 50), min_size=1, max_size=12), capacity=st.integers(1, 50),
       batch=st.integers(0, 400))
def test_never_past_capacity_and_fills_least_loaded_first(held: list[int], capacity: int, batch: int):
    placer = LeastLoadedFirst([(h, i, i) for i, h in enumerate(held)], capacity)
    placed = [placer.next() for _ in range(batch)]
    given_to = [w for w in placed if w is not None]
    room = sum(max(0, capacity - h) for h in held)
    # it places until there is no room left anywhere, and then only None
    assert len(given_to) == min(batch, room)
    assert all(w is None for w in placed[len(given_to):])
    after = list(held)
    for w in given_to:
        after[w] += 1
    assert all(a <= max(h, capacity) for a, h in zip(after, held, strict=True)), "a worker went past capacity"
    # each worker's turn comes in order of its load: no worker is used while a less-loaded one had room
    order = list(dict.fromkeys(given_to))
    assert [held[w] for w in order] == sorted(held[w] for w in order)


def test_slots_column_reads_one_field_of_every_row():
    slots = Slots(6)
    for i, closed in enumerate((4, 0, 7, 1)):
        slots.set(i, "closed", closed)
        slots.set(i, "accepted", 100 + i)
    assert slots.column("closed", 4) == [4, 0, 7, 1]
    assert slots.column("accepted", 3) == [100, 101, 102]
    assert slots.column("closed", 6) == [slots.get(i, "closed") for i in range(6)]
