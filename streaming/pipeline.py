"""Score: the per-patient stream core, from raw message bytes to scored beats and alerts.

Pure Python objects, no Faust, Kafka, HTTP or Prometheus: the Faust agents
(:mod:`streaming.app`), the evaluator and the edge runner all call this same code.

One batch of consumed messages goes through::

    decode (streaming.schemas) -> stream checks (streaming.position: redelivery, duplicate,
    gap, restart, clock jump)
    -> ECG front end per chunk (models.beats: band-pass, resample, QRS, beats, SQI)
    -> beat context per patient (models.ecg.beatfeatures: the patient's own dominant beat)
    -> ONE autoencoder call and ONE beat-classifier call for every beat of every patient
       in the batch (models.ecg.scorer), and one VF-detector call for every due signal
       window when the bundle has one (models.ecg.vf) -> alert policy (streaming.policy)

Per-patient state is a small dataclass that packs to bytes, so the worker keeps it in
a Faust table backed by a changelog topic and a restarted worker resumes where it was.
It is written for every patient in every batch, so it is packed compactly (see
:func:`_pack_compact`): the front end keeps its signal on a 1 µV grid
(:data:`SIGNAL_QUANTUM_MV`), the signal buffer is stored once, as int16 counts (the alert
strip is its tail), and the whole record is deflated. Older layouts still load.
Event time always comes from the messages (``ts_ms``); the only wall clock used is
the ``now_wall_ms`` the caller passes for ``produced_wall_ms`` and no-data ticks.
"""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, get_type_hints

import numpy as np

from models.beats import WARMUP_S, BeatSpec, ECGFrontEnd, FrontEndState
from models.autoencoder import Detector
from models.ecg.beatfeatures import BeatContextState
from models.ecg.scorer import BeatScorer
from models.ecg.vf import VFDetector, due_windows, window_features
from models.hr.af import AFDetector
from streaming import jsoncodec
# DeadLetter lives in its own module (the dispatcher writes the same schema); kept here for callers
from streaming.deadletter import DEADLETTER_RAW_MAX, DEADLETTER_SCHEMA, DeadLetter
from streaming.errors import MalformedMessage, SequenceError, StateDecodeError
from streaming.events import (
    AlertEvent,
    DeviceClockEvent,
    HRObservation,
    QualityObservation,
    ScoredBeat,
    VFObservation,
)
from streaming.policy import AlertPolicy, PolicyStateError, json_value_fits
from streaming.position import ECG_RULE, HR_RULE, STITCH_TOLERANCE_MS, StreamPosition, Verdict
from streaming.schemas import ECGChunk, HRSample, decode_ecg, decode_hr

__all__ = [
    "InMessage",
    "DeadLetter",
    "ECGPatientState",
    "HRPatientState",
    "ECGBatchResult",
    "HRBatchResult",
    "ECGPipeline",
    "HRPipeline",
    "HRScorer",
    "DEADLETTER_SCHEMA",
    "DEADLETTER_RAW_MAX",
    "SIGNAL_QUANTUM_MV",
]

Stream = Literal["ecg", "hr"]

# kept for callers of the old name: see streaming.position.STITCH_TOLERANCE_MS
GAP_TOLERANCE_MS = STITCH_TOLERANCE_MS
STRIP_S = 6.0
#: The front end's model-rate signal is kept on this grid (mV): 1 µV, the resolution of
#: ecg/1 (rounded to 0.001 mV), of ecg/2 at its usual scale and of alert strips. The
#: signal buffer in every stored state is then int16 counts, half the bytes, losslessly.
SIGNAL_QUANTUM_MV = 0.001


@dataclass(frozen=True, slots=True)
class InMessage:
    """One consumed Kafka record, as the core sees it."""

    key: bytes | None
    value: bytes | None
    partition: int
    offset: int


def _pack(header: dict[str, Any], blobs: Mapping[str, bytes]) -> bytes:
    """Pack a JSON header and named binary blobs into one compact value."""
    header = dict(header, _blobs=[[k, len(v)] for k, v in blobs.items()])
    h = jsoncodec.dumps(header)
    return struct.pack("<I", len(h)) + h + b"".join(blobs.values())


def _unpack(raw: bytes) -> tuple[dict[str, Any], dict[str, bytes]]:
    (n,) = struct.unpack_from("<I", raw)
    header = jsoncodec.loads(raw[4:4 + n])
    pos, blobs = 4 + n, {}
    for name, size in header.pop("_blobs"):
        blobs[name] = raw[pos:pos + size]
        pos += size
    return header, blobs


# Compact states: magic (which table), version byte, the length of the deflated text part
# (u32), the deflated text part (the header's JSON and the JSON blobs), then the binary
# blobs. An older state starts with its header's length (< 2**24 here, so its fourth byte
# is 0, never a magic's).
ECG_STATE_MAGIC, HR_STATE_MAGIC = b"CWSE", b"CWSH"
ECG_STATE_VERSION, HR_STATE_VERSION = 4, 3
_ZLEVEL = 6
_MAX_STATE_BYTES = 4 * 1024 * 1024  # a state inflating to more is corrupt (or hostile)


def _pack_compact(magic: bytes, version: int, header: dict[str, Any], text: Mapping[str, bytes],
                  binary: Mapping[str, bytes]) -> bytes:
    """Magic, version, then ``header`` and the ``text`` blobs deflated, then the ``binary``
    blobs as they are.

    Only the JSON is deflated: its keys and 13-digit event times shrink to less than half
    for ~10 µs, while the binary parts (the one-byte signal steps of
    :meth:`models.beats.SegmenterState.to_bytes`, float16 beat templates) would gain a
    few percent for several times that."""
    z = zlib.compress(_pack(dict(header, _bin=[[k, len(v)] for k, v in binary.items()]), text), _ZLEVEL)
    return b"".join([magic, bytes([version]), struct.pack("<I", len(z)), z, *binary.values()])


