"""The dispatcher's consume-loop parts without a broker: commit points (OffsetBook),
and parked records read back from the log."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from dispatch_support import run
from services.dispatcher import OffsetBook
from streaming.metrics import DispatcherMetrics


def test_offset_book_commits_below_lowest_unfinished() -> None:
    tp = TopicPartition("a", 0)
    b = OffsetBook()
    for o in range(5):
        b.add(tp, o)
    b.done(tp, 0)
    b.done(tp, 2)
    b.done(tp, 3)
    assert b.commit_points() == {tp: 1} and b.in_flight == 2
    b.mark_committed({tp: 1})
    assert b.commit_points() == {}
    b.done(tp, 1)
    b.done(tp, 4)
    assert b.commit_points() == {tp: 5}
    b.drop(tp)
    b.done(tp, 7)  # late completion of a revoked partition is ignored
    assert b.commit_points() == {}


class _FakeLog:
    """Stands in for the dispatcher's log reader: a partition holding ``first``.. on."""

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last, self.fetches = first, last, 0

    async def fetch(self, tp: TopicPartition, offset: int) -> list[Any]:
        from types import SimpleNamespace

        self.fetches += 1
        start = max(offset, self.first)
        return [SimpleNamespace(offset=o, value=f"alert-{o}".encode()) for o in range(start, self.last + 1)]


def _parked_state(log: _FakeLog, offsets: list[int]) -> tuple[Any, list[Any]]:
    from services.ack_api import AlertBook
    from services.dispatcher import _Item, _State

    st = _State(None, None, None, None, None, AlertBook(),  # type: ignore[arg-type]
                DispatcherMetrics(CollectorRegistry()), asyncio.Event(), fetcher=log)  # type: ignore[arg-type]
    tp = TopicPartition("alerts", 0)
    items = [_Item(tp, o, b"p1", None, 0, parked=True) for o in offsets]
    st.parked.update({(tp, it.offset): it for it in items})
    return st, items


def test_unpark_reads_back_a_parked_record_and_the_ones_behind_it() -> None:
    from services.dispatcher import _unpark

    log = _FakeLog(0, 20)
    st, items = _parked_state(log, [5, 6, 9])
    assert run(_unpark(st, items[0]))
    # one fetch filled all three (the patient's later alerts come right after it)
    assert [it.value for it in items] == [b"alert-5", b"alert-6", b"alert-9"]
    assert not any(it.parked for it in items) and not st.parked and log.fetches == 1
    assert st.held_bytes == sum(len(it.value) for it in items)


def test_unpark_names_a_record_that_retention_removed() -> None:
    from services.dispatcher import _unpark

    st, items = _parked_state(_FakeLog(10, 20), [7])
    with pytest.raises(LookupError, match=r"alerts\[0\]@7 is no longer in the log \(it starts at 10\)"):
        run(_unpark(st, items[0]))

