"""Detector stage: the Detector API, threshold helpers, and the one LSTM autoencoder (builder, training loop, Keras runtime).

Both detector kinds (ECG beats, heart-rate RR windows) are this autoencoder over an
input tensor float32 [n, timesteps, channels]; what differs per kind is the input
tensor (:mod:`models.ecg.features`, :mod:`models.hr.features`) and a small
:class:`ReconstructionScore` that turns a reconstruction into a score. The TFLite
runtime (:mod:`models.tflite_runtime`) scores with the same score object.

Errors of the detector stack (under the project root :class:`models.errors.CardiowatchError`)::

    DetectorError                 root of the detector stack
    ├── NotFittedError            used before fit / load, or predict without a threshold
    ├── BundleError               (models.bundle) bad bundle folder, key, value or file hash
    └── ExportError               (models.export) TFLite conversion failed or not builtin-only

TensorFlow is imported lazily (inside :class:`LSTMAutoencoder`), so importing this
module for :class:`Prediction`, :class:`Detector` or the threshold helpers costs no
TensorFlow start-up. TensorFlow places the model on a GPU automatically when it sees
one; nothing here pins a device.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from models.errors import CardiowatchError

if TYPE_CHECKING:  # pragma: no cover
    import tf_keras

__all__ = [
    "Detector",
    "DetectorError",
    "LSTMAutoencoder",
    "NotFittedError",
    "Prediction",
    "ReconstructionScore",
    "check_input",
    "padded_batch",
    "predict_from",
    "threshold_from_scores",
    "validate_fpr",
]

# Rows per compiled-graph call: bounds peak memory on long inputs; per-row results do
# not depend on it.
_SCORE_CHUNK = 4096


def padded_batch(n: int) -> int:
    """The batch size ``n`` inputs are scored at: ``n`` rounded up to a quarter-octave step
    (1..8 as they are, then multiples of 2, 4, 8 ... with four steps per doubling), at
    most 25 % padding.

    A streaming worker calls the model with a different number of beats every batch.
    TensorFlow's CPU kernels (oneDNN) build and keep working memory per input shape, so
    every new batch size costs memory that is not given back: 2,400 calls at random
    sizes 1-399 took a process from 725 to 915 MiB and it was still rising; rounded,
    it levels off at 807 MiB after the first 400 calls. Rounding keeps the shapes to 44
    for batches up to 4096.
    """
    if n <= 8:
        return max(int(n), 1)
    step = 1 << (int(n - 1).bit_length() - 3)
    return -(-int(n) // step) * step


class DetectorError(CardiowatchError):
    """Root of the detector stack's errors (detectors, bundles, export)."""


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
    """The one small API every detector runtime speaks, for every kind.

    ``x`` is the kind's model input tensor float32 [n, timesteps, channels]
    (:func:`models.ecg.features.make_model_input`, :func:`models.hr.features.hr_features`).
    """

    name: str
    version: str
    threshold: float | None

    def score(self, x: np.ndarray) -> np.ndarray:
        """Per-input anomaly score, float32 [n]; higher means more anomalous."""
        ...

    def predict(self, x: np.ndarray) -> Prediction:
        """Scores and flags at ``self.threshold``; raises NotFittedError without one."""
        ...

    def infer_threshold(self, x_normal: np.ndarray, fpr: float) -> float:
        """Set and return the (1 - fpr) quantile of scores on held-out normal inputs."""
        ...


