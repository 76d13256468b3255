"""Per-patient calibration: pure state logic, serialisation, and that it pays off."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from models.autoencoder import LSTMAutoencoder
from models.ecg.features import BEAT_LENGTH, N_CHANNELS, ECGScore, Normaliser, make_model_input
from models.ecg.train import beats_from_signal
from models.personalise import PatientCalibration
from models.synthetic import Event, synth_ecg

G = Normaliser(center=0.0, scale=1.0)


def _beats(n: int, amp: float = 2.0) -> np.ndarray:
    t = np.linspace(0, 1, 80)
    return amp * np.exp(-((t - 0.375) / 0.03) ** 2)[None, :].repeat(n, axis=0)


def test_phases_and_bounds() -> None:
    c = PatientCalibration.initial(normaliser_beats=10, threshold_beats=20, fpr=0.05, cap_factor=2.0)
    assert not c.calibrated and c.normaliser(G) is G and c.threshold(1.0) == 1.0
    c1 = c.update(_beats(10), np.full(10, 99.0), np.ones(10))
    assert c.amplitudes_mv == () and c1.normaliser_ready and not c1.calibrated
    n = c1.normaliser(G)
    assert n.scale == pytest.approx(float(np.ptp(_beats(1))), rel=1e-6) and c1.scores == ()  # phase-1 scores unused
    c2 = c1.update(_beats(20), np.full(20, 1.5), np.ones(20))
    assert c2.calibrated and c2.threshold(1.0) == pytest.approx(1.5)
    assert c2.threshold(2.0) == 2.0  # never below the global threshold
    c3 = c1.update(_beats(20), np.full(20, 50.0), np.ones(20))
    assert c3.threshold(1.0) == 2.0  # capped at cap_factor x global
    assert c3.update(_beats(5), np.zeros(5), np.ones(5)) is c3  # frozen once calibrated


def test_ignores_bad_quality_and_irregular_rr() -> None:
    c = PatientCalibration.initial(normaliser_beats=5, threshold_beats=5)
    q = np.array([1.0, 0.1, 1.0, 1.0, 0.0, 1.0])
    rr = np.array([[1, 1], [1, 1], [0.6, 1.4], [1.05, 0.95], [1, 1], [1, 1]], dtype=np.float32)
    c1 = c.update(_beats(6), np.zeros(6), q, rr_context=rr)
    assert len(c1.amplitudes_mv) == 3  # beats 0, 3, 5
    with pytest.raises(ValueError, match="rr_context must have shape"):
        c.update(_beats(6), np.zeros(6), q, rr_context=rr[:2])
    with pytest.raises(ValueError, match="must agree"):
        c.update(_beats(6), np.zeros(5), q)


def test_serialisation_roundtrip_and_validation() -> None:
    c = PatientCalibration.initial(normaliser_beats=3, threshold_beats=4).update(_beats(5), np.arange(5.0), np.ones(5))
    assert PatientCalibration.from_bytes(c.to_bytes()) == c
    assert PatientCalibration.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="version"):
        PatientCalibration.from_dict({**c.to_dict(), "v": 99})
    with pytest.raises(ValueError, match="not valid JSON"):
        PatientCalibration.from_bytes(b"\xff")
    with pytest.raises(ValueError, match="fpr must be in"):
        PatientCalibration.initial(fpr=0.0)
    with pytest.raises(ValueError, match="cap_factor must be >= 1, got 0.5"):
        PatientCalibration.initial(cap_factor=0.5)


def _rec(seed: int, duration_s: float, events: list[Event], gain: float = 1.0) -> Any:
    r = synth_ecg(duration_s, sample_rate_hz=250, hr_bpm=70, events=events, seed=seed)
    return beats_from_signal(f"p{seed}", r.signal_mv * gain, r.sample_rate_hz, r.beat_samples, r.beat_labels)


def test_calibration_pays_off_for_unusual_amplitude() -> None:
    train = [_rec(s, 40.0, []) for s in range(400, 404)]
    w = np.concatenate([p.waveforms for p in train])
    r = np.concatenate([p.rr_context for p in train])
    gnorm = Normaliser.fit(w)
    det = LSTMAutoencoder(BEAT_LENGTH, N_CHANNELS, ECGScore(), enc_units=8, latent_units=4, dec_units=8)
    det.fit(make_model_input(w, r, gnorm), make_model_input(w[:100], r[:100], gnorm), epochs=3, batch_size=64, seed=0, progress=False)
    val = _rec(450, 60.0, [])
    g_thr = det.infer_threshold(make_model_input(val.waveforms, val.rr_context, gnorm), fpr=0.02)

    # A patient whose ECG is 2.5x the population amplitude (e.g. a thin chest), with PVCs
    # only after the calibration period.
    p = _rec(460, 240.0, [Event("pvc", float(t)) for t in np.arange(170.0, 236.0, 5.0)], gain=2.5)
    n_cal = 180
    cal = PatientCalibration.initial(normaliser_beats=60, threshold_beats=120, fpr=0.02)
    for i in range(0, n_cal, 30):  # streamed in chunks, each scored with the current normaliser
        sl = slice(i, i + 30)
        x = make_model_input(p.waveforms[sl], p.rr_context[sl], cal.normaliser(gnorm))
        cal = cal.update(p.waveforms[sl], det.score(x), p.quality[sl], p.rr_context[sl])
    assert cal.calibrated
    rest = slice(n_cal, None)
    lab = p.labels[rest]
    s_global = det.score(make_model_input(p.waveforms[rest], p.rr_context[rest], gnorm))
    s_patient = det.score(make_model_input(p.waveforms[rest], p.rr_context[rest], cal.normaliser(gnorm)))
    thr = cal.threshold(g_thr)
    fp_before = float(np.mean(s_global[lab == "N"] > g_thr))
    fp_after = float(np.mean(s_patient[lab == "N"] > thr))
    v_after = float(np.mean(s_patient[lab == "V"] > thr))
    print(f"N flagged before {fp_before:.3f} after {fp_after:.3f}; V flagged after {v_after:.3f}")
    assert (lab == "V").sum() >= 8
    assert fp_before > 0.3
    assert fp_after < 0.1 and fp_after < fp_before / 3
    assert v_after >= 0.8
