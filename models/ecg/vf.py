"""Ventricular fibrillation stage: window features of the band-passed ECG and the VF/VFL detector.

Ventricular fibrillation and flutter have no QRS complexes, so a beat-based detector sees
them late or not at all. This detector decides from the signal itself, on a sliding
window (:data:`WINDOW_S` long, one every :data:`HOP_S` of stream time) of the 125 Hz
band-passed signal the front end already keeps (:attr:`models.beats.SegmenterState.buf`).

Features (:data:`FEATURE_NAMES`, :func:`window_features`) describe the organised,
high-amplitude oscillation of VF/VFL against sinus rhythm (sharp QRS spikes, long
isoelectric stretches, harmonics of a slow rate), noise (broad spectrum, high-frequency
power, bursts) and asystole (no amplitude):

- spectral: dominant frequency in 1-10 Hz, power concentration around it, the shares of
  power above 12 Hz and below 2.5 Hz (Amann et al. 2005, "VF filter" and spectral
  algorithms);
- threshold-crossing sample count (Arafat et al. 2009, TCSC): the fraction of samples
  above 20 % of each 1-s sub-window's peak;
- mean-crossing rate, sharpness (peak slope over RMS slope: QRS spikes), time near the
  baseline, autocorrelation peak at 2.5-10 Hz lags, amplitude steadiness across 1-s
  sub-windows, and the robust amplitude.

The phase-space box count of Amann et al. (2007) was tried too and left out: on held-out
patients it doubled the false alarms without adding sensitivity.

The detector (:class:`VFDetector`) is a small L2-regularised logistic regression on
standardised features, evaluated with numpy only; below :attr:`VFSettings.min_ptp_mv`
a window is never VF (asystole or a fine VF no surface detector can tell from noise;
the pause rule covers it). It ships inside the ECG bundle as ``vf_detector.npz`` with
its settings in ``extra["vf_detector"]`` (:func:`load_vf_detector`); training is
:mod:`models.ecg.vf_train` (``cardiowatch train vf``).

References: Amann A, Tratnig R, Unterkofler K. Reliability of old and new ventricular
fibrillation detection algorithms for automated external defibrillators. BioMed Eng
OnLine 4:60 (2005). Amann A, et al. Detecting ventricular fibrillation by time-delay
methods. IEEE TBME 54(1):174-177 (2007). Arafat MA, Chowdhury AW, Hasan MK. A simple time
domain algorithm for the detection of ventricular fibrillation in electrocardiogram.
SIViP 5:1-10 (2011, online 2009). Figuera C, et al. Machine learning techniques for the
detection of shockable rhythms in automated external defibrillators. PLoS ONE 11(7)
(2016).
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.autoencoder import DetectorError, NotFittedError, threshold_from_scores, validate_fpr
from models.signal import MODEL_RATE_HZ

__all__ = [
    "EXTRA_KEY",
    "FEATURE_NAMES",
    "FILE_NAME",
    "HOP_S",
    "WINDOW_S",
    "VFDetector",
    "VFDetectorError",
    "VFPrediction",
    "VFSettings",
    "due_windows",
    "load_vf_detector",
    "load_window_detector",
    "record_windows",
    "window_features",
]

#: Window length and hop in seconds of stream time.
WINDOW_S = 4.0
HOP_S = 1.0
#: The bundle's extra file and the key of its settings in ``bundle.json`` ``extra``.
FILE_NAME = "vf_detector.npz"
EXTRA_KEY = "vf_detector"
_FORMAT = "cardiowatch.vf_detector/1"

FEATURE_NAMES: tuple[str, ...] = (
    "log_amp_mv",      # log10 of the 2nd-98th percentile range, mV
    "dom_freq_hz",     # spectral peak in 1-10 Hz
    "conc",            # power within +-40 % of the peak / power in 0.5-40 Hz
    "hf_share",        # power above 12 Hz / power in 0.5-40 Hz
    "lf_share",        # power below 2.5 Hz / power in 0.5-40 Hz
    "tcsc",            # threshold-crossing sample count (fraction)
    "mcr_hz",          # mean crossings per second / 2 (a frequency)
    "log_sharp",       # log10(max |slope| / RMS slope)
    "baseline_frac",   # fraction of samples within 10 % of the range from the median
    "acf_peak",        # largest autocorrelation at lags 0.1-0.4 s
    "amp_steady",      # min / max of the 1-s sub-window RMS
)

_EPS = 1e-9
_NFFT = 1024
_TCSC_LEVEL = 0.2
_ACF_LAGS_S = (0.1, 0.4)


class VFDetectorError(DetectorError):
    """A VF detector file or its settings are malformed, or inputs have the wrong shape."""


# ----------------------------------------------------------------------------- windows
def _grid(window: int, hop: int) -> None:
    if window < 1 or hop < 1:
        raise ValueError(f"window and hop must be >= 1 sample, got window={window}, hop={hop}")


def record_windows(y: np.ndarray, window: int, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """Every window of a whole band-passed record, on the stream's grid.

    Window ends are the multiples of ``hop`` from ``window`` on (sample indices, end
    excluded), the same grid :func:`due_windows` walks chunk by chunk.

    Returns
    -------
    ends, windows
        int64 [n] end indices and a read-only float32 [n, window] view.
    """
    _grid(window, hop)
    y = np.asarray(y, dtype=np.float32).ravel()
    if y.shape[0] < window:
        return np.zeros(0, np.int64), np.zeros((0, window), np.float32)
    first = -(-window // hop) * hop
    ends = np.arange(first, y.shape[0] + 1, hop, dtype=np.int64)
    view = np.lib.stride_tricks.sliding_window_view(y, window)
    return ends, view[ends - window]


def due_windows(history: np.ndarray, n_total: int, window: int, hop: int,
                n_new: int) -> tuple[np.ndarray, np.ndarray]:
    """The windows that end inside the ``n_new`` newest samples of a stream.

    Parameters
    ----------
    history
        The stream's most recent samples, the newest last; ``history[-1]`` is absolute
        sample ``n_total - 1``. It must reach back ``window`` samples before the first
        new sample (the segmenter keeps 6 s), or to the stream start.
    n_total
        Samples of the stream so far, the new ones included.
    window, hop
        Window length and hop in samples; ends are the multiples of ``hop`` >= ``window``.
    n_new
        How many of the newest samples arrived with this chunk.

    Returns
    -------
    ends, windows
        int64 [k] absolute end indices (end excluded) and float32 [k, window].

    Raises
    ------
    ValueError
        ``history`` does not reach back far enough for a due window.
    """
    _grid(window, hop)
    h = np.asarray(history, dtype=np.float32).ravel()
    base = int(n_total) - h.shape[0]  # absolute index of h[0]
    lo = int(n_total) - int(n_new)
    first = max(-(-max(lo + 1, window) // hop) * hop, hop)
    ends = np.arange(first, int(n_total) + 1, hop, dtype=np.int64)
    if ends.size == 0:
        return ends, np.zeros((0, window), np.float32)
    if int(ends[0]) - window < base:
        raise ValueError(f"history must reach back to sample {int(ends[0]) - window}, it starts at {base}")
    idx = (ends - window - base)[:, None] + np.arange(window)[None, :]
    return ends, h[idx]


# ---------------------------------------------------------------------------- features
def window_features(windows: np.ndarray, rate_hz: float = MODEL_RATE_HZ) -> np.ndarray:
    """Features of each window (columns :data:`FEATURE_NAMES`), vectorised.

    Parameters
    ----------
    windows
        [n, w] band-passed ECG in mV at ``rate_hz``, w >= 2 s.
    rate_hz
        Their sample rate.

    Returns
    -------
    np.ndarray
        float64 [n, len(FEATURE_NAMES)], finite for any finite input (a flat window has
        amplitude ~0 and neutral values elsewhere).
    """
    x = np.asarray(windows, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"windows must be 2-D [n, samples], got shape {x.shape}")
    fs = float(rate_hz)
    n, w = x.shape
    sec = int(round(fs))
    if w < 2 * sec:
        raise ValueError(f"windows must be at least 2 s ({2 * sec} samples) long, got {w}")
    if n == 0:
        return np.zeros((0, len(FEATURE_NAMES)))
    if not np.all(np.isfinite(x)):
        raise ValueError("windows must be finite")
    x = x - x.mean(axis=1, keepdims=True)
    p2, med, p98 = np.percentile(x, [2.0, 50.0, 98.0], axis=1)
    amp = p98 - p2
    out = np.empty((n, len(FEATURE_NAMES)))
    out[:, 0] = np.log10(amp + 1e-3)

    # spectrum: Hamming window, zero-padded
    spec = np.abs(np.fft.rfft(x * np.hamming(w)[None, :], _NFFT, axis=1)) ** 2
    fr = np.fft.rfftfreq(_NFFT, 1.0 / fs)
    cum = np.concatenate([np.zeros((n, 1)), np.cumsum(spec, axis=1)], axis=1)

    def band(lo_hz: np.ndarray | float, hi_hz: np.ndarray | float) -> np.ndarray:
        i0 = np.searchsorted(fr, np.broadcast_to(lo_hz, (n,)), side="left")
        i1 = np.searchsorted(fr, np.broadcast_to(hi_hz, (n,)), side="right")
        rows = np.arange(n)
        return np.asarray(cum[rows, i1] - cum[rows, i0])

    total = band(0.5, 40.0) + _EPS
    peak_band = (fr >= 1.0) & (fr <= 10.0)
    f_peak = fr[peak_band][np.argmax(spec[:, peak_band], axis=1)]
    out[:, 1] = f_peak
    out[:, 2] = band(0.6 * f_peak, 1.4 * f_peak) / total
    out[:, 3] = band(12.0, 40.0) / total
    out[:, 4] = band(0.5, 2.5) / total

    # TCSC: 1-s sub-windows every 0.5 s, each scaled by its own peak
    sub = np.lib.stride_tricks.sliding_window_view(x, sec, axis=1)[:, ::max(sec // 2, 1)]
    peak = np.abs(sub).max(axis=2, keepdims=True) + _EPS
    out[:, 5] = (np.abs(sub) / peak > _TCSC_LEVEL).mean(axis=(1, 2))

    # mean-crossing rate, as a frequency (two crossings a cycle)
    s = np.signbit(x)
    out[:, 6] = (s[:, 1:] != s[:, :-1]).sum(axis=1) / (w / fs) / 2.0

    # sharpness: QRS complexes are the steepest thing in a sinus window
    dx = np.diff(x, axis=1)
    out[:, 7] = np.log10((np.abs(dx).max(axis=1) + _EPS) / (np.sqrt((dx * dx).mean(axis=1)) + _EPS))

    # time spent near the baseline (isoelectric stretches between beats)
    out[:, 8] = (np.abs(x - med[:, None]) < 0.1 * (amp[:, None] + _EPS)).mean(axis=1)

    # autocorrelation peak at lags of a 2.5-10 Hz oscillation
    f2 = np.fft.rfft(x, 2 * _NFFT, axis=1)
    acf = np.fft.irfft(np.abs(f2) ** 2, axis=1)[:, :w]
    a0, a1 = (int(round(v * fs)) for v in _ACF_LAGS_S)
    out[:, 9] = acf[:, a0:a1 + 1].max(axis=1) / (acf[:, 0] + _EPS)

    # amplitude steadiness over 1-s sub-windows (VF is sustained; artefact comes in bursts)
    k = w // sec
    rms = np.sqrt((x[:, :k * sec].reshape(n, k, sec) ** 2).mean(axis=2))
    out[:, 10] = rms.min(axis=1) / (rms.max(axis=1) + _EPS)
    flat = amp < 1e-6
    out[flat, 1:] = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0)
    return out


# ---------------------------------------------------------------------------- detector
@dataclass(frozen=True)
class VFSettings:
    """How the VF detector was trained and is run (``extra["vf_detector"]`` of the bundle).

    Attributes
    ----------
    rate_hz : int
        Sample rate of the windows (the front end's model rate).
    window_s, hop_s : float
        Window length and hop, seconds of stream time.
    threshold : float or None
        Operating threshold on the probability: the (1 - ``fpr``) quantile of the
        detector's scores on windows of held-out negative patients. None until set.
    fpr : float or None
        The false-positive rate per window the threshold was set for.
    min_ptp_mv : float
        Windows whose 2nd-98th percentile range is below this never score as VF.
    consecutive : int
        Windows above threshold in a row the training validated for an alarm (the
        policy's ``ventricular_fibrillation.consecutive_windows`` default).
    """

    rate_hz: int = MODEL_RATE_HZ
    window_s: float = WINDOW_S
    hop_s: float = HOP_S
    threshold: float | None = None
    fpr: float | None = None
    min_ptp_mv: float = 0.1
    consecutive: int = 4

    def __post_init__(self) -> None:
        if not isinstance(self.rate_hz, int) or not 50 <= self.rate_hz <= 1000:
            raise ValueError(f"rate_hz must be an integer in [50, 1000], got {self.rate_hz!r}")
        if not (2.0 <= self.window_s <= 20.0):
            raise ValueError(f"window_s must be in [2, 20], got {self.window_s}")
        if not (0.0 < self.hop_s <= self.window_s):
            raise ValueError(f"hop_s must be in (0, window_s={self.window_s}], got {self.hop_s}")
        for name in ("window_s", "hop_s"):
            n = getattr(self, name) * self.rate_hz
            if abs(n - round(n)) > 1e-6:
                raise ValueError(f"{name} must be a whole number of samples at {self.rate_hz} Hz, got {getattr(self, name)}")
        if self.threshold is not None and not (math.isfinite(self.threshold) and 0.0 <= self.threshold <= 1.0):
            raise ValueError(f"threshold must be a probability in [0, 1] or None, got {self.threshold}")
        if self.fpr is not None:
            validate_fpr(self.fpr)
        if not (math.isfinite(self.min_ptp_mv) and self.min_ptp_mv >= 0.0):
            raise ValueError(f"min_ptp_mv must be >= 0, got {self.min_ptp_mv}")
        if not isinstance(self.consecutive, int) or not 1 <= self.consecutive <= 60:
            raise ValueError(f"consecutive must be an integer in [1, 60], got {self.consecutive!r}")

    @property
    def window(self) -> int:
        """Window length in samples."""
        return int(round(self.window_s * self.rate_hz))

    @property
    def hop(self) -> int:
        """Hop in samples."""
        return int(round(self.hop_s * self.rate_hz))

    def to_dict(self) -> dict[str, Any]:
        return {"rate_hz": self.rate_hz, "window_s": self.window_s, "hop_s": self.hop_s,
                "threshold": self.threshold, "fpr": self.fpr, "min_ptp_mv": self.min_ptp_mv,
                "consecutive": self.consecutive}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VFSettings:
        """Inverse of :meth:`to_dict`; VFDetectorError names a missing or bad key."""
        try:
            return cls(rate_hz=int(d["rate_hz"]), window_s=float(d["window_s"]), hop_s=float(d["hop_s"]),
                       threshold=None if d.get("threshold") is None else float(d["threshold"]),
                       fpr=None if d.get("fpr") is None else float(d["fpr"]),
                       min_ptp_mv=float(d["min_ptp_mv"]), consecutive=int(d["consecutive"]))
        except KeyError as exc:
            raise VFDetectorError(f"vf_detector settings miss key {exc.args[0]!r}, got {sorted(d)}") from None
        except (TypeError, ValueError) as exc:
            raise VFDetectorError(f"vf_detector settings: {exc}") from None


@dataclass(frozen=True)
class VFPrediction:
    """Scores of windows and the flags they give at the detector's threshold.

    Attributes
    ----------
    probability : np.ndarray
        float64 [n] VF/VFL probability per window.
    flagged : np.ndarray
        bool [n], ``probability > threshold``.
    threshold : float
        The threshold used.
    """

    probability: np.ndarray
    flagged: np.ndarray
    threshold: float


@dataclass(frozen=True, eq=False)
class VFDetector:
    """L2-regularised logistic regression on standardised window features, numpy only.

    ``score(windows)`` is the probability that each window is VF/VFL (higher is more
    VF-like); windows below ``settings.min_ptp_mv`` score 0.

    Attributes
    ----------
    coef : np.ndarray
        float64 [n_features] weights of the standardised features.
    intercept : float
        Bias.
    mean, scale : np.ndarray
        float64 [n_features] standardisation ``(f - mean) / scale``.
    settings : VFSettings
        Window, threshold and gate.
    feature_names : tuple[str, ...]
        Must be :data:`FEATURE_NAMES` (checked on load).
    """

    coef: np.ndarray
    intercept: float
    mean: np.ndarray
    scale: np.ndarray
    settings: VFSettings
    feature_names: tuple[str, ...] = FEATURE_NAMES

    def __post_init__(self) -> None:
        k = len(FEATURE_NAMES)
        if tuple(self.feature_names) != FEATURE_NAMES:
            raise VFDetectorError(f"feature_names must be {list(FEATURE_NAMES)}, got {list(self.feature_names)}")
        for name in ("coef", "mean", "scale"):
            a = np.asarray(getattr(self, name))
            if a.shape != (k,) or not np.all(np.isfinite(a)):
                raise VFDetectorError(f"{name} must be {k} finite numbers, got shape {a.shape}")
        if not np.all(np.asarray(self.scale) > 0):
            raise VFDetectorError(f"scale must be > 0, got {np.asarray(self.scale).tolist()}")
        if not math.isfinite(self.intercept):
            raise VFDetectorError(f"intercept must be finite, got {self.intercept}")

    # -- training ----------------------------------------------------------------------
    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, *, sample_weight: np.ndarray | None = None,
            l2: float = 1.0, settings: VFSettings | None = None, max_iter: int = 50) -> VFDetector:
        """Fit by Newton's method (deterministic: no randomness at all).

        Parameters
        ----------
        features : np.ndarray
            float [n, len(FEATURE_NAMES)] from :func:`window_features`.
        labels : np.ndarray
            [n] 1 for VF/VFL, 0 otherwise.
        sample_weight : np.ndarray, optional
            [n] row weights (class and patient balance); normalised to sum to n.
        l2 : float
            Ridge penalty on the standardised weights (per unit of total weight).
        settings : VFSettings, optional
            Kept on the detector (threshold unset unless given).
        """
        x = np.asarray(features, dtype=np.float64)
        y = np.asarray(labels, dtype=np.float64).ravel()
        if x.ndim != 2 or x.shape[1] != len(FEATURE_NAMES):
            raise VFDetectorError(f"features must have shape [n, {len(FEATURE_NAMES)}], got {x.shape}")
        if y.shape != (x.shape[0],) or not np.isin(y, (0.0, 1.0)).all():
            raise VFDetectorError(f"labels must be {x.shape[0]} values of 0 or 1")
        if y.min(initial=1.0) == y.max(initial=0.0):
            raise VFDetectorError("labels must hold both classes")
        if not (math.isfinite(l2) and l2 > 0):
            raise ValueError(f"l2 must be > 0, got {l2}")
        w = np.ones(x.shape[0]) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64).ravel()
        if w.shape != y.shape or not np.all(w >= 0) or w.sum() <= 0:
            raise VFDetectorError(f"sample_weight must be {y.shape[0]} non-negative weights with a positive sum")
        w = w * (w.size / w.sum())
        mean = np.average(x, axis=0, weights=w)
        scale = np.sqrt(np.average((x - mean) ** 2, axis=0, weights=w))
        scale = np.where(scale > 1e-9, scale, 1.0)
        z = np.hstack([(x - mean) / scale, np.ones((x.shape[0], 1))])
        beta = np.zeros(z.shape[1])
        reg = np.full(z.shape[1], l2 * w.sum() / 1000.0)
        reg[-1] = 0.0  # the bias is not penalised
        for _ in range(max_iter):
            p = 1.0 / (1.0 + np.exp(-np.clip(z @ beta, -35, 35)))
            grad = z.T @ (w * (p - y)) + reg * beta
            hess = (z * (w * p * (1 - p))[:, None]).T @ z + np.diag(reg)
            step = np.linalg.solve(hess, grad)
            beta -= step
            if np.max(np.abs(step)) < 1e-8:
                break
        return cls(coef=beta[:-1], intercept=float(beta[-1]), mean=mean, scale=scale,
                   settings=settings or VFSettings())

    def with_threshold(self, negative_features: np.ndarray, fpr: float) -> VFDetector:
        """This detector at the (1 - ``fpr``) quantile of its scores on negative windows of
        patients it was not trained on (:func:`models.autoencoder.threshold_from_scores`)."""
        thr = threshold_from_scores(self.score_features(negative_features), fpr)
        s = self.settings
        return VFDetector(self.coef, self.intercept, self.mean, self.scale,
                          VFSettings(s.rate_hz, s.window_s, s.hop_s, thr, validate_fpr(fpr), s.min_ptp_mv,
                                     s.consecutive))

    # -- inference ---------------------------------------------------------------------
    @property
    def threshold(self) -> float | None:
        return self.settings.threshold

    def score_features(self, features: np.ndarray) -> np.ndarray:
        """VF probability float64 [n] of precomputed :func:`window_features` rows."""
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or f.shape[1] != len(FEATURE_NAMES):
            raise VFDetectorError(f"features must have shape [n, {len(FEATURE_NAMES)}], got {f.shape}")
        logit = ((f - self.mean) / self.scale) @ self.coef + self.intercept
        p = 1.0 / (1.0 + np.exp(-np.clip(logit, -35, 35)))
        gate = f[:, 0] < math.log10(self.settings.min_ptp_mv + 1e-3)
        return np.where(gate, 0.0, p)

    def score(self, windows: np.ndarray) -> np.ndarray:
        """VF probability float64 [n] of band-passed windows [n, settings.window]."""
        w = np.asarray(windows)
        if w.ndim != 2 or w.shape[1] != self.settings.window:
            raise VFDetectorError(f"windows must have shape [n, {self.settings.window}], got {w.shape}")
        return self.score_features(window_features(w, self.settings.rate_hz))

    def predict(self, windows: np.ndarray) -> VFPrediction:
        """Scores and flags at the detector's threshold (NotFittedError without one)."""
        if self.settings.threshold is None:
            raise NotFittedError("the VF detector has no threshold; set one with with_threshold")
        p = self.score(windows)
        return VFPrediction(p, p > self.settings.threshold, self.settings.threshold)

    # -- persistence -------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The ``vf_detector.npz`` file: weights, standardisation and feature names (the
        settings travel in ``bundle.json``)."""
        header = {"format": _FORMAT, "model": "logistic", "feature_names": list(self.feature_names)}
        arrays = {"header": np.frombuffer(json.dumps(header).encode(), np.uint8), "coef": self.coef,
                  "intercept": np.array([self.intercept]), "mean": self.mean, "scale": self.scale}
        # np.savez stamps each member with the current time; a fixed stamp makes the file
        # (and so the bundle's hash of it) a function of the weights alone
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, a in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                member = io.BytesIO()
                np.lib.format.write_array(member, np.ascontiguousarray(a), allow_pickle=False)
                zf.writestr(info, member.getvalue())
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, raw: bytes, settings: VFSettings) -> VFDetector:
        """Inverse of :meth:`to_bytes`; VFDetectorError names what is wrong."""
        try:
            z = np.load(io.BytesIO(raw), allow_pickle=False)
            header = json.loads(bytes(z["header"]).decode())
            arrays = {k: np.asarray(z[k], dtype=np.float64) for k in ("coef", "intercept", "mean", "scale")}
        except (OSError, ValueError, KeyError) as exc:
            raise VFDetectorError(f"not a VF detector file: {exc}") from None
        if header.get("format") != _FORMAT:
            raise VFDetectorError(f"VF detector format must be {_FORMAT!r}, got {header.get('format')!r}")
        if header.get("model") != "logistic":
            raise VFDetectorError(f"VF detector model must be 'logistic', got {header.get('model')!r}")
        if arrays["intercept"].shape != (1,):
            raise VFDetectorError(f"intercept must be one number, got shape {arrays['intercept'].shape}")
        return cls(coef=arrays["coef"], intercept=float(arrays["intercept"][0]), mean=arrays["mean"],
                   scale=arrays["scale"], settings=settings,
                   feature_names=tuple(header.get("feature_names", ())))


def load_vf_detector(bundle_dir: str | Path, extra: Mapping[str, Any]) -> VFDetector | None:
    """The VF detector a bundle ships, or None when it has none (bundles made before it).

    Parameters
    ----------
    bundle_dir : str or Path
        The bundle folder (its files' hashes are checked by :func:`models.bundle.read_meta`).
    extra : mapping
        The bundle's ``extra`` section; ``extra["vf_detector"]`` holds the settings.

    Raises
    ------
    VFDetectorError
        Settings without a threshold, a missing or malformed file.
    """
    return load_window_detector(bundle_dir, extra, EXTRA_KEY, FILE_NAME, "VF detector")


def load_window_detector(bundle_dir: str | Path, extra: Mapping[str, Any], key: str, default_file: str,
                         what: str) -> VFDetector | None:
    """A window detector (this module's model) a bundle ships under ``extra[key]``, or None.

    Shared by the VF and the artefact (:mod:`models.ecg.artefact`) detectors.
    """
    doc = extra.get(key)
    if doc is None:
        return None
    if not isinstance(doc, Mapping) or not isinstance(doc.get("settings"), Mapping):
        raise VFDetectorError(f"extra[{key!r}] must be an object with a 'settings' object, got {doc!r}")
    settings = VFSettings.from_dict(doc["settings"])
    if settings.threshold is None:
        raise VFDetectorError(f"extra[{key!r}].settings has no threshold")
    fp = Path(bundle_dir) / str(doc.get("file", default_file))
    if not fp.is_file():
        raise VFDetectorError(f"{what} file missing: {fp}")
    return VFDetector.from_bytes(fp.read_bytes(), settings)
