"""ECG model input: normaliser, the [n, 80, 3] tensor, the beat score, the bundle's input section."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.beats import BeatSpec
from models.ecg.features import BEAT_LENGTH, N_CHANNELS, ECGInput, ECGScore, Normaliser, make_model_input


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


def test_score_is_waveform_mse_plus_weighted_rr_mse() -> None:
    x = np.zeros((2, BEAT_LENGTH, N_CHANNELS), np.float32)
    x_hat = x.copy()
    x_hat[0, :, 0] = 1.0  # waveform error 1 everywhere
    x_hat[1, :, 1] = 2.0  # RR error 4 on one of the two RR channels
    np.testing.assert_allclose(ECGScore().numpy(x, x_hat), [1.0, 2.0])
    np.testing.assert_allclose(ECGScore(rr_weight=0.5).numpy(x, x_hat), [1.0, 1.0])
    assert ECGScore.from_dict(json.loads(json.dumps(ECGScore(0.5).to_dict()))) == ECGScore(0.5)
    with pytest.raises(ValueError, match="rr_weight must be finite and >= 0, got -1"):
        ECGScore(rr_weight=-1.0)
    with pytest.raises(ValueError, match="shapes differ"):
        ECGScore().numpy(x, x_hat[:1])


def test_score_tensorflow_twin_matches_numpy() -> None:
    import tensorflow as tf

    rng = np.random.default_rng(1)
    x, x_hat = (rng.standard_normal((5, BEAT_LENGTH, N_CHANNELS)).astype(np.float32) for _ in range(2))
    s = ECGScore(rr_weight=0.7)
    np.testing.assert_allclose(s.tensorflow(tf.constant(x), tf.constant(x_hat)).numpy(), s.numpy(x, x_hat), rtol=1e-6)


def test_input_section_round_trips_and_validates() -> None:
    spec = ECGInput(normaliser=Normaliser(0.01, 1.4))
    d = json.loads(json.dumps(spec.to_dict()))
    assert d["beat_spec"] == {"rate_hz": 125, "pre_s": 0.24, "post_s": 0.40, "length": 80}
    assert ECGInput.from_dict(d) == spec and (spec.timesteps, spec.channels) == (80, 3)
    with pytest.raises(ValueError, match="beat_spec.length must be 80"):
        ECGInput(normaliser=spec.normaliser, beat=BeatSpec(pre_s=0.3))
    d["normaliser"].pop("scale")
    with pytest.raises(KeyError, match="normaliser.scale"):
        ECGInput.from_dict(d)
