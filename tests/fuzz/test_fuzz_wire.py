"""Fuzz the wire decoders of every schema a process reads: ECG messages (JSON and binary)
and heart-rate messages (worker), alert events (dispatcher), ack records (dispatcher).

Property: any bytes end in a validated value or a typed error (for wearable messages an
:class:`~streaming.errors.InvalidMessage` whose reason is a known code, whose dead
letter encodes and keeps the raw bytes); never another exception."""

from __future__ import annotations

import base64
import json
import math
import struct
from typing import Any

import numpy as np
from fuzz_support import fuzz_settings, json_values, mutated
from hypothesis import example, given
from hypothesis import strategies as st

from services.ack_api import AckRecord, AckRecordError
from streaming.errors import REASONS, InvalidMessage
from streaming.events import AlertDecodeError, AlertEvent
from streaming.pipeline import DeadLetter, InMessage
from streaming.schemas import (
    ECG2_HEADER,
    ECG2_MAGIC,
    ECG_SCHEMA,
    HR_RANGE_BPM,
    HR_SCHEMA,
    SAMPLE_RATE_RANGE_HZ,
    SCALE_RANGE_MV,
    ECGChunk,
    HRSample,
    decode_ecg,
    decode_hr,
    pack_ecg2,
)

TS = 1_767_225_600_000
ECG_DOC: dict[str, Any] = {"schema": ECG_SCHEMA, "patient_id": "p-1", "device_id": "d-1", "seq": 3,
                           "ts_ms": TS, "sample_rate_hz": 250, "leads": ["MLII", "V1"], "units": "mV",
                           "samples": [[0.1, -0.2, 0.3], [0.0, 0.5, 1.5]]}
HR_DOC: dict[str, Any] = {"schema": HR_SCHEMA, "patient_id": "p-1", "device_id": "d-1", "seq": 3,
                          "ts_ms": TS, "hr_bpm": 72.5, "rr_ms": [830.0, 845.0], "quality": 0.9}
ALERT_DOC: dict[str, Any] = AlertEvent(
    alert_id="p-1:vt:1", revision=1, action="raised", patient_id="p-1", device_id="d-1",
    condition="ventricular_tachycardia", category="physiological", priority="high",
    onset_ts_ms=TS, detected_ts_ms=TS + 500, rule="r", score=0.9, threshold=0.5,
    strip={"sample_rate_hz": 250, "start_ts_ms": TS, "samples_mv": [0.1]}, details={"rate_bpm": 180},
).to_dict()
ACK_DOC: dict[str, Any] = {"alert_id": "p-1:vt:1", "action": "ack", "by": "nurse", "team": "c",
                           "ts_ms": TS, "note": "seen"}


def _encode(doc: Any) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()


# what a hostile or broken producer can send besides random bytes: a number of thousands
# of digits, nesting deeper than the interpreter's stack
pathological = st.one_of(
    st.builds(lambda n: b"[" * n, st.integers(1, 20_000)),
    st.builds(lambda n, pre: pre + b"9" * n + b"}", st.integers(1, 10_000),
              st.sampled_from([b'{"seq":', b'{"schema":"cardiowatch.hr/1","hr_bpm":', b'{"ts_ms":'])),
)
raw_bytes = st.one_of(st.binary(max_size=300), st.builds(_encode, json_values), pathological)
keys = st.one_of(st.none(), st.just(b"p-1"), st.binary(max_size=10))


def _check_wearable(decode: Any, stream: str, raw: bytes, key: bytes | None) -> Any:
    try:
        value = decode(raw, key)
    except InvalidMessage as e:
        assert e.reason in REASONS and e.detail
        dl = json.loads(DeadLetter.from_error(stream, e, InMessage(key, raw, 0, 7)).to_json())  # type: ignore[arg-type]
        assert dl["reason"] == e.reason and base64.b64decode(dl["raw_b64"]) == raw
        return None
    if key is not None:
        assert key == value.patient_id.encode()
    assert value.patient_id.isprintable() and value.device_id.isprintable()
    assert value.seq >= 0 and isinstance(value.ts_ms, int)
    return value


@fuzz_settings(500)
@given(raw=st.one_of(raw_bytes, st.builds(_encode, mutated(ECG_DOC, ("sample_rate_hz", "samples")))),
       key=keys)
