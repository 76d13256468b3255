"""Beat segmentation stage: the streaming ECG front end shared by worker, evaluator and edge.

``StreamingBeatSegmenter`` keeps a rolling buffer of model-rate samples and, at fixed
decision points every second of *stream* time (not per call), runs :func:`detect_qrs`
over the buffer and emits each beat once its post-R window and the next R are in, or
after a maximum wait. Because decisions sit on a fixed grid, the beats emitted do not
depend on how the stream is chunked. ``ECGFrontEnd`` chains preprocessing, segmentation
and signal quality; its state packs to bytes for a per-patient Kafka-backed table.

With ``quantum_mv`` set, the front end rounds its model-rate output to multiples of it
(the stream core uses 1 µV, the resolution of the wire format and of alert strips), so the
segmenter's buffer holds int16 counts with a scale and packs to half the bytes, losslessly:
a state read back continues exactly as the one in memory would have.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np

from models.qrs import REFRACTORY_S, QRSPairModel, detect_qrs
from models.signal import MODEL_RATE_HZ, PreprocessorState, StreamingPreprocessor
from models.sqi import filtered_quality, signal_quality

__all__ = [
    "BeatSpec",
    "Beat",
    "SegmenterState",
    "StreamingBeatSegmenter",
    "segment_record",
    "FrontEndResult",
    "FrontEndState",
    "ECGFrontEnd",
    "beat_features",
    "WARMUP_S",
]

_SEG_VERSION = 1.0
# version 2: packed header, RR ring as sample counts when exact, buffer as int16 counts
# stored as steps from sample to sample: one byte each, the few larger steps (a QRS at a
# fine scale) escaped to two bytes after them
_SEG_VERSION_COMPACT = 2.0
_SEG_V2 = struct.Struct("<dHqqqBBIId")
_ESCAPE = -128
_FE_MAGIC = b"CWFE"
_FE_VERSION = 1
_RR_RING = 8
_QUALITY_WINDOW_S = 2.0  # filtered history before R used for a beat's quality
_CHUNK_QUALITY_S = 2.5  # filtered history used for a chunk's quality
_EDGE_GUARD_S = 0.15  # a next-R this close to the buffer end is not trusted yet
_ANCHOR_S = 1.5  # during a pause the window reaches back this far before the last beat
#: Beats in the first seconds of a signal segment sit in the band-pass filter's start
#: transient and before the QRS detector has learned its thresholds: the stream core
#: and training give them quality 0, so neither the alert policy nor the beat context
#: learns from them.
WARMUP_S: float = 3.0


@dataclass(frozen=True)
class BeatSpec:
    """Where a beat window sits around its R peak, at the model rate.

    Attributes
    ----------
    rate_hz
        Sample rate of the window in Hz.
    pre_s, post_s
        Seconds before and after R; the window is ``[r - pre, r + post)``.
    """

    rate_hz: int = MODEL_RATE_HZ
    pre_s: float = 0.24
    post_s: float = 0.40

    def __post_init__(self) -> None:
        if not isinstance(self.rate_hz, (int, np.integer)) or not 50 <= self.rate_hz <= 1000:
            raise ValueError(f"rate_hz must be an integer in [50, 1000], got {self.rate_hz!r}")
        if not 0.05 <= self.pre_s <= 1.0:
            raise ValueError(f"pre_s must be in [0.05, 1.0], got {self.pre_s}")
        if not 0.1 <= self.post_s <= 1.0:
            raise ValueError(f"post_s must be in [0.1, 1.0], got {self.post_s}")

    @property
    def pre(self) -> int:
        """Samples before R."""
        return int(round(self.pre_s * self.rate_hz))

    @property
    def post(self) -> int:
        """Samples from R (included) to the window end."""
        return int(round(self.post_s * self.rate_hz))

    @property
    def length(self) -> int:
        """Window length in samples (80 at the defaults)."""
        return self.pre + self.post

    def to_dict(self) -> dict[str, Any]:
        return {"rate_hz": int(self.rate_hz), "pre_s": float(self.pre_s), "post_s": float(self.post_s)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BeatSpec:
        missing = {"rate_hz", "pre_s", "post_s"} - set(d)
        if missing:
            raise ValueError(f"beat spec is missing keys {sorted(missing)}, got {sorted(d)}")
        return cls(rate_hz=int(d["rate_hz"]), pre_s=float(d["pre_s"]), post_s=float(d["post_s"]))


@dataclass(frozen=True, eq=False)
class Beat:
    """One segmented beat.

    Attributes
    ----------
    r_index
        R-peak sample index at the model rate since stream start.
    waveform
        float32 ``[spec.length]`` window in mV, minus the window's median.
    rr_prev_s, rr_next_s
        RR intervals to the previous emitted beat and to the next detected beat, in s
        (None when unknown: first beat; no next beat within the maximum wait).
    rr_local_mean_s
        Mean of the recent "normal-ish" RR intervals (within 20% of the median of the
        last 8), before this beat; None until one RR is known.
    quality
        Signal quality 0..1 of the 2 s before R through the window end.
    """

    r_index: int
    waveform: np.ndarray
    rr_prev_s: float | None
    rr_next_s: float | None
    rr_local_mean_s: float | None
    quality: float

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Beat):
            return NotImplemented
        return (
            self.r_index == other.r_index
            and self.rr_prev_s == other.rr_prev_s
            and self.rr_next_s == other.rr_next_s
            and self.rr_local_mean_s == other.rr_local_mean_s
            and self.quality == other.quality
            and np.array_equal(self.waveform, other.waveform)
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, eq=False)
class SegmenterState:
    """Per-stream state of :class:`StreamingBeatSegmenter`.

    Attributes
    ----------
    rate_hz
        Model rate the state was made for.
    buf
        float32 recent samples; ``buf[-1]`` is absolute index ``n_total - 1``.
    n_total
        Samples received since stream start.
    last_r
        Absolute index of the last emitted R peak (-1 before the first).
    next_decide
        Absolute index of the next decision point (a multiple of ``rate_hz``).
    rr_ring
        Last (up to 8) RR intervals in s, oldest first.
    """

    rate_hz: int
    buf: np.ndarray
    n_total: int
    last_r: int
    next_decide: int
    rr_ring: np.ndarray

    def to_bytes(self, quantum_mv: float | None = None) -> bytes:
        """Pack: float64 header and RR ring, then the float32 buffer.

        With ``quantum_mv``, a buffer that is exactly on that grid (as
        ``ECGFrontEnd(quantum_mv=...)`` keeps it) and within int16 is packed as counts
        (version 2, half the bytes); any other buffer is packed as float32. Both read back
        to the identical state."""
        if quantum_mv is not None:
            compact = self._to_bytes_compact(float(quantum_mv))
            if compact is not None:
                return compact
        head = np.array(
            [_SEG_VERSION, self.rate_hz, self.n_total, self.last_r, self.next_decide,
             self.rr_ring.shape[0], self.buf.shape[0]],
            "<f8",
        )
        return head.tobytes() + self.rr_ring.astype("<f8").tobytes() + self.buf.astype("<f4").tobytes()

    def _to_bytes_compact(self, q: float) -> bytes | None:
        if not (np.isfinite(q) and q > 0):
            raise ValueError(f"quantum_mv must be a finite number > 0, got {q}")
        buf = self.buf
        with np.errstate(invalid="ignore"):  # NaN or beyond int16: caught by the check below
            c16 = np.rint(buf * (1.0 / q)).astype(np.int16)
        # bit for bit (-0.0 is not 0.0), which also catches counts that did not fit int16
        if not np.array_equal((c16 * q).astype(np.float32).view(np.uint32), buf.view(np.uint32)):
            return None  # not on the grid (a state from before the quantum): float32
        ring = self.rr_ring.tolist()
        ring_counts = [round(v * self.rate_hz) for v in ring]
        exact_ring = all(k / self.rate_hz == v and abs(k) < 2**31 for k, v in zip(ring_counts, ring))
        d = np.empty_like(c16)
        if d.shape[0]:
            d[0] = c16[0]
            np.subtract(c16[1:], c16[:-1], out=d[1:])  # int16 steps; wrap-around undone by cumsum
        steps = d.astype(np.int8)
        big = (steps != d) | (steps == _ESCAPE)
        escaped = b""
        if big.any():
            escaped = d[big].astype("<i2").tobytes()
            steps[big] = _ESCAPE
        head = _SEG_V2.pack(_SEG_VERSION_COMPACT, self.rate_hz, self.n_total, self.last_r, self.next_decide,
                            len(ring), 1 if exact_ring else 0, buf.shape[0], len(escaped) // 2, q)
        packed_ring = (struct.pack(f"<{len(ring)}i", *ring_counts) if exact_ring
                       else self.rr_ring.astype("<f8").tobytes())
        return head + packed_ring + steps.tobytes() + escaped

    @classmethod
    def _from_bytes_compact(cls, raw: bytes) -> SegmenterState:
        if len(raw) < _SEG_V2.size:
            raise ValueError(f"segmenter state must be at least {_SEG_V2.size} bytes, got {len(raw)}")
        _, rate, n_total, last_r, next_decide, n_ring, ring_kind, n_buf, n_esc, q = _SEG_V2.unpack_from(raw)
        if ring_kind not in (0, 1) or not (np.isfinite(q) and q > 0) or n_esc > n_buf:
            raise ValueError(f"segmenter state has ring kind {ring_kind}, quantum {q}, {n_esc} escapes in {n_buf}")
        ring_size = (4 if ring_kind else 8) * n_ring
        want = _SEG_V2.size + ring_size + n_buf + 2 * n_esc
        if len(raw) != want:
            raise ValueError(f"segmenter state must be {want} bytes, got {len(raw)}")
        pos = _SEG_V2.size
        if ring_kind:
            ring = np.frombuffer(raw, "<i4", n_ring, pos).astype(np.float64) / float(rate)
        else:
            ring = np.frombuffer(raw, "<f8", n_ring, pos).astype(np.float64)
        pos += ring_size
        steps = np.frombuffer(raw, np.int8, n_buf, pos)
        d = steps.astype(np.int16)
        at = np.flatnonzero(steps == _ESCAPE)
        if at.shape[0] != n_esc:
            raise ValueError(f"segmenter state has {at.shape[0]} escaped steps, its header says {n_esc}")
        d[at] = np.frombuffer(raw, "<i2", n_esc, pos + n_buf)
        counts = np.cumsum(d, dtype=np.int16)  # wraps like the int16 steps did
        return cls(int(rate), (counts.astype(np.float64) * q).astype(np.float32), int(n_total), int(last_r),
                   int(next_decide), ring)

    @classmethod
    def from_bytes(cls, raw: bytes) -> SegmenterState:
        """Inverse of :meth:`to_bytes` (either version)."""
        if len(raw) < 56:
            raise ValueError(f"segmenter state must be at least 56 bytes, got {len(raw)}")
        head = np.frombuffer(raw[:56], "<f8")
        if head[0] == _SEG_VERSION_COMPACT:
            return cls._from_bytes_compact(raw)
        if head[0] != _SEG_VERSION:
            raise ValueError(f"segmenter state version must be {_SEG_VERSION} or {_SEG_VERSION_COMPACT}, "
                             f"got {head[0]}")
        n_ring, n_buf = int(head[5]), int(head[6])
        if len(raw) != 56 + 8 * n_ring + 4 * n_buf:
            raise ValueError(
                f"segmenter state must be {56 + 8 * n_ring + 4 * n_buf} bytes, got {len(raw)}"
            )
        ring = np.frombuffer(raw[56 : 56 + 8 * n_ring], "<f8").astype(np.float64)
        buf = np.frombuffer(raw[56 + 8 * n_ring :], "<f4").astype(np.float32)
        return cls(int(head[1]), buf, int(head[2]), int(head[3]), int(head[4]), ring)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SegmenterState):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]


class StreamingBeatSegmenter:
    """Rolling-buffer QRS detection and beat windowing on model-rate samples.

    Parameters
    ----------
    spec
        Beat window; its ``rate_hz`` is the rate of the input samples.
    history_s
        Buffer length in seconds (>= 4 s so a beat can wait ``max_wait_s`` and still
        have its window and threshold-learning context in the buffer). During a pause
        the buffer grows to keep the last beat in view, up to twice this.
    max_wait_s
        A beat with no next R this long after its R is emitted with ``rr_next_s=None``.
    pair_model
        The QRS detector's pair test (:func:`models.qrs.detect_qrs`): the shipped models,
        others (evaluation of a retrained set), or ``"none"``.
    """

    def __init__(self, spec: BeatSpec = BeatSpec(), history_s: float = 6.0, max_wait_s: float = 2.0,
                 pair_model: QRSPairModel | Literal["shipped", "none"] = "shipped") -> None:
        if not 4.0 <= history_s <= 60.0:
            raise ValueError(f"history_s must be in [4, 60], got {history_s}")
        if not spec.post_s + _EDGE_GUARD_S <= max_wait_s <= history_s - 2.0:
            raise ValueError(
                f"max_wait_s must be in [{spec.post_s + _EDGE_GUARD_S}, {history_s - 2.0}], "
                f"got {max_wait_s}"
            )
        self.spec = spec
        self.rate_hz = int(spec.rate_hz)
        self.history = int(round(history_s * self.rate_hz))
        self.hop = self.rate_hz  # one decision per second of stream time
        self.max_wait = int(round(max_wait_s * self.rate_hz))
        self._refr = int(round(REFRACTORY_S * self.rate_hz))
        self._guard = int(round(_EDGE_GUARD_S * self.rate_hz))
        self._qwin = int(round(_QUALITY_WINDOW_S * self.rate_hz))
        self.pair_model = pair_model

    def initial_state(self) -> SegmenterState:
        """State for a new stream."""
        return SegmenterState(self.rate_hz, np.empty(0, np.float32), 0, -1, self.hop, np.empty(0))

    def process(self, state: SegmenterState, y: np.ndarray) -> tuple[list[Beat], SegmenterState]:
        """Append model-rate samples and return the beats that became final.

        Parameters
        ----------
        state
            From :meth:`initial_state` or the previous call.
        y
            1-D preprocessed samples in mV at ``spec.rate_hz``.

        Returns
        -------
        beats, new_state
            Beats in increasing ``r_index`` order, none emitted before.
        """
        self._check(state)
        y = np.asarray(y)
        if y.ndim != 1:
            raise ValueError(f"y must be 1-D, got shape {y.shape}")
        if y.shape[0] == 0:
            return [], state
        full = np.concatenate([state.buf, y.astype(np.float32)])
        base = state.n_total - state.buf.shape[0]  # absolute index of full[0]
        n_total = state.n_total + y.shape[0]
        last_r, ring, nd = state.last_r, state.rr_ring, state.next_decide
        beats: list[Beat] = []
        while nd <= n_total:
            w = full[max(0, self._window_start(nd, last_r, ring) - base) : nd - base]
            new, last_r, ring = self._decide(w, nd, last_r, ring, final=False)
            beats.extend(new)
            nd += self.hop
        keep = n_total - min(self._window_start(nd, last_r, ring), n_total - self.history)
        new_state = SegmenterState(self.rate_hz, full[-keep:].copy(), n_total, last_r, nd, ring)
        return beats, new_state

    def _window_start(self, end: int, last_r: int, ring: np.ndarray) -> int:
        """First absolute sample of the detection window that ends at ``end``.

        Normally the last ``history`` samples. Around a pause the window stretches back
        to ``_ANCHOR_S`` before the last two emitted beats (up to twice ``history``), so
        the detector learns its thresholds from real QRS complexes and tells the T wave
        of the beat before (or after) the pause, the P wave of the next beat and the
        noise in between from a QRS; a window of silence alone would make the noise its
        own reference.
        """
        start = end - self.history
        if last_r >= 0:
            first = last_r - int(round(float(ring[-1]) * self.rate_hz)) if ring.shape[0] else last_r
            anchor = first - int(round(_ANCHOR_S * self.rate_hz))
            start = max(min(start, anchor), end - 2 * self.history)
        return max(start, 0)

    def flush(self, state: SegmenterState) -> tuple[list[Beat], SegmenterState]:
        """Emit every remaining beat whose window is complete (end of a record)."""
        self._check(state)
        beats, last_r, ring = self._decide(state.buf, state.n_total, state.last_r, state.rr_ring, final=True)
        return beats, SegmenterState(self.rate_hz, state.buf, state.n_total, last_r, state.next_decide, ring)

    def _check(self, state: SegmenterState) -> None:
        if state.rate_hz != self.rate_hz:
            raise ValueError(f"state is for {state.rate_hz} Hz, segmenter is {self.rate_hz} Hz")

    def _decide(
        self, w: np.ndarray, end: int, last_r: int, ring: np.ndarray, final: bool
    ) -> tuple[list[Beat], int, np.ndarray]:
        spec, fs = self.spec, float(self.rate_hz)
        start = end - w.shape[0]
        r_all = detect_qrs(w, fs, pair_model=self.pair_model) + start
        out: list[Beat] = []
        for i, r in enumerate(r_all.tolist()):
            if r <= last_r + self._refr or r - spec.pre < start:
                continue
            if r + spec.post > end:
                break
            nxt = int(r_all[i + 1]) if i + 1 < r_all.shape[0] else None
            if nxt is not None and nxt + self._guard <= end:
                rr_next: float | None = (nxt - r) / fs
            elif final or end - r >= self.max_wait:
                rr_next = (nxt - r) / fs if nxt is not None else None
            else:
                break
            lo = r - spec.pre - start
            wave = w[lo : lo + spec.length]
            wave = (wave - _median(wave)).astype(np.float32)
            q = filtered_quality(w[max(0, r - self._qwin - start) : r + spec.post - start], fs).quality
            rr_prev = (r - last_r) / fs if last_r >= 0 else None
            rr_mean = _normalish_mean(ring)
            out.append(Beat(int(r), wave, rr_prev, rr_next, rr_mean, float(q)))
            if rr_prev is not None:
                ring = np.append(ring, rr_prev)[-_RR_RING:]
            last_r = int(r)
        return out, last_r, ring


def _median(a: np.ndarray) -> np.floating:
    """``np.median`` of a short 1-D array by one partial sort (same value and dtype)."""
    n = a.shape[0]
    h = n // 2
    if n % 2:
        return np.partition(a, h)[h]
    p = np.partition(a, (h - 1, h))
    return np.add.reduce(p[h - 1 : h + 1]) / 2


def _normalish_mean(ring: np.ndarray) -> float | None:
    n = ring.shape[0]
    if n == 0:
        return None
    med = float(_median(ring))
    ok = ring[np.abs(ring - med) <= 0.2 * med]
    return float(np.add.reduce(ok) / ok.shape[0]) if ok.shape[0] else med


def segment_record(y: np.ndarray, spec: BeatSpec = BeatSpec(), history_s: float = 6.0,
                   pair_model: QRSPairModel | Literal["shipped", "none"] = "shipped") -> list[Beat]:
    """Segment a whole preprocessed record by the streaming path (1 s chunks), then flush.

    Parameters
    ----------
    y
        Model-rate preprocessed record in mV (output of ``preprocess_record``).
    spec
        Beat window.
    history_s
        Segmenter buffer length in seconds.
    pair_model
        As for :class:`StreamingBeatSegmenter`.

    Returns
    -------
    list[Beat]
    """
    seg = StreamingBeatSegmenter(spec, history_s, pair_model=pair_model)
    state = seg.initial_state()
    beats: list[Beat] = []
    y = np.asarray(y)
    for i in range(0, y.shape[0], seg.rate_hz):
        b, state = seg.process(state, y[i : i + seg.rate_hz])
        beats.extend(b)
    b, _ = seg.flush(state)
    beats.extend(b)
    return beats


@dataclass(frozen=True, eq=False)
class FrontEndResult:
    """Output of one :meth:`ECGFrontEnd.process` call.

    Attributes
    ----------
    beats
        Beats that became final during this chunk.
    quality, lead_off, noisy, reason
        Signal quality of the chunk (raw chunk plus the last 2.5 s of filtered signal).
    n_out
        Model-rate samples produced by this chunk.
    filtered
        Those samples (float64, mV), e.g. for ECG strips.
    """

    beats: list[Beat]
    quality: float
    lead_off: bool
    noisy: bool
    n_out: int
    filtered: np.ndarray
    reason: str = "ok"


@dataclass(frozen=True, eq=False)
class FrontEndState:
    """Per-patient state of :class:`ECGFrontEnd`; ``to_bytes`` for table storage."""

    in_rate_hz: float
    pre: PreprocessorState
    seg: SegmenterState

    def to_bytes(self, quantum_mv: float | None = None) -> bytes:
        """Pack; ``quantum_mv`` as for :meth:`SegmenterState.to_bytes`."""
        pre = self.pre.to_bytes()
        head = struct.pack("<BdI", _FE_VERSION, self.in_rate_hz, len(pre))
        return _FE_MAGIC + head + pre + self.seg.to_bytes(quantum_mv)

    @classmethod
    def from_bytes(cls, raw: bytes) -> FrontEndState:
        """Inverse of :meth:`to_bytes`."""
        hsize = len(_FE_MAGIC) + struct.calcsize("<BdI")
        if len(raw) < hsize or raw[:4] != _FE_MAGIC:
            raise ValueError(f"front-end state must start with {_FE_MAGIC!r}, got {raw[:4]!r}")
        version, rate, n_pre = struct.unpack("<BdI", raw[4:hsize])
        if version != _FE_VERSION:
            raise ValueError(f"front-end state version must be {_FE_VERSION}, got {version}")
        pre = PreprocessorState.from_bytes(raw[hsize : hsize + n_pre])
        seg = SegmenterState.from_bytes(raw[hsize + n_pre :])
        return cls(rate, pre, seg)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FrontEndState):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]


class ECGFrontEnd:
    """Preprocess, segment beats and rate signal quality, one raw chunk at a time.

    Parameters
    ----------
    in_rate_hz
        Sample rate of the raw stream in Hz, in [50, 2000].
    spec
        Beat window (its ``rate_hz`` is the model rate).
    history_s
        Segmenter buffer length in seconds.
    quantum_mv
        Round the model-rate output to multiples of this (mV); None keeps float64. The
        stream core uses 0.001 (1 µV): the buffer then packs as int16 counts.

    Examples
    --------
    >>> fe = ECGFrontEnd(250.0)
    >>> state = fe.initial_state()
    >>> result, state = fe.process(state, np.zeros(250))
    >>> result.n_out
    125
    """

    def __init__(self, in_rate_hz: float, spec: BeatSpec = BeatSpec(), history_s: float = 6.0,
                 quantum_mv: float | None = None) -> None:
        if quantum_mv is not None and not (np.isfinite(quantum_mv) and 0 < quantum_mv <= 0.1):
            raise ValueError(f"quantum_mv must be in (0, 0.1] mV, got {quantum_mv}")
        self.quantum_mv = quantum_mv
        self.pre = StreamingPreprocessor(in_rate_hz, spec.rate_hz)
        self.in_rate_hz = self.pre.in_rate_hz
        self.spec = spec
        self.seg = StreamingBeatSegmenter(spec, history_s)
        self._qn = int(round(_CHUNK_QUALITY_S * spec.rate_hz))

    def initial_state(self) -> FrontEndState:
        return FrontEndState(self.in_rate_hz, self.pre.initial_state(), self.seg.initial_state())

    def process(self, state: FrontEndState, x_mv: np.ndarray) -> tuple[FrontEndResult, FrontEndState]:
        """Process one raw chunk.

        Parameters
        ----------
        state
            From :meth:`initial_state`, the previous call, or ``FrontEndState.from_bytes``.
        x_mv
            1-D raw samples in mV at ``in_rate_hz``.

        Returns
        -------
        result, new_state

        Raises
        ------
        ValueError
            If ``state`` was made for another input rate (both rates named), or ``x_mv``
            is not 1-D finite.
        """
        if state.in_rate_hz != self.in_rate_hz:
            raise ValueError(
                f"front-end state is for in_rate_hz={state.in_rate_hz}, "
                f"this front end is in_rate_hz={self.in_rate_hz}; start a new stream"
            )
        x = np.asarray(x_mv, dtype=np.float64)
        y, pre = self.pre.process(state.pre, x)
        if self.quantum_mv is not None:
            y = np.rint(y / self.quantum_mv) * self.quantum_mv + 0.0  # + 0.0: no -0.0, which counts cannot hold
        beats, seg = self.seg.process(state.seg, y)
        window = seg.buf[-max(y.shape[0], self._qn) :]
        sq = signal_quality(x, window, float(self.spec.rate_hz), raw_rate_hz=self.in_rate_hz)
        result = FrontEndResult(beats, sq.quality, sq.lead_off, sq.noisy, int(y.shape[0]), y, sq.reason)
        return result, FrontEndState(self.in_rate_hz, pre, seg)


def beat_features(beats: Sequence[Beat], spec: BeatSpec | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs for a batch of beats.

    Parameters
    ----------
    beats
        Beats from the segmenter.
    spec
        Only used for the waveform width of an empty batch (default ``BeatSpec()``).

    Returns
    -------
    waveforms, rr_context
        float32 ``[n, length]`` and float32 ``[n, 2]`` holding
        ``[rr_prev / rr_local_mean, rr_next / rr_local_mean]``, 1.0 where unknown.
    """
    if not beats:
        length = (spec or BeatSpec()).length
        return np.zeros((0, length), np.float32), np.zeros((0, 2), np.float32)
    waves = np.stack([np.asarray(b.waveform, np.float32) for b in beats])
    rr = np.ones((len(beats), 2), np.float32)
    for i, b in enumerate(beats):
        m = b.rr_local_mean_s
        if m is not None and m > 0:
            if b.rr_prev_s is not None:
                rr[i, 0] = b.rr_prev_s / m
            if b.rr_next_s is not None:
                rr[i, 1] = b.rr_next_s / m
    return waves, rr
