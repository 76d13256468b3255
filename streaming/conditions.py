"""Alert conditions: one rule object per condition, and the registry the policy runs.

A condition holds its validated settings (a frozen dataclass, one YAML section named for
the condition), names the small dataclass it keeps per patient, decides from one
observation what it sees, and describes itself (name, category, one line of the
conditions table per priority). A rule returns

- a :class:`Finding`: the condition is present now (the policy raises or updates),
- :class:`Hold`: it is still inside its hysteresis band (the open alert stays open),
- :class:`Clear`: it is over (the policy clears the open alert at once),
- ``None``: it is absent (an open alert clears once absent long enough).

What alerts have in common lives once, in :class:`streaming.policy.AlertPolicy`: one
open alert per condition, updates (priority rises, rate-limited worsening), hysteresis,
cooldown, suppression while a stream is unusable, one condition subsuming another.

Adding a condition is one class here and one line in :data:`REGISTRY`; an observation
type of its own, if it needs one, is one frozen dataclass in :mod:`streaming.events`
with ``patient_id``, ``device_id``, ``ts_ms`` and ``quality`` (see :class:`Observation`).
Then regenerate the conditions tables (policy docstring, README) with
:func:`conditions_table`; a unit test checks them.
"""

from __future__ import annotations

import math
import textwrap
from abc import ABC, abstractmethod
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar

from streaming.errors import PolicyConfigError
from streaming.events import (
    Category,
    DeviceClockEvent,
    HRObservation,
    Priority,
    QualityObservation,
    ScoredBeat,
    VFObservation,
)

__all__ = [
    "Tick",
    "StreamGap",
    "Observation",
    "StreamFacts",
    "RuleContext",
    "Update",
    "Finding",
    "Hold",
    "Clear",
    "Decision",
    "Stream",
    "Condition",
    "bounded",
    "check_settings",
    "VentricularRunSettings",
    "VentricularRunState",
    "VentricularRun",
    "VentricularFibrillationSettings",
    "VentricularFibrillationState",
    "VentricularFibrillation",
    "PauseSettings",
    "PauseState",
    "Pause",
    "SustainedRateState",
    "TachycardiaSettings",
    "Tachycardia",
    "BradycardiaSettings",
    "Bradycardia",
    "FrequentEctopySettings",
    "FrequentEctopyState",
    "FrequentEctopy",
    "AtrialFibrillationSettings",
    "AtrialFibrillationState",
    "AtrialFibrillation",
    "AnomalousBeatsSettings",
    "AnomalousBeatsState",
    "AnomalousBeats",
    "StretchState",
    "LeadOffSettings",
    "LeadOff",
    "SignalNoisySettings",
    "SignalNoisy",
    "NoDataSettings",
    "NoDataState",
    "NoData",
    "DeviceClockSettings",
    "DeviceClockState",
    "DeviceClock",
    "REGISTRY",
    "conditions_table",
]

_ECTOPY_WINDOW_MS = 60_000


# ---------------------------------------------------------------------------- inputs
@dataclass(frozen=True, slots=True)
class Tick:
    """Time passes with no message.

    ``now_ms`` is the wall clock (epoch ms); ``event_ts_ms``, when known, the ECG event
    time up to which beat detection is complete.
    """

    now_ms: int
    event_ts_ms: int | None = None


@dataclass(frozen=True, slots=True)
class StreamGap:
    """The device's stream has a hole from ``start_ts_ms`` to ``end_ts_ms`` (event time)."""

    start_ts_ms: int
    end_ts_ms: int


class Observation(Protocol):
    """What an observation type added later must carry to reach its conditions.

    ``ts_ms`` is its event time (epoch ms); ``quality`` 0..1 or ``None`` (unknown). A
    reading below ``signal.min_quality`` makes the stream its conditions derive from
    unusable (see :attr:`Condition.derived_from`).
    """

    @property
    def patient_id(self) -> str: ...
    @property
    def device_id(self) -> str: ...
    @property
    def ts_ms(self) -> int: ...
    @property
    def quality(self) -> float | None: ...


class StreamFacts(Protocol):
    """What the policy knows about a patient's streams; rules read it, never write it.

    Event-time epoch ms. ``unusable_until_ts_ms`` is the end of the latest unusable ECG
    stretch (lead off, noisy chunk, stream gap); ``quality`` / ``quality_usable`` are
    those of the latest ECG chunk.
    """

    @property
    def patient_id(self) -> str: ...
    @property
    def last_event_ts_ms(self) -> int | None: ...
    @property
    def ecg_ts_ms(self) -> int | None: ...
    @property
    def beats_complete_ts_ms(self) -> int | None: ...
    @property
    def last_beat_ts_ms(self) -> int | None: ...
    @property
    def unusable_until_ts_ms(self) -> int | None: ...
    @property
    def quality_usable(self) -> bool: ...
    @property
    def quality(self) -> float | None: ...
    @property
    def last_hr_ts_ms(self) -> int | None: ...


@dataclass(slots=True)
class RuleContext:
    """What a rule may know beyond its own settings, state and observation.

    Attributes
    ----------
    facts
        The patient's stream facts (read-only).
    open_alerts
        Names of the conditions with an open alert.
    min_quality
        ``signal.min_quality``: below it a reading is unusable.
    hr_limits
        The patient's clinician limits ``(hr_low_bpm, brady_bpm, tachy_bpm, hr_high_bpm)``.
    hr_continuous
        For a heart-rate observation: it follows the previous one within
        ``signal.hr_max_gap_s`` (a longer gap breaks a "sustained" run).
    """

    facts: StreamFacts
    open_alerts: Container[str]
    min_quality: float
    hr_limits: tuple[float, float, float, float]
    hr_continuous: bool = False

    def is_open(self, condition: str) -> bool:
        return condition in self.open_alerts


