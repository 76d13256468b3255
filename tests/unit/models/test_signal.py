"""Preprocessing stage: validation, chunk invariance, state round trip."""

import numpy as np
import pytest

from models.signal import (
    MODEL_RATE_HZ,
    PreprocessorState,
    StreamingPreprocessor,
    preprocess_record,
    validate_sample_rate,
)
from models.synthetic import Event, synth_ecg


@pytest.mark.parametrize("fs", [50, 128, 360.0, 2000])
def test_validate_sample_rate_accepts_range(fs):
    assert validate_sample_rate(fs) == float(fs)


@pytest.mark.parametrize("fs", [49.9, 2001, float("nan"), -1, "abc"])
def test_validate_sample_rate_names_bad_value(fs):
    with pytest.raises(ValueError, match="sample_rate_hz"):
        validate_sample_rate(fs)


@pytest.mark.parametrize("fs", [128.0, 250.0, 360.0, 1000.0, 257.3])
def test_chunked_equals_whole(fs):
    rec = synth_ecg(20.0, fs, seed=1, events=[Event("wander", 2, 10)])
    whole = preprocess_record(rec.signal_mv, fs)
    pre = StreamingPreprocessor(fs)
    state = pre.initial_state()
    rng = np.random.default_rng(int(fs))
    parts, i = [], 0
    while i < rec.signal_mv.shape[0]:
        n = int(rng.integers(0, 400))
        y, state = pre.process(state, rec.signal_mv[i : i + n])
        state = PreprocessorState.from_bytes(state.to_bytes())
        parts.append(y)
        i += n
    chunked = np.concatenate(parts)
    assert chunked.shape == whole.shape
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-9)


def test_output_length_and_grid():
    fs = 360.0
    x = np.zeros(3600)
    y = preprocess_record(x, fs)
    # Outputs k with k*360/125 <= 3599 -> k <= 1249.65 -> 1250 samples.
    assert y.shape[0] == 1250


def test_passes_ecg_band_and_removes_dc_and_wander():
    fs = 250.0
    t = np.arange(int(20 * fs)) / fs
    dc = 5.0
    wander = 1.0 * np.sin(2 * np.pi * 0.05 * t)
    tone = 0.5 * np.sin(2 * np.pi * 10.0 * t)
    y = preprocess_record(dc + wander + tone, fs)
    tail = y[5 * MODEL_RATE_HZ :]
    # 10 Hz tone kept (amplitude ~0.5), DC and 0.05 Hz wander removed.
    assert 0.4 < np.max(np.abs(tail)) < 0.6
    assert abs(np.mean(tail)) < 0.02
    # No start transient from the 5 mV offset: zi is initialised from the first sample.
    assert np.max(np.abs(y[:MODEL_RATE_HZ])) < 1.0


def test_state_round_trip_and_rate_mismatch():
    pre = StreamingPreprocessor(250.0)
    _, s = pre.process(pre.initial_state(), np.ones(100))
    raw = s.to_bytes()
    assert len(raw) <= 8 * 12
    assert PreprocessorState.from_bytes(raw) == s
    with pytest.raises(ValueError, match="250.0 Hz"):
        StreamingPreprocessor(360.0).process(s, np.ones(10))
    with pytest.raises(ValueError, match="version"):
        PreprocessorState.from_bytes(b"\x00" * 64)


def test_rejects_non_finite_and_2d():
    pre = StreamingPreprocessor(250.0)
    with pytest.raises(ValueError, match="finite"):
        pre.process(pre.initial_state(), np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="1-D"):
        pre.process(pre.initial_state(), np.zeros((2, 2)))


def test_fast_sosfilt_matches_scipy_sosfilt():
    # The preprocessor calls scipy's compiled sosfilt kernel directly (hot path): it must
    # give bit-identical output and final state to the public function.
    from scipy import signal as sps

    from models.signal import _bandpass_sos, _sosfilt_zi

    sos, zi_unit = _bandpass_sos(250.0)
    x = np.random.default_rng(0).normal(size=300)
    zi = zi_unit * 0.7
    want_y, want_z = sps.sosfilt(sos, x, zi=zi)
    got_y, got_z = _sosfilt_zi(sos, x, zi)
    assert np.array_equal(got_y, want_y) and np.array_equal(got_z, want_z)
    assert np.array_equal(zi, zi_unit * 0.7)  # inputs untouched
