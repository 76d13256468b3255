"""QRS detection stage: Pan-Tompkins-class R-peak detector on a preprocessed ECG.

Steps: 5–18 Hz zero-phase (centred linear-phase FIR) band-pass, derivative, squaring, 150 ms moving-window
integration (centred), candidate peaks at least 200 ms apart, then one pass of adaptive
signal/noise thresholds with search-back for missed beats and T-wave discrimination
(applied to search-back picks too, with a window that widens after a long RR). After a
silence of 2.5 s (pause, lead-off) the signal level decays with a 0.5 s half-life, floored
at a few times the noise level, and a candidate must also reach 35% of the running QRS
amplitude, so P and T waves and noise do not fill a pause. A small detection immediately
followed by a far larger QRS (a P wave) is replaced by it.
Each detection is refined to the largest deflection of the input signal from its local
median, so inverted and ventricular QRS complexes are placed on their main deflection.
An absolute amplitude floor keeps flat lines and tiny noise from producing beats.

The pair test. A candidate that passes the thresholds soon after the last detection is
either a new QRS, the T wave of the last one, or the QRS whose P wave was taken for the
last one. Fixed ratio rules get tall, smooth T waves and large P waves wrong, so a broad
candidate (main deflection >= 40 ms wide at half height: T and P waves are broad, a
narrow QRS of a fast rhythm is not) is judged by two small gradient-boosted tree models
(:class:`QRSPairModel`, :mod:`models.trees`) on the pair's slope, amplitude, energy,
width, shape and timing ratios; a narrow one keeps the ratio rules. The shipped models
(``models/pretrained/qrs-pairs``) were trained by :mod:`models.qrs_train` on pairs met by
the rule-based pass on PhysioNet records; their model card gives the leave-patient-out
figures. ``pair_model="none"`` runs the rule-based detector alone.
"""

from __future__ import annotations

import hashlib
import json
import math
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
from scipy import signal as sps

from models.errors import CardiowatchError
from models.trees import TreeEnsemble

try:  # the compiled steps of scipy.signal.find_peaks(x, distance=d), without its wrapper
    from scipy.signal._peak_finding_utils import _local_maxima_1d, _select_by_peak_distance
except ImportError:  # pragma: no cover - other scipy layouts: use the public function
    _local_maxima_1d = _select_by_peak_distance = None

__all__ = [
    "detect_qrs",
    "qrs_pairs",
    "QRSPairModel",
    "QRSPairs",
    "QRSPairModelError",
    "shipped_pair_model",
    "PAIR_FEATURES",
    "PAIR_MODEL_DIR",
    "P_WAVE_WINDOW_S",
    "MIN_QRS_AMPLITUDE_MV",
    "REFRACTORY_S",
]

MIN_QRS_AMPLITUDE_MV: float = 0.12
"""Smallest peak-to-peak QRS deflection (mV) accepted; low-voltage QRS are ~0.3 mV."""

