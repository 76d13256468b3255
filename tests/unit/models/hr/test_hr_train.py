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


def _write_rr_record(folder, name: str, rr_s: np.ndarray, rhythm: list[tuple[float, str]], header: bool) -> None:
    """An annotation-only record as PhysioNet's RR databases ship them (128 Hz time base)."""
    import wfdb

    folder.mkdir(parents=True, exist_ok=True)
    t = np.cumsum(rr_s)
    samples = list(np.round(t * 128).astype(int))
    symbols = ["N"] * len(samples)
    aux = [""] * len(samples)
    for at_s, label in rhythm:
        samples.append(int(round(at_s * 128)))
        symbols.append("+")
        aux.append(label)
    order = np.argsort(samples, kind="stable")
    ext = "ecg" if header else "atr"
    if header:
        (folder / f"{name}.hea").write_text(f"{name} 0 128 0\n")
    wfdb.wrann(name, ext, np.asarray(samples)[order], symbol=[symbols[i] for i in order],
               aux_note=[aux[i] for i in order], write_dir=str(folder), fs=128 if header else None)


@pytest.mark.slow
def test_records_train_the_autoencoder_and_the_af_detector_into_one_bundle(tmp_path):
    from models.hr.af import AFDetector
    from models.hr.train import train_hr
    from services.pipelines import build_hr_pipeline, build_policy

    rng = np.random.default_rng(0)
    for i in range(3):  # AF patients: sinus, 10 min of AF, sinus (ltafdb style, no header)
        sinus = 0.8 + 0.03 * np.sin(np.arange(700) / 3.0) + 0.01 * rng.standard_normal(700)
        af = rng.uniform(0.4, 1.0, 850)
        rr = np.concatenate([sinus, af, sinus[:500]])
        t_af, t_n = float(sinus.sum()), float(sinus.sum() + af.sum())
        _write_rr_record(tmp_path / "ltafdb", f"{i:02d}", rr, [(0.5, "(N"), (t_af, "(AFIB"), (t_n, "(N")],
                         header=False)
    for i in range(3):  # sinus-rhythm subjects (nsr2db style: a 0-signal header, no rhythm labels)
        rr = 0.9 + 0.05 * np.sin(np.arange(2000) / 4.0) + 0.01 * rng.standard_normal(2000)
        _write_rr_record(tmp_path / "nsr2db", f"nsr{i:03d}", rr, [], header=True)
    res = train_hr(tmp_path / "b", records=[tmp_path / "ltafdb", tmp_path / "nsr2db"], fs=128, epochs=1,
                   max_windows_per_patient=60, af_folds=3, af_trees=10, af_max_false_per_day=50.0,
                   fold_bundles=tmp_path / "folds", progress=False)
    meta = read_meta(res.bundle)
    section = meta.extra["af_detector"]
    assert section["file"] == "af_detector.npz" and "af_detector.npz" in meta.extra_files
    assert section["threshold"] == res.af["threshold"] and section["max_false_per_day"] == 50.0
    af = meta.metrics["af_detector"]
    assert len(af["held_out_folds"]) == 3 and set(af["fold_of"]) == {
        "ltafdb/00", "ltafdb/01", "ltafdb/02", "nsr2db/nsr000", "nsr2db/nsr001", "nsr2db/nsr002"}
    assert af["held_out_pooled"]["af_episodes_30s"] == "3/3"  # held out, synthetic AF is easy
    assert meta.training_config["n_records"] == 6
    # the worker's composition root finds the detector in the bundle
    hr = build_hr_pipeline(res.bundle, build_policy(None), runtime="tflite")
    assert isinstance(hr.af, AFDetector) and hr.af.threshold == section["threshold"]
    for f in range(3):  # one bundle per fold, its AF detector held out from that fold
        fm = read_meta(tmp_path / "folds" / f"fold{f}")
        held = fm.extra["af_detector"]["held_out_records"]
        assert held == sorted(n for n, k in af["fold_of"].items() if k == f)
        assert fm.extra["af_detector"]["threshold"] != section["threshold"] or held
    # evaluate --hr-fold-bundles scores each record by the fold bundle that held it out
    from services.evaluate import hr_fold_map

    m = hr_fold_map(tmp_path / "folds")
    assert set(m) == set(af["fold_of"])
    assert all(m[n] == tmp_path / "folds" / f"fold{k}" for n, k in af["fold_of"].items())
    with pytest.raises(FileNotFoundError, match="fold"):
        hr_fold_map(tmp_path / "b")
