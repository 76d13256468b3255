"""Heart-rate model input stage: RR intervals -> windows -> the [n, 32, 2] tensor, its normaliser, and the window score.

Input representation (why beats, not 1 Hz HR): the worker already has every beat's RR
interval (``ScoredBeat.rr_ms``, ``HRObservation.rr_ms``), and atrial fibrillation shows
as beat-to-beat irregularity that a 1 Hz heart-rate series averages away. A window is
``WINDOW_BEATS = 32`` consecutive RR intervals (about 25 s at 75 bpm) turned into two
channels per beat:

- channel 0, *irregularity*: ``log(rr / median(window))`` clipped to +-1.5, divided by
  its spread on normal training rhythm. Scale-free, so it measures rhythm shape only:
  afib (irregularly irregular), ectopy and abrupt rate changes inside the window.
- channel 1, *level*: ``(log(60 / rr) - mean) / std`` with mean and std of log heart
  rate on the normal training rhythm. Carries sustained tachycardia and bradycardia.

The autoencoder learns normal rhythm (with normal heart-rate variability); its
per-window reconstruction error, a trimmed mean over the window's beats
(:class:`HRScore`), is the score (higher = more anomalous).

Pure numpy (TensorFlow never imported).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "DEFAULT_TRIM",
    "FEATURES",
    "N_FEATURES",
    "RR_MAX_S",
    "RR_MIN_S",
    "WINDOW_BEATS",
    "HRInput",
    "HRNormaliser",
    "HRScore",
    "hr_features",
    "rr_windows",
]

WINDOW_BEATS = 32
N_FEATURES = 2
FEATURES = ("log_rr_over_window_median_z", "log_hr_z")
#: RR intervals are clipped to [0.2, 3.0] s (300 to 20 bpm) before features: values
#: outside are detector or annotation artefacts or pauses, which the policy's pause
#: rule handles directly; clipping keeps one artefact from dominating a window.
RR_MIN_S = 0.2
RR_MAX_S = 3.0
_LOG_RATIO_CLIP = 1.5
# Standardised feature values are clipped to +-8 so one extreme window cannot produce
# an unbounded score (it is already far above any threshold at 8 sigma).
_Z_CLIP = 8.0
#: The score leaves out the ``DEFAULT_TRIM`` worst-reconstructed beats of a window. An
#: isolated ectopic beat disturbs two RR intervals (short coupling, long compensatory
#: pause); those are the ECG beat model's business, not a rhythm alert. Three or more
#: disturbed beats per window (bigeminy, runs, AF) still raise the score.
DEFAULT_TRIM = 4


def rr_windows(rr_s: np.ndarray | Sequence[float], window: int = WINDOW_BEATS, step: int = 1) -> np.ndarray:
    """Overlapping windows of consecutive RR intervals.

    Parameters
    ----------
    rr_s : array-like
        1-D RR intervals in seconds, in beat order.
    window : int
        Intervals per window (>= 2).
    step : int
        Intervals between window starts (>= 1).

    Returns
    -------
    np.ndarray
        float32 [n_windows, window] (a copy); window ``i`` is
        ``rr_s[i*step : i*step + window]``. ``n_windows = 0`` when fewer than ``window``
        intervals are given.
    """
    rr = np.asarray(rr_s, dtype=np.float32)
    if rr.ndim != 1:
        raise ValueError(f"rr_s must be 1-D, got shape {rr.shape}")
    if int(window) < 2:
        raise ValueError(f"window must be >= 2, got {window}")
    if int(step) < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    bad = int(np.sum(~np.isfinite(rr) | (rr <= 0)))
    if bad:
        raise ValueError(f"rr_s must be finite and > 0 seconds, got {bad} bad values of {rr.size}")
    window, step = int(window), int(step)
    if rr.size < window:
        return np.zeros((0, window), dtype=np.float32)
    view = np.lib.stride_tricks.sliding_window_view(rr, window)[::step]
    return np.ascontiguousarray(view, dtype=np.float32)


def _log_ratio(windows: np.ndarray) -> np.ndarray:
    rr = np.clip(windows, RR_MIN_S, RR_MAX_S)
    med = np.median(rr, axis=1, keepdims=True)
    return np.clip(np.log(rr / med), -_LOG_RATIO_CLIP, _LOG_RATIO_CLIP)


def _log_hr(windows: np.ndarray) -> np.ndarray:
    return np.log(60.0 / np.clip(windows, RR_MIN_S, RR_MAX_S))


def _check_windows(x: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    a = np.asarray(x, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"RR windows must have shape [n, window], got {a.shape}")
    bad = int(np.sum(~np.isfinite(a) | (a <= 0)))
    if bad:
        raise ValueError(f"RR windows must be finite and > 0 seconds, got {bad} bad values")
    return a


@dataclass(frozen=True)
class HRNormaliser:
    """Normal-rhythm statistics that standardise the two feature channels.

    Attributes
    ----------
    log_hr_mean, log_hr_std : float
        Mean and standard deviation of ``log(hr_bpm)`` over normal training beats.
    irregularity_scale : float
        Standard deviation of ``log(rr / window median)`` over normal training windows.
    """

    log_hr_mean: float
    log_hr_std: float
    irregularity_scale: float

    def __post_init__(self) -> None:
        if not math.isfinite(self.log_hr_mean):
            raise ValueError(f"log_hr_mean must be finite, got {self.log_hr_mean}")
        for key in ("log_hr_std", "irregularity_scale"):
            v = getattr(self, key)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{key} must be finite and > 0, got {v}")

    @classmethod
    def fit(cls, windows: np.ndarray) -> HRNormaliser:
        """Fit on normal RR windows float [n, window] in seconds (n >= 1)."""
        w = np.asarray(windows, dtype=np.float64)
        if w.ndim != 2 or w.shape[0] == 0:
            raise ValueError(f"windows must be a non-empty [n, window] array, got shape {w.shape}")
        log_hr = _log_hr(w)
        irr = _log_ratio(w)
        # floors keep a perfectly regular (e.g. paced) training set from dividing by ~0
        return cls(
            log_hr_mean=float(log_hr.mean()),
            log_hr_std=max(float(log_hr.std()), 0.02),
            irregularity_scale=max(float(irr.std()), 0.005),
        )

    def to_dict(self) -> dict[str, float]:
        """JSON-friendly form."""
        return {
            "log_hr_mean": self.log_hr_mean,
            "log_hr_std": self.log_hr_std,
            "irregularity_scale": self.irregularity_scale,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HRNormaliser:
        """Inverse of :meth:`to_dict`."""
        return cls(float(d["log_hr_mean"]), float(d["log_hr_std"]), float(d["irregularity_scale"]))


def hr_features(windows: np.ndarray | Sequence[Sequence[float]], normaliser: HRNormaliser) -> np.ndarray:
    """Model input float32 [n, window, 2] from RR windows [n, window] in seconds.

    Channel 0 is the standardised irregularity ``log(rr / median)``, channel 1 the
    standardised log heart rate; both clipped to +-8. Windows are validated (2-D,
    finite, > 0) and taken as float32 seconds, as :func:`rr_windows` gives them.
    """
    w = _check_windows(windows).astype(np.float64)
    x = np.empty((w.shape[0], w.shape[1], N_FEATURES), dtype=np.float32)
    x[:, :, 0] = np.clip(_log_ratio(w) / normaliser.irregularity_scale, -_Z_CLIP, _Z_CLIP)
    x[:, :, 1] = np.clip((_log_hr(w) - normaliser.log_hr_mean) / normaliser.log_hr_std, -_Z_CLIP, _Z_CLIP)
    return x


@dataclass(frozen=True)
class HRScore:
    """Window score: mean squared reconstruction error over the window's beats, leaving
    out the ``trim`` worst beats (a trimmed mean).

    Applied with :meth:`numpy` to the reconstruction by every runtime (``in_graph`` is
    false: the sort stays in numpy, so Keras and TFLite score identically). Training
    minimises the plain mean squared error.

    Attributes
    ----------
    trim : int
        Worst-reconstructed beats left out per window, >= 0 (and < window / 2,
        checked by :meth:`check_shape`).
    """

    trim: int = DEFAULT_TRIM
    in_graph: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if isinstance(self.trim, bool) or int(self.trim) != self.trim or self.trim < 0:
            raise ValueError(f"trim must be an integer >= 0, got {self.trim!r}")

    def check_shape(self, timesteps: int, channels: int) -> None:
        """ValueError unless ``trim < window // 2`` (``timesteps`` is the window)."""
        if not 0 <= int(self.trim) < int(timesteps) // 2:
            raise ValueError(f"trim must be in [0, window // 2) = [0, {int(timesteps) // 2}), got {self.trim}")

    def numpy(self, x: np.ndarray, x_hat: np.ndarray) -> np.ndarray:
        """Per-window score float32 [n] from windows and reconstructions [n, window, channels]."""
        x = np.asarray(x, dtype=np.float32)
        x_hat = np.asarray(x_hat, dtype=np.float32)
        if x.shape != x_hat.shape or x.ndim != 3:
            raise ValueError(f"x and x_hat must be equal [n, window, channels] arrays, got {x.shape} and {x_hat.shape}")
        per_beat = np.square(x - x_hat).mean(axis=2)
        if self.trim:
            per_beat = np.sort(per_beat, axis=1)[:, : x.shape[1] - int(self.trim)]
        return per_beat.mean(axis=1).astype(np.float32)

    def tensorflow(self, x: Any, x_hat: Any) -> Any:
        """Not used (``in_graph`` is false); the score is computed by :meth:`numpy`."""
        raise NotImplementedError("HRScore is computed in numpy on the reconstruction (in_graph=False)")

    def keras_loss(self) -> str:
        """Plain mean squared error over all beats and channels."""
        return "mse"

    def to_dict(self) -> dict[str, Any]:
        """The bundle's ``score`` section."""
        return {"rule": "mean squared error over the window's beats, the trim worst beats left out", "trim": int(self.trim)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HRScore:
        """Inverse of :meth:`to_dict` (KeyError names a missing key)."""
        if not isinstance(d, dict) or "trim" not in d:
            raise KeyError("trim")
        return cls(trim=int(d["trim"]))


@dataclass(frozen=True)
class HRInput:
    """What a heart-rate bundle's model expects as input: the window and the HR normaliser.

    Attributes
    ----------
    normaliser : HRNormaliser
        Normal-rhythm feature statistics.
    window_beats : int
        RR intervals per window (>= 2).
    """

    normaliser: HRNormaliser
    window_beats: int = WINDOW_BEATS
    kind: ClassVar[str] = "hr"

    def __post_init__(self) -> None:
        if isinstance(self.window_beats, bool) or int(self.window_beats) != self.window_beats or self.window_beats < 2:
            raise ValueError(f"window.window_beats must be an integer >= 2, got {self.window_beats!r}")

    @property
    def timesteps(self) -> int:
        """Beats per window."""
        return int(self.window_beats)

    @property
    def channels(self) -> int:
        """Input channels (2)."""
        return N_FEATURES

    @property
    def rr_clip_s(self) -> tuple[float, float]:
        """The RR range the features clip to, seconds."""
        return (RR_MIN_S, RR_MAX_S)

    def make_input(self, rr_windows_s: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
        """Model input [n, window, 2] from RR windows [n, window] in seconds (ValueError on another window)."""
        x = hr_features(rr_windows_s, self.normaliser)
        if x.shape[1] != self.window_beats:
            raise ValueError(f"RR windows must have shape [n, {self.window_beats}], got {x.shape[:2]}")
        return x

    def to_dict(self) -> dict[str, Any]:
        """The bundle's ``input`` section."""
        return {
            "window": {
                "unit": "rr_interval",
                "window_beats": int(self.window_beats),
                "features": list(FEATURES),
                "rr_clip_s": [RR_MIN_S, RR_MAX_S],
            },
            "normaliser": self.normaliser.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HRInput:
        """Inverse of :meth:`to_dict`; KeyError names a missing key, ValueError a bad value
        (features and RR clip range must be the ones this code computes)."""
        win = _get(d, "window", "window")
        norm = _get(d, "normaliser", "normaliser")
        features = list(_get(win, "features", "window.features"))
        if features != list(FEATURES):
            raise ValueError(f"window.features must be {list(FEATURES)}, got {features}")
        clip = [float(v) for v in _get(win, "rr_clip_s", "window.rr_clip_s")]
        if clip != [RR_MIN_S, RR_MAX_S]:
            raise ValueError(f"window.rr_clip_s must be {[RR_MIN_S, RR_MAX_S]}, got {clip}")
        unit = _get(win, "unit", "window.unit")
        if unit != "rr_interval":
            raise ValueError(f"window.unit must be 'rr_interval', got {unit!r}")
        keys = ("log_hr_mean", "log_hr_std", "irregularity_scale")
        values = [float(_get(norm, k, f"normaliser.{k}")) for k in keys]
        try:
            normaliser = HRNormaliser(*values)
        except ValueError as exc:
            raise ValueError(f"bad normaliser: {exc}") from exc
        return cls(normaliser=normaliser, window_beats=int(_get(win, "window_beats", "window.window_beats")))


def _get(d: Any, key: str, path: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise KeyError(path)
    return d[key]
