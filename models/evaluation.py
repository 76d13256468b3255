"""Evaluation: beat matching, QRS Se/+P, rank AUROC, ROC curves and per-record summaries.

Pure numpy functions used by ``cardiowatch evaluate``. Conventions:

- Reference and detected beats are R-peak sample indices at sample rate ``fs`` (Hz).
- Beat matching follows ANSI/AAMI EC57: a detected beat matches a reference beat when
  they are within ``window_s`` (150 ms) of each other, one-to-one.
- Scores are "higher = more anomalous". AUROC is the Mann-Whitney probability that a
  positive outscores a negative, ties counted one half; it is NaN when a class is empty.
- Beat classes are the AAMI classes ``N, S, V, F, Q``.
- QRS sensitivity and positive predictivity leave out ventricular fibrillation, as
  ANSI/AAMI EC57 does: reference beats and detections inside an excluded interval
  (``exclude_s``, the VF/VFL truth episodes) are not counted; how many were left out is
  reported. Scores, AUROCs and flagged fractions use every matched beat, as before.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import rankdata

__all__ = [
    "AAMI",
    "Match",
    "RecordEvaluation",
    "match_beats",
    "qrs_sensitivity_ppv",
    "auroc",
    "roc_curve",
    "aami_counts",
    "flagged_fraction_by_class",
    "evaluate_record",
    "pool",
]

AAMI: tuple[str, ...] = ("N", "S", "V", "F", "Q")

# Positive-class groups compared against N for AUROC, keyed by the name used in reports.
_AUROC_GROUPS: dict[str, tuple[str, ...]] = {
    "V_vs_N": ("V",),
    "S_vs_N": ("S",),
    "SVF_vs_N": ("S", "V", "F"),
}


@dataclass(frozen=True)
class Match:
    """One-to-one matching of reference and detected beats.

    Attributes
    ----------
    tp, fn, fp : int
        Matched reference beats, missed reference beats, unmatched detections.
    pairs : np.ndarray
        ``int64`` array of shape ``[tp, 2]``: (reference index, detection index),
        sorted by reference index.
    """

    tp: int
    fn: int
    fp: int
    pairs: np.ndarray


def _as_samples(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.size and not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite, got {int(np.sum(~np.isfinite(a)))} non-finite values")
    return a.astype(np.float64)


def match_beats(
    ref_samples: np.ndarray | Sequence[int],
    det_samples: np.ndarray | Sequence[int],
    fs: float,
    window_s: float = 0.150,
) -> Match:
    """Match detected beats to reference beats one-to-one (EC57 style).

    Candidate pairs are those with ``|det - ref| <= window_s * fs`` samples. Pairs are
    accepted greedily from the closest (ties broken by the earlier reference, then the
    earlier detection),
    each beat used at most once, so the result is deterministic and independent of the
    input order.

    Parameters
    ----------
    ref_samples, det_samples : array-like of int
        R-peak sample indices (any order).
    fs : float
        Sample rate of both index sets, Hz.
    window_s : float
        Match tolerance, seconds (EC57: 0.150).

    Returns
    -------
    Match
        Counts and ``pairs`` of indices into the *given* arrays.
    """
    if not (fs > 0 and math.isfinite(fs)):
        raise ValueError(f"fs must be a positive finite sample rate in Hz, got {fs}")
    if not (window_s > 0 and math.isfinite(window_s)):
        raise ValueError(f"window_s must be positive, got {window_s}")
    ref = _as_samples(ref_samples, "ref_samples")
    det = _as_samples(det_samples, "det_samples")
    tol = window_s * fs
    det_order = np.argsort(det, kind="stable")
    det_sorted = det[det_order]
    lo = np.searchsorted(det_sorted, ref - tol, side="left")
    hi = np.searchsorted(det_sorted, ref + tol, side="right")
    cand_r: list[int] = []
    cand_d: list[int] = []
    for i in range(ref.size):
        for j in range(int(lo[i]), int(hi[i])):
            cand_r.append(i)
            cand_d.append(int(det_order[j]))
    pairs_list: list[tuple[int, int]] = []
    if cand_r:
        cr = np.asarray(cand_r, dtype=np.int64)
        cd = np.asarray(cand_d, dtype=np.int64)
        dist = np.abs(det[cd] - ref[cr])
        # primary key distance, then the earlier reference beat, then the earlier detection
        # (by time, not by position, so the result does not depend on input order)
        order = np.lexsort((cd, det[cd], cr, ref[cr], dist))
        ref_used = np.zeros(ref.size, dtype=bool)
        det_used = np.zeros(det.size, dtype=bool)
        for k in order:
            r, d = int(cr[k]), int(cd[k])
            if not ref_used[r] and not det_used[d]:
                ref_used[r] = det_used[d] = True
                pairs_list.append((r, d))
    pairs = np.asarray(sorted(pairs_list), dtype=np.int64).reshape(-1, 2)
    tp = int(pairs.shape[0])
    return Match(tp=tp, fn=int(ref.size) - tp, fp=int(det.size) - tp, pairs=pairs)


def qrs_sensitivity_ppv(match: Match) -> tuple[float, float]:
    """QRS sensitivity ``tp/(tp+fn)`` and positive predictivity ``tp/(tp+fp)``.

    Each is NaN when its denominator is zero.
    """
    se = match.tp / (match.tp + match.fn) if (match.tp + match.fn) else float("nan")
    ppv = match.tp / (match.tp + match.fp) if (match.tp + match.fp) else float("nan")
    return float(se), float(ppv)


def _scores(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).ravel()
    bad = int(np.sum(~np.isfinite(a)))
    if bad:
        raise ValueError(f"{name} must be finite, got {bad} non-finite of {a.size}")
    return a


def auroc(scores_pos: np.ndarray | Sequence[float], scores_neg: np.ndarray | Sequence[float]) -> float:
    """Area under the ROC curve from ranks (Mann-Whitney U / (n_pos * n_neg)).

    Ties between a positive and a negative count one half. Returns NaN when either
    class is empty.
    """
    pos = _scores(scores_pos, "scores_pos")
    neg = _scores(scores_neg, "scores_neg")
    n_pos, n_neg = pos.size, neg.size
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.concatenate([pos, neg]), method="average")
    u = float(ranks[:n_pos].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def roc_curve(
    scores_pos: np.ndarray | Sequence[float], scores_neg: np.ndarray | Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve for the rule ``flagged = score >= threshold``.

    Returns
    -------
    fpr, tpr, thresholds : np.ndarray
        One point per distinct score, from ``(0, 0)`` at threshold ``+inf`` to ``(1, 1)``
        at the lowest score. ``np.trapezoid(tpr, fpr)`` equals :func:`auroc` (ties
        become diagonal segments). Empty class: its rate is NaN throughout.
    """
    pos = _scores(scores_pos, "scores_pos")
    neg = _scores(scores_neg, "scores_neg")
    thresholds = np.unique(np.concatenate([pos, neg]))[::-1]
    pos_sorted = np.sort(pos)
    neg_sorted = np.sort(neg)
    # count of scores >= t = n - (number strictly below t)
    tp = pos.size - np.searchsorted(pos_sorted, thresholds, side="left")
    fp = neg.size - np.searchsorted(neg_sorted, thresholds, side="left")
    tpr = np.concatenate([[0.0], tp / pos.size]) if pos.size else np.full(thresholds.size + 1, np.nan)
    fpr = np.concatenate([[0.0], fp / neg.size]) if neg.size else np.full(thresholds.size + 1, np.nan)
    return fpr.astype(np.float64), tpr.astype(np.float64), np.concatenate([[np.inf], thresholds])


