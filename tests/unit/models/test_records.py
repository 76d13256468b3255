"""WFDB loading: tiny records written with wfdb from synthetic data and read back, and the
real PhysioNet signal and annotation-only records."""

import numpy as np
import pytest
import wfdb

from models.records import (
    AAMI_CLASSES,
    has_signal,
    list_annotated,
    list_records,
    load_annotations,
    load_record,
)
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
    # the records live in one folder per database (README of the data folder)
    names = list_records(shared_data_dir / "mitdb-ds1")
    assert names
    r = load_record(shared_data_dir / "mitdb-ds1", names[0])
    assert r.signal_mv.ndim == 1 and r.beat_samples.size > 0


def _write(tmp_path, name, leads, symbols, samples, aux):
    rec = synth_ecg(20, 360, seed=2)
    sig = np.stack([rec.signal_mv * (k + 1) for k in range(len(leads))], axis=1)
    wfdb.wrsamp(name, fs=360, units=["mV"] * len(leads), sig_name=leads, p_signal=sig,
                fmt=["212"] * len(leads), adc_gain=[200.0] * len(leads), baseline=[0] * len(leads),
                write_dir=str(tmp_path))
    wfdb.wrann(name, "atr", np.asarray(samples), symbol=symbols, aux_note=aux, write_dir=str(tmp_path))
    return rec


def test_mlii_is_preferred_and_an_explicit_channel_wins(tmp_path):
    rec = _write(tmp_path, "r114", ["V5", "MLII"], ["N", "N"], [100, 400], ["", ""])
    r = load_record(tmp_path, "r114")
    assert r.lead == "MLII" and r.lead_index == 1
    np.testing.assert_allclose(r.signal_mv, 2 * rec.signal_mv, atol=0.01)
    assert load_record(tmp_path, "r114", channel=0).lead == "V5"
    assert load_record(tmp_path, "r114", channel="V5").lead_index == 0


def test_no_mlii_loads_lead_zero(tmp_path):
    _write(tmp_path, "r800", ["ECG1", "ECG2"], ["N"], [100], [""])
    assert load_record(tmp_path, "r800").lead == "ECG1"


def test_vf_brackets_and_flutter_waves(tmp_path):
    # MIT-BIH 207 style: rhythm change, '[' onset, '!' flutter waves, ']' end
    symbols = ["+", "N", "N", "[", "+", "!", "!", "]", "+", "N"]
    samples = [1, 300, 600, 900, 905, 1000, 1100, 2000, 2005, 2300]
    aux = ["(N", "", "", "", "(VFL\x00", "", "", "", "(N", ""]
    _write(tmp_path, "r207", ["MLII"], symbols, samples, aux)
    r = load_record(tmp_path, "r207")
    assert r.vf_annotations == ((900, "["), (2000, "]"))
    assert r.rhythm_annotations == ((1, "(N"), (905, "(VFL"), (2005, "(N"))
    np.testing.assert_array_equal(r.beat_samples, [300, 600, 2300])  # '!' is not a beat
    ann = r.annotations()
    assert ann.end_sample == len(r.signal_mv) and ann.duration_s == pytest.approx(20.0)


def test_annotation_only_record_from_a_zero_signal_header(tmp_path):
    (tmp_path / "nsr900.hea").write_text("nsr900 0 128 0\n")
    wfdb.wrann("nsr900", "ecg", np.array([128, 256, 400, 540]), symbol=["N", "N", "~", "V"],
               write_dir=str(tmp_path), fs=128)
    assert not has_signal(tmp_path, "nsr900")
    with pytest.raises(ValueError, match="load_annotations"):
        load_record(tmp_path, "nsr900", annotation="ecg")
    a = load_annotations(tmp_path, "nsr900", "ecg")
    assert a.sample_rate_hz == 128.0 and list(a.aami_classes) == ["N", "N", "V"]
    np.testing.assert_allclose(a.beat_times_s, [1.0, 2.0, 540 / 128])
    assert a.end_sample == 541
    with pytest.raises(ValueError, match="128"):
        load_annotations(tmp_path, "nsr900", "ecg", fs=250)
    assert list_annotated(tmp_path, "ecg") == ["nsr900"]


def test_annotation_only_record_without_header_needs_fs(tmp_path):
    wfdb.wrann("lt01", "atr", np.array([128, 256]), symbol=["N", "N"], write_dir=str(tmp_path))
    with pytest.raises(ValueError, match="fs"):
        load_annotations(tmp_path, "lt01", "atr")
    assert load_annotations(tmp_path, "lt01", "atr", fs=128).duration_s == pytest.approx(257 / 128)
    with pytest.raises(FileNotFoundError):
        load_annotations(tmp_path, "lt02", "atr", fs=128)


@pytest.mark.data
def test_real_nsr2db_annotation_only_record(shared_data_dir):
    a = load_annotations(shared_data_dir / "nsr2db", "nsr001", "ecg")
    assert a.sample_rate_hz == 128.0
    assert 20 * 3600 < a.duration_s < 26 * 3600  # about a day of beats
    assert a.beat_samples.size > 100_000 and not a.rhythm_annotations
    rr = np.diff(a.beat_times_s)
    assert 0.5 < float(np.median(rr)) < 1.3  # a normal resting RR


@pytest.mark.data
def test_real_ltafdb_record_needs_fs_and_has_af(shared_data_dir):
    folder = shared_data_dir / "ltafdb"
    assert list_annotated(folder, "atr") == ["00", "01", "03", "05"]
    with pytest.raises(ValueError, match="128"):
        load_annotations(folder, "00", "atr")
    a = load_annotations(folder, "00", "atr", fs=128)
    kinds = {aux for _, aux in a.rhythm_annotations}
    assert {"(AFIB", "(N"} <= kinds
    assert 18 * 3600 < a.duration_s < 26 * 3600


