"""One contract suite over every detector kind (ECG beats, heart-rate windows) and every runtime (Keras, TFLite float32, TFLite int8).

Each kind trains one tiny model and writes it as a bundle (``tiny_case`` in
``conftest.py``), so every runtime's file comes from the real export and bundle writer;
every test runs against a fresh detector of each runtime loaded from that bundle.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.autoencoder import Detector, LSTMAutoencoder, NotFittedError, Prediction, threshold_from_scores
from models.bundle import load_bundle
from models.evaluation import auroc

KINDS = ["ecg", "hr"]
RUNTIMES = ["keras", "tflite", "tflite-int8"]
# Anomalies must outscore clean inputs by this AUROC on every runtime. The int8 model of
# a 3-6 epoch 8-unit model still ranks PVCs and rhythm episodes far above normal inputs.
MIN_AUROC = {"ecg": 0.9, "hr": 0.95}


@pytest.fixture(scope="module", params=KINDS)
def case(request: pytest.FixtureRequest, tiny_case: Callable[[str], Any]) -> Any:
    return tiny_case(request.param)


@pytest.fixture(params=RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    return str(request.param)


_KERAS_LOADED: dict[Path, LSTMAutoencoder] = {}


@pytest.fixture
def make_detector(case: Any, runtime: str) -> Callable[[], Detector]:
    """Factory: a fresh detector of one kind and runtime, loaded from the bundle, no threshold set."""

    def make() -> Detector:
        if runtime == "keras":
            # Loading a .keras file takes seconds: load once per bundle, then wrap its
            # model in a fresh detector (fresh threshold and compiled score).
            if case.bundle not in _KERAS_LOADED:
                _KERAS_LOADED[case.bundle] = load_bundle(case.bundle, runtime="keras", kind=case.kind).detector  # type: ignore[arg-type,assignment]
            loaded = _KERAS_LOADED[case.bundle]
            det = LSTMAutoencoder(*loaded.input_shape, loaded.scoring, enc_units=loaded.enc_units,
                                  latent_units=loaded.latent_units, dec_units=loaded.dec_units)
            det._set_model(loaded.keras_model)
            return det
        det = load_bundle(case.bundle, runtime=runtime, kind=case.kind).detector  # type: ignore[arg-type]
        det.threshold = None
        return det

    return make


def _x(case: Any) -> np.ndarray:
    return np.concatenate([case.x_clean[:20], case.x_anomalous[:5]])


def test_is_a_detector(make_detector: Callable[[], Detector]) -> None:
    assert isinstance(make_detector(), Detector)


def test_score_shapes_and_dtype(make_detector: Callable[[], Detector], case: Any) -> None:
    det = make_detector()
    for n in (0, 1, 3):
        s = det.score(case.x_val[:n])
        assert s.shape == (n,) and s.dtype == np.float32
    s = det.score(case.x_val)
    assert np.all(np.isfinite(s)) and np.all(s >= 0)


def test_scores_do_not_depend_on_call_history(make_detector: Callable[[], Detector], case: Any) -> None:
    # A recurrent runtime that leaked LSTM state between inputs would fail this.
    det = make_detector()
    x = _x(case)[-6:]
    one_by_one = np.concatenate([det.score(x[i : i + 1]) for i in range(len(x))])
    reversed_ = det.score(x[::-1])[::-1]
    np.testing.assert_allclose(one_by_one, det.score(x), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(reversed_, one_by_one, rtol=1e-6, atol=1e-8)


def test_scores_do_not_depend_on_the_batch_they_come_in(make_detector: Callable[[], Detector], case: Any) -> None:
    # The Keras runtime pads a batch to a rounded size (models.autoencoder.padded_batch)
    # and the TFLite runtime to its fixed batch: the padding must never reach a score.
    det = make_detector()
    x = _x(case)
    full = det.score(x[:37])
    for n in (1, 9, 11, 17, 33, 37):
        np.testing.assert_allclose(det.score(x[:n]), full[:n], rtol=1e-5, atol=1e-7)


def test_bad_input_shape_names_it(make_detector: Callable[[], Detector], case: Any) -> None:
    t, c = case.x_val.shape[1:]
    with pytest.raises(ValueError, match=rf"\(2, {t}, {c - 1}\)"):
        make_detector().score(np.zeros((2, t, c - 1), np.float32))
    with pytest.raises(ValueError, match=rf"\[n, {t}, {c}\]"):
        make_detector().score(np.zeros((2, t + 1, c), np.float32))


def test_predict_without_threshold_raises(make_detector: Callable[[], Detector], case: Any) -> None:
    with pytest.raises(NotFittedError):
        make_detector().predict(case.x_val[:2])


@pytest.mark.parametrize("fpr", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_infer_threshold_validates_fpr(make_detector: Callable[[], Detector], case: Any, fpr: float) -> None:
    with pytest.raises(ValueError, match="fpr must be in"):
        make_detector().infer_threshold(case.x_val, fpr)


def test_threshold_is_heldout_quantile(make_detector: Callable[[], Detector], case: Any) -> None:
    det = make_detector()
    thr = det.infer_threshold(case.x_cal, fpr=case.fpr)
    s = det.score(case.x_cal)
    assert det.threshold == thr
    assert np.mean(s > thr) <= case.fpr + 1e-9
    assert np.mean(s >= thr) >= case.fpr - 1.0 / len(s)
    p = det.predict(case.x_cal)
    assert isinstance(p, Prediction) and p.flagged.dtype == bool and p.threshold == thr
    np.testing.assert_array_equal(p.flagged, p.scores > thr)


def test_bundle_gives_the_runtimes_own_threshold(case: Any, runtime: str) -> None:
    b = load_bundle(case.bundle, runtime=runtime)  # type: ignore[arg-type]
    own = threshold_from_scores(b.detector.score(case.x_cal), case.fpr)
    assert b.threshold == b.detector.threshold == own == b.meta.threshold(runtime)


def test_injected_anomalies_outscore_clean_inputs(make_detector: Callable[[], Detector], case: Any) -> None:
    det = make_detector()
    clean, anomalous = det.score(case.x_clean), det.score(case.x_anomalous)
    assert len(anomalous) >= 5
    assert auroc(anomalous, clean) > MIN_AUROC[case.kind]


def test_save_load_gives_identical_scores(case: Any, runtime: str) -> None:
    x = _x(case)
    a = load_bundle(case.bundle, runtime=runtime).detector.score(x)  # type: ignore[arg-type]
    b = load_bundle(case.bundle, runtime=runtime).detector.score(x)  # type: ignore[arg-type]
    np.testing.assert_array_equal(a, b)
    if runtime == "keras":  # the saved model scores exactly as the trained one
        np.testing.assert_array_equal(a, case.detector.score(x))


def test_not_fitted_keras(case: Any) -> None:
    det = case.make_untrained()
    x = case.x_val[:1]
    for call in (lambda: det.score(x), lambda: det.predict(x), lambda: det.infer_threshold(x, 0.01)):
        with pytest.raises(NotFittedError):
            call()


def test_seeded_training_reproduces(case: Any) -> None:
    x_tr, x_va = case.x_train[:256], case.x_val[:64]
    runs = []
    for seed in (7, 7, 8):
        det = case.make_untrained(enc_units=4, latent_units=2, dec_units=4)
        det.fit(x_tr, x_va, epochs=1, batch_size=64, seed=seed, progress=False)
        runs.append(det.score(x_va))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_keras_score_matches_the_numpy_score(case: Any) -> None:
    # The Keras graph (ECG: score in-graph; HR: numpy on the reconstruction) and the
    # TFLite runtime (numpy) use the same score object.
    x = _x(case)
    ref = case.detector.scoring.numpy(x, case.detector.reconstruct(x))
    np.testing.assert_allclose(case.detector.score(x), ref, rtol=1e-5, atol=1e-7)


def test_tflite_runtime_imports_no_tensorflow() -> None:
    import subprocess

    code = "import sys, models.tflite_runtime, models.bundle; assert 'tensorflow' not in sys.modules and 'tf_keras' not in sys.modules"
    r = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[3], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