def _classes(x: Any, name: str = "classes") -> np.ndarray:
    a = np.asarray(x, dtype=str).ravel()
    unknown = sorted(set(a.tolist()) - set(AAMI))
    if unknown:
        raise ValueError(f"{name} must be AAMI classes {AAMI}, got {unknown}")
    return a


def aami_counts(classes: np.ndarray | Sequence[str]) -> dict[str, int]:
    """Counts per AAMI class, always with all five keys ``N, S, V, F, Q``."""
    c = _classes(classes)
    return {k: int(np.sum(c == k)) for k in AAMI}


def flagged_fraction_by_class(
    classes: np.ndarray | Sequence[str], flagged: np.ndarray | Sequence[bool]
) -> dict[str, float]:
    """Fraction of beats of each AAMI class that were flagged (NaN for absent classes)."""
    c = _classes(classes)
    f = np.asarray(flagged, dtype=bool).ravel()
    if f.shape != c.shape:
        raise ValueError(f"flagged must have one value per class label ({c.size}), got {f.size}")
    out: dict[str, float] = {}
    for k in AAMI:
        m = c == k
        out[k] = float(f[m].mean()) if m.any() else float("nan")
    return out


def _jsonable(x: float) -> float | None:
    return None if (isinstance(x, float) and math.isnan(x)) else x


