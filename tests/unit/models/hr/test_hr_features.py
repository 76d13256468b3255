"""Heart-rate model input: RR windows, normaliser and features, the trimmed window score, the bundle's input section."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.autoencoder import LSTMAutoencoder
from models.hr.features import HRInput, HRNormaliser, HRScore, hr_features, rr_windows


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
    with pytest.raises(ValueError, match="finite and > 0 seconds, got 1 bad values"):
        hr_features(np.array([[0.8, 0.0, 0.8]]), norm)


def test_window_scores_trims_worst_beats():
    x = np.zeros((1, 10, 2), np.float32)
    x_hat = np.zeros_like(x)
    x_hat[0, 3, 0] = 10.0  # one badly reconstructed beat
    assert HRScore(trim=0).numpy(x, x_hat)[0] == pytest.approx(100 / 2 / 10)
    assert HRScore(trim=1).numpy(x, x_hat)[0] == 0.0


def test_trim_is_checked_against_the_window():
    with pytest.raises(ValueError, match="trim"):
        LSTMAutoencoder(8, 2, HRScore(trim=4))
    with pytest.raises(ValueError, match="trim must be an integer >= 0"):
        HRScore(trim=-1)
    assert HRScore.from_dict(json.loads(json.dumps(HRScore(3).to_dict()))) == HRScore(3)


def test_input_section_round_trips_and_validates():
    spec = HRInput(normaliser=HRNormaliser(4.3, 0.17, 0.04))
    d = json.loads(json.dumps(spec.to_dict()))
    assert d["window"] == {"unit": "rr_interval", "window_beats": 32,
                           "features": ["log_rr_over_window_median_z", "log_hr_z"], "rr_clip_s": [0.2, 3.0]}
    assert HRInput.from_dict(d) == spec and (spec.timesteps, spec.channels) == (32, 2)
    x = spec.make_input(np.full((3, 32), 0.8))
    assert x.shape == (3, 32, 2)
    with pytest.raises(ValueError, match=r"shape \[n, 32\]"):
        spec.make_input(np.full((3, 16), 0.8))
    bad = json.loads(json.dumps(d))
    bad["window"]["rr_clip_s"] = [0.3, 3.0]
    with pytest.raises(ValueError, match="rr_clip_s must be"):
        HRInput.from_dict(bad)
    d["normaliser"].pop("log_hr_std")
    with pytest.raises(KeyError, match="normaliser.log_hr_std"):
        HRInput.from_dict(d)
