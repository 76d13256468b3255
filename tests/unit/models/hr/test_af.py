"""AF stage (models/hr/af.py, models/hr/af_train.py): features on synthetic RR, the detector's
contract, the alert rule, folds and the threshold from a false-alert rate."""

from __future__ import annotations

import numpy as np
import pytest

from models.episodes import Episode, TruthEpisodes
from models.hr.af import AF_WINDOW_BEATS, FEATURES, AFAlertRule, AFDetector, AFError, af_alert_spans, af_features
from models.hr.af_train import AlertTable, af_rows, assign_folds, fit_af, train_af
from models.hr.data import RRSeries

W = AF_WINDOW_BEATS


def col(x: np.ndarray, name: str) -> np.ndarray:
    return x[:, FEATURES.index(name)]


def regular(rng: np.random.Generator, n: int, rr: float = 0.8) -> np.ndarray:
    return rr + 0.005 * rng.standard_normal(n)


def sinus_arrhythmia(rng: np.random.Generator, n: int) -> np.ndarray:
    # respiratory sinus arrhythmia: RR swings +-12 % over a ~5-beat breathing cycle
    i = np.arange(n)
    return 0.9 * (1 + 0.12 * np.sin(2 * np.pi * i / 5.3)) + 0.004 * rng.standard_normal(n)


def isolated_ectopy(rng: np.random.Generator, n: int, every: int = 12) -> np.ndarray:
    rr = regular(rng, n, 0.85)
    for k in range(5, n - 1, every):  # a premature beat, then its compensatory pause
        rr[k], rr[k + 1] = 0.55, 1.15
    return rr


