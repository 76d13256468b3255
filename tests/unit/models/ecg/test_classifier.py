"""Beat classifier: operating points from out-of-fold normal beats; the scorer batches two model calls."""

from __future__ import annotations

import numpy as np
import pytest

from models.beats import Beat
from models.ecg.beatfeatures import FEATURE_NAMES
from models.ecg.classifier import BEAT_CLASSES, BeatClassifier, class_weights, train_beat_classifier
from models.ecg.scorer import AE_FEATURE, BeatScorer
from models.ecg.features import Normaliser

NAMES = FEATURE_NAMES + (AE_FEATURE,)


def data(n_patients: int = 9, per: int = 400, seed: int = 0):
    """Beats whose class shows in two columns (prematurity, template correlation), noisily."""
    rng = np.random.default_rng(seed)
    x, y, g = [], [], []
    for p in range(n_patients):
        lab = rng.choice(["N", "S", "V", "X"], size=per, p=[0.8, 0.07, 0.1, 0.03])
        f = rng.normal(size=(per, len(NAMES)))
        f[:, 0] += np.where(np.isin(lab, ["S", "V"]), -2.0, 0.0)  # rr_prev_local: premature
        f[:, 13] += np.where(lab == "V", -3.0, 0.0)  # tpl_corr_qrs: unlike the template
        f[:, 6] += np.where(lab == "X", 3.0, 0.0)
        x.append(f)
        y.append(lab)
        g += [f"p{p}"] * per
    return np.concatenate(x), np.concatenate(y), np.array(g)


@pytest.fixture(scope="module")
def trained():
    x, y, g = data()
    clf, oof = train_beat_classifier(x, y, g, NAMES, ventricular_fpr=0.02, supraventricular_fpr=0.05,
                                     inner_folds=3, n_trees=60, seed=1)
    return clf, oof, x, y


def test_thresholds_hold_their_false_positive_rates_on_out_of_fold_normals(trained) -> None:
    clf, oof, x, y = trained
    n = y == "N"
    assert np.mean(oof[n, 2] > clf.ventricular_threshold) <= 0.02 + 1e-9
    assert np.mean(oof[n, 1] > clf.supraventricular_threshold) <= 0.05 + 1e-9
    out = clf.classify(x)
    assert out.probabilities.shape == (len(y), len(BEAT_CLASSES))
    np.testing.assert_allclose(out.probabilities.sum(axis=1), 1.0)
    assert np.mean(out.labels[y == "V"] == "V") > 0.8  # learnt (in-sample here)
    assert np.array_equal(out.flagged, out.score > 1.0)
    assert set(out.labels[out.p_ventricular > clf.ventricular_threshold]) == {"V"}


def test_round_trip_through_bundle_parts(trained) -> None:
    clf, _, x, _ = trained
    again = BeatClassifier.from_parts(clf.trees.to_bytes(), clf.settings())
    np.testing.assert_array_equal(again.classify(x[:100]).score, clf.classify(x[:100]).score)
    bad = dict(clf.settings(), features=["a"] * len(NAMES))
    with pytest.raises(ValueError, match="differ"):
        BeatClassifier.from_parts(clf.trees.to_bytes(), bad)
    with pytest.raises(ValueError, match="miss key"):
        BeatClassifier.from_parts(clf.trees.to_bytes(), {"features": list(NAMES)})


def test_class_weights_lift_rare_classes_within_a_cap() -> None:
    y = np.array([0] * 1000 + [2] * 10 + [1] * 500)
    w = class_weights(y)
    assert w[0] == 1.0 and w[-1] == 1.0  # S is not rare here: no weight
    assert w[1000] == 20.0  # capped


def test_bad_labels_and_too_few_patients_are_named() -> None:
    x, y, g = data(2, 50)
    with pytest.raises(ValueError, match="at least 3 patients"):
        train_beat_classifier(x, y, g, NAMES)
    with pytest.raises(ValueError, match="labels must be in"):
        train_beat_classifier(x, np.full(len(y), "Z"), g, NAMES)


class FixedAE:
    """An autoencoder stand-in: the score is the beat's peak-to-peak amplitude."""

    name, version, threshold = "fixed", "0", 0.5

    def __init__(self) -> None:
        self.calls = 0

    def score(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        return (x[:, :, 0].max(axis=1) - x[:, :, 0].min(axis=1)).astype(np.float32)


def beats(n: int, start: int = 0) -> list[Beat]:
    t = np.arange(80)
    w = np.exp(-0.5 * ((t - 30) / 1.5) ** 2).astype(np.float32)
    return [Beat(100 * (start + i), w, 0.8, 0.8, 0.8, 1.0) for i in range(n)]


def test_scorer_chains_each_patients_context_and_calls_each_model_once(trained) -> None:
    clf, *_ = trained
    ae = FixedAE()
    scorer = BeatScorer(ae, Normaliser(0.0, 1.0), 0.5, clf)
    s0 = scorer.initial_context()
    steps = [("a", s0, beats(5)), ("b", s0, beats(3)), ("a", s0, beats(6, 5)), ("b", s0, [])]
    out, states = scorer.score(steps)
    assert ae.calls == 1 and [len(o.score) for o in out] == [5, 3, 6, 0]
    # patient a's second step continued from its first: same as scoring all 11 beats at once
    whole, st_a = scorer.score([("a", s0, beats(11))])
    np.testing.assert_array_equal(np.concatenate([out[0].score, out[2].score]), whole[0].score)
    assert states["a"].to_bytes() == st_a["a"].to_bytes()
    assert out[0].threshold == 1.0 and out[0].p_ventricular is not None


def test_scorer_without_classifier_flags_on_the_autoencoder_threshold() -> None:
    scorer = BeatScorer(FixedAE(), Normaliser(0.0, 0.5), 0.5)
    out, _ = scorer.score([("a", scorer.initial_context(), beats(4))])
    assert out[0].threshold == 0.5 and out[0].flagged.all() and out[0].beat_class == ("?",) * 4
    assert out[0].p_ventricular is None


def test_only_the_calibrate_rows_set_the_thresholds() -> None:
    """Noise-augmented rows train the trees; the operating point stays that of the
    calibrate rows' normal beats (models.ecg.noisy_beats)."""
    x, y, g = data(seed=3)
    rng = np.random.default_rng(5)
    noisy = rng.random(len(y)) < 0.5
    x = x.copy()
    x[noisy & (y == "N"), 13] -= 2.5  # "noisy" normal beats look a little ventricular
    clf, oof = train_beat_classifier(x, y, g, NAMES, ventricular_fpr=0.02, supraventricular_fpr=0.05,
                                     inner_folds=3, n_trees=40, seed=1, calibrate=~noisy)
    clean_n = (y == "N") & ~noisy
    assert np.mean(oof[clean_n, 2] > clf.ventricular_threshold) == pytest.approx(0.02, abs=0.004)
    assert np.mean(oof[(y == "N") & noisy, 2] > clf.ventricular_threshold) > 0.03  # not what sets it
    with pytest.raises(ValueError, match="one flag per row"):
        train_beat_classifier(x, y, g, NAMES, n_trees=5, calibrate=~noisy[:-1])
