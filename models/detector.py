"""Beat anomaly detector stage: the Detector API, model input tensor, and the Keras LSTM autoencoder.

TensorFlow is imported lazily (inside :class:`LSTMAutoencoder`), so importing this
module for :class:`Prediction`, :class:`Normaliser`, :func:`make_model_input` or
:func:`reconstruction_scores` costs no TensorFlow start-up. TensorFlow places the
model on a GPU automatically when it sees one; nothing here pins a device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import tf_keras

__all__ = [
    "BEAT_LENGTH",
    "DEFAULT_RR_WEIGHT",
    "N_CHANNELS",
    "Detector",
    "DetectorError",
    "LSTMAutoencoder",
    "Normaliser",
    "NotFittedError",
    "Prediction",
    "make_model_input",
    "reconstruction_scores",
    "threshold_from_scores",
    "validate_fpr",
]

#: Beat window length in samples at the model rate (125 Hz x (0.24 s + 0.40 s)).
BEAT_LENGTH = 80
#: Channels: 0 = normalised waveform, 1 = log(rr_prev / local mean), 2 = log(rr_next / local mean).
N_CHANNELS = 3
#: Weight of the RR-context reconstruction error in the score; RR context is what
#: separates a premature beat from a normal one when morphology alone is ambiguous.
DEFAULT_RR_WEIGHT = 1.0
# Log-RR ratios are clipped to +-1.5 (a factor of ~4.5) so a dropped beat or a long
# pause cannot dominate the squared error with an unbounded value.
_LOG_RR_CLIP = 1.5
_SCORE_CHUNK = 4096


class DetectorError(Exception):
    """Root of detector errors."""


class NotFittedError(DetectorError):
    """The detector was used before it was fitted (or before a threshold was set)."""


@dataclass(frozen=True)
class Prediction:
    """Scores and the flags they give at a threshold.

    Attributes
    ----------
    scores : np.ndarray
        float32 [n], higher means more anomalous.
    flagged : np.ndarray
        bool [n], ``scores > threshold``.
    threshold : float
        The threshold used.
    """

    scores: np.ndarray
    flagged: np.ndarray
    threshold: float


@runtime_checkable
class Detector(Protocol):
    """The one small API every beat detector and runtime speaks.

    ``x`` is the model input tensor float32 [n, 80, 3] from :func:`make_model_input`.
    """

    name: str
    version: str
    threshold: float | None

    def score(self, x: np.ndarray) -> np.ndarray:
        """Per-beat anomaly score, float32 [n]; higher means more anomalous."""
        ...

    def predict(self, x: np.ndarray) -> Prediction:
        """Scores and flags at ``self.threshold``; raises NotFittedError without one."""
        ...

    def infer_threshold(self, x_normal: np.ndarray, fpr: float) -> float:
        """Set and return the (1 - fpr) quantile of scores on held-out normal beats."""
        ...


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


def _check_x(x: np.ndarray) -> np.ndarray:
    a = np.asarray(x, dtype=np.float32)
    if a.ndim != 3 or a.shape[1:] != (BEAT_LENGTH, N_CHANNELS):
        raise ValueError(f"x must have shape [n, {BEAT_LENGTH}, {N_CHANNELS}], got {a.shape}")
    return a


def reconstruction_scores(x: np.ndarray, x_hat: np.ndarray, rr_weight: float = DEFAULT_RR_WEIGHT) -> np.ndarray:
    """Per-beat score: waveform MSE plus ``rr_weight`` x RR-context MSE, float32 [n].

    The numpy twin of the in-graph score of :class:`LSTMAutoencoder`, used by the
    TFLite runtime so every runtime scores the same way.
    """
    x = np.asarray(x, dtype=np.float32)
    x_hat = np.asarray(x_hat, dtype=np.float32)
    if x.shape != x_hat.shape:
        raise ValueError(f"x and x_hat shapes differ: {x.shape} vs {x_hat.shape}")
    err = np.square(x - x_hat)
    wave = err[:, :, 0].mean(axis=1)
    rr = err[:, :, 1:].mean(axis=(1, 2))
    return (wave + np.float32(rr_weight) * rr).astype(np.float32)


def validate_fpr(fpr: float) -> float:
    """Return ``fpr`` as float if ``0 < fpr < 1``, else raise ValueError naming it."""
    f = float(fpr)
    if not (0.0 < f < 1.0):
        raise ValueError(f"fpr must be in (0, 1), got {fpr}")
    return f


def threshold_from_scores(scores_normal: np.ndarray, fpr: float) -> float:
    """The (1 - fpr) quantile of scores on held-out normal beats.

    Never the maximum training loss: a quantile on held-out data states the false
    positive rate it buys.
    """
    f = validate_fpr(fpr)
    s = np.asarray(scores_normal, dtype=np.float64).ravel()
    if s.size == 0:
        raise ValueError("need at least one normal score to infer a threshold, got 0")
    if not np.all(np.isfinite(s)):
        raise ValueError("normal scores contain non-finite values")
    return float(np.quantile(s, 1.0 - f, method="higher"))


def predict_from(detector: Detector, x: np.ndarray) -> Prediction:
    """Shared ``predict`` body: score and compare with ``detector.threshold``."""
    if detector.threshold is None:
        raise NotFittedError(f"detector {detector.name!r} has no threshold; call infer_threshold first")
    scores = detector.score(x)
    return Prediction(scores=scores, flagged=scores > detector.threshold, threshold=float(detector.threshold))


class LSTMAutoencoder:
    """Small LSTM sequence autoencoder over beats (tf_keras / Keras 2 API).

    encoder LSTM(enc_units) -> Dense(latent_units) -> RepeatVector(80)
    -> decoder LSTM(dec_units, return_sequences) -> TimeDistributed Dense(3).

    LSTM layers keep cuDNN-compatible settings (tanh / sigmoid, no recurrent dropout,
    ``unroll=False``, bias) so they run on cuDNN on a GPU and convert to TFLite's fused
    ``UNIDIRECTIONAL_SEQUENCE_LSTM`` builtin.

    Parameters
    ----------
    name, version : str
        Identify the model in bundles and alerts.
    enc_units, latent_units, dec_units : int
        Layer widths.
    rr_weight : float
        Weight of the RR-context term of the score.
    mixed_precision : bool
        Compute in float16 (variables float32, output layer float32). Pays off on
        GPUs with tensor cores only; leave False on CPU.
    """

    def __init__(
        self,
        name: str = "ecg-lstm-ae",
        version: str = "0.0.0",
        enc_units: int = 32,
        latent_units: int = 16,
        dec_units: int = 32,
        rr_weight: float = DEFAULT_RR_WEIGHT,
        mixed_precision: bool = False,
    ) -> None:
        for key, v in (("enc_units", enc_units), ("latent_units", latent_units), ("dec_units", dec_units)):
            if int(v) < 1:
                raise ValueError(f"{key} must be >= 1, got {v}")
        if not (math.isfinite(rr_weight) and rr_weight >= 0):
            raise ValueError(f"rr_weight must be finite and >= 0, got {rr_weight}")
        self.name = name
        self.version = version
        self.enc_units = int(enc_units)
        self.latent_units = int(latent_units)
        self.dec_units = int(dec_units)
        self.rr_weight = float(rr_weight)
        self.mixed_precision = bool(mixed_precision)
        self.threshold: float | None = None
        self._model: tf_keras.Model | None = None
        self._score_fn: Any = None

    # -- construction -----------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Architecture hyper-parameters (JSON-friendly)."""
        return {
            "enc_units": self.enc_units,
            "latent_units": self.latent_units,
            "dec_units": self.dec_units,
            "rr_weight": self.rr_weight,
            "mixed_precision": self.mixed_precision,
        }

    def _build(self) -> tf_keras.Model:
        import tf_keras
        from tf_keras import layers

        policy = tf_keras.mixed_precision.Policy("mixed_float16" if self.mixed_precision else "float32")
        inp = tf_keras.Input(shape=(BEAT_LENGTH, N_CHANNELS), name="beat", dtype="float32")
        h = layers.LSTM(self.enc_units, name="encoder_lstm", dtype=policy)(inp)
        z = layers.Dense(self.latent_units, activation="tanh", name="latent", dtype=policy)(h)
        r = layers.RepeatVector(BEAT_LENGTH, name="repeat", dtype=policy)(z)
        d = layers.LSTM(self.dec_units, return_sequences=True, name="decoder_lstm", dtype=policy)(r)
        out = layers.TimeDistributed(layers.Dense(N_CHANNELS), name="reconstruction", dtype="float32")(d)
        return tf_keras.Model(inp, out, name=self.name.replace("-", "_"))

    @property
    def keras_model(self) -> tf_keras.Model:
        """The underlying tf_keras model (raises NotFittedError before fit/load)."""
        if self._model is None:
            raise NotFittedError(f"detector {self.name!r} is not fitted; call fit or load first")
        return self._model

    @property
    def n_params(self) -> int:
        """Number of trainable parameters."""
        return int(self.keras_model.count_params())

    # -- training ---------------------------------------------------------------------
    def fit(
        self,
        x_train: np.ndarray,
        x_val: np.ndarray,
        epochs: int = 20,
        batch_size: int = 256,
        seed: int = 0,
        progress: bool = True,
        patience: int = 4,
        learning_rate_per_step: float = 2e-3,
    ) -> dict[str, list[float]]:
        """Train on normal beats with early stopping on a validation split.

        Parameters
        ----------
        x_train, x_val : np.ndarray
            float32 [n, 80, 3] normal beats; the caller splits BY PATIENT / record so
            validation loss measures generalisation to unseen patients.
        epochs, batch_size : int
            Upper bound on epochs (early stopping may end sooner); batch size.
        seed : int
            Seeds Python, numpy and TF, and turns on op determinism: same seed, same
            data gives the same weights on CPU.
        progress : bool
            Per-epoch progress line.
        patience : int
            Epochs without validation improvement before stopping (best weights restored).
        learning_rate_per_step : float
            Adam learning rate.

        Returns
        -------
        dict[str, list[float]]
            Keras history (``loss``, ``val_loss``).
        """
        import tensorflow as tf
        import tf_keras

        x_train = _check_x(x_train)
        x_val = _check_x(x_val)
        if x_train.shape[0] == 0 or x_val.shape[0] == 0:
            raise ValueError(f"need non-empty train and val sets, got {x_train.shape[0]} and {x_val.shape[0]}")
        if int(epochs) < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")

        tf_keras.utils.set_random_seed(int(seed))
        tf.config.experimental.enable_op_determinism()
        tf_keras.backend.clear_session()
        model = self._build()
        # The loss weights the RR channels like the score does, so training minimises
        # exactly what is scored.
        w = tf.constant([1.0, self.rr_weight / 2.0, self.rr_weight / 2.0], dtype=tf.float32)

        def loss(y_true: Any, y_pred: Any) -> Any:
            return tf.reduce_mean(tf.square(y_true - tf.cast(y_pred, tf.float32)) * w, axis=[1, 2]) * 3.0

        model.compile(optimizer=tf_keras.optimizers.Adam(learning_rate=learning_rate_per_step), loss=loss)
        train_ds = (
            tf.data.Dataset.from_tensor_slices((x_train, x_train))
            .shuffle(min(len(x_train), 50_000), seed=int(seed), reshuffle_each_iteration=True)
            .batch(int(batch_size))
            .prefetch(tf.data.AUTOTUNE)
        )
        val_ds = tf.data.Dataset.from_tensor_slices((x_val, x_val)).batch(int(batch_size)).prefetch(tf.data.AUTOTUNE)
        stop = tf_keras.callbacks.EarlyStopping(monitor="val_loss", patience=int(patience), restore_best_weights=True)
        hist = model.fit(train_ds, validation_data=val_ds, epochs=int(epochs), callbacks=[stop], verbose=2 if progress else 0)
        self._set_model(model)
        return {k: [float(v) for v in vs] for k, vs in hist.history.items()}

    def _set_model(self, model: tf_keras.Model) -> None:
        import tensorflow as tf

        self._model = model
        rr_w = tf.constant(self.rr_weight, dtype=tf.float32)

        @tf.function(input_signature=[tf.TensorSpec([None, BEAT_LENGTH, N_CHANNELS], tf.float32)])
        def score_fn(x: Any) -> Any:
            x_hat = tf.cast(model(x, training=False), tf.float32)
            err = tf.square(x - x_hat)
            return tf.reduce_mean(err[:, :, 0], axis=1) + rr_w * tf.reduce_mean(err[:, :, 1:], axis=[1, 2])

        self._score_fn = score_fn

    # -- inference --------------------------------------------------------------------
    def reconstruct(self, x: np.ndarray) -> np.ndarray:
        """Model reconstruction float32 [n, 80, 3]."""
        x = _check_x(x)
        return np.asarray(self.keras_model(x, training=False), dtype=np.float32)

    def score(self, x: np.ndarray) -> np.ndarray:
        """Per-beat reconstruction error, float32 [n] (compiled graph, chunks of 4096)."""
        model = self.keras_model  # raises NotFittedError first
        del model
        x = _check_x(x)
        if x.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        parts = [self._score_fn(x[i : i + _SCORE_CHUNK]).numpy() for i in range(0, x.shape[0], _SCORE_CHUNK)]
        return np.concatenate(parts).astype(np.float32)

    def predict(self, x: np.ndarray) -> Prediction:
        """Scores and flags at ``self.threshold``."""
        self.keras_model  # noqa: B018 - not-fitted check before threshold check
        return predict_from(self, x)

    def infer_threshold(self, x_normal: np.ndarray, fpr: float) -> float:
        """Set ``threshold`` to the (1 - fpr) quantile of scores on held-out normal beats."""
        validate_fpr(fpr)
        self.threshold = threshold_from_scores(self.score(x_normal), fpr)
        return self.threshold

    # -- persistence ------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Save the Keras model (``.keras`` format, no custom objects needed)."""
        self.keras_model.save(str(path))

    @classmethod
    def load(
        cls,
        path: str | Path,
        name: str = "ecg-lstm-ae",
        version: str = "0.0.0",
        rr_weight: float = DEFAULT_RR_WEIGHT,
        threshold: float | None = None,
    ) -> LSTMAutoencoder:
        """Load a model saved by :meth:`save`."""
        import tf_keras

        model = tf_keras.models.load_model(str(path), compile=False)
        enc = model.get_layer("encoder_lstm")
        lat = model.get_layer("latent")
        dec = model.get_layer("decoder_lstm")
        det = cls(
            name=name,
            version=version,
            enc_units=int(enc.units),
            latent_units=int(lat.units),
            dec_units=int(dec.units),
            rr_weight=rr_weight,
            mixed_precision=enc.dtype_policy.name == "mixed_float16",
        )
        det.threshold = threshold
        det._set_model(model)
        return det
