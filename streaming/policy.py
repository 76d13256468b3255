"""Alert policy: turns scored beats, heart rate and signal quality into clinical alerts.

The policy is a pure object (no Faust, Kafka, HTTP or Prometheus; no wall clock inside).
Every ``on_*`` method returns the alert events it produced and a *new* per-patient state;
the state passed in is never mutated. The state round-trips through one compact JSON pair
(:meth:`AlertPolicy.state_to_json` / :meth:`AlertPolicy.state_from_json`) so the Faust
shell can keep it in a changelogged table.

Each condition is one rule object (:mod:`streaming.conditions`) with its settings, its
per-patient state, its rule and its line in this table; :data:`~streaming.conditions.REGISTRY`
lists them. Semantics (IEC 60601-1-8 spirit: say only what matters, never miss a high
priority); a key names the condition's own YAML section unless qualified:

=============================  ==========  ==========================================================
condition                      priority    rule
=============================  ==========  ==========================================================
``ventricular_run``            high        >= ``min_beats`` ventricular beats in a row (the first
                                           classified V, the next with run evidence >=
                                           ``continue_p``), mean RR <= ``max_rr_ms``; without a beat
                                           classifier: consecutive flagged beats, each with RR <
                                           ``max_rr_ms``
``ventricular_fibrillation``   high        ``consecutive_windows`` consecutive ECG windows (4 s, one
                                           every 1 s) with VF probability above the VF detector's
                                           threshold; clears after ``clear_s`` without one
``pause``                      high        a beat with RR >= ``pause_s``, or (tick) no beat for
                                           ``pause_s`` of ECG event time while the signal is good,
                                           counted from ``settle_s`` after an unusable stretch
``tachycardia``                high        HR above the hard limit ``hr_limits.hr_high_bpm``
                                           (immediately)
                               medium      HR above ``hr_limits.tachy_bpm`` sustained for
                                           ``sustain_s``
``bradycardia``                high        HR below the hard limit ``hr_limits.hr_low_bpm``
                                           (immediately)
                               medium      HR below ``hr_limits.brady_bpm`` sustained for
                                           ``sustain_s``
``frequent_ectopy``            medium      >= ``per_min`` flagged beats in 60 s; clears below
                                           ``clear_per_min``
``atrial_fibrillation``        medium      AF probability of the RR history >= the AF detector's
                                           threshold for ``sustain_s``; clears once below it for
                                           ``clear_s``
``anomalous_beats``            low         ``k`` of the last ``n`` beats flagged (not while
                                           ventricular_run or frequent_ectopy is open)
``lead_off``                   medium      technical: lead off for ``lead_off_s``
``signal_noisy``               low         technical: noisy / quality below ``signal.min_quality``
                                           for ``noisy_s``
``no_data``                    medium      technical: (tick) event time has not advanced for
                                           ``no_data_s`` of wall time
``device_clock``               low         technical: >= ``events`` device restarts, clock jumps or
                                           timestamps set aside within ``window_s``
=============================  ==========  ==========================================================

Heart-rate limits are clinician limits: they apply beside the models, whatever the model
scores; ``hr_limits`` holds the defaults and ``patient_limits`` overrides them per patient.

Dispatch: an observation (scored beat, heart-rate observation, chunk quality, stream gap,
device clock event, tick, or a type added later) updates the patient's shared stream facts, clears an open
``no_data`` if it is data, then goes to the conditions that consume its type in registry
order; the events it produces come out in that order. After a beat, heart-rate or
quality observation, open alerts of its conditions that have been absent long enough
clear, again in registry order.

Alarm-fatigue controls (the policy's, shared by every condition): one open alert per
patient and condition; ``updated`` only when the priority rises (immediately) or the
condition worsens clinically (rate-limited to one per ``alarms.update_min_interval_s``);
hysteresis (a condition clears only after it has been absent for ``alarms.clear_after_s``,
technical ones ``alarms.technical_clear_s``; rules hold an open alert while inside their
band, e.g. heart rate within ``hysteresis_bpm`` of the limit); ``alarms.cooldown_s`` after
a clear before the same condition re-raises (high-priority conditions ignore it unless
``alarms.high_ignores_cooldown`` is false); while the ECG is unusable (lead off, noisy,
stream gap, a beat of low quality) ECG-derived conditions are suppressed, their pending
state reset, and a technical alert is raised instead (an unusable heart-rate reading does
the same for heart-rate conditions); a condition's findings are dropped while a condition
that subsumes it is open.

Alert ids are ``f"{patient_id}:{condition}:{onset_ts_ms}"``: a replay of the same input
after a crash produces the same ids.

Device clocks: when the stream core re-anchors a patient's time base (a device clock
jump, :class:`~streaming.events.DeviceClockEvent` with ``shift_ms``), every event time
the state holds moves with it and every condition state starts afresh, so no pause,
run or sustained rate is inferred across the jump and onsets after it are in the new
time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
import types
import typing
from collections.abc import Mapping as _AbcMapping
from typing import Any, ClassVar, Literal, TypeVar, Union, cast, get_args, get_origin, get_type_hints

import yaml

from streaming.conditions import (
    REGISTRY,
    Condition,
    Decision,
    Finding,
    Hold,
    RuleContext,
    Stream,
    StreamGap,
    Tick,
    bounded,
    check_settings,
)
from streaming import jsoncodec
from streaming.errors import PolicyConfigError, PolicyStateError
from streaming.events import (
    PRIORITY_ORDER,
    AlertAction,
    AlertEvent,
    Category,
    DeviceClockEvent,
    HRObservation,
    Priority,
    QualityObservation,
    ScoredBeat,
)

__all__ = [
    "PolicyConfigError",
    "PolicyStateError",
    "json_value_fits",
    "AlarmSettings",
    "SignalSettings",
    "HRLimits",
    "PatientLimits",
    "PolicyConfig",
    "load_policy_config",
    "OpenAlert",
    "PatientPolicyState",
    "AlertPolicy",
    "STATE_VERSION",
    "CONDITIONS",
    "HR_CONDITIONS",
]

STATE_VERSION = 2

#: Condition name -> category. Priorities are decided per finding (see module docstring).
CONDITIONS: dict[str, Category] = {c.name: c.category for c in REGISTRY}
#: Conditions raised from the heart-rate stream.
HR_CONDITIONS: tuple[str, ...] = tuple(c.name for c in REGISTRY if c.derived_from == "hr")

# JSON has no infinity: "never update" is a large finite sentinel
_NEVER = 1e300
_SHARED_SECTIONS = ("alarms", "signal", "hr_limits", "patient_limits")
_STREAMS: tuple[Stream, ...] = ("ecg", "hr")

S = TypeVar("S")


# ---------------------------------------------------------------------------- config
@dataclass(frozen=True, slots=True)
class AlarmSettings:
    """Alarm-fatigue controls shared by every condition (section ``alarms``)."""

    section: ClassVar[str] = "alarms"
    clear_after_s: float = bounded(30.0, 0.0, 3600.0)  # physiological: absent this long
    technical_clear_s: float = bounded(5.0, 0.0, 600.0)  # technical: good signal this long
    cooldown_s: float = bounded(60.0, 0.0, 86_400.0)
    high_ignores_cooldown: bool = True
    update_min_interval_s: float = bounded(30.0, 0.0, 3600.0)
    update_rate_factor: float = bounded(1.5, 1.0, 100.0)
    update_hr_delta_bpm: float = bounded(10.0, 0.0, 200.0)

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(frozen=True, slots=True)
class SignalSettings:
    """When a reading is usable (section ``signal``)."""

    section: ClassVar[str] = "signal"
    # below this (0..1) a beat, chunk or heart-rate reading is unusable
    min_quality: float = bounded(0.5, 0.0, 1.0)
    # heart-rate observations further apart than this break a "sustained" run
    hr_max_gap_s: float = bounded(10.0, 0.1, 600.0)

    def __post_init__(self) -> None:
        check_settings(self)


def _check_limit_order(where: str, low: float, brady: float, tachy: float, high: float) -> None:
    if not low < brady < tachy < high:
        raise PolicyConfigError(
            f"{where}: limits must satisfy hr_low_bpm < brady_bpm < tachy_bpm < hr_high_bpm, "
            f"got {low} < {brady} < {tachy} < {high}")


@dataclass(frozen=True, slots=True)
class HRLimits:
    """Default clinician heart-rate limits (section ``hr_limits``).

    Crossing a hard limit (``hr_low_bpm``, ``hr_high_bpm``) raises a high-priority alert
    at once; a soft limit (``brady_bpm``, ``tachy_bpm``) a medium one once sustained.
    """

    section: ClassVar[str] = "hr_limits"
    hr_low_bpm: float = bounded(30.0, 10.0, 350.0)
    brady_bpm: float = bounded(50.0, 10.0, 350.0)
    tachy_bpm: float = bounded(120.0, 10.0, 350.0)
    hr_high_bpm: float = bounded(180.0, 10.0, 350.0)

    def __post_init__(self) -> None:
        check_settings(self)
        _check_limit_order(self.section, self.hr_low_bpm, self.brady_bpm, self.tachy_bpm,
                           self.hr_high_bpm)


@dataclass(frozen=True, slots=True)
class PatientLimits:
    """Clinician heart-rate limits for one patient; ``None`` keeps the ``hr_limits`` default.

    Parameters
    ----------
    hr_low_bpm, hr_high_bpm
        Hard limits: crossing one raises a high-priority alert at once.
    brady_bpm, tachy_bpm
        Soft limits: crossing one for the condition's ``sustain_s`` raises a medium alert.
    """

    hr_low_bpm: float | None = None
    hr_high_bpm: float | None = None
    brady_bpm: float | None = None
    tachy_bpm: float | None = None


def _pick(v: float | None, default: float) -> float:
    return default if v is None else float(v)


def _number_in(key: str, value: Any, lo: float, hi: float) -> None:
    # isnan only on floats: math.isnan of a huge YAML integer raises OverflowError
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float)
                                                                           and math.isnan(value)):
        raise PolicyConfigError(f"{key} must be a number, got {value!r}")
    if not lo <= value <= hi:
        raise PolicyConfigError(f"{key} must be in [{lo}, {hi}], got {value}")


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Alert-policy settings: the shared sections and each condition's settings.

    Validated on construction; errors name the key (``section.key``). Durations are
    seconds (``*_s``), heart rates beats per minute (``*_bpm``).

    Parameters
    ----------
    alarms, signal, hr_limits
        Shared settings.
    patient_limits
        Patient id -> clinician limits overriding ``hr_limits``.
    conditions
        Condition name -> its settings (an instance of the condition's
        ``settings_type``); a condition left out keeps its defaults. After construction
        every condition of ``registry`` has an entry, in registry order.
    registry
        The conditions the policy runs, in dispatch order.
    """

    alarms: AlarmSettings = AlarmSettings()
    signal: SignalSettings = SignalSettings()
    hr_limits: HRLimits = HRLimits()
    patient_limits: Mapping[str, PatientLimits] = field(default_factory=dict)
    conditions: Mapping[str, Any] = field(default_factory=dict)
    registry: tuple[type[Condition[Any, Any]], ...] = REGISTRY
    _limits: dict[str, tuple[float, float, float, float]] = field(
        default_factory=dict, init=False, repr=False, compare=False)
    _default_limits: tuple[float, float, float, float] = field(
        default=(0.0, 0.0, 0.0, 0.0), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, kind in _SHARED_KINDS.items():
            if type(getattr(self, name)) is not kind:
                raise PolicyConfigError(
                    f"{name} must be {kind.__name__}, got {type(getattr(self, name)).__name__}")
        _check_registry(self.registry)
        if not isinstance(self.conditions, Mapping):
            raise PolicyConfigError(
                f"conditions must be a mapping of condition name to settings, "
                f"got {type(self.conditions).__name__}")
        by_name = {c.name: c for c in self.registry}
        for name, settings in self.conditions.items():
            cond = by_name.get(name)
            if cond is None:
                raise PolicyConfigError(
                    f"unknown condition {name!r}; known: {', '.join(by_name)}")
            if type(settings) is not cond.settings_type:
                raise PolicyConfigError(
                    f"{name} settings must be {cond.settings_type.__name__}, "
                    f"got {type(settings).__name__}")
        filled = {}
        for c in self.registry:
            given = self.conditions.get(c.name)
            filled[c.name] = c.settings_type() if given is None else given
        object.__setattr__(self, "conditions", filled)
        if not isinstance(self.patient_limits, Mapping):
            raise PolicyConfigError(
                f"patient_limits must be a mapping of patient id to limits, "
                f"got {type(self.patient_limits).__name__}")
        d = self.hr_limits
        object.__setattr__(self, "_default_limits",
                           (d.hr_low_bpm, d.brady_bpm, d.tachy_bpm, d.hr_high_bpm))
        for pid, lim in self.patient_limits.items():
            if not isinstance(lim, PatientLimits):
                raise PolicyConfigError(
                    f"patient_limits.{pid} must be PatientLimits, got {type(lim).__name__}")
            for f in fields(PatientLimits):
                v = getattr(lim, f.name)
                if v is not None:
                    _number_in(f"patient_limits.{pid}.{f.name}", v, 10.0, 350.0)
            limits = (_pick(lim.hr_low_bpm, d.hr_low_bpm), _pick(lim.brady_bpm, d.brady_bpm),
                      _pick(lim.tachy_bpm, d.tachy_bpm), _pick(lim.hr_high_bpm, d.hr_high_bpm))
            _check_limit_order(f"patient_limits.{pid}", *limits)
            self._limits[str(pid)] = limits

    def limits_for(self, patient_id: str) -> tuple[float, float, float, float]:
        """Effective ``(hr_low_bpm, brady_bpm, tachy_bpm, hr_high_bpm)`` for a patient."""
        return self._limits.get(patient_id, self._default_limits)

    def settings(self, condition: type[Condition[S, Any]]) -> S:
        """The settings of one condition, e.g. ``config.settings(Pause).pause_s``."""
        return cast(S, self.conditions[condition.name])

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], *, source: str = "",
                     registry: Sequence[type[Condition[Any, Any]]] = REGISTRY) -> PolicyConfig:
        """Build from the YAML layout: one section per shared part and per condition.

        Parameters
        ----------
        raw
            ``{"alarms": {...}, "signal": {...}, "hr_limits": {...},
            "patient_limits": {pid: {...}}, "<condition>": {...}, ...}``; a section or key
            left out keeps its default.
        source
            Where ``raw`` came from, for error messages.
        registry
            The conditions whose sections are accepted.

        Raises
        ------
        PolicyConfigError
            Unknown section or key, or a bad value; the message names the key.
        """
        where = f" in {source!r}" if source else ""
        by_name = {c.name: c for c in registry}
        shared: dict[str, Any] = {}
        conditions: dict[str, Any] = {}
        for key, value in raw.items():
            key = str(key)
            if key == "patient_limits":
                shared[key] = _parse_patient_limits(value)
            elif key in _SHARED_KINDS:
                shared[key] = _parse_section(_SHARED_KINDS[key], key, value, where)
            elif key in by_name:
                conditions[key] = _parse_section(by_name[key].settings_type, key, value, where)
            else:
                hint = (f" (a key of the flat version-1 layout: now {_V1_KEYS[key]})"
                        if key in _V1_KEYS else f" ({_REMOVED_SECTIONS[key]})"
                        if key in _REMOVED_SECTIONS else "")
                raise PolicyConfigError(f"unknown policy key {key!r}{where}{hint}")
        return cls(**shared, conditions=conditions, registry=tuple(registry))


