"""Wire-format validation: every bad message gets a reason naming the bad value."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from streaming.errors import InvalidMessage
from streaming.schemas import (
    ECG_SCHEMA,
    MAX_PAYLOAD_BYTES,
    decode_ecg,
    decode_hr,
    encode_ecg,
    encode_hr,
)

TS = 1_767_225_600_000


def ecg_doc(**over):
    doc = {"schema": ECG_SCHEMA, "patient_id": "p-1", "device_id": "d-1", "seq": 3, "ts_ms": TS,
           "sample_rate_hz": 250, "leads": ["MLII"], "units": "mV", "samples": [[0.1] * 250]}
    doc.update(over)
    return json.dumps(doc).encode()


def test_round_trip_ecg():
    x = np.sin(np.linspace(0, 6, 250))[None, :]
    c = decode_ecg(encode_ecg("p-1", "d-1", 7, TS, 250, x), key=b"p-1")
    assert (c.patient_id, c.seq, c.ts_ms, c.sample_rate_hz, c.leads) == ("p-1", 7, TS, 250.0, ("MLII",))
    assert c.samples_mv.shape == (1, 250)
    np.testing.assert_allclose(c.samples_mv, np.round(x, 3))
    assert c.end_ts_ms == TS + 1000


def test_microvolts_are_converted():
    c = decode_ecg(ecg_doc(units="uV", samples=[[1000.0, -500.0]]))
    np.testing.assert_allclose(c.samples_mv, [[1.0, -0.5]])


def test_round_trip_hr():
    s = decode_hr(encode_hr("p-1", "d-1", 2, TS, 72.4, [830.0, 845.5], 0.9), key=b"p-1")
    assert (s.hr_bpm, s.rr_ms, s.quality) == (72.4, (830.0, 845.5), 0.9)


@pytest.mark.parametrize("raw, reason, needle", [
    (b"", "empty_payload", "empty"),
    (None, "empty_payload", "empty"),
    (b"{not json", "malformed_json", "not JSON"),
    (b"[1, 2]", "malformed_json", "list"),
    (b"x" * (MAX_PAYLOAD_BYTES + 1), "oversized_payload", str(MAX_PAYLOAD_BYTES + 1)),
    (ecg_doc(schema="cardiowatch.ecg/9"), "unsupported_schema", "cardiowatch.ecg/9"),
    (ecg_doc(patient_id=None), "missing_field", "patient_id"),
    (ecg_doc(seq="3"), "wrong_type", "'3'"),
    (ecg_doc(seq=True), "wrong_type", "True"),
    (ecg_doc(seq=-1), "bad_seq", "-1"),
    (ecg_doc(ts_ms=1_700_000_000), "bad_timestamp", "1700000000"),
    (ecg_doc(sample_rate_hz=10), "bad_sample_rate", "10"),
    (ecg_doc(sample_rate_hz=5000.0), "bad_sample_rate", "5000.0"),
    (ecg_doc(units="V"), "bad_units", "'V'"),
    (ecg_doc(samples=[]), "bad_samples_length", "0 lead arrays"),
    (ecg_doc(samples=[[]]), "bad_samples_length", "got 0"),
    (ecg_doc(samples=[[0.1] * 2501]), "bad_samples_length", "2501"),
    (ecg_doc(samples=[[0.1, "a"]]), "wrong_type", "numbers"),
    (ecg_doc(leads=["I", "II"], samples=[[0.1], [0.1, 0.2]]), "bad_samples_length", "different lengths"),
    (ecg_doc(leads=[]), "wrong_type", "leads"),
])
def test_bad_ecg_messages_name_the_reason_and_value(raw, reason, needle):
    with pytest.raises(InvalidMessage) as ei:
        decode_ecg(raw)
    assert ei.value.reason == reason
    assert needle in str(ei.value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_samples_are_rejected(value):
    raw = ecg_doc(samples=[[0.1, 0.2, 0.3]]).replace(b"0.2", str(value).encode().replace(b"inf", b"Infinity").replace(b"nan", b"NaN"))
    with pytest.raises(InvalidMessage) as ei:
        decode_ecg(raw)
    assert ei.value.reason == "non_finite_sample"
    assert "sample 1" in str(ei.value)


def test_key_must_match_patient():
    with pytest.raises(InvalidMessage) as ei:
        decode_ecg(ecg_doc(), key=b"p-2")
    assert ei.value.reason == "key_mismatch"
    assert "p-2" in str(ei.value) and "p-1" in str(ei.value)


@pytest.mark.parametrize("over, reason", [
    ({"hr_bpm": 0}, "bad_hr"),
    ({"hr_bpm": 400}, "bad_hr"),
    ({"hr_bpm": None}, "missing_field"),
    ({"rr_ms": [50]}, "bad_rr"),
    ({"rr_ms": ["x"]}, "wrong_type"),
    ({"quality": 1.5}, "bad_quality"),
])
def test_bad_hr_messages(over, reason):
    doc = json.loads(encode_hr("p-1", "d-1", 1, TS, 70, [850]))
    doc.update(over)
    with pytest.raises(InvalidMessage) as ei:
        decode_hr(json.dumps(doc).encode())
    assert ei.value.reason == reason