REFRACTORY_S: float = 0.2
_MWI_S = 0.15
_SEARCH_HALF_S = 0.08  # refinement half-window around the integrator peak
_BASELINE_HALF_S = 0.25
_T_WAVE_S = 0.36  # candidates closer than this to the last QRS get the T-wave test
P_WAVE_WINDOW_S: float = _T_WAVE_S
"""A detection this close before a candidate may be the candidate's P wave (replaced)."""
_LEARN_S = 2.0
# A tall but smooth T wave can be as large as the QRS before it (qtdb sele0604, svdb 847)
# or carry a good share of its 5-18 Hz energy (sele0111): within _T_SMOOTH_S x sqrt(RR)
# of the last QRS, a candidate with well under its slope, or with under 40 % of its
# integrator energy and clearly less slope, is a T wave even when not smaller. A premature
# ventricular beat is wide but keeps most of the slope, or is far larger (ptp limits).
# Values chosen on the tuning half of the records (DS1, paced, half of qtdb).
_T_SMOOTH_S = 0.42
_T_SMOOTH_SLOPE = 0.45  # slope ratio below which a not-much-larger candidate is a T wave
_T_SMOOTH_PTP = 1.2
_T_WEAK_VAL = 0.4  # integrator-energy ratio ...
_T_WEAK_SLOPE = 0.65  # ... with this slope ratio ...
_T_WEAK_PTP = 1.0  # ... and not larger: a T wave
# Pair test: a candidate within _PAIR_MAX_S of the last detection meets the pair models
# when it is broad; the T model within _PAIR_T_S x sqrt(RR) (a T wave peaks before the
# QT, ~0.45 x sqrt(RR) at most), the P model within _T_WAVE_S (a P wave before its QRS).
_PAIR_MAX_S = 0.75
_PAIR_T_S = 0.45
_PAIR_BROAD_S = 0.04  # main-deflection width at half height from which a wave may be T or P
_HALF_WIDTH_S = 0.15  # half-window of that width measurement
_CORR_HALF_S = 0.06  # half-window of the pair's shape correlation
_WIDTH_HALF_S = 0.2  # half-window of the integrator lobe width
_HF_HALF_S = 0.3  # half-window of the local high-frequency level

PAIR_FEATURES: tuple[str, ...] = (
    "rr_before_s", "dt_over_rr_before", "dt_over_rr_mean",
    "log_slope_ratio", "log_ptp_ratio", "log_energy_ratio", "log_raw_slope_ratio", "shape_corr",
    "log_sharpness_b", "log_sharpness_a", "lobe_width_b_s", "lobe_width_a_s",
    "log_energy_a_vs_qrs", "log_energy_b_vs_qrs", "log_ptp_a_vs_qrs", "log_ptp_b_vs_qrs",
    "log_hf_b", "log_hf_a", "log_slope_b_vs_qrs", "log_slope_a_vs_qrs",
    "half_width_b_s", "half_width_a_s", "log_energy_per_ptp2_b", "log_energy_per_ptp2_a",
    "dt_over_sqrt_rr_before", "dt_over_sqrt_rr_mean",
)
"""Inputs of the pair models, for a pair (a = last detection, b = candidate), in order.

Ratios compare b with a; ``*_vs_qrs`` compare with the running QRS levels (energy, peak to
peak, slope); ``sharpness`` is slope over peak-to-peak; ``lobe_width`` the integrator lobe
above half its peak; ``half_width`` the main deflection's width at half height; ``hf`` the
local mean absolute second difference over the peak-to-peak. NaN where no RR is known."""

PAIR_MODEL_DIR: Path = Path(__file__).resolve().parent / "pretrained" / "qrs-pairs"
"""Folder of the shipped pair models (``pairs.json`` and two ``.trees`` files)."""

_PAIR_FORMAT = "cardiowatch.qrs-pairs/1"

_SILENCE_S = 2.5  # no QRS for this long: thresholds start to decay (re-learn)
_RELEARN_HALF_LIFE_S = 0.5  # half-life of the signal level during a silence
_SPKI_NOISE_FLOOR = 8.0  # signal level kept >= this x noise level: threshold >= ~3x noise
_RELEARN_PTP_FRAC = 0.35  # after a silence, a QRS is >= this fraction of recent QRS size


@lru_cache(maxsize=32)
def _qrs_fir(fs: float) -> np.ndarray:
    # Linear-phase FIR band-pass, applied centred: zero phase like filtfilt but ~50x
    # cheaper on the short buffers the streaming segmenter passes every second.
    numtaps = int(round(0.25 * fs)) | 1
    hi = min(18.0, 0.45 * fs)
    return sps.firwin(numtaps, [5.0, hi], pass_zero=False, fs=fs)


@lru_cache(maxsize=32)
def _mwi_kernel(win: int) -> np.ndarray:
    return np.full(win, 1.0 / win)


@lru_cache(maxsize=64)
def _offsets(half: int) -> np.ndarray:
    return np.arange(-half, half + 1)[None, :]


