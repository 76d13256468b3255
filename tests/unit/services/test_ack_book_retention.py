"""The ack API's alert book forgets finished alerts after the retention, never open ones."""

from __future__ import annotations

import pytest

from services.ack_api import AckRecord, AlertBook
from streaming.events import AlertEvent

T0 = 1_767_225_600_000
HOUR_MS = 3_600_000


def ev(i: int, action: str, revision: int = 0) -> AlertEvent:
    return AlertEvent(alert_id=f"p-{i}:ventricular_run:{T0}", revision=revision, action=action,
                      patient_id=f"p-{i}", device_id="d", condition="ventricular_run",
                      category="physiological", priority="high", onset_ts_ms=T0,
                      detected_ts_ms=T0 + 1000, rule="3 beats")


def test_book_size_drops_after_the_retention_and_open_alerts_stay() -> None:
    book = AlertBook(retention_ms=HOUR_MS)
    n = 2000
    for i in range(n):
        book.observe(ev(i, "raised"), T0)
    for i in range(n):
        a = ev(i, "raised").alert_id
        if i % 4 == 0:
            book.apply(AckRecord(a, "resolve", "nurse", T0 + 100))
        elif i % 4 == 1:
            book.apply(AckRecord(a, "ack", "nurse", T0 + 100))
            book.observe(ev(i, "cleared", 1), T0 + 200)  # acknowledged and over: closed
        elif i % 4 == 2:
            book.observe(ev(i, "cleared", 1), T0 + 200)  # latched, never acknowledged
        # i % 4 == 3: still open
    assert len(book) == n
    assert book.forget(T0 + HOUR_MS) == []  # nothing is past the retention yet
    gone = book.forget(T0 + HOUR_MS + 200)
    assert len(gone) == n // 2 and len(book) == n // 2
    assert all(book.get(a) is None for a in gone)
    # unfinished alerts are never forgotten, however late
    assert book.forget(T0 + 100_000 * HOUR_MS) == []
    statuses = {a.status for a in book.alerts()}
    assert statuses == {"open"} and len(book.alerts(open_only=True)) == n // 2


def test_a_recently_finished_alert_is_still_known_until_the_retention() -> None:
    book = AlertBook(retention_ms=HOUR_MS)
    a = ev(1, "raised").alert_id
    book.observe(ev(1, "raised"), T0)
    book.apply(AckRecord(a, "resolve", "nurse", T0 + 10))
    book.forget(T0 + HOUR_MS)
    assert book.get(a).status == "resolved"  # a late ack still gets 409, not 403
    book.forget(T0 + HOUR_MS + 10)
    assert book.get(a) is None


def test_the_count_cap_still_bounds_finished_alerts_and_reports_what_it_dropped() -> None:
    book = AlertBook(max_finished=10, retention_ms=HOUR_MS)
    for i in range(30):
        book.observe(ev(i, "raised"), T0)
        book.apply(AckRecord(ev(i, "raised").alert_id, "resolve", "n", T0 + i))
    assert len(book) == 10
    assert len(book.forget(T0)) == 20  # the cap's drops, reported once
    assert book.forget(T0) == []


def test_export_restore_round_trips_an_entry() -> None:
    book, other = AlertBook(), AlertBook()
    book.observe(ev(1, "raised"), T0)
    book.observe(ev(1, "cleared", 1), T0 + 5)
    other.restore(book.export(ev(1, "raised").alert_id))  # type: ignore[arg-type]
    other.apply(AckRecord(ev(1, "raised").alert_id, "ack", "nurse", T0 + 9))
    assert other.get(ev(1, "raised").alert_id).status == "closed"  # the latch came along
    with pytest.raises(ValueError, match="status must be"):
        other.restore({**book.export(ev(1, "raised").alert_id), "status": "gone"})  # type: ignore[dict-item]


def test_a_replay_of_a_forgotten_alert_does_not_bring_it_back() -> None:
    book = AlertBook(retention_ms=HOUR_MS)
    a = ev(1, "raised").alert_id
    book.observe(ev(1, "raised"), T0)
    book.apply(AckRecord(a, "resolve", "nurse", T0 + 10))
    assert book.forget(T0 + 10 + HOUR_MS) == [a]
    book.observe(ev(1, "raised"), T0)  # the consume loop re-reads the old record
    assert book.get(a) is None and len(book) == 0
    book.observe(ev(2, "raised"), T0 + 11 + HOUR_MS)
    assert book.get(ev(2, "raised").alert_id).status == "open"
