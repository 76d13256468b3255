"""VF detector training (models/ecg/vf_train.py): patients, labels, folds, alarm runs, reproducible training."""

from __future__ import annotations

import numpy as np
import pytest

from models.ecg.vf import FEATURE_NAMES, VFDetector, VFSettings
from models.ecg.vf_train import (
    WindowSet,
    alarm_times,
    assign_folds,
    cross_validate,
    patient_of,
    train_vf,
    window_labels,
)
from models.episodes import Episode


@pytest.mark.parametrize(("folder", "record", "patient"), [
    ("mitdb-ds1", "207", "mitdb:207"), ("mitdb-paced", "102", "mitdb:102"), ("qtdb", "sel102", "mitdb:102"),
    ("qtdb", "sel223", "mitdb:223"), ("qtdb", "sel803", "svdb:803"), ("svdb", "803", "svdb:803"),
    ("nstdb", "118e_6", "mitdb:118"), ("nstdb", "em", "noise:em"), ("qtdb", "sel30", "qtdb:sel30"),
    ("qtdb", "sele0104", "qtdb:sele0104"), ("cudb", "cu01", "cudb:cu01"),
])
def test_patient_of_joins_the_databases_excerpts(folder: str, record: str, patient: str) -> None:
    assert patient_of(folder, record) == patient


def test_window_labels() -> None:
    ends = np.arange(4.0, 40.0)
    lab = window_labels(ends, 4.0, [Episode(10.0, 20.0, "VF")], [Episode(30.0, 32.0, "VT")], margin_s=2.0)
    inside = (ends - 4 >= 10) & (ends <= 20)
    assert np.all(lab[inside] == 1)
    assert np.all(lab[(ends > 8) & (ends - 4 < 22) & ~inside] == -1)  # the edges +- 2 s: don't care
    assert np.all(lab[(ends > 30) & (ends - 4 < 32)] == -1)  # VT: don't care
    assert lab[ends == 6.0] == 0 and lab[ends == 28.0] == 0


def test_assign_folds_spreads_vf_patients_and_keeps_noise_in_training() -> None:
    pats = [f"p{i}" for i in range(40)] + ["noise:em", "vf:a", "vf:b"]
    f = assign_folds(pats, ["vf:b", "vf:a"], 5, seed=0)
    assert (f["vf:a"], f["vf:b"], f["noise:em"]) == (0, 1, -1)
    assert f == assign_folds(pats, ["vf:a", "vf:b"], 5, seed=0)
    assert f != assign_folds(pats, ["vf:a", "vf:b"], 5, seed=1)
    assert set(f.values()) == {-1, 0, 1, 2, 3, 4}
    with pytest.raises(ValueError, match="n_folds must exceed the 3 patients with VF windows"):
        assign_folds(pats, ["a", "b", "c"], 3, 0)
    with pytest.raises(ValueError, match="n_folds must be >= 3"):
        assign_folds(pats, ["a"], 2, 0)


def test_alarm_times_need_consecutive_contiguous_windows() -> None:
    ends = np.r_[np.arange(1.0, 11.0), np.arange(13.0, 20.0)]
    above = np.ones(ends.size, bool)
    above[4] = False  # window ending at 5 s
    got = alarm_times(ends, above, 3)
    # runs: 1-4 (alarm at 3), 6-10 (alarm at 8), 13-19 after the gap (alarm at 15)
    np.testing.assert_array_equal(got, [3.0, 8.0, 15.0])


def _sets(seed: int) -> list[WindowSet]:
    """Synthetic feature rows: two VF patients and negatives (the features' own values
    do not matter here; training, folds and the figures do)."""
    rng = np.random.default_rng(seed)
    k = len(FEATURE_NAMES)
    out = []
    for i, p in enumerate(["vf:a", "vf:b"]):
        n = 300
        x = rng.normal(0, 1, (n, k))
        lab = np.zeros(n, np.int8)
        lab[100:160] = 1
        x[lab == 1] += 2.5
        out.append(WindowSet(f"vf/{i}", p, np.arange(4.0, 4.0 + n), x, lab, "x", ((96.0, 160.0),)))
    for i in range(20):
        x = rng.normal(0, 1, (400, k))
        out.append(WindowSet(f"neg/{i}", f"n:{i}", np.arange(4.0, 404.0), x, np.zeros(400, np.int8), "y"))
    return out


def test_train_vf_is_reproducible_and_reports_held_out_figures() -> None:
    sets = _sets(0)
    a = train_vf(sets, fpr=0.01, settings=VFSettings(consecutive=3), seed=3)
    b = train_vf(sets, fpr=0.01, settings=VFSettings(consecutive=3), seed=3)
    np.testing.assert_array_equal(a.detector.coef, b.detector.coef)
    assert a.detector.threshold == b.detector.threshold and a.doc == b.doc
    assert a.doc["settings"]["fpr"] == 0.01 and a.doc["training"]["vf_patients"] == ["vf:a", "vf:b"]
    m = a.doc["metrics"]
    assert set(m["vf_records"]) == {"vf/0", "vf/1"} and m["vf_episodes"] == 2
    # each VF record was scored by a fold model that never saw its patient
    cv = a.cv
    for r in cv.records:
        assert cv.folds[r["patient"]] == r["fold"]
    assert all(v["sensitivity"] > 0.8 for v in m["vf_records"].values())


def test_cross_validation_thresholds_come_from_unseen_negatives() -> None:
    sets = _sets(1)
    cv = cross_validate(sets, fpr=0.05, settings=VFSettings(consecutive=2), seed=0)
    for k, det in cv.detectors.items():
        assert isinstance(det, VFDetector) and det.settings.fpr == 0.05
    # the held-out negatives see about the stated rate of false windows
    s = cv.summary["cv_clean"]
    assert 0.01 < s["false_windows"] / (s["negative_hours"] * 3600) < 0.15


def test_one_fold_of_an_outer_cross_validation_trains_without_its_own() -> None:
    # one VF patient left: an inner cross-validation could not hold it out and still train
    sets = [s for s in _sets(2) if s.patient != "vf:b"]
    res = train_vf(sets, fpr=0.01, settings=VFSettings(consecutive=3), cross_validated=False)
    assert res.cv is None and res.detector.threshold is not None
    assert res.doc["training"]["vf_patients"] == ["vf:a"] and "not cross-validated" in res.doc["metrics"]["rule"]