def _unpack_any(raw: bytes, magic: bytes, version: int) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Header and blobs of a compact state of this table, or of an older layout."""
    if raw[:4] in (ECG_STATE_MAGIC, HR_STATE_MAGIC):
        if raw[:4] != magic:
            raise ValueError(f"state magic is {raw[:4]!r}, this table's is {magic!r} (a state of the other stream?)")
        if len(raw) < 5 or raw[4] != version:
            raise ValueError(f"state version must be {version}, got {raw[4] if len(raw) > 4 else None}")
        (n,) = struct.unpack_from("<I", raw, 5)
        z = zlib.decompressobj()
        try:
            body = z.decompress(raw[9:9 + n], _MAX_STATE_BYTES)
        except zlib.error as e:
            raise ValueError(f"the state's deflated part ({n} bytes) is corrupt ({e})") from None
        if z.unconsumed_tail or not z.eof or z.unused_data:
            raise ValueError(f"the state's deflated part ({n} bytes) is cut, longer, or inflates beyond 4 MiB")
        h, b = _unpack(body)
        pos = 9 + n
        for name, size in h.pop("_bin"):
            if not isinstance(name, str) or not isinstance(size, int) or size < 0:
                raise ValueError(f"state blob {name!r:.30} has size {size!r:.30}")
            b[name] = raw[pos:pos + size]
            pos += size
        if pos != len(raw):
            raise ValueError(f"state is {len(raw)} bytes, its parts add up to {pos}")
        h["v"] = version
        return h, b
    return _unpack(raw)


_POSITION_HINTS = get_type_hints(StreamPosition)
_ECG_HEADER_HINTS: dict[str, Any] = {
    **_POSITION_HINTS, "patient_id": str, "device_id": str, "sample_rate_hz": float | None,
    "seg_t0_ms": float, "strip_end_ms": float, "gaps": int, "beats_scored": int, "art_run": int,
    "strip_n": int}
_HR_HEADER_HINTS: dict[str, Any] = {
    **_POSITION_HINTS, "patient_id": str, "device_id": str, "rr_ms": list[float], "new_rr": int,
    "rr_decimals": int}
_REQUIRED_HEADER = ("patient_id", "device_id", "last_seq", "last_ts_ms", "last_offset")
_COMPACT_ONLY = ("strip_n", "rr_decimals")


def _counter(v: Any, name: str) -> int:
    """A count from a state header (int, or a float the header check let through) as an
    int in [0, 2**63), which is what is written back."""
    n = int(v)
    if not 0 <= n < 2**63:
        raise ValueError(f"state header {name!r} must be a count in [0, 2**63), got {v!r:.40}")
    return n


def _position_header(pos: StreamPosition) -> dict[str, Any]:
    """The position's header, without ``held`` when there is no held message (it loads as
    None): a state header without a null is written by orjson alone."""
    h = pos.to_header()
    if h.get("held") is None:
        del h["held"]
    return h


def _decode_state(what: str, raw: bytes, hints: Mapping[str, Any],
                  build: Callable[[dict[str, Any], dict[str, bytes]], Any],
                  magic: bytes, version: int) -> Any:
    """Unpack a stored patient state, check its header's types, build it; every failure
    is a :class:`StateDecodeError` naming the problem (a changelog record may be
    truncated, from another release, or corrupt)."""
    try:
        h, b = _unpack_any(raw, magic, version)
    except (struct.error, ValueError, TypeError, KeyError, RecursionError, AttributeError) as e:
        raise StateDecodeError(f"{what} state is not a packed state: {type(e).__name__}: {str(e)[:120]}") from None
    if not isinstance(h, dict):
        raise StateDecodeError(f"{what} state header must be an object, got {type(h).__name__}")
    # what each layout must have: a compact state holds its strip length and RR decimals,
    # an older one its RR history in the header
    compact = raw[:4] == magic
    kind = [k for k in ("new_rr", "seg_t0_ms", "strip_end_ms", "gaps", "beats_scored", "sample_rate_hz",
                        "strip_n", "rr_decimals") if k in hints and (compact or k not in _COMPACT_ONLY)]
    if "new_rr" in hints and not compact:
        kind.append("rr_ms")
    for k in (*_REQUIRED_HEADER, *kind):
        if k not in h:
            raise StateDecodeError(f"{what} state header lacks {k!r}")
    for k, v in h.items():
        hint = hints.get(k)
        if hint is not None and not json_value_fits(v, hint):
            raise StateDecodeError(f"{what} state header {k!r} must fit {hint}, got {v!r:.60}")
    held = h.get("held")
    if any(len(r) != 4 for r in h.get("runs", [])) or (held is not None and len(held) != 3):
        raise StateDecodeError(f"{what} state header has a broken run or held message")
    try:
        return build(h, b)
    except PolicyStateError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, struct.error, OverflowError) as e:
        raise StateDecodeError(f"{what} state cannot be decoded: {type(e).__name__}: {str(e)[:120]}") from None


@dataclass(slots=True)
class ECGPatientState:
    """Everything the ECG stream remembers about one patient."""

    patient_id: str
    device_id: str = ""
    pos: StreamPosition = field(default_factory=StreamPosition)
    sample_rate_hz: float | None = None
    seg_t0_ms: float = 0.0  # event time of model-rate sample 0 of the current segment
    front: FrontEndState | None = None
    context: BeatContextState = field(default_factory=BeatContextState)
    policy: Any = None  # streaming.policy state object
    strip: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    strip_end_ms: float = 0.0
    gaps: int = 0
    beats_scored: int = 0
    # artefact windows above threshold in a row, up to the last window scored
    art_run: int = 0

    def to_bytes(self, policy: AlertPolicy, quantum_mv: float | None = SIGNAL_QUANTUM_MV) -> bytes:
        """Pack compactly (version 4): the signal buffer as int16 counts when it is on the
        ``quantum_mv`` grid (as :class:`ECGPipeline` keeps it; float32 otherwise), the strip
        not at all when it is the buffer's tail (it always is in the pipeline), the whole
        deflated. Versions 1-3 (JSON header, float32 buffer and strip) still load."""
        strip = np.asarray(self.strip, np.float32)
        buf = self.front.seg.buf if self.front is not None else None
        n = strip.shape[0]
        in_buf = n == 0 or (buf is not None and n <= buf.shape[0]
                            and buf[buf.shape[0] - n:].view(np.uint32).tobytes() == strip.view(np.uint32).tobytes())
        header = {
            "patient_id": self.patient_id, "device_id": self.device_id,
            **_position_header(self.pos), "sample_rate_hz": self.sample_rate_hz,
            "seg_t0_ms": self.seg_t0_ms, "strip_end_ms": self.strip_end_ms,
            "gaps": self.gaps, "beats_scored": self.beats_scored, "art_run": self.art_run,
            # the strip is the last strip_n samples of the segmenter's buffer; -1: a blob
            "strip_n": n if in_buf else -1,
        }
        binary = {
            "front": b"" if self.front is None else self.front.to_bytes(quantum_mv),
            "context": self.context.to_bytes(),
        }
        if not in_buf:
            binary["strip"] = strip.tobytes()
        text = {"policy": b"" if self.policy is None else policy.state_to_json(self.policy)}
        return _pack_compact(ECG_STATE_MAGIC, ECG_STATE_VERSION, header, text, binary)

    @classmethod
    def from_bytes(cls, raw: bytes, policy: AlertPolicy) -> ECGPatientState:
        """Inverse of :meth:`to_bytes`; :class:`~streaming.errors.StateDecodeError` (or
        its :class:`~streaming.errors.PolicyStateError`) for anything else."""
        return _decode_state("ECG patient", raw, _ECG_HEADER_HINTS,  # type: ignore[no-any-return]
                             lambda h, b: cls._build(h, b, policy), ECG_STATE_MAGIC, ECG_STATE_VERSION)

    @classmethod
    def _build(cls, h: dict[str, Any], b: dict[str, bytes], policy: AlertPolicy) -> ECGPatientState:
        pstate = policy.state_from_json(b["policy"]) if b["policy"] else None
        front = FrontEndState.from_bytes(b["front"]) if b["front"] else None
        n = int(h.get("strip_n", -1))  # versions 1-3: always a blob
        if n < 0:
            strip = np.frombuffer(b["strip"], np.float32).copy()
        elif n == 0:
            strip = np.zeros(0, np.float32)
        else:
            if front is None or n > front.seg.buf.shape[0]:
                raise ValueError(f"strip_n is {n} but the front end holds "
                                 f"{0 if front is None else front.seg.buf.shape[0]} samples")
            strip = front.seg.buf[-n:].copy()
        return cls(
            patient_id=h["patient_id"], device_id=h["device_id"],
            pos=StreamPosition.from_header(h), sample_rate_hz=h["sample_rate_hz"], seg_t0_ms=h["seg_t0_ms"],
            front=front,
            # a version-1 state (before the beat context) starts a new context: it
            # relearns the patient's dominant beat within its first eight beats
            context=BeatContextState.from_bytes(b["context"]) if b.get("context") else BeatContextState(),
            policy=pstate, strip=strip,
            # counters: the header check lets numbers be int or float (times pass through
            # float arithmetic); a counter read back as 3.0 is still the integer 3
            strip_end_ms=h["strip_end_ms"], gaps=_counter(h["gaps"], "gaps"),
            beats_scored=_counter(h["beats_scored"], "beats_scored"),
            art_run=_counter(h.get("art_run", 0), "art_run"),  # a state from before the artefact detector: 0
        )


@dataclass(slots=True)
class _Pending:
    """One step of a patient's stream inside a batch, applied in order by the policy."""

    st: ECGPatientState
    quality: QualityObservation | None
    beats: list[Any]
    seg_t0_ms: float  # event time of sample 0 of the segment these beats belong to
    gap: tuple[int, int] | None = None  # a hole in the stream just before this step
    # device clock events shown by this step's message, applied before everything else
    # (a re-anchor moves the patient's time base before the step's own observations)
    clock: tuple[DeviceClockEvent, ...] = ()
    # VF-detector windows that end in this chunk: absolute end samples in the segment
    # and the band-passed windows [k, window]
    vf_ends: np.ndarray | None = None
    vf_windows: np.ndarray | None = None


