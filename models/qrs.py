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
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from functools import lru_cache

import numpy as np
from scipy import signal as sps

try:  # the compiled steps of scipy.signal.find_peaks(x, distance=d), without its wrapper
    from scipy.signal._peak_finding_utils import _local_maxima_1d, _select_by_peak_distance
except ImportError:  # pragma: no cover - other scipy layouts: use the public function
    _local_maxima_1d = _select_by_peak_distance = None

__all__ = ["detect_qrs", "MIN_QRS_AMPLITUDE_MV", "REFRACTORY_S"]

MIN_QRS_AMPLITUDE_MV: float = 0.12
"""Smallest peak-to-peak QRS deflection (mV) accepted; low-voltage QRS are ~0.3 mV."""

REFRACTORY_S: float = 0.2
_MWI_S = 0.15
_SEARCH_HALF_S = 0.08  # refinement half-window around the integrator peak
_BASELINE_HALF_S = 0.25
_T_WAVE_S = 0.36  # candidates closer than this to the last QRS get the T-wave test
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


def detect_qrs(
    x: np.ndarray, fs: float, min_amplitude_mv: float = MIN_QRS_AMPLITUDE_MV
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

    Returns
    -------
    numpy.ndarray
        Sorted int64 sample indices of R peaks, at least 200 ms apart.

    Raises
    ------
    ValueError
        If ``x`` is not 1-D or ``fs`` is below 50 Hz.
    """
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
    t_wave = _T_WAVE_S * fs
    t_smooth = _T_SMOOTH_S * fs

    silence = _SILENCE_S * fs
    prev_p = 0
    undo: list[tuple[float, float, float, float, list[int]]] = []

    def accept(i: int, weight: float) -> None:
        nonlocal spki, spka, last_slope, last_ptp
        undo.append((spki, spka, last_slope, last_ptp, rr.copy()))
        del undo[:-1]
        if accepted:
            rr.append(pk[i] - pk[accepted[-1]])
            del rr[:-8]
        accepted.append(i)
        spki = weight * vl[i] + (1.0 - weight) * spki
        last_slope = sl[i]
        last_ptp = pp[i]
        spka = weight * pp[i] + (1.0 - weight) * spka if spka > 0 else pp[i]

    def unaccept() -> None:
        # Undo the last accept (only the last one is kept restorable).
        nonlocal spki, spka, last_slope, last_ptp
        spki, spka, last_slope, last_ptp, rr_old = undo.pop()
        rr[:] = rr_old
        accepted.pop()

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
            if accepted and t_wave_like(i):
                npki = 0.125 * vl[i] + 0.875 * npki  # T wave
            else:
                if accepted and p - last_p < t_wave and t_wave_like_rev(accepted[-1], i):
                    # The previous detection was a P wave (or a small artefact) just
                    # before this far larger QRS: it would pass the T-wave test were
                    # the order reversed. Replace it.
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
