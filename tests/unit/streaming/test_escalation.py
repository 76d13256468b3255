"""Unit tests of the escalation tracker (streaming/escalation.py): pure, wall time passed in."""

from __future__ import annotations

import dataclasses
import json

import pytest

from streaming.escalation import EscalationConfig, EscalationTracker
from streaming.events import AlertEvent

W0 = 1_700_000_000_000  # wall-clock origin, epoch ms
S = 1000


def alert(action: str = "raised", priority: str = "high", revision: int = 1,
          condition: str = "pause", onset: int = W0 - 5000) -> AlertEvent:
    return AlertEvent(alert_id=f"p1:{condition}:{onset}", revision=revision,
                      action=action, patient_id="p1", device_id="d1",  # type: ignore[arg-type]
                      condition=condition, category="physiological",
                      priority=priority, onset_ts_ms=onset,  # type: ignore[arg-type]
                      detected_ts_ms=onset + 4000, rule="RR 4.0 s >= pause limit 4 s",
                      details={"pause_s": 4.0})


def test_escalates_on_time_not_before_and_never_beyond_max_level() -> None:
    t = EscalationTracker(EscalationConfig())
    a = alert()
    t.observe(a, W0)
    assert t.next_deadline_ms() == W0 + 120 * S
    assert t.due(W0 + 120 * S - 1) == []
    evs = t.due(W0 + 120 * S)
    assert [(e.action, e.escalation_level, e.alert_id) for e in evs] == [
        ("escalated", 1, a.alert_id)]
    assert evs[0].event_id == f"{a.alert_id}:escalated:1:1"
    assert t.due(W0 + 239 * S) == []
    assert [e.escalation_level for e in t.due(W0 + 240 * S)] == [2]
    assert t.due(W0 + 10_000 * S) == []  # max_level 2 reached, repeat off
    assert t.next_deadline_ms() is None


def test_medium_and_low_do_not_escalate_by_default() -> None:
    t = EscalationTracker()
    t.observe(alert(priority="medium", condition="tachycardia"), W0)
    t.observe(alert(priority="low", condition="anomalous_beats"), W0)
    assert t.due(W0 + 3600 * S) == []
    assert len(t.open_alerts()) == 2


def test_acknowledge_stops_escalation() -> None:
    t = EscalationTracker()
    a = alert()
    t.observe(a, W0)
    ack = t.acknowledge(a.alert_id, W0 + 60 * S, by="nurse.kim")
    assert ack is not None and ack.action == "acknowledged"
    assert ack.details["acknowledged_by"] == "nurse.kim" and ack.details["wall_ms"] == W0 + 60 * S
    assert t.due(W0 + 3600 * S) == []
    assert t.acknowledge(a.alert_id, W0 + 61 * S, by="x") is None  # already acknowledged
    assert t.acknowledge("p1:nope:1", W0, by="x") is None  # unknown id
    # acknowledged but still active: stays open until cleared
    assert [e.details["acknowledged"] for e in t.open_alerts()] == [True]
    t.observe(alert(action="cleared", revision=2), W0 + 90 * S)
    assert t.open_alerts() == []


def test_latched_after_clear_until_acknowledged_and_keeps_escalating() -> None:
    t = EscalationTracker()
    a = alert()
    t.observe(a, W0)
    t.observe(alert(action="cleared", revision=2), W0 + 30 * S)
    opened = t.open_alerts()
    assert [(e.alert_id, e.details["latched"]) for e in opened] == [(a.alert_id, True)]
    assert [e.escalation_level for e in t.due(W0 + 120 * S)] == [1]
    assert t.acknowledge(a.alert_id, W0 + 130 * S, by="dr.o") is not None
    assert t.open_alerts() == []


def test_resolve_closes_and_unknown_returns_none() -> None:
    t = EscalationTracker()
    a = alert()
    t.observe(a, W0)
    ev = t.resolve(a.alert_id, W0 + S, by="dr.o")
    assert ev is not None and ev.action == "resolved" and ev.details["resolved_by"] == "dr.o"
    assert t.open_alerts() == [] and t.due(W0 + 3600 * S) == []
    assert t.resolve(a.alert_id, W0 + 2 * S, by="dr.o") is None