#: Verdicts that start a new signal segment, and the gap-note reason they give.
_GAP_REASONS = {"gap": "seq", "new_device": "device", "restart": "restart", "jump": "clock"}
#: Verdicts after which the stream's sequence and time start a new run.
_NEW_RUN = ("new_device", "restart", "jump")


def _gap_reason(verdict: Verdict, last_seq: int | None, seq: int) -> str | None:
    if verdict.kind == "gap" and last_seq is not None and seq == last_seq + 1:
        return "time"  # in sequence, but the chunk does not start where the last ended
    return _GAP_REASONS.get(verdict.kind)


@dataclass(frozen=True, slots=True)
class GapNote:
    """Where a device stream broke: enough to tell a device that dropped data (the
    sequence jumps between consecutive offsets) from a worker that lost its place (the
    offsets jump too)."""

    stream: str
    patient_id: str
    device_id: str
    # "seq" (sequence jump), "time" (timestamps apart), "device", "rate", "restart"
    # (the device restarted its sequence), "clock" (its clock jumped; time re-anchored)
    reason: str
    partition: int
    last_offset: int
    offset: int
    last_seq: int | None
    seq: int

    def describe(self) -> str:
        return (f"{self.stream} stream of patient {self.patient_id} (device {self.device_id}) broke "
                f"({self.reason}): seq {self.last_seq} -> {self.seq}, partition {self.partition} "
                f"offset {self.last_offset} -> {self.offset}")


@dataclass(frozen=True, slots=True)
class ECGBatchResult:
    scored: list[ScoredBeat]
    alerts: list[AlertEvent]
    dead: list[DeadLetter]
    quality: list[QualityObservation]
    states: dict[str, ECGPatientState]
    valid: int
    redelivered: int
    gap_notes: list[GapNote]
    model_calls: int
    model_batch_sizes: list[int]
    model_seconds: float
    vf: list[VFObservation] = field(default_factory=list)
    #: device restarts, clock jumps and glitches (counted and logged by the shell)
    clock_events: list[DeviceClockEvent] = field(default_factory=list)

    @property
    def gaps(self) -> int:
        return len(self.gap_notes)


