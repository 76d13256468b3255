"""The alert-state topic: its records, what a read of it keeps, what the dispatcher writes,
and a rebuild that cannot reach the end in time failing instead of going on partly."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from services.ack_api import AckRecord, AlertBook
from services.alert_log import RebuildIncompleteError, _read_to_end, default_tracker
from services.alert_state import (
    AlertStateRecordError,
    Checkpoint,
    StateEntry,
    StateSnapshot,
    alert_record,
    checkpoint_key,
    checkpoint_record,
    decode,
)
from services.dispatcher import _State, write_state
from services.routing import parse_routing
from services.settings import DispatcherSettings, KafkaSettings
from streaming.events import AlertEvent
from streaming.metrics import DispatcherMetrics

SECRET = "whsec_" + base64.b64encode(b"alert-state-secret-0123456789").decode()
ALERTS = "cardiowatch.alerts"
T0 = 1_767_225_600_000
HOUR_MS = 3_600_000


def ev(i: int, action: str, revision: int = 0) -> AlertEvent:
    return AlertEvent(alert_id=f"p-{i}:pause:{T0}", revision=revision, action=action, patient_id=f"p-{i}",
                      device_id="d", condition="pause", category="physiological", priority="high",
                      onset_ts_ms=T0, detected_ts_ms=T0 + 1000, rule="RR 5 s")


def test_records_round_trip_and_bad_ones_name_the_field() -> None:
    e = StateEntry("p-1:pause:1", 3, {"status": "open"}, {"closed_at_ms": 5})
    assert decode(alert_record(ALERTS, e, 1), ALERTS) == e
    cp = Checkpoint(2, 40, {0: 7, 1: 9})
    assert decode(checkpoint_record(ALERTS, cp, 1), ALERTS) == cp
    assert decode(alert_record("other.alerts", e, 1), ALERTS) is None  # another dispatcher's topic
    with pytest.raises(AlertStateRecordError, match="must be UTF-8 JSON"):
        decode(b"\xff{")
    with pytest.raises(AlertStateRecordError, match="schema 'cardiowatch.alert-state/1'"):
        decode(b'{"schema": "cardiowatch.alert/1"}')
    bad = json.loads(checkpoint_record(ALERTS, cp, 1))
    bad["alerts_offset"] = -1
    with pytest.raises(AlertStateRecordError, match="'alerts_offset' must be a non-negative integer, got -1"):
        decode(json.dumps(bad).encode())


def test_a_snapshot_keeps_the_latest_per_key_and_drops_tombstoned_alerts() -> None:
    snap = StateSnapshot()
    a, b = StateEntry("a", 0, {"x": 1}, None), StateEntry("b", 1, {"x": 1}, None)
    snap.add(ALERTS, b"a", alert_record(ALERTS, a, 1))
    snap.add(ALERTS, b"b", alert_record(ALERTS, b, 1))
    snap.add(ALERTS, b"a", None)  # forgotten
    snap.add(ALERTS, checkpoint_key(ALERTS, 0), checkpoint_record(ALERTS, Checkpoint(0, 5, {0: 1}), 1))
    snap.add(ALERTS, checkpoint_key(ALERTS, 0), checkpoint_record(ALERTS, Checkpoint(0, 9, {0: 2}), 2))
    snap.add(ALERTS, checkpoint_key("x", 1), checkpoint_record("x", Checkpoint(1, 5, {}), 1))
    snap.add(ALERTS, b"c", b"not json")
    assert set(snap.entries) == {"b"}
    assert snap.checkpoints == {0: Checkpoint(0, 9, {0: 2})}
    assert snap.undecodable == 1


class _Producer:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, bytes, bytes | None]] = []
        self.fail = fail

    async def send(self, topic: str, key: bytes, value: bytes | None) -> asyncio.Future[None]:
        if self.fail:
            raise ConnectionError("broker away")
        self.sent.append((topic, key, value))
        f: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        f.set_result(None)
        return f


def _state(producer: _Producer, retention_ms: int = HOUR_MS) -> _State:
    routing = parse_routing({"default_team": "ward", "teams": {"ward": {"routes": {
        "default": {"primary": {"url": "http://127.0.0.1:9/hook", "secret": SECRET}}}}}})
    return _State(DispatcherSettings(KafkaSettings(), routing_file=Path("unused")), routing, None,  # type: ignore[arg-type]
                  producer, default_tracker(routing, retention_ms), AlertBook(retention_ms=retention_ms),  # type: ignore[arg-type]
                  DispatcherMetrics(CollectorRegistry()), asyncio.Event())


def test_write_state_writes_owned_alerts_then_checkpoints_and_tombstones_the_forgotten() -> None:
    prod = _Producer()
    st = _state(prod)
    for i in range(4):
        st.observe(ev(i, "raised"), T0, partition=i % 2)
    st.apply_ack(AckRecord(ev(0, "raised").alert_id, "resolve", "nurse", T0 + 10))
    st.acks_pos[0] = 1
    topic = st.topics.alert_state
    n = asyncio.run(write_state(st, {0}, {0: 4}))
    keys = [k for _, k, _ in prod.sent]
    # partition 0's alerts (0 and 2) only, then its checkpoint, last
    assert sorted(keys[:2]) == [ev(0, "raised").alert_id.encode(), ev(2, "raised").alert_id.encode()]
    assert keys[2] == checkpoint_key(st.topics.alerts, 0) and n == 3
    assert decode(prod.sent[2][2], st.topics.alerts) == Checkpoint(0, 4, {0: 1})  # type: ignore[arg-type]
    assert all(t == topic for t, _, _ in prod.sent) and not st.dirty
    # past the retention the resolved alert is forgotten: a tombstone for it
    prod.sent.clear()
    st.forget(T0 + 10 + HOUR_MS)
    asyncio.run(write_state(st, {0, 1}, {}))
    assert prod.sent == [(topic, ev(0, "raised").alert_id.encode(), None)]
    assert ev(0, "raised").alert_id not in st.alert_partition


def test_a_failed_write_keeps_the_changes_for_the_next() -> None:
    st = _state(_Producer(fail=True))
    st.observe(ev(1, "raised"), T0, partition=0)
    with pytest.raises(ConnectionError):
        asyncio.run(write_state(st, {0}, {0: 1}))
    assert st.dirty == {ev(1, "raised").alert_id}


def test_restore_gives_back_what_was_written() -> None:
    prod = _Producer()
    st = _state(prod)
    st.observe(ev(1, "raised"), T0, partition=1)
    st.observe(ev(1, "cleared", 1), T0 + 5, partition=1)
    asyncio.run(write_state(st, {1}, {1: 2}))
    entry = decode(prod.sent[0][2], st.topics.alerts)  # type: ignore[arg-type]
    other = _state(_Producer())
    assert isinstance(entry, StateEntry)
    other.restore(entry)
    assert other.tracker.export(entry.alert_id) == st.tracker.export(entry.alert_id)
    assert other.book.export(entry.alert_id) == st.book.export(entry.alert_id)
    # the latched, unacknowledged alert is still acknowledgeable after the restart
    assert other.apply_ack(AckRecord(entry.alert_id, "ack", "nurse", T0 + 9)) is not None
    assert other.book.get(entry.alert_id).status == "closed"  # type: ignore[union-attr]


class _StuckConsumer:
    """A log reader that never gets past offset 3 of its partition (a broker that stalls)."""

    def __init__(self) -> None:
        self.pos = 0

    async def position(self, tp: TopicPartition) -> int:
        return self.pos

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
        await asyncio.sleep(timeout_ms / 1000)
        self.pos = min(self.pos + 1, 3)
        return {}


def test_a_rebuild_that_cannot_reach_the_end_in_time_fails_naming_topic_and_offsets() -> None:
    tp = TopicPartition("cardiowatch.alerts.state", 2)
    t0 = time.monotonic()
    with pytest.raises(RebuildIncompleteError) as err:
        asyncio.run(_read_to_end(_StuckConsumer(), {tp: 50}, time.monotonic() + 1.0, 1.0,  # type: ignore[arg-type]
                                 lambda tp, r: None))
    assert time.monotonic() - t0 < 5
    msg = str(err.value)
    assert "'cardiowatch.alerts.state' within 1 s: partition 2 at offset 3 of 50" in msg
    assert "does not start on partial state" in msg and err.value.behind == {2: (3, 50)}


def test_the_schema_accepts_what_the_dispatcher_writes_and_refuses_what_decode_refuses() -> None:
    import jsonschema

    doc = json.loads((Path(__file__).resolve().parents[3] / "schemas"
                      / "cardiowatch.alert-state-1.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(doc)
    v = jsonschema.Draft202012Validator(doc)
    prod = _Producer()
    st = _state(prod)
    st.observe(ev(1, "raised"), T0, partition=0)
    st.acks_pos[3] = 12
    asyncio.run(write_state(st, {0}, {0: 1}))
    for _, _, value in prod.sent:
        assert value is not None and v.is_valid(json.loads(value)), value
        decode(value)
    bad_docs = [{**json.loads(prod.sent[0][2]), "partition": -1},  # type: ignore[arg-type]
                {**json.loads(prod.sent[1][2]), "acks": {"0": "x"}},  # type: ignore[arg-type]
                {**json.loads(prod.sent[0][2]), "kind": "other"}]  # type: ignore[arg-type]
    for bad in bad_docs:
        assert not v.is_valid(bad), bad
        with pytest.raises(AlertStateRecordError):
            decode(json.dumps(bad).encode())


def test_an_unchanged_checkpoint_is_not_written_again() -> None:
    prod = _Producer()
    st = _state(prod)
    st.observe(ev(1, "raised"), T0, partition=0)
    asyncio.run(write_state(st, {0}, {0: 1}))
    assert len(prod.sent) == 2
    prod.sent.clear()
    assert asyncio.run(write_state(st, {0}, {0: 1})) == 0 and prod.sent == []
    st.acks_pos[0] = 4  # an ack applied since: the checkpoint moves
    asyncio.run(write_state(st, {0}, {0: 1}))
    assert [k for _, k, _ in prod.sent] == [checkpoint_key(st.topics.alerts, 0)]


def test_the_state_topic_is_compacted_and_rolls_hourly() -> None:
    from services.topics import plan

    spec = {s.name: s for s in plan(KafkaSettings(), "cw")}[KafkaSettings().topics.alert_state]
    assert spec.configs() == {"cleanup.policy": "compact", "min.insync.replicas": "1", "segment.ms": "3600000"}
