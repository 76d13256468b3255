"""Events passed between stages: scored beats, heart-rate observations, alerts.

These frozen dataclasses are the contract between the stream core (``streaming``),
the alert policy and the dispatcher (``services``). Every timestamp is event time in
epoch milliseconds (``*_ts_ms``) taken from the wearable's messages, never the wall
clock, except ``produced_wall_ms`` which records when the worker emitted an alert.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, get_args

from streaming import jsoncodec
from streaming.errors import AlertDecodeError

__all__ = [
    "ALERT_SCHEMA",
    "SCORE_SCHEMA",
    "Priority",
    "Category",
    "AlertAction",
    "ScoredBeat",
    "HRObservation",
    "QualityObservation",
    "VFObservation",
    "ClockEventKind",
    "DeviceClockEvent",
    "AlertEvent",
    "AlertDecodeError",
]

ALERT_SCHEMA = "cardiowatch.alert/1"
SCORE_SCHEMA = "cardiowatch.score/1"

Priority = Literal["high", "medium", "low"]
Category = Literal["physiological", "technical"]
#: ``jump``: the device's clock moved and the stream was re-anchored to its new time;
#: ``glitch``: one message was stamped off the stream's time and set aside; ``restart``:
#: the device restarted its sequence numbers (a new stream epoch).
ClockEventKind = Literal["jump", "glitch", "restart"]
AlertAction = Literal["raised", "updated", "escalated", "cleared", "acknowledged", "resolved"]

PRIORITY_ORDER: dict[str, int] = {"low": 0, "medium": 1, "high": 2}


@dataclass(frozen=True, slots=True)
class ScoredBeat:
    """One beat found by the QRS detector and scored by the ECG detector.

    ``beat_id`` is stable across replays: ``f"{patient_id}:{r_sample}"`` where
    ``r_sample`` counts samples at the model rate since the patient's first chunk.
    """

    beat_id: str
    patient_id: str
    device_id: str
    r_ts_ms: int
    rr_ms: float | None  # interval from the previous beat; None for the first beat
    score: float
    threshold: float
    flagged: bool
    signal_quality: float  # 0 (unusable) .. 1 (clean)
    model_version: str
    # From the beat classifier (None for a bundle without one): the beat's class
    # (N, S, V, F, Q, X = not a beat; "?" unknown), its ventricular probability alone and
    # inside a run (see models.ecg.classifier), and the autoencoder's reconstruction error.
    beat_class: str = "?"
    p_ventricular: float | None = None
    p_run: float | None = None
    ae_score: float | None = None

    def to_json(self) -> bytes:
        # every field is a scalar: a flat dict, not asdict's recursive deep copy (hot path,
        # one record per beat)
        d = {name: getattr(self, name) for name in _SCORE_FIELDS}
        d["schema"] = SCORE_SCHEMA
        return jsoncodec.dumps(d)


_SCORE_FIELDS = tuple(f.name for f in fields(ScoredBeat))


@dataclass(frozen=True, slots=True)
class HRObservation:
    """Heart rate reported by the wearable (or derived from beats), in event time."""

    patient_id: str
    device_id: str
    ts_ms: int
    hr_bpm: float
    rr_ms: tuple[float, ...] = ()
    quality: float | None = None
    hr_score: float | None = None  # heart-rate autoencoder score when a model scored it
    hr_threshold: float | None = None
    # AF detector: probability of atrial fibrillation over the RR history up to this
    # message, and the operating threshold it is compared with (None: not scored)
    af_probability: float | None = None
    af_threshold: float | None = None


@dataclass(frozen=True, slots=True)
class QualityObservation:
    """Signal quality of one ECG chunk."""

    patient_id: str
    device_id: str
    ts_ms: int
    duration_ms: int
    quality: float  # 0..1
    lead_off: bool
    noisy: bool


@dataclass(frozen=True, slots=True)
class VFObservation:
    """The ventricular-fibrillation detector's score of one ECG window (models.ecg.vf).

    ``ts_ms`` is the window's end (the event time its score is known); the window covers
    ``[ts_ms - duration_ms, ts_ms)``. ``quality`` is that of the chunk the window ends in.
    """

    patient_id: str
    device_id: str
    ts_ms: int
    duration_ms: int
    probability: float  # 0..1
    threshold: float
    quality: float | None = None
    model_version: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceClockEvent:
    """A device's clock or sequence misbehaved (see :mod:`streaming.position`).

    ``ts_ms`` is the event time where it happened, in the stream's time base after the
    event; ``shift_ms`` is what the event moved that time base by (0: kept), so that
    every event time a patient's state holds can follow it. ``old_seq`` / ``old_ts_ms``
    are where the stream was (the end of its last message), ``seq`` / ``stamped_ts_ms``
    what the message that showed the event carried.
    """

    patient_id: str
    device_id: str
    ts_ms: int
    kind: ClockEventKind
    direction: Literal["forward", "backward", "none"]
    shift_ms: int
    old_seq: int | None
    old_ts_ms: int | None
    seq: int
    stamped_ts_ms: int
    quality: float | None = None

    def describe(self) -> str:
        what = {"jump": f"clock jumped {self.direction} by {self.shift_ms / 1000:+.1f} s; "
                        "time base re-anchored",
                "glitch": "one message stamped off the stream's time was set aside",
                "restart": "sequence restarted: new stream epoch"
                           + (f", time base moved by {self.shift_ms / 1000:+.1f} s"
                              if self.shift_ms else "")}[self.kind]
        return (f"patient {self.patient_id} device {self.device_id}: {what} "
                f"(seq {self.old_seq} -> {self.seq}, ts_ms {self.old_ts_ms} -> {self.stamped_ts_ms})")


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One change in the life of an alert; the ``alerts`` topic is their audit log.

    ``alert_id`` names the episode (patient, condition, onset); ``event_id`` names this
    change of it and is what webhook receivers deduplicate on (``webhook-id``).
    """

    alert_id: str
    revision: int
    action: AlertAction
    patient_id: str
    device_id: str
    condition: str
    category: Category
    priority: Priority
    onset_ts_ms: int
    detected_ts_ms: int
    rule: str
    score: float | None = None
    threshold: float | None = None
    model_version: str | None = None
    signal_quality: float | None = None
    strip: dict[str, Any] | None = None  # {"sample_rate_hz", "start_ts_ms", "samples_mv"}
    escalation_level: int = 0
    produced_wall_ms: int | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def event_id(self) -> str:
        base = f"{self.alert_id}:{self.action}:{self.revision}:{self.escalation_level}"
        reminder = self.details.get("reminder")
        # a reminder repeats its escalation's level: without the count, receivers
        # deduplicating on webhook-id would drop every reminder after the first
        return f"{base}:r{reminder}" if reminder else base

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["schema"] = ALERT_SCHEMA
        d["event_id"] = self.event_id
        return d

    def to_json(self) -> bytes:
        return jsoncodec.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AlertEvent:
        """Validate a decoded ``cardiowatch.alert/1`` object; unknown keys are ignored.

        Raises
        ------
        AlertDecodeError
            Not an object, another schema, a missing field or one of the wrong type;
            the message names the field.
        """
        if not isinstance(d, dict):
            raise AlertDecodeError(f"an alert must be a JSON object, got {type(d).__name__}")
        if d.get("schema") != ALERT_SCHEMA:
            raise AlertDecodeError(f"alert schema must be {ALERT_SCHEMA!r}, got {d.get('schema')!r:.60}")
        names = cls.__dataclass_fields__.keys()
        kw = {k: v for k, v in d.items() if k in names}
        for name, check in _ALERT_CHECKS.items():
            if name not in kw:
                if name in _ALERT_REQUIRED:
                    raise AlertDecodeError(f"alert field {name!r} is missing")
                continue
            problem = check(kw[name])
            if problem:
                raise AlertDecodeError(f"alert field {name!r} {problem}, got {kw[name]!r:.60}")
        return cls(**kw)

    @classmethod
    def from_json(cls, raw: bytes | str) -> AlertEvent:
        """Decode one alert record; :class:`AlertDecodeError` for anything that is not one."""
        try:
            d = jsoncodec.loads(raw)
        except (ValueError, TypeError, RecursionError) as e:  # not JSON, not UTF-8, None, too deep
            raise AlertDecodeError(f"an alert must be UTF-8 JSON: {str(e)[:120]}") from None
        return cls.from_dict(d)