class ECGPipeline:
    """The ECG stream core: validation, front end, batched scoring, policy.

    Parameters
    ----------
    scorer : models.ecg.scorer.BeatScorer
        The bundle's autoencoder and beat classifier (one call each per batch).
    model_version : str
        Recorded on every score and alert.
    policy : streaming.policy.AlertPolicy
        Owns every alert decision.
    spec : models.beats.BeatSpec
        Must match the bundle's beat window.
    clock_ms : callable
        Wall clock for ``produced_wall_ms`` only (injected so tests control it).
    vf_detector : models.ecg.vf.VFDetector, optional
        Scores every window of band-passed signal on its grid (one call per batch) into
        a :class:`~streaming.events.VFObservation` for the policy. None (a bundle made
        before it): no VF observations.
    artefact_detector : models.ecg.vf.VFDetector, optional
        The artefact detector (:mod:`models.ecg.artefact`) on the same window grid: a
        chunk in which a window ends that is the ``settings.consecutive``-th in a row
        above its threshold is reported noisy (its
        :class:`~streaming.events.QualityObservation` has ``noisy`` set), so the policy
        suppresses the ECG conditions across it. None: chunk quality alone decides.
    signal_quantum_mv : float or None
        The front end's model-rate signal is rounded to multiples of this (default
        :data:`SIGNAL_QUANTUM_MV`, 1 µV), so the state stores it as int16 counts; None
        keeps it float (the states then store float32, twice the bytes).
    """

    def __init__(self, scorer: BeatScorer, model_version: str, policy: AlertPolicy, spec: BeatSpec,
                 clock_ms: Callable[[], int], vf_detector: VFDetector | None = None,
                 artefact_detector: VFDetector | None = None,
                 signal_quantum_mv: float | None = SIGNAL_QUANTUM_MV) -> None:
        self.scorer = scorer
        self.signal_quantum_mv = signal_quantum_mv
        self.model_version = model_version
        self.policy = policy
        self.spec = spec
        self.clock_ms = clock_ms
        self._front_ends: dict[float, ECGFrontEnd] = {}
        self.vf_detector = vf_detector
        self.artefact_detector = artefact_detector
        for name, det in (("vf_detector", vf_detector), ("artefact_detector", artefact_detector)):
            if det is None:
                continue
            vs = det.settings
            if vs.rate_hz != spec.rate_hz:
                raise ValueError(f"{name} runs at {vs.rate_hz} Hz, the front end at {spec.rate_hz} Hz")
            if vs.threshold is None:
                raise ValueError(f"{name} has no threshold")
        if vf_detector is not None and artefact_detector is not None:
            a, b = vf_detector.settings, artefact_detector.settings
            if (a.window, a.hop) != (b.window, b.hop):
                raise ValueError(f"vf_detector and artefact_detector must share one window grid, got "
                                 f"window/hop {a.window}/{a.hop} and {b.window}/{b.hop} samples")
        # the window grid both detectors score (features computed once per window)
        self._windows = (vf_detector or artefact_detector)

    def front_end(self, sample_rate_hz: float) -> ECGFrontEnd:
        fe = self._front_ends.get(sample_rate_hz)
        if fe is None:
            fe = self._front_ends[sample_rate_hz] = ECGFrontEnd(sample_rate_hz, self.spec,
                                                                quantum_mv=self.signal_quantum_mv)
        return fe

    def new_state(self, patient_id: str) -> ECGPatientState:
        return ECGPatientState(patient_id=patient_id, policy=self.policy.initial_state(patient_id))

    # -- one batch -------------------------------------------------------------------
    def process(self, msgs: Sequence[InMessage],
                states: Mapping[str, ECGPatientState | None]) -> ECGBatchResult:
        """Process one batch of consumed ECG records.

        ``states`` maps patient id to its current state (or None when new); the
        result's ``states`` holds every state this batch changed.
        """
        out_states: dict[str, ECGPatientState] = {}
        dead: list[DeadLetter] = []
        quality: list[QualityObservation] = []
        pending: list[_Pending] = []
        gap_notes: list[GapNote] = []
        clock_events: list[DeviceClockEvent] = []
        valid = redelivered = 0

        for m in msgs:
            try:
                if m.key is None:
                    raise MalformedMessage("missing_key", "message has no key; the key must be the patient id")
                chunk = decode_ecg(m.value, m.key)
                pid = chunk.patient_id
                # One private copy per patient per batch, mutated chunk by chunk in order.
                st = out_states.get(pid)
                if st is None:
                    base = states.get(pid)
                    st = self._copy(base) if base is not None else self.new_state(pid)
                old_seq, old_offset, old_device = st.pos.last_seq, st.pos.last_offset, st.device_id
                verdict = st.pos.check(ECG_RULE, pid, chunk.seq, chunk.ts_ms, chunk.duration_ms,
                                       m.offset, m.partition, chunk.device_id)
                if verdict.kind == "redelivered":
                    redelivered += 1
                    continue
                clock_events.extend(verdict.events)
                if verdict.kind in ("duplicate", "held"):
                    # set aside; the position may have changed (a message held for the
                    # next one to confirm, or a held one found to be a glitch)
                    out_states[pid] = st
                    if verdict.events:
                        pending.append(_Pending(st, None, [], st.seg_t0_ms, clock=verdict.events))
                    raise SequenceError(
                        "duplicate_seq" if verdict.kind == "duplicate" else "out_of_order_ts",
                        verdict.detail)
                old_front, old_rate, old_t0 = st.front, st.sample_rate_hz, st.seg_t0_ms
                old_end = st.pos.last_ts_ms
                reset = self._advance(st, chunk, m.offset, m.partition, verdict)
                out_states[pid] = st
                gap = None
                if reset and old_front is not None and old_rate is not None and old_end is not None:
                    why = _gap_reason(verdict, old_seq, chunk.seq) or (
                        "rate" if old_rate != chunk.sample_rate_hz else "time")
                    gap_notes.append(GapNote("ecg", pid, old_device, why, m.partition, old_offset,
                                             m.offset, old_seq, chunk.seq))
                    # beats still waiting in the old segment are emitted, not dropped (in
                    # the old time base: they are applied before the re-anchor)
                    flushed, _ = self.front_end(old_rate).seg.flush(old_front.seg)
                    if flushed:
                        pending.append(_Pending(st, None, list(flushed), old_t0))
                    # nothing ECG-derived may span the hole, nor the new segment's warm-up;
                    # after a re-anchor the hole starts where the old stream ended, moved
                    # into the new time base
                    gap = (int(old_end + verdict.shift_ms), int(chunk.ts_ms + WARMUP_S * 1000))
                assert st.front is not None  # _advance started a segment if there was none
                prev_buf = st.front.seg.buf
                res, st.front = self.front_end(chunk.sample_rate_hz).process(
                    st.front, chunk.samples_mv[0])
                self._keep_strip(st, res.filtered, chunk)
                q = QualityObservation(pid, chunk.device_id, chunk.ts_ms, int(chunk.duration_ms),
                                       float(res.quality), bool(res.lead_off), bool(res.noisy))
                quality.append(q)
                item = _Pending(st, q, list(res.beats), st.seg_t0_ms, gap, clock=verdict.events)
                if self._windows is not None:
                    vs = self._windows.settings
                    item.vf_ends, item.vf_windows = due_windows(
                        np.concatenate([prev_buf, res.filtered.astype(np.float32)]),
                        st.front.seg.n_total, vs.window, vs.hop, res.n_out)
                pending.append(item)
                valid += 1
            except Exception as exc:  # invalid input or a bug: keep the message, go on
                dead.append(DeadLetter.from_error("ecg", exc, m))

        vf = self._score_windows(pending, quality)
        scored, alerts, sizes, model_seconds = self._score_and_decide(pending, vf)
        return ECGBatchResult(scored, alerts, dead, quality, out_states, valid, redelivered,
                              gap_notes, len(sizes), sizes, model_seconds,
                              [o for obs in vf.values() for o in obs], clock_events)

    def flush(self, states: Mapping[str, ECGPatientState]) -> ECGBatchResult:
        """End of a finite stream (a replayed record): emit the beats still waiting for
        samples after them. A live stream never calls this."""
        pending = []
        out_states: dict[str, ECGPatientState] = {}
        for pid, base in states.items():
            if base is None or base.front is None or base.sample_rate_hz is None:
                continue
            st = self._copy(base)
            beats, seg = self.front_end(base.sample_rate_hz).seg.flush(base.front.seg)
            st.front = replace(base.front, seg=seg)
            out_states[pid] = st
            pending.append(_Pending(st, None, list(beats), st.seg_t0_ms))
        scored, alerts, sizes, model_seconds = self._score_and_decide(pending)
        return ECGBatchResult(scored, alerts, [], [], out_states, 0, 0, [], len(sizes), sizes,
                              model_seconds)

    def _score_windows(self, pending: list[_Pending],
                       quality: list[QualityObservation]) -> dict[int, list[VFObservation]]:
        """The window features of every window due in the batch, computed once; the
        artefact detector marks the chunks it finds noisy (in ``pending`` and in
        ``quality``), then the VF detector's scores become observations per step.

        A window that starts inside a segment's warm-up (filter start transient) gets
        quality 0, like the beats there, so the policy does not trust it."""
        items = [(i, p) for i, p in enumerate(pending) if p.vf_ends is not None and len(p.vf_ends)]
        if self._windows is None or not items:
            return {}
        feats = window_features(np.concatenate([p.vf_windows for _, p in items if p.vf_windows is not None]),
                                self._windows.settings.rate_hz)
        art = self.artefact_detector
        if art is not None:
            assert art.threshold is not None  # checked in __init__
            above = (art.score_features(feats) > art.threshold).tolist()
            need = art.settings.consecutive
            at = {id(q): k for k, q in enumerate(quality)}
            start = 0
            for i, p in items:
                assert p.vf_ends is not None
                n = len(p.vf_ends)
                # noise lasts: a lone window above threshold is more often a fast or odd
                # rhythm than an artefact; the run of windows carries over between batches
                run, hit = (0 if p.gap is not None else p.st.art_run), False
                for a in above[start:start + n]:
                    run = run + 1 if a else 0
                    hit = hit or run >= need
                p.st.art_run = run
                chunk_q = p.quality
                if chunk_q is not None and not chunk_q.noisy and not chunk_q.lead_off and hit:
                    marked = replace(chunk_q, noisy=True)
                    quality[at[id(chunk_q)]] = marked
                    p.quality = marked
                start += n
        det = self.vf_detector
        if det is None:
            return {}
        vs = det.settings
        prob = det.score_features(feats)
        assert vs.threshold is not None  # checked in __init__
        warm = self.spec.rate_hz * WARMUP_S
        out: dict[int, list[VFObservation]] = {}
        start = 0
        for i, p in items:
            assert p.vf_ends is not None
            q = p.quality.quality if p.quality is not None else None
            device = p.quality.device_id if p.quality is not None else p.st.device_id
            obs = []
            for end, pr in zip(p.vf_ends.tolist(), prob[start:start + len(p.vf_ends)].tolist()):
                ts = int(round(p.seg_t0_ms + end * 1000.0 / self.spec.rate_hz))
                obs.append(VFObservation(
                    p.st.patient_id, device, ts, int(round(vs.window_s * 1000)), float(pr),
                    float(vs.threshold), 0.0 if end - vs.window < warm else q, self.model_version))
            start += len(p.vf_ends)
            out[i] = obs
        return out

    def _score_and_decide(self, pending: list[_Pending],
                          vf: Mapping[int, Sequence[VFObservation]] | None = None,
                          ) -> tuple[list[ScoredBeat], list[AlertEvent], list[int], float]:
        """One autoencoder and one classifier call for every beat of every patient, then,
        step by step in stream order, the policy."""
        # Beats in a segment's warm-up carry quality 0, for the beat context as for the
        # policy, so neither learns from the filter's start transient.
        warm = self.spec.rate_hz * WARMUP_S
        owners = [i for i, item in enumerate(pending) if item.beats]
        for i in owners:
            pending[i].beats = [b if b.r_index >= warm else replace(b, quality=0.0) for b in pending[i].beats]
        scores: list[Any] = []
        context: dict[str, BeatContextState] = {}
        model_seconds, sizes = 0.0, []
        if owners:
            t = time.perf_counter()
            scores, context = self.scorer.score(
                [(pending[i].st.patient_id, pending[i].st.context, pending[i].beats) for i in owners])
            model_seconds = time.perf_counter() - t
            sizes.append(sum(len(pending[i].beats) for i in owners))
        scores_by_item = dict(zip(owners, scores))

        # Pass 2, in stream order per patient: gap, chunk quality, its beats, then the
        # pause check up to where beat detection is complete after this chunk.
        scored: list[ScoredBeat] = []
        alerts: list[AlertEvent] = []
        now = self.clock_ms()
        for i, item in enumerate(pending):
            st, q, beats = item.st, item.quality, item.beats
            for c in item.clock:
                ev, st.policy = self.policy.on_observation(st.policy, c)
                alerts.extend(ev)
            if item.gap is not None:
                ev, st.policy = self.policy.on_gap(st.policy, *item.gap)
                alerts.extend(ev)
            if q is not None:
                ev, st.policy = self.policy.on_quality(st.policy, q)
                alerts.extend(ev)
            if beats:
                bs = scores_by_item[i]
                beat_events = []
                for k, b in enumerate(beats):
                    r_ts = int(round(item.seg_t0_ms + b.r_index * 1000.0 / self.spec.rate_hz))
                    beat_events.append(ScoredBeat(
                        beat_id=f"{st.patient_id}:{r_ts}", patient_id=st.patient_id,
                        device_id=st.device_id, r_ts_ms=r_ts,
                        rr_ms=None if b.rr_prev_s is None else round(b.rr_prev_s * 1000.0, 1),
                        score=float(bs.score[k]), threshold=float(bs.threshold),
                        flagged=bool(bs.flagged[k]), signal_quality=float(b.quality),
                        model_version=self.model_version, beat_class=bs.beat_class[k],
                        p_ventricular=None if bs.p_ventricular is None else round(float(bs.p_ventricular[k]), 4),
                        p_run=None if bs.p_run is None else round(float(bs.p_run[k]), 4),
                        ae_score=float(bs.ae_score[k])))
                st.beats_scored += len(beat_events)
                scored.extend(beat_events)
                ev, st.policy = self.policy.on_beats(st.policy, beat_events)
                alerts.extend(ev)
            for o in (vf or {}).get(i, ()):
                ev, st.policy = self.policy.on_observation(st.policy, o)
                alerts.extend(ev)
            if q is not None and st.sample_rate_hz is not None:
                # A long enough stretch without a beat is itself the finding (no beat will
                # ever arrive for it); judged only up to where detection is complete.
                seg = self.front_end(st.sample_rate_hz).seg
                complete_ms = q.ts_ms + q.duration_ms - int(seg.max_wait * 1000 / seg.rate_hz)
                ev, st.policy = self.policy.on_tick(st.policy, now, event_ts_ms=complete_ms)
                alerts.extend(ev)

        by_pid = {item.st.patient_id: item.st for item in pending}
        for pid, ctx in context.items():
            by_pid[pid].context = ctx
        alerts = [self._finish_alert(a, by_pid.get(a.patient_id), now) for a in alerts]
        return scored, alerts, sizes, model_seconds

    def tick(self, state: ECGPatientState, now_ms: int) -> tuple[list[AlertEvent], ECGPatientState]:
        """Time-driven checks (no data from the device, no beat for too long)."""
        st = self._copy(state)
        ev, st.policy = self.policy.on_tick(st.policy, now_ms)
        return [self._finish_alert(a, st, self.clock_ms()) for a in ev], st

    # -- helpers ---------------------------------------------------------------------
    @staticmethod
    def _copy(st: ECGPatientState) -> ECGPatientState:
        return replace(st, pos=st.pos.copy())

    def _advance(self, st: ECGPatientState, chunk: ECGChunk, offset: int, partition: int,
                 verdict: Verdict) -> bool:
        """Move the stream position; start a new segment (returns True) on a gap, a new
        device, a restart, a clock jump or a new rate.

        Within a segment the time base follows the device's clock: sample ``k`` is at
        ``seg_t0_ms + k / rate``, and each chunk moves ``seg_t0_ms`` by how far its
        stamped start is from where the previous chunk ended (at most the stitch
        tolerance). A device whose clock runs 1 % fast or slow against its sampling
        therefore keeps its beats, chunk quality and pause checks on one clock; without
        it the beats fell 36 s an hour behind the chunk times, and a fast clock raised a
        false pause alarm after about 400 s."""
        new_segment = (
            st.front is None
            or st.sample_rate_hz != chunk.sample_rate_hz
            or verdict.kind != "ok"
            or st.pos.last_ts_ms is None
            or abs(chunk.ts_ms - st.pos.last_ts_ms) > GAP_TOLERANCE_MS
        )
        if not new_segment and st.pos.last_ts_ms is not None:
            st.seg_t0_ms += chunk.ts_ms - st.pos.last_ts_ms
        if new_segment:
            if st.front is not None:
                st.gaps += 1
            st.front = self.front_end(chunk.sample_rate_hz).initial_state()
            st.seg_t0_ms = float(chunk.ts_ms)
            st.sample_rate_hz = chunk.sample_rate_hz
            st.strip = np.zeros(0, np.float32)
        st.pos.advance(chunk.seq, chunk.ts_ms, chunk.duration_ms, offset, partition,
                       chunk.device_id, verdict.kind in _NEW_RUN)
        st.device_id = chunk.device_id
        return new_segment

    def _keep_strip(self, st: ECGPatientState, filtered: np.ndarray, chunk: ECGChunk) -> None:
        keep = int(STRIP_S * self.spec.rate_hz)
        st.strip = np.concatenate([st.strip, np.asarray(filtered, np.float32)])[-keep:]
        st.strip_end_ms = chunk.end_ts_ms

    def _finish_alert(self, a: AlertEvent, st: ECGPatientState | None, now_ms: int) -> AlertEvent:
        strip = a.strip
        if strip is None and st is not None and len(st.strip) and a.action == "raised":
            start = st.strip_end_ms - len(st.strip) * 1000.0 / self.spec.rate_hz
            strip = {"sample_rate_hz": self.spec.rate_hz, "start_ts_ms": int(round(start)),
                     "units": "mV", "samples_mv": [round(float(v), 3) for v in st.strip]}
        return replace(a, strip=strip, produced_wall_ms=now_ms,
                       model_version=a.model_version or self.model_version)