_SHARED_KINDS: dict[str, type[Any]] = {
    "alarms": AlarmSettings, "signal": SignalSettings, "hr_limits": HRLimits}


def _check_registry(registry: Any) -> None:
    if not isinstance(registry, tuple) or not registry:
        raise PolicyConfigError(f"registry must be a non-empty tuple of conditions, got {registry!r}")
    seen: set[str] = set()
    for c in registry:
        if not (isinstance(c, type) and issubclass(c, Condition)):
            raise PolicyConfigError(f"registry entries must be Condition classes, got {c!r}")
        if c.name in seen or c.name in _SHARED_SECTIONS:
            raise PolicyConfigError(f"condition name {c.name!r} is taken")
        if getattr(c.settings_type, "section", None) != c.name:
            raise PolicyConfigError(
                f"{c.__name__}.settings_type.section must be {c.name!r}, "
                f"got {getattr(c.settings_type, 'section', None)!r}")
        if not c.consumes:
            raise PolicyConfigError(f"{c.__name__}.consumes is empty")
        for s in c.subsumed_by:
            if s not in seen:
                raise PolicyConfigError(
                    f"{c.name} is subsumed by {s!r}, which must come earlier in the registry")
        seen.add(c.name)


def _parse_section(kind: type[S], key: str, value: Any, where: str) -> S:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise PolicyConfigError(f"{key} must be a mapping of settings{where}, got {value!r}")
    names = {f.name for f in fields(cast(Any, kind))}
    for k in value:
        if k not in names:
            raise PolicyConfigError(f"unknown policy key '{key}.{k}'{where}")
    return kind(**value)


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


