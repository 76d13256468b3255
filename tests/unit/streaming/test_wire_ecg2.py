"""The binary ECG chunk (``cardiowatch.ecg/2``): layout, every refusal and its reason, the
published description (``schemas/cardiowatch.ecg-2.ksy``), and the core scoring it as it
scores the same signal sent as ``cardiowatch.ecg/1``."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import yaml

from models.synthetic import Event, SyntheticPatient
from streaming.errors import REASONS, InvalidMessage
from streaming.pipeline import DeadLetter, InMessage
from streaming.schemas import (
    ECG2_HEADER,
    ECG2_MAGIC,
    MAX_LEADS,
    MAX_PAYLOAD_BYTES,
    SAMPLE_RATE_RANGE_HZ,
    SCALE_RANGE_MV,
    TS_RANGE_MS,
    decode_ecg,
    encode_ecg,
    encode_ecg2,
    pack_ecg2,
)

TS = 1_767_225_600_000
KSY = Path(__file__).resolve().parents[3] / "schemas" / "cardiowatch.ecg-2.ksy"
RNG = np.random.default_rng(4)
X = np.round(RNG.normal(0, 0.6, (2, 250)), 3)


def good(**kw) -> bytes:
    args = dict(patient_id="p-1", device_id="dev-7", seq=3, ts_ms=TS, sample_rate_hz=250.0,
                samples_mv=X, leads=("MLII", "V1"))
    args.update(kw)
    return encode_ecg2(**args)


def header_with(raw: bytes, **fields) -> bytes:
    """``raw`` with header fields replaced (names as in the layout)."""
    names = ["magic", "version", "flags", "n_leads", "len_patient_id", "len_device_id", "reserved",
             "n_samples", "seq", "ts_ms", "sample_rate_hz", "scale_mv"]
    values = dict(zip(names, ECG2_HEADER.unpack_from(raw)))
    values.update(fields)
    return ECG2_HEADER.pack(*(values[n] for n in names)) + raw[ECG2_HEADER.size:]


def reason_of(raw: bytes, key: bytes | None = None) -> tuple[str, str]:
    with pytest.raises(InvalidMessage) as e:
        decode_ecg(raw, key)
    assert e.value.reason in REASONS
    return e.value.reason, e.value.detail


def test_round_trip_and_size() -> None:
    raw = good()
    assert raw[:4] == ECG2_MAGIC and len(raw) == 44 + 3 + 5 + (1 + 4) + (1 + 2) + 2 * 2 * 250
    c = decode_ecg(raw, b"p-1")
    assert (c.patient_id, c.device_id, c.seq, c.ts_ms, c.sample_rate_hz, c.leads) == (
        "p-1", "dev-7", 3, TS, 250.0, ("MLII", "V1"))
    assert c.samples_mv.dtype == np.float64 and c.samples_mv.shape == (2, 250)
    np.testing.assert_allclose(c.samples_mv, X, rtol=0, atol=1e-12)
    # a quarter of the JSON's bytes for one lead at 250 Hz
    one = encode_ecg2("p-0001", "dev-0001", 3, TS, 250, X[:1])
    assert len(one) == 563 and len(one) * 3 < len(encode_ecg("p-0001", "dev-0001", 3, TS, 250, X[:1]))


def test_decodes_to_the_chunk_ecg1_gives() -> None:
    a = decode_ecg(encode_ecg("p-1", "dev-7", 3, TS, 250, X, ("MLII", "V1")))
    b = decode_ecg(good())
    for f in ("patient_id", "device_id", "seq", "ts_ms", "sample_rate_hz", "leads"):
        assert getattr(a, f) == getattr(b, f)
    np.testing.assert_allclose(a.samples_mv, b.samples_mv, rtol=0, atol=1e-15)


def test_scale_is_applied_and_counts_are_int16() -> None:
    raw = pack_ecg2("p", "d", 0, TS, 128, np.array([[-32768, 0, 1, 32767]]), 0.0025, ("ECG1",))
    np.testing.assert_allclose(decode_ecg(raw).samples_mv, [[-81.92, 0.0, 0.0025, 81.9175]])
    with pytest.raises(ValueError, match="int16"):
        pack_ecg2("p", "d", 0, TS, 128, np.array([[40000]]), 0.0025, ("ECG1",))
    with pytest.raises(ValueError, match=r"sample 1 of lead 'MLII' is 40\.0 mV"):
        encode_ecg2("p", "d", 0, TS, 250, np.array([[0.0, 40.0]]))
    with pytest.raises(ValueError, match="patient_id must be 1-128 bytes"):
        encode_ecg2("x" * 129, "d", 0, TS, 250, X[:1])


def _lead_names_at(raw: bytes) -> int:
    _, _, _, _, n_pid, n_dev, *_ = ECG2_HEADER.unpack_from(raw)
    return ECG2_HEADER.size + n_pid + n_dev


BAD = [
    # (case, payload, reason, words the detail must name)
    ("magic only", ECG2_MAGIC, "bad_payload_length", "44 bytes"),
    ("header cut", good()[:30], "bad_payload_length", "has 30"),
    ("version 3", header_with(good(), version=3), "unsupported_schema", "got 3"),
    ("version 1", header_with(good(), version=1), "unsupported_schema", "got 1"),
    ("flags", header_with(good(), flags=1), "unsupported_schema", "0x01"),
    ("reserved", header_with(good(), reserved=9), "unsupported_schema", "0x09"),
    ("no leads", header_with(good(), n_leads=0), "wrong_type", "got 0 leads"),
    ("13 leads", header_with(good(), n_leads=MAX_LEADS + 1), "wrong_type", "got 13 leads"),
    ("empty patient id", header_with(good(), len_patient_id=0), "wrong_type", "got length 0"),
    ("long device id", header_with(good(), len_device_id=200), "wrong_type", "got length 200"),
    ("ids cut", good()[:47], "bad_payload_length", "inside the ids"),
    ("patient id not UTF-8", good(patient_id="p-1").replace(b"p-1dev", b"p\xff1dev"), "wrong_type", "UTF-8"),
    ("patient id not printable", good(patient_id="p\n1"), "wrong_type", "printable"),
    ("device id not printable", good(device_id="d\u200b"), "wrong_type", "printable"),
    ("negative seq", header_with(good(), seq=-1), "bad_seq", "got -1"),
    ("seconds, not ms", header_with(good(), ts_ms=1_767_225_600), "bad_timestamp", "got 1767225600"),
    ("year 2100+", header_with(good(), ts_ms=TS_RANGE_MS[1] + 1), "bad_timestamp", str(TS_RANGE_MS[1] + 1)),
    ("rate 7", header_with(good(), sample_rate_hz=7.0), "bad_sample_rate", "got 7.0"),
    ("rate NaN", header_with(good(), sample_rate_hz=float("nan")), "bad_sample_rate", "got nan"),
    ("rate inf", header_with(good(), sample_rate_hz=float("inf")), "bad_sample_rate", "got inf"),
    ("rate 2001", header_with(good(), sample_rate_hz=2001.0), "bad_sample_rate", "got 2001.0"),
    ("scale 0", header_with(good(), scale_mv=0.0), "bad_scale", "got 0.0"),
    ("scale negative", header_with(good(), scale_mv=-0.001), "bad_scale", "got -0.001"),
    ("scale NaN", header_with(good(), scale_mv=float("nan")), "bad_scale", "got nan"),
    ("scale in uV", header_with(good(), scale_mv=5.0), "bad_scale", "got 5.0"),
    ("lead names cut", good()[:_lead_names_at(good()) + 2], "bad_payload_length", "inside the name of lead 0"),
    ("empty lead name", (lambda r: r[:_lead_names_at(r)] + b"\x00" + r[_lead_names_at(r) + 1:])(good()),
     "wrong_type", "lead 0 name"),
    ("no samples", header_with(good(), n_samples=0), "bad_samples_length", "got 0"),
    ("over 10 s", header_with(good(), n_samples=2501), "bad_samples_length", "[1, 2500]"),
    ("one byte short", good()[:-1], "bad_payload_length", "header says"),
    ("one byte extra", good() + b"\x00", "bad_payload_length", "header says"),
    ("more samples said than sent", header_with(good(), n_samples=251), "bad_payload_length", "header says"),
    ("oversized", ECG2_MAGIC + b"\x00" * MAX_PAYLOAD_BYTES, "oversized_payload", str(MAX_PAYLOAD_BYTES)),
    ("not the magic: JSON", b"CWED" + good()[4:], "malformed_json", "not JSON"),
]


@pytest.mark.parametrize("case, raw, reason, words", BAD, ids=[b[0] for b in BAD])
def test_each_defect_is_refused_with_its_reason_naming_the_value(case, raw, reason, words) -> None:
    got, detail = reason_of(raw)
    assert got == reason, (case, detail)
    assert words in detail, (case, detail)


def test_key_mismatch_and_missing_key_as_for_json() -> None:
    assert reason_of(good(), b"p-2")[0] == "key_mismatch"
    from services.pipelines import build_ecg_pipeline, build_policy, load_ecg_bundle
    from services.settings import DEFAULT_MODEL_DIR

    pipe = build_ecg_pipeline(load_ecg_bundle(DEFAULT_MODEL_DIR, "tflite"), build_policy(None))
    r = pipe.process([InMessage(None, good(), 0, 0)], {})
    assert [d.reason for d in r.dead] == ["missing_key"]


def test_a_refused_binary_chunk_keeps_its_raw_bytes_in_the_dead_letter() -> None:
    raw = header_with(good(), scale_mv=0.0)
    try:
        decode_ecg(raw, b"p-1")
    except InvalidMessage as e:
        dl = json.loads(DeadLetter.from_error("ecg", e, InMessage(b"p-1", raw, 2, 9)).to_json())
    assert dl["reason"] == "bad_scale" and base64.b64decode(dl["raw_b64"]) == raw


def test_the_published_description_is_the_decoders_layout() -> None:
    doc = yaml.safe_load(KSY.read_text())
    assert doc["meta"]["endian"] == "le"
    fields = {f["id"]: f for f in doc["seq"]}
    ks = {"u1": "B", "u2": "H", "s8": "q", "f8": "d"}
    head = [f for f in doc["seq"] if "type" in f and f["type"] in ks]
    assert fields["magic"]["contents"] == ECG2_MAGIC.decode()
    assert "<4s" + "".join(ks[f["type"]] for f in head) == ECG2_HEADER.format
    assert [f["id"] for f in doc["seq"]][:13] == [
        "magic", "version", "flags", "n_leads", "len_patient_id", "len_device_id", "reserved", "n_samples",
        "seq", "ts_ms", "sample_rate_hz", "scale_mv", "patient_id"]
    v = {f["id"]: f.get("valid") for f in doc["seq"]}
    assert v["version"] == 2 and v["flags"] == 0 and v["reserved"] == 0
    assert (v["n_leads"]["min"], v["n_leads"]["max"]) == (1, MAX_LEADS)
    assert (v["len_patient_id"]["max"], v["len_device_id"]["max"]) == (128, 128)
    assert (v["ts_ms"]["min"], v["ts_ms"]["max"]) == TS_RANGE_MS
    assert (v["sample_rate_hz"]["min"], v["sample_rate_hz"]["max"]) == SAMPLE_RATE_RANGE_HZ
    assert (v["scale_mv"]["min"], v["scale_mv"]["max"]) == SCALE_RANGE_MV
    lead = doc["types"]["lead"]["seq"]
    assert [f["id"] for f in lead] == ["len_name", "name"] and lead[0]["valid"]["max"] == 32
    assert doc["types"]["lead_samples"]["seq"][0]["type"] == "s2"
    # the README's table names the same offsets
    readme = (KSY.parent / "README.md").read_text()
    offsets = [0, 4, 5, 6, 7, 8, 9, 10, 12, 20, 28, 36, 44]
    assert [o for o in offsets if f"\n| {o} |" in readme] == offsets
    assert struct.calcsize(ECG2_HEADER.format) == 44


def _stream(wire: str, seconds: int) -> list[InMessage]:
    src = SyntheticPatient("p-1", 250, events=[Event("pvc", 20), Event("vrun", 30, 4)], seed=5)
    out = []
    for k in range(seconds):
        x = src.next_chunk(250)[None, :]
        enc = encode_ecg if wire == "ecg/1" else encode_ecg2
        out.append(InMessage(b"p-1", enc("p-1", "dev-1", k, TS + 1000 * k, 250, x), 0, k))
    return out


def test_the_core_scores_ecg2_as_it_scores_ecg1() -> None:
    from services.pipelines import build_ecg_pipeline, build_policy, load_ecg_bundle
    from services.settings import DEFAULT_MODEL_DIR

    bundle = load_ecg_bundle(DEFAULT_MODEL_DIR, "tflite")
    outs = []
    for wire in ("ecg/1", "ecg/2"):
        pipe = build_ecg_pipeline(bundle, build_policy(None), clock_ms=lambda: TS + 10**9)
        msgs, states, scored, alerts = _stream(wire, 50), {}, [], []
        for i in range(0, len(msgs), 8):
            r = pipe.process(msgs[i:i + 8], states)
            assert not r.dead
            states.update(r.states)
            scored += r.scored
            alerts += r.alerts
        outs.append((scored, alerts))
    (s1, a1), (s2, a2) = outs
    assert len(s1) > 40 and [s.beat_id for s in s1] == [s.beat_id for s in s2]
    assert [(s.flagged, s.beat_class) for s in s1] == [(s.flagged, s.beat_class) for s in s2]
    np.testing.assert_allclose([s.score for s in s1], [s.score for s in s2], rtol=1e-6)
    assert [a.event_id for a in a1] == [a.event_id for a in a2] and any(a.condition == "ventricular_run" for a in a1)