# -- heart-rate stream ------------------------------------------------------------------
class HRScorer:
    """Adapter around the heart-rate detector: RR history -> window -> score.

    ``detector`` scores windows built by ``make_window(rr_ms)``; ``window`` is the
    number of RR intervals per window. When no HR model is loaded the pipeline still
    runs the policy's rule-based checks on the reported heart rate.
    """

    def __init__(self, detector: Detector, window: int,
                 make_window: Callable[[np.ndarray], np.ndarray]) -> None:
        self.detector = detector
        self.window = int(window)
        self.make_window = make_window

    @property
    def threshold(self) -> float:
        if self.detector.threshold is None:
            raise ValueError("the heart-rate detector has no threshold; load a fitted bundle")
        return float(self.detector.threshold)


@dataclass(slots=True)
class HRPatientState:
    patient_id: str
    device_id: str = ""
    pos: StreamPosition = field(default_factory=StreamPosition)
    rr_ms: list[float] = field(default_factory=list)
    new_rr: int = 0
    policy: Any = None

    def to_bytes(self, policy: AlertPolicy) -> bytes:
        """Pack compactly (version 3): the RR history as integers in the fewest decimals
        that hold every value exactly (0.1 ms as wearables report it), as int16 steps
        (see :func:`_rr_pack`), the header and policy JSON deflated. Versions 1-2 (RR in
        the JSON header) load."""
        decimals, rr = _rr_pack(self.rr_ms)
        header = {"patient_id": self.patient_id, "device_id": self.device_id,
                  **_position_header(self.pos), "new_rr": self.new_rr, "rr_decimals": decimals}
        return _pack_compact(HR_STATE_MAGIC, HR_STATE_VERSION, header,
                             {"policy": b"" if self.policy is None else policy.state_to_json(self.policy)},
                             {"rr": rr})

    @classmethod
    def from_bytes(cls, raw: bytes, policy: AlertPolicy) -> HRPatientState:
        """Inverse of :meth:`to_bytes`; see :meth:`ECGPatientState.from_bytes`."""
        def build(h: dict[str, Any], b: dict[str, bytes]) -> HRPatientState:
            rr = list(h["rr_ms"]) if "rr_decimals" not in h else _rr_unpack(h["rr_decimals"], b["rr"])
            return cls(h["patient_id"], h["device_id"], StreamPosition.from_header(h), rr,
                       _counter(h["new_rr"], "new_rr"),
                       policy.state_from_json(b["policy"]) if b["policy"] else None)
        return _decode_state("heart-rate patient", raw, _HR_HEADER_HINTS,  # type: ignore[no-any-return]
                             build, HR_STATE_MAGIC, HR_STATE_VERSION)