def load_policy_config(path: str | Path) -> PolicyConfig:
    """Read a :class:`PolicyConfig` from a YAML file (see :meth:`PolicyConfig.from_mapping`).

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
    except (yaml.YAMLError, ValueError, RecursionError) as e:  # ValueError: "!!int x", 5000 digits...
        raise PolicyConfigError(f"policy file {str(p)!r} is not valid YAML: {str(e)[:300]}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PolicyConfigError(
            f"policy file {str(p)!r} must hold a mapping, got {type(raw).__name__}")
    return PolicyConfig.from_mapping(raw, source=str(p))


_REPLACED_BY_AF = ("removed: the irregular_rhythm condition was replaced by atrial_fibrillation, "
                   "which reads the heart-rate bundle's AF detector")
#: Sections that no longer exist -> what replaced them (for the error message only).
_REMOVED_SECTIONS = {"irregular_rhythm": _REPLACED_BY_AF}
#: Flat version-1 policy keys -> where they live now (for the error message only).
_V1_KEYS = {
    "ectopy_k": "anomalous_beats.k", "ectopy_n": "anomalous_beats.n",
    "vrun_min_beats": "ventricular_run.min_beats", "vrun_max_rr_ms": "ventricular_run.max_rr_ms",
    "pause_s": "pause.pause_s", "hr_low_bpm": "hr_limits.hr_low_bpm",
    "hr_high_bpm": "hr_limits.hr_high_bpm", "brady_bpm": "hr_limits.brady_bpm",
    "tachy_bpm": "hr_limits.tachy_bpm",
    "sustain_s": "tachycardia.sustain_s and bradycardia.sustain_s",
    "hr_hysteresis_bpm": "tachycardia.hysteresis_bpm and bradycardia.hysteresis_bpm",
    "sustain_max_gap_s": "signal.hr_max_gap_s",
    "frequent_ectopy_per_min": "frequent_ectopy.per_min",
    "frequent_ectopy_clear_per_min": "frequent_ectopy.clear_per_min",
    "irregular_window_s": _REPLACED_BY_AF,
    "irregular_nrmssd": _REPLACED_BY_AF,
    "irregular_min_intervals": _REPLACED_BY_AF,
    "irregular_min_fraction": _REPLACED_BY_AF,
    "irregular_sustain_s": "atrial_fibrillation.sustain_s",
    "min_quality": "signal.min_quality", "lead_off_s": "lead_off.lead_off_s",
    "noisy_s": "signal_noisy.noisy_s", "no_data_s": "no_data.no_data_s",
    "technical_clear_s": "alarms.technical_clear_s", "clear_after_s": "alarms.clear_after_s",
    "cooldown_s": "alarms.cooldown_s", "high_ignores_cooldown": "alarms.high_ignores_cooldown",
    "update_min_interval_s": "alarms.update_min_interval_s",
    "update_rate_factor": "alarms.update_rate_factor",
    "update_hr_delta_bpm": "alarms.update_hr_delta_bpm",
}


# ----------------------------------------------------------------------------- state
@dataclass(frozen=True, slots=True)
class OpenAlert:
    """The policy's record of one open alert episode."""

    alert_id: str
    condition: str
    category: Category
    priority: Priority
    onset_ts_ms: int
    revision: int
    last_present_ts_ms: int  # event time the condition was last present or held
    rule: str
    details: Mapping[str, Any]
    score: float | None
    threshold: float | None
    model_version: str | None
    signal_quality: float | None
    last_emit_ts_ms: int  # event time of the last raised / updated
    next_update_severity: float  # severity at which a worsening is worth an update

    def held(self, ts_ms: int) -> OpenAlert:
        """This record, present again at ``ts_ms`` (hot path: positional, not ``replace``)."""
        return OpenAlert(self.alert_id, self.condition, self.category, self.priority,
                         self.onset_ts_ms, self.revision, ts_ms, self.rule, self.details,
                         self.score, self.threshold, self.model_version, self.signal_quality,
                         self.last_emit_ts_ms, self.next_update_severity)


