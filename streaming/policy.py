"""Alert policy: turns scored beats, heart rate and signal quality into clinical alerts.

The policy is a pure object (no Faust, Kafka, HTTP or Prometheus; no wall clock inside).
Per-patient state is a plain dataclass that round-trips through JSON (``to_dict`` /
``from_dict``) so the Faust shell can keep it in a changelogged table. Every ``on_*``
method returns the alert events it produced and a *new* state; the state passed in is
never mutated.

Semantics (IEC 60601-1-8 spirit: say only what matters, never miss a high priority):

=====================  ==========  ==========================================================
condition              priority    rule
=====================  ==========  ==========================================================
``ventricular_run``    high        >= ``vrun_min_beats`` consecutive flagged beats, each with
                                   RR < ``vrun_max_rr_ms``
``pause``              high        a beat with RR >= ``pause_s``, or (tick) no beat for
                                   ``pause_s`` of ECG event time while the signal is good
``tachycardia``        high        HR above the hard limit ``hr_high_bpm`` (immediately)
                       medium      HR above ``tachy_bpm`` sustained for ``sustain_s``
``bradycardia``        high        HR below the hard limit ``hr_low_bpm`` (immediately)
                       medium      HR below ``brady_bpm`` sustained for ``sustain_s``
``frequent_ectopy``    medium      >= ``frequent_ectopy_per_min`` flagged beats in 60 s;
                                   clears below ``frequent_ectopy_clear_per_min``
``irregular_rhythm``   medium      normalised RMSSD of RR over ``irregular_window_s`` >=
                                   ``irregular_nrmssd`` (or HR-model score >= its threshold),
                                   sustained for ``irregular_sustain_s``
``anomalous_beats``    low         ``ectopy_k`` of the last ``ectopy_n`` beats flagged
``lead_off``           medium      technical: lead off for ``lead_off_s``
``signal_noisy``       low         technical: noisy / low quality for ``noisy_s``
``no_data``            medium      technical: (tick) event time has not advanced for
                                   ``no_data_s`` of wall time
=====================  ==========  ==========================================================

Heart-rate limits are clinician limits: they apply beside the models, whatever the model
scores, and ``PolicyConfig.patient_limits`` overrides them per patient.

Alarm-fatigue controls: one open alert per patient and condition; ``updated`` only when
the priority rises (immediately) or the condition worsens clinically (rate-limited to
one per ``update_min_interval_s``); hysteresis (a condition clears only after it has been
absent for ``clear_after_s``; heart-rate conditions must also return ``hr_hysteresis_bpm``
inside the limit); ``cooldown_s`` after a clear before the same condition re-raises
(high-priority conditions ignore it unless ``high_ignores_cooldown`` is false); while the
ECG is unusable (lead off, noisy) ECG-derived conditions are suppressed, their pending
persistence counters reset, and a technical alert is raised instead.

Alert ids are ``f"{patient_id}:{condition}:{onset_ts_ms}"``: a replay of the same input
after a crash produces the same ids.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from streaming.events import (
    PRIORITY_ORDER,
    AlertEvent,
    Category,
    HRObservation,
    Priority,
    QualityObservation,
    ScoredBeat,
)

__all__ = [
    "PolicyConfigError",
    "PatientLimits",
    "PolicyConfig",
    "load_policy_config",
    "PatientPolicyState",
    "AlertPolicy",
    "CONDITIONS",
    "HR_CONDITIONS",
]

STATE_VERSION = 1

#: Condition name -> category. Priorities are decided per finding (see module docstring).
CONDITIONS: dict[str, Category] = {
    "ventricular_run": "physiological",
    "pause": "physiological",
    "tachycardia": "physiological",
    "bradycardia": "physiological",
    "frequent_ectopy": "physiological",
    "irregular_rhythm": "physiological",
    "anomalous_beats": "physiological",
    "lead_off": "technical",
    "signal_noisy": "technical",
    "no_data": "technical",
}

_ECG_CONDITIONS = ("ventricular_run", "pause", "frequent_ectopy", "anomalous_beats")
HR_CONDITIONS = ("tachycardia", "bradycardia", "irregular_rhythm")  # from the heart-rate stream
_HR_CONDITIONS = HR_CONDITIONS
_TECH_CONDITIONS = ("lead_off", "signal_noisy")
# A low-priority anomalous-beats alert says nothing new while one of these is open.
_SUBSUMES_ANOMALOUS = ("ventricular_run", "frequent_ectopy")
_ECTOPY_WINDOW_MS = 60_000
_NEVER = 1e300


class PolicyConfigError(ValueError):
    """A policy setting is missing or has a bad value; the message names the key."""


@dataclass(frozen=True, slots=True)
class PatientLimits:
    """Clinician heart-rate limits for one patient; ``None`` keeps the policy default.

    Parameters
    ----------
    hr_low_bpm, hr_high_bpm
        Hard limits: crossing one raises a high-priority alert at once.
    brady_bpm, tachy_bpm
        Soft limits: crossing one for ``PolicyConfig.sustain_s`` raises a medium alert.
    """

    hr_low_bpm: float | None = None
    hr_high_bpm: float | None = None
    brady_bpm: float | None = None
    tachy_bpm: float | None = None


def _check_range(name: str, value: Any, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise PolicyConfigError(f"{name} must be a number, got {value!r}")
    if not lo <= value <= hi:
        raise PolicyConfigError(f"{name} must be in [{lo}, {hi}], got {value}")


def _check_limit_order(where: str, low: float, brady: float, tachy: float, high: float) -> None:
    if not low < brady < tachy < high:
        raise PolicyConfigError(
            f"{where}: limits must satisfy hr_low_bpm < brady_bpm < tachy_bpm < hr_high_bpm, "
            f"got {low} < {brady} < {tachy} < {high}")


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Alert-policy settings; validated on construction (errors name the field).

    Durations are seconds (``*_s``), heart rates beats per minute (``*_bpm``).
    """

    # anomalous beats: k of the last n usable beats flagged -> low
    ectopy_k: int = 3
    ectopy_n: int = 8
    # ventricular run: consecutive flagged beats, each faster than vrun_max_rr_ms -> high
    vrun_min_beats: int = 3
    vrun_max_rr_ms: float = 600.0
    # pause / asystole -> high
    pause_s: float = 4.0
    # clinician heart-rate limits (defaults; patient_limits overrides per patient)
    hr_low_bpm: float = 30.0
    hr_high_bpm: float = 180.0
    brady_bpm: float = 50.0
    tachy_bpm: float = 120.0
    sustain_s: float = 30.0
    hr_hysteresis_bpm: float = 5.0
    # HR observations further apart than this break a "sustained" run
    sustain_max_gap_s: float = 10.0
    # frequent ectopy (flagged beats per 60 s) -> medium, with a lower clear threshold
    frequent_ectopy_per_min: int = 6
    frequent_ectopy_clear_per_min: int = 3
    # irregular rhythm from the HR stream -> medium
    irregular_window_s: float = 60.0
    irregular_nrmssd: float = 0.12
    irregular_min_intervals: int = 20
    # ...and at least this fraction of successive RR differences must each exceed
    # irregular_nrmssd x mean RR: AF is irregular beat after beat, while a short run or a
    # few ectopic beats inflate RMSSD through a handful of large jumps only.
    irregular_min_fraction: float = 0.3
    irregular_sustain_s: float = 30.0
    # signal quality: below min_quality (0..1) a beat / chunk / HR reading is unusable
    min_quality: float = 0.5
    lead_off_s: float = 3.0
    noisy_s: float = 10.0
    no_data_s: float = 30.0
    technical_clear_s: float = 5.0
    # alarm-fatigue controls
    clear_after_s: float = 30.0
    cooldown_s: float = 60.0
    high_ignores_cooldown: bool = True
    update_min_interval_s: float = 30.0
    update_rate_factor: float = 1.5
    update_hr_delta_bpm: float = 10.0
    patient_limits: Mapping[str, PatientLimits] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("ectopy_k", "ectopy_n", "vrun_min_beats", "frequent_ectopy_per_min",
                     "frequent_ectopy_clear_per_min", "irregular_min_intervals"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 10_000:
                raise PolicyConfigError(f"{name} must be an integer in [1, 10000], got {v!r}")
        if self.ectopy_k > self.ectopy_n:
            raise PolicyConfigError(
                f"ectopy_k must be <= ectopy_n ({self.ectopy_n}), got {self.ectopy_k}")
        if self.vrun_min_beats < 2:
            raise PolicyConfigError(f"vrun_min_beats must be >= 2, got {self.vrun_min_beats}")
        if self.frequent_ectopy_clear_per_min > self.frequent_ectopy_per_min:
            raise PolicyConfigError(
                "frequent_ectopy_clear_per_min must be <= frequent_ectopy_per_min "
                f"({self.frequent_ectopy_per_min}), got {self.frequent_ectopy_clear_per_min}")
        _check_range("vrun_max_rr_ms", self.vrun_max_rr_ms, 100.0, 2000.0)
        _check_range("pause_s", self.pause_s, 1.0, 60.0)
        for name in ("hr_low_bpm", "hr_high_bpm", "brady_bpm", "tachy_bpm"):
            _check_range(name, getattr(self, name), 10.0, 350.0)
        _check_limit_order("defaults", self.hr_low_bpm, self.brady_bpm, self.tachy_bpm,
                           self.hr_high_bpm)
        for name, lo, hi in (("sustain_s", 1.0, 3600.0), ("hr_hysteresis_bpm", 0.0, 50.0),
                             ("sustain_max_gap_s", 0.1, 600.0),
                             ("irregular_window_s", 5.0, 600.0),
                             ("irregular_nrmssd", 0.001, 10.0),
                             ("irregular_min_fraction", 0.0, 1.0),
                             ("irregular_sustain_s", 0.0, 3600.0),
                             ("min_quality", 0.0, 1.0), ("lead_off_s", 0.0, 600.0),
                             ("noisy_s", 0.0, 3600.0), ("no_data_s", 1.0, 3600.0),
                             ("technical_clear_s", 0.0, 600.0),
                             ("clear_after_s", 0.0, 3600.0), ("cooldown_s", 0.0, 86_400.0),
                             ("update_min_interval_s", 0.0, 3600.0),
                             ("update_rate_factor", 1.0, 100.0),
                             ("update_hr_delta_bpm", 0.0, 200.0)):
            _check_range(name, getattr(self, name), lo, hi)
        if not isinstance(self.high_ignores_cooldown, bool):
            raise PolicyConfigError(
                f"high_ignores_cooldown must be true or false, got {self.high_ignores_cooldown!r}")
        if not isinstance(self.patient_limits, Mapping):
            raise PolicyConfigError(
                f"patient_limits must be a mapping of patient id to limits, "
                f"got {type(self.patient_limits).__name__}")
        for pid, lim in self.patient_limits.items():
            if not isinstance(lim, PatientLimits):
                raise PolicyConfigError(
                    f"patient_limits.{pid} must be PatientLimits, got {type(lim).__name__}")
            for f in fields(PatientLimits):
                v = getattr(lim, f.name)
                if v is not None:
                    _check_range(f"patient_limits.{pid}.{f.name}", v, 10.0, 350.0)
            _check_limit_order(f"patient_limits.{pid}", *self.limits_for(pid))

    def limits_for(self, patient_id: str) -> tuple[float, float, float, float]:
        """Effective ``(hr_low_bpm, brady_bpm, tachy_bpm, hr_high_bpm)`` for a patient."""
        lim = self.patient_limits.get(patient_id)
        if lim is None:
            return self.hr_low_bpm, self.brady_bpm, self.tachy_bpm, self.hr_high_bpm

        def pick(v: float | None, d: float) -> float:
            return d if v is None else float(v)

        return (pick(lim.hr_low_bpm, self.hr_low_bpm), pick(lim.brady_bpm, self.brady_bpm),
                pick(lim.tachy_bpm, self.tachy_bpm), pick(lim.hr_high_bpm, self.hr_high_bpm))


def load_policy_config(path: str | Path) -> PolicyConfig:
    """Read a :class:`PolicyConfig` from a YAML file.

    The file is a mapping of ``PolicyConfig`` field names to values; ``patient_limits``
    maps patient ids to mappings of ``PatientLimits`` fields. Missing keys keep defaults.

    Parameters
    ----------
    path
        YAML file (see ``deploy/policy.example.yaml``).

    Returns
    -------
    PolicyConfig

    Raises
    ------
    PolicyConfigError
        Unreadable file, unknown key, or bad value; the message names the key.
    """
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except OSError as e:
        raise PolicyConfigError(f"policy file {str(p)!r} cannot be read: {e}") from None
    except yaml.YAMLError as e:
        raise PolicyConfigError(f"policy file {str(p)!r} is not valid YAML: {e}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PolicyConfigError(
            f"policy file {str(p)!r} must hold a mapping, got {type(raw).__name__}")
    known = {f.name for f in fields(PolicyConfig)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise PolicyConfigError(f"unknown policy key {key!r} in {str(p)!r}")
        if key == "patient_limits":
            kwargs[key] = _parse_patient_limits(value)
        else:
            kwargs[key] = value
    return PolicyConfig(**kwargs)


def _parse_patient_limits(value: Any) -> dict[str, PatientLimits]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PolicyConfigError(
            f"patient_limits must be a mapping of patient id to limits, got {value!r}")
    names = {f.name for f in fields(PatientLimits)}
    out: dict[str, PatientLimits] = {}
    for pid, lim in value.items():
        if not isinstance(lim, dict):
            raise PolicyConfigError(f"patient_limits.{pid} must be a mapping, got {lim!r}")
        for k in lim:
            if k not in names:
                raise PolicyConfigError(f"unknown key patient_limits.{pid}.{k}")
        out[str(pid)] = PatientLimits(**lim)
    return out


@dataclass(slots=True)
class PatientPolicyState:
    """Everything the policy remembers about one patient; JSON-safe via ``to_dict``.

    Times are event-time epoch milliseconds except ``*_wall_ms`` (wall clock, from ticks).
    ``open_alerts`` maps a condition to its open episode record.
    """

    patient_id: str
    device_id: str = ""
    last_event_ts_ms: int | None = None  # latest event time seen on any stream
    ecg_ts_ms: int | None = None  # latest ECG event time (chunks, beats, tick)
    # event time up to which beat detection is complete (from ticks with event_ts_ms);
    # beats are emitted a little after their samples, so pauses are judged against this
    beats_complete_ts_ms: int | None = None
    last_beat_ts_ms: int | None = None
    unusable_until_ts_ms: int | None = None  # end of the latest unusable ECG chunk
    quality_usable: bool = True
    quality: float | None = None
    lead_off_since_ts_ms: int | None = None
    noisy_since_ts_ms: int | None = None
    recent_flags: list[list[int]] = field(default_factory=list)  # [[r_ts_ms, 0|1], ...]
    flagged_ts_ms: list[int] = field(default_factory=list)  # flagged beats, last 60 s
    run_len: int = 0
    run_start_ts_ms: int | None = None
    run_rr_ms: list[float] = field(default_factory=list)
    tachy_since_ts_ms: int | None = None
    brady_since_ts_ms: int | None = None
    irregular_since_ts_ms: int | None = None
    last_hr_ts_ms: int | None = None
    rr_window: list[list[float]] = field(default_factory=list)  # [[ts_ms, rr_ms], ...]
    last_tick_wall_ms: int | None = None
    progress_wall_ms: int | None = None
    event_ts_at_last_tick_ms: int | None = None
    open_alerts: dict[str, dict[str, Any]] = field(default_factory=dict)
    cleared_at_ts_ms: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (plain lists, dicts, numbers, strings, booleans, ``None``)."""
        d = asdict(self)
        d["version"] = STATE_VERSION
        return d

    def to_json(self) -> bytes:
        """Compact JSON of :meth:`to_dict`, without its deep copy (hot path: the worker
        writes every changed state to its changelog)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["version"] = STATE_VERSION
        return json.dumps(d, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> PatientPolicyState:
        """Inverse of :meth:`to_json`; the freshly parsed objects need no copy."""
        d = json.loads(raw)
        if d.get("version") != STATE_VERSION:
            raise ValueError(
                f"policy state version must be {STATE_VERSION}, got {d.get('version')!r}")
        if not isinstance(d.get("patient_id"), str):
            raise ValueError(f"policy state needs a patient_id string, got {d.get('patient_id')!r}")
        # Keys added by a later release take their defaults, so states written before an
        # upgrade still load from the changelog.
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PatientPolicyState:
        """Inverse of :meth:`to_dict`; rejects another state version."""
        if d.get("version") != STATE_VERSION:
            raise ValueError(
                f"policy state version must be {STATE_VERSION}, got {d.get('version')!r}")
        if not isinstance(d.get("patient_id"), str):
            raise ValueError(f"policy state needs a patient_id string, got {d.get('patient_id')!r}")
        names = {f.name for f in fields(cls)}  # missing keys take defaults, as in from_json
        return cls(**copy.deepcopy({k: v for k, v in d.items() if k in names}))


@dataclass(slots=True)
class _Finding:
    """A condition seen at one instant (internal)."""

    condition: str
    priority: Priority
    ts_ms: int  # event time of the evidence
    onset_ts_ms: int
    rule: str
    severity: float  # higher is worse; used to decide whether an update is worth sending
    next_step: float  # how much worse it must get (absolute) before an update
    details: dict[str, Any]
    score: float | None = None
    threshold: float | None = None
    model_version: str | None = None
    signal_quality: float | None = None


Result = tuple[list[AlertEvent], PatientPolicyState]


class AlertPolicy:
    """Per-patient alert decisions; pure and deterministic.

    Parameters
    ----------
    config
        Validated policy settings.

    Notes
    -----
    Call order per patient: for one ECG chunk, pass its :class:`QualityObservation` to
    :meth:`on_quality` *before* its beats to :meth:`on_beats`, so beats inside an unusable
    chunk are suppressed.
    """

    def __init__(self, config: PolicyConfig | None = None) -> None:
        self.config = config if config is not None else PolicyConfig()

    # ------------------------------------------------------------------ public API
    def initial_state(self, patient_id: str) -> PatientPolicyState:
        """Fresh state for a patient never seen before."""
        if not patient_id:
            raise ValueError(f"patient_id must be a non-empty string, got {patient_id!r}")
        return PatientPolicyState(patient_id=patient_id)

    def on_beats(self, state: PatientPolicyState, beats: Sequence[ScoredBeat]) -> Result:
        """Apply scored beats (any order; sorted by ``r_ts_ms`` here).

        Returns
        -------
        (events, new_state)
            Alert events in the order they happened, and the patient's new state.
        """
        st = _copy_state(state)
        out: list[AlertEvent] = []
        for beat in sorted(beats, key=lambda b: b.r_ts_ms):
            self._check_patient(st, beat.patient_id)
            self._on_beat(st, out, beat)
        return out, st

    def on_hr(self, state: PatientPolicyState, obs: HRObservation) -> Result:
        """Apply one heart-rate observation (limits, sustained rates, irregularity)."""
        st = _copy_state(state)
        out: list[AlertEvent] = []
        self._check_patient(st, obs.patient_id)
        self._on_hr(st, out, obs)
        return out, st

    def on_quality(self, state: PatientPolicyState, obs: QualityObservation) -> Result:
        """Apply the signal quality of one ECG chunk (technical alerts, suppression)."""
        st = _copy_state(state)
        out: list[AlertEvent] = []
        self._check_patient(st, obs.patient_id)
        self._on_quality(st, out, obs)
        return out, st

    def on_gap(self, state: PatientPolicyState, start_ts_ms: int, end_ts_ms: int) -> Result:
        """The device's stream has a hole (lost messages or a restarted signal segment)
        from ``start_ts_ms`` to ``end_ts_ms``: no ECG-derived finding may span it (a data
        gap is not a pause). Raises nothing itself; silence is ``no_data``'s job."""
        st = _copy_state(state)
        if end_ts_ms > start_ts_ms:
            st.unusable_until_ts_ms = _max(st.unusable_until_ts_ms, int(end_ts_ms))
            self._reset_ecg_pending(st)
        return [], st

    def on_tick(self, state: PatientPolicyState, now_ms: int, *,
                event_ts_ms: int | None = None) -> Result:
        """Time passes with no message: detect pauses (event time) and no data (wall time).

        Parameters
        ----------
        state
            The patient's state.
        now_ms
            Wall clock now, epoch ms. ``no_data`` fires once the patient's event time has
            not advanced for ``no_data_s`` of wall time across ticks. A tick arriving more
            than ``no_data_s`` after the previous one (the worker itself was down) restarts
            that clock instead of raising.
        event_ts_ms
            Latest ECG event time seen for the patient, up to which beat detection is
            complete. ``None`` uses what the state has seen (chunk ends and beats). A pause
            fires when it is ``pause_s`` past the last beat while the signal is usable.
        """
        st = _copy_state(state)
        out: list[AlertEvent] = []
        cfg = self.config
        if event_ts_ms is not None:
            st.ecg_ts_ms = _max(st.ecg_ts_ms, event_ts_ms)
            st.last_event_ts_ms = _max(st.last_event_ts_ms, event_ts_ms)
            st.beats_complete_ts_ms = _max(st.beats_complete_ts_ms, event_ts_ms)

        # no data: wall time since the patient's event time last advanced
        no_data_ms = int(cfg.no_data_s * 1000)
        if (st.last_tick_wall_ms is None or now_ms - st.last_tick_wall_ms > no_data_ms
                or st.last_event_ts_ms != st.event_ts_at_last_tick_ms
                or st.progress_wall_ms is None):
            st.progress_wall_ms = now_ms
        st.last_tick_wall_ms = now_ms
        st.event_ts_at_last_tick_ms = st.last_event_ts_ms
        silent_ms = now_ms - st.progress_wall_ms
        if st.last_event_ts_ms is not None and silent_ms >= no_data_ms:
            rec = st.open_alerts.get("no_data")
            if rec is None:
                self._present(st, out, _Finding(
                    "no_data", "medium", now_ms, st.last_event_ts_ms,
                    f"no message for {silent_ms / 1000:.0f} s of wall time "
                    f"(limit {cfg.no_data_s:g} s)",
                    0.0, math.inf,
                    {"silent_s": silent_ms / 1000, "last_event_ts_ms": st.last_event_ts_ms,
                     "detected_wall_ms": now_ms}))

        # pause seen from the absence of beats while the ECG is good
        # (counted from the later of the last beat and the end of the last unusable stretch)
        # Judged up to where beat detection is complete when the caller says so: a chunk
        # end is later than that, and counting the detector's own lag as "no beat" would
        # turn a 2.5 s sinus pause into a false 4 s alarm.
        complete = (st.beats_complete_ts_ms if st.beats_complete_ts_ms is not None
                    else st.ecg_ts_ms)
        if st.quality_usable and st.last_beat_ts_ms is not None and complete is not None:
            since = _max(st.unusable_until_ts_ms, st.last_beat_ts_ms)
            gap_ms = complete - since
            if gap_ms >= cfg.pause_s * 1000:
                self._present(st, out, self._pause_finding(
                    st, complete, since, gap_ms,
                    f"no beat for {gap_ms / 1000:.1f} s with a usable signal "
                    f"(limit {cfg.pause_s:g} s)"))
        return out, st

    # ------------------------------------------------------------------ handlers
    def _check_patient(self, st: PatientPolicyState, patient_id: str) -> None:
        if patient_id != st.patient_id:
            raise ValueError(
                f"event for patient {patient_id!r} applied to the state of {st.patient_id!r}")

    def _on_beat(self, st: PatientPolicyState, out: list[AlertEvent], b: ScoredBeat) -> None:
        cfg = self.config
        ts = b.r_ts_ms
        st.device_id = b.device_id
        st.last_event_ts_ms = _max(st.last_event_ts_ms, ts)
        st.ecg_ts_ms = _max(st.ecg_ts_ms, ts)
        self._clear_no_data(st, out, ts)
        prev_beat = st.last_beat_ts_ms
        st.last_beat_ts_ms = _max(prev_beat, ts)
        in_unusable = st.unusable_until_ts_ms is not None and ts <= st.unusable_until_ts_ms
        if in_unusable or b.signal_quality < cfg.min_quality:
            # suppressed: ECG-derived conditions are not raised and pending counters reset
            self._reset_ecg_pending(st)
            return
        model: dict[str, Any] = {"score": b.score, "threshold": b.threshold, "model_version": b.model_version,
                 "signal_quality": b.signal_quality}

        # pause from the RR interval; the gap must not overlap an unusable stretch
        if b.rr_ms is not None and b.rr_ms >= cfg.pause_s * 1000:
            prev_ts = int(round(ts - b.rr_ms))
            if st.unusable_until_ts_ms is None or prev_ts >= st.unusable_until_ts_ms:
                f = self._pause_finding(st, ts, prev_ts, b.rr_ms,
                                        f"RR {b.rr_ms / 1000:.1f} s >= pause limit "
                                        f"{cfg.pause_s:g} s")
                f.signal_quality = b.signal_quality
                self._present(st, out, f)

        st.recent_flags.append([ts, int(b.flagged)])
        del st.recent_flags[:-cfg.ectopy_n]

        # frequent ectopy: flagged beats within the last 60 s, cleared below a lower rate
        if b.flagged:
            st.flagged_ts_ms.append(ts)
        st.flagged_ts_ms = [t for t in st.flagged_ts_ms if t > ts - _ECTOPY_WINDOW_MS]
        per_min = len(st.flagged_ts_ms)
        if per_min >= cfg.frequent_ectopy_per_min and b.flagged:
            # Severity is the rate over the span the flagged beats cover, so a window that
            # is still filling up (count rising at a steady rate) does not look "worse".
            span_ms = max(ts - st.flagged_ts_ms[0], 1)
            rate = round(min((per_min - 1) * 60_000 / span_ms, 600.0), 1)
            self._present(st, out, _Finding(
                "frequent_ectopy", "medium", ts, st.flagged_ts_ms[0],
                f"{per_min} flagged beats in 60 s >= {cfg.frequent_ectopy_per_min}/min",
                rate, self._rate_step(rate),
                {"flagged_per_min": per_min, "estimated_rate_per_min": rate}, **model))
        elif per_min >= cfg.frequent_ectopy_clear_per_min and "frequent_ectopy" in st.open_alerts:
            self._hold(st, "frequent_ectopy", ts)

        # ventricular run: consecutive flagged beats, each with a short RR
        if b.flagged and b.rr_ms is not None and b.rr_ms < cfg.vrun_max_rr_ms:
            if st.run_len == 0:
                st.run_start_ts_ms = ts
                st.run_rr_ms = []
            st.run_len += 1
            st.run_rr_ms.append(float(b.rr_ms))
            if st.run_len >= cfg.vrun_min_beats:
                assert st.run_start_ts_ms is not None
                mean_rr = sum(st.run_rr_ms) / len(st.run_rr_ms)
                self._present(st, out, _Finding(
                    "ventricular_run", "high", ts, st.run_start_ts_ms,
                    f"{st.run_len} consecutive flagged beats with RR < "
                    f"{cfg.vrun_max_rr_ms:g} ms",
                    float(st.run_len), self._rate_step(st.run_len),
                    {"run_length_beats": st.run_len, "rate_bpm": round(60_000 / mean_rr, 1)},
                    **model))
        else:
            st.run_len = 0
            st.run_start_ts_ms = None
            st.run_rr_ms = []

        # k-of-n persistence for anomalous beats (said only when nothing above says it)
        n_flagged = sum(f for _, f in st.recent_flags)
        if n_flagged >= cfg.ectopy_k and b.flagged:
            if not any(c in st.open_alerts for c in _SUBSUMES_ANOMALOUS):
                onset = next(t for t, f in st.recent_flags if f)
                self._present(st, out, _Finding(
                    "anomalous_beats", "low", ts, onset,
                    f"{n_flagged} of {len(st.recent_flags)} beats above threshold "
                    f"{b.threshold:.3g}",
                    float(n_flagged), self._rate_step(n_flagged),
                    {"flagged_beats": n_flagged, "window_beats": len(st.recent_flags)},
                    **model))
        elif n_flagged >= cfg.ectopy_k and "anomalous_beats" in st.open_alerts:
            self._hold(st, "anomalous_beats", ts)


        for cond in _ECG_CONDITIONS:
            self._maybe_clear(st, out, cond, ts, cfg.clear_after_s)

    def _on_hr(self, st: PatientPolicyState, out: list[AlertEvent], obs: HRObservation) -> None:
        cfg = self.config
        ts = obs.ts_ms
        st.device_id = obs.device_id
        st.last_event_ts_ms = _max(st.last_event_ts_ms, ts)
        self._clear_no_data(st, out, ts)
        if not math.isfinite(obs.hr_bpm) or (obs.quality is not None
                                             and obs.quality < cfg.min_quality):
            st.tachy_since_ts_ms = st.brady_since_ts_ms = st.irregular_since_ts_ms = None
            st.rr_window = []
            st.last_hr_ts_ms = ts
            return
        gap_ok = (st.last_hr_ts_ms is not None
                  and ts - st.last_hr_ts_ms <= cfg.sustain_max_gap_s * 1000)
        st.last_hr_ts_ms = ts
        low, brady, tachy, high = cfg.limits_for(st.patient_id)
        hr = float(obs.hr_bpm)
        sustain_ms = cfg.sustain_s * 1000
        common: dict[str, Any] = {"signal_quality": obs.quality}
        hr_step = cfg.update_hr_delta_bpm

        # tachycardia: hard limit at once (high), soft limit sustained (medium)
        st.tachy_since_ts_ms = (st.tachy_since_ts_ms if gap_ok and st.tachy_since_ts_ms
                                is not None else ts) if hr > tachy else None
        if st.tachy_since_ts_ms is not None:
            lasted = ts - st.tachy_since_ts_ms
            det = {"hr_bpm": hr, "limit_bpm": tachy, "hard_limit_bpm": high,
                   "sustained_s": lasted / 1000}
            if hr > high:
                self._present(st, out, _Finding(
                    "tachycardia", "high", ts, st.tachy_since_ts_ms,
                    f"HR {hr:.0f} bpm above hard limit {high:g} bpm", hr, hr_step, det,
                    **common))
            elif lasted >= sustain_ms:
                self._present(st, out, _Finding(
                    "tachycardia", "medium", ts, st.tachy_since_ts_ms,
                    f"HR above {tachy:g} bpm for {lasted / 1000:.0f} s "
                    f"(limit {cfg.sustain_s:g} s)", hr, hr_step, det, **common))
            elif "tachycardia" in st.open_alerts:
                self._hold(st, "tachycardia", ts)
        elif "tachycardia" in st.open_alerts and hr > tachy - cfg.hr_hysteresis_bpm:
            self._hold(st, "tachycardia", ts)

        # bradycardia, mirrored; severity is the negated rate so that higher is worse
        st.brady_since_ts_ms = (st.brady_since_ts_ms if gap_ok and st.brady_since_ts_ms
                                is not None else ts) if hr < brady else None
        if st.brady_since_ts_ms is not None:
            lasted = ts - st.brady_since_ts_ms
            det = {"hr_bpm": hr, "limit_bpm": brady, "hard_limit_bpm": low,
                   "sustained_s": lasted / 1000}
            if hr < low:
                self._present(st, out, _Finding(
                    "bradycardia", "high", ts, st.brady_since_ts_ms,
                    f"HR {hr:.0f} bpm below hard limit {low:g} bpm", -hr, hr_step, det,
                    **common))
            elif lasted >= sustain_ms:
                self._present(st, out, _Finding(
                    "bradycardia", "medium", ts, st.brady_since_ts_ms,
                    f"HR below {brady:g} bpm for {lasted / 1000:.0f} s "
                    f"(limit {cfg.sustain_s:g} s)", -hr, hr_step, det, **common))
            elif "bradycardia" in st.open_alerts:
                self._hold(st, "bradycardia", ts)
        elif "bradycardia" in st.open_alerts and hr < brady + cfg.hr_hysteresis_bpm:
            self._hold(st, "bradycardia", ts)

        # irregular rhythm: normalised RMSSD of RR over the window, or the HR model's score
        window_ms = cfg.irregular_window_s * 1000
        st.rr_window.extend([float(ts), float(rr)] for rr in obs.rr_ms
                            if math.isfinite(rr) and 200.0 <= rr <= 3000.0)
        st.rr_window = [p for p in st.rr_window if p[0] > ts - window_ms]
        rrs = [p[1] for p in st.rr_window]
        nrmssd: float | None = None
        frac = 0.0
        if len(rrs) >= cfg.irregular_min_intervals:
            mean_rr = sum(rrs) / len(rrs)
            steps = [abs(b - a) for a, b in zip(rrs, rrs[1:])]
            nrmssd = math.sqrt(sum(d * d for d in steps) / len(steps)) / mean_rr
            frac = sum(d > cfg.irregular_nrmssd * mean_rr for d in steps) / len(steps)
        by_rr = (nrmssd is not None and nrmssd >= cfg.irregular_nrmssd
                 and frac >= cfg.irregular_min_fraction)
        by_model = (obs.hr_score is not None and obs.hr_threshold is not None
                    and obs.hr_score >= obs.hr_threshold)
        if by_rr or by_model:
            if not (gap_ok and st.irregular_since_ts_ms is not None):
                st.irregular_since_ts_ms = ts
            lasted = ts - st.irregular_since_ts_ms
            if lasted >= cfg.irregular_sustain_s * 1000 or "irregular_rhythm" in st.open_alerts:
                why = (f"RR normalised RMSSD {nrmssd:.2f} >= {cfg.irregular_nrmssd:g}, "
                       f"{frac:.0%} of beat-to-beat changes irregular"
                       if by_rr else
                       f"HR model score {obs.hr_score:.3g} >= threshold {obs.hr_threshold:.3g}")
                self._present(st, out, _Finding(
                    "irregular_rhythm", "medium", ts, st.irregular_since_ts_ms,
                    f"{why} for {lasted / 1000:.0f} s", nrmssd or 0.0,
                    max((nrmssd or 0.0) * (cfg.update_rate_factor - 1), 0.05),
                    {"rr_nrmssd": None if nrmssd is None else round(nrmssd, 4),
                     "rr_intervals": len(rrs), "hr_bpm": hr, "sustained_s": lasted / 1000},
                    score=obs.hr_score, threshold=obs.hr_threshold,
                    signal_quality=obs.quality))
        else:
            st.irregular_since_ts_ms = None

        for cond in _HR_CONDITIONS:
            self._maybe_clear(st, out, cond, ts, cfg.clear_after_s)

    def _on_quality(self, st: PatientPolicyState, out: list[AlertEvent],
                    obs: QualityObservation) -> None:
        cfg = self.config
        end = obs.ts_ms + obs.duration_ms
        st.device_id = obs.device_id
        st.last_event_ts_ms = _max(st.last_event_ts_ms, end)
        st.ecg_ts_ms = _max(st.ecg_ts_ms, end)
        self._clear_no_data(st, out, obs.ts_ms)
        noisy = (obs.noisy or obs.quality < cfg.min_quality) and not obs.lead_off
        st.lead_off_since_ts_ms = (
            (st.lead_off_since_ts_ms if st.lead_off_since_ts_ms is not None else obs.ts_ms)
            if obs.lead_off else None)
        st.noisy_since_ts_ms = (
            (st.noisy_since_ts_ms if st.noisy_since_ts_ms is not None else obs.ts_ms)
            if noisy else None)
        st.quality = obs.quality
        st.quality_usable = not (obs.lead_off or noisy)
        if not st.quality_usable:
            st.unusable_until_ts_ms = _max(st.unusable_until_ts_ms, end)
            self._reset_ecg_pending(st)

        for cond, since, need_s, prio, what in (
                ("lead_off", st.lead_off_since_ts_ms, cfg.lead_off_s, "medium", "lead off"),
                ("signal_noisy", st.noisy_since_ts_ms, cfg.noisy_s, "low",
                 f"signal noisy or quality < {cfg.min_quality:g}")):
            if since is None:
                continue
            lasted = end - since
            if lasted >= need_s * 1000 or cond in st.open_alerts:
                self._present(st, out, _Finding(
                    cond, prio, end, since,  # type: ignore[arg-type]
                    f"{what} for {lasted / 1000:.1f} s (limit {need_s:g} s)", 0.0, math.inf,
                    {"lasted_s": lasted / 1000}, signal_quality=obs.quality))
        for cond in _TECH_CONDITIONS:
            self._maybe_clear(st, out, cond, end, cfg.technical_clear_s)

    # ------------------------------------------------------------------ helpers
    def _pause_finding(self, st: PatientPolicyState, ts: int, onset: int, gap_ms: float,
                       rule: str) -> _Finding:
        return _Finding("pause", "high", ts, onset, rule, gap_ms / 1000,
                        self._rate_step(gap_ms / 1000), {"pause_s": round(gap_ms / 1000, 3)},
                        signal_quality=st.quality)

    def _rate_step(self, value: float) -> float:
        return max(value * (self.config.update_rate_factor - 1.0), 1.0)

    def _reset_ecg_pending(self, st: PatientPolicyState) -> None:
        st.recent_flags = []
        st.flagged_ts_ms = []
        st.run_len = 0
        st.run_start_ts_ms = None
        st.run_rr_ms = []

    def _hold(self, st: PatientPolicyState, cond: str, ts: int) -> None:
        """The condition is still inside its hysteresis band: keep the open alert alive."""
        rec = st.open_alerts.get(cond)
        if rec is not None:
            rec["last_present_ts_ms"] = max(rec["last_present_ts_ms"], ts)

    def _present(self, st: PatientPolicyState, out: list[AlertEvent], f: _Finding) -> None:
        cfg = self.config
        rec = st.open_alerts.get(f.condition)
        if rec is not None:
            rec["last_present_ts_ms"] = max(rec["last_present_ts_ms"], f.ts_ms)
            rises = PRIORITY_ORDER[f.priority] > PRIORITY_ORDER[rec["priority"]]
            worse = f.severity >= rec["next_update_severity"]
            due = f.ts_ms - rec["last_emit_ts_ms"] >= cfg.update_min_interval_s * 1000
            if rises or (worse and due):
                if rises:
                    rec["priority"] = f.priority
                self._fill(rec, f)
                rec["revision"] += 1
                out.append(self._event(st, rec, "updated", f.ts_ms))
            return
        cleared_at = st.cleared_at_ts_ms.get(f.condition)
        if cleared_at is not None:
            in_cooldown = f.ts_ms - cleared_at < cfg.cooldown_s * 1000
            exempt = f.priority == "high" and cfg.high_ignores_cooldown
            if in_cooldown and not exempt:
                return
            # a new episode never reuses the previous one's id
            f.onset_ts_ms = max(f.onset_ts_ms, cleared_at + 1)
        rec = {
            "alert_id": f"{st.patient_id}:{f.condition}:{f.onset_ts_ms}",
            "condition": f.condition,
            "category": CONDITIONS[f.condition],
            "priority": f.priority,
            "onset_ts_ms": f.onset_ts_ms,
            "revision": 1,
            "last_present_ts_ms": f.ts_ms,
        }
        self._fill(rec, f)
        st.open_alerts[f.condition] = rec
        out.append(self._event(st, rec, "raised", f.ts_ms))

    def _fill(self, rec: dict[str, Any], f: _Finding) -> None:
        rec.update(rule=f.rule, details=dict(f.details), score=f.score, threshold=f.threshold,
                   model_version=f.model_version, signal_quality=f.signal_quality,
                   last_emit_ts_ms=f.ts_ms,
                   # JSON has no infinity: "never update" is a large finite sentinel
                   next_update_severity=(f.severity + f.next_step
                                         if math.isfinite(f.next_step) else _NEVER))

    def _maybe_clear(self, st: PatientPolicyState, out: list[AlertEvent], cond: str, ts: int,
                     after_s: float) -> None:
        rec = st.open_alerts.get(cond)
        if rec is None or ts - rec["last_present_ts_ms"] < after_s * 1000:
            return
        self._clear(st, out, cond, ts,
                    f"{cond} absent for {(ts - rec['last_present_ts_ms']) / 1000:.0f} s "
                    f"(clear after {after_s:g} s)")

    def _clear_no_data(self, st: PatientPolicyState, out: list[AlertEvent], ts: int) -> None:
        if "no_data" in st.open_alerts:
            self._clear(st, out, "no_data", ts, "data received again")

    def _clear(self, st: PatientPolicyState, out: list[AlertEvent], cond: str, ts: int,
               rule: str) -> None:
        rec = st.open_alerts.pop(cond)
        rec["revision"] += 1
        rec["rule"] = rule
        rec["detected_ts_ms"] = ts
        st.cleared_at_ts_ms[cond] = ts
        out.append(self._event(st, rec, "cleared", ts))

    def _event(self, st: PatientPolicyState, rec: Mapping[str, Any], action: str,
               ts: int) -> AlertEvent:
        return AlertEvent(
            alert_id=rec["alert_id"], revision=rec["revision"], action=action,  # type: ignore[arg-type]
            patient_id=st.patient_id, device_id=st.device_id, condition=rec["condition"],
            category=rec["category"], priority=rec["priority"],
            onset_ts_ms=rec["onset_ts_ms"], detected_ts_ms=ts, rule=rec["rule"],
            score=rec["score"], threshold=rec["threshold"],
            model_version=rec["model_version"], signal_quality=rec["signal_quality"],
            details=dict(rec["details"]))


def _copy_state(state: PatientPolicyState) -> PatientPolicyState:
    """Copy deep enough that the policy never mutates the caller's state.

    Inner ``[ts, value]`` pairs are replaced, never mutated, so sharing them is safe; open
    alert records are mutated and are copied (their ``details`` dicts are replaced).
    """
    kw = {f.name: getattr(state, f.name) for f in fields(PatientPolicyState)}
    for name, value in kw.items():
        if isinstance(value, list):
            kw[name] = list(value)
    kw["open_alerts"] = {k: dict(v) for k, v in state.open_alerts.items()}
    kw["cleared_at_ts_ms"] = dict(state.cleared_at_ts_ms)
    return PatientPolicyState(**kw)


def _max(a: int | None, b: int) -> int:
    return b if a is None else max(a, b)