# ------------------------------------------------------------------------- decisions
#: How an open alert's ``updated`` is rate-limited: ``rate`` once severity grows by
#: ``alarms.update_rate_factor`` (at least ``min_step``), ``hr_delta`` once it grows by
#: ``alarms.update_hr_delta_bpm``, ``never`` (only a priority rise updates).
Update = Literal["rate", "hr_delta", "never"]


@dataclass(frozen=True, slots=True)
class Finding:
    """The condition is present at ``ts_ms`` (event time of the evidence).

    ``severity``: higher is worse; the policy sends ``updated`` only once it has grown by
    the ``update`` step (or the priority rises). ``onset_ts_ms`` names the episode.
    """

    priority: Priority
    ts_ms: int
    onset_ts_ms: int
    rule: str
    severity: float = 0.0
    update: Update = "never"
    min_step: float = 1.0
    details: Mapping[str, Any] = field(default_factory=dict)
    score: float | None = None
    threshold: float | None = None
    model_version: str | None = None
    signal_quality: float | None = None


@dataclass(frozen=True, slots=True)
class Hold:
    """Not present, but inside the hysteresis band: an open alert stays open at ``ts_ms``."""

    ts_ms: int


@dataclass(frozen=True, slots=True)
class Clear:
    """The condition has ended at ``ts_ms``: an open alert clears now, saying ``rule``."""

    ts_ms: int
    rule: str


Decision = Finding | Hold | Clear

#: A stream whose unusable stretches suppress the conditions derived from it.
Stream = Literal["ecg", "hr"]


# -------------------------------------------------------------------------- settings
def bounded(default: float, lo: float, hi: float) -> Any:
    """A setting field with its valid range; :func:`check_settings` enforces it."""
    return field(default=default, metadata={"bounds": (lo, hi)})


def check_settings(obj: Any) -> None:
    """Validate a settings dataclass by its field types and :func:`bounded` ranges.

    Errors name the key as ``section.field``, ``section`` being the class's YAML section.

    Raises
    ------
    PolicyConfigError
        A value of the wrong type or outside its range.
    """
    section = type(obj).section
    for f in fields(obj):
        v = getattr(obj, f.name)
        key = f"{section}.{f.name}"
        if f.type == "bool":
            if not isinstance(v, bool):
                raise PolicyConfigError(f"{key} must be true or false, got {v!r}")
            continue
        lo, hi = f.metadata["bounds"]
        if f.type == "int":
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise PolicyConfigError(f"{key} must be an integer in [{lo}, {hi}], got {v!r}")
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and math.isnan(v)):
            raise PolicyConfigError(f"{key} must be a number, got {v!r}")
        if not lo <= v <= hi:
            raise PolicyConfigError(f"{key} must be in [{lo}, {hi}], got {v}")


# ------------------------------------------------------------------------- the base
SettingsT = TypeVar("SettingsT")
StateT = TypeVar("StateT")


