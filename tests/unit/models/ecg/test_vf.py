"""VF detector (models/ecg/vf.py): window grid, features, the logistic detector, its file, the shipped one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.autoencoder import NotFittedError
from models.bundle import read_meta
from models.ecg.vf import (
    EXTRA_KEY,
    FEATURE_NAMES,
    FILE_NAME,
    VFDetector,
    VFDetectorError,
    VFSettings,
    due_windows,
    load_vf_detector,
    record_windows,
    window_features,
)
from models.signal import preprocess_record
from models.synthetic import synth_ecg

REPO = Path(__file__).resolve().parents[4]
SHIPPED_ECG = REPO / "models" / "pretrained" / "ecg-lstm-ae"
FS = 125
WIN, HOP = 4 * FS, FS
F = {n: i for i, n in enumerate(FEATURE_NAMES)}


def _sine(freq_hz: float, amp_mv: float = 0.6, seconds: float = 4.0, phase: float = 0.0) -> np.ndarray:
    t = np.arange(int(seconds * FS)) / FS
    return amp_mv * np.sin(2 * np.pi * freq_hz * t + phase)


def _sinus_windows(seed: int, hr_bpm: float = 70.0, seconds: float = 60.0) -> np.ndarray:
    rec = synth_ecg(seconds, sample_rate_hz=250, hr_bpm=hr_bpm, seed=seed)
    y = preprocess_record(rec.signal_mv, rec.sample_rate_hz)
    _, w = record_windows(y[5 * FS:], WIN, HOP)  # past the filter's start transient
    return np.asarray(w)


# ---------------------------------------------------------------------------- windows
def test_due_windows_are_the_record_grid_for_any_chunking() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=20 * FS).astype(np.float32)
    ends, w = record_windows(y, WIN, HOP)
    assert ends[0] == WIN and np.all(np.diff(ends) == HOP) and ends[-1] == len(y)
    for sizes in ([FS] * 20, [37, 250, 1, 900, 312, 1000], [len(y)]):
        got_e, got_w, n, hist = [], [], 0, np.zeros(0, np.float32)
        for size in sizes:
            new = y[n:n + size]
            n += len(new)
            hist = np.concatenate([hist, new])
            e, ww = due_windows(hist, n, WIN, HOP, len(new))
            got_e.append(e)
            got_w.append(ww)
            hist = hist[-6 * FS:]  # what the segmenter keeps
        np.testing.assert_array_equal(np.concatenate(got_e), ends)
        np.testing.assert_array_equal(np.concatenate(got_w), w)


def test_due_windows_needs_enough_history() -> None:
    with pytest.raises(ValueError, match="history must reach back to sample 500"):
        due_windows(np.zeros(400, np.float32), 1000, WIN, HOP, 2)  # the window ending at 1000 starts at 500


# ---------------------------------------------------------------------------- features
def test_features_of_a_4_hz_sine_are_those_of_flutter() -> None:
    f = window_features(_sine(4.0)[None, :])[0]
    assert f[F["dom_freq_hz"]] == pytest.approx(4.0, abs=0.15)
    assert f[F["conc"]] > 0.9 and f[F["hf_share"]] < 0.01 and f[F["lf_share"]] < 0.01
    assert f[F["mcr_hz"]] == pytest.approx(4.0, abs=0.3)
    assert f[F["acf_peak"]] > 0.8 and f[F["amp_steady"]] > 0.9
    assert f[F["log_amp_mv"]] == pytest.approx(np.log10(1.2), abs=0.02)


def test_features_of_sinus_rhythm_show_qrs_spikes_and_baseline() -> None:
    f = window_features(_sinus_windows(1))
    sine = window_features(_sine(4.0)[None, :])[0]
    assert np.median(f[:, F["log_sharp"]]) > sine[F["log_sharp"]] + 0.2
    assert np.median(f[:, F["baseline_frac"]]) > 2 * sine[F["baseline_frac"]]
    assert np.median(f[:, F["conc"]]) < 0.6


def test_features_are_finite_for_flat_and_tiny_windows() -> None:
    x = np.stack([np.zeros(WIN), np.full(WIN, 3.0), 1e-12 * np.random.default_rng(0).normal(size=WIN)])
    f = window_features(x)
    assert np.all(np.isfinite(f)) and f.shape == (3, len(FEATURE_NAMES))


def test_features_validate() -> None:
    with pytest.raises(ValueError, match="windows must be 2-D"):
        window_features(np.zeros(WIN))
    with pytest.raises(ValueError, match="at least 2 s"):
        window_features(np.zeros((1, FS)))
    with pytest.raises(ValueError, match="finite"):
        window_features(np.full((1, WIN), np.nan))
    assert window_features(np.zeros((0, WIN))).shape == (0, len(FEATURE_NAMES))


# ---------------------------------------------------------------------------- detector
def _training_set() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    pos = [_sine(f, a, phase=p) + rng.normal(0, 0.03, WIN)
           for f, a, p in zip(rng.uniform(3, 7, 80), rng.uniform(0.3, 1.5, 80), rng.uniform(0, 6, 80))]
    neg = [*_sinus_windows(2)[::3], *_sinus_windows(3, hr_bpm=110)[::3],
           *(rng.normal(0, 0.3, (40, WIN)))]
    x = window_features(np.stack(pos + neg))
    return x, np.r_[np.ones(len(pos)), np.zeros(len(neg))]


def test_fit_is_deterministic_and_round_trips() -> None:
    x, y = _training_set()
    a = VFDetector.fit(x, y).with_threshold(x[y == 0], 0.05)
    b = VFDetector.fit(x, y).with_threshold(x[y == 0], 0.05)
    np.testing.assert_array_equal(a.coef, b.coef)
    assert a.to_bytes() == b.to_bytes()  # the file too, so a bundle's hash of it is reproducible
    c = VFDetector.from_bytes(a.to_bytes(), a.settings)
    w = np.stack([_sine(4.0), _sinus_windows(5)[0]])
    np.testing.assert_array_equal(c.score(w), a.score(w))
    assert a.threshold is not None and a.settings.fpr == 0.05


def test_detector_errors_name_the_problem() -> None:
    x, y = _training_set()
    det = VFDetector.fit(x, y)
    with pytest.raises(NotFittedError, match="no threshold"):
        det.predict(np.zeros((1, WIN)))
    with pytest.raises(VFDetectorError, match=r"windows must have shape \[n, 500\]"):
        det.score(np.zeros((1, 400)))
    with pytest.raises(VFDetectorError, match="both classes"):
        VFDetector.fit(x, np.zeros(len(y)))
    with pytest.raises(VFDetectorError, match="not a VF detector file"):
        VFDetector.from_bytes(b"junk", det.settings)
    with pytest.raises(ValueError, match="fpr must be in"):
        det.with_threshold(x[y == 0], 1.5)
    with pytest.raises(ValueError, match="hop_s must be a whole number of samples"):
        VFSettings(hop_s=0.333)
    with pytest.raises(VFDetectorError, match="miss key 'consecutive'"):
        VFSettings.from_dict({"rate_hz": 125, "window_s": 4, "hop_s": 1, "min_ptp_mv": 0.1})


def test_load_vf_detector_from_a_bundle_folder(tmp_path: Path) -> None:
    assert load_vf_detector(tmp_path, {}) is None  # an old bundle: no VF detector
    x, y = _training_set()
    det = VFDetector.fit(x, y).with_threshold(x[y == 0], 0.05)
    extra = {EXTRA_KEY: {"file": FILE_NAME, "settings": det.settings.to_dict()}}
    with pytest.raises(VFDetectorError, match="VF detector file missing"):
        load_vf_detector(tmp_path, extra)
    (tmp_path / FILE_NAME).write_bytes(det.to_bytes())
    got = load_vf_detector(tmp_path, extra)
    assert got is not None and got.threshold == det.threshold
    no_thr = {EXTRA_KEY: {"settings": {**det.settings.to_dict(), "threshold": None}}}
    with pytest.raises(VFDetectorError, match="no threshold"):
        load_vf_detector(tmp_path, no_thr)


# ---------------------------------------------------------------------------- the shipped one
@pytest.fixture(scope="module")
def shipped() -> VFDetector:
    meta = read_meta(SHIPPED_ECG)
    det = load_vf_detector(SHIPPED_ECG, meta.extra)
    assert det is not None, "the shipped ECG bundle has no VF detector"
    return det


def test_shipped_detector_scores_a_4_hz_sine_high(shipped: VFDetector) -> None:
    w = np.stack([_sine(f, a) for f in (3.5, 4.0, 5.0) for a in (0.5, 1.0)])
    assert np.all(shipped.predict(w).flagged)


def test_shipped_detector_scores_sinus_noise_and_flat_low(shipped: VFDetector) -> None:
    rng = np.random.default_rng(7)
    sinus = np.concatenate([_sinus_windows(s, hr) for s, hr in ((11, 60.0), (12, 90.0), (13, 150.0))])
    noise = rng.normal(0, 0.3, (50, WIN))
    flat = np.stack([np.zeros(WIN), rng.normal(0, 0.005, WIN)])
    assert shipped.threshold is not None
    assert np.mean(shipped.score(sinus) > shipped.threshold) < 0.01
    assert not np.any(shipped.predict(noise).flagged)
    np.testing.assert_array_equal(shipped.score(flat), 0.0)  # below min_ptp_mv: never VF


def test_shipped_detector_documents_its_training() -> None:
    doc = read_meta(SHIPPED_ECG).extra[EXTRA_KEY]
    assert doc["feature_names"] == list(FEATURE_NAMES)
    assert doc["settings"]["consecutive"] >= 1 and 0 < doc["settings"]["fpr"] < 1
    assert set(doc["training"]["vf_patients"]) == {"cudb:cu01", "mitdb:207"}
    json.dumps(doc)
