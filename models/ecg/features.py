"""ECG model input stage: beat waveform + RR context -> the [n, 80, 3] tensor, its normaliser, and the beat score.

Pure numpy (TensorFlow only inside :meth:`ECGScore.tensorflow` / :meth:`ECGScore.keras_loss`,
imported when called).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from models.beats import BeatSpec

__all__ = [
    "BEAT_LENGTH",
    "CHANNELS",
    "DEFAULT_RR_WEIGHT",
    "N_CHANNELS",
    "ECGInput",
    "ECGScore",
    "Normaliser",
    "make_model_input",
]

#: Beat window length in samples at the model rate (125 Hz x (0.24 s + 0.40 s)).
BEAT_LENGTH = 80
#: Channels: 0 = normalised waveform, 1 = log(rr_prev / local mean), 2 = log(rr_next / local mean).
N_CHANNELS = 3
CHANNELS = ("waveform_z", "log_rr_prev_ratio", "log_rr_next_ratio")
#: Weight of the RR-context reconstruction error in the score; RR context is what
#: separates a premature beat from a normal one when morphology alone is ambiguous.
DEFAULT_RR_WEIGHT = 1.0
# Log-RR ratios are clipped to +-1.5 (a factor of ~4.5) so a dropped beat or a long
# pause cannot dominate the squared error with an unbounded value.
_LOG_RR_CLIP = 1.5


@dataclass(frozen=True)
class Normaliser:
    """Amplitude normalisation of beat waveforms: ``(w - center) / scale``.

    Attributes
    ----------
    center : float
        Offset in mV (median of all samples of the fitting beats).
    scale : float
        Scale in mV (median per-beat peak-to-peak amplitude, roughly the R amplitude).
    """

    center: float
    scale: float

    def __post_init__(self) -> None:
        if not math.isfinite(self.center):
            raise ValueError(f"center must be finite, got {self.center}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be finite and > 0, got {self.scale}")

    @classmethod
    def fit(cls, waveforms: np.ndarray) -> Normaliser:
        """Fit robust statistics on beat waveforms.

        Parameters
        ----------
        waveforms : np.ndarray
            float [n, L] baseline-subtracted beats in mV, n >= 1.

        Returns
        -------
        Normaliser
            center = median sample value, scale = median per-beat peak-to-peak amplitude
            (medians so a few ectopic or noisy beats barely move it).
        """
        w = np.asarray(waveforms, dtype=np.float64)
        if w.ndim != 2 or w.shape[0] == 0:
            raise ValueError(f"waveforms must be a non-empty [n, L] array, got shape {w.shape}")
        if not np.all(np.isfinite(w)):
            raise ValueError("waveforms contain non-finite values")
        center = float(np.median(w))
        scale = float(np.median(w.max(axis=1) - w.min(axis=1)))
        if scale <= 1e-6:
            raise ValueError(f"waveforms are flat: median peak-to-peak amplitude {scale} mV")
        return cls(center=center, scale=scale)

    def apply(self, waveforms: np.ndarray) -> np.ndarray:
        """Return ``(waveforms - center) / scale`` as float32."""
        return ((np.asarray(waveforms, dtype=np.float32) - np.float32(self.center)) / np.float32(self.scale)).astype(
            np.float32
        )

    def to_dict(self) -> dict[str, float]:
        """JSON-friendly form."""
        return {"center": self.center, "scale": self.scale}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normaliser:
        """Inverse of :meth:`to_dict`."""
        return cls(center=float(d["center"]), scale=float(d["scale"]))


def make_model_input(waveforms: np.ndarray, rr_context: np.ndarray, normaliser: Normaliser) -> np.ndarray:
    """Build the model input tensor.

    Parameters
    ----------
    waveforms : np.ndarray
        float [n, 80] baseline-subtracted beats in mV at the model rate.
    rr_context : np.ndarray
        float [n, 2] (rr_prev / local mean, rr_next / local mean); 1.0 when missing.
    normaliser : Normaliser
        Amplitude normaliser (global or per patient).

    Returns
    -------
    np.ndarray
        float32 [n, 80, 3]: channel 0 the normalised waveform; channels 1-2 the log RR
        ratios (0 for a regular rhythm, negative for premature) clipped to +-1.5 and
        broadcast over time. Log ratios centre the RR channels on 0 like the waveform,
        and make "early" and "late" symmetric.
    """
    w = np.asarray(waveforms, dtype=np.float32)
    rr = np.asarray(rr_context, dtype=np.float32)
    if w.ndim != 2 or w.shape[1] != BEAT_LENGTH:
        raise ValueError(f"waveforms must have shape [n, {BEAT_LENGTH}], got {w.shape}")
    if rr.shape != (w.shape[0], 2):
        raise ValueError(f"rr_context must have shape [{w.shape[0]}, 2], got {rr.shape}")
    if np.any(~np.isfinite(rr)) or np.any(rr <= 0):
        raise ValueError("rr_context ratios must be finite and > 0 (use 1.0 for missing)")
    x = np.empty((w.shape[0], BEAT_LENGTH, N_CHANNELS), dtype=np.float32)
    x[:, :, 0] = normaliser.apply(w)
    log_rr = np.clip(np.log(rr), -_LOG_RR_CLIP, _LOG_RR_CLIP)
    x[:, :, 1:] = log_rr[:, None, :]
    return x


@dataclass(frozen=True)
class ECGScore:
    """Beat score: waveform MSE plus ``rr_weight`` x RR-context MSE, and the loss that trains it.

    Computed inside the Keras graph (``in_graph``) and with :meth:`numpy` by the TFLite
    runtime, so every runtime scores the same way.

    Attributes
    ----------
    rr_weight : float
        Weight of the RR-context term (channels 1-2), finite and >= 0.
    """

    rr_weight: float = DEFAULT_RR_WEIGHT
    in_graph: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rr_weight) and self.rr_weight >= 0):
            raise ValueError(f"rr_weight must be finite and >= 0, got {self.rr_weight}")

    def check_shape(self, timesteps: int, channels: int) -> None:
        """ValueError unless there is a waveform channel and at least one RR channel."""
        if int(channels) < 2:
            raise ValueError(f"ECGScore needs channels >= 2 (waveform + RR context), got {channels}")

    def numpy(self, x: np.ndarray, x_hat: np.ndarray) -> np.ndarray:
        """Per-beat score float32 [n] from beats and reconstructions [n, 80, 3]."""
        x = np.asarray(x, dtype=np.float32)
        x_hat = np.asarray(x_hat, dtype=np.float32)
        if x.shape != x_hat.shape:
            raise ValueError(f"x and x_hat shapes differ: {x.shape} vs {x_hat.shape}")
        err = np.square(x - x_hat)
        wave = err[:, :, 0].mean(axis=1)
        rr = err[:, :, 1:].mean(axis=(1, 2))
        return (wave + np.float32(self.rr_weight) * rr).astype(np.float32)

    def tensorflow(self, x: Any, x_hat: Any) -> Any:
        """:meth:`numpy` as TensorFlow ops (the Keras runtime's compiled score)."""
        import tensorflow as tf

        err = tf.square(x - x_hat)
        rr_w = tf.constant(self.rr_weight, dtype=tf.float32)
        return tf.reduce_mean(err[:, :, 0], axis=1) + rr_w * tf.reduce_mean(err[:, :, 1:], axis=[1, 2])

    def keras_loss(self) -> Any:
        """Squared error with the RR channels weighted like the score, so training
        minimises exactly what is scored."""
        import tensorflow as tf

        w = tf.constant([1.0, self.rr_weight / 2.0, self.rr_weight / 2.0], dtype=tf.float32)

        def loss(y_true: Any, y_pred: Any) -> Any:
            return tf.reduce_mean(tf.square(y_true - tf.cast(y_pred, tf.float32)) * w, axis=[1, 2]) * 3.0

        return loss

    def to_dict(self) -> dict[str, Any]:
        """The bundle's ``score`` section."""
        return {"rule": "waveform MSE + rr_weight x RR-context MSE", "rr_weight": self.rr_weight}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ECGScore:
        """Inverse of :meth:`to_dict` (KeyError names a missing key)."""
        return cls(rr_weight=float(_get(d, "rr_weight", "rr_weight")))


@dataclass(frozen=True)
class ECGInput:
    """What an ECG bundle's model expects as input: the beat window and the global normaliser.

    Attributes
    ----------
    normaliser : Normaliser
        Global amplitude normaliser (patients calibrate their own from it).
    beat : BeatSpec
        Beat window around the R peak at the model rate (80 samples).
    """

    normaliser: Normaliser
    beat: BeatSpec = field(default_factory=BeatSpec)
    kind: ClassVar[str] = "ecg"

    def __post_init__(self) -> None:
        if self.beat.length != BEAT_LENGTH:
            raise ValueError(f"beat_spec.length must be {BEAT_LENGTH}, got {self.beat.length}")

    @property
    def timesteps(self) -> int:
        """Samples per beat (80)."""
        return self.beat.length

    @property
    def channels(self) -> int:
        """Input channels (3)."""
        return N_CHANNELS

    def to_dict(self) -> dict[str, Any]:
        """The bundle's ``input`` section."""
        return {
            "beat_spec": {**self.beat.to_dict(), "length": self.beat.length},
            "channels": list(CHANNELS),
            "normaliser": self.normaliser.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ECGInput:
        """Inverse of :meth:`to_dict`; KeyError names a missing key, ValueError a bad value."""
        spec = _get(d, "beat_spec", "beat_spec")
        norm = _get(d, "normaliser", "normaliser")
        beat = BeatSpec(
            rate_hz=int(_get(spec, "rate_hz", "beat_spec.rate_hz")),
            pre_s=float(_get(spec, "pre_s", "beat_spec.pre_s")),
            post_s=float(_get(spec, "post_s", "beat_spec.post_s")),
        )
        length = int(_get(spec, "length", "beat_spec.length"))
        if length != BEAT_LENGTH or beat.length != BEAT_LENGTH:
            raise ValueError(f"beat_spec.length must be {BEAT_LENGTH}, got {length} ({beat.length} from rate and window)")
        center = float(_get(norm, "center", "normaliser.center"))
        scale = float(_get(norm, "scale", "normaliser.scale"))
        try:
            normaliser = Normaliser(center=center, scale=scale)
        except ValueError as exc:
            raise ValueError(f"bad normaliser: {exc}") from exc
        return cls(normaliser=normaliser, beat=beat)


def _get(d: Any, key: str, path: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise KeyError(path)
    return d[key]
