"""The dispatcher's own acks: an ack made through its ack API is applied once, by that call,
which logs the ``acknowledged`` event, even when the acks tail reads the record back first.

Found by the console's browser test: the tail consumer sometimes applied the ack record
before the API call that wrote it did, the tracker then answered that call "already
acknowledged", and no ``acknowledged`` event reached the alerts topic or the care team.
"""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from services.ack_api import AckRecord, AlertBook
from services.alert_log import default_tracker as _default_tracker
from services.dispatcher import _KafkaAckSink, _State, apply_tailed_ack
from services.routing import parse_routing
from services.settings import DispatcherSettings, KafkaSettings
from streaming.events import AlertEvent
from streaming.metrics import DispatcherMetrics

SECRET = "whsec_" + base64.b64encode(b"own-acks-secret-0123456789").decode()


class _Producer:
    """Records sends; an ack record is read back by the acks tail *during* its send, as the
    real tail can do before the producer's send_and_wait returns."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.st: _State | None = None

    async def send_and_wait(self, topic: str, value: bytes, key: bytes) -> None:
        self.sent.append((topic, value))
        if topic.endswith("acks") and self.st is not None:
            apply_tailed_ack(self.st, value)


def _state() -> tuple[_State, _Producer]:
    routing = parse_routing({"default_team": "ward", "teams": {"ward": {"routes": {
        "default": {"primary": {"url": "http://127.0.0.1:9/hook", "secret": SECRET}}}}}})
    producer = _Producer()
    st = _State(DispatcherSettings(KafkaSettings(), routing_file=Path("unused")), routing, None,  # type: ignore[arg-type]
                producer, _default_tracker(routing), AlertBook(), DispatcherMetrics(CollectorRegistry()),  # type: ignore[arg-type]
                asyncio.Event())
    producer.st = st
    return st, producer


def _raised() -> AlertEvent:
    now = int(time.time() * 1000)
    return AlertEvent(alert_id="p1:pause:1", revision=1, action="raised", patient_id="p1", device_id="d",
                      condition="pause", category="physiological", priority="high", onset_ts_ms=now,
                      detected_ts_ms=now, rule="RR 5 s", produced_wall_ms=now)


def test_an_ack_read_back_by_the_tail_first_still_logs_its_acknowledged_event() -> None:
    st, producer = _state()
    st.observe(_raised(), int(time.time() * 1000))
    rec = AckRecord("p1:pause:1", "ack", "nurse.a", int(time.time() * 1000), None, "ward")
    asyncio.run(_KafkaAckSink(st).publish(rec))
    topics = [t for t, _ in producer.sent]
    assert topics == [st.topics.acks, st.topics.alerts]
    ev = AlertEvent.from_json(producer.sent[1][1])
    assert ev.action == "acknowledged" and ev.details["acknowledged_by"] == "nurse.a"
    assert ev.details["by_team"] == "ward"
    assert st.book.get("p1:pause:1").status == "acknowledged"  # type: ignore[union-attr]
    assert st.tracker.due(int(time.time() * 1000) + 10**9) == []  # escalation stopped
    assert st.own_acks == set()


def test_an_ack_from_another_dispatcher_is_applied_by_the_tail() -> None:
    st, producer = _state()
    st.observe(_raised(), int(time.time() * 1000))
    other: Any = AckRecord("p1:pause:1", "ack", "nurse.b", int(time.time() * 1000), None, "ward").to_json()
    apply_tailed_ack(st, other)
    assert st.book.get("p1:pause:1").status == "acknowledged"  # type: ignore[union-attr]
    assert st.tracker.due(int(time.time() * 1000) + 10**9) == []
    apply_tailed_ack(st, b"not an ack")  # undecodable: skipped, as before
    assert producer.sent == []
