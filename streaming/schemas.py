"""Validate: the versioned JSON wire format of wearable messages, decoded at the boundary.

ECG chunk (``cardiowatch.ecg/1``, Kafka key = patient id, about 1 s per message)::

    {"schema": "cardiowatch.ecg/1", "patient_id": "p-0001", "device_id": "dev-17",
     "seq": 42, "ts_ms": 1767225600000, "sample_rate_hz": 250,
     "leads": ["MLII"], "units": "mV", "samples": [[0.01, 0.02, ...]]}

``ts_ms`` is the time of the first sample (epoch ms); ``samples`` holds one list per
lead, all the same length. ``units`` is ``"mV"`` or ``"uV"``.

Heart-rate sample (``cardiowatch.hr/1``, same key)::

    {"schema": "cardiowatch.hr/1", "patient_id": "p-0001", "device_id": "dev-17",
     "seq": 42, "ts_ms": 1767225600000, "hr_bpm": 72.0,
     "rr_ms": [830.0, 845.0], "quality": 0.97}

``rr_ms`` (beat-to-beat intervals ending in this sample's second) and ``quality``
(0..1) are optional.

Binary ECG chunk (``cardiowatch.ecg/2``, same topic and key): int16 samples with a scale
in mV per count, as chest straps and patches send them; a quarter of the JSON's bytes.
Little-endian, packed, no alignment (``schemas/README.md``, and the machine-readable
``schemas/cardiowatch.ecg-2.ksy``)::

    offset  size  type  field
    0       4     -     magic "CWEC"
    4       1     u1    version, 2
    5       1     u1    flags, 0 (reserved)
    6       1     u1    n_leads, 1..12
    7       1     u1    patient_id length in bytes, 1..128
    8       1     u1    device_id length in bytes, 1..128
    9       1     u1    reserved, 0
    10      2     u2    n_samples per lead
    12      8     s8    seq
    20      8     s8    ts_ms
    28      8     f8    sample_rate_hz
    36      8     f8    scale_mv (mV per count)
    44      ...         patient_id, device_id (UTF-8), then per lead a u1 length and
                        the lead name (UTF-8), then n_leads * n_samples s2 samples,
                        lead after lead

:func:`decode_ecg` reads both versions (a payload starting with the magic is binary) into
the same :class:`ECGChunk`, with the same checks and reasons as far as the fields are the
same. Stateless checks live here; stream checks (redelivered, duplicate or gapped
sequence numbers, restarts, clock jumps) live in :mod:`streaming.position`.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from streaming import jsoncodec
from streaming.errors import FieldError, MalformedMessage, ValueOutOfRange

__all__ = [
    "ECG_SCHEMA",
    "ECG2_SCHEMA",
    "ECG2_MAGIC",
    "ECG2_HEADER",
    "SCALE_RANGE_MV",
    "HR_SCHEMA",
    "MAX_PAYLOAD_BYTES",
    "SAMPLE_RATE_RANGE_HZ",
    "HR_RANGE_BPM",
    "ECGChunk",
    "HRSample",
    "decode_ecg",
    "decode_hr",
    "encode_ecg",
    "encode_ecg2",
    "pack_ecg2",
    "encode_hr",
]

ECG_SCHEMA = "cardiowatch.ecg/1"
HR_SCHEMA = "cardiowatch.hr/1"
# 10 s of 12 leads at 1 kHz as JSON floats is ~1 MB; a wearable chunk is ~1 s of 1-3
# leads, so 512 KiB leaves headroom while refusing payloads meant to exhaust memory.
MAX_PAYLOAD_BYTES = 512 * 1024
MAX_CHUNK_S = 10.0
MAX_LEADS = 12
SAMPLE_RATE_RANGE_HZ = (50.0, 2000.0)
# Physiologically possible heart rates of a wearer; outside is a device fault.
HR_RANGE_BPM = (15.0, 350.0)
# RR of 150 ms is 400 bpm; 20 s covers long pauses (asystole) that must still be seen.
RR_RANGE_MS = (150.0, 20_000.0)
# Epoch ms between 2000-01-01 and 2100-01-01: catches seconds-vs-ms and zero clocks.
TS_RANGE_MS = (946_684_800_000, 4_102_444_800_000)
_UNIT_SCALE = {"mV": 1.0, "uV": 1e-3, "µV": 1e-3}

ECG2_SCHEMA = "cardiowatch.ecg/2"
ECG2_MAGIC = b"CWEC"  # a JSON document cannot start with "C"
ECG2_VERSION = 2
#: magic, version, flags, n_leads, patient_id and device_id lengths, reserved, n_samples,
#: seq, ts_ms, sample_rate_hz, scale_mv
ECG2_HEADER = struct.Struct("<4sBBBBBBHqqdd")
#: mV per count: 1 nV (a 24-bit front end) .. 1 mV (a 16-bit range of +-32 V: nothing
#: an ECG needs); outside is a device that sent another unit or garbage
SCALE_RANGE_MV = (1e-6, 1.0)
MAX_ID_BYTES = 128
MAX_LEAD_NAME_BYTES = 32


@dataclass(frozen=True, slots=True)
class ECGChunk:
    """A validated ECG chunk; ``samples_mv`` has shape (n_leads, n_samples), float64 mV."""

    patient_id: str
    device_id: str
    seq: int
    ts_ms: int
    sample_rate_hz: float
    leads: tuple[str, ...]
    samples_mv: np.ndarray

    @property
    def n_samples(self) -> int:
        return int(self.samples_mv.shape[1])

    @property
    def duration_ms(self) -> float:
        return self.n_samples * 1000.0 / self.sample_rate_hz

    @property
    def end_ts_ms(self) -> float:
        return self.ts_ms + self.duration_ms


@dataclass(frozen=True, slots=True)
class HRSample:
    """A validated heart-rate sample."""

    patient_id: str
    device_id: str
    seq: int
    ts_ms: int
    hr_bpm: float
    rr_ms: tuple[float, ...] = ()
    quality: float | None = None


def _load(raw: bytes | None, key: bytes | None) -> dict[str, Any]:
    if raw is None or len(raw) == 0:
        raise MalformedMessage("empty_payload", "message value is empty")
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise MalformedMessage(
            "oversized_payload", f"payload is {len(raw)} bytes, limit is {MAX_PAYLOAD_BYTES}")
    try:
        doc = jsoncodec.loads(raw)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of > 4300 digits
        raise MalformedMessage("malformed_json", f"not JSON: {str(exc)[:200]}") from None
    except RecursionError:  # "[[[[..." nested deeper than the interpreter's stack
        raise MalformedMessage("malformed_json", "not JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise MalformedMessage("malformed_json", f"top level must be an object, got {type(doc).__name__}")
    return doc


def _field(doc: dict[str, Any], name: str, types: type | tuple[type, ...], optional: bool = False) -> Any:
    if name not in doc or doc[name] is None:
        if optional:
            return None
        raise FieldError("missing_field", f"field {name!r} is missing")
    value = doc[name]
    # bool is an int subclass; a boolean is never a valid number here.
    if isinstance(value, bool) or not isinstance(value, types):
        want = types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
        raise FieldError("wrong_type", f"field {name!r} must be {want}, got {value!r:.60}")
    return value


def _finite(v: int | float) -> bool:
    """``math.isfinite`` that answers False, not OverflowError, for a huge JSON integer."""
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def _num_text(v: int | float) -> str:
    """A number for a message, short even for an integer of thousands of digits."""
    text = repr(v) if isinstance(v, float) or abs(v) < 10**30 else f"an integer of {len(str(abs(v)))} digits"
    return text


def _ident(doc: dict[str, Any], name: str) -> str:
    value = _field(doc, name, str)
    if not 1 <= len(value) <= 128 or not value.isprintable():
        raise FieldError("wrong_type", f"field {name!r} must be 1-128 printable characters, got {value!r:.60}")
    return value


def _common(doc: dict[str, Any], schema: str, key: bytes | None) -> tuple[str, str, int, int]:
    got = doc.get("schema")
    if got != schema:
        raise MalformedMessage("unsupported_schema", f"schema must be {schema!r}, got {got!r:.60}")
    patient_id = _ident(doc, "patient_id")
    device_id = _ident(doc, "device_id")
    if key is not None and key != patient_id.encode():
        raise MalformedMessage(
            "key_mismatch", f"message key {key[:64]!r} differs from patient_id {patient_id!r}")
    seq = _field(doc, "seq", int)
    if seq < 0:
        raise ValueOutOfRange("bad_seq", f"seq must be >= 0, got {_num_text(seq)}")
    ts_ms = _field(doc, "ts_ms", int)
    if not TS_RANGE_MS[0] <= ts_ms <= TS_RANGE_MS[1]:
        raise ValueOutOfRange(
            "bad_timestamp", f"ts_ms must be epoch milliseconds in {TS_RANGE_MS}, got {_num_text(ts_ms)}")
    return patient_id, device_id, seq, ts_ms


def _check_sample_types(samples: list[Any], leads: list[str]) -> None:
    for lead_i, lead in enumerate(samples):
        for idx, v in enumerate(lead):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise FieldError("wrong_type", f"sample {idx} of lead {leads[lead_i]!r} must be a number, "
                                 f"got {v!r:.30}")


def decode_ecg(raw: bytes | None, key: bytes | None = None) -> ECGChunk:
    """Decode and validate one ECG chunk, ``cardiowatch.ecg/1`` (JSON) or
    ``cardiowatch.ecg/2`` (binary, told apart by its magic).

    Parameters
    ----------
    raw : bytes
        The Kafka message value.
    key : bytes, optional
        The Kafka message key; when given it must equal the patient id.

    Raises
    ------
    streaming.errors.InvalidMessage
        With ``reason`` naming what is wrong and a message naming the bad value.
    """
    if raw is not None and raw[:4] == ECG2_MAGIC and len(raw) <= MAX_PAYLOAD_BYTES:
        return _decode_ecg2(raw, key)
    doc = _load(raw, key)
    patient_id, device_id, seq, ts_ms = _common(doc, ECG_SCHEMA, key)
    fs = _field(doc, "sample_rate_hz", (int, float))
    if not (_finite(fs) and SAMPLE_RATE_RANGE_HZ[0] <= fs <= SAMPLE_RATE_RANGE_HZ[1]):
        raise ValueOutOfRange(
            "bad_sample_rate", f"sample_rate_hz must be in {list(SAMPLE_RATE_RANGE_HZ)}, got {_num_text(fs)}")
    leads = _field(doc, "leads", list)
    if not 1 <= len(leads) <= MAX_LEADS or not all(isinstance(x, str) and x for x in leads):
        raise FieldError("wrong_type", f"leads must be 1-{MAX_LEADS} non-empty strings, got {leads!r:.80}")
    units = _field(doc, "units", str)
    if units not in _UNIT_SCALE:
        raise ValueOutOfRange("bad_units", f"units must be one of {sorted(_UNIT_SCALE)}, got {units!r:.20}")
    samples = _field(doc, "samples", list)
    if len(samples) != len(leads):
        raise ValueOutOfRange(
            "bad_samples_length", f"samples has {len(samples)} lead arrays but leads names {len(leads)}")
    n_max = int(fs * MAX_CHUNK_S)
    lengths = {len(s) if isinstance(s, list) else -1 for s in samples}
    if -1 in lengths:
        raise FieldError("wrong_type", "samples must be a list of number lists, one per lead")
    if len(lengths) != 1:
        raise ValueOutOfRange("bad_samples_length", f"leads have different lengths {sorted(lengths)}")
    n = lengths.pop()
    if not 1 <= n <= n_max:
        raise ValueOutOfRange(
            "bad_samples_length", f"samples per lead must be in [1, {n_max}] at {fs} Hz, got {n}")
    # numbers only: with dtype=float64, np.asarray would also take "0.1" as a sample
    try:
        arr = np.asarray(samples)
        if arr.dtype.kind == "O":  # None (a dropped sample), huge integers or mixed types
            _check_sample_types(samples, leads)
            arr = np.asarray(samples, dtype=np.float64)
    except OverflowError:  # an integer beyond float64
        raise ValueOutOfRange("non_finite_sample", "a sample is an integer beyond float64") from None
    except (TypeError, ValueError):
        raise FieldError("wrong_type", "samples must contain only numbers") from None
    if arr.dtype.kind not in "fi":  # text, booleans
        raise FieldError("wrong_type", f"samples must contain only numbers, got {arr.dtype.kind!r} values")
    arr = arr.astype(np.float64, copy=False)
    if arr.ndim != 2:
        raise FieldError("wrong_type", "samples must be a list of number lists, one per lead")
    finite = np.isfinite(arr)
    if not finite.all():
        lead, idx = np.argwhere(~finite)[0]
        raise ValueOutOfRange(
            "non_finite_sample", f"sample {idx} of lead {leads[lead]!r} is {arr[lead, idx]}")
    return ECGChunk(patient_id, device_id, seq, ts_ms, float(fs), tuple(leads),
                    arr * _UNIT_SCALE[units])


def _utf8_ident(raw: bytes, name: str) -> str:
    try:
        value = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FieldError("wrong_type", f"{name} must be UTF-8, got {raw[:60]!r}") from None
    if not value.isprintable():
        raise FieldError("wrong_type", f"{name} must be 1-128 printable characters, got {value!r:.60}")
    return value


def _decode_ecg2(raw: bytes, key: bytes | None) -> ECGChunk:
    """The binary chunk (``cardiowatch.ecg/2``); see the module docstring for the layout."""
    h = ECG2_HEADER
    if len(raw) < h.size:
        raise MalformedMessage("bad_payload_length",
                               f"a cardiowatch.ecg/2 header is {h.size} bytes, the payload has {len(raw)}")
    _, version, flags, n_leads, n_pid, n_dev, reserved, n, seq, ts_ms, fs, scale = h.unpack_from(raw)
    if version != ECG2_VERSION:
        raise MalformedMessage("unsupported_schema",
                               f"binary ECG version must be {ECG2_VERSION} ({ECG2_SCHEMA!r}), got {version}")
    if flags or reserved:
        raise MalformedMessage("unsupported_schema",
                               f"{ECG2_SCHEMA} flags and reserved byte must be 0, got {flags:#04x} and {reserved:#04x}")
    for name, size in (("patient_id", n_pid), ("device_id", n_dev)):
        if not 1 <= size <= MAX_ID_BYTES:
            raise FieldError("wrong_type", f"field {name!r} must be 1-{MAX_ID_BYTES} bytes, got length {size}")
    if not 1 <= n_leads <= MAX_LEADS:
        raise FieldError("wrong_type", f"leads must be 1-{MAX_LEADS} non-empty strings, got {n_leads} leads")
    pos = h.size + n_pid + n_dev
    if len(raw) < pos:
        raise MalformedMessage("bad_payload_length",
                               f"payload of {len(raw)} bytes ends inside the ids (header says they end at {pos})")
    patient_id = _utf8_ident(raw[h.size:h.size + n_pid], "field 'patient_id'")
    device_id = _utf8_ident(raw[h.size + n_pid:pos], "field 'device_id'")
    if key is not None and key != patient_id.encode():
        raise MalformedMessage(
            "key_mismatch", f"message key {key[:64]!r} differs from patient_id {patient_id!r}")
    if seq < 0:
        raise ValueOutOfRange("bad_seq", f"seq must be >= 0, got {seq}")
    if not TS_RANGE_MS[0] <= ts_ms <= TS_RANGE_MS[1]:
        raise ValueOutOfRange("bad_timestamp", f"ts_ms must be epoch milliseconds in {TS_RANGE_MS}, got {ts_ms}")
    if not (math.isfinite(fs) and SAMPLE_RATE_RANGE_HZ[0] <= fs <= SAMPLE_RATE_RANGE_HZ[1]):
        raise ValueOutOfRange(
            "bad_sample_rate", f"sample_rate_hz must be in {list(SAMPLE_RATE_RANGE_HZ)}, got {fs!r}")
    if not (math.isfinite(scale) and SCALE_RANGE_MV[0] <= scale <= SCALE_RANGE_MV[1]):
        raise ValueOutOfRange("bad_scale", f"scale_mv (mV per count) must be in {list(SCALE_RANGE_MV)}, got {scale!r}")
    leads = []
    for i in range(n_leads):
        size = raw[pos] if pos < len(raw) else None
        if size is None or len(raw) < pos + 1 + size:
            raise MalformedMessage("bad_payload_length",
                                   f"payload of {len(raw)} bytes ends inside the name of lead {i}")
        if not 1 <= size <= MAX_LEAD_NAME_BYTES:
            raise FieldError("wrong_type", f"lead {i} name must be 1-{MAX_LEAD_NAME_BYTES} bytes, got length {size}")
        try:
            leads.append(raw[pos + 1:pos + 1 + size].decode("utf-8"))
        except UnicodeDecodeError:
            raise FieldError("wrong_type", f"lead {i} name must be UTF-8, got {raw[pos + 1:pos + 1 + size]!r}") from None
        pos += 1 + size
    n_max = int(fs * MAX_CHUNK_S)
    if not 1 <= n <= n_max:
        raise ValueOutOfRange(
            "bad_samples_length", f"samples per lead must be in [1, {n_max}] at {fs} Hz, got {n}")
    want = pos + 2 * n_leads * n
    if len(raw) != want:
        raise MalformedMessage("bad_payload_length",
                               f"payload is {len(raw)} bytes, its header says {want} ({n_leads} leads x {n} "
                               f"int16 samples after {pos} bytes of header and names)")
    counts = np.frombuffer(raw, "<i2", n_leads * n, pos).reshape(n_leads, n)
    return ECGChunk(patient_id, device_id, seq, ts_ms, float(fs), tuple(leads), counts * scale)


def decode_hr(raw: bytes | None, key: bytes | None = None) -> HRSample:
    """Decode and validate one heart-rate sample; see :func:`decode_ecg`."""
    doc = _load(raw, key)
    patient_id, device_id, seq, ts_ms = _common(doc, HR_SCHEMA, key)
    hr = _field(doc, "hr_bpm", (int, float))
    if not (_finite(hr) and HR_RANGE_BPM[0] <= hr <= HR_RANGE_BPM[1]):
        raise ValueOutOfRange("bad_hr", f"hr_bpm must be in {list(HR_RANGE_BPM)}, got {_num_text(hr)}")
    rr = _field(doc, "rr_ms", list, optional=True) or []
    if len(rr) > 64:
        raise ValueOutOfRange("bad_rr", f"rr_ms may hold at most 64 intervals, got {len(rr)}")
    for v in rr:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise FieldError("wrong_type", f"rr_ms must hold numbers, got {v!r:.30}")
        if not (_finite(v) and RR_RANGE_MS[0] <= v <= RR_RANGE_MS[1]):
            raise ValueOutOfRange("bad_rr", f"rr_ms values must be in {list(RR_RANGE_MS)}, got {_num_text(v)}")
    quality = _field(doc, "quality", (int, float), optional=True)
    if quality is not None and not (_finite(quality) and 0.0 <= quality <= 1.0):
        raise ValueOutOfRange("bad_quality", f"quality must be in [0, 1], got {_num_text(quality)}")
    return HRSample(patient_id, device_id, seq, ts_ms, float(hr),
                    tuple(float(v) for v in rr), None if quality is None else float(quality))


def encode_ecg(patient_id: str, device_id: str, seq: int, ts_ms: int, sample_rate_hz: float,
               samples_mv: np.ndarray, leads: tuple[str, ...] = ("MLII",)) -> bytes:
    """Encode an ECG chunk (as a wearable or the simulator sends it), rounded to 1 µV."""
    arr = np.atleast_2d(np.asarray(samples_mv, dtype=np.float64))
    doc = {
        "schema": ECG_SCHEMA, "patient_id": patient_id, "device_id": device_id, "seq": seq,
        "ts_ms": int(ts_ms), "sample_rate_hz": sample_rate_hz, "leads": list(leads),
        "units": "mV", "samples": np.round(arr, 3).tolist(),
    }
    return jsoncodec.dumps(doc)


def pack_ecg2(patient_id: str, device_id: str, seq: int, ts_ms: int, sample_rate_hz: float,
              counts: np.ndarray, scale_mv: float, leads: tuple[str, ...] = ("MLII",)) -> bytes:
    """A ``cardiowatch.ecg/2`` chunk from int16 counts, shape (n_leads, n_samples).

    Raises
    ------
    ValueError
        An id or lead name of the wrong length, counts of the wrong shape or beyond
        int16, or more than 65535 samples per lead (the format's field width).
    """
    c = np.atleast_2d(np.asarray(counts))
    pid, dev = patient_id.encode(), device_id.encode()
    names = [x.encode() for x in leads]
    for name, b, most in (("patient_id", pid, MAX_ID_BYTES), ("device_id", dev, MAX_ID_BYTES),
                          *((f"lead {x!r}", n, MAX_LEAD_NAME_BYTES) for x, n in zip(leads, names))):
        if not 1 <= len(b) <= most:
            raise ValueError(f"{name} must be 1-{most} bytes of UTF-8, got {len(b)}")
    if c.ndim != 2 or c.shape[0] != len(leads) or not 1 <= c.shape[0] <= MAX_LEADS or not 1 <= c.shape[1] <= 0xFFFF:
        raise ValueError(f"counts must have shape ({len(leads)} leads, 1..65535 samples), got {c.shape}")
    if c.dtype != np.int16:
        if c.dtype.kind not in "iu" or (c.size and (c.min() < -32768 or c.max() > 32767)):
            raise ValueError(f"counts must be int16 values, got {c.dtype} in [{c.min()}, {c.max()}]")
    head = ECG2_HEADER.pack(ECG2_MAGIC, ECG2_VERSION, 0, len(leads), len(pid), len(dev), 0, c.shape[1],
                            int(seq), int(ts_ms), float(sample_rate_hz), float(scale_mv))
    return b"".join([head, pid, dev, *(bytes([len(n)]) + n for n in names), c.astype("<i2").tobytes()])


def encode_ecg2(patient_id: str, device_id: str, seq: int, ts_ms: int, sample_rate_hz: float,
                samples_mv: np.ndarray, leads: tuple[str, ...] = ("MLII",), scale_mv: float = 0.001) -> bytes:
    """Encode an ECG chunk as ``cardiowatch.ecg/2``: samples rounded to ``scale_mv`` (mV per
    count; the default 1 µV is the resolution :func:`encode_ecg` rounds to).

    Raises
    ------
    ValueError
        A sample that is not finite or beyond int16 at this scale (named), or see
        :func:`pack_ecg2`.
    """
    arr = np.atleast_2d(np.asarray(samples_mv, dtype=np.float64))
    q = np.rint(arr / scale_mv)
    bad = ~np.isfinite(q) | (q < -32768) | (q > 32767)
    if bad.any():
        lead, idx = np.argwhere(bad)[0]
        raise ValueError(f"sample {idx} of lead {leads[lead] if lead < len(leads) else lead!r} is "
                         f"{arr[lead, idx]} mV, beyond int16 at {scale_mv} mV per count")
    return pack_ecg2(patient_id, device_id, seq, ts_ms, sample_rate_hz, q.astype(np.int16), scale_mv, leads)


def encode_hr(patient_id: str, device_id: str, seq: int, ts_ms: int, hr_bpm: float,
              rr_ms: tuple[float, ...] | list[float] = (), quality: float | None = None) -> bytes:
    """Encode a heart-rate sample."""
    doc: dict[str, Any] = {
        "schema": HR_SCHEMA, "patient_id": patient_id, "device_id": device_id, "seq": seq,
        "ts_ms": int(ts_ms), "hr_bpm": round(float(hr_bpm), 2),
        "rr_ms": [round(float(v), 1) for v in rr_ms],
    }
    if quality is not None:
        doc["quality"] = round(float(quality), 3)
    return jsoncodec.dumps(doc)
