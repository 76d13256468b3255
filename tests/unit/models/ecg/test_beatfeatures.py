"""Beat context: features against the patient's own dominant beat, learnt causally."""

from __future__ import annotations

import numpy as np
import pytest

from models.beats import Beat
from models.ecg.beatfeatures import FEATURE_NAMES, BeatContext, BeatContextState, beat_feature_matrix

R = 30  # R index in the 80-sample window at 125 Hz
T = np.arange(80)


def normal_wave(amp: float = 1.0) -> np.ndarray:
    qrs = amp * np.exp(-0.5 * ((T - R) / 1.5) ** 2)  # narrow (~30 ms) upright QRS
    t_wave = 0.2 * amp * np.exp(-0.5 * ((T - R - 35) / 5.0) ** 2)
    return (qrs + t_wave).astype(np.float32)


def pvc_wave() -> np.ndarray:
    qrs = -1.6 * np.exp(-0.5 * ((T - R) / 6.0) ** 2)  # wide (~120 ms) inverted QRS
    t_wave = 0.5 * np.exp(-0.5 * ((T - R - 30) / 7.0) ** 2)  # discordant T
    return (qrs + t_wave).astype(np.float32)


def beat(i: int, wave: np.ndarray, rr_prev: float | None, rr_next: float | None, mean: float | None = 0.8,
         quality: float = 1.0) -> Beat:
    return Beat(r_index=100 * i, waveform=wave, rr_prev_s=rr_prev, rr_next_s=rr_next, rr_local_mean_s=mean,
                quality=quality)


def col(x: np.ndarray, name: str) -> np.ndarray:
    return x[:, FEATURE_NAMES.index(name)]


def sinus(n: int, start: int = 0) -> list[Beat]:
    return [beat(start + i, normal_wave(1.0 + 0.01 * (i % 3)), 0.8, 0.8) for i in range(n)]


def test_template_starts_after_eight_regular_beats_and_matches_them() -> None:
    x, st = beat_feature_matrix(sinus(12))
    ready = col(x, "tpl_ready")
    assert ready[:8].tolist() == [0.0] * 8 and ready[8:].tolist() == [1.0] * 4
    assert np.isnan(col(x, "tpl_corr_qrs")[:8]).all()
    assert (col(x, "tpl_corr_qrs")[8:] > 0.99).all()
    assert np.abs(col(x, "tpl_width_diff_ms")[8:]).max() <= 8.0
    assert st.template_ready
    assert np.allclose(col(x, "rr_prev_dominant")[9:], 1.0, atol=1e-3)


def test_a_premature_wide_beat_looks_unlike_the_template() -> None:
    beats = sinus(12) + [beat(12, pvc_wave(), 0.45, 1.15)] + sinus(3, 13)
    x, _ = beat_feature_matrix(beats)
    pvc, after = x[12], x[13]
    assert pvc[FEATURE_NAMES.index("tpl_corr_qrs")] < 0.3
    assert pvc[FEATURE_NAMES.index("tpl_width_diff_ms")] >= 40
    assert pvc[FEATURE_NAMES.index("rr_prev_local")] == pytest.approx(0.45 / 0.8)
    assert pvc[FEATURE_NAMES.index("rr_prev_dominant")] == pytest.approx(0.45 / 0.8, rel=1e-3)
    # the beat after it sees the ectopic beat before it
    assert after[FEATURE_NAMES.index("prev_tpl_corr")] < 0.3
    assert after[FEATURE_NAMES.index("tpl_corr_qrs")] > 0.99


def test_a_fast_run_never_becomes_the_template() -> None:
    beats = sinus(12) + [beat(12 + i, pvc_wave(), 0.4, 0.4, mean=0.4) for i in range(60)] + sinus(2, 72)
    x, st = beat_feature_matrix(beats)
    assert (col(x, "tpl_corr_qrs")[12:72] < 0.3).all(), "the run kept looking unlike the patient's beat"
    assert col(x, "tpl_corr_qrs")[-1] > 0.99
    # against the dominant rhythm, every beat of the run stays premature
    assert (col(x, "rr_prev_dominant")[13:72] < 0.55).all()


def test_a_new_dominant_morphology_takes_over_after_forty_beats() -> None:
    other = [beat(12 + i, -normal_wave(), 0.8, 0.8) for i in range(60)]  # e.g. a lead change
    x, _ = beat_feature_matrix(sinus(12) + other)
    c = col(x, "tpl_corr_qrs")
    assert (c[12:50] < 0).all() and (c[-5:] > 0.9).all()


def test_noisy_beats_teach_nothing() -> None:
    noisy = [beat(i, normal_wave() * -1, 0.8, 0.8, quality=0.2) for i in range(20)]
    x, st = beat_feature_matrix(noisy)
    assert not st.template_ready and (col(x, "tpl_ready") == 0).all()


def test_state_round_trip_continues_bit_identically() -> None:
    beats = sinus(10) + [beat(10, pvc_wave(), 0.45, 1.15)] + sinus(10, 11)
    whole, _ = beat_feature_matrix(beats)
    ctx = BeatContext()
    a, st = ctx.observe(ctx.initial_state(), beats[:7])  # mid-way through the start phase
    st = BeatContextState.from_bytes(st.to_bytes())
    b, st = ctx.observe(st, beats[7:15])
    st = BeatContextState.from_bytes(st.to_bytes())
    c, _ = ctx.observe(st, beats[15:])
    np.testing.assert_array_equal(np.concatenate([a, b, c]), whole)
    assert len(st.to_bytes()) < 600, "the per-patient state should stay a few hundred bytes"


def test_bad_inputs_name_the_problem() -> None:
    with pytest.raises(ValueError, match="80 samples"):
        beat_feature_matrix([beat(0, np.zeros(60, np.float32), None, None)])
    with pytest.raises(ValueError, match="must start with"):
        BeatContextState.from_bytes(b"nope" + bytes(40))
    raw = BeatContextState().to_bytes()
    with pytest.raises(ValueError, match="bytes"):
        BeatContextState.from_bytes(raw + b"\0\0")
