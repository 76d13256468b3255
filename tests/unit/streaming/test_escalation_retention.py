"""The escalation tracker forgets finished alerts after the retention, never open ones."""

from __future__ import annotations

import pytest

from streaming.escalation import EscalationConfig, EscalationTracker
from streaming.events import AlertEvent

T0 = 1_767_225_600_000
HOUR_MS = 3_600_000


def ev(i: int, action: str, revision: int = 0) -> AlertEvent:
    return AlertEvent(alert_id=f"p-{i}:ventricular_run:{T0}", revision=revision, action=action,
                      patient_id=f"p-{i}", device_id="d", condition="ventricular_run",
                      category="physiological", priority="high", onset_ts_ms=T0,
                      detected_ts_ms=T0 + 1000, rule="3 beats")


def test_finished_alerts_are_forgotten_after_the_retention_and_open_ones_never() -> None:
    t = EscalationTracker(EscalationConfig(), retention_ms=2 * HOUR_MS)
    n = 1000
    for i in range(n):
        t.observe(ev(i, "raised"), T0)
    for i in range(0, n, 2):  # half finish: acknowledged, then cleared
        t.acknowledge(ev(i, "raised").alert_id, T0 + 10, "nurse")
        t.observe(ev(i, "cleared", 1), T0 + 20)
    for i in range(1, n, 4):  # a quarter clear without an ack: latched, still escalating
        t.observe(ev(i, "cleared", 1), T0 + 20)
    assert len(t) == n
    # before the retention has passed nothing goes
    assert t.forget(T0 + 2 * HOUR_MS - 1) == []
    gone = t.forget(T0 + 2 * HOUR_MS + 20)
    assert len(gone) == n // 2 and len(t) == n // 2
    assert set(gone) == {ev(i, "raised").alert_id for i in range(0, n, 2)}
    # open alerts (latched and unacknowledged ones too) survive any time later
    assert t.forget(T0 + 10_000 * HOUR_MS) == []
    open_ids = {a.alert_id for a in t.open_alerts()}
    assert open_ids == {ev(i, "raised").alert_id for i in range(1, n, 2)}
    assert all(a.details["latched"] for a in t.open_alerts() if a.alert_id.startswith(("p-1:", "p-5:")))


def test_a_finished_alert_is_not_reopened_by_a_late_echo_within_the_retention() -> None:
    t = EscalationTracker(EscalationConfig(), retention_ms=HOUR_MS)
    a = ev(1, "raised").alert_id
    t.observe(ev(1, "raised"), T0)
    assert t.resolve(a, T0 + 5, "nurse") is not None
    t.observe(ev(1, "raised"), T0 + 6)  # a replayed record of the same alert
    assert t.open_alerts() == [] and t.is_closed(a)
    assert t.resolve(a, T0 + 7, "nurse") is None and t.acknowledge(a, T0 + 7, "nurse") is None
    assert t.forget(T0 + 5 + HOUR_MS) == [a] and len(t) == 0


def test_export_restore_round_trips_open_and_closed() -> None:
    t = EscalationTracker(EscalationConfig())
    t.observe(ev(1, "raised"), T0)
    t.observe(ev(2, "raised"), T0)
    t.resolve(ev(2, "raised").alert_id, T0 + 3, "nurse")
    u = EscalationTracker(EscalationConfig())
    for i in (1, 2):
        a = ev(i, "raised").alert_id
        u.restore(a, t.export(a))  # type: ignore[arg-type]
    assert u.to_dict() == t.to_dict()
    with pytest.raises(ValueError, match="needs 'open' or 'closed_at_ms'"):
        u.restore("x", {"nope": 1})


def test_retention_must_be_a_non_negative_integer() -> None:
    with pytest.raises(ValueError, match="retention_ms must be a non-negative integer, got -1"):
        EscalationTracker(retention_ms=-1)


def test_a_replay_of_a_forgotten_alert_does_not_bring_it_back() -> None:
    t = EscalationTracker(EscalationConfig(), retention_ms=HOUR_MS)
    a = ev(1, "raised").alert_id
    t.observe(ev(1, "raised"), T0)
    t.resolve(a, T0 + 5, "nurse")
    assert t.forget(T0 + 5 + HOUR_MS) == [a]
    t.observe(ev(1, "raised"), T0)  # the consume loop re-reads the old record
    assert len(t) == 0 and t.open_alerts() == []
    t.observe(ev(2, "raised"), T0 + 6 + HOUR_MS)  # a new alert after the cutoff opens as ever
    assert [x.alert_id for x in t.open_alerts()] == [ev(2, "raised").alert_id]