@pytest.mark.data
def test_real_mitdb_114_loads_mlii_and_207_has_vf_brackets(shared_data_dir):
    folder = shared_data_dir / "mitdb-ds1"
    assert load_record(folder, "114").lead == "MLII"
    r = load_record(folder, "207")
    assert [s for _, s in r.vf_annotations][:2] == ["[", "]"]
    assert "!" not in set(r.beat_symbols)


# -- demographics from header comments ---------------------------------------------------

@pytest.mark.parametrize("comments, age, sex", [
    (["75 F 1011 654 x1", "Diapres"], 75.0, "F"),           # MIT-BIH
    (["69 M 1456 653 x2", "Digoxin, Norpace"], 69.0, "M"),
    (["? ? 1111 111 x1"], None, None),                      # MIT-BIH unknown
    (["Age: 47  Sex: M", "Coronary artery disease"], 47.0, "M"),  # QT Database (European ST-T)
    (["Age: -  Sex: -", "Myocardial infarction"], None, None),
    (["Age: 28.5 Sex: M"], 28.5, "M"),                      # nsr2db
    (["Age: 34  Sex: ?  NYHA class: II"], 34.0, None),      # chf2db
    (["Produced by xform from record 30, beginning at 26:35.000", "Age: 52  Sex: F"], 52.0, "F"),
    (["Produced by xform from record 14046, beginning at 9:14:13.000"], None, None),
    (["Created by `nst' from records 118 and em (SNR = 0 dB)"], None, None),
    ([], None, None),
])
def test_parse_demographics_reads_both_header_forms(comments, age, sex):
    from models.records import Demographics, parse_demographics

    assert parse_demographics(comments) == Demographics(age, sex)


def test_demographics_refuse_impossible_values():
    from models.records import Demographics, parse_demographics

    with pytest.raises(ValueError, match="age_years.*200"):
        parse_demographics(["Age: 200 Sex: F"])
    with pytest.raises(ValueError, match="sex"):
        Demographics(40.0, "X")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="age_years"):
        Demographics(float("nan"), None)


def test_read_demographics_from_written_headers(tmp_path):
    from models.records import Demographics, read_demographics

    sig = np.zeros((100, 1))
    wfdb.wrsamp("m1", fs=360, units=["mV"], sig_name=["MLII"], p_signal=sig, fmt=["212"],
                adc_gain=[200.0], baseline=[0], comments=["61 F 1234 654 x1", "None"], write_dir=str(tmp_path))
    wfdb.wrsamp("bare", fs=128, units=["mV"], sig_name=["ECG1"], p_signal=sig, fmt=["212"],
                adc_gain=[200.0], baseline=[0], write_dir=str(tmp_path))
    # a 0-signal header (nsr2db) with CR LF line ends (as PhysioNet ships mitdb and qtdb)
    (tmp_path / "rr1.hea").write_bytes(b"rr1 0 128 0\r\n#Age: 38  Sex: F  NYHA class: III\r\n")
    wfdb.wrann("lt1", "atr", np.array([10, 138]), symbol=["N", "N"], write_dir=str(tmp_path), fs=128)
    assert read_demographics(tmp_path, "m1") == Demographics(61.0, "F")
    assert read_demographics(tmp_path, "bare") == Demographics()
    assert read_demographics(tmp_path, "rr1") == Demographics(38.0, "F")
    assert read_demographics(tmp_path, "lt1") == Demographics()  # no header (ltafdb): unknown
    (tmp_path / "bad.hea").write_text("bad 0 128 0\n# 250 M 1 2 x1\n")
    with pytest.raises(ValueError, match="'bad'.*250"):
        read_demographics(tmp_path, "bad")
    with pytest.raises(FileNotFoundError):
        read_demographics(tmp_path / "missing", "m1")


@pytest.mark.data
@pytest.mark.parametrize("folder, name, age, sex", [
    ("mitdb-ds1", "101", 75.0, "F"), ("mitdb-ds1", "230", 32.0, "M"), ("mitdb-paced", "217", 65.0, "M"),
    ("qtdb", "sel102", 84.0, "F"), ("qtdb", "sele0104", 47.0, "M"), ("qtdb", "sele0607", 70.0, "F"),
    ("qtdb", "sele0166", None, None), ("qtdb", "sel30", None, None), ("qtdb", "sel803", None, None),
    ("nsr2db", "nsr047", 28.5, "M"), ("nsr2db", "nsr001", 64.0, "F"),
    ("chf2db", "chf201", 55.0, "M"), ("chf2db", "chf211", 34.0, None),
    ("svdb", "800", None, None), ("cudb", "cu01", None, None), ("nstdb", "118e00", None, None),
    ("nstdb", "em", None, None), ("ltafdb", "00", None, None),
])
def test_read_demographics_on_every_physionet_header_form(shared_data_dir, folder, name, age, sex):
    from models.records import Demographics, read_demographics

    assert read_demographics(shared_data_dir / folder, name) == Demographics(age, sex)


@pytest.mark.data
def test_every_mitbih_and_rr_header_gives_an_age(shared_data_dir):
    from models.records import read_demographics

    for folder in ("mitdb-ds1", "mitdb-paced", "nsr2db", "chf2db"):
        names = sorted({p.stem for p in (shared_data_dir / folder).glob("*.hea")})
        got = [read_demographics(shared_data_dir / folder, n) for n in names]
        assert names and all(d.age_years is not None for d in got), folder
        if folder.startswith("mitdb") or folder == "nsr2db":
            assert all(d.sex in ("F", "M") for d in got), folder