# regressions: each was an OverflowError, a ValueError or a RecursionError (so a
# "processing_error" dead letter instead of its reason), or text taken as a sample
@example(raw=_encode({**ECG_DOC, "sample_rate_hz": 10**400}), key=None)
@example(raw=_encode({**ECG_DOC, "samples": [[10**400, 0, 0], [0, 0, 0]]}), key=None)
@example(raw=_encode({**ECG_DOC, "samples": [["0.1", "0", "0"], ["0", "0", "0"]]}), key=None)
@example(raw=_encode({**ECG_DOC, "samples": [[True, False, True], [True, True, True]]}), key=None)
@example(raw=_encode({**ECG_DOC, "samples": [[None, 0, 0], [0, 0, 0]]}), key=None)
@example(raw=b'{"seq":' + b"9" * 5000 + b"}", key=None)
@example(raw=b"[" * 100_000, key=None)
def test_ecg_decoder(raw: bytes, key: bytes | None) -> None:
    c = _check_wearable(decode_ecg, "ecg", raw, key)
    if c is None:
        return
    assert isinstance(c, ECGChunk)
    assert c.samples_mv.dtype == np.float64 and c.samples_mv.ndim == 2
    assert c.samples_mv.shape[0] == len(c.leads) and c.n_samples >= 1
    assert np.isfinite(c.samples_mv).all()
    assert SAMPLE_RATE_RANGE_HZ[0] <= c.sample_rate_hz <= SAMPLE_RATE_RANGE_HZ[1]
    if raw[:4] != ECG2_MAGIC:
        doc = json.loads(raw)  # an accepted message held numbers only, never text
        assert not any(isinstance(v, str) for lead in doc["samples"] for v in lead)


# -- cardiowatch.ecg/2 (binary) -----------------------------------------------------------
_ids = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2FF).filter(str.isprintable), min_size=1, max_size=12)


@st.composite
def ecg2_payloads(draw: st.DrawFn) -> bytes:
    """A valid binary chunk (small), as a device would send it."""
    n_leads, n = draw(st.integers(1, 3)), draw(st.integers(1, 40))
    leads = tuple(draw(st.lists(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=5),
                                min_size=n_leads, max_size=n_leads)))
    counts = np.array(draw(st.lists(st.integers(-32768, 32767), min_size=n_leads * n, max_size=n_leads * n)),
                      np.int16).reshape(n_leads, n)
    return pack_ecg2(draw(_ids), draw(_ids), draw(st.integers(0, 2**63 - 1)), draw(st.integers(TS, TS + 10**9)),
                     draw(st.sampled_from([50.0, 128.0, 250.0, 360.0, 2000.0])), counts,
                     draw(st.floats(*SCALE_RANGE_MV)), leads)


_HEADER_FIELDS = [("version", "B"), ("flags", "B"), ("n_leads", "B"), ("len_patient_id", "B"),
                  ("len_device_id", "B"), ("reserved", "B"), ("n_samples", "H"), ("seq", "q"), ("ts_ms", "q"),
                  ("sample_rate_hz", "d"), ("scale_mv", "d")]


@st.composite
def damaged_ecg2(draw: st.DrawFn) -> bytes:
    """A valid chunk with one header field set to any value of its type, bytes flipped, or
    the payload cut or grown: the defects a broken device or gateway makes."""
    raw = bytearray(draw(ecg2_payloads()))
    kind = draw(st.sampled_from(["field", "field", "bytes", "cut", "grow"]))
    if kind == "field":
        i = draw(st.integers(0, len(_HEADER_FIELDS) - 1))
        fmt = _HEADER_FIELDS[i][1]
        value: Any = (draw(st.floats(allow_nan=True, allow_infinity=True)) if fmt == "d"
                      else draw(st.integers(-(2**63), 2**63 - 1)) if fmt == "q"
                      else draw(st.integers(0, 2 ** (8 * struct.calcsize(fmt)) - 1)))
        off = 4 + struct.calcsize("<" + "".join(f for _, f in _HEADER_FIELDS[:i]))
        struct.pack_into("<" + fmt, raw, off, value)
    elif kind == "bytes":
        for _ in range(draw(st.integers(1, 6))):
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    elif kind == "cut":
        raw = raw[:draw(st.integers(0, len(raw) - 1))]
    else:
        raw += draw(st.binary(min_size=1, max_size=20))
    return bytes(raw)


@fuzz_settings(600)
@given(raw=st.one_of(ecg2_payloads(), damaged_ecg2(), st.builds(lambda b: ECG2_MAGIC + b, st.binary(max_size=120))),
       key=keys)
