"""Beat feature stage: each beat against the patient's own dominant beat, its RR context and the beat before it.

A cardiologist calls a beat ventricular from evidence, not from "unusual": it looks
unlike the patient's own dominant (normally conducted) beat, its QRS is wide, it comes
early and is followed by a compensatory pause. :class:`BeatContext` keeps, per patient
and causally, what that evidence needs:

- the **dominant template**: started from the medoid of the first good, regular,
  non-tachycardic beats, then followed by an exponential average of the beats that
  match it (correlation > 0.9, similar width and amplitude, not premature, rate under
  100 bpm), and re-started from a running average of recent regular beats if nothing
  has matched it for 40 beats (a lead change, a new dominant rhythm). A run of fast
  ventricular beats never becomes the template, so a ventricular tachycardia keeps
  looking unlike the patient's beat for as long as it lasts;
- the **dominant RR**, the average RR interval of template-matching beats, so that
  prematurity is judged against the patient's own rhythm and not against a local mean
  that a run has already pulled down;
- the **previous beat**, so a beat that looks like the ectopic beat before it (the
  second beat of a run) is seen as such.

:func:`beat_feature_matrix` turns a patient's beat sequence into one feature row per
beat (:data:`FEATURE_NAMES`), the input of the beat classifier
(:mod:`models.ecg.classifier`). The worker, the evaluator, the edge runner and
training all call it, so features are identical everywhere. The state packs to a few
hundred bytes (templates stored as float16, the arithmetic in float64), and a state
round trip gives bit-identical features.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from models.beats import Beat

__all__ = ["FEATURE_NAMES", "BeatContextState", "BeatContext", "beat_feature_matrix"]

_PRE = 30  # R index inside the 80-sample window (0.24 s at 125 Hz)
_L = 80
_FS = 125.0
_QRS = slice(_PRE - 12, _PRE + 15)  # -96 .. +120 ms around R
_PREG = slice(0, _PRE - 10)  # P-wave region, -240 .. -80 ms
_TREG = slice(_PRE + 20, _L)  # T-wave region, +160 .. +400 ms
_WIDTH = slice(_PRE - 19, _PRE + 25)  # -150 .. +200 ms: where the QRS energy is measured
_SHIFT = 2  # samples of alignment slack (+-16 ms) for the template correlation
_INIT_BEATS = 8
_MATCH_CORR = 0.9
_MATCH_WIDTH_MS = 24.0
_MATCH_AMP = (0.7, 1.4)
_REGULAR = 0.85  # rr_prev / local mean above this: not premature
_SLOW_BPM = 100.0  # template beats come from a rhythm slower than this
_TEMPLATE_ALPHA = 0.07
_CAND_ALPHA = 0.125
_RR_ALPHA = 0.1
_LOST_AFTER = 40  # beats without a template match before the template restarts
_MIN_QUALITY = 0.5
_STATE_MAGIC = b"CWBC"
_STATE_VERSION = 1

#: One column per feature, in order. RR ratios are NaN when unknown (first beat, no next
#: beat within the segmenter's wait); template features are NaN until a template exists.
FEATURE_NAMES: tuple[str, ...] = (
    # RR context
    "rr_prev_local", "rr_next_local", "rr_next_prev", "rr_local_s", "rr_prev_s",
    # the beat itself
    "ptp_mv", "qrs_width_ms", "max_slope_mv", "qrs_pos_area", "qrs_neg_area", "t_energy", "p_energy",
    "quality",
    # against the patient's dominant template
    "tpl_corr_qrs", "tpl_corr_full", "tpl_rmsd", "tpl_amp_ratio", "tpl_width_diff_ms",
    "tpl_slope_ratio", "tpl_t_diff", "tpl_p_diff", "tpl_area_diff", "tpl_ready",
    # the beat before, and prematurity against the dominant rhythm
    "prev_corr", "prev_tpl_corr", "prev_tpl_width_diff_ms", "rr_prev_dominant", "rr_next_dominant",
)


def _width_ms(w: np.ndarray) -> float:
    """QRS width: span holding 5..95 % of the squared-slope energy within -150..+200 ms."""
    d = np.diff(w[_WIDTH])
    c = np.cumsum(d * d)
    tot = c[-1]
    if tot <= 0:
        return 0.0
    lo = int(np.searchsorted(c, 0.05 * tot))
    hi = int(np.searchsorted(c, 0.95 * tot))
    return (hi - lo) * 1000.0 / _FS


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = float(np.sqrt(np.dot(a, a) * np.dot(b, b)))
    return float(np.dot(a, b) / den) if den > 0 else 0.0


def _best_corr(w: np.ndarray, ref_qrs: np.ndarray) -> float:
    """Largest correlation of the beat's QRS with ``ref_qrs`` over +-2 samples of shift."""
    best = -1.0
    for s in range(-_SHIFT, _SHIFT + 1):
        best = max(best, _corr(w[_QRS.start + s:_QRS.stop + s], ref_qrs))
    return best


