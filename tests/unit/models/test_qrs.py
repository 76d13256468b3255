"""QRS detection: sensitivity / positive predictivity on synthetic ECG, flat line, edge cases."""

import zlib

import numpy as np
import pytest

from models.qrs import detect_qrs
from models.signal import MODEL_RATE_HZ, preprocess_record
from models.synthetic import Event, synth_ecg

TOL_S = 0.15


def _match(ref_s: np.ndarray, det_s: np.ndarray) -> tuple[int, int, int]:
    """Greedy one-to-one matching within TOL_S: (true positives, false negatives, false positives)."""
    used = np.zeros(det_s.shape[0], bool)
    tp = 0
    for r in ref_s:
        j = np.searchsorted(det_s, r - TOL_S)
        while j < det_s.shape[0] and det_s[j] <= r + TOL_S:
            if not used[j]:
                used[j] = True
                tp += 1
                break
            j += 1
    return tp, ref_s.shape[0] - tp, det_s.shape[0] - tp


EVENTS = [
    Event("pvc", 20),
    Event("pvc", 45),
    Event("vrun", 60, 2),
    Event("wander", 80, 30, {"amplitude_mv": 1.5}),
    Event("tachy", 115, 20, {"hr_bpm": 160}),
    Event("brady", 140, 15),
    Event("afib", 160, 15),
    Event("pause", 176, 2.5),
]


@pytest.mark.parametrize("fs", [250.0, 360.0])
def test_sensitivity_and_ppv_on_synthetic(fs):
    tp = fn = fp = 0
    for seed in range(4):
        rec = synth_ecg(180, fs, hr_bpm=55 + 8 * seed, seed=seed, events=EVENTS, noise_mv=0.05)
        y = preprocess_record(rec.signal_mv, fs)
        det = detect_qrs(y, MODEL_RATE_HZ)
        a, b, c = _match(rec.beat_samples / fs, det / MODEL_RATE_HZ)
        tp, fn, fp = tp + a, fn + b, fp + c
    assert tp > 700
    assert tp / (tp + fn) >= 0.995, (tp, fn, fp)
    assert tp / (tp + fp) >= 0.995, (tp, fn, fp)


def test_detects_every_ventricular_beat_in_a_run():
    rec = synth_ecg(30, 250, seed=4, events=[Event("vrun", 10, 3, {"rate_bpm": 170})], noise_mv=0.05)
    det = detect_qrs(preprocess_record(rec.signal_mv, 250), MODEL_RATE_HZ) / MODEL_RATE_HZ
    v = rec.beat_samples[rec.beat_labels == "V"] / 250
    assert len(v) >= 8
    assert all(np.min(np.abs(det - t)) <= TOL_S for t in v)


def test_works_at_native_rate_too():
    rec = synth_ecg(60, 360, seed=11, noise_mv=0.03)
    y = preprocess_record(rec.signal_mv, 360, out_rate_hz=360)
    tp, fn, fp = _match(rec.beat_samples / 360, detect_qrs(y, 360) / 360)
    assert fn == 0 and fp == 0


def test_no_detections_on_flat_line_or_tiny_noise():
    assert detect_qrs(np.zeros(1250), MODEL_RATE_HZ).size == 0
    noise = 0.005 * np.random.default_rng(0).standard_normal(1250)
    assert detect_qrs(noise, MODEL_RATE_HZ).size == 0


def test_inverted_qrs_placed_on_main_deflection():
    rec = synth_ecg(30, 250, seed=1, noise_mv=0.02)
    y = -preprocess_record(rec.signal_mv, 250)
    det = detect_qrs(y, MODEL_RATE_HZ)
    tp, fn, fp = _match(rec.beat_samples / 250, det / MODEL_RATE_HZ)
    assert fn == 0 and fp == 0
    assert np.all(y[det] < 0)  # the big deflection is negative after inversion


def test_short_input_and_validation():
    assert detect_qrs(np.zeros(10), MODEL_RATE_HZ).size == 0
    with pytest.raises(ValueError, match="fs"):
        detect_qrs(np.zeros(1000), 10)
    with pytest.raises(ValueError, match="1-D"):
        detect_qrs(np.zeros((2, 500)), MODEL_RATE_HZ)


def test_refractory_respected():
    rec = synth_ecg(60, 250, hr_bpm=120, seed=2, noise_mv=0.1)
    det = detect_qrs(preprocess_record(rec.signal_mv, 250), MODEL_RATE_HZ)
    assert np.all(np.diff(det) >= 0.2 * MODEL_RATE_HZ)


@pytest.mark.parametrize("fs", [250.0, 360.0])
def test_pause_neither_t_nor_p_wave_detected(fs):
    # Regression: once the thresholds decayed in the silence, search-back took the last
    # pre-pause T wave and the first post-pause P wave for beats.
    for seed in [zlib.crc32(f"p-{i}".encode()) for i in range(6)]:
        for pause_s in (3.0, 4.5, 6.0):
            rec = synth_ecg(34, fs, events=[Event("pause", 20, pause_s)], seed=seed, noise_mv=0.05)
            det = detect_qrs(preprocess_record(rec.signal_mv, fs), MODEL_RATE_HZ)
            tp, fn, fp = _match(rec.beat_samples / fs, det / MODEL_RATE_HZ)
            assert fn == 0 and fp == 0, (seed, pause_s, fn, fp)


def test_ventricular_standstill_p_waves_are_not_beats():
    # P waves without QRS for 8 s: thresholds decay, but P waves stay far below the
    # amplitude of the QRS seen before, so the pause is not filled with "beats".
    fs = 250.0
    rec = synth_ecg(30, fs, events=[Event("pause", 12, 8)], seed=5, noise_mv=0.03)
    x = rec.signal_mv.copy()
    t = np.arange(x.shape[0]) / fs
    for tp_s in np.arange(12.6, 20.0, 0.8):  # 0.15 mV P waves every 0.8 s
        x += 0.15 * np.exp(-0.5 * ((t - tp_s) / 0.025) ** 2)
    det = detect_qrs(preprocess_record(x, fs), MODEL_RATE_HZ) / MODEL_RATE_HZ
    assert not np.any((det > 12.3) & (det < 19.9)), det[(det > 12.3) & (det < 19.9)]


def test_fast_peak_picking_matches_scipy_find_peaks():
    # detect_qrs calls scipy's compiled find_peaks steps directly (hot path).
    from scipy import signal as sps

    from models.qrs import _find_peaks_distance

    rng = np.random.default_rng(1)
    for n in (50, 750, 1500):
        a = np.convolve(rng.normal(size=n) ** 2, np.ones(5) / 5, mode="same")
        a[10:14] = a[10]  # a plateau
        assert np.array_equal(_find_peaks_distance(a, 25), sps.find_peaks(a, distance=25)[0])