def af_like(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(0.4, 1.0, n)  # irregularly irregular, ~86 bpm


def windows(rr: np.ndarray) -> np.ndarray:
    return np.lib.stride_tricks.sliding_window_view(rr, W)[::4]


@pytest.fixture(scope="module")
def feats() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    return {name: af_features(windows(make(rng, 400)))
            for name, make in (("regular", regular), ("sinus_arrhythmia", sinus_arrhythmia),
                               ("ectopy", isolated_ectopy), ("af", af_like))}


# ---------------------------------------------------------------------------- features
def test_feature_shape_names_and_validation() -> None:
    rng = np.random.default_rng(0)
    x = af_features(windows(af_like(rng, 200)))
    assert x.shape == (len(windows(np.zeros(200))), len(FEATURES)) and x.dtype == np.float64
    assert len(set(FEATURES)) == len(FEATURES) and "w64_nrmssd" in FEATURES
    assert not any("hr_bpm" in f for f in FEATURES)  # the rate itself is not a feature
    assert af_features(np.zeros((0, W)) + 1).shape == (0, len(FEATURES))
    with pytest.raises(AFError, match=f"\\[n, {W}\\]"):
        af_features(np.ones((3, W - 1)))
    with pytest.raises(AFError, match="finite and > 0"):
        af_features(np.concatenate([np.ones((1, W - 1)), [[np.nan]]], axis=1))


def test_features_are_scale_free_and_causal() -> None:
    rng = np.random.default_rng(1)
    w = windows(af_like(rng, 300))
    # the same rhythm 20 % faster gives the same features (RR stay inside the clip range)
    np.testing.assert_allclose(af_features(0.8 * w), af_features(w), rtol=1e-9, atol=1e-9)
    # a window's features depend on its own intervals only, not on which rows are batched
    np.testing.assert_array_equal(af_features(w[3:4]), af_features(w)[3:4])


def test_af_is_irregular_regular_rhythm_is_not(feats) -> None:
    af, reg = feats["af"], feats["regular"]
    for name in ("w64_nrmssd", "w64_mad_drr", "w32_sampen", "w64_ent_drr"):
        assert col(af, name).min() > col(reg, name).max(), name
    # independent RR: about 2/3 of the points are turning points, lag-1 acf of dRR ~ -0.5
    assert abs(np.median(col(af, "w64_tpr")) - 2 / 3) < 0.08
    assert abs(np.median(col(af, "w64_acf1_drr")) + 0.5) < 0.15


def test_sinus_arrhythmia_changes_smoothly(feats) -> None:
    sa, af, reg = feats["sinus_arrhythmia"], feats["af"], feats["regular"]
    # far more variable than a regular rhythm, but the differences are ordered
    assert np.median(col(sa, "w64_cv")) > 5 * np.median(col(reg, "w64_cv"))
    assert np.median(col(sa, "w64_tpr")) < 0.5 < np.median(col(af, "w64_tpr"))
    assert np.median(col(sa, "w64_acf1_drr")) > 0.3 > np.median(col(af, "w64_acf1_drr"))
    assert np.median(col(sa, "w32_sampen")) < np.median(col(af, "w32_sampen"))


def test_isolated_ectopy_leaves_a_stable_baseline(feats) -> None:
    ect, af, reg = feats["ectopy"], feats["af"], feats["regular"]
    # RMSSD sees the premature-compensatory pairs...
    assert np.median(col(ect, "w64_nrmssd")) > 5 * np.median(col(reg, "w64_nrmssd"))
    # ...the ectopy-robust features do not
    assert col(ect, "w64_ectopic_frac").min() > 0 == col(reg, "w64_ectopic_frac").max()
    assert np.median(col(ect, "w64_nrmssd_clean")) < 2 * np.median(col(reg, "w64_nrmssd_clean"))
    assert np.median(col(ect, "w64_mad_drr")) < 0.25 * np.median(col(af, "w64_mad_drr"))
    assert np.median(col(ect, "w64_q75_drr")) < 0.25 * np.median(col(af, "w64_q75_drr"))


# ---------------------------------------------------------------------------- alert rule
def test_alert_rule_opens_after_sustain_and_clears_after_clear_time() -> None:
    t = np.arange(0, 400, 1.0)
    p = np.where((t >= 100) & (t < 200), 0.9, 0.1)
    rule = AFAlertRule(sustain_s=20, clear_s=30, cooldown_s=60)
    assert af_alert_spans(t, p, 0.8, rule) == [(100.0, 120.0, 230.0)]
    # a dip shorter than clear_s keeps it open; NaN (no window yet) neither sustains nor clears
    p2 = p.copy()
    p2[150:170] = 0.1
    p2[0:50] = np.nan
    assert af_alert_spans(t, p2, 0.8, rule) == [(100.0, 120.0, 230.0)]
    # still open at the end of the series
    assert af_alert_spans(t[:180], p[:180], 0.8, rule) == [(100.0, 120.0, None)]
    # a gap longer than max_gap_s restarts the sustain
    tg = np.concatenate([np.arange(0, 15.0), np.arange(40, 61.0)])
    assert af_alert_spans(tg, np.full(tg.size, 0.9), 0.8, rule) == [(40.0, 60.0, None)]


def test_alert_rule_cooldown_delays_a_new_episode() -> None:
    t = np.arange(0, 500, 1.0)
    p = np.where(((t >= 50) & (t < 100)) | (t >= 140), 0.9, 0.1)
    rule = AFAlertRule(sustain_s=10, clear_s=10, cooldown_s=60)
    # cleared at 110; AF again from 140, sustained at 150, but no new alert before 170
    assert af_alert_spans(t, p, 0.8, rule) == [(50.0, 60.0, 110.0), (140.0, 170.0, None)]
    with pytest.raises(AFError, match="clear_s"):
        AFAlertRule(clear_s=-1)


# ---------------------------------------------------------------------------- detector
def _series(name: str, rr: np.ndarray, af: np.ndarray, rhythm_known: bool = True) -> RRSeries:
    end = np.cumsum(rr)
    rhythm = np.where(af, "AFIB", "N" if rhythm_known else "")
    episodes = []
    edges = np.flatnonzero(np.diff(np.concatenate([[0], af.astype(int), [0]])))
    for a, b in zip(edges[::2], edges[1::2]):
        episodes.append(Episode(float(end[a] - rr[a]), float(end[b - 1]), "AF"))
    return RRSeries(name=name, end_s=end, rr_s=rr, rhythm=rhythm, aami=np.full(rr.size, "N"),
                    gap_before=np.zeros(rr.size, bool), duration_s=float(end[-1]),
                    truth=TruthEpisodes(af=tuple(episodes)))


def _cohort(seed: int = 0) -> list[RRSeries]:
    """Synthetic patients: half with an AF episode inside sinus rhythm, half sinus with ectopy."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(10):
        if i % 2 == 0:
            parts = [sinus_arrhythmia(rng, 600), af_like(rng, 500), regular(rng, 400, 0.9)]
            af = np.concatenate([np.zeros(600, bool), np.ones(500, bool), np.zeros(400, bool)])
            out.append(_series(f"ltafdb/{i:02d}", np.concatenate(parts), af))
        else:
            rr = np.concatenate([isolated_ectopy(rng, 800), sinus_arrhythmia(rng, 700)])
            out.append(_series(f"nsr2db/nsr{i:03d}", rr, np.zeros(rr.size, bool)))
    return out


@pytest.fixture(scope="module")
def detector() -> AFDetector:
    rows = [af_rows(s, step=2) for s in _cohort(0)]
    det = fit_af(rows, seed=0, n_trees=30, sinus_step=1, params={"min_data_in_leaf": 20})
    return AFDetector(det.ensemble, 0.6)


def test_detector_scores_af_above_sinus_and_ectopy(detector) -> None:
    rng = np.random.default_rng(9)
    p_af = detector.score(windows(af_like(rng, 300)))
    p_ect = detector.score(windows(isolated_ectopy(rng, 300)))
    p_sa = detector.score(windows(sinus_arrhythmia(rng, 300)))
    assert p_af.shape == (len(windows(np.zeros(300))),) and p_af.dtype == np.float64
    assert np.all((p_af >= 0) & (p_af <= 1))
    assert p_af.min() > max(p_ect.max(), p_sa.max())
    pred = detector.predict(windows(af_like(rng, 300)))
    assert pred.flagged.all() and pred.threshold == 0.6


def test_detector_round_trips_and_rejects_other_files(detector) -> None:
    rng = np.random.default_rng(3)
    w = windows(af_like(rng, 200))
    back = AFDetector.from_bytes(detector.to_bytes())
    np.testing.assert_array_equal(back.score(w), detector.score(w))
    assert back.threshold == detector.threshold and back.rule == detector.rule
    with pytest.raises(AFError, match="not an AF detector file"):
        AFDetector.from_bytes(b"junk")
    with pytest.raises(AFError, match="threshold"):
        AFDetector(detector.ensemble, 1.5)
    with pytest.raises(AFError, match="no threshold"):
        AFDetector(detector.ensemble).predict(w)


def test_seeded_training_reproduces() -> None:
    rows = [af_rows(s, step=4) for s in _cohort(1)]
    a = fit_af(rows, seed=3, n_trees=10, sinus_step=1, params={"min_data_in_leaf": 20})
    b = fit_af(rows, seed=3, n_trees=10, sinus_step=1, params={"min_data_in_leaf": 20})
    x = rows[0].x
    np.testing.assert_array_equal(a.score_features(x), b.score_features(x))


# ---------------------------------------------------------------------------- rows, folds, threshold
def test_rows_leave_out_transitions_flutter_and_unlabelled_windows() -> None:
    s = _cohort(2)[0]
    r = af_rows(s, step=1)
    assert r.x.shape == (len(s) - W + 1, len(FEATURES)) and r.end_s[0] == s.end_s[W - 1]
    frac = np.convolve(s.af.astype(float), np.ones(W), "valid") / W
    assert not r.trainable[(frac > 0.1) & (frac < 0.9)].any()
    assert r.trainable[frac == 0].all() and r.trainable[frac == 1].all()
    unknown = _series("svdb/800", s.rr_s, np.zeros(len(s), bool), rhythm_known=False)
    assert not af_rows(unknown, 4).trainable.any()  # no rhythm labels and no S beat


def test_folds_are_by_patient_seeded_and_spread_the_af_patients() -> None:
    cohort = _cohort(0)
    a, b = assign_folds(cohort, 5, seed=0), assign_folds(cohort, 5, seed=0)
    assert a == b and set(a) == {s.name for s in cohort} and set(a.values()) == set(range(5))
    af_folds = [a[s.name] for s in cohort if s.af.any()]
    assert len(set(af_folds)) == len(af_folds)  # 5 AF patients in 5 different folds
    with pytest.raises(AFError, match="k must be"):
        assign_folds(cohort, 1)


def test_threshold_is_the_lowest_meeting_the_false_alert_rate() -> None:
    # one AF-free patient-day whose probability has three 60 s excursions to 0.7, 0.8, 0.9
    t = np.arange(0, 86_400.0, 2.0)
    p = np.full(t.size, 0.05)
    for start, level in ((10_000, 0.7), (30_000, 0.8), (50_000, 0.9)):
        p[(t >= start) & (t < start + 60)] = level
    from models.hr.af_train import AFRows

    s = _series("nsr2db/x", np.diff(np.concatenate([[0], t])), np.zeros(t.size, bool))
    rows = AFRows(s.name, t, np.zeros((t.size, len(FEATURES)), np.float32), np.zeros(t.size, bool),
                  np.ones(t.size, bool))
    table = AlertTable([s], [rows], [p], grid=(0.6, 0.75, 0.85, 0.95), rule=AFAlertRule())
    assert [table.figures(g)["false_af"] for g in table.grid] == [3, 2, 1, 0]
    assert table.choose(2.1) == 0.75 and table.choose(1.1) == 0.85 and table.choose(0.5) == 0.95
    assert table.figures(0.6)["false_af_per_patient_day_sinus_databases"] == pytest.approx(3.0, rel=1e-3)
    with pytest.raises(AFError, match="max_false_per_day"):
        table.choose(0)
    # a target no grid value meets: choose refuses; training takes the fewest and says so
    table2 = AlertTable([s], [rows], [p], grid=(0.6, 0.75, 0.85), rule=AFAlertRule())
    with pytest.raises(AFError, match="no threshold"):
        table2.choose(0.5)
    assert table2.choose_or_fewest(0.5) == (0.85, False)
    assert table2.choose_or_fewest(2.1) == (0.75, True)
    with pytest.raises(AFError, match="max_false_per_day"):
        table2.choose_or_fewest(-1)


def test_train_af_reports_folds_and_ships_a_thresholded_detector() -> None:
    cohort = _cohort(4)
    res = train_af(cohort, k=5, seed=0, max_false_per_day=50.0, n_trees=20, step=4, sinus_step=1,
                   progress=False)
    assert res.detector.threshold is not None and len(res.folds) == 5 == len(res.fold_detectors)
    assert sorted(r for f in res.folds for r in f["records_in_fold"]) == sorted(s.name for s in cohort)
    assert res.pooled["af_episodes_30s"] == "5/5"  # synthetic AF is easy, even held out
    assert res.pooled["false_af_per_patient_day"] <= 50.0
    assert set(res.oof) == {s.name for s in cohort}