class ReconstructionScore(Protocol):
    """The kind-specific piece of a detector: reconstruction -> score, and the training loss.

    One object serves every runtime: the Keras runtime computes :meth:`tensorflow`
    inside its compiled graph when ``in_graph`` is true, otherwise it applies
    :meth:`numpy` to the graph's reconstruction; the TFLite runtime always applies
    :meth:`numpy`. Implementations: :class:`models.ecg.features.ECGScore`,
    :class:`models.hr.features.HRScore`.
    """

    #: True: the Keras runtime computes :meth:`tensorflow` in its graph.
    in_graph: ClassVar[bool]

    def numpy(self, x: np.ndarray, x_hat: np.ndarray) -> np.ndarray:
        """Per-input score float32 [n] from input and reconstruction [n, timesteps, channels]."""
        ...

    def tensorflow(self, x: Any, x_hat: Any) -> Any:
        """The same score as TensorFlow ops (float32 tensors in, [n] out); used when ``in_graph``."""
        ...

    def keras_loss(self) -> Any:
        """The Keras loss the training loop minimises (a callable or a Keras loss name)."""
        ...

    def check_shape(self, timesteps: int, channels: int) -> None:
        """ValueError (naming the setting) if the score cannot apply to inputs of this shape."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly settings (the bundle's ``score`` section)."""
        ...


def check_input(x: np.ndarray, timesteps: int, channels: int) -> np.ndarray:
    """Return ``x`` as float32 [n, timesteps, channels]; ValueError names a wrong shape."""
    a = np.asarray(x, dtype=np.float32)
    if a.ndim != 3 or a.shape[1:] != (timesteps, channels):
        raise ValueError(f"x must have shape [n, {timesteps}, {channels}], got {a.shape}")
    return a


def validate_fpr(fpr: float) -> float:
    """Return ``fpr`` as float if ``0 < fpr < 1``, else raise ValueError naming it."""
    f = float(fpr)
    if not (0.0 < f < 1.0):
        raise ValueError(f"fpr must be in (0, 1), got {fpr}")
    return f