def test_priority_rise_arms_escalation_even_after_ack() -> None:
    t = EscalationTracker()
    m = alert(priority="medium", condition="tachycardia")
    t.observe(m, W0)
    t.acknowledge(m.alert_id, W0 + S, by="n")
    t.observe(dataclasses.replace(m, action="updated", revision=2, priority="high"),
              W0 + 10 * S)
    evs = t.due(W0 + 130 * S)
    assert [(e.priority, e.escalation_level) for e in evs] == [("high", 1)]


def test_repeat_sends_reminders_at_max_level() -> None:
    t = EscalationTracker(EscalationConfig(max_level=1, repeat=True))
    t.observe(alert(), W0)
    assert [e.escalation_level for e in t.due(W0 + 120 * S)] == [1]
    evs = t.due(W0 + 240 * S)
    assert [(e.escalation_level, e.details["reminder"]) for e in evs] == [(1, 1)]
    evs2 = t.due(W0 + 360 * S)
    assert [e.details["reminder"] for e in evs2] == [2]
    # each reminder is a distinct delivery for receivers that deduplicate on webhook-id
    ids = [e.event_id for e in evs + evs2]
    assert len(set(ids)) == 2 and ids[0].endswith(":r1") and ids[1].endswith(":r2")


def _live_run(t: EscalationTracker) -> list[tuple[AlertEvent, int]]:
    """Drive a tracker as the dispatcher would; return the alerts-topic log with wall times."""
    log: list[tuple[AlertEvent, int]] = []
    a, b = alert(), alert(condition="ventricular_run", onset=W0 - 1000)
    for ev, now in ((a, W0), (b, W0 + 10 * S)):
        t.observe(ev, now)
        log.append((ev, now))
    for now in (W0 + 120 * S, W0 + 130 * S):
        for ev in t.due(now):
            log.append((ev, now))  # the dispatcher logs its escalations on the alerts topic
    cleared = alert(action="cleared", revision=2)
    t.observe(cleared, W0 + 140 * S)
    log.append((cleared, W0 + 140 * S))
    return log


def test_rebuild_from_replay_gives_the_same_state() -> None:
    live = EscalationTracker()
    log = _live_run(live)
    acks = [(log[1][0].alert_id, W0 + 150 * S, "nurse.kim")]  # the acks topic
    for alert_id, now, by in acks:
        live.acknowledge(alert_id, now, by)

    rebuilt = EscalationTracker()
    for ev, now in log:
        rebuilt.observe(ev, now)
    for alert_id, now, by in acks:
        rebuilt.acknowledge(alert_id, now, by)
    assert rebuilt.to_dict() == live.to_dict()
    # and both escalate the remaining (latched, unacknowledged) alert identically
    assert [e.to_dict() for e in rebuilt.due(W0 + 240 * S)] == \
        [e.to_dict() for e in live.due(W0 + 240 * S)] != []


def test_state_round_trips_through_json_mid_escalation() -> None:
    t = EscalationTracker()
    t.observe(alert(), W0)
    t.due(W0 + 120 * S)
    d = json.loads(json.dumps(t.to_dict()))
    r = EscalationTracker.from_dict(d, EscalationConfig())
    assert r.to_dict() == t.to_dict()
    assert [e.to_dict() for e in r.due(W0 + 240 * S)] == \
        [e.to_dict() for e in t.due(W0 + 240 * S)]


def test_replayed_duplicates_change_nothing() -> None:
    t = EscalationTracker()
    a = alert()
    t.observe(a, W0)
    before = t.to_dict()
    t.observe(a, W0 + 5 * S)  # redelivered after a restart
    assert t.to_dict() == before


@pytest.mark.parametrize("kwargs,needle", [
    ({"escalate_after_s": {"urgent": 10.0}}, "urgent"),
    ({"escalate_after_s": {"high": 0.0}}, "high"),
    ({"max_level": -1}, "max_level"),
])
def test_config_validation_names_the_bad_value(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        EscalationConfig(**kwargs)
