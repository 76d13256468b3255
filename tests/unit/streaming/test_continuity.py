"""The worker's offset continuity check: holes are found and read back, nothing else is."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from streaming.continuity import ContinuityGuard, advance, find_holes
from streaming.pipeline import InMessage


def m(p: int, o: int) -> InMessage:
    return InMessage(f"k{p}".encode(), f"v{p}:{o}".encode(), p, o)


def test_no_hole_in_a_contiguous_batch():
    assert find_holes({0: 5, 1: 9}, [m(0, 5), m(1, 9), m(0, 6), m(1, 10)]) == []


def test_hole_in_front_of_and_inside_a_batch():
    assert find_holes({0: 5}, [m(0, 7), m(0, 8), m(0, 11)]) == [(0, 5, 6), (0, 9, 10)]


def test_redeliveries_are_not_holes_and_unknown_partitions_are_not_checked():
    # after a seek back, offsets below the expected one come again: not a hole
    assert find_holes({0: 10}, [m(0, 3), m(0, 4), m(0, 10)]) == []
    assert find_holes({}, [m(2, 40), m(2, 41)]) == []
    # but once a partition's first record is seen, a jump after it is a hole
    assert find_holes({}, [m(2, 40), m(2, 43)]) == [(2, 41, 42)]


def test_advance_moves_past_the_highest_offset_only():
    exp = {0: 10}
    advance(exp, [m(0, 3), m(0, 12), m(1, 0)])
    assert exp == {0: 13, 1: 1}


@dataclass
class Rec:
    key: bytes
    value: bytes
    offset: int


class FakeLog:
    """A partition log with some offsets holding no record (transaction markers)."""

    def __init__(self, n: int, missing: set[int] = frozenset()) -> None:
        self.records = {o: Rec(b"k0", f"v0:{o}".encode(), o) for o in range(n) if o not in missing}
        self.reads: list[tuple[int, int]] = []

    async def read_range(self, tp, first: int, last: int) -> list[Rec]:
        self.reads.append((first, last))
        return [self.records[o] for o in range(first, last + 1) if o in self.records]

    async def start_offsets(self, group: str, tps) -> dict[int, int]:
        self.asked = (group, [tp.partition for tp in tps])
        return {tp.partition: self.committed.get(tp.partition, 0) for tp in tps}

    committed: dict[int, int] = {}


def guard(log: FakeLog, resume: dict[int, int | None], gen: list[int]) -> ContinuityGuard:
    return ContinuityGuard("ecg", log, lambda p: resume.get(p), lambda: gen[0])


def test_guard_reads_the_hole_back_and_puts_it_in_front():
    log = FakeLog(20)
    g = guard(log, {0: 5}, [1])
    out = asyncio.run(g.fill([m(0, 8), m(0, 9)]))
    assert [x.offset for x in out] == [5, 6, 7, 8, 9]
    assert out[0].value == b"v0:5" and log.reads == [(5, 7)]
    # the records read back are handed over once, to be acked in the consumer
    assert g.applied(out) == [(0, 5), (0, 6), (0, 7)]
    assert asyncio.run(g.fill([m(0, 10)])) == [m(0, 10)] and log.reads == [(5, 7)]
    assert g.applied([m(0, 10)]) == []


def test_guard_takes_offsets_without_records_as_they_are():
    log = FakeLog(20, missing={6})
    g = guard(log, {0: 5}, [1])
    out = asyncio.run(g.fill([m(0, 8)]))
    assert [x.offset for x in out] == [5, 7, 8]


def test_guard_without_state_starts_where_the_consumer_group_does():
    # A fresh start: no patient state yet, so the position is the group's committed
    # offset (or the log's first), and records dropped before the first one seen are
    # read back too.
    log = FakeLog(20)
    log.committed = {0: 3}
    g = ContinuityGuard("ecg", log, lambda p: None, lambda: 1, group="app")
    out = asyncio.run(g.fill([m(0, 6), m(1, 2)]))
    assert log.asked == ("app", [0, 1])
    assert [(x.partition, x.offset) for x in out] == [(0, 3), (0, 4), (0, 5), (0, 6), (1, 0), (1, 1), (1, 2)]


def test_guard_starts_at_the_committed_offset_when_the_states_are_further_on():
    # Killed after storing states up to offset 9 but before committing past 5; at the
    # restart Faust drops 5..7 from its queue and hands out 8 on. Those were applied
    # already, but if nobody acks them Faust never commits this partition again: they
    # are read back (the core skips them) and handed over to be acked.
    log = FakeLog(20)
    log.committed = {0: 5}
    g = ContinuityGuard("ecg", log, lambda p: 10, lambda: 1, group="app")
    out = asyncio.run(g.fill([m(0, 8), m(0, 9), m(0, 10)]))
    assert [x.offset for x in out] == [5, 6, 7, 8, 9, 10] and log.reads == [(5, 7)]
    assert g.applied(out) == [(0, 5), (0, 6), (0, 7)]


def test_guard_starts_at_the_states_when_the_commit_is_further_on():
    # Faust committed past records no state has applied (its gap bookkeeping can):
    # the states' position wins and the hole up to the first record handed out is read.
    log = FakeLog(20)
    log.committed = {0: 12}
    g = ContinuityGuard("ecg", log, lambda p: 9, lambda: 1, group="app")
    out = asyncio.run(g.fill([m(0, 12)]))
    assert [x.offset for x in out] == [9, 10, 11, 12]


def test_guard_without_a_resume_point_or_group_trusts_the_first_record():
    log = FakeLog(20)
    g = guard(log, {0: None}, [1])
    assert [x.offset for x in asyncio.run(g.fill([m(0, 12)]))] == [12]
    assert log.reads == []


def test_guard_takes_positions_from_the_states_again_after_a_rebalance():
    log = FakeLog(100)
    resume: dict[int, int | None] = {0: 5}
    gen = [1]
    g = guard(log, resume, gen)
    g.applied(asyncio.run(g.fill([m(0, 5)])))
    # Another worker owned partition 0 for a while and applied up to offset 59.
    gen[0], resume[0] = 2, 60
    assert [x.offset for x in asyncio.run(g.fill([m(0, 60)]))] == [60]
    assert log.reads == []


def test_guard_propagates_a_failed_read():
    class Down:
        async def read_range(self, tp, first, last):
            raise TimeoutError("no broker")

    g = ContinuityGuard("ecg", Down(), lambda p: 0, lambda: 1)
    with pytest.raises(TimeoutError):
        asyncio.run(g.fill([m(0, 3)]))
