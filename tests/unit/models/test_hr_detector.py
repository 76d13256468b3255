"""Tests for models.hr_detector: RR windows, features, the HR LSTM autoencoder, bundles."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.bundle import BundleError
from models.detector import NotFittedError
from models.evaluation import auroc
from models.hr_detector import (
    HRDetector,
    HRNormaliser,
    evaluate_synthetic,
    hr_features,
    k_of_n,
    load_hr_bundle,
    main,
    read_hr_meta,
    rr_windows,
    synthetic_normal_rr,
    window_scores,
)
from models.synthetic import Event, synth_ecg

TINY = {"enc_units": 8, "latent_units": 4, "dec_units": 8}


# --- pure helpers --------------------------------------------------------------------


def test_rr_windows_shapes_and_values():
    rr = np.arange(1, 11, dtype=float) / 10
    w = rr_windows(rr, window=4, step=3)
    assert w.dtype == np.float32 and w.shape == (3, 4)
    np.testing.assert_allclose(w[1], [0.4, 0.5, 0.6, 0.7])
    assert rr_windows(rr[:3], window=4).shape == (0, 4)
    assert rr_windows(rr, window=4, step=1).shape == (7, 4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rr_s": [0.8, -0.1, 0.8]}, "bad values"),
        ({"rr_s": [0.8, np.nan, 0.8]}, "bad values"),
        ({"rr_s": [[0.8]]}, "1-D"),
        ({"rr_s": [0.8] * 5, "window": 1}, "window"),
        ({"rr_s": [0.8] * 5, "step": 0}, "step"),
    ],
)
def test_rr_windows_validates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rr_windows(**kwargs)


def test_normaliser_and_features():
    rng = np.random.default_rng(0)
    windows = 0.8 * (1 + 0.03 * rng.standard_normal((200, 32)))
    norm = HRNormaliser.fit(windows)
    assert norm.log_hr_mean == pytest.approx(np.log(75.0), abs=0.01)
    assert HRNormaliser.from_dict(json.loads(json.dumps(norm.to_dict()))) == norm
    # perfectly regular rhythm at the mean rate: both channels ~0
    x = hr_features(np.full((1, 32), 60.0 / np.exp(norm.log_hr_mean)), norm)
    assert x.shape == (1, 32, 2) and x.dtype == np.float32
    np.testing.assert_allclose(x, 0.0, atol=1e-4)
    # tachycardia moves the level channel, an irregular window the irregularity channel
    fast = hr_features(np.full((1, 32), 0.4), norm)
    assert fast[0, :, 1].min() > 3.0
    irregular = hr_features((0.8 * rng.uniform(0.6, 1.45, (1, 32))), norm)
    assert np.abs(irregular[0, :, 0]).mean() > 3 * np.abs(hr_features(windows[:1], norm)[0, :, 0]).mean()
    with pytest.raises(ValueError, match="log_hr_std"):
        HRNormaliser(4.0, 0.0, 0.1)


def test_k_of_n_hand_computed():
    f = [1, 0, 1, 1, 0, 0, 1, 1, 1]
    assert k_of_n(f, 2, 3).tolist() == [False, False, True, True, True, False, False, True, True]
    assert k_of_n(f, 1, 1).tolist() == [bool(v) for v in f]
    with pytest.raises(ValueError, match="k=4"):
        k_of_n(f, 4, 3)


def test_window_scores_trims_worst_beats():
    x = np.zeros((1, 10, 2), np.float32)
    x_hat = np.zeros_like(x)
    x_hat[0, 3, 0] = 10.0  # one badly reconstructed beat
    assert window_scores(x, x_hat, trim=0)[0] == pytest.approx(100 / 2 / 10)
    assert window_scores(x, x_hat, trim=1)[0] == 0.0


def test_not_fitted_and_bad_shapes():
    det = HRDetector(**TINY)
    with pytest.raises(NotFittedError):
        det.score(np.full((2, 32), 0.8))
    with pytest.raises(NotFittedError):
        det.predict(np.full((2, 32), 0.8))
    with pytest.raises(ValueError, match="trim"):
        HRDetector(window=8, trim=4)


# --- trained tiny model --------------------------------------------------------------


def _normal_windows(seeds, duration_s=600.0, step=4):
    return np.concatenate([rr_windows(synthetic_normal_rr(s, duration_s), 32, step) for s in seeds])


def _train(seed=0):
    det = HRDetector(**TINY)
    det.fit(_normal_windows(range(100, 106)), _normal_windows([106, 107]), epochs=6, seed=seed, progress=False)
    return det


@pytest.fixture(scope="module")
def trained():
    det = _train()
    cal = _normal_windows([200, 201], step=1)
    det.infer_threshold(cal, fpr=0.02)
    return det, cal


def _episode_windows(kind, seed, params=None):
    rec = synth_ecg(600.0, sample_rate_hz=100.0, hr_bpm=70.0, seed=seed,
                    events=[Event(kind, 120.0, 300.0, params or {})])
    rr = rec.rr_s[1:]
    t = rec.beat_samples[1:] / rec.sample_rate_hz
    w = rr_windows(rr, 32, 4)
    end_t = t[np.arange(len(w)) * 4 + 31]
    start_t = t[np.arange(len(w)) * 4] - rr[np.arange(len(w)) * 4]
    inside = (start_t >= 130.0) & (end_t <= 415.0)  # windows wholly inside the episode (past the ramp)
    return w[inside]


def test_threshold_is_held_out_quantile(trained):
    det, cal = trained
    frac = float(np.mean(det.score(cal) > det.threshold))
    assert frac <= 0.02 + 1e-9
    with pytest.raises(ValueError, match="fpr"):
        det.infer_threshold(cal, 1.0)
    with pytest.raises(ValueError, match="fpr"):
        det.infer_threshold(cal, 0)


def test_predict_shapes(trained):
    det, cal = trained
    p = det.predict(cal[:10])
    assert p.scores.shape == (10,) and p.scores.dtype == np.float32
    assert p.flagged.dtype == bool and p.threshold == det.threshold
    assert det.score(np.zeros((0, 32))).shape == (0,)
    ends, s = det.score_rr(synthetic_normal_rr(300, 120.0), step=8)
    assert ends.shape == s.shape and ends[0] == 31


@pytest.mark.parametrize(("kind", "params"), [("afib", {"hr_bpm": 85.0}), ("tachy", {"hr_bpm": 140.0}),
                                              ("brady", {"hr_bpm": 40.0})])
def test_episodes_outscore_normal_rhythm(trained, kind, params):
    det, _ = trained
    normal = det.score(_normal_windows([400, 401], step=4))
    episode = det.score(_episode_windows(kind, 402, params))
    assert episode.size > 5
    assert auroc(episode, normal) > 0.97
    assert np.mean(episode > det.threshold) > 0.8


def test_save_load_and_tflite_parity(trained, tmp_path):
    det, cal = trained
    out = det.save(tmp_path / "hr", extra_meta={"training_data_sha256": "abc", "thresholds": {"fpr": 0.02}})
    meta = read_hr_meta(out)
    assert meta["schema"] == "cardiowatch.bundle/1" and meta["kind"] == "hr"
    assert meta["window"]["window_beats"] == 32 and meta["thresholds"] == {"operating": det.threshold, "fpr": 0.02}
    assert meta["normaliser"] == det.normaliser.to_dict() and meta["training_data_sha256"] == "abc"
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in meta["tflite"]["ops"]
    assert not any(op.startswith("Flex") for op in meta["tflite"]["ops"])
    x = cal[:50]
    keras2 = load_hr_bundle(out, "keras")
    np.testing.assert_array_equal(keras2.score(x), det.score(x))
    assert keras2.threshold == det.threshold
    lite = load_hr_bundle(out, "tflite")
    np.testing.assert_allclose(lite.score(x), det.score(x), rtol=1e-4, atol=1e-6)
    assert lite.predict(x).flagged.tolist() == det.predict(x).flagged.tolist()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_save_is_atomic(trained, tmp_path, monkeypatch):
    import models.hr_detector as hd

    det, _ = trained
    out = det.save(tmp_path / "hr")
    before = (out / "bundle.json").read_text()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(hd, "_export_float32", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        det.save(out)
    assert (out / "bundle.json").read_text() == before  # old bundle intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hr"]  # no partial/temp folder
    with pytest.raises(RuntimeError):
        det.save(tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_bad_bundles(tmp_path):
    with pytest.raises(BundleError, match="missing"):
        read_hr_meta(tmp_path)
    (tmp_path / "bundle.json").write_text(json.dumps({"schema": "cardiowatch.bundle/1", "kind": "ecg"}))
    with pytest.raises(BundleError, match="kind"):
        read_hr_meta(tmp_path)
    (tmp_path / "bundle.json").write_text("{not json")
    with pytest.raises(BundleError, match="JSON"):
        read_hr_meta(tmp_path)
    with pytest.raises(ValueError, match="runtime"):
        load_hr_bundle(tmp_path, "onnx")


@pytest.mark.slow
def test_seeded_training_reproduces(trained):
    det, cal = trained
    again = _train(seed=0)
    np.testing.assert_array_equal(again.score(cal[:20]), det.score(cal[:20]))


def test_evaluate_synthetic_detects_afib(trained):
    det, _ = trained
    res = evaluate_synthetic(det, [500], duration_s=1200.0)
    assert res["afib_episodes"] == 1 and res["afib_detected"] == 1
    assert res["patient_hours"] == pytest.approx(1 / 3, abs=0.01)
    assert "3 of the last 4" in res["rule"]


@pytest.mark.slow
def test_main_trains_bundle(tmp_path, capsys):
    rc = main(["--synthetic", "3", "--duration-s", "300", "--epochs", "2", "--out", str(tmp_path / "b"),
               "--fpr", "0.05", "--seed", "3"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    meta = read_hr_meta(tmp_path / "b")
    assert meta["thresholds"]["fpr"] == 0.05 and meta["thresholds"]["operating"] == pytest.approx(printed["threshold"])
    assert len(meta["training_data_sha256"]) == 64 and meta["training"]["synthetic_patients"] == 3
    with pytest.raises(SystemExit):
        main(["--synthetic", "3", "--out", str(tmp_path / "c"), "--fpr", "2"])
