"""Training a bundle's beat classifier again, with noisy copies of the records
(models.ecg.classifier_train, models.ecg.noisy_beats)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from models.bundle import load_bundle, read_meta
from models.ecg.classifier_train import refit_classifier
from models.ecg.noisy_beats import NOISE_CONDITIONS, noisy_copies
from models.ecg.scorer import load_scorer
from models.ecg.train import load_labelled_records


def test_refit_writes_a_noise_trained_classifier_the_scorer_loads(tiny_case, ecg_patient, tmp_path: Path) -> None:
    case = tiny_case("ecg")
    bundle = tmp_path / "bundle"
    shutil.copytree(case.bundle, bundle)
    clean = [ecg_patient(s, duration_s=30.0, pvc=True, pvc_every_s=3.0) for s in (301, 302, 303, 304)]
    noisy = [ecg_patient(s, duration_s=30.0, pvc=True, pvc_every_s=3.0) for s in (311, 312, 313, 314)]
    for c, n in zip(clean, noisy):  # a noisy copy belongs to its record's patient
        object.__setattr__(n, "patient", c.patient)
    metrics = refit_classifier(bundle, clean, noisy, seed=0, progress=False)
    assert metrics["noisy_copies"] == 4
    assert metrics["n_beats"]["N"] == sum(int(np.sum(p.labels == "N")) for p in clean)  # clean rows only
    section = read_meta(bundle).extra["beat_classifier"]
    assert section["noise_augmented"]["copies"] == 4
    assert section["noise_augmented"]["conditions"][0] == f"{NOISE_CONDITIONS[0][0]}{NOISE_CONDITIONS[0][1]:g}"
    scorer = load_scorer(load_bundle(bundle, runtime="keras", kind="ecg"))  # hashes checked, classifier parsed
    assert scorer.classifier is not None
    assert scorer.classifier.ventricular_fpr == 0.008
    # the source bundle is untouched
    assert "beat_classifier" not in read_meta(case.bundle).extra


@pytest.mark.data
def test_noisy_copies_keep_the_reference_labels_and_the_patient(shared_data_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mitdb-ds1"
    folder.mkdir()
    for rec in ("101", "106"):
        for ext in ("hea", "dat", "atr"):
            (folder / f"{rec}.{ext}").symlink_to(shared_data_dir / "mitdb-ds1" / f"{rec}.{ext}")
    clean = load_labelled_records([folder], progress=False)
    copies = noisy_copies([folder], shared_data_dir / "nstdb", progress=False)
    names = [f"{k}{s:g}" for k, s in NOISE_CONDITIONS[:2]]
    assert [c.name for c in copies] == [f"mitdb-ds1/101+{names[0]}", f"mitdb-ds1/106+{names[1]}"]
    assert [c.patient for c in copies] == ["mitdb/101", "mitdb/106"]
    for c, n in zip(clean, copies):
        # noise hides or adds detections, but most reference beats are found and keep their class
        for cls in ("N", "V"):
            k = int(np.sum(c.labels == cls))
            if k >= 20:
                assert np.sum(n.labels == cls) >= 0.85 * k, (n.name, cls)
        # the first 5 minutes stay clean (nst's learning period), the noise comes after
        assert len(n.labels) != len(c.labels) or not np.allclose(n.waveforms[-100:], c.waveforms[-100:])
    with pytest.raises(FileNotFoundError, match="noise record"):
        noisy_copies([folder], tmp_path, progress=False)
