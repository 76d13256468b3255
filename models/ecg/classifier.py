"""Beat classifier stage: AAMI class probabilities per beat from its features, and the operating point.

The autoencoder says "unusual"; this says "ventricular" (or supraventricular, or not
a beat at all). A small gradient-boosted tree ensemble (:mod:`models.trees`) maps the
features of :mod:`models.ecg.beatfeatures` (RR context, QRS width, difference from the
patient's own dominant beat, the beat before it) plus the autoencoder's reconstruction
error to probabilities of six classes:

====  ================================================================================
N     normal and bundle-branch-block beats (AAMI N)
S     supraventricular ectopic beats (AAMI S)
V     ventricular ectopic beats (AAMI V)
F     fusion of ventricular and normal beats (AAMI F)
Q     paced and unclassifiable beats (AAMI Q)
X     not a beat: a detection with no reference beat within 150 ms (T wave, artefact)
====  ================================================================================

Each of the two ectopic classes has an operating threshold, set from a stated
false-positive rate on normal beats of patients the model did not see (out-of-fold
predictions of patient-wise folds inside the training set), never from the training
patients' own scores. Downstream everything uses:

- ``score = max(P(V) / t_V, P(S) / t_S)``: above 1 the beat is called ventricular or
  supraventricular ectopic, i.e. ``flagged`` (AUROCs, the anomalous-beats and
  frequent-ectopy alerts). Measured on out-of-fold predictions this ranks V against N
  better than ``P(S) + P(V) + P(F)`` (AUROC 0.990 against 0.984 on DS1 patients) at a
  small cost for S (0.950 against 0.954);
- ``p_ventricular = P(V)``: a beat with ``P(V) > t_V`` is class ``V``, which can start a
  ventricular run; inside a run the next beats need only ``p_run = P(V) + P(F) + P(X)``,
  because the wide, bizarre beats of a run are the ones a classifier most often mistakes
  for artefact (see :mod:`streaming.conditions`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from models.autoencoder import validate_fpr
from models.trees import TreeEnsemble, train_gbdt

__all__ = [
    "BEAT_CLASSES",
    "BeatClassification",
    "BeatClassifier",
    "class_weights",
    "train_beat_classifier",
]

BEAT_CLASSES: tuple[str, ...] = ("N", "S", "V", "F", "Q", "X")
_N, _S, _V, _F, _Q, _X = range(6)
# Rare classes are up-weighted towards an equal share, but by at most this factor, so
# a handful of fusion beats cannot dominate the loss.
_MAX_WEIGHT = 20.0


@dataclass(frozen=True)
class BeatClassification:
    """Classifier output for a batch of beats.

    Attributes
    ----------
    probabilities : np.ndarray
        float64 [n, 6] over :data:`BEAT_CLASSES`.
    score : np.ndarray
        float64 [n] ``max(P(V) / t_V, P(S) / t_S)``.
    p_ventricular : np.ndarray
        float64 [n] ``P(V)``.
    p_run : np.ndarray
        float64 [n] ``P(V) + P(F) + P(X)``: ventricular evidence for beats inside a run.
    flagged : np.ndarray
        bool [n] ``score > 1``.
    labels : np.ndarray
        str [n] ``V`` when ``P(V) > t_V``, else ``S`` when ``P(S) > t_S``, else the
        most probable of the other classes.
    """

    probabilities: np.ndarray
    score: np.ndarray
    p_ventricular: np.ndarray
    p_run: np.ndarray
    flagged: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True, eq=False)
class BeatClassifier:
    """Tree ensemble plus its operating point.

    Attributes
    ----------
    trees : TreeEnsemble
        Trained on :data:`models.ecg.beatfeatures.FEATURE_NAMES` + the autoencoder column.
    ventricular_threshold, supraventricular_threshold : float
        ``t_V`` and ``t_S``: a beat is V (S) above it.
    ventricular_fpr, supraventricular_fpr : float
        Fraction of held-out (out-of-fold) normal beats above each threshold.
    """

    trees: TreeEnsemble
    ventricular_threshold: float
    ventricular_fpr: float
    supraventricular_threshold: float
    supraventricular_fpr: float

    def __post_init__(self) -> None:
        if self.trees.classes != BEAT_CLASSES:
            raise ValueError(f"beat classifier classes must be {BEAT_CLASSES}, got {self.trees.classes}")
        for name in ("ventricular_threshold", "supraventricular_threshold"):
            v = getattr(self, name)
            if not 0.0 < v <= 1.0:
                raise ValueError(f"{name} must be a probability in (0, 1], got {v}")

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.trees.feature_names

    def classify(self, features: np.ndarray) -> BeatClassification:
        """Classify beats from their feature rows float [n, n_features]."""
        p = self.trees.predict_proba(features)
        pv, ps = p[:, _V], p[:, _S]
        score = np.maximum(pv / self.ventricular_threshold, ps / self.supraventricular_threshold)
        rest = p.copy()
        rest[:, [_S, _V]] = -1.0  # below any threshold: the most probable other class
        labels = np.asarray(BEAT_CLASSES)[rest.argmax(axis=1)] if len(p) else np.zeros(0, "<U1")
        labels = np.where(ps > self.supraventricular_threshold, "S", labels)
        labels = np.where(pv > self.ventricular_threshold, "V", labels)
        return BeatClassification(probabilities=p, score=score, p_ventricular=pv.copy(),
                                  p_run=pv + p[:, _F] + p[:, _X], flagged=score > 1.0, labels=labels)

    # -- persistence (an extra file + a section of an ECG bundle) --------------------
    def settings(self) -> dict[str, Any]:
        """The JSON section stored beside the tree file in a bundle."""
        return {"classes": list(BEAT_CLASSES), "features": list(self.feature_names),
                "ventricular_threshold": self.ventricular_threshold, "ventricular_fpr": self.ventricular_fpr,
                "supraventricular_threshold": self.supraventricular_threshold,
                "supraventricular_fpr": self.supraventricular_fpr}

    @classmethod
    def from_parts(cls, tree_bytes: bytes, settings: Mapping[str, Any]) -> BeatClassifier:
        """Inverse of (``trees.to_bytes()``, :meth:`settings`); ValueError names a bad key."""
        trees = TreeEnsemble.from_bytes(tree_bytes)
        try:
            if list(settings["features"]) != list(trees.feature_names):
                raise ValueError(f"beat classifier features in the bundle {list(settings['features'])} "
                                 f"differ from the tree file's {list(trees.feature_names)}")
            return cls(trees, float(settings["ventricular_threshold"]), float(settings["ventricular_fpr"]),
                       float(settings["supraventricular_threshold"]), float(settings["supraventricular_fpr"]))
        except KeyError as exc:
            raise ValueError(f"beat classifier settings miss key {exc.args[0]!r}") from None

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"BeatClassifier({json.dumps(self.settings())[:120]}...)"


def class_weights(labels: np.ndarray) -> np.ndarray:
    """Per-row weights: rare classes up-weighted towards an equal share, capped at 20x."""
    y = np.asarray(labels)
    w = np.ones(y.shape[0], np.float64)
    share = y.shape[0] / len(BEAT_CLASSES)
    for c in (_S, _V, _F):
        m = y == c
        if m.any():
            w[m] = float(np.clip(share / m.sum(), 1.0, _MAX_WEIGHT))
    return w


def _quantile(x: np.ndarray, fpr: float) -> float:
    if x.size == 0:
        raise ValueError("need held-out normal beats to set a threshold, got 0")
    return float(np.quantile(x, 1.0 - fpr, method="higher"))


def train_beat_classifier(
    features: np.ndarray,
    labels: Sequence[str] | np.ndarray,
    groups: Sequence[str] | np.ndarray,
    feature_names: Sequence[str],
    *,
    ventricular_fpr: float = 0.008,
    supraventricular_fpr: float = 0.008,
    inner_folds: int = 3,
    n_trees: int = 300,
    seed: int = 0,
    progress: Any = None,
    calibrate: np.ndarray | None = None,
) -> tuple[BeatClassifier, np.ndarray]:
    """Train the classifier; thresholds from out-of-fold predictions over patient folds.

    Parameters
    ----------
    features : np.ndarray
        float [n, n_features] rows of every beat of the training patients.
    labels : array of str
        Class per row (:data:`BEAT_CLASSES`).
    groups : array of str
        Patient per row; inner folds never split a patient.
    feature_names : sequence of str
    ventricular_fpr, supraventricular_fpr : float
        Fractions of out-of-fold normal beats allowed above each class's threshold
        (together at most their sum of normal beats is flagged).
    inner_folds : int
        Patient folds used only to get honest out-of-fold scores for the thresholds.
    n_trees, seed : int
    progress : callable, optional
        Called with a message before each of the ``inner_folds + 1`` trainings.
    calibrate : bool array, optional
        Rows whose normal beats set the thresholds (default: all). Noise-augmented
        copies of the records (:mod:`models.ecg.noisy_beats`) train the trees but are
        left out here, so the operating point stays that of clean normal beats.

    Returns
    -------
    classifier, oof_probabilities
        The classifier trained on every row, and the out-of-fold probabilities [n, 6].
    """
    validate_fpr(ventricular_fpr)
    validate_fpr(supraventricular_fpr)
    x = np.asarray(features, np.float64)
    lab = np.asarray(labels).astype(str)
    unknown = sorted(set(lab.tolist()) - set(BEAT_CLASSES))
    if unknown:
        raise ValueError(f"labels must be in {BEAT_CLASSES}, got {unknown}")
    y = np.array([BEAT_CLASSES.index(c) for c in lab], np.int64)
    g = np.asarray(groups).astype(str)
    patients = np.unique(g)
    if patients.size < inner_folds:
        raise ValueError(f"need at least {inner_folds} patients for {inner_folds} inner folds, got {patients.size}")
    fold_of = {p: i % inner_folds for i, p in enumerate(np.random.default_rng([seed, 17]).permutation(patients))}
    fold = np.array([fold_of[p] for p in g])
    oof = np.zeros((x.shape[0], len(BEAT_CLASSES)))
    for f in range(inner_folds):
        if progress:
            progress(f"beat classifier: inner fold {f + 1}/{inner_folds}")
        tr, te = fold != f, fold == f
        model = train_gbdt(x[tr], y[tr], BEAT_CLASSES, feature_names, sample_weight=class_weights(y[tr]),
                           n_trees=n_trees, seed=seed)
        oof[te] = model.predict_proba(x[te])
    if progress:
        progress("beat classifier: final model on all training patients")
    final = train_gbdt(x, y, BEAT_CLASSES, feature_names, sample_weight=class_weights(y), n_trees=n_trees, seed=seed)
    n_oof = y == _N
    if calibrate is not None:
        cal = np.asarray(calibrate, dtype=bool)
        if cal.shape != y.shape:
            raise ValueError(f"calibrate must be one flag per row ({y.size}), got shape {cal.shape}")
        n_oof &= cal
    clf = BeatClassifier(final, _quantile(oof[n_oof, _V], ventricular_fpr), float(ventricular_fpr),
                         _quantile(oof[n_oof, _S], supraventricular_fpr), float(supraventricular_fpr))
    return clf, oof
