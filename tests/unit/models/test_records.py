"""WFDB loading: a tiny record written with wfdb from synthetic data and read back."""

import numpy as np
import pytest
import wfdb

from models.records import AAMI_CLASSES, list_records, load_record
from models.synthetic import Event, synth_ecg


@pytest.fixture
def record_dir(tmp_path):
    rec = synth_ecg(20, 360, seed=1, events=[Event("pvc", 10)])
    sig = np.stack([rec.signal_mv, 0.5 * rec.signal_mv], axis=1)
    wfdb.wrsamp(
        "r100", fs=360, units=["mV", "mV"], sig_name=["MLII", "V5"], p_signal=sig,
        fmt=["212", "212"], adc_gain=[200.0, 200.0], baseline=[0, 0], write_dir=str(tmp_path),
    )
    symbols = ["+"] + ["V" if lab == "V" else "N" for lab in rec.beat_labels] + ["~"]
    samples = np.concatenate([[1], rec.beat_samples, [rec.beat_samples[-1] + 10]])
    aux = ["(N"] + [""] * len(rec.beat_labels) + [""]
    wfdb.wrann("r100", "atr", samples, symbol=symbols, aux_note=aux, write_dir=str(tmp_path))
    (tmp_path / "notes.txt").write_text("not a record")
    return tmp_path, rec


def test_list_records(record_dir):
    folder, _ = record_dir
    assert list_records(folder) == ["r100"]
    with pytest.raises(FileNotFoundError):
        list_records(folder / "missing")


def test_load_record_round_trip(record_dir):
    folder, rec = record_dir
    r = load_record(folder, "r100")
    assert r.sample_rate_hz == 360.0 and r.lead == "MLII"
    np.testing.assert_allclose(r.signal_mv, rec.signal_mv, atol=0.01)  # 200 adu/mV quantisation
    np.testing.assert_array_equal(r.beat_samples, rec.beat_samples)  # '+' and '~' skipped
    assert list(r.aami_classes) == list(rec.beat_labels)
    assert r.rhythm_annotations == ((1, "(N"),)
    v5 = load_record(folder, "r100", channel="V5")
    np.testing.assert_allclose(v5.signal_mv, 0.5 * rec.signal_mv, atol=0.01)


def test_bad_channel_and_missing_record(record_dir):
    folder, _ = record_dir
    with pytest.raises(ValueError, match="MLII"):
        load_record(folder, "r100", channel="II")
    with pytest.raises(ValueError, match="channel"):
        load_record(folder, "r100", channel=5)
    with pytest.raises(FileNotFoundError):
        load_record(folder, "nope")


def test_aami_mapping():
    assert {AAMI_CLASSES[s] for s in "NLRej"} == {"N"}
    assert {AAMI_CLASSES[s] for s in "AaJS"} == {"S"}
    assert AAMI_CLASSES["V"] == AAMI_CLASSES["E"] == "V"
    assert AAMI_CLASSES["F"] == "F" and {AAMI_CLASSES[s] for s in "/fQ"} == {"Q"}
    assert "+" not in AAMI_CLASSES and "~" not in AAMI_CLASSES


def test_physionet_record_if_present(shared_data_dir):
    names = list_records(shared_data_dir)
    assert names
    r = load_record(shared_data_dir, names[0])
    assert r.signal_mv.ndim == 1 and r.beat_samples.size > 0