@dataclass(slots=True)
class PatientPolicyState:
    """Everything the policy remembers about one patient.

    Times are event-time epoch milliseconds. The shared stream facts are read by every
    condition (:class:`streaming.conditions.StreamFacts`); ``conditions`` maps a
    condition name to its own state, ``open_alerts`` to its open episode, and
    ``cleared_at_ts_ms`` to when its last episode cleared (for the cooldown).
    """

    patient_id: str
    device_id: str = ""
    last_event_ts_ms: int | None = None  # latest event time seen on any stream
    ecg_ts_ms: int | None = None  # latest ECG event time (chunks, beats, tick)
    # event time up to which beat detection is complete (from ticks with event_ts_ms);
    # beats are emitted a little after their samples, so pauses are judged against this
    beats_complete_ts_ms: int | None = None
    last_beat_ts_ms: int | None = None
    unusable_until_ts_ms: int | None = None  # end of the latest unusable ECG stretch
    quality_usable: bool = True  # latest ECG chunk
    quality: float | None = None  # latest ECG chunk
    last_hr_ts_ms: int | None = None
    conditions: dict[str, Any] = field(default_factory=dict)
    open_alerts: dict[str, OpenAlert] = field(default_factory=dict)
    cleared_at_ts_ms: dict[str, int] = field(default_factory=dict)


_SHARED_FIELDS = tuple((f.name, f.default) for f in fields(PatientPolicyState)
                       if f.name not in ("patient_id", "conditions", "open_alerts",
                                         "cleared_at_ts_ms"))
_ALERT_FIELDS = tuple(f.name for f in fields(OpenAlert))
_STATE_HINTS = get_type_hints(PatientPolicyState)
_ALERT_HINTS = get_type_hints(OpenAlert)
#: The stream facts that are event times (moved by a device clock re-anchor).
_TIME_FACTS = ("last_event_ts_ms", "ecg_ts_ms", "beats_complete_ts_ms", "last_beat_ts_ms",
               "unusable_until_ts_ms", "last_hr_ts_ms")


_INT_LIMIT = 2**63


def json_value_fits(v: Any, hint: Any) -> bool:
    """Does a decoded JSON value ``v`` fit the annotation ``hint`` of a state field?

    Numbers are interchangeable (an ``int`` field may hold a float and back: event times
    pass through float arithmetic), booleans are not numbers, integers stay within int64.
    """
    if hint is Any:
        return True
    if hint is type(None):
        return v is None
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(json_value_fits(v, h) for h in get_args(hint))
    if origin is Literal:
        return v in get_args(hint) and type(v) in {type(a) for a in get_args(hint)}
    if hint is bool:
        return isinstance(v, bool)
    if hint in (int, float):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        return abs(v) < _INT_LIMIT if isinstance(v, int) else True
    if hint is str:
        return isinstance(v, str)
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(v, list):
            return False
        args = get_args(hint)
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(v) == len(args) and all(json_value_fits(x, h) for x, h in zip(v, args))
        return not args or all(json_value_fits(x, args[0]) for x in v)
    if origin in (dict, _AbcMapping, typing.Mapping) or hint in (dict, _AbcMapping):
        if not isinstance(v, dict):
            return False
        args = get_args(hint)
        return not args or all(json_value_fits(x, args[1]) for x in v.values())
    return True  # an annotation this check does not know: left to the code that reads it


def _check_fields(d: Mapping[str, Any], hints: Mapping[str, Any], where: str) -> None:
    for k, v in d.items():
        hint = hints.get(k)
        if hint is not None and not json_value_fits(v, hint):
            raise PolicyStateError(f"policy state {where}.{k} must fit {hint}, got {v!r:.60}")


