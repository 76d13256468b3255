"""Noise stress: the nst-style mixer gives the SNR it is asked for, on its schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.noise import (
    NST_BLOCK_S,
    NST_LEARNING_S,
    NoiseSpec,
    add_noise,
    load_noise,
    noise_gain,
    noise_rms,
    nst_gain_schedule,
    parse_noise_specs,
    signal_amplitude,
)
from models.synthetic import synth_ecg

FS = 360


def measured_snr_db(clean, noisy, beats, fs, on_mask) -> list[float]:
    """SNR of each noisy block: S of the clean lead over 2 sqrt(2) x RMS of what was added."""
    s = signal_amplitude(clean, beats, fs)
    added = noisy - clean
    edges = np.flatnonzero(np.diff(np.concatenate([[0], on_mask.astype(int), [0]])))
    out = []
    for lo, hi in zip(edges[::2], edges[1::2]):
        block = added[lo:hi]
        rms = float(np.sqrt(np.mean((block - block.mean()) ** 2)))
        out.append(20 * math.log10(s / (2 * math.sqrt(2) * rms)))
    return out


@pytest.fixture(scope="module")
def clean():
    return synth_ecg(900, FS, seed=7)  # 15 min: the learning period and 5 blocks


def test_parse_noise_specs():
    assert parse_noise_specs("em:12,ma:6,bw:0") == (NoiseSpec("em", 12.0), NoiseSpec("ma", 6.0),
                                                     NoiseSpec("bw", 0.0))
    assert [s.label for s in parse_noise_specs("clean, em:-6")] == ["clean", "em:-6"]
    for bad in ("em", "em:x", ":3", "", "em:inf", "../x:3"):
        with pytest.raises(ValueError, match="noise"):
            parse_noise_specs(bad)


def test_signal_amplitude_is_a_trimmed_mean_of_qrs_peak_to_peak():
    fs = 100
    x = np.zeros(4000)
    beats = np.arange(100, 3900, 100)  # 38 beats
    x[beats] = 1.5
    x[beats + 2] = -0.5  # inside the +-50 ms window: p-p 2.0
    x[beats[5]] = 40.0  # one artefact; 38 // 20 = 1 value dropped at each end
    x[beats[6]] = 0.5  # and one small beat
    assert signal_amplitude(x, beats, fs) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="full"):
        signal_amplitude(x, np.array([1, 3999]), fs)


def test_noise_rms_and_gain():
    t = np.arange(0, 400, 1 / FS)
    z = 3.0 * np.sin(2 * np.pi * 7 * t) + 5.0  # the mean is removed per window
    assert noise_rms(z, FS) == pytest.approx(3.0 / math.sqrt(2), rel=1e-3)
    # a sinusoid's p-p is 2 sqrt(2) x its RMS: equal sizes give 0 dB at gain 1
    assert noise_gain(0.0, 2 * math.sqrt(2), 1.0) == pytest.approx(1.0)
    assert noise_gain(20.0, 2 * math.sqrt(2), 1.0) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="noise_size"):
        noise_gain(6.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="at least 1 s"):
        noise_rms(np.zeros(10), FS)


def test_schedule_is_five_quiet_minutes_then_two_minute_blocks():
    g = nst_gain_schedule(900 * FS, FS, 0.7)
    t = np.arange(g.size) / FS
    on = g > 0
    assert not on[t < NST_LEARNING_S].any()
    assert on[(t >= 300) & (t < 420)].all() and not on[(t >= 420) & (t < 540)].any()
    assert on[(t >= 540) & (t < 660)].all() and not on[(t >= 660) & (t < 780)].any()
    assert NST_BLOCK_S == 120.0
    c = nst_gain_schedule(900 * FS, FS, 0.7, continuous=True)
    assert (c[t >= 300] == 0.7).all() and (c[t < 300] == 0).all()


@pytest.mark.parametrize("snr_db", [24.0, 12.0, 0.0, -6.0])
def test_mix_produces_the_snr_asked_for(clean, snr_db):
    rng = np.random.default_rng(3)
    noise = rng.normal(0, 0.4, 900 * FS)  # stationary, so each block's RMS is the record's
    m = add_noise(clean.signal_mv, clean.beat_samples, noise, FS, snr_db)
    snrs = measured_snr_db(clean.signal_mv, m.signal_mv, clean.beat_samples, FS, m.noisy)
    assert len(snrs) == 3  # 300-420, 540-660, 780-900
    assert snrs == pytest.approx([snr_db] * 3, abs=0.15)
    # nothing is added outside the noisy blocks but a constant offset (no step at a switch)
    quiet = ~m.noisy
    added = m.signal_mv - clean.signal_mv
    t = np.arange(added.size) / FS
    assert np.all(added[t < 300] == 0.0)
    assert np.ptp(added[(t >= 420) & (t < 540)]) < 1e-12 and quiet[(t >= 420) & (t < 540)].all()
    jumps = np.abs(np.diff(added))
    switch = np.flatnonzero(np.diff(m.noisy.astype(int)))
    assert jumps[switch].max() <= 5 * m.gain * 0.4  # a sample-to-sample noise step, not a jump


def test_mix_resamples_rewinds_and_uses_normal_beats_only():
    rec = synth_ecg(700, 250, seed=11)
    t = np.arange(0, 200, 1 / 360)  # a 200 s noise record at 360 Hz: resampled, rewound
    rng = np.random.default_rng(5)
    noise = np.sin(2 * np.pi * 0.3 * t) + 0.2 * rng.normal(size=t.size)
    m = add_noise(rec.signal_mv, rec.beat_samples, noise, 250, 6.0, noise_rate_hz=360, continuous=True)
    assert m.signal_mv.shape == rec.signal_mv.shape and m.noisy[int(300 * 250):].all()
    added = m.signal_mv - rec.signal_mv
    # joins of the rewound copies (every 200 s after 0) carry no step
    assert np.abs(np.diff(added)).max() < 10 * np.abs(np.diff(added[300 * 250:400 * 250])).mean()
    # a V beat with a huge QRS does not size the signal when classes are given
    x = rec.signal_mv.copy()
    beats = rec.beat_samples
    classes = np.array(["N"] * beats.size)
    big = beats[::2]
    x[big] += 5.0
    classes[::2] = "V"
    a = add_noise(x, beats, noise, 250, 6.0, aami_classes=classes, noise_rate_hz=360)
    b = add_noise(x, beats, noise, 250, 6.0, noise_rate_hz=360)
    assert a.signal_pp_mv == pytest.approx(signal_amplitude(rec.signal_mv, beats[1::2], 250))
    assert b.signal_pp_mv > a.signal_pp_mv + 2.0


@pytest.mark.data
def test_mix_reproduces_physionet_118e12(shared_data_dir):
    """nstdb 118e12 was made by nst from MIT-BIH 118 and em at 12 dB: our gain must match
    the one in the published record, and noise must be on exactly where nst put it."""
    from models.records import load_record

    rec = load_record(shared_data_dir / "mitdb-ds1", "118")
    z, z_fs = load_noise(shared_data_dir / "nstdb", "em", rec.lead_index)
    m = add_noise(rec.signal_mv, rec.beat_samples, z, rec.sample_rate_hz, 12.0,
                  aami_classes=rec.aami_classes, noise_rate_hz=z_fs)
    ref = load_record(shared_data_dir / "nstdb", "118e12")
    added = ref.signal_mv - rec.signal_mv
    # where we add nothing, nst added nothing either: a constant offset per quiet stretch
    edges = np.flatnonzero(np.diff(np.concatenate([[1], m.noisy.astype(int), [1]])))
    quiet = list(zip(edges[::2], edges[1::2]))
    assert len(quiet) == 7  # the learning period and six 2-minute gaps
    for lo, hi in quiet:
        assert np.ptp(added[lo:hi]) < 1e-9
    block = slice(int(310 * 360), int(410 * 360))  # inside the first noisy block
    ref_gain = np.polyfit(z[block], added[block], 1)[0]
    assert m.gain == pytest.approx(ref_gain, rel=0.02)
