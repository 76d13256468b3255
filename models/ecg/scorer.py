"""Beat scoring stage: the autoencoder and the beat classifier over a batch of beats from many patients.

:class:`BeatScorer` is what the ECG stream core calls once per micro-batch: each
patient's beats get their context features in stream order
(:mod:`models.ecg.beatfeatures`), then **one** autoencoder call and **one** classifier
call cover every beat of every patient in the batch. Without a classifier (bundles
trained before it existed) the autoencoder score alone flags beats, as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from models.autoencoder import Detector
from models.beats import Beat, beat_features
from models.ecg.beatfeatures import FEATURE_NAMES, BeatContext, BeatContextState
from models.ecg.classifier import BEAT_CLASSES, BeatClassifier
from models.ecg.features import Normaliser, make_model_input

if TYPE_CHECKING:  # pragma: no cover
    from models.bundle import Bundle

__all__ = ["AE_FEATURE", "CLASSIFIER_FILE", "BeatScores", "BeatScorer", "classifier_features", "load_scorer"]

#: The autoencoder's column in the classifier input: log reconstruction error.
AE_FEATURE = "ae_log_error"
_AE_FLOOR = 1e-6


def classifier_features(context_features: np.ndarray, ae_scores: np.ndarray) -> np.ndarray:
    """Classifier input rows: the context features and ``log(ae_score)``."""
    ae = np.log(np.maximum(np.asarray(ae_scores, np.float64), _AE_FLOOR))
    return np.column_stack([np.asarray(context_features, np.float64), ae])


@dataclass(frozen=True, eq=False)
class BeatScores:
    """Scores of one step's beats (aligned with its beats).

    Attributes
    ----------
    ae_score : np.ndarray
        float64 autoencoder reconstruction error (higher = more unusual).
    score : np.ndarray
        float64 the beat's score: the classifier's (above 1 = ectopic), else ``ae_score``.
    threshold : float
        Operating threshold of ``score`` (1 with a classifier).
    flagged : np.ndarray
        bool ``score > threshold``.
    beat_class : tuple[str, ...]
        The classifier's class (:class:`models.ecg.classifier.BeatClassification`);
        ``"?"`` without a classifier.
    p_ventricular, p_run : np.ndarray or None
        Ventricular evidence of the beat alone, and inside a run (None without a classifier).
    """

    ae_score: np.ndarray
    score: np.ndarray
    threshold: float
    flagged: np.ndarray
    beat_class: tuple[str, ...]
    p_ventricular: np.ndarray | None
    p_run: np.ndarray | None


class BeatScorer:
    """Autoencoder + beat context + classifier, batched across patients.

    Parameters
    ----------
    detector : Detector
        The ECG autoencoder (any runtime).
    normaliser : Normaliser
        The bundle's amplitude normaliser for the autoencoder input.
    ae_threshold : float
        The autoencoder's own threshold for its runtime (used to flag when there is no
        classifier).
    classifier : BeatClassifier, optional
    """

    def __init__(self, detector: Detector, normaliser: Normaliser, ae_threshold: float,
                 classifier: BeatClassifier | None = None) -> None:
        self.detector = detector
        self.normaliser = normaliser
        self.ae_threshold = float(ae_threshold)
        self.classifier = classifier
        self.context = BeatContext()
        if classifier is not None:
            want = FEATURE_NAMES + (AE_FEATURE,)
            if classifier.feature_names != want:
                raise ValueError(f"beat classifier expects features {classifier.feature_names}, "
                                 f"this code computes {want}")

    def initial_context(self) -> BeatContextState:
        return self.context.initial_state()

    def score(self, steps: Sequence[tuple[str, BeatContextState, Sequence[Beat]]]
              ) -> tuple[list[BeatScores], dict[str, BeatContextState]]:
        """Score several steps (one patient's chunk each) with one autoencoder and one classifier call.

        Parameters
        ----------
        steps
            ``(patient id, context state, beats)`` in stream order. A patient's first
            step brings its state; its later steps continue from the state the earlier
            ones left (their own state entry is ignored).

        Returns
        -------
        scores, states
            :class:`BeatScores` per step, and each patient's context state after its last step.
        """
        ctx_rows, inputs = [], []
        states: dict[str, BeatContextState] = {}
        for pid, state, beats in steps:
            rows, states[pid] = self.context.observe(states.get(pid, state), beats)
            ctx_rows.append(rows)
            if beats:
                wf, rr = beat_features(beats)
                inputs.append(make_model_input(wf, rr, self.normaliser))
        n_all = sum(len(b) for _, _, b in steps)
        ae = (np.asarray(self.detector.score(np.concatenate(inputs)), np.float64) if inputs
              else np.zeros(0))
        if self.classifier is not None and n_all:
            cls = self.classifier.classify(classifier_features(np.concatenate(ctx_rows), ae))
        out, start = [], 0
        for _pid, _state, beats in steps:
            n = len(beats)
            sl = slice(start, start + n)
            start += n
            a = ae[sl]
            if self.classifier is None or n == 0:
                out.append(BeatScores(a, a, self.ae_threshold, a > self.ae_threshold, ("?",) * n, None, None))
                continue
            out.append(BeatScores(a, cls.score[sl], 1.0, cls.flagged[sl], tuple(str(x) for x in cls.labels[sl]),
                                  cls.p_ventricular[sl], cls.p_run[sl]))
        return out, states

    @property
    def classes(self) -> tuple[str, ...]:
        return BEAT_CLASSES


#: Where an ECG bundle keeps its beat classifier: ``extra["beat_classifier"]`` holds the
#: settings and names this file.
CLASSIFIER_FILE = "beat_classifier.npz"


def load_scorer(bundle: "Bundle") -> BeatScorer:
    """The :class:`BeatScorer` of a loaded ECG bundle (with its beat classifier if it has one).

    Raises
    ------
    ValueError
        If the bundle is not an ECG bundle, or its classifier section is malformed.
    """
    from models.ecg.features import ECGInput

    inp = bundle.meta.input
    if not isinstance(inp, ECGInput):
        raise ValueError(f"{bundle.path} is a {bundle.meta.kind!r} bundle, beat scoring needs an 'ecg' bundle")
    section = bundle.meta.extra.get("beat_classifier")
    classifier = None
    if section is not None:
        name = str(section.get("file", CLASSIFIER_FILE))
        classifier = BeatClassifier.from_parts((bundle.path / name).read_bytes(), section)
    return BeatScorer(bundle.detector, inp.normaliser, bundle.threshold, classifier)
