"""Signal-quality stage: lead-off (flat line, rail saturation) and noise checks on ECG.

Quality is a number in [0, 1] (1 = clean) with two flags. Checks were chosen so that
fast but real rhythms (ventricular runs, 180 bpm tachycardia, AF) are *not* called noisy:
kurtosis-style checks fail on those, so noise is judged by the share of high-frequency
energy (first-difference power over signal power), which broadband motion and EMG raise
and wide, fast QRS complexes do not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["SignalQuality", "signal_quality", "filtered_quality", "FLAT_PTP_MV"]

FLAT_PTP_MV: float = 0.05
"""A filtered window whose peak-to-peak is below this (mV) is a flat line."""

_RAW_FLAT_PTP_MV = 0.02
_RAIL_FRACTION = 0.3
_MAX_PTP_MV = 8.0  # larger swings in a 0.5-40 Hz band are artefact, not ECG
_HF_GOOD = 0.40  # diff-power / power at 125 Hz: clean ECG <= ~0.46 (noise 0.1 mV)
_HF_BAD = 0.75  # broadband motion 0.5-1 mV gives ~0.8-0.95
_MIN_WINDOW_S = 0.5
# Below this high-frequency RMS (mV) a window is quiet, not noisy, whatever its HF share:
# asystole and low-voltage ECG are mostly sensor noise floor, and calling them noisy
# would suppress the very pause alarm they must raise. Broadband motion is ~0.3-1 mV.
_NOISE_FLOOR_MV = 0.08


@dataclass(frozen=True)
class SignalQuality:
    """Quality of an ECG window.

    Attributes
    ----------
    quality
        0 (unusable) .. 1 (clean).
    lead_off
        Flat line or rail saturation: no ECG reaches the device.
    noisy
        ECG present but dominated by artefact (``quality < 0.5``).
    reason
        ``"ok"``, ``"flat"``, ``"saturated"``, ``"noise"``, ``"amplitude"`` or ``"short"``.
    """

    quality: float
    lead_off: bool
    noisy: bool
    reason: str


def filtered_quality(y_filtered: np.ndarray, fs: float) -> SignalQuality:
    """Quality of a band-passed ECG window (ideally >= 2 s, so it holds a beat).

    Parameters
    ----------
    y_filtered
        1-D band-passed ECG in mV.
    fs
        Its sample rate in Hz.

    Returns
    -------
    SignalQuality
        ``reason="short"`` with quality 0.5 (unknown) for windows under 0.5 s.
    """
    y = np.asarray(y_filtered, dtype=np.float64)
    if y.ndim != 1:
        raise ValueError(f"y_filtered must be 1-D, got shape {y.shape}")
    if not np.isfinite(fs) or fs <= 0:
        raise ValueError(f"fs must be > 0, got {fs}")
    n = y.shape[0]
    if n < max(int(_MIN_WINDOW_S * fs), 4):
        return SignalQuality(0.5, False, False, "short")
    # ufunc reductions directly: same numbers as y.max(), y.mean(), np.diff, without
    # their per-call overhead (this runs per beat and per chunk in the stream worker).
    ptp = float(np.maximum.reduce(y) - np.minimum.reduce(y))
    if ptp < FLAT_PTP_MV:
        return SignalQuality(0.0, True, False, "flat")
    if ptp > _MAX_PTP_MV:
        return SignalQuality(0.0, False, True, "amplitude")
    m = y - np.add.reduce(y) / n
    power = float(np.dot(m, m))
    d = y[1:] - y[:-1]
    # Difference power scales with fs^-2 for band-limited content: normalise to 125 Hz.
    d_power = float(np.dot(d, d))
    hf = d_power / max(power, 1e-12) * (fs / 125.0) ** 2
    q = float(np.clip((_HF_BAD - hf) / (_HF_BAD - _HF_GOOD), 0.0, 1.0))
    # For white noise var(diff) = 2 var(x); rescale the difference to the 125 Hz grid.
    hf_rms = math.sqrt(d_power / (2 * d.shape[0])) * (fs / 125.0)
    if hf_rms < _NOISE_FLOOR_MV:
        q = max(q, 0.75)
    noisy = q < 0.5
    return SignalQuality(q, False, noisy, "noise" if noisy else "ok")


def signal_quality(
    x_raw_mv: np.ndarray,
    y_filtered: np.ndarray,
    fs: float,
    raw_rate_hz: float | None = None,
) -> SignalQuality:
    """Quality of an ECG chunk from its raw samples and its band-passed version.

    Parameters
    ----------
    x_raw_mv
        Raw samples in mV (checked for rail saturation and, when ``raw_rate_hz`` is given
        and the chunk spans >= 0.5 s, for a flat line).
    y_filtered
        Band-passed samples in mV at ``fs`` (checked for flat line and noise).
    fs
        Sample rate of ``y_filtered`` in Hz.
    raw_rate_hz
        Sample rate of ``x_raw_mv``; without it the raw flat-line check is skipped, as a
        few raw samples between beats can be legitimately flat.

    Returns
    -------
    SignalQuality
    """
    x = np.asarray(x_raw_mv, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"x_raw_mv must be 1-D, got shape {x.shape}")
    if x.shape[0] >= 8:
        lo, hi = float(np.minimum.reduce(x)), float(np.maximum.reduce(x))
        if hi - lo > 0:
            at_rail = np.count_nonzero((x <= lo) | (x >= hi)) / x.shape[0]
            if at_rail >= _RAIL_FRACTION:
                return SignalQuality(0.0, True, False, "saturated")
        if raw_rate_hz is not None and x.shape[0] >= _MIN_WINDOW_S * raw_rate_hz:
            if hi - lo < _RAW_FLAT_PTP_MV:
                return SignalQuality(0.0, True, False, "flat")
    return filtered_quality(y_filtered, fs)
