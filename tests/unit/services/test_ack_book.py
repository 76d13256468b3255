"""The ack API's alert book: a cleared alert stays latched and acknowledgeable."""

from __future__ import annotations

from services.ack_api import AckRecord, AlertBook
from streaming.events import AlertEvent

T0 = 1_767_225_600_000


def ev(action: str, revision: int = 0) -> AlertEvent:
    return AlertEvent(alert_id=f"p-1:ventricular_run:{T0}", revision=revision, action=action,
                      patient_id="p-1", device_id="d", condition="ventricular_run",
                      category="physiological", priority="high", onset_ts_ms=T0,
                      detected_ts_ms=T0 + 1000, rule="3 beats")


def test_cleared_alert_stays_open_until_acknowledged():
    book = AlertBook()
    book.observe(ev("raised"))
    book.observe(ev("cleared", 1))
    assert book.get(ev("raised").alert_id).status == "open"
    assert book.counts()[1]["high"] == 1  # still unacknowledged
    book.apply(AckRecord(ev("raised").alert_id, "ack", "nurse", T0 + 5000))
    assert book.get(ev("raised").alert_id).status == "acknowledged"


def test_resolved_alert_is_closed():
    book = AlertBook()
    book.observe(ev("raised"))
    book.observe(ev("resolved", 2))
    assert book.get(ev("raised").alert_id).status == "resolved"
    assert book.counts()[0]["high"] == 0