class _StateCodec:
    """Copy and (de)serialise one condition's state dataclass; only non-default fields
    are written, so a condition that has seen nothing costs nothing in the changelog."""

    __slots__ = ("kind", "defaults", "containers", "hints")

    def __init__(self, kind: type[Any]) -> None:
        self.kind = kind
        self.hints = get_type_hints(kind)
        empty = kind()
        self.defaults = tuple((f.name, getattr(empty, f.name)) for f in fields(kind))
        self.containers = tuple(isinstance(v, (list, dict)) for _, v in self.defaults)

    def copy(self, state: Any) -> Any:
        # one level deep: inner lists are replaced, never mutated; positional arguments
        # because dataclasses.replace costs several times more on this hot path
        args = []
        for (n, _), container in zip(self.defaults, self.containers):
            v = getattr(state, n)
            args.append((list(v) if isinstance(v, list) else dict(v)) if container else v)
        return self.kind(*args)

    def encode(self, state: Any) -> dict[str, Any]:
        out = {}
        for n, default in self.defaults:
            v = getattr(state, n)
            if v != default:
                out[n] = v
        return out

    def decode(self, d: Any, where: str) -> Any:
        if not isinstance(d, dict):
            raise PolicyStateError(f"policy state {where} must be an object, got {d!r}")
        names = {n for n, _ in self.defaults}
        # keys written by a later release are dropped; missing keys take their defaults
        kept = {k: v for k, v in d.items() if k in names}
        _check_fields(kept, self.hints, where)
        state = self.kind(**kept)
        # a shape the annotation cannot say (e.g. pairs): the state class may check it
        problem = getattr(state, "decoded_problem", lambda: None)()
        if problem:
            raise PolicyStateError(f"policy state {where}: {problem}")
        return state


# The flat version-1 layout: which of its keys became which condition's state fields.
_V1_CONDITION_FIELDS: dict[str, dict[str, str]] = {
    "ventricular_run": {"run_len": "run_len", "run_start_ts_ms": "run_start_ts_ms",
                        "run_rr_ms": "run_rr_ms"},
    "tachycardia": {"tachy_since_ts_ms": "since_ts_ms"},
    "bradycardia": {"brady_since_ts_ms": "since_ts_ms"},
    "frequent_ectopy": {"flagged_ts_ms": "flagged_ts_ms"},
    # irregular_rhythm's keys (irregular_since_ts_ms, rr_window) are dropped: the
    # condition was replaced by atrial_fibrillation, which starts afresh
    "anomalous_beats": {"recent_flags": "recent_flags"},
    "lead_off": {"lead_off_since_ts_ms": "since_ts_ms"},
    "signal_noisy": {"noisy_since_ts_ms": "since_ts_ms"},
    "no_data": {"last_tick_wall_ms": "last_tick_wall_ms", "progress_wall_ms": "progress_wall_ms",
                "event_ts_at_last_tick_ms": "event_ts_at_last_tick_ms"},
}


def _migrate_v1(d: dict[str, Any]) -> dict[str, Any]:
    """Version-1 state (one flat object) -> the version-2 layout."""
    out: dict[str, Any] = {k: d[k] for k in ("patient_id", "open_alerts", "cleared_at_ts_ms")
                           if k in d}
    out.update((name, d[name]) for name, _ in _SHARED_FIELDS if name in d)
    out["conditions"] = {cond: {new: d[old] for old, new in m.items() if old in d}
                         for cond, m in _V1_CONDITION_FIELDS.items()}
    out["version"] = STATE_VERSION
    return out


# ---------------------------------------------------------------------------- policy
Result = tuple[list[AlertEvent], PatientPolicyState]


class _Call:
    """One ``on_*`` call: the working copy of the state, the events so far, the context,
    and which condition states are already this call's own copies."""

    __slots__ = ("st", "out", "ctx", "owned")

    def __init__(self, st: PatientPolicyState, ctx: RuleContext) -> None:
        self.st = st
        self.out: list[AlertEvent] = []
        self.ctx = ctx
        self.owned: set[str] = set()


