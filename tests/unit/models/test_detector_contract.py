"""One contract suite over every beat-detector runtime: Keras, TFLite float32, TFLite int8."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from models.detector import (
    BEAT_LENGTH,
    N_CHANNELS,
    Detector,
    LSTMAutoencoder,
    Normaliser,
    NotFittedError,
    Prediction,
    make_model_input,
    reconstruction_scores,
)
from models.synthetic import Event, synth_ecg
from models.train import beats_from_signal

TINY = {"enc_units": 8, "latent_units": 4, "dec_units": 8}


def _patient(seed: int, duration_s: float = 40.0, pvc: bool = False) -> Any:
    events = [Event("pvc", float(t)) for t in np.arange(4.0, duration_s - 3.0, 5.0)] if pvc else []
    rec = synth_ecg(duration_s, sample_rate_hz=250, hr_bpm=70, events=events, seed=seed)
    return beats_from_signal(f"p{seed}", rec.signal_mv, rec.sample_rate_hz, rec.beat_samples, rec.beat_labels)


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    train = [_patient(s) for s in range(4)]
    w = np.concatenate([p.waveforms for p in train])
    r = np.concatenate([p.rr_context for p in train])
    norm = Normaliser.fit(w)
    val = _patient(50)
    test = _patient(60, duration_s=60.0, pvc=True)
    return {
        "norm": norm,
        "x_train": make_model_input(w, r, norm),
        "x_val": make_model_input(val.waveforms, val.rr_context, norm),
        "x_test": make_model_input(test.waveforms, test.rr_context, norm),
        "labels_test": test.labels,
    }


@pytest.fixture(scope="module")
def keras_det(data: dict[str, Any]) -> LSTMAutoencoder:
    det = LSTMAutoencoder(**TINY)
    det.fit(data["x_train"], data["x_val"], epochs=3, batch_size=64, seed=1, progress=False)
    return det


@pytest.fixture(scope="module")
def tflite_files(keras_det: LSTMAutoencoder, data: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from models.export import export_tflite

    d = tmp_path_factory.mktemp("tfl")
    export_tflite(keras_det, d / "f32.tflite", int8=False)
    export_tflite(keras_det, d / "int8.tflite", representative=data["x_train"], int8=True)
    return {"tflite": d / "f32.tflite", "tflite-int8": d / "int8.tflite"}


RUNTIMES = ["keras", "tflite", "tflite-int8"]


@pytest.fixture(params=RUNTIMES)
def make_detector(request: pytest.FixtureRequest, keras_det: LSTMAutoencoder, tflite_files: dict[str, Path]) -> Callable[[], Detector]:
    """Factory: a fresh detector of one runtime (no threshold set)."""
    from models.tflite_runtime import TFLiteDetector

    def make() -> Detector:
        if request.param == "keras":
            det = LSTMAutoencoder(**TINY)
            det._set_model(keras_det.keras_model)  # same weights, fresh threshold state
            return det
        return TFLiteDetector(tflite_files[request.param], rr_weight=keras_det.rr_weight)

    return make


def test_is_a_detector(make_detector: Callable[[], Detector]) -> None:
    assert isinstance(make_detector(), Detector)


def test_score_shapes_and_dtype(make_detector: Callable[[], Detector], data: dict[str, Any]) -> None:
    det = make_detector()
    for n in (0, 1, 3):
        s = det.score(data["x_val"][:n])
        assert s.shape == (n,) and s.dtype == np.float32
    assert np.all(np.isfinite(det.score(data["x_val"]))) and np.all(det.score(data["x_val"]) >= 0)


def test_scores_do_not_depend_on_call_history(make_detector: Callable[[], Detector], data: dict[str, Any]) -> None:
    # A recurrent runtime that leaked LSTM state between beats would fail this.
    det = make_detector()
    x = data["x_test"][:6]
    one_by_one = np.concatenate([det.score(x[i : i + 1]) for i in range(len(x))])
    reversed_ = det.score(x[::-1])[::-1]
    np.testing.assert_allclose(one_by_one, det.score(x), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(reversed_, one_by_one, rtol=1e-6, atol=1e-8)


def test_bad_input_shape_names_it(make_detector: Callable[[], Detector]) -> None:
    with pytest.raises(ValueError, match=r"\(2, 80, 2\)"):
        make_detector().score(np.zeros((2, BEAT_LENGTH, 2), np.float32))


def test_predict_without_threshold_raises(make_detector: Callable[[], Detector], data: dict[str, Any]) -> None:
    with pytest.raises(NotFittedError):
        make_detector().predict(data["x_val"][:2])


@pytest.mark.parametrize("fpr", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_infer_threshold_validates_fpr(make_detector: Callable[[], Detector], data: dict[str, Any], fpr: float) -> None:
    with pytest.raises(ValueError, match="fpr must be in"):
        make_detector().infer_threshold(data["x_val"], fpr)


def test_threshold_is_heldout_quantile(make_detector: Callable[[], Detector], data: dict[str, Any]) -> None:
    det = make_detector()
    thr = det.infer_threshold(data["x_val"], fpr=0.05)
    s = det.score(data["x_val"])
    assert det.threshold == thr
    assert np.mean(s > thr) <= 0.05 + 1e-9
    assert np.mean(s >= thr) >= 0.05 - 1.0 / len(s)
    p = det.predict(data["x_val"])
    assert isinstance(p, Prediction) and p.flagged.dtype == bool and p.threshold == thr
    np.testing.assert_array_equal(p.flagged, p.scores > thr)


def test_injected_pvcs_outscore_normal_beats(make_detector: Callable[[], Detector], data: dict[str, Any]) -> None:
    from models.evaluation import auroc

    s = make_detector().score(data["x_test"])
    lab = data["labels_test"]
    assert (lab == "V").sum() >= 5
    assert auroc(s[lab == "V"], s[lab == "N"]) > 0.9


def test_not_fitted_keras() -> None:
    det = LSTMAutoencoder(**TINY)
    with pytest.raises(NotFittedError):
        det.score(np.zeros((1, BEAT_LENGTH, N_CHANNELS), np.float32))
    with pytest.raises(NotFittedError):
        det.infer_threshold(np.zeros((1, BEAT_LENGTH, N_CHANNELS), np.float32), 0.01)


def test_save_load_identical_scores(keras_det: LSTMAutoencoder, data: dict[str, Any], tmp_path: Path) -> None:
    keras_det.save(tmp_path / "m.keras")
    loaded = LSTMAutoencoder.load(tmp_path / "m.keras", rr_weight=keras_det.rr_weight)
    np.testing.assert_array_equal(loaded.score(data["x_test"]), keras_det.score(data["x_test"]))
    assert (loaded.enc_units, loaded.latent_units, loaded.dec_units) == (8, 4, 8)


def test_tflite_reload_identical_scores(tflite_files: dict[str, Path], data: dict[str, Any]) -> None:
    from models.tflite_runtime import TFLiteDetector

    for path in tflite_files.values():
        a = TFLiteDetector(path).score(data["x_test"])
        b = TFLiteDetector(path).score(data["x_test"])
        np.testing.assert_array_equal(a, b)


def test_seeded_training_reproduces(data: dict[str, Any]) -> None:
    x_tr, x_va = data["x_train"][:256], data["x_val"][:64]
    runs = []
    for seed in (7, 7, 8):
        det = LSTMAutoencoder(enc_units=4, latent_units=2, dec_units=4)
        det.fit(x_tr, x_va, epochs=1, batch_size=64, seed=seed, progress=False)
        runs.append(det.score(x_va))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_keras_score_matches_numpy_formula(keras_det: LSTMAutoencoder, data: dict[str, Any]) -> None:
    x = data["x_test"][:50]
    ref = reconstruction_scores(x, keras_det.reconstruct(x), keras_det.rr_weight)
    np.testing.assert_allclose(keras_det.score(x), ref, rtol=1e-5, atol=1e-7)


def test_normaliser_fit_is_robust_and_validates() -> None:
    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, BEAT_LENGTH)
    w = 1.5 * np.exp(-((t - 0.375) / 0.03) ** 2)[None, :] + 0.01 * rng.standard_normal((100, BEAT_LENGTH))
    n1 = Normaliser.fit(w)
    w2 = w.copy()
    w2[:5] *= 20.0  # a few artefact beats barely move median-based statistics
    n2 = Normaliser.fit(w2)
    assert abs(n1.scale - 1.5) < 0.1 and abs(n2.scale - n1.scale) / n1.scale < 0.02
    with pytest.raises(ValueError, match="flat"):
        Normaliser.fit(np.zeros((3, BEAT_LENGTH)))
    with pytest.raises(ValueError, match="scale must be"):
        Normaliser(0.0, 0.0)


def test_make_model_input_layout() -> None:
    w = np.ones((2, BEAT_LENGTH), np.float32) * 3.0
    rr = np.array([[1.0, 1.0], [0.5, 1.5]], np.float32)
    x = make_model_input(w, rr, Normaliser(center=1.0, scale=2.0))
    assert x.shape == (2, BEAT_LENGTH, N_CHANNELS) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, :, 0], 1.0)
    np.testing.assert_allclose(x[0, :, 1:], 0.0)
    np.testing.assert_allclose(x[1, :, 1], np.log(0.5), rtol=1e-6)
    with pytest.raises(ValueError, match=r"rr_context must have shape \[2, 2\]"):
        make_model_input(w, rr[:1], Normaliser(0.0, 1.0))


def test_tflite_runtime_imports_no_tensorflow() -> None:
    import subprocess

    code = "import sys, models.tflite_runtime, models.bundle; assert 'tensorflow' not in sys.modules and 'tf_keras' not in sys.modules"
    r = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[3], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