@dataclass(frozen=True)
class RecordEvaluation:
    """Beat-level evaluation of one record.

    Summary fields are computed over *matched* reference beats (a missed beat has no
    score). The raw matched arrays are kept so :func:`pool` can pool scores across
    records rather than average per-record AUROCs.
    """

    name: str
    tp: int
    fn: int
    fp: int
    qrs_sensitivity: float
    qrs_ppv: float
    reference_counts: dict[str, int]
    matched_counts: dict[str, int]
    auroc: dict[str, float]
    flagged_fraction: dict[str, float]
    n_false_positive_rate: float
    false_detections_flagged: int
    matched_classes: np.ndarray = field(repr=False)
    matched_scores: np.ndarray = field(repr=False)
    matched_flagged: np.ndarray = field(repr=False)
    excluded_reference: int = 0
    excluded_detections: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (NaN becomes ``None``; raw arrays omitted)."""
        return {
            "name": self.name,
            "tp": self.tp,
            "fn": self.fn,
            "fp": self.fp,
            "qrs_sensitivity": _jsonable(self.qrs_sensitivity),
            "qrs_ppv": _jsonable(self.qrs_ppv),
            "reference_counts": dict(self.reference_counts),
            "matched_counts": dict(self.matched_counts),
            "auroc": {k: _jsonable(v) for k, v in self.auroc.items()},
            "flagged_fraction": {k: _jsonable(v) for k, v in self.flagged_fraction.items()},
            "n_false_positive_rate": _jsonable(self.n_false_positive_rate),
            "false_detections_flagged": self.false_detections_flagged,
            "qrs_excluded": {"reference": self.excluded_reference,
                             "detections": self.excluded_detections},
        }


def _inside(samples: np.ndarray, fs: float, intervals_s: Sequence[tuple[float, float]]) -> np.ndarray:
    """Mask of the samples whose time lies in any closed interval ``[start_s, end_s]``."""
    t = np.asarray(samples, dtype=np.float64) / fs
    m = np.zeros(t.shape, dtype=bool)
    for lo, hi in intervals_s:
        if not (math.isfinite(lo) and math.isfinite(hi) and hi >= lo):
            raise ValueError(f"exclude_s intervals must be finite with end >= start, got {(lo, hi)}")
        m |= (t >= lo) & (t <= hi)
    return m


def _auroc_groups(classes: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    neg = scores[classes == "N"]
    return {
        name: auroc(scores[np.isin(classes, list(group))], neg) for name, group in _AUROC_GROUPS.items()
    }


def evaluate_record(
    ref_samples: np.ndarray | Sequence[int],
    ref_aami: np.ndarray | Sequence[str],
    det_samples: np.ndarray | Sequence[int],
    det_scores: np.ndarray | Sequence[float],
    det_flagged: np.ndarray | Sequence[bool],
    fs: float,
    *,
    window_s: float = 0.150,
    name: str = "",
    exclude_s: Sequence[tuple[float, float]] = (),
) -> RecordEvaluation:
    """Evaluate one record's detected, scored and flagged beats against the reference.

    Parameters
    ----------
    ref_samples, ref_aami : array-like
        Reference R-peak samples and their AAMI classes (same length).
    det_samples, det_scores, det_flagged : array-like
        Detected R-peak samples, detector scores and the flag at the operating point
        (same length).
    fs : float
        Sample rate of the sample indices, Hz.
    window_s : float
        Beat match tolerance, seconds.
    name : str
        Record name, carried into the result.
    exclude_s : sequence of (start_s, end_s)
        Intervals (seconds from the record start) left out of QRS Se/+P: the record's
        ventricular flutter/fibrillation episodes (EC57).

    Returns
    -------
    RecordEvaluation
    """
    ref = np.asarray(ref_samples)
    cls = _classes(ref_aami, "ref_aami")
    if cls.size != ref.size:
        raise ValueError(f"ref_aami must have one class per reference beat ({ref.size}), got {cls.size}")
    det = np.asarray(det_samples)
    scores = _scores(det_scores, "det_scores")
    flagged = np.asarray(det_flagged, dtype=bool).ravel()
    if not (scores.size == det.size == flagged.size):
        raise ValueError(
            f"det_samples, det_scores, det_flagged must have equal lengths, "
            f"got {det.size}, {scores.size}, {flagged.size}"
        )
    m = match_beats(ref, det, fs, window_s)
    ref_out = _inside(ref, fs, exclude_s)
    det_out = _inside(det, fs, exclude_s)
    qrs = m if not (ref_out.any() or det_out.any()) else match_beats(
        ref[~ref_out], det[~det_out], fs, window_s)
    se, ppv = qrs_sensitivity_ppv(qrs)
    r_idx, d_idx = m.pairs[:, 0], m.pairs[:, 1]
    mc, ms, mf = cls[r_idx], scores[d_idx], flagged[d_idx]
    unmatched = np.ones(det.size, dtype=bool)
    unmatched[d_idx] = False
    ff = flagged_fraction_by_class(mc, mf)
    return RecordEvaluation(
        name=name,
        tp=qrs.tp,
        fn=qrs.fn,
        fp=qrs.fp,
        qrs_sensitivity=se,
        qrs_ppv=ppv,
        reference_counts=aami_counts(cls),
        matched_counts=aami_counts(mc),
        auroc=_auroc_groups(mc, ms),
        flagged_fraction=ff,
        n_false_positive_rate=ff["N"],
        false_detections_flagged=int(flagged[unmatched].sum()),
        matched_classes=mc,
        matched_scores=ms,
        matched_flagged=mf,
        excluded_reference=int(ref_out.sum()),
        excluded_detections=int(det_out.sum()),
    )


def pool(evaluations: Iterable[RecordEvaluation]) -> dict[str, Any]:
    """Pool record evaluations: sum counts and pool raw matched scores across records.

    AUROCs and flagged fractions are computed over the concatenated matched beats of
    all records (not the mean of per-record values). JSON-safe (NaN becomes ``None``).
    """
    evs = list(evaluations)
    tp = sum(e.tp for e in evs)
    fn = sum(e.fn for e in evs)
    fp = sum(e.fp for e in evs)
    se, ppv = qrs_sensitivity_ppv(Match(tp=tp, fn=fn, fp=fp, pairs=np.zeros((0, 2), np.int64)))
    if evs:
        cls = np.concatenate([e.matched_classes for e in evs])
        sc = np.concatenate([e.matched_scores for e in evs])
        fl = np.concatenate([e.matched_flagged for e in evs])
    else:
        cls, sc, fl = np.zeros(0, dtype=str), np.zeros(0), np.zeros(0, dtype=bool)
    ff = flagged_fraction_by_class(cls, fl)
    return {
        "n_records": len(evs),
        "tp": tp,
        "fn": fn,
        "fp": fp,
        "qrs_sensitivity": _jsonable(se),
        "qrs_ppv": _jsonable(ppv),
        "reference_counts": {k: sum(e.reference_counts[k] for e in evs) for k in AAMI},
        "matched_counts": aami_counts(cls),
        "auroc": {k: _jsonable(v) for k, v in _auroc_groups(cls, sc).items()},
        "flagged_fraction": {k: _jsonable(v) for k, v in ff.items()},
        "n_false_positive_rate": _jsonable(ff["N"]),
        "false_detections_flagged": sum(e.false_detections_flagged for e in evs),
        "qrs_excluded": {"reference": sum(e.excluded_reference for e in evs),
                         "detections": sum(e.excluded_detections for e in evs)},
    }