class AlertPolicy:
    """Per-patient alert decisions; pure and deterministic.

    Parameters
    ----------
    config
        Validated policy settings; ``config.registry`` names the conditions.

    Notes
    -----
    Call order per patient: for one ECG chunk, pass its :class:`QualityObservation` to
    :meth:`on_quality` *before* its beats to :meth:`on_beats`, so beats inside an unusable
    chunk are suppressed.
    """

    def __init__(self, config: PolicyConfig | None = None) -> None:
        self.config = config if config is not None else PolicyConfig()
        cfg = self.config
        #: The configured condition objects, in dispatch order.
        self.conditions: tuple[Condition[Any, Any], ...] = tuple(
            cls(cfg.conditions[cls.name]) for cls in cfg.registry)
        conds = self.conditions
        self._consumers: dict[type[Any], tuple[Condition[Any, Any], ...]] = {}
        for c in conds:
            for kind in c.consumes:
                self._consumers[kind] = self._consumers.get(kind, ()) + (c,)
        self._derived: dict[Stream, tuple[Condition[Any, Any], ...]] = {
            s: tuple(c for c in conds if c.derived_from == s) for s in ("ecg", "hr")}
        self._cleared_by_data = tuple(c for c in conds if c.cleared_by_data is not None)
        self._clear_after_s: dict[str, float | None] = {
            c.name: None if c.cleared_by_data is not None
            else cfg.alarms.clear_after_s if c.category == "physiological"
            else cfg.alarms.technical_clear_s
            for c in conds}
        self._codecs = {c.name: _StateCodec(c.state_type) for c in conds}
        self._intakes: dict[type[Any], Callable[[_Call, Any], None]] = {
            ScoredBeat: self._beat, HRObservation: self._hr, QualityObservation: self._quality,
            Tick: self._tick, StreamGap: self._gap, DeviceClockEvent: self._clock}
        self._reset_on_rebase = tuple(c for c in conds if not c.kept_on_rebase)

    # ------------------------------------------------------------------ public API
    def initial_state(self, patient_id: str) -> PatientPolicyState:
        """Fresh state for a patient never seen before."""
        if not patient_id:
            raise ValueError(f"patient_id must be a non-empty string, got {patient_id!r}")
        return PatientPolicyState(patient_id=patient_id,
                                  conditions={c.name: c.new_state() for c in self.conditions})

    def on_beats(self, state: PatientPolicyState, beats: Sequence[ScoredBeat]) -> Result:
        """Apply scored beats (any order; sorted by ``r_ts_ms`` here).

        Returns
        -------
        (events, new_state)
            Alert events in the order they happened, and the patient's new state.
        """
        call = self._begin(state)
        for beat in sorted(beats, key=lambda b: b.r_ts_ms):
            self._check_patient(call.st, beat.patient_id)
            self._beat(call, beat)
        return call.out, call.st

    def on_hr(self, state: PatientPolicyState, obs: HRObservation) -> Result:
        """Apply one heart-rate observation (limits, sustained rates, irregularity)."""
        return self.on_observation(state, obs)

    def on_quality(self, state: PatientPolicyState, obs: QualityObservation) -> Result:
        """Apply the signal quality of one ECG chunk (technical alerts, suppression)."""
        return self.on_observation(state, obs)

    def on_gap(self, state: PatientPolicyState, start_ts_ms: int, end_ts_ms: int) -> Result:
        """The device's stream has a hole (lost messages or a restarted signal segment)
        from ``start_ts_ms`` to ``end_ts_ms``: no ECG-derived finding may span it (a data
        gap is not a pause). Raises nothing itself; silence is ``no_data``'s job."""
        return self.on_observation(state, StreamGap(int(start_ts_ms), int(end_ts_ms)))

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
        return self.on_observation(state, Tick(now_ms, event_ts_ms))

    def on_observation(self, state: PatientPolicyState, obs: object) -> Result:
        """Apply one observation of any type a condition consumes.

        Scored beats, heart-rate and quality observations, :class:`StreamGap` and
        :class:`Tick` have their own bookkeeping; any other type must follow
        :class:`streaming.conditions.Observation`.

        Raises
        ------
        TypeError
            No condition consumes observations of this type.
        ValueError
            The observation belongs to another patient.
        """
        intake = self._intakes.get(type(obs), self._other)
        call = self._begin(state)
        if isinstance(obs, (ScoredBeat, HRObservation, QualityObservation)):
            self._check_patient(call.st, obs.patient_id)
        intake(call, obs)
        return call.out, call.st

    # ------------------------------------------------------------------ serialiser
    def state_to_json(self, state: PatientPolicyState) -> bytes:
        """Compact JSON of a patient's state (hot path: the worker writes every changed
        state to its changelog). Defaults are left out; states of conditions this policy
        does not run are dropped."""
        d: dict[str, Any] = {"version": STATE_VERSION, "patient_id": state.patient_id}
        for name, default in _SHARED_FIELDS:
            v = getattr(state, name)
            if v != default:
                d[name] = v
        conds: dict[str, Any] = {}
        for name, codec in self._codecs.items():
            s = state.conditions.get(name)
            if s is not None:
                enc = codec.encode(s)
                if enc:
                    conds[name] = enc
        if conds:
            d["conditions"] = conds
        if state.open_alerts:
            d["open_alerts"] = {k: {n: getattr(r, n) for n in _ALERT_FIELDS}
                                for k, r in state.open_alerts.items()}
        if state.cleared_at_ts_ms:
            d["cleared_at_ts_ms"] = state.cleared_at_ts_ms
        return jsoncodec.dumps(d)

    def state_from_json(self, raw: bytes | str) -> PatientPolicyState:
        """Inverse of :meth:`state_to_json`; also reads the flat version-1 layout.

        Raises
        ------
        PolicyStateError
            Not JSON, another version, or a broken layout.
        """
        try:
            d = jsoncodec.loads(raw)
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
            raise PolicyStateError(f"policy state is not JSON: {e}") from None
        if not isinstance(d, dict):
            raise PolicyStateError(f"policy state must be a JSON object, got {type(d).__name__}")
        version = d.get("version")
        if version == 1:
            d = _migrate_v1(d)
        elif version != STATE_VERSION:
            raise PolicyStateError(
                f"policy state version must be {STATE_VERSION} (or 1, migrated on load), "
                f"got {version!r}")
        pid = d.get("patient_id")
        if not isinstance(pid, str) or not pid:
            raise PolicyStateError(f"policy state needs a patient_id string, got {pid!r}")
        shared = {name: d[name] for name, _ in _SHARED_FIELDS if name in d}
        _check_fields(shared, _STATE_HINTS, "")
        raw_conds = d.get("conditions", {})
        alerts = d.get("open_alerts", {})
        cleared = d.get("cleared_at_ts_ms", {})
        for key, v in (("conditions", raw_conds), ("open_alerts", alerts),
                       ("cleared_at_ts_ms", cleared)):
            if not isinstance(v, dict):
                raise PolicyStateError(f"policy state {key} must be an object, got {v!r}")
        conditions = {}
        for c in self.conditions:
            enc = raw_conds.get(c.name)
            conditions[c.name] = (c.new_state() if enc is None
                                  else self._codecs[c.name].decode(enc, f"conditions.{c.name}"))
        try:
            for k, r in alerts.items():
                _check_fields(r, _ALERT_HINTS, f"open_alerts.{k}")
            open_alerts = {k: OpenAlert(**{n: r[n] for n in _ALERT_FIELDS})
                           for k, r in alerts.items()}
        except (KeyError, TypeError, AttributeError) as e:
            raise PolicyStateError(f"policy state open_alerts record is broken: {e!r}") from None
        if not all(json_value_fits(v, int) for v in cleared.values()):
            raise PolicyStateError(f"policy state cleared_at_ts_ms must map to event times, got {cleared!r:.60}")
        return PatientPolicyState(patient_id=pid, **shared, conditions=conditions,
                                  open_alerts=open_alerts, cleared_at_ts_ms=dict(cleared))

    # ------------------------------------------------------------------ intake
    def _begin(self, state: PatientPolicyState) -> _Call:
        # Condition states are copied only when a rule is about to run (see _state_of);
        # open-alert records are frozen and replaced, never mutated.
        st = PatientPolicyState(
            state.patient_id, state.device_id, state.last_event_ts_ms, state.ecg_ts_ms,
            state.beats_complete_ts_ms, state.last_beat_ts_ms, state.unusable_until_ts_ms,
            state.quality_usable, state.quality, state.last_hr_ts_ms, dict(state.conditions),
            dict(state.open_alerts), dict(state.cleared_at_ts_ms))
        ctx = RuleContext(st, st.open_alerts, self.config.signal.min_quality,
                          self.config.limits_for(st.patient_id))
        return _Call(st, ctx)

    @staticmethod
    def _check_patient(st: PatientPolicyState, patient_id: str) -> None:
        if patient_id != st.patient_id:
            raise ValueError(
                f"event for patient {patient_id!r} applied to the state of {st.patient_id!r}")

    def _beat(self, call: _Call, b: ScoredBeat) -> None:
        st, ts = call.st, b.r_ts_ms
        st.device_id = b.device_id
        st.last_event_ts_ms = _max(st.last_event_ts_ms, ts)
        st.ecg_ts_ms = _max(st.ecg_ts_ms, ts)
        self._data_arrived(call, ts)
        st.last_beat_ts_ms = _max(st.last_beat_ts_ms, ts)
        in_unusable = st.unusable_until_ts_ms is not None and ts <= st.unusable_until_ts_ms
        unusable = in_unusable or b.signal_quality < self.config.signal.min_quality
        self._dispatch(call, ScoredBeat, b, ts, ("ecg",) if unusable else (), sweep=True)

    def _hr(self, call: _Call, obs: HRObservation) -> None:
        st, ts = call.st, obs.ts_ms
        st.device_id = obs.device_id
        st.last_event_ts_ms = _max(st.last_event_ts_ms, ts)
        self._data_arrived(call, ts)
        sig = self.config.signal
        unusable = not math.isfinite(obs.hr_bpm) or (obs.quality is not None
                                                     and obs.quality < sig.min_quality)
        call.ctx.hr_continuous = (not unusable and st.last_hr_ts_ms is not None
                                  and ts - st.last_hr_ts_ms <= sig.hr_max_gap_s * 1000)
        st.last_hr_ts_ms = ts
        self._dispatch(call, HRObservation, obs, ts, ("hr",) if unusable else (), sweep=True)

    def _quality(self, call: _Call, obs: QualityObservation) -> None:
        st = call.st
        end = obs.ts_ms + obs.duration_ms
        st.device_id = obs.device_id
        st.last_event_ts_ms = _max(st.last_event_ts_ms, end)
        st.ecg_ts_ms = _max(st.ecg_ts_ms, end)
        self._data_arrived(call, obs.ts_ms)
        st.quality = obs.quality
        st.quality_usable = not (obs.lead_off or obs.noisy
                                 or obs.quality < self.config.signal.min_quality)
        if not st.quality_usable:
            st.unusable_until_ts_ms = _max(st.unusable_until_ts_ms, end)
        self._dispatch(call, QualityObservation, obs, end,
                       () if st.quality_usable else ("ecg",), sweep=True)

    def _gap(self, call: _Call, gap: StreamGap) -> None:
        if gap.end_ts_ms <= gap.start_ts_ms:
            return
        st = call.st
        st.unusable_until_ts_ms = _max(st.unusable_until_ts_ms, gap.end_ts_ms)
        self._dispatch(call, StreamGap, gap, gap.end_ts_ms, ("ecg",), sweep=False)

    def _clock(self, call: _Call, ev: DeviceClockEvent) -> None:
        """A device restart or clock event. A re-anchor (``shift_ms``) moves every event
        time the state holds into the device's new time base, so durations (hysteresis,
        cooldown, absence) keep their length across it and nothing is suppressed or
        cleared by the jump itself; condition states start afresh (no run, pause or
        sustained rate is stitched across a jump). Open alerts keep their onset (their
        id names it)."""
        self._check_patient(call.st, ev.patient_id)
        st, d = call.st, ev.shift_ms
        if d:
            for name in _TIME_FACTS:
                v = getattr(st, name)
                if v is not None:
                    setattr(st, name, v + d)
            st.open_alerts = {
                k: replace(r, last_present_ts_ms=r.last_present_ts_ms + d,
                           last_emit_ts_ms=r.last_emit_ts_ms + d)
                for k, r in st.open_alerts.items()}
            st.cleared_at_ts_ms = {k: v + d for k, v in st.cleared_at_ts_ms.items()}
            for c in self._reset_on_rebase:
                st.conditions[c.name] = c.new_state()
                call.owned.add(c.name)
        st.device_id = ev.device_id
        self._dispatch(call, DeviceClockEvent, ev, ev.ts_ms, (), sweep=True)

    def _tick(self, call: _Call, tick: Tick) -> None:
        st = call.st
        if tick.event_ts_ms is not None:
            st.ecg_ts_ms = _max(st.ecg_ts_ms, tick.event_ts_ms)
            st.last_event_ts_ms = _max(st.last_event_ts_ms, tick.event_ts_ms)
            st.beats_complete_ts_ms = _max(st.beats_complete_ts_ms, tick.event_ts_ms)
        self._dispatch(call, Tick, tick, tick.now_ms, (), sweep=False)

    def _other(self, call: _Call, obs: Any) -> None:
        """An observation type added after these (an :class:`Observation`): data at
        ``obs.ts_ms``. A reading below ``signal.min_quality`` makes its conditions'
        streams unusable; one inside an unusable ECG stretch suppresses its ECG-derived
        conditions."""
        if type(obs) not in self._consumers:
            raise TypeError(f"no condition consumes observations of type {type(obs).__name__}")
        st, ts = call.st, obs.ts_ms
        self._check_patient(st, obs.patient_id)
        st.device_id = obs.device_id
        st.last_event_ts_ms = _max(st.last_event_ts_ms, ts)
        self._data_arrived(call, ts)
        low = obs.quality is not None and obs.quality < self.config.signal.min_quality
        in_unusable = st.unusable_until_ts_ms is not None and ts <= st.unusable_until_ts_ms
        streams = {c.derived_from for c in self._consumers[type(obs)]}
        unusable = tuple(s for s in _STREAMS
                         if s in streams and (low or (s == "ecg" and in_unusable)))
        self._dispatch(call, type(obs), obs, ts, unusable, sweep=True)

    # ------------------------------------------------------------------ dispatch
    def _dispatch(self, call: _Call, kind: type[Any], obs: Any, ts: int,
                  unusable: tuple[Stream, ...], *, sweep: bool) -> None:
        """Suppress what the ``unusable`` streams derive (their states start afresh), run
        the other consumers' rules in registry order, then (``sweep``) clear their open
        alerts that have been absent long enough at ``ts``."""
        for stream in unusable:
            for c in self._derived[stream]:
                call.st.conditions[c.name] = c.new_state()
                call.owned.add(c.name)
        consumers = self._consumers.get(kind, ())
        if unusable:
            consumers = tuple(c for c in consumers if c.derived_from not in unusable)
        for c in consumers:
            decision = c.observe(self._state_of(call, c), obs, call.ctx)
            if decision is not None:
                self._apply(call, c, decision)
        if sweep:
            for c in consumers:
                after_s = self._clear_after_s[c.name]
                if after_s is not None:
                    self._maybe_clear(call, c.name, ts, after_s)

    def _state_of(self, call: _Call, c: Condition[Any, Any]) -> Any:
        states = call.st.conditions
        if c.name not in call.owned:
            s = states.get(c.name)
            states[c.name] = c.new_state() if s is None else self._codecs[c.name].copy(s)
            call.owned.add(c.name)
        return states[c.name]

    def _data_arrived(self, call: _Call, ts: int) -> None:
        for c in self._cleared_by_data:
            if c.name in call.st.open_alerts:
                self._clear(call, c.name, ts, cast(str, c.cleared_by_data))

    def _apply(self, call: _Call, c: Condition[Any, Any], d: Decision) -> None:
        if isinstance(d, Finding):
            if not any(s in call.st.open_alerts for s in c.subsumed_by):
                self._present(call, c, d)
        elif isinstance(d, Hold):
            self._hold(call, c.name, d.ts_ms)
        elif c.name in call.st.open_alerts:
            self._clear(call, c.name, d.ts_ms, d.rule)

    # ------------------------------------------------------------------ alert lifecycle
    def _present(self, call: _Call, c: Condition[Any, Any], f: Finding) -> None:
        alarms, st = self.config.alarms, call.st
        rec = st.open_alerts.get(c.name)
        if rec is not None:
            last_present = max(rec.last_present_ts_ms, f.ts_ms)
            rises = PRIORITY_ORDER[f.priority] > PRIORITY_ORDER[rec.priority]
            worse = f.severity >= rec.next_update_severity
            due = f.ts_ms - rec.last_emit_ts_ms >= alarms.update_min_interval_s * 1000
            if rises or (worse and due):
                rec = self._record(rec.alert_id, c, f.priority if rises else rec.priority,
                                   rec.onset_ts_ms, rec.revision + 1, last_present, f)
                st.open_alerts[c.name] = rec
                call.out.append(self._event(st, rec, "updated", f.ts_ms))
            elif last_present != rec.last_present_ts_ms:
                st.open_alerts[c.name] = rec.held(last_present)
            return
        onset = f.onset_ts_ms
        cleared_at = st.cleared_at_ts_ms.get(c.name)
        if cleared_at is not None:
            in_cooldown = f.ts_ms - cleared_at < alarms.cooldown_s * 1000
            exempt = f.priority == "high" and alarms.high_ignores_cooldown
            if in_cooldown and not exempt:
                return
            # a new episode never reuses the previous one's id
            onset = max(onset, cleared_at + 1)
        rec = self._record(f"{st.patient_id}:{c.name}:{onset}", c, f.priority, onset, 1,
                           f.ts_ms, f)
        st.open_alerts[c.name] = rec
        call.out.append(self._event(st, rec, "raised", f.ts_ms))

    def _record(self, alert_id: str, c: Condition[Any, Any], priority: Priority, onset: int,
                revision: int, last_present: int, f: Finding) -> OpenAlert:
        alarms = self.config.alarms
        if f.update == "never":
            next_severity = _NEVER
        elif f.update == "hr_delta":
            next_severity = f.severity + alarms.update_hr_delta_bpm
        else:
            next_severity = f.severity + max(f.severity * (alarms.update_rate_factor - 1.0),
                                             f.min_step)
        return OpenAlert(
            alert_id=alert_id, condition=c.name, category=c.category, priority=priority,
            onset_ts_ms=onset, revision=revision, last_present_ts_ms=last_present,
            rule=f.rule, details=dict(f.details), score=f.score, threshold=f.threshold,
            model_version=f.model_version, signal_quality=f.signal_quality,
            last_emit_ts_ms=f.ts_ms, next_update_severity=next_severity)

    @staticmethod
    def _hold(call: _Call, name: str, ts: int) -> None:
        """The condition is still inside its hysteresis band: keep the open alert alive."""
        rec = call.st.open_alerts.get(name)
        if rec is not None and ts > rec.last_present_ts_ms:
            call.st.open_alerts[name] = rec.held(ts)

    def _maybe_clear(self, call: _Call, name: str, ts: int, after_s: float) -> None:
        rec = call.st.open_alerts.get(name)
        if rec is None or ts - rec.last_present_ts_ms < after_s * 1000:
            return
        self._clear(call, name, ts,
                    f"{name} absent for {(ts - rec.last_present_ts_ms) / 1000:.0f} s "
                    f"(clear after {after_s:g} s)")

    def _clear(self, call: _Call, name: str, ts: int, rule: str) -> None:
        st = call.st
        rec = st.open_alerts.pop(name)
        rec = replace(rec, revision=rec.revision + 1, rule=rule)
        st.cleared_at_ts_ms[name] = ts
        call.out.append(self._event(st, rec, "cleared", ts))

    @staticmethod
    def _event(st: PatientPolicyState, rec: OpenAlert, action: AlertAction,
               ts: int) -> AlertEvent:
        return AlertEvent(
            alert_id=rec.alert_id, revision=rec.revision, action=action,
            patient_id=st.patient_id, device_id=st.device_id, condition=rec.condition,
            category=rec.category, priority=rec.priority, onset_ts_ms=rec.onset_ts_ms,
            detected_ts_ms=ts, rule=rec.rule, score=rec.score, threshold=rec.threshold,
            model_version=rec.model_version, signal_quality=rec.signal_quality,
            details=dict(rec.details))


def _max(a: int | None, b: int) -> int:
    return b if a is None else max(a, b)