def threshold_from_scores(scores_normal: np.ndarray, fpr: float) -> float:
    """The (1 - fpr) quantile of scores on held-out normal inputs.

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
    """Small LSTM sequence autoencoder (tf_keras / Keras 2 API), shape-generic; the Keras runtime.

    encoder LSTM(enc_units) -> Dense(latent_units, tanh) -> RepeatVector(timesteps)
    -> decoder LSTM(dec_units, return_sequences) -> TimeDistributed Dense(channels).

    LSTM layers keep cuDNN-compatible settings (tanh / sigmoid, no recurrent dropout,
    ``unroll=False``, bias) so they run on cuDNN on a GPU and convert to TFLite's fused
    ``UNIDIRECTIONAL_SEQUENCE_LSTM`` builtin.

    Parameters
    ----------
    timesteps, channels : int
        Input shape [n, timesteps, channels] (ECG 80 x 3, heart rate 32 x 2).
    score : ReconstructionScore
        The kind's score (and training loss); kept as the ``scoring`` attribute, which
        the bundle writer and the TFLite runtime reuse.
    name, version : str
        Identify the model in bundles and alerts.
    enc_units, latent_units, dec_units : int
        Layer widths.
    mixed_precision : bool
        Compute in float16 (variables float32, output layer float32). Pays off on
        GPUs with tensor cores only; leave False on CPU.
    input_name : str
        Name of the Keras input layer (and of the exported TFLite input tensor).
    """

    def __init__(
        self,
        timesteps: int,
        channels: int,
        score: ReconstructionScore,
        name: str = "lstm-ae",
        version: str = "0.0.0",
        enc_units: int = 32,
        latent_units: int = 16,
        dec_units: int = 32,
        mixed_precision: bool = False,
        input_name: str = "x",
    ) -> None:
        for key, v, low in (("timesteps", timesteps, 2), ("channels", channels, 1), ("enc_units", enc_units, 1),
                            ("latent_units", latent_units, 1), ("dec_units", dec_units, 1)):
            if int(v) < low:
                raise ValueError(f"{key} must be >= {low}, got {v}")
        score.check_shape(int(timesteps), int(channels))
        self.timesteps = int(timesteps)
        self.channels = int(channels)
        self.scoring = score
        self.name = name
        self.version = version
        self.enc_units = int(enc_units)
        self.latent_units = int(latent_units)
        self.dec_units = int(dec_units)
        self.mixed_precision = bool(mixed_precision)
        self.input_name = input_name
        self.threshold: float | None = None
        self._model: tf_keras.Model | None = None
        self._graph_fn: Any = None

    # -- construction -----------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, int]:
        """(timesteps, channels) of one input."""
        return (self.timesteps, self.channels)

    def config(self) -> dict[str, Any]:
        """Architecture hyper-parameters (JSON-friendly; the bundle's ``architecture`` section)."""
        return {
            "timesteps": self.timesteps,
            "channels": self.channels,
            "enc_units": self.enc_units,
            "latent_units": self.latent_units,
            "dec_units": self.dec_units,
            "mixed_precision": self.mixed_precision,
        }

    def _build(self) -> tf_keras.Model:
        import tf_keras
        from tf_keras import layers

        policy = tf_keras.mixed_precision.Policy("mixed_float16" if self.mixed_precision else "float32")
        inp = tf_keras.Input(shape=(self.timesteps, self.channels), name=self.input_name, dtype="float32")
        h = layers.LSTM(self.enc_units, name="encoder_lstm", dtype=policy)(inp)
        z = layers.Dense(self.latent_units, activation="tanh", name="latent", dtype=policy)(h)
        r = layers.RepeatVector(self.timesteps, name="repeat", dtype=policy)(z)
        d = layers.LSTM(self.dec_units, return_sequences=True, name="decoder_lstm", dtype=policy)(r)
        out = layers.TimeDistributed(layers.Dense(self.channels), name="reconstruction", dtype="float32")(d)
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

    def _check(self, x: np.ndarray) -> np.ndarray:
        return check_input(x, self.timesteps, self.channels)

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
        learning_rate: float = 2e-3,
    ) -> dict[str, list[float]]:
        """Train on normal inputs with early stopping on a validation split.

        Parameters
        ----------
        x_train, x_val : np.ndarray
            float32 [n, timesteps, channels] normal inputs; the caller splits BY PATIENT
            / record so validation loss measures generalisation to unseen patients.
        epochs, batch_size : int
            Upper bound on epochs (early stopping may end sooner); batch size.
        seed : int
            Seeds Python, numpy and TF, and turns on op determinism: same seed, same
            data gives the same weights on CPU.
        progress : bool
            One tqdm bar over epochs (stderr) with the latest losses.
        patience : int
            Epochs without validation improvement before stopping (best weights restored).
        learning_rate : float
            Adam learning rate.

        Returns
        -------
        dict[str, list[float]]
            Keras history (``loss``, ``val_loss``).
        """
        import tensorflow as tf
        import tf_keras

        x_train = self._check(x_train)
        x_val = self._check(x_val)
        if x_train.shape[0] == 0 or x_val.shape[0] == 0:
            raise ValueError(f"need non-empty train and val sets, got {x_train.shape[0]} and {x_val.shape[0]}")
        if int(epochs) < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if int(patience) < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        if not (math.isfinite(learning_rate) and learning_rate > 0):
            raise ValueError(f"learning_rate must be finite and > 0, got {learning_rate}")

        tf_keras.utils.set_random_seed(int(seed))
        tf.config.experimental.enable_op_determinism()
        tf_keras.backend.clear_session()
        model = self._build()
        model.compile(optimizer=tf_keras.optimizers.Adam(learning_rate=learning_rate), loss=self.scoring.keras_loss())
        train_ds = (
            tf.data.Dataset.from_tensor_slices((x_train, x_train))
            .shuffle(min(len(x_train), 50_000), seed=int(seed), reshuffle_each_iteration=True)
            .batch(int(batch_size))
            .prefetch(tf.data.AUTOTUNE)
        )
        val_ds = tf.data.Dataset.from_tensor_slices((x_val, x_val)).batch(int(batch_size)).prefetch(tf.data.AUTOTUNE)
        callbacks: list[Any] = [
            tf_keras.callbacks.EarlyStopping(monitor="val_loss", patience=int(patience), restore_best_weights=True)
        ]
        if progress:
            callbacks.append(_tqdm_epochs(int(epochs), f"train {self.name}"))
        hist = model.fit(train_ds, validation_data=val_ds, epochs=int(epochs), callbacks=callbacks, verbose=0)
        self._set_model(model)
        return {k: [float(v) for v in vs] for k, vs in hist.history.items()}

    def _set_model(self, model: tf_keras.Model) -> None:
        import tensorflow as tf

        self._model = model
        score = self.scoring
        spec = tf.TensorSpec([None, self.timesteps, self.channels], tf.float32)
        if score.in_graph:

            @tf.function(input_signature=[spec])
            def graph_fn(x: Any) -> Any:
                return score.tensorflow(x, tf.cast(model(x, training=False), tf.float32))

        else:

            @tf.function(input_signature=[spec])
            def graph_fn(x: Any) -> Any:
                return tf.cast(model(x, training=False), tf.float32)

        self._graph_fn = graph_fn

    # -- inference --------------------------------------------------------------------
    def reconstruct(self, x: np.ndarray) -> np.ndarray:
        """Model reconstruction float32 [n, timesteps, channels]."""
        x = self._check(x)
        return np.asarray(self.keras_model(x, training=False), dtype=np.float32)

    def score(self, x: np.ndarray) -> np.ndarray:
        """Per-input score, float32 [n] (compiled graph, chunks of 4096 inputs)."""
        self.keras_model  # noqa: B018 - not-fitted check before the shape check
        x = self._check(x)
        if x.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        parts = []
        for i in range(0, x.shape[0], _SCORE_CHUNK):
            chunk = x[i : i + _SCORE_CHUNK]
            n = chunk.shape[0]
            size = padded_batch(n)
            feed = chunk if size == n else np.concatenate([chunk, np.zeros((size - n,) + chunk.shape[1:], chunk.dtype)])
            out = self._graph_fn(feed).numpy()[:n]
            parts.append(out if self.scoring.in_graph else self.scoring.numpy(chunk, out))
        return np.concatenate(parts).astype(np.float32)

    def predict(self, x: np.ndarray) -> Prediction:
        """Scores and flags at ``self.threshold``."""
        self.keras_model  # noqa: B018 - not-fitted check before threshold check
        return predict_from(self, x)

    def infer_threshold(self, x_normal: np.ndarray, fpr: float) -> float:
        """Set ``threshold`` to the (1 - fpr) quantile of scores on held-out normal inputs."""
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
        score: ReconstructionScore,
        name: str = "lstm-ae",
        version: str = "0.0.0",
        threshold: float | None = None,
    ) -> LSTMAutoencoder:
        """Load a model saved by :meth:`save`; shape and widths are read from the file."""
        import tf_keras

        model = tf_keras.models.load_model(str(path), compile=False)
        enc = model.get_layer("encoder_lstm")
        lat = model.get_layer("latent")
        dec = model.get_layer("decoder_lstm")
        _, timesteps, channels = model.input_shape
        det = cls(
            timesteps=int(timesteps),
            channels=int(channels),
            score=score,
            name=name,
            version=version,
            enc_units=int(enc.units),
            latent_units=int(lat.units),
            dec_units=int(dec.units),
            mixed_precision=enc.dtype_policy.name == "mixed_float16",
            input_name=str(model.input_names[0]),
        )
        det.threshold = threshold
        det._set_model(model)
        return det


def _tqdm_epochs(epochs: int, desc: str) -> Any:
    """A Keras callback showing one tqdm bar over epochs with the latest losses."""
    import tf_keras
    from tqdm.auto import tqdm

    class _Epochs(tf_keras.callbacks.Callback):  # type: ignore[misc]
        def on_train_begin(self, logs: Any = None) -> None:
            self.bar = tqdm(total=epochs, desc=desc, unit="epoch", file=sys.stderr)

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            logs = logs or {}
            self.bar.set_postfix(loss=f"{logs.get('loss', float('nan')):.4f}", val=f"{logs.get('val_loss', float('nan')):.4f}")
            self.bar.update(1)

        def on_train_end(self, logs: Any = None) -> None:
            self.bar.close()

    return _Epochs()
