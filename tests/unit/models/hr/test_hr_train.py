"""Heart-rate training stage: the trained detector on rhythm episodes, the measurement rule, the CLI, the bundle."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from models.autoencoder import LSTMAutoencoder
from models.bundle import load_bundle, read_meta
from models.evaluation import auroc
from models.hr.train import evaluate_synthetic, k_of_n, main, score_rr, synthetic_normal_rr


def test_k_of_n_hand_computed():
    f = [1, 0, 1, 1, 0, 0, 1, 1, 1]
    assert k_of_n(f, 2, 3).tolist() == [False, False, True, True, True, False, False, True, True]
    assert k_of_n(f, 1, 1).tolist() == [bool(v) for v in f]
    with pytest.raises(ValueError, match="k=4"):
        k_of_n(f, 4, 3)


@pytest.fixture(scope="module")
def trained(tiny_case: Callable[[str], Any]) -> tuple[Any, LSTMAutoencoder]:
    """The tiny heart-rate case and a Keras detector at its bundle's threshold (fpr 0.02)."""
    case = tiny_case("hr")
    det = load_bundle(case.bundle, runtime="keras", kind="hr").detector
    assert isinstance(det, LSTMAutoencoder)
    return case, det


def test_threshold_is_held_out_quantile(trained):
    case, det = trained
    frac = float(np.mean(det.score(case.x_cal) > det.threshold))
    assert frac <= 0.02 + 1e-9
    with pytest.raises(ValueError, match="fpr"):
        det.infer_threshold(case.x_cal, 1.0)
    with pytest.raises(ValueError, match="fpr"):
        det.infer_threshold(case.x_cal, 0)


def test_predict_shapes(trained):
    case, det = trained
    p = det.predict(case.x_cal[:10])
    assert p.scores.shape == (10,) and p.scores.dtype == np.float32
    assert p.flagged.dtype == bool and p.threshold == det.threshold
    assert det.score(np.zeros((0, 32, 2))).shape == (0,)
    ends, s = score_rr(det, case.input_spec, synthetic_normal_rr(300, 120.0), step=8)
    assert ends.shape == s.shape and ends[0] == 31


@pytest.mark.parametrize(("kind", "params"), [("afib", {"hr_bpm": 85.0}), ("tachy", {"hr_bpm": 140.0}),
                                              ("brady", {"hr_bpm": 40.0})])
def test_episodes_outscore_normal_rhythm(trained, hr_normal_windows, hr_episode_windows, kind, params):
    case, det = trained
    spec = case.input_spec
    normal = det.score(spec.make_input(hr_normal_windows([400, 401], step=4)))
    episode = det.score(spec.make_input(hr_episode_windows(kind, 402, params)))
    assert episode.size > 5
    assert auroc(episode, normal) > 0.97
    assert np.mean(episode > det.threshold) > 0.8


def test_bundle_round_trip_and_tflite_parity(trained):
    case, det = trained
    meta = read_meta(case.bundle)
    assert meta.kind == "hr" and meta.input.window_beats == 32 and meta.threshold_fpr == 0.02
    assert meta.input.normaliser == case.input_spec.normaliser and meta.training_data_sha256 == "cd" * 32
    ops = meta.metrics["tflite_ops"]["model_float32.tflite"]
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in ops and not any(op.startswith("Flex") for op in ops)
    x = case.x_cal[:50]
    np.testing.assert_array_equal(det.score(x), case.detector.score(x))
    assert det.threshold == meta.threshold("keras")
    lite = load_bundle(case.bundle, runtime="tflite", kind="hr").detector
    np.testing.assert_allclose(lite.score(x), det.score(x), rtol=1e-4, atol=1e-6)
    assert lite.predict(x).flagged.tolist() == det.predict(x).flagged.tolist()
    assert not [p for p in case.bundle.parent.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_evaluate_synthetic_detects_afib(trained):
    case, det = trained
    res = evaluate_synthetic(det, case.input_spec, [500], duration_s=1200.0)
    assert res["afib_episodes"] == 1 and res["afib_detected"] == 1
    assert res["patient_hours"] == pytest.approx(1 / 3, abs=0.01)
    assert "3 of the last 4" in res["rule"]


@pytest.mark.slow
def test_main_trains_bundle(tmp_path, capsys):
    rc = main(["--synthetic", "3", "--duration-s", "300", "--epochs", "2", "--out", str(tmp_path / "b"),
               "--fpr", "0.05", "--seed", "3"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    meta = read_meta(tmp_path / "b")
    assert meta.threshold_fpr == 0.05 and meta.threshold("keras") == pytest.approx(printed["threshold"])
    assert printed["thresholds"] == meta.thresholds() and set(meta.runtimes) == {"keras", "tflite", "tflite-int8"}
    assert len(meta.training_data_sha256) == 64 and meta.training_config["synthetic_patients"] == 3
    with pytest.raises(SystemExit):
        main(["--synthetic", "3", "--out", str(tmp_path / "c"), "--fpr", "2"])
