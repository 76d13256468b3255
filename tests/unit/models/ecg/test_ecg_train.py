"""ECG training stage: patient-wise split, data hash, beat labelling, CLI, end-to-end bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.bundle import load_bundle, read_meta
from models.synthetic import Event, synth_ecg
from models.ecg.train import _split, beats_from_signal, main, train_ecg, training_data_hash


def test_split_is_patient_wise_and_seeded() -> None:
    tr, va, ca = _split(20, seed=1, fractions=(0.7, 0.15, 0.15))
    assert sorted(np.concatenate([tr, va, ca]).tolist()) == list(range(20))
    assert len(set(tr) & set(va)) == len(set(tr) & set(ca)) == len(set(va) & set(ca)) == 0
    again = _split(20, seed=1, fractions=(0.7, 0.15, 0.15))
    assert all(np.array_equal(a, b) for a, b in zip((tr, va, ca), again))
    with pytest.raises(ValueError, match="at least 3 patients/records.*got 2"):
        _split(2, 0, (0.7, 0.15, 0.15))


def test_beats_are_labelled_from_annotations() -> None:
    rec = synth_ecg(30.0, sample_rate_hz=360, events=[Event("pvc", 10.0), Event("pvc", 20.0)], seed=5)
    lb = beats_from_signal("r", rec.signal_mv, rec.sample_rate_hz, rec.beat_samples, rec.beat_labels)
    assert lb.waveforms.shape[1] == 80 and lb.rr_context.shape == (len(lb.labels), 2)
    assert (lb.labels == "V").sum() == 2
    assert len(lb.labels) >= len(rec.beat_labels) - 3  # edge beats may be cut
    pvc_rr = lb.rr_context[lb.labels == "V"]
    assert np.all(pvc_rr[:, 0] < 0.9)  # premature


def test_training_data_hash_depends_on_names_and_samples() -> None:
    rec = synth_ecg(10.0, seed=1)
    a = beats_from_signal("a", rec.signal_mv, 250, rec.beat_samples, rec.beat_labels)
    b = beats_from_signal("b", rec.signal_mv, 250, rec.beat_samples, rec.beat_labels)
    c = beats_from_signal("a", rec.signal_mv * 1.01, 250, rec.beat_samples, rec.beat_labels)
    assert training_data_hash([a, b]) == training_data_hash([b, a])
    assert len({training_data_hash([a]), training_data_hash([b]), training_data_hash([c])}) == 3


def test_cli_validates(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["--synthetic", "5", "--out", str(tmp_path / "b"), "--fpr", "1.5"])
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "b")])  # no data source
    with pytest.raises(ValueError, match="synthetic_patients >= 3"):
        train_ecg(tmp_path / "b", synthetic_patients=2)
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_end_to_end_synthetic_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bundle"
    rc = main(["--synthetic", "6", "--out", str(out), "--epochs", "2", "--duration-s", "30", "--eval-patients", "2", "--fpr", "0.02", "--quiet"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    meta = read_meta(out)
    assert meta.kind == "ecg" and meta.threshold_fpr == 0.02 and meta.training_config["data"]["kind"] == "synthetic"
    assert printed["heldout"]["n_beats_V"] > 0 and 0.0 <= printed["heldout"]["auroc_V_vs_N"] <= 1.0
    assert meta.metrics["heldout"] == printed["heldout"]
    assert len(meta.training_data_sha256) == 64
    b = load_bundle(out, runtime="tflite")
    assert b.detector.threshold == meta.threshold("tflite")
    assert printed["thresholds"] == meta.thresholds() and printed["threshold"] == meta.threshold("keras")
    assert set(printed["thresholds"]) == {"keras", "tflite", "tflite-int8", "tflite-server"}