@dataclass(frozen=True, eq=False)
class BeatContextState:
    """Per-patient state of :class:`BeatContext` (see the module docstring).

    Attributes
    ----------
    template : np.ndarray or None
        float16 [80] dominant beat (mV), None until started.
    candidate : np.ndarray or None
        float16 [80] running average of recent regular beats (the restart template).
    init : tuple of np.ndarray
        float16 [80] beats collected to start the template (empty once started).
    since_match : int
        Beats since one last matched the template.
    rr_dominant_s : float
        Average RR of template-matching beats, s; NaN until known.
    prev_qrs : np.ndarray or None
        float16 QRS segment of the previous beat.
    prev_tpl_corr, prev_tpl_width_diff_ms : float
        The previous beat's template features (NaN when it had none).
    """

    template: np.ndarray | None = None
    candidate: np.ndarray | None = None
    init: tuple[np.ndarray, ...] = ()
    since_match: int = 0
    rr_dominant_s: float = float("nan")
    prev_qrs: np.ndarray | None = None
    prev_tpl_corr: float = float("nan")
    prev_tpl_width_diff_ms: float = float("nan")

    @property
    def template_ready(self) -> bool:
        return self.template is not None

    def to_bytes(self) -> bytes:
        """Pack: magic, version, counts and floats, then the float16 arrays."""
        flags = (self.template is not None) | (self.candidate is not None) << 1 | (self.prev_qrs is not None) << 2
        head = struct.pack("<4sBBBIddd", _STATE_MAGIC, _STATE_VERSION, flags, len(self.init), self.since_match,
                           self.rr_dominant_s, self.prev_tpl_corr, self.prev_tpl_width_diff_ms)
        parts = [head]
        for a in (self.template, self.candidate, self.prev_qrs, *self.init):
            if a is not None:
                parts.append(np.asarray(a, "<f2").tobytes())
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, raw: bytes) -> BeatContextState:
        """Inverse of :meth:`to_bytes`; ValueError names what is wrong."""
        hsize = struct.calcsize("<4sBBBIddd")
        if len(raw) < hsize or raw[:4] != _STATE_MAGIC:
            raise ValueError(f"beat context state must start with {_STATE_MAGIC!r}, got {raw[:4]!r}")
        _, version, flags, n_init, since, rr_dom, p_corr, p_wd = struct.unpack_from("<4sBBBIddd", raw)
        if version != _STATE_VERSION:
            raise ValueError(f"beat context state version must be {_STATE_VERSION}, got {version}")
        qn = _QRS.stop - _QRS.start
        sizes = ([_L] if flags & 1 else []) + ([_L] if flags & 2 else []) + ([qn] if flags & 4 else []) + [_L] * n_init
        if len(raw) != hsize + 2 * sum(sizes):
            raise ValueError(f"beat context state must be {hsize + 2 * sum(sizes)} bytes, got {len(raw)}")
        arrays, pos = [], hsize
        for n in sizes:
            arrays.append(np.frombuffer(raw, "<f2", n, pos).astype(np.float16))
            pos += 2 * n
        it = iter(arrays)
        template = next(it) if flags & 1 else None
        candidate = next(it) if flags & 2 else None
        prev_qrs = next(it) if flags & 4 else None
        return cls(template, candidate, tuple(it), int(since), float(rr_dom), prev_qrs, float(p_corr), float(p_wd))


def _f16(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, np.float64).astype(np.float16)