@example(raw=ECG2_MAGIC, key=None)
@example(raw=ECG2_MAGIC + b"\x02" + b"\x00" * 39, key=None)  # a header of zeros: ids of length 0
def test_ecg2_decoder(raw: bytes, key: bytes | None) -> None:
    c = _check_wearable(decode_ecg, "ecg", raw, key)
    if c is None:
        return
    assert isinstance(c, ECGChunk)
    assert c.samples_mv.dtype == np.float64 and c.samples_mv.shape[0] == len(c.leads) and c.n_samples >= 1
    assert np.isfinite(c.samples_mv).all()
    assert SAMPLE_RATE_RANGE_HZ[0] <= c.sample_rate_hz <= SAMPLE_RATE_RANGE_HZ[1]
    assert c.n_samples <= int(c.sample_rate_hz * 10) and all(c.leads)
    # an accepted chunk is exactly what a producer writes for its values
    scale = ECG2_HEADER.unpack_from(raw)[-1]
    counts = np.rint(c.samples_mv / scale).astype(np.int16)
    assert pack_ecg2(c.patient_id, c.device_id, c.seq, c.ts_ms, c.sample_rate_hz, counts, scale, c.leads) == raw


@fuzz_settings(500)
@given(raw=st.one_of(raw_bytes, st.builds(_encode, mutated(HR_DOC, ("rr_ms", "quality")))), key=keys)
# regressions: OverflowError from math.isfinite on a huge integer
@example(raw=_encode({**HR_DOC, "hr_bpm": 10**400}), key=None)
@example(raw=_encode({**HR_DOC, "rr_ms": [10**400]}), key=None)
@example(raw=_encode({**HR_DOC, "quality": -(10**400)}), key=None)
def test_hr_decoder(raw: bytes, key: bytes | None) -> None:
    s = _check_wearable(decode_hr, "hr", raw, key)
    if s is None:
        return
    assert isinstance(s, HRSample)
    assert HR_RANGE_BPM[0] <= s.hr_bpm <= HR_RANGE_BPM[1] and math.isfinite(s.hr_bpm)
    assert all(math.isfinite(v) for v in s.rr_ms)
    assert s.quality is None or 0.0 <= s.quality <= 1.0


@fuzz_settings(400)
@given(raw=st.one_of(raw_bytes, st.builds(_encode, mutated(ALERT_DOC, ("details", "strip", "escalation_level")))))
# regressions: AttributeError (null, [], details null: the dispatcher's start-up rebuild
# caught only ValueError, TypeError and KeyError, so one such record stopped it starting),
# TypeError, UnicodeDecodeError, and fields of the wrong type accepted
@example(raw=b"null")
@example(raw=b"[]")
@example(raw=_encode({**ALERT_DOC, "details": None}))
@example(raw=_encode({**ALERT_DOC, "escalation_level": "2"}))
@example(raw=_encode({**ALERT_DOC, "priority": ["high"]}))
@example(raw=_encode({k: v for k, v in ALERT_DOC.items() if k != "rule"}))
@example(raw=b"\xff")
def test_alert_decoder(raw: bytes) -> None:
    try:
        ev = AlertEvent.from_json(raw)
    except AlertDecodeError as e:
        assert str(e)
        return
    # a decoded alert is usable by the dispatcher: its id, its routing key, its JSON
    assert isinstance(ev.event_id, str) and ev.priority in ("high", "medium", "low")
    assert isinstance(ev.escalation_level, int) and ev.escalation_level >= 0
    assert AlertEvent.from_json(ev.to_json()) == ev


@fuzz_settings(300)
@given(raw=st.one_of(raw_bytes, st.builds(_encode, mutated(ACK_DOC))))
# regressions: OverflowError (also stopped the dispatcher's start-up rebuild), TypeError,
# KeyError, and a float or a number as text accepted as a time
@example(raw=_encode({**ACK_DOC, "ts_ms": float("inf")}))
@example(raw=_encode({**ACK_DOC, "ts_ms": 1.5e300}))
@example(raw=_encode({**ACK_DOC, "ts_ms": None}))
@example(raw=_encode({k: v for k, v in ACK_DOC.items() if k != "alert_id"}))
@example(raw=_encode({**ACK_DOC, "note": 5}))
def test_ack_record_decoder(raw: bytes) -> None:
    try:
        rec = AckRecord.from_json(raw)
    except AckRecordError as e:
        assert str(e)
        return
    assert isinstance(rec.ts_ms, int) and (rec.note is None or isinstance(rec.note, str))
    assert AckRecord.from_json(rec.to_json()) == rec

