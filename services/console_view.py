"""Console stage: the care-team console's view model, folded from the alerts, acks and scores topics.

Pure: no Kafka, HTTP or clock. :class:`ConsoleView` takes decoded records one at a time
(each with its Kafka record timestamp, ``log_ts_ms``, when it has one) and keeps what the
central-station page shows:

* one :class:`PatientView` per patient: heart rate (median of the last RR intervals on the
  scores topic), rhythm state, signal quality, when data last arrived, and the highest
  priority among the patient's alerts still open;
* one :class:`AlertView` per alert episode: condition, the rule that fired, onset and raise
  time, escalation level, who acknowledged it and when, the ECG strip the worker put in
  the ``raised`` record, and the beats of the scores topic that fall inside that strip
  (flagged ones marked).

An alert's status follows the acknowledgement API's :class:`services.ack_api.AlertBook`
exactly (tests hold the two to the same answers): *open* until a person acknowledges or
resolves it, even after its condition cleared (alerts latch); *acknowledged* while its
condition goes on; *closed* once acknowledged and over; *resolved* for good. The page
lists the alerts not yet closed or resolved, most urgent first: by priority, then the
oldest raise first (the alarm waiting longest is the one to answer next).

Everything is a pure function of the records, so a console rebuilt from the topics after
a restart, and a browser reloading mid-alarm, show the same state. Each change bumps a
sequence number (:attr:`ConsoleView.seq`) and stamps the items it touched, so the server
can send a browser only what changed since the number it last sent
(:meth:`ConsoleView.changes_since`).
"""

from __future__ import annotations

import json
import math
import statistics
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeGuard

from models.errors import CardiowatchError
from services.ack_api import FINISHED, AckRecord, Status
from streaming.events import PRIORITY_ORDER, SCORE_SCHEMA, AlertEvent, ScoredBeat

__all__ = [
    "Admit",
    "ConsoleRecordError",
    "BeatMark",
    "PatientView",
    "AlertView",
    "ConsoleView",
    "decode_score",
    "check_strip",
    "RECENT_BEATS",
    "HR_FROM_LAST_RR",
    "MAX_STRIP_SAMPLES",
    "MAX_STRIP_MV",
]

#: Beats remembered per patient: enough for a strip's beats (6 s at up to 240 bpm) and the
#: heart rate, and few enough that memory stays bounded by the census.
RECENT_BEATS = 32
#: The heart rate is 60 000 / the median of the last this many RR intervals (ms): a median
#: so that one missed or extra beat does not swing it.
HR_FROM_LAST_RR = 8
#: Rhythm from the classes of the last this many beats when no physiological alert is open.
RHYTHM_FROM_LAST_BEATS = 10
#: A strip longer than 60 s at 1 kHz is no strip of ours (the worker sends 6 s).
MAX_STRIP_SAMPLES = 60_000
#: An ECG sample beyond +-50 mV is no ECG (a QRS is a few mV): such a strip is not drawn.
MAX_STRIP_MV = 50.0

Topic = Literal["alerts", "acks", "scores"]
#: Whether the console shows a record of ``(patient_id, condition, category)``; beats ask
#: with condition ``""`` and category ``"physiological"``.
Admit = Callable[[str, str, str], bool]


class ConsoleRecordError(CardiowatchError, ValueError):
    """A record the console cannot use (a score that is not a ``cardiowatch.score/1``)."""


@dataclass(frozen=True, slots=True)
class BeatMark:
    """One beat inside an alert's strip, at event time ``ts_ms`` (its R peak)."""

    ts_ms: int
    flagged: bool
    beat_class: str

    def to_dict(self) -> dict[str, Any]:
        return {"ts_ms": self.ts_ms, "flagged": self.flagged, "beat_class": self.beat_class}


