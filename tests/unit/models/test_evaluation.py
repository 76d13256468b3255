"""Tests for models.evaluation (metrics) and models.plots (PNG output)."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from models.evaluation import (
    aami_counts,
    auroc,
    evaluate_record,
    flagged_fraction_by_class,
    match_beats,
    pool,
    qrs_sensitivity_ppv,
    roc_curve,
)


def brute_auroc(pos, neg) -> float:
    total = 0.0
    for p, n in itertools.product(pos, neg):
        total += 1.0 if p > n else 0.5 if p == n else 0.0
    return total / (len(pos) * len(neg))


# --- match_beats -------------------------------------------------------------------


def test_match_beats_hand_computed():
    fs = 100.0  # tolerance 0.15 s = 15 samples
    ref = [100, 200, 300, 400]
    det = [105, 216, 290, 500, 302]
    m = match_beats(ref, det, fs)
    # 100<->105 (5), 200<->216 is 16 > 15 -> miss, 300<->302 (2) beats 300<->290 (10),
    # 400 has no detection; 216, 290, 500 are false detections.
    assert (m.tp, m.fn, m.fp) == (2, 2, 3)
    assert m.pairs.tolist() == [[0, 0], [2, 4]]
    se, ppv = qrs_sensitivity_ppv(m)
    assert se == pytest.approx(0.5)
    assert ppv == pytest.approx(2 / 5)


def test_match_beats_is_one_to_one_and_boundary_inclusive():
    # one detection halfway between two close reference beats can match only one
    m = match_beats([0, 20], [10], fs=100.0, window_s=0.1)
    assert (m.tp, m.fn, m.fp) == (1, 1, 0)
    assert m.pairs.tolist() == [[0, 0]]  # tie broken by reference index
    # exactly at the tolerance counts as a match
    assert match_beats([0], [15], fs=100.0).tp == 1
    assert match_beats([0], [16], fs=100.0).tp == 0


def test_match_beats_order_independent_and_empty():
    rng = np.random.default_rng(0)
    ref = np.sort(rng.choice(100_000, 300, replace=False))
    det = ref + rng.integers(-60, 60, ref.size)
    perm = rng.permutation(det.size)
    a, b = match_beats(ref, det, 360), match_beats(ref, det[perm], 360)
    assert (a.tp, a.fn, a.fp) == (b.tp, b.fn, b.fp)
    assert a.pairs[:, 0].tolist() == b.pairs[:, 0].tolist()
    assert det[perm][b.pairs[:, 1]].tolist() == det[a.pairs[:, 1]].tolist()
    e = match_beats([], [1, 2], 250)
    assert (e.tp, e.fn, e.fp) == (0, 0, 2)
    se, ppv = qrs_sensitivity_ppv(e)
    assert math.isnan(se) and ppv == 0.0


def test_match_beats_validates():
    with pytest.raises(ValueError, match="fs"):
        match_beats([1], [1], fs=0)
    with pytest.raises(ValueError, match="ref_samples"):
        match_beats([[1, 2]], [1], fs=250)


# --- auroc / roc ---------------------------------------------------------------------


def test_auroc_hand_computed_and_ties():
    assert auroc([3, 4], [1, 2]) == 1.0
    assert auroc([1, 2], [3, 4]) == 0.0
    # pairs: (2,1)=1 (2,2)=.5 (2,3)=0 (3,1)=1 (3,2)=1 (3,3)=.5 -> 4/6
    assert auroc([2, 3], [1, 2, 3]) == pytest.approx(4 / 6)
    assert auroc([5, 5], [5, 5, 5]) == 0.5


def test_auroc_matches_brute_force_on_random_tied_data():
    rng = np.random.default_rng(1)
    for _ in range(20):
        pos = rng.integers(0, 6, rng.integers(1, 30)).astype(float)
        neg = rng.integers(0, 5, rng.integers(1, 30)).astype(float)
        assert auroc(pos, neg) == pytest.approx(brute_auroc(pos, neg), abs=1e-12)


def test_auroc_nan_when_class_empty_and_rejects_nan_scores():
    assert math.isnan(auroc([], [1.0]))
    assert math.isnan(auroc([1.0], []))
    with pytest.raises(ValueError, match="non-finite"):
        auroc([np.nan], [1.0])


def test_roc_curve_area_equals_auroc():
    rng = np.random.default_rng(2)
    pos = rng.integers(0, 8, 40).astype(float)
    neg = rng.integers(0, 6, 55).astype(float)
    fpr, tpr, thr = roc_curve(pos, neg)
    assert fpr[0] == tpr[0] == 0.0 and fpr[-1] == tpr[-1] == 1.0
    assert np.isinf(thr[0]) and np.all(np.diff(thr[1:]) < 0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(auroc(pos, neg), abs=1e-12)


def test_roc_curve_hand_computed():
    fpr, tpr, thr = roc_curve([3.0, 2.0], [2.0, 1.0])
    assert thr.tolist()[1:] == [3.0, 2.0, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 1.0, 1.0]
    assert fpr.tolist() == [0.0, 0.0, 0.5, 1.0]


# --- class summaries ---------------------------------------------------------------


def test_aami_counts_and_flagged_fraction():
    cls = ["N", "N", "V", "S", "N", "V"]
    assert aami_counts(cls) == {"N": 3, "S": 1, "V": 2, "F": 0, "Q": 0}
    ff = flagged_fraction_by_class(cls, [True, False, True, False, False, False])
    assert ff["N"] == pytest.approx(1 / 3) and ff["V"] == 0.5 and ff["S"] == 0.0
    assert math.isnan(ff["F"]) and math.isnan(ff["Q"])
    with pytest.raises(ValueError, match="'X'"):
        aami_counts(["N", "X"])
    with pytest.raises(ValueError, match="flagged"):
        flagged_fraction_by_class(["N"], [True, False])


def _record():
    fs = 250.0
    ref = np.array([100, 300, 500, 700, 900, 1100])
    cls = np.array(["N", "V", "N", "S", "N", "F"])
    # detections: beat 700 missed, one extra detection at 1300 (flagged)
    det = np.array([102, 298, 505, 899, 1101, 1300])
    scores = np.array([0.1, 0.9, 0.2, 0.3, 0.6, 0.8])
    flagged = scores >= 0.5
    return ref, cls, det, scores, flagged, fs


def test_evaluate_record_hand_computed():
    ref, cls, det, scores, flagged, fs = _record()
    ev = evaluate_record(ref, cls, det, scores, flagged, fs, name="r1")
    assert (ev.tp, ev.fn, ev.fp) == (5, 1, 1)
    assert ev.qrs_sensitivity == pytest.approx(5 / 6)
    assert ev.qrs_ppv == pytest.approx(5 / 6)
    assert ev.reference_counts == {"N": 3, "S": 1, "V": 1, "F": 1, "Q": 0}
    assert ev.matched_counts == {"N": 3, "S": 0, "V": 1, "F": 1, "Q": 0}
    # N scores 0.1, 0.2, 0.3 ; V 0.9 ; F 0.6
    assert ev.auroc["V_vs_N"] == 1.0
    assert math.isnan(ev.auroc["S_vs_N"])
    assert ev.auroc["SVF_vs_N"] == 1.0
    assert ev.flagged_fraction["V"] == 1.0 and ev.flagged_fraction["F"] == 1.0
    assert ev.n_false_positive_rate == 0.0
    assert ev.false_detections_flagged == 1
    d = ev.to_dict()
    json.dumps(d, allow_nan=False)  # JSON-safe: NaN became None
    assert d["auroc"]["S_vs_N"] is None and d["name"] == "r1"


def test_evaluate_record_validates_lengths():
    ref, cls, det, scores, flagged, fs = _record()
    with pytest.raises(ValueError, match="ref_aami"):
        evaluate_record(ref, cls[:-1], det, scores, flagged, fs)
    with pytest.raises(ValueError, match="equal lengths"):
        evaluate_record(ref, cls, det, scores[:-1], flagged, fs)


def test_qrs_figures_leave_out_vf_episodes():
    fs = 100.0
    # beats every second; during VF (10-20 s) the reference has no beats, the detector
    # fires on flutter waves 4 times a second, and one reference beat sits on the bound
    ref = np.array([100 * k for k in range(10)] + [2000, 2100])
    cls = ["N"] * ref.size
    vf_det = np.arange(1000, 2000, 25)  # 40 false detections inside VF
    det = np.concatenate([ref[:-1], vf_det])  # the last reference beat (21 s) is missed
    scores = np.linspace(0, 1, det.size)
    flagged = scores > 0.9
    plain = evaluate_record(ref, cls, det, scores, flagged, fs)
    assert (plain.tp, plain.fn, plain.fp) == (11, 1, 40)
    ev = evaluate_record(ref, cls, det, scores, flagged, fs, exclude_s=[(10.0, 20.0)])
    # the beat at 20.0 s (on the closed bound) and its detection are left out too
    assert (ev.tp, ev.fn, ev.fp) == (10, 1, 0)
    assert ev.qrs_ppv == 1.0 and ev.qrs_sensitivity == pytest.approx(10 / 11)
    assert (ev.excluded_reference, ev.excluded_detections) == (1, 41)
    # everything else is computed as before, over every matched beat
    assert ev.matched_counts == plain.matched_counts
    assert ev.false_detections_flagged == plain.false_detections_flagged
    assert ev.to_dict()["qrs_excluded"] == {"reference": 1, "detections": 41}
    p = pool([ev, plain])
    assert p["qrs_excluded"] == {"reference": 1, "detections": 41} and p["fp"] == 40
    with pytest.raises(ValueError, match="exclude_s"):
        evaluate_record(ref, cls, det, scores, flagged, fs, exclude_s=[(20.0, 10.0)])


def test_pool_pools_scores_not_mean_of_aurocs():
    fs = 100.0
    # record A: N scores high-ish, V higher -> AUROC 1 ; record B likewise AUROC 1,
    # but B's V scores sit below A's N scores, so the pooled AUROC is below 1.
    a = evaluate_record([0, 100, 200], ["N", "N", "V"], [0, 100, 200], [5.0, 6.0, 7.0], [0, 0, 1], fs)
    b = evaluate_record([0, 100, 200], ["N", "N", "V"], [0, 100, 200], [1.0, 2.0, 3.0], [0, 0, 1], fs)
    assert a.auroc["V_vs_N"] == b.auroc["V_vs_N"] == 1.0
    p = pool([a, b])
    # V = {7, 3}, N = {5, 6, 1, 2}: 7 beats 4, 3 beats 2 -> 6/8
    assert p["auroc"]["V_vs_N"] == pytest.approx(brute_auroc([7, 3], [5, 6, 1, 2])) == 0.75
    assert p["n_records"] == 2 and p["tp"] == 6 and p["qrs_sensitivity"] == 1.0
    assert p["matched_counts"]["N"] == 4 and p["flagged_fraction"]["V"] == 1.0
    json.dumps(p, allow_nan=False)
    empty = pool([])
    assert empty["n_records"] == 0 and empty["auroc"]["V_vs_N"] is None


# --- plots ---------------------------------------------------------------------------


def _png_ok(path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_write_png(tmp_path):
    from models.plots import plot_hr_trace, plot_roc, plot_score_trace

    t = np.linspace(0, 60, 80)
    scores = np.abs(np.sin(t))
    p1 = plot_score_trace(
        tmp_path / "trace.png", t, scores, 0.8, ref_times_s=[1.0, 5.0, 9.0], ref_classes=["N", "V", "S"],
        title="rec 100",
    )
    fpr, tpr, _ = roc_curve([3.0, 2.0, 1.5], [2.0, 1.0, 0.5])
    p2 = plot_roc(tmp_path / "sub" / "roc.png", {"V vs N": (fpr, tpr, auroc([3, 2, 1.5], [2, 1, 0.5]))})
    p3 = plot_hr_trace(
        tmp_path / "hr.png", t, 70 + 5 * np.sin(t), score_time_s=t[::4], scores=scores[::4], threshold=0.5,
        events=[("afib", 10.0, 20.0)], title="patient 1",
    )
    for p in (p1, p2, p3):
        assert _png_ok(p)


def test_alert_timeline_png(tmp_path):
    from models.plots import plot_alert_timeline

    p = plot_alert_timeline(tmp_path / "t" / "alerts.png", 1800.0,
                            {"vt": [(100.0, 104.0)], "af": [(300.0, 900.0), (1000.0, 1200.0)]},
                            [("ventricular_run", "high", 101.0, 140.0),
                             ("irregular_rhythm", "medium", 330.0, 950.0),
                             ("anomalous_beats", "low", 1500.0, 1500.5)], title="rec 1")
    assert _png_ok(p)
    assert _png_ok(plot_alert_timeline(tmp_path / "day.png", 86_400.0, {}, [], title="quiet day"))
    with pytest.raises(ValueError, match="priority"):
        plot_alert_timeline(tmp_path / "x.png", 60.0, {}, [("pause", "urgent", 1.0, 2.0)])
    with pytest.raises(ValueError, match="duration_s"):
        plot_alert_timeline(tmp_path / "x.png", 0.0, {}, [])


def test_plot_validates_lengths(tmp_path):
    from models.plots import plot_score_trace

    with pytest.raises(ValueError, match="scores"):
        plot_score_trace(tmp_path / "x.png", [0.0, 1.0], [1.0], 0.5, [], [], "t")
