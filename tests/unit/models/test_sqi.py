"""Signal quality: lead-off, saturation, motion noise, clean rhythms not flagged."""

import numpy as np
import pytest

from models.signal import MODEL_RATE_HZ, preprocess_record
from models.sqi import filtered_quality, signal_quality
from models.synthetic import Event, synth_ecg

FS = 250


def _windows(rec, start_s, end_s, win_s=2.5):
    y = preprocess_record(rec.signal_mv, FS)
    out = []
    t = start_s
    while t + win_s <= end_s:
        x_raw = rec.signal_mv[int(t * FS) : int((t + win_s) * FS)]
        yy = y[int(t * MODEL_RATE_HZ) : int((t + win_s) * MODEL_RATE_HZ)]
        out.append(signal_quality(x_raw, yy, MODEL_RATE_HZ, raw_rate_hz=FS))
        t += win_s
    return out


@pytest.mark.parametrize(
    "kwargs",
    [dict(hr_bpm=60), dict(hr_bpm=40), dict(hr_bpm=170), dict(events=[Event("afib", 0, 60)]),
     dict(events=[Event("vrun", 5, 30)]), dict(noise_mv=0.08)],
    ids=["60bpm", "40bpm", "170bpm", "afib", "vrun", "noise0.08"],
)
def test_clean_rhythms_not_flagged(kwargs):
    for seed in range(3):
        rec = synth_ecg(40, FS, seed=seed, **kwargs)
        qs = _windows(rec, 2, 40)
        assert not any(q.lead_off for q in qs)
        assert sum(q.noisy for q in qs) <= 1, [q.reason for q in qs]
        assert np.median([q.quality for q in qs]) > 0.7


def test_heavy_motion_flagged_noisy():
    for seed in range(3):
        rec = synth_ecg(40, FS, seed=seed, events=[Event("motion", 10, 20, {"amplitude_mv": 1.0})])
        qs = _windows(rec, 10, 30)
        assert sum(q.noisy for q in qs) >= len(qs) - 1
        assert np.median([q.quality for q in qs]) < 0.3


def test_lead_off_flat_flagged():
    rec = synth_ecg(30, FS, seed=1, events=[Event("lead_off", 10, 15)])
    qs = _windows(rec, 12, 25)
    assert all(q.lead_off and q.quality == 0.0 for q in qs)


def test_rail_saturation_flagged():
    x = np.full(500, 5.0)
    x[::7] = -5.0
    q = signal_quality(x, np.zeros(250) + np.linspace(0, 1, 250), MODEL_RATE_HZ)
    assert q.lead_off and q.reason == "saturated"


def test_short_window_is_unknown_not_flagged():
    q = filtered_quality(np.zeros(10), MODEL_RATE_HZ)
    assert q.reason == "short" and not q.lead_off and not q.noisy


def test_raw_flat_needs_rate_and_half_second():
    flat = np.full(40, 0.1)
    y = preprocess_record(synth_ecg(3, FS, seed=0).signal_mv, FS)
    assert not signal_quality(flat, y, MODEL_RATE_HZ).lead_off  # rate unknown: skip raw flat check
    assert signal_quality(np.full(200, 0.1), y, MODEL_RATE_HZ, raw_rate_hz=FS).lead_off