def _gather(a: np.ndarray, centres: np.ndarray, half: int) -> np.ndarray:
    """Rows ``a[c-half : c+half+1]`` for each centre, edge-clipped (repeats the edge)."""
    idx = centres[:, None] + _offsets(half)
    np.maximum(idx, 0, out=idx)
    np.minimum(idx, a.shape[0] - 1, out=idx)
    return a[idx]


def _row_medians(rows: np.ndarray) -> np.ndarray:
    """``np.median(rows, axis=1)`` for an odd row length, by one partial sort."""
    mid = rows.shape[1] // 2
    return np.partition(rows, mid, axis=1)[:, mid]


def _find_peaks_distance(a: np.ndarray, distance: int) -> np.ndarray:
    """``scipy.signal.find_peaks(a, distance=distance)[0]`` for 1-D float64 ``a``."""
    if _local_maxima_1d is None:
        return sps.find_peaks(a, distance=distance)[0]
    peaks = _local_maxima_1d(a)[0]
    return peaks[_select_by_peak_distance(peaks, a[peaks], float(distance))]


class QRSPairModelError(CardiowatchError, ValueError):
    """A pair-model folder is missing, malformed or does not match its recorded hashes."""


@dataclass(frozen=True, eq=False)
class QRSPairModel:
    """The learned T-wave and P-wave tests of :func:`detect_qrs`.

    Attributes
    ----------
    t_wave
        Binary trees over :data:`PAIR_FEATURES`: probability that candidate ``b`` is not
        a QRS (the T wave of ``a``, or an artefact) while ``a`` is.
    p_wave
        Binary trees over :data:`PAIR_FEATURES`: probability that ``a`` was not a QRS (a
        P wave, an artefact) and ``b`` is.
    t_threshold, p_threshold
        Probabilities above which the candidate is dropped / the last detection replaced.
    card
        Free-form provenance (training records, figures) kept with the models.
    """

    t_wave: TreeEnsemble
    p_wave: TreeEnsemble
    t_threshold: float = 0.5
    p_threshold: float = 0.5
    card: dict | None = None

    def __post_init__(self) -> None:
        for name in ("t_wave", "p_wave"):
            m = getattr(self, name)
            if tuple(m.feature_names) != PAIR_FEATURES:
                raise QRSPairModelError(
                    f"{name} must take the features {list(PAIR_FEATURES)}, got {list(m.feature_names)}")
            if m.objective != "binary":
                raise QRSPairModelError(f"{name} must be a binary model, got {m.objective!r}")
        for name in ("t_threshold", "p_threshold"):
            v = getattr(self, name)
            if not 0.0 < v < 1.0:
                raise QRSPairModelError(f"{name} must be in (0, 1), got {v}")

    def save(self, folder: str | Path) -> None:
        """Write ``pairs.json``, ``t_wave.trees`` and ``p_wave.trees`` into ``folder``
        (created), the JSON last so a half-written folder does not load."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        files = {}
        for name in ("t_wave", "p_wave"):
            raw = getattr(self, name).to_bytes()
            (out / f"{name}.trees").write_bytes(raw)
            files[name] = {"file": f"{name}.trees", "sha256": hashlib.sha256(raw).hexdigest()}
        meta = {"format": _PAIR_FORMAT, "features": list(PAIR_FEATURES), "models": files,
                "t_threshold": self.t_threshold, "p_threshold": self.p_threshold,
                "card": self.card or {}}
        tmp = out / "pairs.json.tmp"
        tmp.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        tmp.replace(out / "pairs.json")

    @classmethod
    def load(cls, folder: str | Path) -> QRSPairModel:
        """Read a folder written by :meth:`save`; the tree files must match their hashes.

        Raises
        ------
        QRSPairModelError
            Missing or malformed files, a hash mismatch, or other features.
        """
        folder = Path(folder)
        meta_path = folder / "pairs.json"
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise QRSPairModelError(f"cannot read QRS pair models {meta_path}: {exc}") from None
        if meta.get("format") != _PAIR_FORMAT:
            raise QRSPairModelError(f"{meta_path}: format must be {_PAIR_FORMAT!r}, got {meta.get('format')!r}")
        models = {}
        for name in ("t_wave", "p_wave"):
            entry = meta.get("models", {}).get(name)
            if not entry:
                raise QRSPairModelError(f"{meta_path}: no {name!r} model listed")
            try:
                raw = (folder / entry["file"]).read_bytes()
            except OSError as exc:
                raise QRSPairModelError(f"cannot read {name} trees: {exc}") from None
            got = hashlib.sha256(raw).hexdigest()
            if got != entry.get("sha256"):
                raise QRSPairModelError(
                    f"{folder / entry['file']}: sha256 must be {entry.get('sha256')}, got {got}")
            models[name] = TreeEnsemble.from_bytes(raw)
        return cls(models["t_wave"], models["p_wave"], float(meta.get("t_threshold", 0.5)),
                   float(meta.get("p_threshold", 0.5)), dict(meta.get("card") or {}))


@lru_cache(maxsize=1)
def shipped_pair_model() -> QRSPairModel:
    """The pair models shipped in :data:`PAIR_MODEL_DIR` (read once per process)."""
    return QRSPairModel.load(PAIR_MODEL_DIR)


@dataclass(frozen=True)
class QRSPairs:
    """The pair decisions met by the rule-based pass of :func:`qrs_pairs`.

    Attributes
    ----------
    features
        float64 ``[n, len(PAIR_FEATURES)]``.
    rule
        int8 ``[n]``: what the ratio rules decided: 0 both QRS, 1 ``b`` is a T wave,
        2 ``a`` was a P wave (replaced by ``b``).
    dt_s
        float64 ``[n]`` seconds between the two candidates' integrator peaks.
    a_index, b_index
        int64 ``[n]`` refined sample indices of the two detections.
    """

    features: np.ndarray
    rule: np.ndarray
    dt_s: np.ndarray
    a_index: np.ndarray
    b_index: np.ndarray


def detect_qrs(
    x: np.ndarray,
    fs: float,
    min_amplitude_mv: float = MIN_QRS_AMPLITUDE_MV,
    pair_model: QRSPairModel | Literal["shipped", "none"] = "shipped",
) -> np.ndarray:
    """Find R peaks in a preprocessed (band-passed) ECG.

    Parameters
    ----------
    x
        1-D ECG in mV, already band-passed (e.g. by :class:`models.signal.StreamingPreprocessor`).
    fs
        Its sample rate in Hz (>= 50).
    min_amplitude_mv
        Candidates whose peak-to-peak deflection within +-80 ms is below this are noise.
    pair_model
        The learned T-wave / P-wave test: ``"shipped"`` (:func:`shipped_pair_model`), a
        :class:`QRSPairModel`, or ``"none"`` for the ratio rules alone.

    Returns
    -------
    numpy.ndarray
        Sorted int64 sample indices of R peaks, at least 200 ms apart.

    Raises
    ------
    ValueError
        If ``x`` is not 1-D or ``fs`` is below 50 Hz.
    """
    if pair_model == "shipped":
        model: QRSPairModel | None = shipped_pair_model()
    elif pair_model == "none":
        model = None
    elif isinstance(pair_model, QRSPairModel):
        model = pair_model
    else:
        raise ValueError(f"pair_model must be 'shipped', 'none' or a QRSPairModel, got {pair_model!r}")
    return _detect(x, fs, min_amplitude_mv, model, None)


def qrs_pairs(x: np.ndarray, fs: float, min_amplitude_mv: float = MIN_QRS_AMPLITUDE_MV) -> QRSPairs:
    """Run the rule-based detector (no pair model) and return every pair decision it met.

    The training data of the pair models (:mod:`models.qrs_train`): each row is a
    candidate that passed the thresholds within 0.75 s of the last detection.

    Parameters
    ----------
    x, fs, min_amplitude_mv
        As for :func:`detect_qrs`.

    Returns
    -------
    QRSPairs
    """
    trace: list[tuple[list[float], int, float, int, int]] = []
    _detect(x, fs, min_amplitude_mv, None, trace)
    k = len(PAIR_FEATURES)
    return QRSPairs(
        features=np.asarray([t[0] for t in trace], np.float64).reshape(-1, k),
        rule=np.asarray([t[1] for t in trace], np.int8),
        dt_s=np.asarray([t[2] for t in trace], np.float64),
        a_index=np.asarray([t[3] for t in trace], np.int64),
        b_index=np.asarray([t[4] for t in trace], np.int64),
    )


def _half_widths(x: np.ndarray, centres: np.ndarray, base: np.ndarray, half: int) -> np.ndarray:
    """Samples over which ``|x - base|`` stays >= half its value at each centre."""
    g = np.abs(_gather(x, centres, half) - base[:, None])
    above = g >= 0.5 * g[:, half : half + 1]
    back, fwd = above[:, half::-1], above[:, half:]
    left = np.where(back.all(axis=1), half + 1, np.argmin(back, axis=1))
    right = np.where(fwd.all(axis=1), half + 1, np.argmin(fwd, axis=1))
    return left + right - 1


def _detect(
    x: np.ndarray,
    fs: float,
    min_amplitude_mv: float,
    model: QRSPairModel | None,
    trace: list[tuple[list[float], int, float, int, int]] | None,
) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"x must be 1-D, got shape {x.shape}")
    fs = float(fs)
    if not np.isfinite(fs) or fs < 50:
        raise ValueError(f"fs must be >= 50 Hz, got {fs}")
    n = x.shape[0]
    taps = _qrs_fir(fs)
    if n < max(int(0.5 * fs), taps.shape[0]) or (
        not np.isfinite(np.add.reduce(x)) and not np.all(np.isfinite(x))
    ):
        return np.empty(0, np.int64)

    b = np.convolve(x, taps, mode="same")
    # np.gradient(b) * fs, written out (same arithmetic, a fraction of the overhead).
    g = np.empty_like(b)
    np.subtract(b[2:], b[:-2], out=g[1:-1])
    g[1:-1] /= 2.0
    g[0] = b[1] - b[0]
    g[-1] = b[-1] - b[-2]
    d = g * fs
    sq = d * d
    win = max(1, int(round(_MWI_S * fs)))
    mwi = np.convolve(sq, _mwi_kernel(win), mode="same")
    refr = int(round(REFRACTORY_S * fs))
    peaks = _find_peaks_distance(mwi, max(1, refr))
    if peaks.size == 0:
        return np.empty(0, np.int64)

    # Per-candidate features, vectorised.
    half = max(1, int(round(_SEARCH_HALF_S * fs)))
    seg = _gather(x, peaks, half)
    bl_half = max(1, int(round(_BASELINE_HALF_S * fs)))
    base = _row_medians(_gather(x, peaks, bl_half))  # rows of odd length 2*bl_half+1
    dev = np.abs(seg - base[:, None])
    refined = np.clip(peaks + np.argmax(dev, axis=1) - half, 0, n - 1)
    ptp = seg.max(axis=1) - seg.min(axis=1)
    big = ptp >= min_amplitude_mv
    slope = np.abs(_gather(d, peaks, max(1, win // 2))).max(axis=1)
    val = mwi[peaks]
    pairs_on = model is not None or trace is not None
    xl = x.tolist() if pairs_on else []
    base_l, ref_l = base.tolist(), refined.tolist()
    hw_half = max(1, int(round(_HALF_WIDTH_S * fs)))
    hw_cache: dict[int, float] = {}
    extras: list[list[float]] = []  # raw slope, lobe width, hf level (per candidate); filled on demand
    wav = np.zeros((0, 0))

    def half_width(j: int) -> float:
        # Width (s) of the main deflection at half its height: walk out from the refined
        # peak (plain Python: most calls need a handful of samples).
        w = hw_cache.get(j)
        if w is None:
            c, b0 = ref_l[j], base_l[j]
            level = 0.5 * abs(xl[c] - b0)
            left = right = 0
            while left <= hw_half and abs(xl[max(c - left, 0)] - b0) >= level:
                left += 1
            while right <= hw_half and abs(xl[min(c + right, n - 1)] - b0) >= level:
                right += 1
            w = hw_cache[j] = (left + right - 1) / fs
        return w

    def fill_extras() -> None:
        nonlocal wav
        dx = np.empty_like(x)
        dx[1:-1] = (x[2:] - x[:-2]) * (fs / 2.0)
        dx[0], dx[-1] = dx[1], dx[-2]
        raw_slope = np.abs(_gather(dx, refined, half)).max(axis=1)
        lobe = _gather(mwi, peaks, max(1, int(round(_WIDTH_HALF_S * fs))))
        lobe_w = (lobe >= 0.5 * val[:, None]).sum(axis=1) / fs
        d2 = np.abs(np.diff(x, 2, prepend=x[0], append=x[-1])) * (fs / 125.0) ** 2
        hf = _gather(d2, peaks, max(1, int(round(_HF_HALF_S * fs)))).mean(axis=1)
        w = _gather(x, refined, max(1, int(round(_CORR_HALF_S * fs))))
        w = w - w.mean(axis=1, keepdims=True)
        w /= np.sqrt((w * w).sum(axis=1, keepdims=True)) + 1e-12
        wav = w
        extras.extend([raw_slope.tolist(), lobe_w.tolist(), hf.tolist()])

    broad = _PAIR_BROAD_S - 0.5 / fs  # widths are whole samples

    learn = mwi[: max(int(_LEARN_S * fs), 1)]
    spki = float(learn.max()) / 3.0
    npki = float(learn.mean()) / 2.0
    thr = npki + 0.25 * (spki - npki)
    # The threshold pass is inherently sequential; plain lists keep it cheap.
    pk, vl, pp, bg, sl = peaks.tolist(), val.tolist(), ptp.tolist(), big.tolist(), slope.tolist()
    accepted: list[int] = []  # indices into peaks
    rr: list[int] = []
    last_slope = 0.0
    last_ptp = 0.0
    spka = 0.0  # running QRS peak-to-peak amplitude, mV
    sla = 0.0  # running QRS slope (5-18 Hz derivative), mV/s
    t_wave = _T_WAVE_S * fs
    t_smooth = _T_SMOOTH_S * fs
    pair_max = _PAIR_MAX_S * fs
    pair_t = _PAIR_T_S * fs

    silence = _SILENCE_S * fs
    prev_p = 0
    undo: list[tuple[float, float, float, float, float, list[int]]] = []

    def accept(i: int, weight: float) -> None:
        nonlocal spki, spka, sla, last_slope, last_ptp
        undo.append((spki, spka, sla, last_slope, last_ptp, rr.copy()))
        del undo[:-1]
        if accepted:
            rr.append(pk[i] - pk[accepted[-1]])
            del rr[:-8]
        accepted.append(i)
        spki = weight * vl[i] + (1.0 - weight) * spki
        last_slope = sl[i]
        last_ptp = pp[i]
        spka = weight * pp[i] + (1.0 - weight) * spka if spka > 0 else pp[i]
        sla = weight * sl[i] + (1.0 - weight) * sla if sla > 0 else sl[i]

    def unaccept() -> None:
        # Undo the last accept (only the last one is kept restorable).
        nonlocal spki, spka, sla, last_slope, last_ptp
        spki, spka, sla, last_slope, last_ptp, rr_old = undo.pop()
        rr[:] = rr_old
        accepted.pop()

    def pair_row(a: int, b: int) -> list[float]:
        if not extras:
            fill_extras()
        rs, lw, hfl = extras
        nan = math.nan
        log = math.log
        dt = (pk[b] - pk[a]) / fs
        rr_b = rr[-1] / fs if rr else nan
        rr_m = sum(rr) / len(rr) / fs if rr else nan
        return [
            rr_b, dt / rr_b, dt / rr_m,
            log(sl[b] / sl[a]), log(pp[b] / pp[a]), log(vl[b] / vl[a]),
            log(rs[b] / rs[a]) if rs[a] > 0 and rs[b] > 0 else nan,
            float(np.dot(wav[a], wav[b])),
            log(sl[b] / pp[b]), log(sl[a] / pp[a]), lw[b], lw[a],
            log(vl[a] / spki) if spki > 0 else nan, log(vl[b] / spki) if spki > 0 else nan,
            log(pp[a] / spka) if spka > 0 else nan, log(pp[b] / spka) if spka > 0 else nan,
            log(hfl[b] / pp[b]) if hfl[b] > 0 else nan, log(hfl[a] / pp[a]) if hfl[a] > 0 else nan,
            log(sl[b] / sla) if sla > 0 else nan, log(sl[a] / sla) if sla > 0 else nan,
            half_width(b), half_width(a), log(vl[b] / pp[b] ** 2), log(vl[a] / pp[a] ** 2),
            dt / math.sqrt(rr_b), dt / math.sqrt(rr_m),
        ]

    def pair_decision(i: int) -> int:
        """0: accept ``i``; 1: ``i`` is a T wave; 2: the last detection was a P wave."""
        a = accepted[-1]
        dt = pk[i] - pk[a]
        rule = 1 if t_wave_like(i) else (2 if dt < t_wave and t_wave_like_rev(a, i) else 0)
        if dt >= pair_max or not pairs_on or min(pp[a], pp[i], sl[a], sl[i], vl[a], vl[i]) <= 0:
            return rule
        rr_known = [v / fs for v in ((rr[-1], sum(rr) / len(rr)) if rr else ())]
        rr_ref = max(rr_known) if rr_known else 1.0
        t_zone = dt < pair_t * min(max(rr_ref, 0.3), 2.0) ** 0.5
        ask_t = t_zone and half_width(i) >= broad
        ask_p = dt < t_wave and half_width(a) >= broad
        row = pair_row(a, i) if trace is not None or (model is not None and (ask_t or ask_p)) else None
        if trace is not None and row is not None:
            trace.append((row, rule, dt / fs, int(refined[a]), int(refined[i])))
        if model is None or row is None:
            if model is None:
                return rule
            # Narrow waves: a QRS, or a sharp artefact; the ratio rules judge them.
            return 1 if t_zone and rule == 1 else (2 if dt < t_wave and rule == 2 else 0)
        if ask_t:
            if model.t_wave.predict_proba_row(row)[1] > model.t_threshold:
                return 1
        elif t_zone and rule == 1:
            return 1
        if ask_p:
            if model.p_wave.predict_proba_row(row)[1] > model.p_threshold:
                return 2
        elif dt < t_wave and rule == 2:
            return 2
        return 0

    def t_wave_like_rev(prev: int, j: int) -> bool:
        return sl[prev] < 0.5 * sl[j] and pp[prev] < 0.6 * pp[j]

    def t_wave_like(j: int) -> bool:
        # Pan-Tompkins T-wave test against the last QRS: soon after it, with under half
        # its slope, and (our addition) clearly smaller, since a premature ventricular
        # beat is large. QT lengthens with the preceding RR (~sqrt(RR)), so after a long
        # RR, e.g. the first beat after a pause, the T wave comes later: widen the window.
        prev = accepted[-1]
        rr_before_s = rr[-1] / fs if len(accepted) > 1 and rr else 1.0
        window = t_wave * min(max(rr_before_s, 1.0), 2.0) ** 0.5
        dt = pk[j] - pk[prev]
        if dt < window and sl[j] < 0.5 * sl[prev] and pp[j] < 0.6 * pp[prev]:
            return True
        if dt >= t_smooth * min(max(rr_before_s, 0.4), 2.0) ** 0.5:
            return False
        if sl[j] < _T_SMOOTH_SLOPE * sl[prev] and pp[j] < _T_SMOOTH_PTP * pp[prev]:
            return True
        return (vl[j] < _T_WEAK_VAL * vl[prev] and sl[j] < _T_WEAK_SLOPE * sl[prev]
                and pp[j] < _T_WEAK_PTP * pp[prev])

    def qrs_like(j: int) -> bool:
        # After a long silence the thresholds have decayed towards the noise level; a
        # candidate must then also be a sizeable fraction of recent QRS amplitude, so P or
        # T waves (and P waves of ventricular standstill) do not pass for beats.
        return bg[j] and (spka <= 0.0 or pp[j] >= _RELEARN_PTP_FRAC * spka)

    for i in range(len(pk)):
        p = pk[i]
        last_p = pk[accepted[-1]] if accepted else 0
        rr_avg = sum(rr) / len(rr) if rr else fs
        silent = bool(accepted) and p - last_p > silence
        # Search back for a beat missed between the last QRS and this candidate.
        if p - last_p > 1.66 * rr_avg:
            lo = bisect_left(pk, last_p + refr) if accepted else 0
            hi = bisect_right(pk, p - refr)
            best = -1
            for j in range(lo, hi):
                if not bg[j] or vl[j] < 0.5 * thr or (best >= 0 and vl[j] <= vl[best]):
                    continue
                if accepted and t_wave_like(j):
                    continue
                if silent and not qrs_like(j):
                    continue
                best = j
            if best >= 0:
                accept(best, 0.25)
                last_p = pk[best]
                silent = p - last_p > silence
            elif silent:
                # Re-learn after a long silence (e.g. an artefact set the thresholds
                # high): decay the signal level with time, but never below a few times
                # the noise level, so the threshold does not sink into the noise.
                dt_s = (p - max(last_p + silence, prev_p)) / fs
                floor = min(spki, _SPKI_NOISE_FLOOR * npki)
                spki = max(spki * 0.5 ** (dt_s / _RELEARN_HALF_LIFE_S), floor)
            thr = npki + 0.25 * (spki - npki)
        # Wide (ventricular) complexes carry less 5-18 Hz energy than sinus beats:
        # also accept a candidate as large in amplitude as recent beats above a low bar.
        strong = vl[i] >= thr or (vl[i] >= 0.3 * thr and pp[i] >= 0.5 * spka)
        if strong and bg[i] and (not accepted or p - last_p >= refr) and (not silent or qrs_like(i)):
            decision = pair_decision(i) if accepted else 0
            if decision == 1:
                npki = 0.125 * vl[i] + 0.875 * npki  # T wave
            else:
                if decision == 2:
                    # The previous detection was a P wave (or a small artefact) just
                    # before this QRS. Replace it.
                    unaccept()
                accept(i, 0.125)
        else:
            npki = 0.125 * vl[i] + 0.875 * npki
        thr = npki + 0.25 * (spki - npki)
        prev_p = p

    if not accepted:
        return np.empty(0, np.int64)
    r = refined[np.asarray(accepted)]
    amp = dev[np.asarray(accepted), np.clip(r - peaks[np.asarray(accepted)] + half, 0, 2 * half)]
    order = np.argsort(r, kind="stable")
    r, amp = r[order], amp[order]
    # Refinement can pull two detections together: keep the larger within the refractory.
    keep: list[int] = []
    for j in range(r.size):
        if keep and r[j] - r[keep[-1]] < refr:
            if amp[j] > amp[keep[-1]]:
                keep[-1] = j
        else:
            keep.append(j)
    return r[np.asarray(keep)].astype(np.int64)
