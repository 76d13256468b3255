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
    # acknowledged with its condition over: the latched alert ends
    assert book.get(ev("raised").alert_id).status == "closed"
    assert book.counts() == ({"high": 0, "medium": 0, "low": 0}, {"high": 0, "medium": 0, "low": 0})
    assert book.alerts(open_only=True) == []


def test_acknowledged_alert_closes_when_its_condition_clears():
    book = AlertBook()
    book.observe(ev("raised"))
    book.apply(AckRecord(ev("raised").alert_id, "ack", "nurse", T0 + 5000))
    book.observe(ev("updated", 1))
    assert book.get(ev("raised").alert_id).status == "acknowledged"
    assert book.counts()[0]["high"] == 1  # open, no longer unacknowledged
    book.observe(ev("cleared", 2))
    assert book.get(ev("raised").alert_id).status == "closed"
    assert book.counts()[0]["high"] == 0
    book.observe(ev("updated", 3))  # a late echo does not reopen a finished alert
    assert book.get(ev("raised").alert_id).status == "closed"


def test_finished_alerts_are_kept_only_up_to_a_bound():
    book = AlertBook(max_finished=100)

    def alert(i: int, action: str, revision: int = 0) -> AlertEvent:
        return AlertEvent(alert_id=f"p-{i}:pause:{T0}", revision=revision, action=action,
                          patient_id=f"p-{i}", device_id="d", condition="pause",
                          category="physiological", priority="high", onset_ts_ms=T0,
                          detected_ts_ms=T0 + 1000, rule="r")
    for i in range(1000):
        book.observe(alert(i, "raised"))
        if i % 2:
            book.observe(alert(i, "resolved", 1))
    # 500 still open, plus the 100 most recently finished
    assert len(book) == 600
    assert book.counts()[0]["high"] == 500
    assert book.get(alert(999, "raised").alert_id).status == "resolved"
    assert book.get(alert(1, "raised").alert_id) is None
    assert book.get(alert(0, "raised").alert_id).status == "open"


def test_resolved_alert_is_closed():
    book = AlertBook()
    book.observe(ev("raised"))
    book.observe(ev("resolved", 2))
    assert book.get(ev("raised").alert_id).status == "resolved"
    assert book.counts()[0]["high"] == 0
