"""The learned T-wave / P-wave pair test of the QRS detector (models.qrs, models.qrs_train)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from models.errors import CardiowatchError
from models.evaluation import match_beats, qrs_sensitivity_ppv
from models.qrs import PAIR_FEATURES, PAIR_MODEL_DIR, QRSPairModel, QRSPairModelError, detect_qrs, shipped_pair_model
from models.signal import MODEL_RATE_HZ, preprocess_record
from models.synthetic import synth_ecg


def test_shipped_pair_models_load_with_their_feature_names_and_a_card():
    m = shipped_pair_model()
    assert isinstance(m, QRSPairModel)
    card = json.loads((PAIR_MODEL_DIR / "pairs.json").read_text())["card"]
    # the shipped card states leave-patient-out figures, never training-set ones
    assert card["leave_patient_out"]["folds"] >= 2
    assert set(card["leave_patient_out"]["by_database"]) >= {"mitdb-ds1", "qtdb", "svdb"}
    assert issubclass(QRSPairModelError, CardiowatchError)
    assert len(PAIR_FEATURES) == 26


def test_a_tampered_pair_model_file_is_refused_with_its_name(tmp_path):
    folder = tmp_path / "pairs"
    shutil.copytree(PAIR_MODEL_DIR, folder)
    t = folder / "t_wave.trees"
    t.write_bytes(t.read_bytes()[:-1] + bytes([t.read_bytes()[-1] ^ 1]))
    with pytest.raises(QRSPairModelError, match="t_wave"):
        QRSPairModel.load(folder)
    with pytest.raises(QRSPairModelError, match="format"):
        (folder / "pairs.json").write_text(json.dumps({"format": "other/1"}))
        QRSPairModel.load(folder)


def test_pair_models_change_nothing_on_clean_synthetic_sinus():
    rec = synth_ecg(120, sample_rate_hz=MODEL_RATE_HZ, seed=11)
    x = preprocess_record(rec.signal_mv, MODEL_RATE_HZ)
    a = detect_qrs(x, MODEL_RATE_HZ)
    b = detect_qrs(x, MODEL_RATE_HZ, pair_model="none")
    se, ppv = qrs_sensitivity_ppv(match_beats(rec.beat_samples, a, MODEL_RATE_HZ))
    assert se > 0.99 and ppv > 0.99
    assert abs(len(a) - len(b)) <= 1


@pytest.mark.data
def test_pair_models_reject_the_tall_t_waves_of_qtdb_sele0111(shared_data_dir):
    """A regression check on a record the shipped pair models trained on (its held-out
    figure is in pairs.json's card): the rules alone take many of its tall, late T waves
    for beats; with the pair test almost none are left and no beat is lost."""
    from models.records import load_record

    rec = load_record(shared_data_dir / "qtdb", "sele0111")
    x = preprocess_record(rec.signal_mv, rec.sample_rate_hz)
    ref = np.round(np.asarray(rec.beat_samples) * MODEL_RATE_HZ / rec.sample_rate_hz).astype(np.int64)
    lo, hi = ref.min() - MODEL_RATE_HZ, ref.max() + MODEL_RATE_HZ  # qtdb annotates an excerpt

    def score(det):
        det = det[(det >= lo) & (det <= hi)]
        return match_beats(ref, det, MODEL_RATE_HZ)

    rules = score(detect_qrs(x, MODEL_RATE_HZ, pair_model="none"))
    pairs = score(detect_qrs(x, MODEL_RATE_HZ))
    assert rules.fp > 50, rules
    assert pairs.fp <= rules.fp // 5, (rules, pairs)
    assert pairs.tp >= rules.tp - 2, (rules, pairs)