def _rr_pack(rr_ms: Sequence[float]) -> tuple[int, bytes]:
    """(decimals, bytes) of an RR history, exactly.

    The values as integers ``rr * 10**decimals`` for the fewest decimals (0-3) that give
    back every value exactly: ``b"s"``, the first as int32 and the steps between
    neighbours as int16 when they all fit (RR changes by less than 3.2 s from beat to
    beat), else ``b"i"`` and every value as int32. No decimals fit: ``b"f"``, float64,
    decimals -1."""
    a = np.asarray(rr_ms, np.float64)
    for d in range(4):
        k = np.rint(a * 10**d)
        if (np.abs(k) < 2**31).all() and np.array_equal(k / 10**d, a):
            ki = k.astype(np.int64)
            steps = np.diff(ki)
            if ki.shape[0] and (np.abs(steps) < 2**15).all():
                return d, b"s" + struct.pack("<i", int(ki[0])) + steps.astype("<i2").tobytes()
            return d, b"i" + ki.astype("<i4").tobytes()
    return -1, b"f" + a.astype("<f8").tobytes()


def _rr_unpack(decimals: int, raw: bytes) -> list[float]:
    kind, body = raw[:1], raw[1:]
    if kind == b"f" and decimals == -1:
        return np.frombuffer(body, "<f8").tolist()  # type: ignore[no-any-return]
    if not 0 <= decimals <= 3:
        raise ValueError(f"rr_decimals must be -1..3, got {decimals}")
    if kind == b"s":
        if len(body) < 4 or len(body) % 2:
            raise ValueError(f"RR steps take 4 + 2n bytes, got {len(body)}")
        k = np.concatenate([np.frombuffer(body, "<i4", 1), np.frombuffer(body, "<i2", offset=4)]).astype(np.int64)
        k = np.cumsum(k)
    elif kind == b"i":
        k = np.frombuffer(body, "<i4")
    else:
        raise ValueError(f"RR history kind must be s, i or f (f with decimals -1), got {kind!r} with {decimals}")
    return (k.astype(np.float64) / 10**decimals).tolist()  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class HRBatchResult:
    observations: list[HRObservation]
    alerts: list[AlertEvent]
    dead: list[DeadLetter]
    states: dict[str, HRPatientState]
    valid: int
    redelivered: int
    gap_notes: list[GapNote]
    windows_scored: int
    af_windows_scored: int = 0
    #: device restarts, clock jumps and glitches (counted and logged by the shell)
    clock_events: list[DeviceClockEvent] = field(default_factory=list)

    @property
    def gaps(self) -> int:
        return len(self.gap_notes)


