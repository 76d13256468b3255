"""Artefact detector (models/ecg/artefact.py): training on clean against noisy windows, the
calibration patients' figures, held-out patients, loading from a bundle, and the shipped one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from models.bundle import read_meta, update_extras
from models.ecg.artefact import (
    EXTRA_KEY,
    FILE_NAME,
    load_artefact_detector,
    main,
    train_artefact,
)
from models.ecg.vf import HOP_S, WINDOW_S, VFDetectorError, record_windows, window_features
from models.ecg.vf_train import WindowSet
from models.signal import MODEL_RATE_HZ, preprocess_record
from models.synthetic import synth_ecg

SHIPPED_ECG = Path(__file__).resolve().parents[4] / "models" / "pretrained" / "ecg-lstm-ae"
FS = MODEL_RATE_HZ


def _windows(x_mv: np.ndarray, fs: float) -> tuple[np.ndarray, np.ndarray]:
    y = preprocess_record(x_mv, fs)
    ends, w = record_windows(y, int(WINDOW_S * FS), int(HOP_S * FS))
    keep = ends >= 5 * FS  # past the filter's start transient
    return ends[keep] / FS, window_features(np.asarray(w)[keep])


def _sets() -> list[WindowSet]:
    """Ten synthetic patients: each clean, and a copy with broadband bursts and baseline
    jumps (electrode-motion-like) at two sizes; plus one nstdb-named noisy record that
    must never be trained on."""
    out = []
    for i in range(10):
        rec = synth_ecg(60, sample_rate_hz=250, hr_bpm=55 + 8 * i, seed=100 + i)
        ends, f = _windows(rec.signal_mv, 250.0)
        lab = np.zeros(len(ends), np.int8)
        lab[:3] = -1  # a VT/VF window of the record: clean, weighted up
        out.append(WindowSet(f"mitdb-ds1/{i}", f"mitdb:{i}", ends, f, lab, f"c{i}"))
        rng = np.random.default_rng(i)
        for snr, amp in (("6", 0.5), ("0", 1.0)):
            z = rng.normal(0, amp, rec.signal_mv.size) + np.repeat(rng.normal(0, amp, rec.signal_mv.size // 50 + 1), 50)[
                :rec.signal_mv.size]
            e2, f2 = _windows(rec.signal_mv + z, 250.0)
            out.append(WindowSet(f"mitdb-ds1/{i}+em:{snr}", f"mitdb:{i}", e2, f2, np.zeros(len(e2), np.int8), "n"))
    ends, f = _windows(synth_ecg(60, sample_rate_hz=250, seed=7).signal_mv, 250.0)
    out.append(WindowSet("nstdb/118e00", "mitdb:118", ends, f, np.zeros(len(ends), np.int8), "s"))
    return out


@pytest.fixture(scope="module")
def sets() -> list[WindowSet]:
    return _sets()


def test_training_separates_noise_from_ecg_on_patients_it_never_fitted(sets: list[WindowSet]) -> None:
    res = train_artefact(sets, fpr=0.02, seed=0)
    m = res.doc["metrics"]
    cal = set(m["calibration_patients"])
    assert len(cal) == 2 and res.doc["training"]["patients"] == 8
    assert m["clean"]["flagged"] <= 0.05
    assert m["noisy_copy_by_snr_db"]["0"]["flagged"] > 0.9
    assert res.detector.threshold is not None and res.doc["settings"]["fpr"] == 0.02
    # the nstdb record is a noise stress test, never training
    assert res.doc["training"]["sources"] == 3 * 8
    json.dumps(res.doc)


def test_training_is_reproducible_and_leaves_out_the_patients_it_is_told(sets: list[WindowSet]) -> None:
    a = train_artefact(sets, fpr=0.02, seed=1, exclude_patients=["mitdb:0", "mitdb:1"])
    b = train_artefact(sets, fpr=0.02, seed=1, exclude_patients=["mitdb:0", "mitdb:1"])
    np.testing.assert_array_equal(a.detector.coef, b.detector.coef)
    assert a.detector.threshold == b.detector.threshold and a.doc == b.doc
    assert a.doc["training"]["excluded_patients"] == ["mitdb:0", "mitdb:1"]
    assert not {"mitdb:0", "mitdb:1"} & set(a.doc["metrics"]["calibration_patients"])
    assert a.doc["training"]["patients"] + len(a.doc["metrics"]["calibration_patients"]) == 8


def test_training_errors_name_the_problem(sets: list[WindowSet]) -> None:
    with pytest.raises(ValueError, match="fpr"):
        train_artefact(sets, fpr=0.7)
    with pytest.raises(ValueError, match="at least 5 patients"):
        train_artefact(sets[:9])
    clean = [s for s in sets if "+" not in s.source]
    with pytest.raises(ValueError, match="no noisy windows"):
        train_artefact(clean)


def test_a_bundle_carries_it_and_loads_it_back(tmp_path: Path, sets: list[WindowSet]) -> None:
    b = tmp_path / "bundle"
    shutil.copytree(SHIPPED_ECG, b)
    res = train_artefact(sets, fpr=0.02)
    update_extras(b, files={FILE_NAME: res.detector.to_bytes()}, extra={EXTRA_KEY: res.doc})
    got = load_artefact_detector(b, read_meta(b).extra)
    assert got is not None and got.threshold == res.detector.threshold
    f = np.concatenate([s.features for s in sets])
    np.testing.assert_array_equal(got.score_features(f), res.detector.score_features(f))
    assert load_artefact_detector(b, {}) is None  # a bundle made before it
    with pytest.raises(VFDetectorError, match="no threshold"):
        load_artefact_detector(b, {EXTRA_KEY: {"settings": {**res.doc["settings"], "threshold": None}}})
    with pytest.raises(VFDetectorError, match="file missing"):
        load_artefact_detector(tmp_path, {EXTRA_KEY: res.doc})


def test_command_refuses_bad_snrs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["--records", str(tmp_path), "--bundle", str(tmp_path), "--snrs", "6,x"])
    assert "--snrs" in capsys.readouterr().err


def test_window_rates_come_from_the_reference_beats(tmp_path: Path) -> None:
    from models.synthetic import write_wfdb
    from models.ecg.artefact import window_rates_bpm

    folder = tmp_path / "synth"
    write_wfdb(synth_ecg(40, sample_rate_hz=250, hr_bpm=90, seed=5), folder, "r0")
    ends = np.arange(8.0, 36.0)
    s = WindowSet("synth/r0", "synth:r0", ends, np.zeros((ends.size, 11)), np.zeros(ends.size, np.int8), "x")
    noisy = WindowSet("synth/r0+em:6", "synth:r0", ends, np.zeros((ends.size, 11)), np.zeros(ends.size, np.int8), "y")
    rates = window_rates_bpm([s, noisy], [folder])
    assert set(rates) == {"synth/r0"}  # noisy copies are noise, whatever their rate
    np.testing.assert_allclose(rates["synth/r0"], 90.0, rtol=0.08)


def test_the_shipped_bundle_documents_its_artefact_detector() -> None:
    doc = read_meta(SHIPPED_ECG).extra[EXTRA_KEY]
    m = doc["metrics"]
    assert doc["training"]["noise_span_s"] == [0.0, 300.0], "nstdb's own noise stretches are held out"
    assert m["clean"]["flagged"] <= 0.011 and m["clean_fast"]["flagged"] < 0.02
    assert m["noisy_copy_by_snr_db"]["0"]["flagged"] > 0.8
