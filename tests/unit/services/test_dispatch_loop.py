"""The dispatcher's consume-loop parts without a broker: commit points (OffsetBook),
parked records read back from the log, and its dead letters (the worker's schema, the
record's bytes kept exactly)."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import httpx
import pytest
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from dispatch_support import alert, mock_routing, run
from services.dispatcher import OffsetBook
from streaming.deadletter import ALERT_REASONS, DEADLETTER_SCHEMA
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


class _Producer:
    """Records what the dispatcher sends, as (topic, key, value)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []

    async def send_and_wait(self, topic: str, value: bytes, key: bytes) -> None:
        self.sent.append((topic, key, value))


def _live_state(client: Any) -> tuple[Any, _Producer]:
    from types import SimpleNamespace

    from services.ack_api import AlertBook
    from services.alert_log import default_tracker
    from services.dispatcher import _State
    from services.settings import Topics

    routing = mock_routing({"max_attempts": 2, "base_backoff_s": 0.01, "max_backoff_s": 0.01, "total_budget_s": 1})
    prod = _Producer()
    st = _State(SimpleNamespace(kafka=SimpleNamespace(topics=Topics())), routing, client,  # type: ignore[arg-type]
                prod, default_tracker(routing), AlertBook(), DispatcherMetrics(CollectorRegistry()),
                asyncio.Event())
    return st, prod


def _item(value: bytes | None, key: bytes | None = b"p1", offset: int = 17) -> Any:
    from services.dispatcher import _Item

    return _Item(TopicPartition("cardiowatch.alerts", 3), offset, key, value, 1_700_000_000_000)


@pytest.mark.parametrize("raw", [b"\xff\xfe not json \x80", b"[]", b"null", b""])
def test_an_undecodable_alert_is_dead_lettered_with_its_exact_bytes(raw: bytes) -> None:
    from services.dispatcher import _process
    from services.settings import Topics

    st, prod = _live_state(None)
    key = b"p\xc3"  # not UTF-8 either: the old errors="replace" lost both
    run(_process(st, _item(raw, key=key)))
    [(topic, out_key, value)] = prod.sent
    doc = json.loads(value)
    assert topic == Topics().alerts_deadletter and out_key == key
    assert doc["schema"] == DEADLETTER_SCHEMA and doc["stream"] == "alerts"
    assert doc["reason"] == "undecodable_alert" in ALERT_REASONS and doc["detail"]
    assert base64.b64decode(doc["raw_b64"]) == raw and base64.b64decode(doc["key_b64"]) == key
    assert (doc["source_partition"], doc["source_offset"]) == (3, 17)
    assert st.metrics.registry.get_sample_value(
        "cardiowatch_deliveries_total", {"outcome": "undecodable", "priority": "unknown"}) == 1


def test_an_undeliverable_alert_is_dead_lettered_with_its_bytes_and_every_attempt() -> None:
    from services.delivery import is_delivery_failure
    from services.dispatcher import _process
    from services.settings import Topics
    from services.webhook import HttpxPoster
    from streaming.events import AlertEvent

    ev = alert("p1", 1)
    raw = ev.to_json()

    async def go() -> Any:
        async with httpx.AsyncClient(transport=httpx.MockTransport(lambda req: httpx.Response(500))) as c:
            st, prod = _live_state(HttpxPoster(c))
            await _process(st, _item(raw))
            return prod.sent

    sent = run(go())
    t = Topics()
    assert [topic for topic, _, _ in sent] == [t.alerts_deadletter, t.alerts]
    doc = json.loads(sent[0][2])
    assert doc["schema"] == DEADLETTER_SCHEMA and doc["reason"] == "all_routes_failed" in ALERT_REASONS
    assert base64.b64decode(doc["raw_b64"]) == raw and sent[0][1] == b"p1"
    assert doc["event_id"] == ev.event_id and doc["alert_id"] == ev.alert_id
    # level contact skipped (level 0), primary and failover twice each
    assert len(doc["reasons"]) == 4 and all("HTTP 500" in r for r in doc["reasons"]), doc["reasons"]
    assert ev.event_id in doc["detail"] and "4 attempts" in doc["detail"]
    assert is_delivery_failure(AlertEvent.from_json(sent[1][2]))


def test_an_alert_that_raises_unexpectedly_is_dead_lettered_with_its_bytes() -> None:
    from services.dispatcher import _deadletter_unexpected

    st, prod = _live_state(None)
    raw = b'{"schema": "cardiowatch.alert/1", "\xe2\x82"}'
    assert run(_deadletter_unexpected(st, _item(raw, key=None), RuntimeError("boom")))
    [(_, key, value)] = prod.sent
    doc = json.loads(value)
    assert doc["reason"] == "dispatch_error" in ALERT_REASONS and doc["detail"] == "RuntimeError: boom"
    assert base64.b64decode(doc["raw_b64"]) == raw and doc["key_b64"] is None and key == b""