class HRPipeline:
    """The heart-rate stream core: validation, RR history, batched HR model and AF
    detector, policy.

    Parameters
    ----------
    scorer : HRScorer or None
        The heart-rate autoencoder (a window every ``step`` new RR intervals).
    policy : AlertPolicy
        Owns every alert decision.
    step : int
        New RR intervals between autoencoder windows.
    clock_ms : callable
        Wall clock for ``produced_wall_ms`` only.
    af : AFDetector or None
        Scores every usable message whose RR history holds a full AF window: one batched
        call per batch, the probability on :attr:`HRObservation.af_probability`.

    Notes
    -----
    The RR history is the patient's last RR intervals (at most four autoencoder windows,
    and at least one AF window), kept in the changelogged state. RR intervals of a
    message below ``signal.min_quality`` are not added to it: an unusable reading says
    nothing about the rhythm, and the policy suppresses the heart-rate conditions for it.
    """

    def __init__(self, scorer: HRScorer | None, policy: AlertPolicy, step: int,
                 clock_ms: Callable[[], int], af: AFDetector | None = None) -> None:
        self.scorer = scorer
        self.policy = policy
        self.step = max(1, int(step))
        self.clock_ms = clock_ms
        if af is not None and af.threshold is None:
            raise ValueError("the AF detector has no threshold; load it from a trained heart-rate bundle")
        self.af = af
        window = scorer.window if scorer else 32
        self.history = max(4 * window, af.window_beats if af is not None else 0)

    def new_state(self, patient_id: str) -> HRPatientState:
        return HRPatientState(patient_id=patient_id, policy=self.policy.initial_state(patient_id))

    def tick(self, state: HRPatientState, now_ms: int) -> tuple[list[AlertEvent], HRPatientState]:
        """Time-driven checks for a patient seen only on the heart-rate stream (a device
        without ECG): no data from the device. ECG patients are ticked by the ECG core."""
        st = replace(state, pos=state.pos.copy(), rr_ms=list(state.rr_ms))
        ev, st.policy = self.policy.on_tick(st.policy, now_ms)
        now = self.clock_ms()
        return [replace(a, produced_wall_ms=now) for a in ev], st

    def process(self, msgs: Sequence[InMessage],
                states: Mapping[str, HRPatientState | None]) -> HRBatchResult:
        out: dict[str, HRPatientState] = {}
        dead: list[DeadLetter] = []
        # (patient state, sample or None for a message set aside, RR window to score or
        # None, the device clock events it showed), in message order
        items: list[tuple[HRPatientState, HRSample | None, np.ndarray | None,
                          tuple[DeviceClockEvent, ...]]] = []
        af_due: list[tuple[int, list[float]]] = []  # (item index, AF window)
        gap_notes: list[GapNote] = []
        clock_events: list[DeviceClockEvent] = []
        valid = redelivered = 0
        window = self.scorer.window if self.scorer else 32
        min_quality = self.policy.config.signal.min_quality
        for m in msgs:
            try:
                if m.key is None:
                    raise MalformedMessage("missing_key", "message has no key; the key must be the patient id")
                s = decode_hr(m.value, m.key)
                st = out.get(s.patient_id)
                if st is None:
                    base = states.get(s.patient_id)
                    st = (replace(base, pos=base.pos.copy(), rr_ms=list(base.rr_ms))
                          if base is not None else self.new_state(s.patient_id))
                old_seq, old_offset = st.pos.last_seq, st.pos.last_offset
                verdict = st.pos.check(HR_RULE, s.patient_id, s.seq, s.ts_ms, 0.0, m.offset,
                                       m.partition, s.device_id)
                if verdict.kind == "redelivered":
                    redelivered += 1
                    continue
                clock_events.extend(verdict.events)
                if verdict.kind in ("duplicate", "held"):
                    out[s.patient_id] = st
                    if verdict.events:
                        items.append((st, None, None, verdict.events))
                    raise SequenceError(
                        "duplicate_seq" if verdict.kind == "duplicate" else "out_of_order_ts",
                        verdict.detail)
                if verdict.kind == "new_device":
                    st.rr_ms = []  # another device's beats are not one RR series
                why = _gap_reason(verdict, old_seq, s.seq)
                if why is not None:
                    gap_notes.append(GapNote("hr", s.patient_id, st.device_id, why, m.partition,
                                             old_offset, m.offset, old_seq, s.seq))
                st.pos.advance(s.seq, s.ts_ms, 0.0, m.offset, m.partition, s.device_id,
                               verdict.kind in _NEW_RUN)
                st.device_id = s.device_id
                usable = s.quality is None or s.quality >= min_quality
                if usable:
                    st.rr_ms = (st.rr_ms + list(s.rr_ms))[-self.history:]
                    st.new_rr += len(s.rr_ms)
                win = None
                if self.scorer is not None and len(st.rr_ms) >= window and st.new_rr >= self.step:
                    st.new_rr = 0
                    win = np.asarray(st.rr_ms[-window:], dtype=np.float64)
                if self.af is not None and usable and len(st.rr_ms) >= self.af.window_beats:
                    af_due.append((len(items), st.rr_ms[-self.af.window_beats:]))
                out[s.patient_id] = st
                items.append((st, s, win, verdict.events))
                valid += 1
            except Exception as exc:  # invalid input or a bug: keep the message, go on
                dead.append(DeadLetter.from_error("hr", exc, m))

        # One model call for every due window of every patient in this batch.
        scores: dict[int, float] = {}
        thr: float | None = None
        windows = [(i, w) for i, (_, _, w, _) in enumerate(items) if w is not None]
        if self.scorer is not None and windows:
            x = np.concatenate([self.scorer.make_window(w) for _, w in windows])
            sc = np.asarray(self.scorer.detector.score(x), dtype=np.float64)
            scores = {i: float(v) for (i, _), v in zip(windows, sc)}
            thr = self.scorer.threshold
        # One AF detector call for every due message of every patient in this batch.
        af_p: dict[int, float] = {}
        af_thr: float | None = None
        if self.af is not None and af_due:
            p = self.af.score(np.asarray([w for _, w in af_due], dtype=np.float64) / 1000.0)
            af_p = {i: float(v) for (i, _), v in zip(af_due, p)}
            af_thr = self.af.threshold

        obs: list[HRObservation] = []
        alerts: list[AlertEvent] = []
        now = self.clock_ms()
        for i, (st, smp, _, clock) in enumerate(items):
            for c in clock:
                ev, st.policy = self.policy.on_observation(st.policy, c)
                alerts.extend(replace(a, produced_wall_ms=now) for a in ev)
            if smp is None:
                continue
            o = HRObservation(st.patient_id, smp.device_id, smp.ts_ms, smp.hr_bpm, smp.rr_ms, smp.quality,
                              scores.get(i), thr if i in scores else None,
                              af_p.get(i), af_thr if i in af_p else None)
            obs.append(o)
            ev, st.policy = self.policy.on_hr(st.policy, o)
            alerts.extend(replace(a, produced_wall_ms=now) for a in ev)
        return HRBatchResult(obs, alerts, dead, out, valid, redelivered, gap_notes, len(scores),
                             len(af_p), clock_events)