def _finite(v: Any) -> TypeGuard[int | float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def decode_score(raw: bytes | str) -> ScoredBeat:
    """Decode one record of the scores topic.

    Raises
    ------
    ConsoleRecordError
        Not JSON, another schema, or a missing or mistyped field (named).
    """
    try:
        d = json.loads(raw)
    except (ValueError, TypeError, RecursionError) as e:
        raise ConsoleRecordError(f"a score must be UTF-8 JSON: {str(e)[:120]}") from None
    if not isinstance(d, dict) or d.get("schema") != SCORE_SCHEMA:
        got = d.get("schema") if isinstance(d, dict) else type(d).__name__
        raise ConsoleRecordError(f"score schema must be {SCORE_SCHEMA!r}, got {got!r:.60}")
    for name in ("beat_id", "patient_id", "device_id", "model_version"):
        if not isinstance(d.get(name), str):
            raise ConsoleRecordError(f"score field {name!r} must be a string, got {d.get(name)!r:.60}")
    ts = d.get("r_ts_ms")
    if isinstance(ts, bool) or not isinstance(ts, int) or not 0 <= ts < 2**63:
        raise ConsoleRecordError(f"score field 'r_ts_ms' must be epoch milliseconds, got {ts!r:.60}")
    rr = d.get("rr_ms")
    if rr is not None and not (_finite(rr) and rr > 0):
        raise ConsoleRecordError(f"score field 'rr_ms' must be a positive number or null, got {rr!r:.60}")
    if not isinstance(d.get("flagged"), bool):
        raise ConsoleRecordError(f"score field 'flagged' must be true or false, got {d.get('flagged')!r:.60}")
    sq = d.get("signal_quality")
    if not (_finite(sq) and 0.0 <= sq <= 1.0):
        raise ConsoleRecordError(f"score field 'signal_quality' must be in [0, 1], got {sq!r:.60}")
    for name in ("score", "threshold"):
        if not (isinstance(d.get(name), float) or _finite(d.get(name))):  # NaN scores are scores
            raise ConsoleRecordError(f"score field {name!r} must be a number, got {d.get(name)!r:.60}")
    cls = d.get("beat_class", "?")
    if not isinstance(cls, str) or not 0 < len(cls) <= 2:
        raise ConsoleRecordError(f"score field 'beat_class' must be a short string, got {cls!r:.60}")
    return ScoredBeat(beat_id=d["beat_id"], patient_id=d["patient_id"], device_id=d["device_id"],
                      r_ts_ms=ts, rr_ms=None if rr is None else float(rr), score=float(d["score"]),
                      threshold=float(d["threshold"]), flagged=d["flagged"], signal_quality=float(sq),
                      model_version=d["model_version"], beat_class=cls)


def check_strip(strip: Any) -> str | None:
    """Why an alert's ``strip`` cannot be drawn, or None when it can."""
    if not isinstance(strip, dict):
        return f"the strip must be an object, got {type(strip).__name__}"
    fs, start, samples = strip.get("sample_rate_hz"), strip.get("start_ts_ms"), strip.get("samples_mv")
    if not (_finite(fs) and 1 <= fs <= 10_000):
        return f"strip sample_rate_hz must be in [1, 10000], got {fs!r:.40}"
    if isinstance(start, bool) or not isinstance(start, int):
        return f"strip start_ts_ms must be an integer, got {start!r:.40}"
    if not isinstance(samples, list) or not 2 <= len(samples) <= MAX_STRIP_SAMPLES:
        n = len(samples) if isinstance(samples, list) else type(samples).__name__
        return f"strip samples_mv must be a list of 2 to {MAX_STRIP_SAMPLES} numbers, got {n}"
    if not all(_finite(v) for v in samples):
        return "strip samples_mv must hold only finite numbers"
    if not all(-MAX_STRIP_MV <= v <= MAX_STRIP_MV for v in samples):
        return f"strip samples_mv must be within +-{MAX_STRIP_MV:g} mV"
    return None


@dataclass(slots=True)
class PatientView:
    """What the patient grid shows of one patient (``rhythm`` and the priority colour are
    derived from the patient's alerts by :meth:`ConsoleView.patient_dict`)."""

    patient_id: str
    device_id: str = ""
    # (r_ts_ms, rr_ms, flagged, beat_class, signal_quality) of the last RECENT_BEATS beats
    beats: deque[tuple[int, float | None, bool, str, float]] = field(
        default_factory=lambda: deque(maxlen=RECENT_BEATS))
    last_data_wall_ms: int | None = None  # Kafka timestamp of the patient's latest score
    seq: int = 0

    @property
    def hr_bpm(self) -> float | None:
        rr = [b[1] for b in self.beats if b[1] is not None][-HR_FROM_LAST_RR:]
        if not rr:
            return None
        return round(60_000.0 / statistics.median(rr), 1)

    @property
    def signal_quality(self) -> float | None:
        return round(self.beats[-1][4], 3) if self.beats else None

    @property
    def last_beat_ts_ms(self) -> int | None:
        return self.beats[-1][0] if self.beats else None


@dataclass(slots=True)
class AlertView:
    """One alert episode as the console shows it."""

    alert_id: str
    patient_id: str
    device_id: str
    condition: str
    category: str
    priority: str
    rule: str  # the rule that fired (a ``cleared`` event's own text goes to cleared_rule)
    onset_ts_ms: int
    raised_ts_ms: int  # event time the alert was first detected
    raised_wall_ms: int | None  # when the worker produced it (None: unknown)
    revision: int = 0
    escalation_level: int = 0
    status: Status = "open"
    cleared: bool = False  # the condition is over (the alert stays latched until acted on)
    cleared_ts_ms: int | None = None
    cleared_rule: str | None = None
    acknowledged_by: str | None = None
    acknowledged_team: str | None = None
    acknowledged_ms: int | None = None
    resolved_by: str | None = None
    resolved_ms: int | None = None
    score: float | None = None
    threshold: float | None = None
    signal_quality: float | None = None
    strip: dict[str, Any] | None = None
    strip_problem: str | None = None
    marks: dict[int, BeatMark] = field(default_factory=dict)
    seq: int = 0

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def strip_window_ms(self) -> tuple[float, float] | None:
        if self.strip is None:
            return None
        start = float(self.strip["start_ts_ms"])
        return start, start + len(self.strip["samples_mv"]) * 1000.0 / float(self.strip["sample_rate_hz"])

    def sort_key(self) -> tuple[int, int, str]:
        """Most urgent first: higher priority, then raised earlier, then id."""
        return (-PRIORITY_ORDER.get(self.priority, -1), self.raised_ts_ms, self.alert_id)

    def to_dict(self) -> dict[str, Any]:
        strip = None
        if self.strip is not None:
            window = self.strip_window_ms
            assert window is not None
            strip = {"sample_rate_hz": self.strip["sample_rate_hz"], "start_ts_ms": self.strip["start_ts_ms"],
                     "end_ts_ms": int(round(window[1])), "samples_mv": self.strip["samples_mv"]}
        return {
            "alert_id": self.alert_id, "patient_id": self.patient_id, "device_id": self.device_id,
            "condition": self.condition, "category": self.category, "priority": self.priority,
            "rule": self.rule, "onset_ts_ms": self.onset_ts_ms, "raised_ts_ms": self.raised_ts_ms,
            "raised_wall_ms": self.raised_wall_ms, "revision": self.revision,
            "escalation_level": self.escalation_level, "status": self.status,
            "open": not self.finished, "cleared": self.cleared, "cleared_ts_ms": self.cleared_ts_ms,
            "cleared_rule": self.cleared_rule,
            # latched: nobody has answered it, and its condition is already over
            "latched": self.status == "open" and self.cleared,
            "acknowledged_by": self.acknowledged_by, "acknowledged_team": self.acknowledged_team,
            "acknowledged_ms": self.acknowledged_ms, "resolved_by": self.resolved_by,
            "resolved_ms": self.resolved_ms, "score": _json_number(self.score),
            "threshold": _json_number(self.threshold), "signal_quality": _json_number(self.signal_quality),
            "strip": strip, "strip_problem": self.strip_problem,
            "marks": [m.to_dict() for _, m in sorted(self.marks.items())],
            "sort_key": list(self.sort_key()), "seq": self.seq,
        }


def _json_number(v: float | None) -> float | None:
    return v if v is None or math.isfinite(v) else None  # NaN is no JSON a browser parses


def _detail_text(details: dict[str, Any], key: str) -> str | None:
    v = details.get(key)
    return v if isinstance(v, str) and v else None


def _detail_ms(details: dict[str, Any], key: str) -> int | None:
    v = details.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63 else None


class ConsoleView:
    """The console's state: patients and alerts folded from the topics' records.

    Parameters
    ----------
    max_finished : int
        Closed and resolved alerts kept (oldest forgotten first), so a console running for
        months stays bounded; open ones are all kept.
    max_pending_acks : int
        Acks of alerts not seen yet (the acks and alerts topics are read side by side, so
        an ack can arrive first) held until their alert does.
    admit : callable, optional
        Which patients and alerts this console shows (a ward's console: its team's);
        default all. The others are counted in :attr:`not_shown` and kept nowhere.
    """

    def __init__(self, max_finished: int = 1000, max_pending_acks: int = 1000,
                 admit: Admit | None = None) -> None:
        if max_finished < 1 or max_pending_acks < 1:
            raise ValueError(f"max_finished and max_pending_acks must be >= 1, got {max_finished}, "
                             f"{max_pending_acks}")
        self.max_finished, self.max_pending_acks = max_finished, max_pending_acks
        self.patients: dict[str, PatientView] = {}
        self.alerts: dict[str, AlertView] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._pending: OrderedDict[str, list[AckRecord]] = OrderedDict()
        self._by_patient: dict[str, dict[str, None]] = {}  # patient id -> its alert ids
        self.seq = 0
        self.undecodable: dict[str, int] = {"alerts": 0, "acks": 0, "scores": 0}
        self._admit = admit
        self.not_shown = 0  # alert events and beats of other teams' patients

    # ------------------------------------------------------------------ inputs
    def apply_record(self, topic: Topic, raw: bytes | None, log_ts_ms: int | None = None) -> bool:
        """Decode and fold one record of ``topic``; False (and counted) when undecodable.

        A bad record never stops the console: it is counted in :attr:`undecodable`.
        """
        try:
            if topic == "alerts":
                self.apply_alert(AlertEvent.from_json(raw or b""), log_ts_ms)
            elif topic == "acks":
                self.apply_ack(AckRecord.from_json(raw or b""))
            else:
                self.apply_beat(decode_score(raw or b""), log_ts_ms)
        except (ValueError, TypeError):
            self.undecodable[topic] += 1
            return False
        return True

    def apply_beat(self, b: ScoredBeat, log_ts_ms: int | None = None) -> None:
        """One scored beat: the patient's heart rate, quality, last data; strip marks."""
        if self._admit is not None and not self._admit(b.patient_id, "", "physiological"):
            self.not_shown += 1
            return
        p = self._patient(b.patient_id)
        p.device_id = b.device_id
        if p.beats and b.r_ts_ms <= p.beats[-1][0]:
            # a replayed or reordered beat: keep the ring in time order, without repeats
            if any(x[0] == b.r_ts_ms for x in p.beats):
                return
            beats = sorted([*p.beats, (b.r_ts_ms, b.rr_ms, b.flagged, b.beat_class, b.signal_quality)])
            p.beats = deque(beats[-RECENT_BEATS:], maxlen=RECENT_BEATS)
        else:
            p.beats.append((b.r_ts_ms, b.rr_ms, b.flagged, b.beat_class, b.signal_quality))
        if log_ts_ms is not None:
            p.last_data_wall_ms = max(p.last_data_wall_ms or 0, log_ts_ms)
        self._touch(p)
        for a in self._alerts_of(b.patient_id):
            if not a.finished and self._mark(a, b.r_ts_ms, b.flagged, b.beat_class):
                self._touch(a)

    def apply_alert(self, ev: AlertEvent, log_ts_ms: int | None = None) -> None:
        """One event of the alerts topic (worker and dispatcher alike)."""
        if self._admit is not None and not self._admit(ev.patient_id, ev.condition, ev.category):
            self.not_shown += 1
            return
        a = self.alerts.get(ev.alert_id)
        if a is not None and a.finished:
            return  # finished is final: later events of it (replays, echoes) change nothing
        if a is None:
            a = self.alerts[ev.alert_id] = AlertView(
                alert_id=ev.alert_id, patient_id=ev.patient_id, device_id=ev.device_id,
                condition=ev.condition, category=ev.category, priority=ev.priority, rule=ev.rule,
                onset_ts_ms=int(ev.onset_ts_ms), raised_ts_ms=int(ev.detected_ts_ms),
                raised_wall_ms=ev.produced_wall_ms if ev.produced_wall_ms is not None else log_ts_ms)
            self._by_patient.setdefault(ev.patient_id, {})[ev.alert_id] = None
            self._patient(ev.patient_id)
        if ev.strip is not None and a.strip is None and a.strip_problem is None:
            a.strip_problem = check_strip(ev.strip)
            if a.strip_problem is None:
                a.strip = ev.strip
                p = self.patients.get(a.patient_id)
                for ts, _, flagged, cls, _ in (p.beats if p is not None else ()):
                    self._mark(a, ts, flagged, cls)
        a.escalation_level = max(a.escalation_level, ev.escalation_level)
        act, details = ev.action, ev.details
        if act in ("raised", "updated"):
            if ev.revision >= a.revision:
                a.revision, a.priority, a.rule = ev.revision, ev.priority, ev.rule
                a.score, a.threshold, a.signal_quality = ev.score, ev.threshold, ev.signal_quality
                a.onset_ts_ms = min(a.onset_ts_ms, int(ev.onset_ts_ms))
                a.cleared, a.cleared_ts_ms, a.cleared_rule = False, None, None
        elif act == "cleared":
            a.revision = max(a.revision, ev.revision)
            a.cleared, a.cleared_ts_ms, a.cleared_rule = True, int(ev.detected_ts_ms), ev.rule
            if a.status == "acknowledged":
                a.status = "closed"
        elif act == "acknowledged":
            self._acknowledged(a, _detail_text(details, "acknowledged_by") or "?",
                               _detail_text(details, "by_team"), _detail_ms(details, "wall_ms") or log_ts_ms)
        elif act == "resolved":
            a.status = "resolved"
            a.resolved_by = _detail_text(details, "resolved_by") or a.resolved_by
            a.resolved_ms = a.resolved_ms or _detail_ms(details, "wall_ms") or log_ts_ms
        self._settle(a)
        for rec in self._pending.pop(ev.alert_id, []):
            self.apply_ack(rec)

    def apply_ack(self, rec: AckRecord) -> None:
        """One record of the acks topic (written by the ack API)."""
        a = self.alerts.get(rec.alert_id)
        if a is None:
            held = self._pending.setdefault(rec.alert_id, [])
            held.append(rec)
            self._pending.move_to_end(rec.alert_id)
            while len(self._pending) > self.max_pending_acks:
                self._pending.popitem(last=False)
            return
        if a.finished:
            return
        if rec.action == "resolve":
            a.status = "resolved"
            a.resolved_by, a.resolved_ms = a.resolved_by or rec.by, a.resolved_ms or rec.ts_ms
            if a.acknowledged_by is None:
                a.acknowledged_by, a.acknowledged_team, a.acknowledged_ms = rec.by, rec.team, rec.ts_ms
        else:
            self._acknowledged(a, rec.by, rec.team, rec.ts_ms)
        self._settle(a)

    # ------------------------------------------------------------------ outputs
    def open_alerts(self) -> list[AlertView]:
        """Alerts not closed or resolved, most urgent first."""
        return sorted((a for a in self.alerts.values() if not a.finished), key=AlertView.sort_key)

    def highest_open_priority(self, patient_id: str) -> str | None:
        best: str | None = None
        for a in self._alerts_of(patient_id):
            if not a.finished and (best is None or PRIORITY_ORDER[a.priority] > PRIORITY_ORDER[best]):
                best = a.priority
        return best

    def rhythm(self, patient_id: str) -> str:
        """The open physiological alert of highest priority whose condition goes on, else
        what the last beats' classes say."""
        going = [a for a in self._alerts_of(patient_id)
                 if not a.finished and not a.cleared and a.category == "physiological"]
        if going:
            return min(going, key=AlertView.sort_key).condition.replace("_", " ")
        p = self.patients.get(patient_id)
        last = list(p.beats)[-RHYTHM_FROM_LAST_BEATS:] if p is not None else []
        if not last:
            return "no beats yet"
        flagged = sum(1 for b in last if b[2])
        ectopic = sum(1 for b in last if b[3] in ("V", "S", "F"))
        if flagged or ectopic:
            return f"{max(flagged, ectopic)} of {len(last)} beats abnormal"
        return "regular"

    def patient_dict(self, p: PatientView) -> dict[str, Any]:
        return {"patient_id": p.patient_id, "device_id": p.device_id, "hr_bpm": p.hr_bpm,
                "rhythm": self.rhythm(p.patient_id), "signal_quality": p.signal_quality,
                "last_beat_ts_ms": p.last_beat_ts_ms, "last_data_wall_ms": p.last_data_wall_ms,
                "priority": self.highest_open_priority(p.patient_id),
                "open_alerts": sum(1 for a in self._alerts_of(p.patient_id) if not a.finished),
                "seq": p.seq}

    def snapshot(self) -> dict[str, Any]:
        """Everything a browser needs to draw the page from nothing."""
        return {"seq": self.seq,
                "patients": [self.patient_dict(p) for _, p in sorted(self.patients.items())],
                "alerts": [a.to_dict() for a in self.open_alerts()],
                "undecodable": dict(self.undecodable)}

    def changes_since(self, seq: int) -> dict[str, Any]:
        """Patients and alerts changed after ``seq`` (finished alerts included, so that a
        browser drops them), and the current :attr:`seq`."""
        return {"seq": self.seq,
                "patients": [self.patient_dict(p) for _, p in sorted(self.patients.items()) if p.seq > seq],
                "alerts": [a.to_dict() for a in sorted(self.alerts.values(), key=AlertView.sort_key)
                           if a.seq > seq],
                "undecodable": dict(self.undecodable)}

    def strip_from_ts_ms(self) -> int | None:
        """Event time of the earliest strip among open alerts (the scores to read back on a
        rebuild so that their beats are marked), or None."""
        starts = [int(a.strip["start_ts_ms"]) for a in self.alerts.values()
                  if not a.finished and a.strip is not None]
        return min(starts) if starts else None

    def earliest_open_strip_wall_ms(self) -> int | None:
        """When the earliest open alert with a strip was produced (wall clock), or None."""
        walls = [a.raised_wall_ms for a in self.alerts.values()
                 if not a.finished and a.strip is not None and a.raised_wall_ms is not None]
        return min(walls) if walls else None

    # ------------------------------------------------------------------ helpers
    def _patient(self, patient_id: str) -> PatientView:
        p = self.patients.get(patient_id)
        if p is None:
            p = self.patients[patient_id] = PatientView(patient_id)
            self._touch(p)
        return p

    def _alerts_of(self, patient_id: str) -> Iterable[AlertView]:
        return [self.alerts[i] for i in self._by_patient.get(patient_id, ())]

    def _touch(self, item: PatientView | AlertView) -> None:
        self.seq += 1
        item.seq = self.seq

    @staticmethod
    def _mark(a: AlertView, ts_ms: int, flagged: bool, beat_class: str) -> bool:
        window = a.strip_window_ms
        if window is None or not window[0] <= ts_ms <= window[1]:
            return False
        mark = BeatMark(ts_ms, flagged, beat_class)
        if a.marks.get(ts_ms) == mark:
            return False
        a.marks[ts_ms] = mark
        return True

    @staticmethod
    def _acknowledged(a: AlertView, by: str, team: str | None, at_ms: int | None) -> None:
        a.status = "closed" if a.cleared else "acknowledged"
        if a.acknowledged_by is None:  # the first person who answered it, as the ack API keeps it
            a.acknowledged_by, a.acknowledged_team, a.acknowledged_ms = by, team, at_ms
        elif a.acknowledged_team is None:
            a.acknowledged_team = team

    def _settle(self, a: AlertView) -> None:
        """Stamp the change on the alert and its patient; forget the oldest finished."""
        self._touch(a)
        p = self.patients.get(a.patient_id)
        if p is not None:
            self._touch(p)  # its colour, rhythm and alert count may have changed
        if a.finished:
            self._finished.pop(a.alert_id, None)
            self._finished[a.alert_id] = None
            while len(self._finished) > self.max_finished:
                oldest, _ = self._finished.popitem(last=False)
                gone = self.alerts.pop(oldest, None)
                if gone is not None:
                    self._by_patient.get(gone.patient_id, {}).pop(oldest, None)
