"""Heart-rate AF stage: RR-window features of atrial fibrillation, the tree detector that turns them into a probability, and the alert rule its threshold is chosen for.

What a watch or chest strap reports is the RR series. Atrial fibrillation shows in it as an
*irregularly irregular* rhythm: successive intervals are nearly independent, so the
beat-to-beat differences are large, signless and without pattern. What it must be told
apart from:

- **sinus arrhythmia**: RR changes smoothly with breathing (successive differences are
  small and positively correlated; few turning points);
- **isolated ectopy**: a premature beat and its compensatory pause disturb two intervals
  around an otherwise stable baseline (most RR stay near the median; the disturbance comes
  as a short-long pair);
- **atrial bigeminy** (``(AB`` in ltafdb) and trigeminy: irregular but *regularly*
  irregular (the differences alternate in sign, RR cluster at two or three values);
- **congestive heart failure**: low variability with frequent ventricular ectopy.

Features (:func:`af_features`, :data:`FEATURES`) are computed from the last
:data:`AF_WINDOW_BEATS` RR intervals the stream has, oldest first, at three scales (the
last 16, 32 and 64 intervals: the short scale reacts within seconds of an onset, the long
one is stable). Every feature is scale-free (divided by the window's mean or median RR):
the heart rate itself is deliberately not a feature. Leave-patient-out, a rate feature made
the trees call slow AF (ltafdb 01 at 60-70 bpm) sinus rhythm, because the other AF patients
were fast; without it the AF time covered rose from 0.68 to 0.97 at a similar false-alert
rate. (Two RR-concentration features, the fraction of RR near the median and the largest
fraction inside one 8 % band, changed nothing held out and were left out.) Per scale:

===================  =====================================================================
``nrmssd``           RMSSD / mean RR (Tateno & Glass 2001 use the same normalisation)
``mad_drr``          median of |dRR| / median RR: robust to an isolated ectopic pair
``q25_drr``          25th percentile of |dRR| / median RR
``q75_drr``          75th percentile of |dRR| / median RR
``pnn6``             fraction of |dRR| > 6 % of the median RR (a relative pNNx)
``tpr``              turning-point ratio (Dash et al. 2009): ~2/3 for independent RR
``ent_drr``          Shannon entropy of dRR / median RR in fixed bins (Dash et al. 2009)
``acf1_drr``         lag-1 autocorrelation of dRR (bigeminy -1, random -0.5, sinus > 0)
``acf1_rr``          lag-1 autocorrelation of RR
``sd1_sd2``          Poincare SD1 / SD2
``cv``               coefficient of variation of RR
``nrmssd_clean``     nRMSSD after removing premature-compensatory pairs (ectopy-robust)
``ectopic_frac``     fraction of intervals that start a premature-compensatory pair
``sampen``           sample entropy, m = 1, tolerance 6 % of the median RR (Lake & Moorman
                     2011 use short-window sample entropy), scales 16 and 32 only
===================  =====================================================================

plus ``rate_ratio_16_64``, the median RR of the last 64 over that of the last 16 (a rate
*change*, not a rate). The :class:`AFDetector` is a gradient-boosted tree ensemble
(:mod:`models.trees`) giving an AF probability per window; the alert policy's
``atrial_fibrillation`` condition opens when it stays above the threshold and clears when
it stays below. :class:`AFAlertRule` is that rule as a pure function over a probability
series (:func:`af_alert_spans`): training chooses the threshold with it, from a stated
false-alert rate on held-out patients; a unit test keeps it equal to the condition.

References: Tateno K, Glass L. Automatic detection of atrial fibrillation using the
coefficient of variation and density histograms of RR and deltaRR intervals. Med Biol Eng
Comput 39:664-671 (2001). Dash S, Chon KH, Lu S, Raeder EA. Automatic real time detection
of atrial fibrillation. Ann Biomed Eng 37(9):1701-1709 (2009). Lake DE, Moorman JR.
Accurate estimation of entropy in very short physiological time series: the problem of
atrial fibrillation detection in implanted ventricular devices. Am J Physiol Heart Circ
Physiol 300:H319-H325 (2011). Petrenas A, Marozas V, Sornmo L. Low-complexity detection of
atrial fibrillation in continuous long-term monitoring. Comput Biol Med 65:184-191 (2015).

Pure numpy (the trees are evaluated without LightGBM).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.errors import CardiowatchError
from models.trees import TreeEnsemble

__all__ = [
    "AF_WINDOW_BEATS",
    "FEATURES",
    "SCALES",
    "AFAlertRule",
    "AFDetector",
    "AFError",
    "AFPrediction",
    "af_alert_spans",
    "af_features",
]

#: RR intervals the features look back over (about 50 s at 75 bpm, 30 s in fast AF).
AF_WINDOW_BEATS = 64
#: The window scales, in intervals (the last 16, 32 and 64).
SCALES = (16, 32, 64)
_SAMPEN_SCALES = (16, 32)
#: RR intervals are clipped to [0.2, 3.0] s, as for the heart-rate autoencoder: values
#: outside are artefacts or pauses (the pause rule's business), not AF.
RR_MIN_S, RR_MAX_S = 0.2, 3.0
# relative dRR bin edges of the entropy feature: finer near 0, where sinus rhythm lives
_DRR_EDGES = np.array([-0.3, -0.2, -0.12, -0.06, -0.02, 0.02, 0.06, 0.12, 0.2, 0.3])
# a premature beat: RR < 85 % of the median, followed by a compensatory RR > 110 %
_PREMATURE, _COMPENSATORY = 0.85, 1.10
_CHUNK = 8192  # windows per vectorised block (the sample entropy is [n, W, W])

_PER_SCALE = ("nrmssd", "mad_drr", "q25_drr", "q75_drr", "pnn6", "tpr", "ent_drr", "acf1_drr",
              "acf1_rr", "sd1_sd2", "cv", "nrmssd_clean", "ectopic_frac")


def _feature_names() -> tuple[str, ...]:
    names: list[str] = []
    for s in SCALES:
        names += [f"w{s}_{n}" for n in _PER_SCALE]
        if s in _SAMPEN_SCALES:
            names.append(f"w{s}_sampen")
    names.append("rate_ratio_16_64")
    return tuple(names)


#: Feature names, in column order.
FEATURES: tuple[str, ...] = _feature_names()


class AFError(CardiowatchError, ValueError):
    """Bad input to the AF stage (window shape, values, detector file or settings)."""


def _check_windows(windows_s: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    w = np.asarray(windows_s, dtype=np.float64)
    if w.ndim != 2 or w.shape[1] != AF_WINDOW_BEATS:
        raise AFError(f"RR windows must have shape [n, {AF_WINDOW_BEATS}], got {w.shape}")
    bad = int(np.sum(~np.isfinite(w) | (w <= 0)))
    if bad:
        raise AFError(f"RR windows must be finite and > 0 seconds, got {bad} bad values")
    return w


def _acf1(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=1, keepdims=True)
    num = (x[:, 1:] * x[:, :-1]).sum(axis=1)
    den = (x * x).sum(axis=1)
    return np.where(den > 1e-12, num / np.maximum(den, 1e-12), 0.0)


def _entropy(rel: np.ndarray) -> np.ndarray:
    nb = len(_DRR_EDGES) + 1
    counts = (np.searchsorted(_DRR_EDGES, rel)[:, :, None] == np.arange(nb)).sum(axis=1)
    p = counts / rel.shape[1]
    plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return -plogp.sum(axis=1) / math.log(min(nb, rel.shape[1]))


def _sample_entropy(r: np.ndarray, tol: np.ndarray) -> np.ndarray:
    """m = 1 sample entropy per row; ``-log(A / B)`` with B the pairs of matching single
    values and A those whose successors match too. No match at all (A = 0) is the largest
    value the window can show, ``log`` of the number of pairs."""
    n = r.shape[1]
    r32 = r.astype(np.float32)
    match = np.abs(r32[:, :, None] - r32[:, None, :]) <= tol.astype(np.float32)[:, :, None]
    first = match[:, :-1, :-1]
    b = (first.sum(axis=(1, 2)) - (n - 1)) / 2.0
    a = ((first & match[:, 1:, 1:]).sum(axis=(1, 2)) - (n - 1)) / 2.0
    cap = math.log((n - 1) * (n - 2) / 2.0)
    ratio = np.where((a > 0) & (b > 0), a / np.maximum(b, 1.0), 1.0)
    return np.where(a > 0, -np.log(ratio), cap)


def _scale_features(r: np.ndarray, sampen: bool) -> list[np.ndarray]:
    mean = r.mean(axis=1)
    med = np.median(r, axis=1, keepdims=True)
    d = np.diff(r, axis=1)
    rel = d / med
    ad = np.abs(rel)
    sd1 = d.std(axis=1) / math.sqrt(2.0)
    sd2 = np.sqrt(np.maximum(2.0 * r.var(axis=1) - sd1 ** 2, 1e-12))
    pair = (r[:, :-1] < _PREMATURE * med) & (r[:, 1:] > _COMPENSATORY * med)
    masked = np.zeros(r.shape, dtype=bool)
    masked[:, :-1] |= pair
    masked[:, 1:] |= pair
    keep = ~(masked[:, 1:] | masked[:, :-1])
    n_keep = keep.sum(axis=1)
    clean = np.sqrt(np.where(keep, d * d, 0.0).sum(axis=1) / np.maximum(n_keep, 1)) / mean
    out = [
        np.sqrt((d * d).mean(axis=1)) / mean,
        np.median(ad, axis=1),
        np.quantile(ad, 0.25, axis=1),
        np.quantile(ad, 0.75, axis=1),
        (ad > 0.06).mean(axis=1),
        ((d[:, 1:] * d[:, :-1]) < 0).mean(axis=1),
        _entropy(rel),
        _acf1(d),
        _acf1(r),
        sd1 / sd2,
        r.std(axis=1) / mean,
        np.where(n_keep >= 3, clean, np.nan),
        pair.mean(axis=1),
    ]
    if sampen:
        out.append(_sample_entropy(r, 0.06 * med))
    return out


def af_features(windows_s: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """AF features float64 [n, len(FEATURES)] of RR windows [n, AF_WINDOW_BEATS] in seconds.

    Each row is the last :data:`AF_WINDOW_BEATS` RR intervals up to a heart-rate message,
    oldest first; intervals are clipped to [0.2, 3.0] s. ``nrmssd_clean`` is NaN when
    fewer than three successive differences are left after removing ectopic pairs (the
    trees treat NaN as missing).

    Raises
    ------
    AFError
        A window of the wrong shape, or a value that is not finite and > 0.
    """
    w = np.clip(_check_windows(windows_s), RR_MIN_S, RR_MAX_S)
    out = np.empty((w.shape[0], len(FEATURES)), dtype=np.float64)
    for lo in range(0, w.shape[0], _CHUNK):
        block = w[lo:lo + _CHUNK]
        cols: list[np.ndarray] = []
        for s in SCALES:
            cols += _scale_features(block[:, -s:], s in _SAMPEN_SCALES)
        cols.append(np.median(block, axis=1) / np.median(block[:, -16:], axis=1))
        out[lo:lo + _CHUNK] = np.stack(cols, axis=1)
    return out


# ---------------------------------------------------------------------------- alert rule
@dataclass(frozen=True, slots=True)
class AFAlertRule:
    """The ``atrial_fibrillation`` condition's rule, for choosing and checking a threshold.

    Opens when the probability has stayed >= threshold for ``sustain_s`` (messages at most
    ``max_gap_s`` apart); clears when it has stayed below for ``clear_s``; after a clear the
    alert does not re-open for ``cooldown_s`` (the policy's ``alarms.cooldown_s``). The
    defaults are the condition's and the policy's (a unit test keeps them equal).

    Why 30 s and 180 s: AF is an episode of 30 s or more, and a clear that waits 3 min
    keeps one alert across the brief dips of the probability inside an episode. Against
    20 s / 90 s, on held-out patients (nested thresholds, 5 patient folds over nsr2db,
    chf2db, ltafdb, DS1 and svdb) it alerted 72 of 74 AF episodes instead of 67, covered
    98 % of AF time instead of 97 %, and gave 0.72 false AF alerts per patient-day on
    nsr2db + chf2db instead of 1.17 (of the grid 20/30/45 s by 90/120/180/240 s).
    """

    sustain_s: float = 30.0
    clear_s: float = 180.0
    cooldown_s: float = 60.0
    max_gap_s: float = 10.0

    def __post_init__(self) -> None:
        for name in ("sustain_s", "clear_s", "cooldown_s", "max_gap_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
                raise AFError(f"{name} must be a finite number >= 0, got {v!r}")

    def to_dict(self) -> dict[str, float]:
        return {"sustain_s": float(self.sustain_s), "clear_s": float(self.clear_s),
                "cooldown_s": float(self.cooldown_s), "max_gap_s": float(self.max_gap_s)}


def af_alert_spans(ts_s: np.ndarray | Sequence[float], probability: np.ndarray | Sequence[float],
                   threshold: float, rule: AFAlertRule | None = None) -> list[tuple[float, float, float | None]]:
    """Alerts the rule raises over one patient's probability series.

    Parameters
    ----------
    ts_s, probability
        Message times (seconds, increasing) and their AF probabilities (NaN: none, as
        before the window has filled; it neither sustains nor clears).
    threshold
        Probability at or above which a message counts as AF.
    rule
        The rule's timings.

    Returns
    -------
    list of (onset_s, raised_s, cleared_s or None)
        One per alert, in order; ``onset_s`` is when the probability went above.
    """
    r = rule or AFAlertRule()
    t = np.asarray(ts_s, dtype=np.float64)
    p = np.asarray(probability, dtype=np.float64)
    if t.shape != p.shape or t.ndim != 1:
        raise AFError(f"ts_s and probability must be equal 1-D arrays, got {t.shape} and {p.shape}")
    out: list[tuple[float, float, float | None]] = []
    since: float | None = None
    below: float | None = None
    opened: tuple[float, float] | None = None
    cleared_at = -math.inf
    prev: float | None = None
    for ti, pi in zip(t.tolist(), p.tolist()):
        continuous = prev is not None and ti - prev <= r.max_gap_s
        prev = ti
        if not continuous:
            since = below = None
        if math.isnan(pi):
            continue
        if pi >= threshold:
            below = None
            if since is None:
                since = ti
            if opened is None and ti - since >= r.sustain_s and ti - cleared_at >= r.cooldown_s:
                opened = (max(since, cleared_at), ti)
        else:
            since = None
            if opened is not None:
                if below is None:
                    below = ti
                if ti - below >= r.clear_s:
                    out.append((opened[0], opened[1], ti))
                    opened, below, cleared_at = None, None, ti
    if opened is not None:
        out.append((opened[0], opened[1], None))
    return out


# ----------------------------------------------------------------------------- detector
@dataclass(frozen=True)
class AFPrediction:
    """AF probabilities of windows and whether each is at or above the threshold."""

    probability: np.ndarray
    flagged: np.ndarray
    threshold: float


_FORMAT = "cardiowatch.af_detector/1"


class AFDetector:
    """AF probability of RR windows: :func:`af_features`, then gradient-boosted trees.

    Parameters
    ----------
    ensemble : TreeEnsemble
        Two classes (``nonaf``, ``af``) over :data:`FEATURES`, in that order.
    threshold : float or None
        Operating probability (chosen for a false-alert rate on held-out patients, see
        :meth:`models.hr.af_train.AlertTable.choose`); None until set.
    rule : AFAlertRule
        The alert rule the threshold was chosen for.
    """

    window_beats = AF_WINDOW_BEATS

    def __init__(self, ensemble: TreeEnsemble, threshold: float | None = None,
                 rule: AFAlertRule | None = None) -> None:
        if tuple(ensemble.feature_names) != FEATURES:
            raise AFError(f"tree ensemble features must be models.hr.af.FEATURES ({len(FEATURES)} names), "
                          f"got {len(ensemble.feature_names)}: {list(ensemble.feature_names)[:3]}...")
        if tuple(ensemble.classes) != ("nonaf", "af"):
            raise AFError(f"tree ensemble classes must be ('nonaf', 'af'), got {ensemble.classes}")
        if threshold is not None and not (isinstance(threshold, (int, float)) and 0.0 < threshold < 1.0):
            raise AFError(f"threshold must be a probability in (0, 1), got {threshold!r}")
        self.ensemble = ensemble
        self.threshold = None if threshold is None else float(threshold)
        self.rule = rule or AFAlertRule()

    def score_features(self, features: np.ndarray) -> np.ndarray:
        """AF probability float64 [n] of feature rows [n, len(FEATURES)]."""
        return self.ensemble.predict_proba(np.asarray(features, dtype=np.float64))[:, 1]

    def score(self, rr_windows_s: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
        """AF probability float64 [n] of RR windows [n, AF_WINDOW_BEATS] in seconds
        (higher means more likely AF)."""
        return self.score_features(af_features(rr_windows_s))

    def predict(self, rr_windows_s: np.ndarray | Sequence[Sequence[float]]) -> AFPrediction:
        """Probabilities and flags at the detector's threshold (AFError if it has none)."""
        if self.threshold is None:
            raise AFError("the AF detector has no threshold; load it from a trained bundle")
        p = self.score(rr_windows_s)
        return AFPrediction(p, p >= self.threshold, self.threshold)

    # -- persistence -------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The detector file (``af_detector.npz``): the tree arrays and a JSON header."""
        header = {"format": _FORMAT, "window_beats": AF_WINDOW_BEATS, "features": list(FEATURES),
                  "threshold": self.threshold, "rule": self.rule.to_dict()}
        buf = io.BytesIO()
        np.savez_compressed(buf, header=np.frombuffer(json.dumps(header).encode(), np.uint8),
                            trees=np.frombuffer(self.ensemble.to_bytes(), np.uint8))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, raw: bytes) -> AFDetector:
        """Inverse of :meth:`to_bytes`; AFError names what does not match this code."""
        try:
            z = np.load(io.BytesIO(raw), allow_pickle=False)
            header = json.loads(bytes(z["header"]).decode())
            trees = TreeEnsemble.from_bytes(bytes(z["trees"]))
        except (OSError, ValueError, KeyError) as exc:
            raise AFError(f"not an AF detector file: {exc}") from None
        if header.get("format") != _FORMAT:
            raise AFError(f"AF detector format must be {_FORMAT!r}, got {header.get('format')!r}")
        if header.get("window_beats") != AF_WINDOW_BEATS or tuple(header.get("features", ())) != FEATURES:
            raise AFError(f"AF detector was trained on other features (window {header.get('window_beats')}, "
                          f"{len(header.get('features', ()))} features); this code computes "
                          f"{AF_WINDOW_BEATS} beats, {len(FEATURES)} features")
        rule = header.get("rule") or {}
        return cls(trees, header.get("threshold"), AFAlertRule(**rule))

    def settings(self) -> dict[str, Any]:
        """What a bundle's ``extra["af_detector"]`` records about this detector."""
        return {"window_beats": AF_WINDOW_BEATS, "n_features": len(FEATURES), "threshold": self.threshold,
                "rule": self.rule.to_dict(), "n_trees": self.ensemble.n_trees}

    @staticmethod
    def check_settings(extra: Mapping[str, Any], where: str) -> None:
        """AFError unless a bundle's ``extra["af_detector"]`` section names a file."""
        if not isinstance(extra, Mapping) or not isinstance(extra.get("file"), str):
            raise AFError(f"{where}: extra.af_detector must be an object with a 'file' name, got {extra!r}")
