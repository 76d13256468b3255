"""Crossval's fold assignment and its check of reused fold bundles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from services.crossval import _check_held_out, assign_folds

SHIPPED = Path(__file__).resolve().parents[3] / "models" / "pretrained" / "ecg-lstm-ae"


def test_folds_deal_every_patient_once_and_are_seeded():
    patients = [f"mitdb/{i}" for i in range(100, 123)] * 2  # records of one patient repeat
    folds = assign_folds(patients, 5, 0)
    assert sorted(folds) == sorted(set(patients))
    sizes = [sum(v == k for v in folds.values()) for k in range(1, 6)]
    assert max(sizes) - min(sizes) <= 1
    assert assign_folds(list(reversed(patients)), 5, 0) == folds  # order of records does not matter
    assert assign_folds(patients, 5, 1) != folds
    with pytest.raises(ValueError, match="at least 5 patients"):
        assign_folds(["a", "b"], 5, 0)


def _fold_bundle(tmp_path: Path, held: list[str] | None) -> Path:
    out = tmp_path / "fold-1"
    shutil.copytree(SHIPPED, out)
    meta = json.loads((SHIPPED / "bundle.json").read_text())
    if held is not None:
        meta["training_config"]["data"] = {"kind": "wfdb", "crossval": {"fold": 1, "folds": 5, "seed": 0,
                                                                         "held_out_patients": held}}
    (out / "bundle.json").write_text(json.dumps(meta))
    return out


def test_a_reused_fold_bundle_must_hold_out_the_folds_patients(tmp_path):
    held = ["mitdb/106", "mitdb/223"]
    bundle = _fold_bundle(tmp_path, held)
    _check_held_out(bundle, held)
    with pytest.raises(SystemExit, match="held out 2 patients, not this fold's 1"):
        _check_held_out(bundle, ["mitdb/106"])


def test_a_bundle_not_made_by_crossval_is_refused_as_a_fold_bundle(tmp_path):
    with pytest.raises(SystemExit, match="held out 0 patients"):
        _check_held_out(_fold_bundle(tmp_path, None), ["mitdb/106"])


def test_noisy_classifiers_refit_each_fold_on_its_training_patients_once(tmp_path, monkeypatch):
    """--classifier-noise: fold k's classifier sees neither fold k's patients nor their
    noisy copies, and a bundle already trained so is left alone."""
    from types import SimpleNamespace

    import models.ecg.classifier_train as ct
    import models.ecg.noisy_beats as nb
    from services import crossval

    done = _fold_bundle(tmp_path, None)
    meta = json.loads((done / "bundle.json").read_text())
    meta["extra"]["beat_classifier"]["noise_augmented"] = {"copies": 3}
    (done / "bundle.json").write_text(json.dumps(meta))
    todo = tmp_path / "fold-2"
    shutil.copytree(SHIPPED, todo)
    rec = lambda name, patient: SimpleNamespace(name=name, patient=patient)  # noqa: E731
    labelled = [rec("a", "p1"), rec("b", "p2"), rec("c", "p3")]
    fold_of = {"p1": 1, "p2": 2, "p3": 1}
    calls = []
    monkeypatch.setattr(nb, "noisy_copies", lambda folders, noise_dir, progress: [rec("a+em12", "p1"),
                                                                                   rec("b+ma6", "p2")])
    monkeypatch.setattr(ct, "refit_classifier", lambda b, patients, noisy, seed, progress: calls.append(
        (b, [p.name for p in patients], [p.name for p in noisy])))
    crossval._noisy_classifiers({1: done, 2: todo}, labelled, fold_of, [tmp_path], tmp_path, 0, False)
    assert calls == [(todo, ["a", "c"], ["a+em12"])]