def _text(v: Any) -> str | None:
    return None if isinstance(v, str) else "must be a string"


def _opt_text(v: Any) -> str | None:
    return None if v is None or isinstance(v, str) else "must be a string or null"


_INT_LIMIT = 2**63  # a JSON integer beyond int64 is no count or time of ours


def _count(v: Any) -> str | None:
    ok = isinstance(v, int) and not isinstance(v, bool) and 0 <= v < _INT_LIMIT
    return None if ok else "must be an integer >= 0"


def _number(v: Any) -> str | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return "must be a finite number"
    ok = abs(v) < _INT_LIMIT if isinstance(v, int) else math.isfinite(v)
    return None if ok else "must be a finite number"


def _opt_number(v: Any) -> str | None:
    if v is None or isinstance(v, float):  # a score may be NaN: json writes and reads it
        return None
    ok = isinstance(v, int) and not isinstance(v, bool) and abs(v) < _INT_LIMIT
    return None if ok else "must be a number or null"


def _one_of(options: tuple[str, ...]) -> Any:
    def check(v: Any) -> str | None:
        return None if isinstance(v, str) and v in options else f"must be one of {', '.join(options)}"
    return check


def _opt_object(v: Any) -> str | None:
    return None if v is None or isinstance(v, dict) else "must be an object or null"


def _object(v: Any) -> str | None:
    return None if isinstance(v, dict) else "must be an object"


_ALERT_CHECKS: dict[str, Any] = {
    "alert_id": _text, "revision": _count, "action": _one_of(get_args(AlertAction)),
    "patient_id": _text, "device_id": _text, "condition": _text,
    "category": _one_of(get_args(Category)), "priority": _one_of(get_args(Priority)),
    "onset_ts_ms": _number, "detected_ts_ms": _number, "rule": _text,
    "score": _opt_number, "threshold": _opt_number, "model_version": _opt_text,
    "signal_quality": _opt_number, "strip": _opt_object, "escalation_level": _count,
    "produced_wall_ms": lambda v: None if v is None else _number(v), "details": _object,
}
_ALERT_REQUIRED = frozenset({"alert_id", "revision", "action", "patient_id", "device_id", "condition",
                             "category", "priority", "onset_ts_ms", "detected_ts_ms", "rule"})