class Condition(ABC, Generic[SettingsT, StateT]):
    """One alert condition: settings, per-patient state type, rule and description.

    Class attributes
    ----------------
    name
        Condition name on the alerts (``AlertEvent.condition``) and YAML section.
    category
        ``physiological`` or ``technical``. An open alert clears once the condition has
        been absent for ``alarms.clear_after_s`` (physiological) or
        ``alarms.technical_clear_s`` (technical), unless ``cleared_by_data`` is set.
    settings_type, state_type
        The frozen settings dataclass (``section`` equal to ``name``) and the per-patient
        state dataclass. A state holds values and lists of values; the policy copies its
        lists before the rule runs, and inner lists are replaced, never mutated.
    consumes
        Observation types dispatched to :meth:`observe`.
    derived_from
        ``ecg`` or ``hr``: while that stream is unusable the rule is not called and its
        state is reset to a fresh one. ``None``: never suppressed.
    subsumed_by
        Conditions (earlier in the registry) that say more: while one of them is open,
        this condition's findings are dropped.
    cleared_by_data
        If set, an open alert clears with this text as soon as any data arrives, and the
        absence clock does not apply.
    kept_on_rebase
        When a device's clock jump re-anchors the patient's time base, every condition
        state starts afresh (its event times are in the old base, and nothing is stitched
        across a jump), except those of conditions that set this (wall time, or a state
        that follows the :class:`~streaming.events.DeviceClockEvent` itself).
    rows
        ``(priority, rule text)`` lines of the conditions table; ````key```` names one of
        the condition's settings, ````section.key```` a shared one.
    """

    name: ClassVar[str]
    category: ClassVar[Category]
    settings_type: ClassVar[type[Any]]
    state_type: ClassVar[type[Any]]
    consumes: ClassVar[tuple[type[Any], ...]]
    derived_from: ClassVar[Stream | None] = None
    subsumed_by: ClassVar[tuple[str, ...]] = ()
    cleared_by_data: ClassVar[str | None] = None
    kept_on_rebase: ClassVar[bool] = False
    rows: ClassVar[tuple[tuple[Priority, str], ...]]

    __slots__ = ("settings",)

    def __init__(self, settings: SettingsT | None = None) -> None:
        if settings is None:
            settings = self.settings_type()
        if type(settings) is not self.settings_type:
            raise PolicyConfigError(
                f"{self.name} settings must be {self.settings_type.__name__}, "
                f"got {type(settings).__name__}")
        self.settings: SettingsT = settings

    def new_state(self) -> StateT:
        """The state of a patient this condition has seen nothing of."""
        state: StateT = self.state_type()
        return state

    @abstractmethod
    def observe(self, state: StateT, obs: Any, ctx: RuleContext) -> Decision | None:
        """Decide from one observation of a type in :attr:`consumes`; may update ``state``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings!r})"


def _from_beat(b: ScoredBeat, priority: Priority, onset_ts_ms: int, rule: str,
               severity: float, details: Mapping[str, Any]) -> Finding:
    return Finding(priority, b.r_ts_ms, onset_ts_ms, rule, severity, "rate", details=details,
                   score=b.score, threshold=b.threshold, model_version=b.model_version,
                   signal_quality=b.signal_quality)


# ------------------------------------------------------------------- ventricular run
@dataclass(frozen=True, slots=True)
class VentricularRunSettings:
    """Ventricular run: three or more ventricular beats in a row at 100 bpm or more."""

    section: ClassVar[str] = "ventricular_run"
    min_beats: int = bounded(3, 2, 10_000)
    max_rr_ms: float = bounded(600.0, 100.0, 2000.0)
    # With a beat classifier: the run's first beat must be ventricular on its own
    # (``beat_class == "V"``); each next beat continues it while its in-run ventricular
    # evidence ``p_run`` is at least this (the wide, bizarre beats of a run are the ones a
    # classifier most often calls artefact), and the run's mean RR must be <= max_rr_ms.
    continue_p: float = bounded(0.3, 0.0, 1.0)
    # A detection this soon after the previous beat is more often that beat's T wave than
    # a 240+ bpm ventricular beat: it continues a run on its ventricular probability alone,
    # not on the artefact share of ``p_run``.
    early_rr_ms: float = bounded(250.0, 0.0, 1000.0)

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(slots=True)
class VentricularRunState:
    run_len: int = 0
    run_start_ts_ms: int | None = None
    run_rr_ms: list[float] = field(default_factory=list)


class VentricularRun(Condition[VentricularRunSettings, VentricularRunState]):
    name = "ventricular_run"
    category = "physiological"
    settings_type = VentricularRunSettings
    state_type = VentricularRunState
    consumes = (ScoredBeat,)
    derived_from = "ecg"
    rows = (("high", ">= ``min_beats`` ventricular beats in a row (the first classified V, the next "
                     "with run evidence >= ``continue_p``), mean RR <= ``max_rr_ms``; without a beat "
                     "classifier: consecutive flagged beats, each with RR < ``max_rr_ms``"),)

    def observe(self, state: VentricularRunState, obs: ScoredBeat,
                ctx: RuleContext) -> Decision | None:
        s, b = self.settings, obs
        if b.p_run is None:
            return self._flagged_rule(state, b)
        if state.run_len == 0:
            # a run starts at a beat that is ventricular on its own
            if b.beat_class != "V":
                return None
            state.run_len, state.run_start_ts_ms, state.run_rr_ms = 1, b.r_ts_ms, []
            return None
        evidence = b.p_run if b.rr_ms is not None and b.rr_ms >= s.early_rr_ms else b.p_ventricular
        if not (evidence is not None and evidence >= s.continue_p and b.rr_ms is not None
                and b.rr_ms < 2.5 * s.max_rr_ms):
            # the run ended; this beat may start the next one
            state.run_len, state.run_start_ts_ms, state.run_rr_ms = 0, None, []
            return self.observe(state, b, ctx) if b.beat_class == "V" else None
        state.run_len += 1
        state.run_rr_ms.append(float(b.rr_ms))
        mean_rr = sum(state.run_rr_ms) / len(state.run_rr_ms)
        if state.run_len < s.min_beats or state.run_start_ts_ms is None or mean_rr > s.max_rr_ms:
            return None
        return _from_beat(
            b, "high", state.run_start_ts_ms,
            f"{state.run_len} ventricular beats in a row at {60_000 / mean_rr:.0f} bpm "
            f"(>= {s.min_beats} beats, >= {60_000 / s.max_rr_ms:.0f} bpm)",
            float(state.run_len),
            {"run_length_beats": state.run_len, "rate_bpm": round(60_000 / mean_rr, 1)})

    def _flagged_rule(self, state: VentricularRunState, b: ScoredBeat) -> Decision | None:
        s = self.settings
        if not (b.flagged and b.rr_ms is not None and b.rr_ms < s.max_rr_ms):
            state.run_len, state.run_start_ts_ms, state.run_rr_ms = 0, None, []
            return None
        if state.run_len == 0:
            state.run_start_ts_ms = b.r_ts_ms
            state.run_rr_ms = []
        state.run_len += 1
        state.run_rr_ms.append(float(b.rr_ms))
        if state.run_len < s.min_beats or state.run_start_ts_ms is None:
            return None
        mean_rr = sum(state.run_rr_ms) / len(state.run_rr_ms)
        return _from_beat(
            b, "high", state.run_start_ts_ms,
            f"{state.run_len} consecutive flagged beats with RR < {s.max_rr_ms:g} ms",
            float(state.run_len),
            {"run_length_beats": state.run_len, "rate_bpm": round(60_000 / mean_rr, 1)})


# ---------------------------------------------------------- ventricular fibrillation
@dataclass(frozen=True, slots=True)
class VentricularFibrillationSettings:
    """Consecutive ECG windows the VF detector scores above its threshold."""

    section: ClassVar[str] = "ventricular_fibrillation"
    # 4 s windows every 1 s: the first window wholly inside VF ends 4 s after onset, so
    # 4 in a row alarm about 7 s after onset (monitor standards ask for <= 10 s).
    consecutive_windows: int = bounded(4, 1, 60)
    # windows further apart than this (a stream gap) do not continue a run
    max_step_s: float = bounded(1.5, 0.1, 60.0)
    # no window above threshold for this long: the episode is over
    clear_s: float = bounded(30.0, 0.0, 3600.0)

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(slots=True)
class VentricularFibrillationState:
    run_windows: int = 0
    run_start_ts_ms: int | None = None  # start of the run's first window
    last_ts_ms: int | None = None  # end of the latest window seen
    last_above_ts_ms: int | None = None  # end of the latest window above threshold


class VentricularFibrillation(Condition[VentricularFibrillationSettings, VentricularFibrillationState]):
    """VF / flutter decided from the signal itself (:mod:`models.ecg.vf`), not from beats:
    VF has no QRS complexes for a beat rule to count."""

    name = "ventricular_fibrillation"
    category = "physiological"
    settings_type = VentricularFibrillationSettings
    state_type = VentricularFibrillationState
    consumes = (VFObservation,)
    derived_from = "ecg"
    rows = (("high", "``consecutive_windows`` consecutive ECG windows (4 s, one every 1 s) "
                     "with VF probability above the VF detector's threshold; clears after "
                     "``clear_s`` without one"),)

    def observe(self, state: VentricularFibrillationState, obs: VFObservation,
                ctx: RuleContext) -> Decision | None:
        s, ts = self.settings, obs.ts_ms
        contiguous = state.last_ts_ms is not None and 0 < ts - state.last_ts_ms <= s.max_step_s * 1000
        state.last_ts_ms = ts
        is_open = ctx.is_open(self.name)
        unusable = ctx.facts.unusable_until_ts_ms
        if unusable is not None and ts - obs.duration_ms < unusable:
            # the window reaches into a lead-off, noisy or missing stretch: not evidence
            # either way (the policy suppresses windows that end inside one)
            state.run_windows, state.run_start_ts_ms = 0, None
            return Hold(ts) if is_open else None
        if not obs.probability > obs.threshold:
            state.run_windows, state.run_start_ts_ms = 0, None
            if not is_open:
                return None
            if state.last_above_ts_ms is not None and ts - state.last_above_ts_ms < s.clear_s * 1000:
                return Hold(ts)
            return Clear(ts, f"no ECG window with VF probability above threshold for {s.clear_s:g} s")
        if not contiguous or state.run_start_ts_ms is None:
            state.run_windows, state.run_start_ts_ms = 0, ts - obs.duration_ms
        state.run_windows += 1
        state.last_above_ts_ms = ts
        if state.run_windows < s.consecutive_windows and not is_open:
            return None
        return Finding(
            "high", ts, state.run_start_ts_ms,
            f"{state.run_windows} consecutive ECG windows with VF probability "
            f"{obs.probability:.2f} > threshold {obs.threshold:.2f}",
            details={"vf_windows": state.run_windows, "vf_probability": round(obs.probability, 4)},
            score=obs.probability, threshold=obs.threshold, model_version=obs.model_version,
            signal_quality=obs.quality)


# ----------------------------------------------------------------------------- pause
@dataclass(frozen=True, slots=True)
class PauseSettings:
    """Pause / asystole."""

    section: ClassVar[str] = "pause"
    pause_s: float = bounded(4.0, 1.0, 60.0)
    # After an unusable stretch (noise, lead off, a gap) the QRS detector's thresholds
    # re-learn from the clean signal, and its first beats come out late (found by its
    # search-back): the no-beat clock starts this long after the stretch ends.
    settle_s: float = bounded(3.0, 0.0, 30.0)

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(slots=True)
class PauseState:
    """Nothing of its own: beat times and signal quality are stream facts."""


class Pause(Condition[PauseSettings, PauseState]):
    name = "pause"
    category = "physiological"
    settings_type = PauseSettings
    state_type = PauseState
    consumes = (ScoredBeat, Tick)
    derived_from = "ecg"
    rows = (("high", "a beat with RR >= ``pause_s``, or (tick) no beat for ``pause_s`` of "
                     "ECG event time while the signal is good, counted from ``settle_s`` after an "
                     "unusable stretch"),)

    def observe(self, state: PauseState, obs: ScoredBeat | Tick,
                ctx: RuleContext) -> Decision | None:
        limit_ms = self.settings.pause_s * 1000
        facts = ctx.facts
        if isinstance(obs, ScoredBeat):
            # from the RR interval; the gap must not overlap an unusable stretch
            if obs.rr_ms is None or obs.rr_ms < limit_ms:
                return None
            prev_ts = int(round(obs.r_ts_ms - obs.rr_ms))
            if facts.unusable_until_ts_ms is not None and prev_ts < facts.unusable_until_ts_ms:
                return None
            return self._finding(obs.r_ts_ms, prev_ts, obs.rr_ms, obs.signal_quality,
                                 f"RR {obs.rr_ms / 1000:.1f} s >= pause limit "
                                 f"{self.settings.pause_s:g} s")
        # From the absence of beats while the ECG is good, counted from the later of the
        # last beat and the end of the last unusable stretch. Judged up to where beat
        # detection is complete when the caller says so: a chunk end is later than that,
        # and counting the detector's own lag as "no beat" would turn a 2.5 s sinus pause
        # into a false 4 s alarm.
        complete = (facts.beats_complete_ts_ms if facts.beats_complete_ts_ms is not None
                    else facts.ecg_ts_ms)
        if not facts.quality_usable or facts.last_beat_ts_ms is None or complete is None:
            return None
        settled = (None if facts.unusable_until_ts_ms is None
                   else facts.unusable_until_ts_ms + int(self.settings.settle_s * 1000))
        since = _max(settled, facts.last_beat_ts_ms)
        gap_ms = complete - since
        if gap_ms < limit_ms:
            return None
        return self._finding(complete, since, gap_ms, facts.quality,
                             f"no beat for {gap_ms / 1000:.1f} s with a usable signal "
                             f"(limit {self.settings.pause_s:g} s)")

    @staticmethod
    def _finding(ts: int, onset: int, gap_ms: float, quality: float | None,
                 rule: str) -> Finding:
        return Finding("high", ts, onset, rule, gap_ms / 1000, "rate",
                       details={"pause_s": round(gap_ms / 1000, 3)}, signal_quality=quality)


# ---------------------------------------------------------- tachycardia, bradycardia
@dataclass(frozen=True, slots=True)
class TachycardiaSettings:
    """Sustain time and hysteresis above ``hr_limits.tachy_bpm``."""

    section: ClassVar[str] = "tachycardia"
    sustain_s: float = bounded(30.0, 1.0, 3600.0)
    hysteresis_bpm: float = bounded(5.0, 0.0, 50.0)

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(frozen=True, slots=True)
class BradycardiaSettings:
    """Sustain time and hysteresis below ``hr_limits.brady_bpm``."""

    section: ClassVar[str] = "bradycardia"
    sustain_s: float = bounded(30.0, 1.0, 3600.0)
    hysteresis_bpm: float = bounded(5.0, 0.0, 50.0)

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(slots=True)
class SustainedRateState:
    since_ts_ms: int | None = None  # start of the current run beyond the soft limit


class Tachycardia(Condition[TachycardiaSettings, SustainedRateState]):
    """Clinician limits: they apply beside the models, whatever the models score."""

    name = "tachycardia"
    category = "physiological"
    settings_type = TachycardiaSettings
    state_type = SustainedRateState
    consumes = (HRObservation,)
    derived_from = "hr"
    rows = (("high", "HR above the hard limit ``hr_limits.hr_high_bpm`` (immediately)"),
            ("medium", "HR above ``hr_limits.tachy_bpm`` sustained for ``sustain_s``"))

    def observe(self, state: SustainedRateState, obs: HRObservation,
                ctx: RuleContext) -> Decision | None:
        s, ts, hr = self.settings, obs.ts_ms, float(obs.hr_bpm)
        _, _, tachy, high = ctx.hr_limits
        if hr <= tachy:
            state.since_ts_ms = None
            return Hold(ts) if hr > tachy - s.hysteresis_bpm else None
        if not (ctx.hr_continuous and state.since_ts_ms is not None):
            state.since_ts_ms = ts
        since = state.since_ts_ms
        lasted = ts - since
        det = {"hr_bpm": hr, "limit_bpm": tachy, "hard_limit_bpm": high,
               "sustained_s": lasted / 1000}
        if hr > high:
            return Finding("high", ts, since, f"HR {hr:.0f} bpm above hard limit {high:g} bpm",
                           hr, "hr_delta", details=det, signal_quality=obs.quality)
        if lasted >= s.sustain_s * 1000:
            return Finding("medium", ts, since,
                           f"HR above {tachy:g} bpm for {lasted / 1000:.0f} s "
                           f"(limit {s.sustain_s:g} s)",
                           hr, "hr_delta", details=det, signal_quality=obs.quality)
        return Hold(ts)


class Bradycardia(Condition[BradycardiaSettings, SustainedRateState]):
    """Mirror of :class:`Tachycardia`; severity is the negated rate, so higher is worse."""

    name = "bradycardia"
    category = "physiological"
    settings_type = BradycardiaSettings
    state_type = SustainedRateState
    consumes = (HRObservation,)
    derived_from = "hr"
    rows = (("high", "HR below the hard limit ``hr_limits.hr_low_bpm`` (immediately)"),
            ("medium", "HR below ``hr_limits.brady_bpm`` sustained for ``sustain_s``"))

    def observe(self, state: SustainedRateState, obs: HRObservation,
                ctx: RuleContext) -> Decision | None:
        s, ts, hr = self.settings, obs.ts_ms, float(obs.hr_bpm)
        low, brady, _, _ = ctx.hr_limits
        if hr >= brady:
            state.since_ts_ms = None
            return Hold(ts) if hr < brady + s.hysteresis_bpm else None
        if not (ctx.hr_continuous and state.since_ts_ms is not None):
            state.since_ts_ms = ts
        since = state.since_ts_ms
        lasted = ts - since
        det = {"hr_bpm": hr, "limit_bpm": brady, "hard_limit_bpm": low,
               "sustained_s": lasted / 1000}
        if hr < low:
            return Finding("high", ts, since, f"HR {hr:.0f} bpm below hard limit {low:g} bpm",
                           -hr, "hr_delta", details=det, signal_quality=obs.quality)
        if lasted >= s.sustain_s * 1000:
            return Finding("medium", ts, since,
                           f"HR below {brady:g} bpm for {lasted / 1000:.0f} s "
                           f"(limit {s.sustain_s:g} s)",
                           -hr, "hr_delta", details=det, signal_quality=obs.quality)
        return Hold(ts)


# ------------------------------------------------------------------- frequent ectopy
@dataclass(frozen=True, slots=True)
class FrequentEctopySettings:
    """Flagged beats per 60 s, with a lower rate to clear (hysteresis)."""

    section: ClassVar[str] = "frequent_ectopy"
    per_min: int = bounded(6, 1, 10_000)
    clear_per_min: int = bounded(3, 1, 10_000)

    def __post_init__(self) -> None:
        check_settings(self)
        if self.clear_per_min > self.per_min:
            raise PolicyConfigError(
                f"frequent_ectopy.clear_per_min must be <= frequent_ectopy.per_min "
                f"({self.per_min}), got {self.clear_per_min}")


@dataclass(slots=True)
class FrequentEctopyState:
    flagged_ts_ms: list[int] = field(default_factory=list)  # flagged beats, last 60 s


class FrequentEctopy(Condition[FrequentEctopySettings, FrequentEctopyState]):
    name = "frequent_ectopy"
    category = "physiological"
    settings_type = FrequentEctopySettings
    state_type = FrequentEctopyState
    consumes = (ScoredBeat,)
    derived_from = "ecg"
    rows = (("medium", ">= ``per_min`` flagged beats in 60 s; clears below ``clear_per_min``"),)

    def observe(self, state: FrequentEctopyState, obs: ScoredBeat,
                ctx: RuleContext) -> Decision | None:
        s, b, ts = self.settings, obs, obs.r_ts_ms
        if b.flagged:
            state.flagged_ts_ms.append(ts)
        state.flagged_ts_ms = [t for t in state.flagged_ts_ms if t > ts - _ECTOPY_WINDOW_MS]
        per_min = len(state.flagged_ts_ms)
        if per_min >= s.per_min and b.flagged:
            # Severity is the rate over the span the flagged beats cover, so a window that
            # is still filling up (count rising at a steady rate) does not look "worse".
            span_ms = max(ts - state.flagged_ts_ms[0], 1)
            rate = round(min((per_min - 1) * 60_000 / span_ms, 600.0), 1)
            return _from_beat(b, "medium", state.flagged_ts_ms[0],
                              f"{per_min} flagged beats in 60 s >= {s.per_min}/min", rate,
                              {"flagged_per_min": per_min, "estimated_rate_per_min": rate})
        return Hold(ts) if per_min >= s.clear_per_min else None


# -------------------------------------------------------------- atrial fibrillation
@dataclass(frozen=True, slots=True)
class AtrialFibrillationSettings:
    """How long the AF detector's probability must stay above its threshold to open the
    alert, and below it to clear. The defaults are those the shipped threshold was chosen
    for (``models.hr.af.AFAlertRule``; a unit test keeps them equal)."""

    section: ClassVar[str] = "atrial_fibrillation"
    sustain_s: float = bounded(30.0, 0.0, 3600.0)
    clear_s: float = bounded(180.0, 0.0, 3600.0)

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(slots=True)
class AtrialFibrillationState:
    since_ts_ms: int | None = None  # start of the current run at or above threshold
    below_since_ts_ms: int | None = None  # start of the current run below, alert open


class AtrialFibrillation(Condition[AtrialFibrillationSettings, AtrialFibrillationState]):
    """Atrial fibrillation from the heart-rate stream's AF probability: opens when AF
    starts, clears when it ends (one alert per episode, never one per record)."""

    name = "atrial_fibrillation"
    category = "physiological"
    settings_type = AtrialFibrillationSettings
    state_type = AtrialFibrillationState
    consumes = (HRObservation,)
    derived_from = "hr"
    rows = (("medium", "AF probability of the RR history >= the AF detector's threshold for "
                       "``sustain_s``; clears once below it for ``clear_s``"),)

    def observe(self, state: AtrialFibrillationState, obs: HRObservation,
                ctx: RuleContext) -> Decision | None:
        s, ts = self.settings, obs.ts_ms
        if not ctx.hr_continuous:
            state.since_ts_ms = state.below_since_ts_ms = None
        p, thr = obs.af_probability, obs.af_threshold
        if p is None or thr is None or not math.isfinite(p):
            return None  # not scored (the RR window is still filling): no evidence either way
        is_open = ctx.is_open(self.name)
        if p < thr:
            state.since_ts_ms = None
            if not is_open:
                state.below_since_ts_ms = None
                return None
            if state.below_since_ts_ms is None:
                state.below_since_ts_ms = ts
            below_s = (ts - state.below_since_ts_ms) / 1000
            if below_s >= s.clear_s:
                state.below_since_ts_ms = None
                return Clear(ts, f"AF probability below {thr:.2f} for {below_s:.0f} s "
                                 f"(clear after {s.clear_s:g} s)")
            return Hold(ts)
        state.below_since_ts_ms = None
        if state.since_ts_ms is None:
            state.since_ts_ms = ts
        lasted_s = (ts - state.since_ts_ms) / 1000
        if lasted_s < s.sustain_s and not is_open:
            return None
        return Finding(
            "medium", ts, state.since_ts_ms,
            f"AF probability {p:.2f} >= {thr:.2f} for {lasted_s:.0f} s", p, "never",
            details={"af_probability": round(p, 4), "af_threshold": thr,
                     "hr_bpm": float(obs.hr_bpm), "sustained_s": lasted_s},
            score=p, threshold=thr, signal_quality=obs.quality)


# ------------------------------------------------------------------- anomalous beats
@dataclass(frozen=True, slots=True)
class AnomalousBeatsSettings:
    """``k`` of the last ``n`` usable beats flagged."""

    section: ClassVar[str] = "anomalous_beats"
    k: int = bounded(3, 1, 10_000)
    n: int = bounded(8, 1, 10_000)

    def __post_init__(self) -> None:
        check_settings(self)
        if self.k > self.n:
            raise PolicyConfigError(
                f"anomalous_beats.k must be <= anomalous_beats.n ({self.n}), got {self.k}")


@dataclass(slots=True)
class AnomalousBeatsState:
    recent_flags: list[list[int]] = field(default_factory=list)  # [[r_ts_ms, 0|1], ...]

    def decoded_problem(self) -> str | None:
        """Why a state read back from the changelog is unusable, or None."""
        if any(len(f) != 2 for f in self.recent_flags):
            return "recent_flags must hold [r_ts_ms, 0|1] pairs"
        return None


class AnomalousBeats(Condition[AnomalousBeatsSettings, AnomalousBeatsState]):
    name = "anomalous_beats"
    category = "physiological"
    settings_type = AnomalousBeatsSettings
    state_type = AnomalousBeatsState
    consumes = (ScoredBeat,)
    derived_from = "ecg"
    # a low-priority "anomalous beats" says nothing new while one of these is open
    subsumed_by = ("ventricular_run", "frequent_ectopy")
    rows = (("low", "``k`` of the last ``n`` beats flagged"),)

    def observe(self, state: AnomalousBeatsState, obs: ScoredBeat,
                ctx: RuleContext) -> Decision | None:
        s, b, ts = self.settings, obs, obs.r_ts_ms
        state.recent_flags.append([ts, int(b.flagged)])
        del state.recent_flags[:-s.n]
        n_flagged = sum(f for _, f in state.recent_flags)
        if n_flagged < s.k:
            return None
        if not b.flagged:
            return Hold(ts)
        onset = next(t for t, f in state.recent_flags if f)
        return _from_beat(b, "low", onset,
                          f"{n_flagged} of {len(state.recent_flags)} beats above threshold "
                          f"{b.threshold:.3g}",
                          float(n_flagged),
                          {"flagged_beats": n_flagged, "window_beats": len(state.recent_flags)})


# -------------------------------------------------------- technical: lead off, noisy
@dataclass(frozen=True, slots=True)
class LeadOffSettings:
    section: ClassVar[str] = "lead_off"
    lead_off_s: float = bounded(3.0, 0.0, 600.0)

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(frozen=True, slots=True)
class SignalNoisySettings:
    section: ClassVar[str] = "signal_noisy"
    noisy_s: float = bounded(10.0, 0.0, 3600.0)

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(slots=True)
class StretchState:
    since_ts_ms: int | None = None  # start of the current stretch (chunk start)


class LeadOff(Condition[LeadOffSettings, StretchState]):
    name = "lead_off"
    category = "technical"
    settings_type = LeadOffSettings
    state_type = StretchState
    consumes = (QualityObservation,)
    rows = (("medium", "lead off for ``lead_off_s``"),)

    def observe(self, state: StretchState, obs: QualityObservation,
                ctx: RuleContext) -> Decision | None:
        return _stretch(self.name, state, obs, ctx, obs.lead_off, self.settings.lead_off_s,
                        "medium", "lead off")


class SignalNoisy(Condition[SignalNoisySettings, StretchState]):
    name = "signal_noisy"
    category = "technical"
    settings_type = SignalNoisySettings
    state_type = StretchState
    consumes = (QualityObservation,)
    rows = (("low", "noisy / quality below ``signal.min_quality`` for ``noisy_s``"),)

    def observe(self, state: StretchState, obs: QualityObservation,
                ctx: RuleContext) -> Decision | None:
        noisy = (obs.noisy or obs.quality < ctx.min_quality) and not obs.lead_off
        return _stretch(self.name, state, obs, ctx, noisy, self.settings.noisy_s, "low",
                        f"signal noisy or quality < {ctx.min_quality:g}")


def _stretch(name: str, state: StretchState, obs: QualityObservation, ctx: RuleContext,
             active: bool, need_s: float, priority: Priority, what: str) -> Decision | None:
    """A technical condition that holds over consecutive chunks for ``need_s``."""
    end = obs.ts_ms + obs.duration_ms
    if not active:
        state.since_ts_ms = None
        return None
    if state.since_ts_ms is None:
        state.since_ts_ms = obs.ts_ms
    lasted = end - state.since_ts_ms
    if lasted < need_s * 1000 and not ctx.is_open(name):
        return None
    return Finding(priority, end, state.since_ts_ms,
                   f"{what} for {lasted / 1000:.1f} s (limit {need_s:g} s)",
                   details={"lasted_s": lasted / 1000}, signal_quality=obs.quality)


# ------------------------------------------------------------------- technical: data
@dataclass(frozen=True, slots=True)
class NoDataSettings:
    section: ClassVar[str] = "no_data"
    no_data_s: float = bounded(30.0, 1.0, 3600.0)

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(slots=True)
class NoDataState:
    last_tick_wall_ms: int | None = None
    progress_wall_ms: int | None = None  # wall time the event time last advanced
    event_ts_at_last_tick_ms: int | None = None


class NoData(Condition[NoDataSettings, NoDataState]):
    """Silence measured in wall time across ticks (event time stops when data stops)."""

    name = "no_data"
    category = "technical"
    settings_type = NoDataSettings
    state_type = NoDataState
    consumes = (Tick,)
    cleared_by_data = "data received again"
    kept_on_rebase = True  # wall time
    rows = (("medium", "(tick) event time has not advanced for ``no_data_s`` of wall time"),)

    def observe(self, state: NoDataState, obs: Tick, ctx: RuleContext) -> Decision | None:
        now_ms, last_event = obs.now_ms, ctx.facts.last_event_ts_ms
        no_data_ms = int(self.settings.no_data_s * 1000)
        # A tick more than no_data_s after the previous one means the worker itself was
        # away: that restarts the clock instead of raising.
        if (state.last_tick_wall_ms is None or now_ms - state.last_tick_wall_ms > no_data_ms
                or last_event != state.event_ts_at_last_tick_ms
                or state.progress_wall_ms is None):
            state.progress_wall_ms = now_ms
        state.last_tick_wall_ms = now_ms
        state.event_ts_at_last_tick_ms = last_event
        silent_ms = now_ms - state.progress_wall_ms
        if last_event is None or silent_ms < no_data_ms or ctx.is_open(self.name):
            return None
        return Finding(
            "medium", now_ms, last_event,
            f"no message for {silent_ms / 1000:.0f} s of wall time "
            f"(limit {self.settings.no_data_s:g} s)",
            details={"silent_s": silent_ms / 1000, "last_event_ts_ms": last_event,
                     "detected_wall_ms": now_ms})


# ------------------------------------------------------------ technical: device clock
@dataclass(frozen=True, slots=True)
class DeviceClockSettings:
    """How many clock events (restarts, clock jumps, timestamps set aside) of a device
    within how long mean its timing cannot be trusted."""

    section: ClassVar[str] = "device_clock"
    events: int = bounded(3, 1, 10_000)
    window_s: float = bounded(3600.0, 1.0, 7 * 86_400.0)

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(slots=True)
class DeviceClockState:
    events_ts_ms: list[int] = field(default_factory=list)  # the latest ``events``, event time


class DeviceClock(Condition[DeviceClockSettings, DeviceClockState]):
    """A device that keeps restarting or whose clock keeps jumping: the care team should
    know its timing (onsets, durations) is unreliable. One glitch or one correction says
    nothing (NTP and reboots happen); ``events`` within ``window_s`` do."""

    name = "device_clock"
    category = "technical"
    settings_type = DeviceClockSettings
    state_type = DeviceClockState
    consumes = (DeviceClockEvent, QualityObservation, HRObservation)
    kept_on_rebase = True  # moves its own times with the event's shift
    rows = (("low", ">= ``events`` device restarts, clock jumps or timestamps set aside "
                    "within ``window_s``"),)

    def observe(self, state: DeviceClockState, obs: DeviceClockEvent | QualityObservation
                | HRObservation, ctx: RuleContext) -> Decision | None:
        s, ts = self.settings, obs.ts_ms
        window_ms = s.window_s * 1000
        if isinstance(obs, DeviceClockEvent):
            state.events_ts_ms = [t + obs.shift_ms for t in state.events_ts_ms] + [ts]
            del state.events_ts_ms[:-s.events]
        recent = [t for t in state.events_ts_ms if ts - t < window_ms]
        if len(recent) < s.events:
            return None
        if not isinstance(obs, DeviceClockEvent):
            return Hold(ts)
        span_s = (max(recent) - min(recent)) / 1000
        return Finding("low", ts, min(recent),
                       f"{len(recent)} device restarts or clock jumps in {span_s:.0f} s "
                       f"(>= {s.events} within {s.window_s:g} s): event times are unreliable",
                       float(len(recent)), "rate",
                       details={"clock_events": len(recent), "last_kind": obs.kind,
                                "last_shift_ms": obs.shift_ms})


# -------------------------------------------------------------------------- registry
#: Every condition, in dispatch order: an observation goes to the conditions that consume
#: it in this order, and the events one observation produces come out in it. Higher
#: priorities first; a condition comes after those that subsume it.
REGISTRY: tuple[type[Condition[Any, Any]], ...] = (
    VentricularRun,
    VentricularFibrillation,
    Pause,
    Tachycardia,
    Bradycardia,
    FrequentEctopy,
    AtrialFibrillation,
    AnomalousBeats,
    LeadOff,
    SignalNoisy,
    NoData,
    DeviceClock,
)


def conditions_table(registry: Sequence[type[Condition[Any, Any]]] = REGISTRY,
                     fmt: Literal["rst", "markdown"] = "rst") -> str:
    """The conditions table of the policy docstring (``rst``) or the README (``markdown``).

    One line per condition and priority, from each condition's ``rows``, ``category`` and
    ``subsumed_by``.
    """
    lines: list[tuple[str, str, str]] = []
    for cond in registry:
        for i, (priority, text) in enumerate(cond.rows):
            if cond.category == "technical":
                text = f"technical: {text}"
            if cond.subsumed_by and i == len(cond.rows) - 1:
                text += f" (not while {' or '.join(cond.subsumed_by)} is open)"
            lines.append((cond.name if i == 0 else "", priority, text))
    if fmt == "markdown":
        out = ["| condition | priority | rule |", "|---|---|---|"]
        out += [f"| {f'`{n}`' if n else ''} | {p} | {t.replace('``', '`')} |"
                for n, p, t in lines]
        return "\n".join(out)
    w_name = max(len(f"``{n}``") for n, _, _ in lines) + 1
    w_prio, w_rule = 10, 58
    rule = f"{'=' * w_name}  {'=' * w_prio}  {'=' * w_rule}"
    out = [rule, f"{'condition':<{w_name}}  {'priority':<{w_prio}}  rule", rule]
    for n, p, t in lines:
        wrapped = textwrap.wrap(t, w_rule, break_long_words=False, break_on_hyphens=False)
        first = f"``{n}``" if n else ""
        out.append(f"{first:<{w_name}}  {p:<{w_prio}}  {wrapped[0]}".rstrip())
        out += [f"{'':<{w_name}}  {'':<{w_prio}}  {more}" for more in wrapped[1:]]
    out.append(rule)
    return "\n".join(out)


def _max(a: int | None, b: int) -> int:
    return b if a is None else max(a, b)
