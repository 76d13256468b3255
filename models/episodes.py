"""Episode evaluation: reference rhythm episodes, alarm truth and episode-level alarm figures.

Pure numpy functions used by ``cardiowatch evaluate``. Every time is in seconds from the
record start. The rules (the numbers are fields of :class:`EpisodeRules`):

Truth episodes (:func:`truth_episodes`)
    - **VT**: ``(VT`` rhythm episodes, plus every run of >= 3 consecutive V-class
      reference beats whose mean rate (``60 * (n - 1) / (last - first)``, the intervals
      inside the run) is >= 100 bpm; a run spans its first to its last beat.
      Overlapping (or touching) episodes are merged. A ``(VT`` episode whose annotated
      V beats (three or more of them) never reach that rate over any three in a row is
      a **slow ventricular run** (``slow_vt``; record 223's triplets at 88 bpm are
      annotated ``(VT``): VT is 3 or more ventricular beats at 100 bpm or more, so it is
      left out of the VT figures, like AFL from AF's, and a ventricular alert during
      one is not false. How many of them were alerted HIGH is reported beside.
    - **VF**: ``(VFL`` / ``(VF`` rhythm episodes and ``[`` .. ``]`` brackets, merged.
    - **AF**: ``(AFIB`` rhythm episodes. **AFL**: ``(AFL`` episodes, AF-like: an AF
      alert during one is not false, but they are not in the AF sensitivity
      denominator.

    A rhythm episode starts at its ``+`` annotation and ends at the next rhythm change
    or at the record end. An unclosed ``[`` runs to the record end; a ``]`` without
    a ``[`` closes an episode that began at the record start.

Episode detection (:func:`evaluate_episodes`)
    An alert counts as HIGH from the moment it is high priority (raised high, or
    updated to high): ``high_s``. An alert is *open* from ``raised_s`` to ``cleared_s``
    (or to the record end when never cleared).

    - **VT sensitivity and delay**: a VT episode (and, counted apart, a slow ventricular
      run) is detected when a HIGH ventricular alert (``ventricular_run``,
      ``ventricular_fibrillation``) becomes HIGH in ``[onset - 1 s, end + 5 s]``, or is HIGH and open at the onset; the delay is
      ``high_s - onset`` of the earliest such alert, floored at 0.
    - **VT/VF/VFL episodes of >= 10 s**: alerted when *any* HIGH alert becomes HIGH in
      ``[onset - 1 s, onset + 10 s]`` or is HIGH and open at the onset. VT and VF
      episodes are counted each in their own list.
    - **AF episodes of >= 30 s**: alerted when an AF alert (``atrial_fibrillation``,
      ``irregular_rhythm``) is open at some time in ``[onset, end + 30 s]``; its delay
      is ``raised_s - onset`` floored at 0.
    - **AF time covered**: the fraction of all AF-episode time during which an AF alert
      was open.

False alerts (:func:`judge_alert`): every raised physiological alert is judged by its
condition; technical alerts (category ``technical``) are counted apart, never false.

    - ``ventricular_run``, ``ventricular_fibrillation``: true if ``[onset - 5, raised + 5]``
      overlaps a VT, slow ventricular run or VF episode.
    - ``pause``: true if a reference RR interval >= 3 s, or a VF episode, overlaps
      ``[onset - 2, raised + 2]``.
    - ``tachycardia`` / ``bradycardia``: true if the reference rate (60 / the median of
      the 5 reference RR intervals before ``raised_s``) is above ``limit - 10`` / below
      ``limit + 10`` bpm (the alert's ``limit_bpm``, else the policy default), or
      ``[onset - 5, raised + 5]`` overlaps a VT or VF episode.
    - ``atrial_fibrillation``, ``irregular_rhythm``: true if ``[onset - 30, cleared or
      record end]`` overlaps an AF or AFL episode.
    - ``frequent_ectopy``: true if the reference has >= 3 S, V or F beats in
      ``[raised - 60, raised]``.
    - ``anomalous_beats``: true if a reference S, V, F or Q beat lies in
      ``[onset - 2, raised + 2]``.

    Any other physiological condition is *unjudged*: counted and listed, never false.

Rates (:func:`pool_episodes`): false HIGH alarms (false alerts that were ever HIGH) and
all false physiological alerts per patient-hour, false AF alerts per patient-day, over
the summed record durations.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = [
    "AF_CONDITIONS",
    "VENTRICULAR_CONDITIONS",
    "AlertSpan",
    "Episode",
    "EpisodeEvaluation",
    "EpisodeRules",
    "FalseAlert",
    "TruthEpisodes",
    "Verdict",
    "bracket_episodes",
    "evaluate_episodes",
    "judge_alert",
    "merge_episodes",
    "pool_episodes",
    "rhythm_episodes",
    "truth_episodes",
    "ventricular_runs",
]

VENTRICULAR_CONDITIONS: tuple[str, ...] = ("ventricular_run", "ventricular_fibrillation")
AF_CONDITIONS: tuple[str, ...] = ("atrial_fibrillation", "irregular_rhythm")
_VF_RHYTHMS = ("VFL", "VF")
_NON_N_ECTOPY = ("S", "V", "F")
_NON_N_ANY = ("S", "V", "F", "Q")

Verdict = Literal["true", "false", "technical", "unjudged"]


@dataclass(frozen=True, slots=True)
class Episode:
    """One reference episode: ``[start_s, end_s]`` of rhythm ``kind`` (e.g. ``"AFIB"``)."""

    start_s: float
    end_s: float
    kind: str

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True, slots=True)
class AlertSpan:
    """The life of one alert in a replayed record, in seconds from the record start.

    Attributes
    ----------
    condition, category, stream
        As in the alert events (``stream`` is ``"ecg"`` or ``"hr"``).
    priority
        Priority when raised.
    onset_s, raised_s
        The finding's onset and the time the alert was raised.
    cleared_s
        When it was cleared; ``None`` if still open at the record end.
    high_s
        When it first was high priority (``raised_s`` if raised high); ``None`` if never.
    limit_bpm
        The heart-rate limit it was raised against (``details["limit_bpm"]``), if any.
    """

    condition: str
    category: str
    priority: str
    stream: str
    onset_s: float
    raised_s: float
    cleared_s: float | None = None
    high_s: float | None = None
    limit_bpm: float | None = None

    def end_s(self, record_end_s: float) -> float:
        """When the alert stopped being open (the record end if never cleared)."""
        return record_end_s if self.cleared_s is None else self.cleared_s


@dataclass(frozen=True, slots=True)
class EpisodeRules:
    """The windows and thresholds of the truth and metric rules (module docstring)."""

    vrun_min_beats: int = 3
    vrun_min_rate_bpm: float = 100.0
    vt_before_s: float = 1.0
    vt_after_s: float = 5.0
    sustained_min_s: float = 10.0
    sustained_within_s: float = 10.0
    af_min_s: float = 30.0
    af_after_s: float = 30.0
    ventricular_margin_s: float = 5.0
    pause_rr_s: float = 3.0
    pause_margin_s: float = 2.0
    hr_margin_bpm: float = 10.0
    hr_rr_count: int = 5
    af_before_s: float = 30.0
    ectopy_window_s: float = 60.0
    ectopy_min_beats: int = 3
    anomalous_margin_s: float = 2.0
    # the alert policy's soft limits (streaming.policy.PolicyConfig defaults); the
    # evaluator passes the ones it ran with
    tachy_bpm: float = 120.0
    brady_bpm: float = 50.0

    def __post_init__(self) -> None:
        for name in ("vrun_min_beats", "hr_rr_count", "ectopy_min_beats"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        for f in ("vrun_min_rate_bpm", "vt_before_s", "vt_after_s", "sustained_min_s",
                  "sustained_within_s", "af_min_s", "af_after_s", "ventricular_margin_s",
                  "pause_rr_s", "pause_margin_s", "hr_margin_bpm", "af_before_s",
                  "ectopy_window_s", "anomalous_margin_s", "tachy_bpm", "brady_bpm"):
            v = getattr(self, f)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{f} must be a finite number >= 0, got {v!r}")


@dataclass(frozen=True)
class TruthEpisodes:
    """The reference episodes of one record the alarm figures are judged against."""

    vt: tuple[Episode, ...] = ()
    vf: tuple[Episode, ...] = ()
    af: tuple[Episode, ...] = ()
    afl: tuple[Episode, ...] = ()
    slow_vt: tuple[Episode, ...] = ()

    def to_dict(self) -> dict[str, list[list[float]]]:
        """``{"vt": [[start_s, end_s], ...], "vf": ..., "af": ..., "afl": ..., "slow_vt": ...}``."""
        return {k: [[round(e.start_s, 3), round(e.end_s, 3)] for e in getattr(self, k)]
                for k in ("vt", "vf", "af", "afl", "slow_vt")}


def _label(aux: str) -> str:
    return aux.rstrip("\x00").strip().lstrip("(")


def _check_rate(sample_rate_hz: float) -> None:
    if not (math.isfinite(sample_rate_hz) and sample_rate_hz > 0):
        raise ValueError(f"sample_rate_hz must be a positive finite rate, got {sample_rate_hz}")


def rhythm_episodes(
    rhythm_annotations: Sequence[tuple[int, str]], sample_rate_hz: float, end_s: float
) -> tuple[Episode, ...]:
    """Episodes from ``+`` rhythm annotations ``(sample, aux_note)``.

    Each annotation starts an episode of its rhythm (``"(AFIB"`` -> kind ``"AFIB"``)
    that ends at the next annotation naming another rhythm, or at ``end_s``.
    Repeated annotations of the same rhythm continue one episode; time before the first
    annotation belongs to no episode.
    """
    _check_rate(sample_rate_hz)
    marks = sorted((int(s) / sample_rate_hz, _label(a)) for s, a in rhythm_annotations)
    out: list[Episode] = []
    start: float | None = None
    kind = ""
    for t, lab in marks:
        if not lab or (start is not None and lab == kind):
            continue
        if start is not None and t > start:
            out.append(Episode(start, t, kind))
        start, kind = t, lab
    if start is not None and end_s > start:
        out.append(Episode(start, float(end_s), kind))
    return tuple(out)


def bracket_episodes(
    vf_annotations: Sequence[tuple[int, str]], sample_rate_hz: float, end_s: float,
    kind: str = "VF",
) -> tuple[Episode, ...]:
    """Episodes from ``[`` (onset) / ``]`` (end) annotations ``(sample, symbol)``.

    An unclosed ``[`` runs to ``end_s``; a ``]`` with no open ``[`` closes an episode
    that began at the record start; a repeated ``[`` inside an open one is ignored.
    """
    _check_rate(sample_rate_hz)
    out: list[Episode] = []
    start: float | None = None
    seen_any = False
    for s, sym in sorted(vf_annotations):
        t = int(s) / sample_rate_hz
        if sym == "[":
            if start is None:
                start = t
        elif sym == "]":
            if start is not None:
                out.append(Episode(start, t, kind))
            elif not seen_any:
                out.append(Episode(0.0, t, kind))
            start = None
        else:
            raise ValueError(f"vf_annotations symbols must be '[' or ']', got {sym!r}")
        seen_any = True
    if start is not None and end_s > start:
        out.append(Episode(start, float(end_s), kind))
    return tuple(e for e in out if e.end_s > e.start_s)


def ventricular_runs(
    beat_times_s: np.ndarray | Sequence[float], aami_classes: np.ndarray | Sequence[str],
    min_beats: int = 3, min_rate_bpm: float = 100.0,
) -> tuple[Episode, ...]:
    """Runs of >= ``min_beats`` consecutive V beats with mean rate >= ``min_rate_bpm``.

    The mean rate uses the intervals inside the run, ``60 * (n - 1) / (last - first)``;
    an episode spans the run's first to last beat (kind ``"VRUN"``).
    """
    t = np.asarray(beat_times_s, dtype=np.float64).ravel()
    c = np.asarray(aami_classes, dtype=str).ravel()
    if t.shape != c.shape:
        raise ValueError(f"aami_classes must have one class per beat time ({t.size}), got {c.size}")
    order = np.argsort(t, kind="stable")
    t, c = t[order], c[order]
    isv = (c == "V").astype(np.int8)
    # run boundaries from the edges of the 0/1 sequence
    edges = np.diff(np.concatenate([[0], isv, [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)  # end exclusive
    out: list[Episode] = []
    for a, b in zip(starts, ends):
        n = int(b - a)
        if n < min_beats:
            continue
        span = float(t[b - 1] - t[a])
        if span > 0 and 60.0 * (n - 1) / span >= min_rate_bpm:
            out.append(Episode(float(t[a]), float(t[b - 1]), "VRUN"))
    return tuple(out)


def merge_episodes(episodes: Iterable[Episode], kind: str) -> tuple[Episode, ...]:
    """Merge overlapping or touching episodes into ones of ``kind``, sorted by start."""
    out: list[Episode] = []
    for e in sorted(episodes, key=lambda x: (x.start_s, x.end_s)):
        if out and e.start_s <= out[-1].end_s:
            out[-1] = Episode(out[-1].start_s, max(out[-1].end_s, e.end_s), kind)
        else:
            out.append(Episode(e.start_s, e.end_s, kind))
    return tuple(out)


def _slow_run(e: Episode, beat_times_s: np.ndarray | Sequence[float],
              aami_classes: np.ndarray | Sequence[str], r: EpisodeRules) -> bool:
    """A ``(VT`` episode whose annotated V beats (>= ``vrun_min_beats`` of them) never
    reach ``vrun_min_rate_bpm`` over ``vrun_min_beats`` consecutive V beats."""
    t = np.asarray(beat_times_s, dtype=np.float64).ravel()
    c = np.asarray(aami_classes, dtype=str).ravel()
    order = np.argsort(t, kind="stable")
    t, c = t[order], c[order]
    inside = (t >= e.start_s) & (t <= e.end_s)
    ti, ci = t[inside], c[inside]
    k = r.vrun_min_beats
    if int(np.sum(ci == "V")) < k:
        return False  # no beat labels to judge the rate by: the rhythm label stands
    for i in range(ti.size - k + 1):
        span = ti[i + k - 1] - ti[i]
        if np.all(ci[i:i + k] == "V") and span > 0 and 60.0 * (k - 1) / span >= r.vrun_min_rate_bpm:
            return False
    return True


def truth_episodes(
    beat_times_s: np.ndarray | Sequence[float],
    aami_classes: np.ndarray | Sequence[str],
    rhythm_annotations: Sequence[tuple[int, str]],
    vf_annotations: Sequence[tuple[int, str]],
    sample_rate_hz: float,
    end_s: float,
    rules: EpisodeRules | None = None,
) -> TruthEpisodes:
    """The VT, VF, AF and AFL truth episodes of a record (rules in the module docstring)."""
    r = rules or EpisodeRules()
    rhythm = rhythm_episodes(rhythm_annotations, sample_rate_hz, end_s)
    runs = ventricular_runs(beat_times_s, aami_classes, r.vrun_min_beats, r.vrun_min_rate_bpm)
    brackets = bracket_episodes(vf_annotations, sample_rate_hz, end_s)
    vt_rhythm = [e for e in rhythm if e.kind == "VT"]
    slow = [e for e in vt_rhythm if _slow_run(e, beat_times_s, aami_classes, r)]
    return TruthEpisodes(
        vt=merge_episodes([e for e in vt_rhythm if e not in slow] + list(runs), "VT"),
        slow_vt=tuple(e for e in merge_episodes(slow, "SLOW_VT")
                      if not any(x.start_s <= e.end_s and x.end_s >= e.start_s for x in runs)),
        vf=merge_episodes([e for e in rhythm if e.kind in _VF_RHYTHMS] + list(brackets), "VF"),
        af=merge_episodes([e for e in rhythm if e.kind == "AFIB"], "AF"),
        afl=merge_episodes([e for e in rhythm if e.kind == "AFL"], "AFL"),
    )


def _overlaps(episodes: Sequence[Episode], lo: float, hi: float) -> bool:
    return any(e.start_s <= hi and e.end_s >= lo for e in episodes)


def _limit(alert: AlertSpan, default: float) -> float:
    return default if alert.limit_bpm is None else float(alert.limit_bpm)


def _reference_rate_bpm(beat_times_s: np.ndarray, at_s: float, n_rr: int) -> float:
    """60 / median of the last ``n_rr`` reference RR intervals ending at or before ``at_s``."""
    k = int(np.searchsorted(beat_times_s, at_s, side="right"))
    last = beat_times_s[max(0, k - n_rr - 1):k]
    rr = np.diff(last)
    rr = rr[rr > 0]
    return float(60.0 / np.median(rr)) if rr.size else float("nan")


def judge_alert(
    alert: AlertSpan,
    truth: TruthEpisodes,
    beat_times_s: np.ndarray,
    aami_classes: np.ndarray,
    record_end_s: float,
    rules: EpisodeRules | None = None,
) -> Verdict:
    """Judge one raised alert against the reference (the table in the module docstring).

    Parameters
    ----------
    alert
        The alert.
    truth
        The record's truth episodes.
    beat_times_s, aami_classes
        Reference beats, sorted by time, and their AAMI classes.
    record_end_s
        The record end (an alert never cleared is open until then).
    rules
        Windows and thresholds.

    Returns
    -------
    ``"technical"`` for a technical alert, ``"unjudged"`` for a physiological condition
    without a rule, else ``"true"`` or ``"false"``.
    """
    r = rules or EpisodeRules()
    if alert.category == "technical":
        return "technical"
    cond = alert.condition
    on, up = alert.onset_s, alert.raised_s
    vent = truth.vt + truth.vf
    m = r.ventricular_margin_s
    ok: bool
    if cond in VENTRICULAR_CONDITIONS:
        ok = _overlaps(vent + truth.slow_vt, on - m, up + m)
    elif cond == "pause":
        lo, hi = on - r.pause_margin_s, up + r.pause_margin_s
        t = beat_times_s
        rr = np.diff(t)
        long_rr = np.flatnonzero(rr >= r.pause_rr_s)
        ok = bool(np.any((t[long_rr] <= hi) & (t[long_rr + 1] >= lo))) or _overlaps(truth.vf, lo, hi)
    elif cond in ("tachycardia", "bradycardia"):
        rate = _reference_rate_bpm(beat_times_s, up, r.hr_rr_count)
        if cond == "tachycardia":
            by_rate = rate > _limit(alert, r.tachy_bpm) - r.hr_margin_bpm
        else:
            by_rate = rate < _limit(alert, r.brady_bpm) + r.hr_margin_bpm
        ok = bool(by_rate) or _overlaps(vent, on - m, up + m)  # NaN compares False
    elif cond in AF_CONDITIONS:
        ok = _overlaps(truth.af + truth.afl, on - r.af_before_s, alert.end_s(record_end_s))
    elif cond == "frequent_ectopy":
        lo_i = int(np.searchsorted(beat_times_s, up - r.ectopy_window_s, side="left"))
        hi_i = int(np.searchsorted(beat_times_s, up, side="right"))
        ok = int(np.isin(aami_classes[lo_i:hi_i], _NON_N_ECTOPY).sum()) >= r.ectopy_min_beats
    elif cond == "anomalous_beats":
        lo_i = int(np.searchsorted(beat_times_s, on - r.anomalous_margin_s, side="left"))
        hi_i = int(np.searchsorted(beat_times_s, up + r.anomalous_margin_s, side="right"))
        ok = bool(np.isin(aami_classes[lo_i:hi_i], _NON_N_ANY).any())
    else:
        return "unjudged"
    return "true" if ok else "false"


@dataclass(frozen=True, slots=True)
class FalseAlert:
    """A physiological alert judged false, for a person to look at."""

    record: str
    condition: str
    priority: str
    onset_s: float
    raised_s: float
    stream: str
    high: bool

    def to_dict(self) -> dict[str, Any]:
        return {"record": self.record, "condition": self.condition, "priority": self.priority,
                "high": self.high, "stream": self.stream, "onset_s": round(self.onset_s, 3),
                "raised_s": round(self.raised_s, 3)}


def _fraction(n: int, d: int) -> float | None:
    return n / d if d else None


def _median(x: Sequence[float]) -> float | None:
    return float(np.median(x)) if len(x) else None


def _max(x: Sequence[float]) -> float | None:
    return float(max(x)) if len(x) else None


@dataclass(frozen=True)
class EpisodeEvaluation:
    """Episode-level alarm figures of one record (or of a pool of records).

    Attributes
    ----------
    name
        Record name.
    duration_s
        Record length the rates are computed over.
    vt_total, vt_delays_s, vt_missed
        VT episodes; delays of the detected ones; the missed ones.
    slow_vt_total, slow_vt_alerted
        Slow ventricular runs (annotated ``(VT`` under the VT rate); those alerted HIGH
        as a VT episode would be.
    sustained_total, sustained_alerted
        VT and VF episodes of >= ``sustained_min_s``; those alerted HIGH in time.
    af_total, af_delays_s, af_missed
        AF episodes of >= ``af_min_s``; delays of the alerted ones; the missed ones.
    af_time_s, af_covered_s
        Total AF-episode time and the part of it with an AF alert open.
    physiological, technical, unjudged
        Raised alerts by verdict class.
    false_alerts
        The physiological alerts judged false.
    truth
        The truth episodes (``None`` in a pool).
    verdicts
        The verdict on each alert passed in, in order (empty in a pool).
    """

    name: str
    duration_s: float
    vt_total: int
    vt_delays_s: tuple[float, ...]
    vt_missed: tuple[Episode, ...]
    sustained_total: int
    sustained_alerted: int
    af_total: int
    af_delays_s: tuple[float, ...]
    af_missed: tuple[Episode, ...]
    af_time_s: float
    af_covered_s: float
    physiological: int
    technical: int
    unjudged: int
    false_alerts: tuple[FalseAlert, ...] = field(default=())
    truth: TruthEpisodes | None = None
    slow_vt_total: int = 0
    slow_vt_alerted: int = 0
    verdicts: tuple[Verdict, ...] = field(default=(), repr=False)

    @property
    def false_high(self) -> int:
        return sum(f.high for f in self.false_alerts)

    @property
    def false_af(self) -> int:
        return sum(f.condition in AF_CONDITIONS for f in self.false_alerts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary: counts, fractions, delays, rates and the false-alert list."""
        hours = self.duration_s / 3600.0
        d: dict[str, Any] = {
            "hours": round(hours, 4),
            "vt_episodes": {
                "total": self.vt_total, "detected": len(self.vt_delays_s),
                "sensitivity": _fraction(len(self.vt_delays_s), self.vt_total),
                "median_delay_s": _median(self.vt_delays_s), "max_delay_s": _max(self.vt_delays_s),
                "missed": [[round(e.start_s, 3), round(e.end_s, 3)] for e in self.vt_missed],
            },
            "slow_ventricular_runs": {"total": self.slow_vt_total, "alerted_high": self.slow_vt_alerted},
            "ventricular_10s_alerted_within_10s": {
                "total": self.sustained_total, "alerted": self.sustained_alerted,
                "fraction": _fraction(self.sustained_alerted, self.sustained_total),
            },
            "af_episodes_30s": {
                "total": self.af_total, "alerted": len(self.af_delays_s),
                "fraction": _fraction(len(self.af_delays_s), self.af_total),
                "median_delay_s": _median(self.af_delays_s),
                "missed": [[round(e.start_s, 3), round(e.end_s, 3)] for e in self.af_missed],
            },
            "af_time": {"af_s": round(self.af_time_s, 3), "covered_s": round(self.af_covered_s, 3),
                        "fraction": self.af_covered_s / self.af_time_s if self.af_time_s else None},
            "alerts": {"physiological": self.physiological, "technical": self.technical,
                       "unjudged": self.unjudged, "false": len(self.false_alerts),
                       "false_high": self.false_high, "false_af": self.false_af},
            "false_high_per_patient_hour": self.false_high / hours if hours else None,
            "false_non_technical_per_patient_hour": len(self.false_alerts) / hours if hours else None,
            "false_af_per_patient_day": self.false_af / (hours / 24.0) if hours else None,
            "false_alerts": [f.to_dict() for f in self.false_alerts],
        }
        if self.truth is not None:
            d["truth"] = self.truth.to_dict()
        return d


def _high_in_time(a: AlertSpan, lo: float, hi: float, onset_s: float, record_end_s: float) -> bool:
    """The alert became HIGH in ``[lo, hi]``, or was HIGH and open at ``onset_s``."""
    h = a.high_s
    if h is None:
        return False
    return lo <= h <= hi or h <= onset_s < a.end_s(record_end_s)


def _union_length_within(intervals: Sequence[tuple[float, float]],
                         within: Sequence[tuple[float, float]]) -> float:
    """Length of (union of ``intervals``) intersected with (union of ``within``)."""
    def union(xs: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
        out: list[tuple[float, float]] = []
        for lo, hi in sorted(xs):
            if hi <= lo:
                continue
            if out and lo <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], hi))
            else:
                out.append((lo, hi))
        return out

    a, b = union(intervals), union(within)
    total, i, j = 0.0, 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if hi > lo:
            total += hi - lo
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def evaluate_episodes(
    name: str,
    truth: TruthEpisodes,
    alerts: Sequence[AlertSpan],
    beat_times_s: np.ndarray | Sequence[float],
    aami_classes: np.ndarray | Sequence[str],
    duration_s: float,
    rules: EpisodeRules | None = None,
) -> EpisodeEvaluation:
    """Episode-level alarm figures of one record (rules in the module docstring).

    Parameters
    ----------
    name
        Record name, carried into the result and its false-alert list.
    truth
        The record's truth episodes (:func:`truth_episodes`).
    alerts
        Every alert raised while the record was replayed.
    beat_times_s, aami_classes
        Reference beats (any order) and their AAMI classes.
    duration_s
        Record length in seconds (the end of alerts never cleared; the rates' base).
    rules
        Windows and thresholds.
    """
    r = rules or EpisodeRules()
    if not (math.isfinite(duration_s) and duration_s >= 0):
        raise ValueError(f"duration_s must be a finite number >= 0, got {duration_s}")
    t = np.asarray(beat_times_s, dtype=np.float64).ravel()
    c = np.asarray(aami_classes, dtype=str).ravel()
    if t.shape != c.shape:
        raise ValueError(f"aami_classes must have one class per beat time ({t.size}), got {c.size}")
    order = np.argsort(t, kind="stable")
    t, c = t[order], c[order]
    end = float(duration_s)
    high = [a for a in alerts if a.high_s is not None]
    vent_high = [a for a in high if a.condition in VENTRICULAR_CONDITIONS]
    af_alerts = [a for a in alerts if a.condition in AF_CONDITIONS]

    def vt_hits(e: Episode) -> list[float]:
        return [a.high_s for a in vent_high if a.high_s is not None and _high_in_time(
            a, e.start_s - r.vt_before_s, e.end_s + r.vt_after_s, e.start_s, end)]

    vt_delays: list[float] = []
    vt_missed: list[Episode] = []
    for e in truth.vt:
        hit_s = vt_hits(e)
        if hit_s:
            vt_delays.append(max(0.0, min(hit_s) - e.start_s))
        else:
            vt_missed.append(e)
    slow_alerted = sum(bool(vt_hits(e)) for e in truth.slow_vt)

    sustained = [e for e in truth.vt + truth.vf if e.duration_s >= r.sustained_min_s]
    sustained_alerted = sum(
        any(_high_in_time(a, e.start_s - r.vt_before_s, e.start_s + r.sustained_within_s,
                          e.start_s, end) for a in high)
        for e in sustained)

    af_delays: list[float] = []
    af_missed: list[Episode] = []
    for e in (x for x in truth.af if x.duration_s >= r.af_min_s):
        hits = [a for a in af_alerts
                if a.raised_s <= e.end_s + r.af_after_s and a.end_s(end) >= e.start_s]
        if hits:
            af_delays.append(max(0.0, min(a.raised_s for a in hits) - e.start_s))
        else:
            af_missed.append(e)
    af_time = sum(e.duration_s for e in truth.af)
    covered = _union_length_within([(a.raised_s, a.end_s(end)) for a in af_alerts],
                                   [(e.start_s, e.end_s) for e in truth.af])

    physiological = technical = unjudged = 0
    false: list[FalseAlert] = []
    verdicts: list[Verdict] = []
    for a in alerts:
        v = judge_alert(a, truth, t, c, end, r)
        verdicts.append(v)
        if v == "technical":
            technical += 1
            continue
        physiological += 1
        if v == "unjudged":
            unjudged += 1
        elif v == "false":
            false.append(FalseAlert(name, a.condition, a.priority, a.onset_s, a.raised_s, a.stream,
                                    a.high_s is not None))
    return EpisodeEvaluation(
        name=name, duration_s=end, vt_total=len(truth.vt), vt_delays_s=tuple(vt_delays),
        vt_missed=tuple(vt_missed), sustained_total=len(sustained),
        sustained_alerted=int(sustained_alerted),
        af_total=len(af_delays) + len(af_missed), af_delays_s=tuple(af_delays),
        af_missed=tuple(af_missed), af_time_s=float(af_time), af_covered_s=float(covered),
        physiological=physiological, technical=technical, unjudged=unjudged,
        false_alerts=tuple(false), truth=truth, verdicts=tuple(verdicts),
        slow_vt_total=len(truth.slow_vt), slow_vt_alerted=int(slow_alerted))


def pool_episodes(evaluations: Iterable[EpisodeEvaluation]) -> dict[str, Any]:
    """Pool record figures: counts and times summed, delays pooled, rates over all hours.

    JSON-safe; the ``missed`` lists name their record (``[record, start_s, end_s]``).
    """
    evs = list(evaluations)
    pooled = EpisodeEvaluation(
        name="pooled", duration_s=sum(e.duration_s for e in evs),
        vt_total=sum(e.vt_total for e in evs),
        vt_delays_s=tuple(d for e in evs for d in e.vt_delays_s), vt_missed=(),
        sustained_total=sum(e.sustained_total for e in evs),
        sustained_alerted=sum(e.sustained_alerted for e in evs),
        af_total=sum(e.af_total for e in evs),
        af_delays_s=tuple(d for e in evs for d in e.af_delays_s), af_missed=(),
        af_time_s=sum(e.af_time_s for e in evs), af_covered_s=sum(e.af_covered_s for e in evs),
        physiological=sum(e.physiological for e in evs), technical=sum(e.technical for e in evs),
        unjudged=sum(e.unjudged for e in evs),
        false_alerts=tuple(f for e in evs for f in e.false_alerts),
        slow_vt_total=sum(e.slow_vt_total for e in evs), slow_vt_alerted=sum(e.slow_vt_alerted for e in evs))
    d = pooled.to_dict()
    d["n_records"] = len(evs)
    d["vt_episodes"]["missed"] = [[e.name, round(m.start_s, 3), round(m.end_s, 3)]
                                  for e in evs for m in e.vt_missed]
    d["af_episodes_30s"]["missed"] = [[e.name, round(m.start_s, 3), round(m.end_s, 3)]
                                      for e in evs for m in e.af_missed]
    return d
