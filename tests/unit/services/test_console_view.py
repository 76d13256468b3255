"""The console's view model: alerts, acks and scores folded into what the page shows."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ack_api import AckRecord, AlertBook
from services.console_view import (
    HR_FROM_LAST_RR,
    ConsoleRecordError,
    ConsoleView,
    decode_score,
)
from streaming.events import SCORE_SCHEMA, AlertEvent, ScoredBeat

T0 = 1_700_000_000_000
FS = 125


def _strip(start_ms: int, seconds: float = 6.0) -> dict[str, Any]:
    return {"sample_rate_hz": FS, "start_ts_ms": start_ms, "units": "mV",
            "samples_mv": [round(math.sin(i / 10), 3) for i in range(int(seconds * FS))]}


def _ev(action: str = "raised", *, patient: str = "p1", alert: str | None = None, priority: str = "high",
        revision: int = 1, detected: int = T0 + 2000, level: int = 0, strip: dict[str, Any] | None = None,
        condition: str = "ventricular_run", category: str = "physiological", **details: Any) -> AlertEvent:
    return AlertEvent(alert_id=alert or f"{patient}:{condition}", revision=revision, action=action,  # type: ignore[arg-type]
                      patient_id=patient, device_id=f"d-{patient}", condition=condition,
                      category=category, priority=priority, onset_ts_ms=T0,  # type: ignore[arg-type]
                      detected_ts_ms=detected, rule=f"rule for {action}", escalation_level=level,
                      strip=strip, produced_wall_ms=T0 + 2100, details=details)


def _beat(ts: int, *, patient: str = "p1", rr: float | None = 800.0, flagged: bool = False,
          cls: str = "N", sq: float = 0.9) -> ScoredBeat:
    return ScoredBeat(beat_id=f"{patient}:{ts}", patient_id=patient, device_id=f"d-{patient}", r_ts_ms=ts,
                      rr_ms=rr, score=0.9 if flagged else 0.1, threshold=0.5, flagged=flagged,
                      signal_quality=sq, model_version="t/1", beat_class=cls)


def _score_json(b: ScoredBeat) -> bytes:
    return b.to_json()


def _without_seq(snapshot: dict[str, Any]) -> dict[str, Any]:
    return {"patients": [{k: v for k, v in p.items() if k != "seq"} for p in snapshot["patients"]],
            "alerts": [{k: v for k, v in a.items() if k != "seq"} for a in snapshot["alerts"]]}


def test_a_raised_alert_carries_its_strip_and_marks_the_beats_inside_it() -> None:
    v = ConsoleView()
    start = T0 - 4000
    v.apply_beat(_beat(start - 500))  # before the strip: not marked
    v.apply_beat(_beat(start + 300, flagged=True, cls="V"))  # scored before the alert arrives
    v.apply_alert(_ev(strip=_strip(start)), log_ts_ms=T0 + 2200)
    v.apply_beat(_beat(start + 1100))  # scored after it
    v.apply_beat(_beat(start + 6100))  # past the strip's end (6 s): not marked
    (a,) = v.open_alerts()
    d = a.to_dict()
    assert d["strip"]["end_ts_ms"] == start + 6000 and len(d["strip"]["samples_mv"]) == 6 * FS
    assert d["marks"] == [{"ts_ms": start + 300, "flagged": True, "beat_class": "V"},
                          {"ts_ms": start + 1100, "flagged": False, "beat_class": "N"}]
    assert d["raised_wall_ms"] == T0 + 2100  # produced_wall_ms, not the log time
    assert d["status"] == "open" and not d["latched"] and d["open"]


def test_open_alerts_are_sorted_by_priority_then_oldest_raise_first() -> None:
    v = ConsoleView()
    v.apply_alert(_ev(alert="low-old", priority="low", detected=T0))
    v.apply_alert(_ev(alert="high-new", priority="high", detected=T0 + 5000))
    v.apply_alert(_ev(alert="medium", priority="medium", detected=T0 + 1000))
    v.apply_alert(_ev(alert="high-old", priority="high", detected=T0 + 1000))
    assert [a.alert_id for a in v.open_alerts()] == ["high-old", "high-new", "medium", "low-old"]
    assert [a["alert_id"] for a in v.snapshot()["alerts"]] == ["high-old", "high-new", "medium", "low-old"]


def test_a_cleared_high_alert_stays_latched_until_acknowledged() -> None:
    v = ConsoleView()
    v.apply_alert(_ev(strip=_strip(T0 - 4000)))
    v.apply_alert(_ev("cleared", revision=2, detected=T0 + 12_000))
    (a,) = v.snapshot()["alerts"]
    assert a["latched"] and a["status"] == "open" and a["cleared_ts_ms"] == T0 + 12_000
    assert a["rule"] == "rule for raised" and a["cleared_rule"] == "rule for cleared"  # the rule that fired stays
    assert v.highest_open_priority("p1") == "high"
    assert v.rhythm("p1") == "no beats yet"  # the condition is over: the rhythm is the beats' again
    v.apply_ack(AckRecord("p1:ventricular_run", "ack", "nurse.a", T0 + 20_000, None, "ward"))
    assert v.open_alerts() == [] and v.alerts["p1:ventricular_run"].status == "closed"
    assert v.highest_open_priority("p1") is None


def test_acknowledged_alert_shows_who_and_when_and_stays_until_its_condition_ends() -> None:
    v = ConsoleView()
    v.apply_alert(_ev())
    v.apply_ack(AckRecord("p1:ventricular_run", "ack", "nurse.a", T0 + 5000, None, "ward"))
    v.apply_ack(AckRecord("p1:ventricular_run", "ack", "nurse.b", T0 + 6000, None, "ward"))
    (a,) = v.snapshot()["alerts"]
    assert (a["status"], a["acknowledged_by"], a["acknowledged_team"], a["acknowledged_ms"]) == (
        "acknowledged", "nurse.a", "ward", T0 + 5000)  # the first who answered, as the ack API keeps it
    v.apply_alert(_ev("escalated", level=1))  # a late escalation echo never lowers what is shown
    v.apply_alert(_ev("updated", revision=2, detected=T0 + 8000))
    assert v.open_alerts()[0].status == "acknowledged" and v.open_alerts()[0].escalation_level == 1
    v.apply_alert(_ev("cleared", revision=3, detected=T0 + 20_000))
    assert v.open_alerts() == []


def test_the_dispatchers_acknowledged_and_resolved_events_count_too() -> None:
    v = ConsoleView()
    v.apply_alert(_ev())
    v.apply_alert(_ev("acknowledged", acknowledged_by="nurse.c", by_team="ward", wall_ms=T0 + 7000))
    a = v.alerts["p1:ventricular_run"]
    assert (a.status, a.acknowledged_by, a.acknowledged_team, a.acknowledged_ms) == (
        "acknowledged", "nurse.c", "ward", T0 + 7000)
    v.apply_alert(_ev("resolved", resolved_by="nurse.c", wall_ms=T0 + 9000))
    assert (a.status, a.resolved_by, a.resolved_ms) == ("resolved", "nurse.c", T0 + 9000)
    v.apply_alert(_ev("updated", revision=5))  # finished is final
    assert a.status == "resolved" and v.open_alerts() == []


def test_an_ack_read_before_its_alert_is_applied_when_the_alert_arrives() -> None:
    v = ConsoleView()
    v.apply_ack(AckRecord("p1:ventricular_run", "ack", "nurse.a", T0 + 5000, None, "ward"))
    assert v.alerts == {}
    v.apply_alert(_ev())
    assert v.alerts["p1:ventricular_run"].status == "acknowledged"


def test_patient_heart_rate_quality_rhythm_and_last_data() -> None:
    v = ConsoleView()
    rrs = [1000.0] * 3 + [600.0] * HR_FROM_LAST_RR  # older beats fall out of the median
    for i, rr in enumerate(rrs):
        v.apply_beat(_beat(T0 + 1000 * i, rr=rr, sq=0.5 + i / 100), log_ts_ms=T0 + 1000 * i + 300)
    p = v.patient_dict(v.patients["p1"])
    assert p["hr_bpm"] == 100.0 and p["signal_quality"] == pytest.approx(0.5 + (len(rrs) - 1) / 100)
    assert p["rhythm"] == "regular" and p["priority"] is None and p["open_alerts"] == 0
    assert p["last_data_wall_ms"] == T0 + 1000 * (len(rrs) - 1) + 300
    assert p["last_beat_ts_ms"] == T0 + 1000 * (len(rrs) - 1)
    v.apply_beat(_beat(T0 + 60_000, flagged=True, cls="V"), log_ts_ms=T0)  # an older log time: kept the newest
    assert v.patient_dict(v.patients["p1"])["last_data_wall_ms"] == T0 + 1000 * (len(rrs) - 1) + 300
    assert v.rhythm("p1") == "1 of 10 beats abnormal"
    v.apply_alert(_ev(priority="medium", condition="tachycardia"))
    p = v.patient_dict(v.patients["p1"])
    assert p["rhythm"] == "tachycardia" and p["priority"] == "medium" and p["open_alerts"] == 1
    v.apply_alert(_ev(alert="lead", condition="lead_off", category="technical", priority="high"))
    assert v.patient_dict(v.patients["p1"])["priority"] == "high"
    assert v.rhythm("p1") == "tachycardia"  # a technical alert says nothing of the rhythm


def test_replayed_and_reordered_beats_keep_the_ring_in_time_order() -> None:
    v = ConsoleView()
    for ts in (T0 + 2000, T0 + 1000, T0 + 2000, T0 + 3000):
        v.apply_beat(_beat(ts))
    assert [b[0] for b in v.patients["p1"].beats] == [T0 + 1000, T0 + 2000, T0 + 3000]


def test_undecodable_records_are_counted_and_change_nothing() -> None:
    v = ConsoleView()
    bad: list[tuple[Any, bytes | None]] = [
        ("alerts", b"not json"), ("alerts", b"[]"), ("alerts", None), ("acks", b'{"action":"ack"}'),
        ("scores", b'{"schema":"cardiowatch.score/1"}'), ("scores", b"\xff"), ("scores", b"null")]
    for topic, raw in bad:
        assert v.apply_record(topic, raw, T0) is False
    assert v.undecodable == {"alerts": 3, "acks": 1, "scores": 3}
    assert v.alerts == {} and v.patients == {}
    assert v.apply_record("scores", _score_json(_beat(T0)), T0) is True


@pytest.mark.parametrize("field,value,match", [
    ("schema", "cardiowatch.alert/1", "schema must be"),
    ("r_ts_ms", 1.5, "'r_ts_ms' must be epoch milliseconds"),
    ("r_ts_ms", True, "'r_ts_ms' must be epoch milliseconds"),
    ("rr_ms", -3, "'rr_ms' must be a positive number"),
    ("flagged", 1, "'flagged' must be true or false"),
    ("signal_quality", 1.5, "'signal_quality' must be in"),
    ("patient_id", 7, "'patient_id' must be a string"),
    ("beat_class", "", "'beat_class' must be a short string"),
])
def test_decode_score_names_the_bad_field(field: str, value: Any, match: str) -> None:
    d = json.loads(_beat(T0).to_json())
    d[field] = value
    with pytest.raises(ConsoleRecordError, match=match):
        decode_score(json.dumps(d))


def test_decode_score_round_trips_and_keeps_a_nan_score() -> None:
    b = _beat(T0, rr=None, flagged=True, cls="V")
    assert decode_score(b.to_json()) == b
    d = json.loads(b.to_json())
    d["score"] = float("nan")
    assert math.isnan(decode_score(json.dumps(d)).score)
    assert d["schema"] == SCORE_SCHEMA


@pytest.mark.parametrize("strip,problem", [
    ({"sample_rate_hz": 0, "start_ts_ms": T0, "samples_mv": [0, 1]}, "sample_rate_hz"),
    ({"sample_rate_hz": 125, "start_ts_ms": "x", "samples_mv": [0, 1]}, "start_ts_ms"),
    ({"sample_rate_hz": 125, "start_ts_ms": T0, "samples_mv": [0]}, "samples_mv must be a list"),
    ({"sample_rate_hz": 125, "start_ts_ms": T0, "samples_mv": [0, "1"]}, "only finite numbers"),
    ({"sample_rate_hz": 125, "start_ts_ms": T0, "samples_mv": [0, 1e300]}, "within +-50 mV"),
])
def test_an_unreadable_strip_is_named_and_the_alert_still_shown(strip: dict[str, Any], problem: str) -> None:
    v = ConsoleView()
    v.apply_alert(_ev(strip=strip))
    (a,) = v.snapshot()["alerts"]
    assert a["strip"] is None and problem in a["strip_problem"]


def test_changes_since_sends_only_what_changed_and_finished_alerts_once() -> None:
    v = ConsoleView()
    v.apply_alert(_ev(patient="p1"))
    v.apply_alert(_ev(patient="p2"))
    seq = v.seq
    assert v.changes_since(seq)["alerts"] == [] and v.changes_since(seq)["patients"] == []
    v.apply_beat(_beat(T0, patient="p2"))
    ch = v.changes_since(seq)
    assert [p["patient_id"] for p in ch["patients"]] == ["p2"] and ch["alerts"] == []
    seq = v.seq
    v.apply_ack(AckRecord("p1:ventricular_run", "resolve", "nurse.a", T0 + 1, None, "ward"))
    ch = v.changes_since(seq)
    assert [(a["alert_id"], a["open"]) for a in ch["alerts"]] == [("p1:ventricular_run", False)]
    assert [p["patient_id"] for p in ch["patients"]] == ["p1"]  # its colour changed
    assert [a["alert_id"] for a in v.snapshot()["alerts"]] == ["p2:ventricular_run"]
    json.dumps(v.snapshot(), allow_nan=False)  # what the browser parses


def test_finished_alerts_are_forgotten_oldest_first_and_open_ones_never() -> None:
    v = ConsoleView(max_finished=2)
    v.apply_alert(_ev(alert="open-one"))
    for i in range(4):
        v.apply_alert(_ev(alert=f"a{i}"))
        v.apply_ack(AckRecord(f"a{i}", "resolve", "n", T0 + i))
    assert sorted(v.alerts) == ["a2", "a3", "open-one"]
    assert sorted(v._by_patient["p1"]) == ["a2", "a3", "open-one"]


def test_a_nan_score_in_an_alert_reaches_the_page_as_null() -> None:
    v = ConsoleView()
    v.apply_alert(AlertEvent.from_dict({**_ev().to_dict(), "score": float("nan")}))
    assert v.snapshot()["alerts"][0]["score"] is None
    json.dumps(v.snapshot(), allow_nan=False)


def test_the_fold_does_not_depend_on_how_the_topics_interleave() -> None:
    """A live console sees beats, alerts and acks as they come; a rebuilt one reads alerts
    and acks first, then the scores: both must show the same page."""
    start = T0 - 4000
    beats = [_beat(start + 300 + 800 * k, flagged=k % 3 == 1, cls="V" if k % 3 == 1 else "N") for k in range(8)]
    alerts = [_ev(strip=_strip(start)), _ev(alert="p1:other", priority="medium", condition="tachycardia"),
              _ev("cleared", revision=2, detected=T0 + 12_000)]
    ack = AckRecord("p1:other", "ack", "nurse.a", T0 + 13_000, None, "ward")
    live = ConsoleView()
    for b in beats[:4]:
        live.apply_beat(b, T0)
    live.apply_alert(alerts[0], T0)
    for b in beats[4:]:
        live.apply_beat(b, T0)
    live.apply_alert(alerts[1], T0)
    live.apply_ack(ack)
    live.apply_alert(alerts[2], T0)
    rebuilt = ConsoleView()
    for ev in alerts:
        rebuilt.apply_alert(ev, T0)
    rebuilt.apply_ack(ack)
    for b in beats:
        rebuilt.apply_beat(b, T0)
    assert _without_seq(live.snapshot()) == _without_seq(rebuilt.snapshot())
    assert len(live.snapshot()["alerts"][0]["marks"]) == 8


# Any sequence of alert events and acks for two alerts: the console and the ack API's
# AlertBook must agree on every alert's status (the console shows what the API enforces).
_ACTIONS = st.sampled_from(["raised", "updated", "escalated", "cleared", "acknowledged", "resolved",
                            "ack", "resolve"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), _ACTIONS), min_size=1, max_size=12))
def test_statuses_agree_with_the_ack_apis_alert_book(ops: list[tuple[str, str]]) -> None:
    v, book = ConsoleView(), AlertBook()
    seen: set[str] = set()
    for i, (alert, action) in enumerate(ops):
        if action in ("ack", "resolve"):
            if alert not in seen:
                continue  # the book ignores acks of unknown alerts; the console holds them (tested above)
            rec = AckRecord(alert, action, "nurse", T0 + i)  # type: ignore[arg-type]
            v.apply_ack(rec)
            book.apply(rec)
        else:
            ev = _ev(action, alert=alert, revision=i + 1, detected=T0 + i)
            v.apply_alert(ev)
            book.observe(ev)
            seen.add(alert)
    for alert in seen:
        got, want = v.alerts[alert], book.get(alert)
        assert want is not None
        assert got.status == want.status, (ops, alert)
        assert got.escalation_level == want.escalation_level
    assert sorted(a.alert_id for a in v.open_alerts()) == sorted(a.alert_id for a in book.alerts(open_only=True))


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                     max_leaves=12)


def _near_valid(topic: str) -> st.SearchStrategy[dict[str, Any]]:
    """A valid record of ``topic`` with one field replaced by anything."""
    base = {"alerts": _ev(strip=_strip(T0)).to_dict(),
            "acks": json.loads(AckRecord("a", "ack", "n", T0, None, "ward").to_json()),
            "scores": json.loads(_beat(T0).to_json())}[topic]
    return st.builds(lambda k, v: {**base, k: v}, st.sampled_from(sorted(base)), _JSON)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["alerts", "acks", "scores"]).flatmap(
    lambda t: st.tuples(st.just(t), st.one_of(_near_valid(t), _JSON))))
def test_no_record_crashes_the_fold(case: tuple[str, Any]) -> None:
    topic, value = case
    v = ConsoleView()
    v.apply_record(topic, json.dumps(value).encode(), T0)  # type: ignore[arg-type]
    json.dumps(v.snapshot(), allow_nan=False)  # whatever it kept, the page can parse


def test_a_wards_console_shows_only_what_admit_lets_through() -> None:
    mine = {"p1"}
    v = ConsoleView(admit=lambda patient, condition, category: patient in mine)
    v.apply_alert(_ev(patient="p1"))
    v.apply_alert(_ev(patient="p2"))
    v.apply_beat(_beat(T0, patient="p2"))
    v.apply_ack(AckRecord("p2:ventricular_run", "ack", "n", T0))
    assert [a.alert_id for a in v.open_alerts()] == ["p1:ventricular_run"]
    assert sorted(v.patients) == ["p1"] and v.not_shown == 2
