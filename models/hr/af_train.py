"""Heart-rate AF training stage: labelled RR windows, patient-wise folds, the tree detector, and its threshold from a false-alert rate on held-out patients.

Rows. Every ``step``-th interval of a record's reported RR series (:mod:`models.hr.data`)
with :data:`~models.hr.af.AF_WINDOW_BEATS` intervals before it gives one row: the
features of that window (:func:`models.hr.af.af_features`) and the rhythm at its last
beat (AF or not). A row is used for training when its label is certain:

- its rhythm is known (annotated, or a sinus-rhythm database);
- it is not atrial flutter (AF-like; the evaluator does not count an AF alert in it false);
- it is not a transition: at most 10 % or at least 90 % of its window is AF;
- in a record without rhythm annotations that is not a sinus database (svdb here), only
  windows holding a supraventricular ectopic (S) beat: annotators label S beats only
  outside AF, so these are ectopy negatives, while an unlabelled AF stretch (svdb 804 is
  irregularly irregular throughout) is never taken as sinus rhythm.

Sinus-database rows are thinned (``sinus_step``): 80 patient-days of them would
otherwise outweigh a few hours of AF a hundred to one.

Folds. Patients (records) are split into ``k`` folds, seeded: the patients with AF are
dealt out first so every fold has some, then each database's other patients are dealt out
in turn. Each fold's detector is trained on the other folds; its probabilities on its
own patients are *out-of-fold* (held-out) predictions.

Threshold. The shipped detector is trained on every patient; its threshold is the lowest
probability at which :func:`models.hr.af.af_alert_spans` (the alert rule) raises at most
``max_false_per_day`` false AF alerts per patient-day over the out-of-fold predictions of
all patients (judged as the evaluator judges them, :func:`models.episodes.judge_alert`),
with every higher candidate also within the target. A fold's own threshold (for its
held-out figures) is chosen the same way on the out-of-fold predictions of the *other*
folds' patients only.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.episodes import AlertSpan, EpisodeEvaluation, evaluate_episodes, pool_episodes
from models.hr.af import AF_WINDOW_BEATS, FEATURES, AFAlertRule, AFDetector, AFError, af_alert_spans, af_features
from models.hr.data import SINUS_DATABASES, RRSeries
from models.trees import train_gbdt

__all__ = [
    "AFRows",
    "AFTrainResult",
    "AlertTable",
    "THRESHOLD_GRID",
    "af_rows",
    "assign_folds",
    "fit_af",
    "train_af",
]

#: Candidate thresholds, low to high.
THRESHOLD_GRID = tuple(np.round(np.concatenate([np.arange(0.30, 0.90, 0.05), np.arange(0.90, 0.995, 0.01)]), 3))
_TRANSITION = (0.1, 0.9)
#: LightGBM settings of the AF trees on top of models.trees.GBDT_DEFAULTS (none: the
#: defaults are what the held-out figures were measured with).
AF_GBDT: dict[str, Any] = {}


@dataclass(frozen=True)
class AFRows:
    """Feature rows of one record.

    Attributes
    ----------
    series
        The record's name.
    end_s
        float64 [n] time of each window's last beat.
    x
        float32 [n, len(FEATURES)] features.
    af
        bool [n] AF at the last beat.
    trainable
        bool [n] the label is certain (module docstring).
    """

    series: str
    end_s: np.ndarray
    x: np.ndarray
    af: np.ndarray
    trainable: np.ndarray


def af_rows(s: RRSeries, step: int = 4) -> AFRows:
    """Rows at every ``step``-th interval of ``s`` that has a full window behind it."""
    if int(step) < 1:
        raise AFError(f"step must be >= 1, got {step}")
    w = AF_WINDOW_BEATS
    if len(s) < w:
        z = np.zeros(0)
        return AFRows(s.name, z, np.zeros((0, len(FEATURES)), np.float32), z.astype(bool), z.astype(bool))
    idx = np.arange(w - 1, len(s), int(step))
    win = np.lib.stride_tricks.sliding_window_view(s.rr_s, w)[idx - w + 1]
    af = s.af
    c_af = np.concatenate([[0], np.cumsum(af)])
    frac = (c_af[idx + 1] - c_af[idx + 1 - w]) / w
    c_s = np.concatenate([[0], np.cumsum(s.aami == "S")])
    has_s = (c_s[idx + 1] - c_s[idx + 1 - w]) > 0
    lo, hi = _TRANSITION
    ok = ~s.afl[idx] & ((frac <= lo) | (frac >= hi))
    ok &= s.known[idx] | has_s
    return AFRows(s.name, s.end_s[idx], af_features(win).astype(np.float32), af[idx], ok)


def _database(name: str) -> str:
    return name.split("/", 1)[0]


def assign_folds(series: Sequence[RRSeries], k: int = 5, seed: int = 0) -> dict[str, int]:
    """Record name -> fold in ``[0, k)`` (module docstring); seeded, by patient."""
    if int(k) < 2:
        raise AFError(f"k must be >= 2 folds, got {k}")
    rng = np.random.default_rng([int(seed), 17])
    names = sorted(s.name for s in series)
    with_af = sorted(s.name for s in series if s.af.any())
    # the AF patients by AF burden, largest first, so the big ones land in different folds
    burden = {s.name: float(s.af.sum()) for s in series}
    with_af.sort(key=lambda n: (-burden[n], n))
    fold: dict[str, int] = {}
    offset = int(rng.integers(k))
    for i, n in enumerate(with_af):
        fold[n] = (offset + i) % k
    for db in sorted({_database(n) for n in names}):
        rest = [n for n in names if _database(n) == db and n not in fold]
        for i, j in enumerate(rng.permutation(len(rest))):
            fold[rest[int(j)]] = (offset + len(with_af) + i) % k
    return fold


def _training_mask(rows: AFRows, sinus_step: int) -> np.ndarray:
    m = rows.trainable.copy()
    if _database(rows.series) in SINUS_DATABASES and sinus_step > 1:
        thin = np.zeros(m.size, dtype=bool)
        thin[::sinus_step] = True
        m &= thin
    return m


def fit_af(rows: Sequence[AFRows], *, seed: int = 0, n_trees: int = 150, sinus_step: int = 8,
           params: dict[str, Any] | None = None) -> AFDetector:
    """Gradient-boosted trees on the trainable rows, classes balanced (no threshold yet)."""
    xs, ys = [], []
    for r in rows:
        m = _training_mask(r, sinus_step)
        xs.append(r.x[m])
        ys.append(r.af[m])
    x = np.concatenate(xs) if xs else np.zeros((0, len(FEATURES)), np.float32)
    y = np.concatenate(ys).astype(np.int64) if ys else np.zeros(0, np.int64)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise AFError(f"training needs AF and non-AF rows, got {n_pos} AF of {y.size}")
    w = np.where(y == 1, 0.5 * y.size / n_pos, 0.5 * y.size / (y.size - n_pos))
    p = dict(AF_GBDT)
    p.update(params or {})
    trees = train_gbdt(x, y, ("nonaf", "af"), FEATURES, sample_weight=w, n_trees=n_trees, seed=seed, params=p)
    return AFDetector(trees)


def _spans(rows: AFRows, prob: np.ndarray, threshold: float, rule: AFAlertRule) -> list[AlertSpan]:
    return [AlertSpan("atrial_fibrillation", "physiological", "medium", "hr", round(on, 3), round(up, 3),
                      None if cl is None else round(cl, 3))
            for on, up, cl in af_alert_spans(rows.end_s, prob, threshold, rule)]


class AlertTable:
    """Per threshold and record, what the alert rule gives on held-out probabilities.

    Built once (one pass of the rule per threshold and record), then summed over any
    subset of the records: choosing a fold's threshold on the other folds costs no
    further pass.
    """

    def __init__(self, series: Sequence[RRSeries], rows: Sequence[AFRows], probs: Sequence[np.ndarray],
                 grid: Sequence[float] = THRESHOLD_GRID, rule: AFAlertRule | None = None) -> None:
        if not (len(series) == len(rows) == len(probs)):
            raise AFError(f"series, rows and probs must be equally long, got {len(series)}, {len(rows)}, {len(probs)}")
        self.series = list(series)
        self.grid = tuple(float(g) for g in grid)
        self.rule = rule or AFAlertRule()
        self.evals: list[list[EpisodeEvaluation]] = [
            [evaluate_episodes(s.name, s.truth, _spans(rw, p, thr, self.rule), np.zeros(0), np.zeros(0, str),
                               s.duration_s)
             for s, rw, p in zip(series, rows, probs)]
            for thr in self.grid]

    def figures(self, threshold: float, records: Sequence[int] | None = None) -> dict[str, Any]:
        """Pooled figures at a grid ``threshold`` over ``records`` (indices; default all)."""
        if float(threshold) not in self.grid:
            raise AFError(f"threshold must be one of the table's {self.grid}, got {threshold}")
        idx = range(len(self.series)) if records is None else list(records)
        evs = [self.evals[self.grid.index(float(threshold))][i] for i in idx]
        series = [self.series[i] for i in idx]
        pooled = pool_episodes(evs)
        af30, at = pooled["af_episodes_30s"], pooled["af_time"]
        sinus = [(e, s) for e, s in zip(evs, series) if _database(s.name) in SINUS_DATABASES]
        sinus_days = sum(s.duration_s for _, s in sinus) / 86400.0
        return {
            "threshold": float(threshold),
            "records": len(evs),
            "patient_days": round(sum(s.duration_s for s in series) / 86400.0, 3),
            "af_episodes_30s": f"{af30['alerted']}/{af30['total']}",
            "af_episodes_30s_fraction": af30["fraction"],
            "af_median_delay_s": af30["median_delay_s"],
            "af_time_covered": at["fraction"],
            "af_hours": round(at["af_s"] / 3600.0, 2),
            "false_af": pooled["alerts"]["false_af"],
            "false_af_per_patient_day": pooled["false_af_per_patient_day"],
            "false_af_per_patient_day_sinus_databases": (
                round(sum(e.false_af for e, _ in sinus) / sinus_days, 3) if sinus_days else None),
            "false_af_by_record": {e.name: e.false_af for e in evs if e.false_af},
        }

    def choose(self, max_false_per_day: float, records: Sequence[int] | None = None) -> float:
        """The lowest grid threshold whose false AF alerts per patient-day over ``records``,
        and those of every higher grid value, are at most ``max_false_per_day``.

        Raises
        ------
        AFError
            ``max_false_per_day`` is not > 0, or no grid value meets it.
        """
        if isinstance(max_false_per_day, bool) or not (isinstance(max_false_per_day, (int, float))
                                                       and max_false_per_day > 0):
            raise AFError(f"max_false_per_day must be > 0, got {max_false_per_day!r}")
        rates = [self.figures(t, records)["false_af_per_patient_day"] for t in self.grid]
        ok = [r is not None and r <= max_false_per_day for r in rates]
        for i in range(len(self.grid)):
            if all(ok[i:]):
                return self.grid[i]
        raise AFError(f"no threshold in {self.grid[0]}..{self.grid[-1]} gives <= {max_false_per_day} false AF "
                      f"alerts per patient-day on the held-out patients (rates {rates})")

    def choose_or_fewest(self, max_false_per_day: float,
                         records: Sequence[int] | None = None) -> tuple[float, bool]:
        """:meth:`choose`, or, when no grid value meets ``max_false_per_day``, the grid value
        with the fewest false AF alerts (the highest on ties); the flag says whether the
        target was met. Training keeps its folds' work and reports the miss instead of
        failing after it."""
        try:
            return self.choose(max_false_per_day, records), True
        except AFError as exc:
            if "max_false_per_day must be" in str(exc):
                raise
        rates = [self.figures(t, records)["false_af_per_patient_day"] for t in self.grid]
        best = min(range(len(self.grid)), key=lambda i: (math.inf if rates[i] is None else rates[i], -i))
        return self.grid[best], False


@dataclass(frozen=True)
class AFTrainResult:
    """What :func:`train_af` produced.

    ``detector`` is trained on every patient, with the threshold chosen on the
    out-of-fold predictions; ``folds`` has each fold's held-out figures at its own
    threshold; ``pooled`` the figures of all out-of-fold predictions at the shipped
    threshold; ``fold_of`` the split.
    """

    detector: AFDetector
    fold_of: dict[str, int]
    folds: list[dict[str, Any]]
    pooled: dict[str, Any]
    fold_thresholds: list[float]
    fold_detectors: list[AFDetector] = field(repr=False, default_factory=list)
    oof: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    seconds: float = 0.0


def train_af(series: Sequence[RRSeries], *, k: int = 5, seed: int = 0, max_false_per_day: float = 0.5,
             rule: AFAlertRule | None = None, n_trees: int = 150, step: int = 4, sinus_step: int = 8,
             progress: bool = True, rows: Sequence[AFRows] | None = None,
             fit: Callable[..., AFDetector] = fit_af) -> AFTrainResult:
    """Patient-wise cross-validation, the threshold, and the detector on every patient.

    Parameters
    ----------
    series
        Every record (patient) to use.
    k, seed
        Folds, and the seed of the split and the trees.
    max_false_per_day
        The stated false AF alert rate the threshold is chosen for (held-out patients).
    rule
        The alert rule (the ``atrial_fibrillation`` condition's defaults).
    n_trees, step, sinus_step
        Boosting rounds; intervals between rows; further thinning of sinus-database rows
        for training (every row is predicted).
    rows
        Precomputed :func:`af_rows` of ``series`` (same order), to skip the features.
    """
    t0 = time.monotonic()
    r = rule or AFAlertRule()

    def say(msg: str) -> None:
        if progress:
            print(f"[train af] {msg} ({time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)

    if rows is None:
        from tqdm.auto import tqdm

        rows = [af_rows(s, step) for s in tqdm(series, desc="AF features", unit="record", disable=not progress,
                                                  file=sys.stderr)]
    if len(rows) != len(series):
        raise AFError(f"rows must be one per series ({len(series)}), got {len(rows)}")
    fold_of = assign_folds(series, k, seed)
    oof = [np.full(len(rw.end_s), np.nan) for rw in rows]
    fold_detectors: list[AFDetector] = []
    for f in range(k):
        train = [rw for s, rw in zip(series, rows) if fold_of[s.name] != f]
        det = fit(train, seed=seed, n_trees=n_trees, sinus_step=sinus_step)
        fold_detectors.append(det)
        for i, s in enumerate(series):
            if fold_of[s.name] == f and len(rows[i].end_s):
                oof[i] = det.score_features(rows[i].x)
        say(f"fold {f + 1}/{k} trained on {len(train)} records")
    table = AlertTable(series, rows, oof, THRESHOLD_GRID, r)
    say(f"alert rule run at {len(THRESHOLD_GRID)} thresholds on the held-out predictions")
    folds: list[dict[str, Any]] = []
    fold_thresholds: list[float] = []
    for f in range(k):
        other = [i for i, s in enumerate(series) if fold_of[s.name] != f]
        mine = [i for i, s in enumerate(series) if fold_of[s.name] == f]
        thr_f, met_f = table.choose_or_fewest(max_false_per_day, other)
        fold_thresholds.append(thr_f)
        fig = table.figures(thr_f, mine)
        fig["fold"] = f
        fig["max_false_per_day_met_on_other_folds"] = met_f
        fig["records_in_fold"] = sorted(series[i].name for i in mine)
        folds.append(fig)
        say(f"fold {f + 1}/{k}: threshold {thr_f:.2f}, AF episodes {fig['af_episodes_30s']}, "
            f"covered {fig['af_time_covered']}, false/day {fig['false_af_per_patient_day']}")
    thr, met = table.choose_or_fewest(max_false_per_day)
    pooled = table.figures(thr)
    pooled["max_false_per_day"] = max_false_per_day
    pooled["max_false_per_day_met"] = met
    if not met:
        say(f"WARNING: no threshold gives <= {max_false_per_day} false AF alerts per patient-day held out; "
            f"using {thr:.2f}, the one with the fewest ({pooled['false_af_per_patient_day']} per day)")
    pooled["threshold_table"] = [{k_: v for k_, v in table.figures(t).items() if k_ != "false_af_by_record"}
                                 for t in table.grid]
    say(f"threshold {thr:.2f} for <= {max_false_per_day} false AF alerts per patient-day held out")
    final = fit(list(rows), seed=seed, n_trees=n_trees, sinus_step=sinus_step)
    detector = AFDetector(final.ensemble, thr, r)
    say("detector trained on every patient")
    return AFTrainResult(detector=detector, fold_of=fold_of, folds=folds, pooled=pooled,
                         fold_thresholds=fold_thresholds, fold_detectors=fold_detectors,
                         oof={s.name: o for s, o in zip(series, oof)}, seconds=time.monotonic() - t0)