class BeatContext:
    """Causal per-patient beat context; :meth:`observe` gives feature rows and the new state."""

    def initial_state(self) -> BeatContextState:
        return BeatContextState()

    def observe(self, state: BeatContextState, beats: Sequence[Beat]) -> tuple[np.ndarray, BeatContextState]:
        """Feature rows float32 [n, len(FEATURE_NAMES)] for ``beats`` (in stream order).

        Each beat is measured against the state as it was before that beat; the state
        then learns from it. ``state`` is not modified.
        """
        out = np.full((len(beats), len(FEATURE_NAMES)), np.nan, np.float32)
        st = state
        for i, b in enumerate(beats):
            out[i], st = self._one(st, b)
        return out, st

    def template_scale_mv(self, state: BeatContextState) -> float | None:
        """Peak-to-peak amplitude of the dominant template, mV (None before it exists)."""
        if state.template is None:
            return None
        t = state.template.astype(np.float64)
        return float(t.max() - t.min())

    # -- one beat --------------------------------------------------------------------
    def _one(self, st: BeatContextState, b: Beat) -> tuple[np.ndarray, BeatContextState]:
        w = np.asarray(b.waveform, np.float64)
        if w.shape != (_L,):
            raise ValueError(f"beat waveform must have {_L} samples, got shape {w.shape}")
        m = b.rr_local_mean_s if b.rr_local_mean_s is not None and b.rr_local_mean_s > 0 else float("nan")
        rrp = b.rr_prev_s if b.rr_prev_s is not None else float("nan")
        rrn = b.rr_next_s if b.rr_next_s is not None else float("nan")
        rp = rrp / m
        rn = rrn / m
        qrs = w[_QRS]
        dq = np.abs(np.diff(qrs))
        width = _width_ms(w)
        row = [rp, rn, rrn / rrp if rrp > 0 else float("nan"), m, rrp,
               float(w.max() - w.min()), width, float(dq.max()),
               float(qrs[qrs > 0].sum() / _FS), float(-qrs[qrs < 0].sum() / _FS),
               float(np.mean(w[_TREG] ** 2)), float(np.mean(w[_PREG] ** 2)), float(b.quality)]
        tpl: dict[str, float] | None = None
        if st.template is not None:
            t = st.template.astype(np.float64)
            ptp_t = float(t.max() - t.min()) + 1e-6
            d = qrs - t[_QRS]
            tpl = {
                "corr": _best_corr(w, t[_QRS]),
                "corr_full": _corr(w, t),
                "rmsd": float(np.sqrt(np.mean(d * d)) / ptp_t),
                "amp": float((w.max() - w.min()) / ptp_t),
                "wdiff": width - _width_ms(t),
                "slope": float(dq.max() / (np.abs(np.diff(t[_QRS])).max() + 1e-6)),
                "tdiff": float(np.sqrt(np.mean((w[_TREG] - t[_TREG]) ** 2)) / ptp_t),
                "pdiff": float(np.sqrt(np.mean((w[_PREG] - t[_PREG]) ** 2)) / ptp_t),
                "area": float((qrs.sum() - t[_QRS].sum()) / (np.abs(t[_QRS]).sum() + 1e-6)),
            }
            row += [tpl["corr"], tpl["corr_full"], tpl["rmsd"], tpl["amp"], tpl["wdiff"], tpl["slope"],
                    tpl["tdiff"], tpl["pdiff"], tpl["area"], 1.0]
        else:
            row += [float("nan")] * 9 + [0.0]
        rd = st.rr_dominant_s
        row += [_best_corr(w, st.prev_qrs.astype(np.float64)) if st.prev_qrs is not None else float("nan"),
                st.prev_tpl_corr, st.prev_tpl_width_diff_ms, rrp / rd, rrn / rd]
        return np.asarray(row, np.float32), self._learn(st, w, b.quality, rp, rrp, tpl)

    def _learn(self, st: BeatContextState, w: np.ndarray, quality: float, rp: float, rrp: float,
               tpl: dict[str, float] | None) -> BeatContextState:
        good = quality >= _MIN_QUALITY
        regular = not (rp <= _REGULAR)  # NaN (unknown) counts as regular
        slow = not (rrp < 60.0 / _SLOW_BPM)
        usable = good and regular and slow
        prev = dict(prev_qrs=_f16(w[_QRS]),
                    prev_tpl_corr=tpl["corr"] if tpl else float("nan"),
                    prev_tpl_width_diff_ms=tpl["wdiff"] if tpl else float("nan"))
        cand = st.candidate
        if usable:
            cand = _f16(w) if cand is None else _f16((1 - _CAND_ALPHA) * cand.astype(np.float64) + _CAND_ALPHA * w)
        if st.template is None:
            init = st.init + (_f16(w),) if usable else st.init
            if len(init) >= _INIT_BEATS:
                return replace(st, template=_start_template(init), init=(), candidate=cand, since_match=0, **prev)
            return replace(st, init=init, candidate=cand, **prev)
        assert tpl is not None
        matches = (usable and tpl["corr"] > _MATCH_CORR and tpl["wdiff"] < _MATCH_WIDTH_MS
                   and _MATCH_AMP[0] < tpl["amp"] < _MATCH_AMP[1])
        if matches:
            t = _f16((1 - _TEMPLATE_ALPHA) * st.template.astype(np.float64) + _TEMPLATE_ALPHA * w)
            rd = rrp if np.isnan(st.rr_dominant_s) else (1 - _RR_ALPHA) * st.rr_dominant_s + _RR_ALPHA * rrp
            return replace(st, template=t, candidate=cand, since_match=0,
                           rr_dominant_s=st.rr_dominant_s if np.isnan(rrp) else float(rd), **prev)
        since = st.since_match + 1
        if since >= _LOST_AFTER and cand is not None:
            return replace(st, template=cand, candidate=cand, since_match=0, **prev)
        return replace(st, candidate=cand, since_match=since, **prev)


def _start_template(beats: Sequence[np.ndarray]) -> np.ndarray:
    """Mean of the beats that correlate > 0.85 with the medoid of ``beats`` (the medoid
    alone if fewer than 3 do), so an ectopic beat among the first ones is left out."""
    w = np.stack([b.astype(np.float64) for b in beats])
    c = np.corrcoef(w[:, _QRS])
    c = np.nan_to_num(c, nan=0.0)
    k = int(np.argmax(np.median(c, axis=1)))
    ok = c[k] > 0.85
    return _f16(w[ok].mean(axis=0) if ok.sum() >= 3 else w[k])


def beat_feature_matrix(beats: Sequence[Beat], state: BeatContextState | None = None
                        ) -> tuple[np.ndarray, BeatContextState]:
    """Features of a whole beat sequence of one patient (e.g. a record), from ``state``
    (a new patient when None)."""
    ctx = BeatContext()
    return ctx.observe(ctx.initial_state() if state is None else state, beats)
