"""Synthetic ECG generator: determinism, chunking, events, ground truth."""

import numpy as np
import pytest

from models.synthetic import Event, SyntheticPatient, synth_ecg


def test_deterministic_and_seed_dependent():
    a = synth_ecg(30, 250, seed=7)
    b = synth_ecg(30, 250, seed=7)
    c = synth_ecg(30, 250, seed=8)
    np.testing.assert_array_equal(a.signal_mv, b.signal_mv)
    np.testing.assert_array_equal(a.beat_samples, b.beat_samples)
    assert not np.allclose(a.signal_mv[:1000], c.signal_mv[:1000])


def test_heart_rate_and_lengths():
    rec = synth_ecg(60, 360, hr_bpm=75, seed=3)
    assert rec.signal_mv.shape == (21600,)
    assert rec.sample_rate_hz == 360.0
    assert abs(len(rec.beat_samples) - 75) <= 4
    assert set(rec.beat_labels) == {"N"}
    # The signal peaks near annotated R peaks for an upright-QRS patient.
    assert np.all(np.diff(rec.beat_samples) > 0)


def test_pvc_is_premature_with_compensatory_pause():
    rec = synth_ecg(30, 250, hr_bpm=60, seed=2, events=[Event("pvc", 15.0)])
    (i,) = np.flatnonzero(rec.beat_labels == "V")
    rr_prev, rr_next = rec.rr_s[i], rec.rr_s[i + 1]
    rr_normal = rec.rr_s[i - 1]
    assert rr_prev < 0.75 * rr_normal
    assert rr_next > 1.2 * rr_normal
    assert abs(rec.beat_samples[i] / 250 - 15.0) < 1.5


def test_vrun_pause_lead_off_annotations():
    events = [
        Event("vrun", 10.0, 2.0, {"rate_bpm": 180}),
        Event("pause", 20.0, 3.0),
        Event("lead_off", 30.0, 5.0),
    ]
    rec = synth_ecg(45, 250, seed=4, events=events)
    v = np.flatnonzero(rec.beat_labels == "V")
    assert len(v) >= 3 and np.all(np.diff(v) == 1)
    assert np.allclose(np.diff(rec.beat_samples[v]) / 250, 60 / 180, atol=0.01)
    t = rec.beat_samples / 250
    assert not np.any((t >= 20.0) & (t < 23.0))
    assert not np.any((t >= 30.0) & (t < 35.0))
    flat = rec.signal_mv[int(30.5 * 250) : int(34.5 * 250)]
    assert np.std(flat) < 0.005


def test_tachy_brady_afib_change_rhythm():
    events = [Event("tachy", 20, 20, {"hr_bpm": 150}), Event("brady", 60, 20), Event("afib", 100, 40)]
    rec = synth_ecg(150, 250, hr_bpm=70, seed=5, events=events)
    t, rr = rec.beat_samples / 250, rec.rr_s
    in_tachy = (t > 26) & (t < 34)
    in_brady = (t > 66) & (t < 74)
    assert 135 < 60 / np.mean(rr[in_tachy]) < 165
    assert 35 < 60 / np.mean(rr[in_brady]) < 45
    sinus = (t > 2) & (t < 18)
    af = (t > 102) & (t < 140)
    cv = lambda r: np.std(r) / np.mean(r)  # noqa: E731
    assert cv(rr[af]) > 2 * cv(rr[sinus])


def test_wander_and_motion_add_power_where_injected():
    clean = synth_ecg(40, 250, seed=6)
    dirty = synth_ecg(40, 250, seed=6, events=[Event("wander", 5, 10), Event("motion", 25, 10)])
    diff = dirty.signal_mv - clean.signal_mv
    assert np.allclose(diff[: 5 * 250], 0)
    assert np.std(diff[6 * 250 : 14 * 250]) > 0.2
    assert np.std(diff[26 * 250 : 34 * 250]) > 0.3
    np.testing.assert_array_equal(dirty.beat_samples, clean.beat_samples)


def test_patient_variation_changes_morphology():
    amps = [np.ptp(synth_ecg(10, 250, seed=s, noise_mv=0).signal_mv) for s in range(6)]
    assert np.std(amps) > 0.1
    fixed = [np.ptp(synth_ecg(10, 250, seed=s, noise_mv=0, patient_variation=False).signal_mv) for s in range(3)]
    assert np.std(fixed) < 0.1


def test_patient_stream_matches_record_whatever_the_chunking():
    events = [Event("pvc", 5.0), Event("motion", 8, 2), Event("lead_off", 12, 1)]
    rec = synth_ecg(20, 250, seed=9, events=events)
    p = SyntheticPatient("p-9", 250, events=events, seed=9)
    rng = np.random.default_rng(0)
    parts, n = [], 0
    while n < 5000:
        k = min(int(rng.integers(1, 700)), 5000 - n)
        parts.append(p.next_chunk(k))
        n += k
    np.testing.assert_allclose(np.concatenate(parts), rec.signal_mv, atol=1e-12)
    truth = p.beats_between(0, 20)
    assert [round(t * 250) for t, _ in truth] == rec.beat_samples.tolist()
    assert [lab for _, lab in truth] == rec.beat_labels.tolist()


def test_patient_seed_from_id():
    a = SyntheticPatient("bed-1").next_chunk(500)
    b = SyntheticPatient("bed-1").next_chunk(500)
    c = SyntheticPatient("bed-2").next_chunk(500)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(duration_s=0), "duration_s"),
        (dict(duration_s=1, sample_rate_hz=10), "sample_rate_hz"),
        (dict(duration_s=1, hr_bpm=400), "hr_bpm"),
    ],
)
def test_bad_arguments_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        synth_ecg(**kwargs)


def test_bad_event_named():
    with pytest.raises(ValueError, match="kind"):
        Event("stroke", 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="start_s"):
        Event("pvc", -1.0)
