"""Heart-rate rhythm detector stage: an LSTM autoencoder over windows of RR intervals.

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

The autoencoder learns normal rhythm (with normal heart-rate variability); its per-window
reconstruction error (a trimmed mean over the window's beats) is the score (higher = more anomalous). The threshold is the
(1 - fpr) quantile of scores on held-out normal patients. Alerting (persistence) is the
alert policy's job; :func:`k_of_n` is the rule used here to *measure* the detector.

TensorFlow is imported lazily, so importing this module (for :func:`rr_windows`,
:class:`HRNormaliser`, :func:`k_of_n`) costs no TensorFlow start-up.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.bundle import BUNDLE_SCHEMA, BundleError, library_versions
from models.detector import NotFittedError, Prediction, predict_from, threshold_from_scores, validate_fpr

if TYPE_CHECKING:  # pragma: no cover
    import tf_keras

__all__ = [
    "BUNDLE_SCHEMA",
    "DEFAULT_TRIM",
    "HR_BUNDLE_KIND",
    "N_FEATURES",
    "WINDOW_BEATS",
    "HRDetector",
    "HRTFLiteDetector",
    "HRNormaliser",
    "HRTrainResult",
    "evaluate_synthetic",
    "hr_features",
    "k_of_n",
    "window_scores",
    "load_hr_bundle",
    "read_hr_meta",
    "main",
    "rr_windows",
    "synthetic_normal_rr",
    "train_hr",
]

HR_BUNDLE_KIND = "hr"
WINDOW_BEATS = 32
N_FEATURES = 2
#: RR intervals are clipped to [0.2, 3.0] s (300 to 20 bpm) before features: values
#: outside are detector or annotation artefacts or pauses, which the policy's pause
#: rule handles directly; clipping keeps one artefact from dominating a window.
RR_MIN_S = 0.2
RR_MAX_S = 3.0
_LOG_RATIO_CLIP = 1.5
# Standardised feature values are clipped to +-8 so one extreme window cannot produce
# an unbounded score (it is already far above any threshold at 8 sigma).
_Z_CLIP = 8.0
_SCORE_CHUNK = 8192
#: The score leaves out the ``DEFAULT_TRIM`` worst-reconstructed beats of a window. An
#: isolated ectopic beat disturbs two RR intervals (short coupling, long compensatory
#: pause); those are the ECG beat model's business, not a rhythm alert. Three or more
#: disturbed beats per window (bigeminy, runs, AF) still raise the score.
DEFAULT_TRIM = 4


# --------------------------------------------------------------------------------------
# windows and features (pure numpy)
# --------------------------------------------------------------------------------------
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


def _check_windows(x: np.ndarray, window: int) -> np.ndarray:
    a = np.asarray(x, dtype=np.float32)
    if a.ndim != 2 or a.shape[1] != window:
        raise ValueError(f"RR windows must have shape [n, {window}], got {a.shape}")
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


def hr_features(windows: np.ndarray, normaliser: HRNormaliser) -> np.ndarray:
    """Model input float32 [n, window, 2] from RR windows [n, window] in seconds.

    Channel 0 is the standardised irregularity ``log(rr / median)``, channel 1 the
    standardised log heart rate; both clipped to +-8.
    """
    w = np.asarray(windows, dtype=np.float64)
    if w.ndim != 2:
        raise ValueError(f"windows must have shape [n, window], got {w.shape}")
    x = np.empty((w.shape[0], w.shape[1], N_FEATURES), dtype=np.float32)
    x[:, :, 0] = np.clip(_log_ratio(w) / normaliser.irregularity_scale, -_Z_CLIP, _Z_CLIP)
    x[:, :, 1] = np.clip((_log_hr(w) - normaliser.log_hr_mean) / normaliser.log_hr_std, -_Z_CLIP, _Z_CLIP)
    return x


def window_scores(x: np.ndarray, x_hat: np.ndarray, trim: int = DEFAULT_TRIM) -> np.ndarray:
    """Per-window score: mean squared reconstruction error over the window's beats,
    leaving out the ``trim`` worst beats (trimmed mean), float32 [n].

    Shared by every runtime so Keras and TFLite score identically.
    """
    x = np.asarray(x, dtype=np.float32)
    x_hat = np.asarray(x_hat, dtype=np.float32)
    if x.shape != x_hat.shape or x.ndim != 3:
        raise ValueError(f"x and x_hat must be equal [n, window, channels] arrays, got {x.shape} and {x_hat.shape}")
    per_beat = np.square(x - x_hat).mean(axis=2)
    if trim:
        per_beat = np.sort(per_beat, axis=1)[:, : x.shape[1] - int(trim)]
    return per_beat.mean(axis=1).astype(np.float32)


def k_of_n(flagged: np.ndarray | Sequence[bool], k: int, n: int) -> np.ndarray:
    """Persistence: True at window ``i`` when >= k of windows ``i-n+1 .. i`` are flagged.

    Windows before the first full group of ``n`` use what is available.
    """
    f = np.asarray(flagged, dtype=bool).ravel()
    if not (1 <= int(k) <= int(n)):
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    c = np.concatenate([[0], np.cumsum(f, dtype=np.int64)])
    idx = np.arange(1, f.size + 1)
    counts = c[idx] - c[np.maximum(idx - int(n), 0)]
    return counts >= int(k)


# --------------------------------------------------------------------------------------
# detector
# --------------------------------------------------------------------------------------
class HRDetector:
    """LSTM autoencoder over RR windows (tf_keras / Keras 2 API), the Detector API.

    ``x`` for :meth:`score`, :meth:`predict` and :meth:`infer_threshold` is raw RR
    windows float [n, window] in seconds (from :func:`rr_windows`); normalisation is
    inside the detector so callers cannot pair a model with the wrong statistics.

    Architecture: LSTM(enc_units) -> Dense(latent_units, tanh) -> RepeatVector(window)
    -> LSTM(dec_units, return_sequences) -> TimeDistributed Dense(2). LSTMs keep the
    cuDNN / fused-TFLite-LSTM compatible defaults (tanh, sigmoid, no recurrent dropout).
    """

    def __init__(
        self,
        name: str = "hr-lstm-ae",
        version: str = "0.0.0",
        window: int = WINDOW_BEATS,
        enc_units: int = 16,
        latent_units: int = 8,
        dec_units: int = 16,
        trim: int = DEFAULT_TRIM,
    ) -> None:
        if not 0 <= int(trim) < int(window) // 2:
            raise ValueError(f"trim must be in [0, window // 2), got {trim}")
        for key, v in (("window", window), ("enc_units", enc_units), ("latent_units", latent_units),
                       ("dec_units", dec_units)):
            if int(v) < (2 if key == "window" else 1):
                raise ValueError(f"{key} must be >= {2 if key == 'window' else 1}, got {v}")
        self.name = name
        self.version = version
        self.window = int(window)
        self.enc_units = int(enc_units)
        self.latent_units = int(latent_units)
        self.dec_units = int(dec_units)
        self.trim = int(trim)
        self.threshold: float | None = None
        self.normaliser: HRNormaliser | None = None
        self._model: tf_keras.Model | None = None
        self._score_fn: Any = None

    def config(self) -> dict[str, int]:
        """Architecture hyper-parameters (JSON-friendly)."""
        return {
            "window": self.window,
            "enc_units": self.enc_units,
            "latent_units": self.latent_units,
            "dec_units": self.dec_units,
            "trim": self.trim,
        }

    def _build(self) -> tf_keras.Model:
        import tf_keras
        from tf_keras import layers

        inp = tf_keras.Input(shape=(self.window, N_FEATURES), name="rr_window", dtype="float32")
        h = layers.LSTM(self.enc_units, name="encoder_lstm")(inp)
        z = layers.Dense(self.latent_units, activation="tanh", name="latent")(h)
        r = layers.RepeatVector(self.window, name="repeat")(z)
        d = layers.LSTM(self.dec_units, return_sequences=True, name="decoder_lstm")(r)
        out = layers.TimeDistributed(layers.Dense(N_FEATURES), name="reconstruction")(d)
        return tf_keras.Model(inp, out, name=self.name.replace("-", "_"))

    @property
    def keras_model(self) -> tf_keras.Model:
        """The underlying tf_keras model (raises NotFittedError before fit/load)."""
        if self._model is None or self.normaliser is None:
            raise NotFittedError(f"detector {self.name!r} is not fitted; call fit or load first")
        return self._model

    @property
    def n_params(self) -> int:
        """Number of parameters."""
        return int(self.keras_model.count_params())

    def fit(
        self,
        rr_train: np.ndarray,
        rr_val: np.ndarray,
        epochs: int = 30,
        batch_size: int = 128,
        seed: int = 0,
        progress: bool = True,
        patience: int = 5,
        learning_rate: float = 3e-3,
    ) -> dict[str, list[float]]:
        """Fit the normaliser and train the autoencoder on normal-rhythm RR windows.

        Parameters
        ----------
        rr_train, rr_val : np.ndarray
            Normal RR windows float [n, window] in seconds; split BY PATIENT so the
            validation loss (early stopping) measures unseen patients.
        epochs, batch_size : int
            Upper bound on epochs (early stopping may stop sooner); batch size.
        seed : int
            Seeds Python, numpy and TF with op determinism (same seed -> same weights on CPU).
        progress : bool
            One tqdm bar over epochs.
        patience : int
            Epochs without validation improvement before stopping (best weights kept).
        learning_rate : float
            Adam learning rate.

        Returns
        -------
        dict[str, list[float]]
            ``loss`` and ``val_loss`` per epoch.
        """
        import tensorflow as tf
        import tf_keras

        tr = _check_windows(rr_train, self.window)
        va = _check_windows(rr_val, self.window)
        if tr.shape[0] == 0 or va.shape[0] == 0:
            raise ValueError(f"need non-empty train and val windows, got {tr.shape[0]} and {va.shape[0]}")
        if int(epochs) < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        self.normaliser = HRNormaliser.fit(tr)
        x_tr = hr_features(tr, self.normaliser)
        x_va = hr_features(va, self.normaliser)

        tf_keras.utils.set_random_seed(int(seed))
        tf.config.experimental.enable_op_determinism()
        tf_keras.backend.clear_session()
        model = self._build()
        model.compile(optimizer=tf_keras.optimizers.Adam(learning_rate=learning_rate), loss="mse")
        callbacks: list[Any] = [
            tf_keras.callbacks.EarlyStopping(monitor="val_loss", patience=int(patience), restore_best_weights=True)
        ]
        if progress:
            callbacks.append(_TqdmEpochs(int(epochs)))
        hist = model.fit(
            x_tr, x_tr, validation_data=(x_va, x_va), epochs=int(epochs), batch_size=int(batch_size),
            shuffle=True, callbacks=callbacks, verbose=0,
        )
        self._set_model(model)
        return {k: [float(v) for v in vs] for k, vs in hist.history.items()}

    def _set_model(self, model: tf_keras.Model) -> None:
        import tensorflow as tf

        self._model = model

        @tf.function(input_signature=[tf.TensorSpec([None, self.window, N_FEATURES], tf.float32)])
        def score_fn(x: Any) -> Any:
            return model(x, training=False)

        self._score_fn = score_fn

    def features(self, rr_windows_s: np.ndarray) -> np.ndarray:
        """Model input float32 [n, window, 2] for RR windows in seconds."""
        if self.normaliser is None:
            raise NotFittedError(f"detector {self.name!r} is not fitted; call fit or load first")
        return hr_features(_check_windows(rr_windows_s, self.window), self.normaliser)

    def score(self, x: np.ndarray) -> np.ndarray:
        """Per-window reconstruction MSE, float32 [n]; higher means more anomalous."""
        self.keras_model  # noqa: B018 - not-fitted check first
        feats = self.features(x)
        if feats.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        parts = [
            window_scores(feats[i : i + _SCORE_CHUNK], self._score_fn(feats[i : i + _SCORE_CHUNK]).numpy(), self.trim)
            for i in range(0, len(feats), _SCORE_CHUNK)
        ]
        return np.concatenate(parts).astype(np.float32)

    def predict(self, x: np.ndarray) -> Prediction:
        """Scores and ``flagged = scores > threshold``."""
        self.keras_model  # noqa: B018
        return predict_from(self, x)

    def infer_threshold(self, x_normal: np.ndarray, fpr: float) -> float:
        """Set ``threshold`` to the (1 - fpr) quantile of scores on held-out normal windows."""
        validate_fpr(fpr)
        self.threshold = threshold_from_scores(self.score(x_normal), fpr)
        return self.threshold

    def score_rr(self, rr_s: np.ndarray | Sequence[float], step: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Score every ``step``-th window of an RR series.

        Returns
        -------
        end_index, scores : np.ndarray
            Index into ``rr_s`` of each window's last interval, and its score.
        """
        w = rr_windows(rr_s, self.window, step)
        ends = np.arange(w.shape[0], dtype=np.int64) * int(step) + self.window - 1
        return ends, self.score(w)

    # -- persistence ------------------------------------------------------------------
    def save(self, path: str | Path, *, extra_meta: dict[str, Any] | None = None,
             representative: np.ndarray | None = None) -> Path:
        """Write a bundle folder atomically (temp folder + ``os.replace``).

        Contents: ``model.keras``, ``model_float32.tflite`` (batch 1, builtin ops) and
        ``bundle.json`` (schema, kind "hr", window spec, normaliser, thresholds,
        library versions, plus ``extra_meta`` such as training hash and metrics).
        ``representative`` is unused for float32 export and kept for int8 later.
        """
        model = self.keras_model
        assert self.normaliser is not None
        del representative
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; a shipped bundle must be readable
            model.save(str(tmp / "model.keras"))
            tfl = _export_float32(model, tmp / "model_float32.tflite", self.window)
            meta: dict[str, Any] = {
                "schema": BUNDLE_SCHEMA,
                "kind": HR_BUNDLE_KIND,
                "name": self.name,
                "version": self.version,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "window": {
                    "unit": "rr_interval",
                    "window_beats": self.window,
                    "features": ["log_rr_over_window_median_z", "log_hr_z"],
                    "rr_clip_s": [RR_MIN_S, RR_MAX_S],
                },
                "architecture": self.config(),
                "normaliser": self.normaliser.to_dict(),
                "thresholds": {"operating": self.threshold},
                "files": {"keras": "model.keras", "tflite_float32": "model_float32.tflite"},
                "tflite": {"float32_kb": round(tfl["size_kb"], 2), "ops": tfl["ops"]},
                "n_params": self.n_params,
                "library_versions": library_versions(),
            }
            for k, v in (extra_meta or {}).items():
                if k in ("thresholds",) and isinstance(v, dict):
                    meta["thresholds"].update(v)
                else:
                    meta[k] = v
            meta["files_sha256"] = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                                    for p in sorted(tmp.iterdir()) if p.is_file()}
            with open(tmp / "bundle.json", "w", encoding="utf-8") as f:
                json.dump(meta, f, indent=2, sort_keys=True, allow_nan=False)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            _replace_dir(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out

    @classmethod
    def load(cls, path: str | Path) -> HRDetector:
        """Load a bundle folder written by :meth:`save` (Keras runtime)."""
        import tf_keras

        meta = read_hr_meta(path)
        arch = meta["architecture"]
        det = cls(name=meta["name"], version=meta["version"], window=int(arch["window"]),
                  enc_units=int(arch["enc_units"]), latent_units=int(arch["latent_units"]),
                  dec_units=int(arch["dec_units"]), trim=int(arch.get("trim", 0)))
        det.normaliser = HRNormaliser.from_dict(meta["normaliser"])
        op = meta["thresholds"].get("operating")
        det.threshold = None if op is None else float(op)
        det._set_model(tf_keras.models.load_model(str(Path(path) / meta["files"]["keras"]), compile=False))
        return det


class HRTFLiteDetector:
    """The same Detector API over the bundle's ``model_float32.tflite`` (no TensorFlow).

    Uses ``ai_edge_litert`` only; the model has a fixed batch of 1, so windows are run
    one at a time (an HR window arrives every few seconds per patient).
    """

    def __init__(self, path: str | Path) -> None:
        from ai_edge_litert.interpreter import Interpreter

        meta = read_hr_meta(path)
        self.name: str = meta["name"]
        self.version: str = meta["version"]
        self.window = int(meta["architecture"]["window"])
        self.trim = int(meta["architecture"].get("trim", 0))
        self.normaliser = HRNormaliser.from_dict(meta["normaliser"])
        op = meta["thresholds"].get("operating")
        self.threshold: float | None = None if op is None else float(op)
        self._interp = Interpreter(model_path=str(Path(path) / meta["files"]["tflite_float32"]))
        self._interp.allocate_tensors()
        self._in = self._interp.get_input_details()[0]["index"]
        self._out = self._interp.get_output_details()[0]["index"]

    def score(self, x: np.ndarray) -> np.ndarray:
        """Per-window reconstruction MSE, float32 [n]."""
        feats = hr_features(_check_windows(x, self.window), self.normaliser)
        out = np.empty(feats.shape[0], dtype=np.float32)
        for i in range(feats.shape[0]):
            # TFLite's fused LSTM keeps its state in variable tensors that persist across
            # invokes; every window is independent, so reset them first.
            self._interp.reset_all_variables()
            self._interp.set_tensor(self._in, feats[i : i + 1])
            self._interp.invoke()
            out[i] = window_scores(feats[i : i + 1], self._interp.get_tensor(self._out), self.trim)[0]
        return out

    def predict(self, x: np.ndarray) -> Prediction:
        """Scores and ``flagged = scores > threshold``."""
        return predict_from(self, x)

    def infer_threshold(self, x_normal: np.ndarray, fpr: float) -> float:
        """Set ``threshold`` to the (1 - fpr) quantile of scores on held-out normal windows."""
        validate_fpr(fpr)
        self.threshold = threshold_from_scores(self.score(x_normal), fpr)
        return self.threshold


def read_hr_meta(path: str | Path) -> dict[str, Any]:
    """Read and check an HR bundle's ``bundle.json``; BundleError names the file and key."""
    f = Path(path) / "bundle.json"
    try:
        meta = json.loads(f.read_text())
    except FileNotFoundError as exc:
        raise BundleError(f"not an HR bundle: {f} is missing") from exc
    except json.JSONDecodeError as exc:
        raise BundleError(f"{f} is not valid JSON: {exc}") from exc
    if meta.get("schema") != BUNDLE_SCHEMA:
        raise BundleError(f"{f}: schema must be {BUNDLE_SCHEMA!r}, got {meta.get('schema')!r}")
    if meta.get("kind") != HR_BUNDLE_KIND:
        raise BundleError(f"{f}: kind must be {HR_BUNDLE_KIND!r}, got {meta.get('kind')!r}")
    for key in ("name", "version", "architecture", "normaliser", "thresholds", "files"):
        if key not in meta:
            raise BundleError(f"{f}: missing key {key!r}")
    for name in meta["files"].values():
        if not (Path(path) / name).is_file():
            raise BundleError(f"{f}: listed file {name!r} is missing")
    return meta


def load_hr_bundle(path: str | Path, runtime: str = "keras") -> HRDetector | HRTFLiteDetector:
    """Load an HR bundle with the ``"keras"`` or ``"tflite"`` (TF-free) runtime."""
    if runtime == "keras":
        return HRDetector.load(path)
    if runtime == "tflite":
        return HRTFLiteDetector(path)
    raise ValueError(f"runtime must be 'keras' or 'tflite', got {runtime!r}")


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move a finished temp folder into place; an existing bundle is swapped out first."""
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.replace(out, old / out.name)
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(old / out.name, out)
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _export_float32(model: Any, path: Path, window: int) -> dict[str, Any]:
    """Float32 TFLite export, batch 1, builtin ops only (verified after conversion).

    ``models.export.export_tflite`` fixes the ECG beat input shape [b, 80, 3]; this is
    the same builtin-only conversion for the HR input [1, window, 2], and it reuses
    ``models.export.tflite_op_names`` for the op check.
    """
    import tensorflow as tf

    from models.export import ExportError, tflite_op_names

    spec = tf.TensorSpec([1, window, N_FEATURES], tf.float32, name="rr_window")
    concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    conv = tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    try:
        flat = conv.convert()
    except Exception as exc:  # converter raises assorted error types
        raise ExportError(f"TFLite conversion to {path} failed: {exc}") from exc
    path.write_bytes(flat)
    ops = tflite_op_names(path)
    bad = [op for op in ops if op.startswith("Flex") or op.upper() == "CUSTOM"]
    if bad:
        raise ExportError(f"{path} would contain non-builtin ops {bad}; only builtin ops are allowed")
    return {"size_kb": path.stat().st_size / 1024.0, "ops": list(ops)}


class _TqdmEpochs:
    """Keras callback showing one tqdm bar over epochs with the latest losses."""

    def __new__(cls, epochs: int) -> Any:
        import tf_keras
        from tqdm.auto import tqdm

        class _CB(tf_keras.callbacks.Callback):
            def on_train_begin(self, logs: Any = None) -> None:
                self.bar = tqdm(total=epochs, desc="train hr", unit="epoch", file=sys.stderr)

            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                logs = logs or {}
                self.bar.set_postfix(loss=f"{logs.get('loss', float('nan')):.4f}",
                                     val=f"{logs.get('val_loss', float('nan')):.4f}")
                self.bar.update(1)

            def on_train_end(self, logs: Any = None) -> None:
                self.bar.close()

        return _CB()


# --------------------------------------------------------------------------------------
# data: synthetic patients and WFDB records
# --------------------------------------------------------------------------------------
def _patient_hr_bpm(seed: int) -> float:
    # resting HR of a synthetic patient: 55-95 bpm, a typical adult resting range
    return float(np.random.default_rng([seed, 7]).uniform(55.0, 95.0))


def synthetic_normal_rr(seed: int, duration_s: float, sample_rate_hz: float = 100.0) -> np.ndarray:
    """RR intervals (s) of one synthetic patient in normal sinus rhythm.

    Uses the project's ECG generator (:func:`models.synthetic.synth_ecg`) with a
    per-seed resting heart rate in 55-95 bpm; only the RR ground truth is used, so a
    low sample rate keeps it cheap.
    """
    from models.synthetic import synth_ecg

    rec = synth_ecg(duration_s, sample_rate_hz=sample_rate_hz, hr_bpm=_patient_hr_bpm(seed), seed=int(seed))
    rr = np.asarray(rec.rr_s, dtype=np.float64)
    return rr[np.isfinite(rr)]  # the first beat has no interval (NaN)


def _record_normal_rr(folder: Path, name: str) -> list[np.ndarray]:
    """Runs of RR intervals between consecutive AAMI-N beats of one WFDB record."""
    from models.records import load_record

    rec = load_record(folder, name)
    samples = np.asarray(rec.beat_samples, dtype=np.float64)
    cls = np.asarray(rec.aami_classes, dtype=str)
    if samples.size < 2:
        return []
    rr = np.diff(samples) / float(rec.sample_rate_hz)
    ok = (cls[1:] == "N") & (cls[:-1] == "N") & (rr >= RR_MIN_S) & (rr <= RR_MAX_S)
    runs: list[np.ndarray] = []
    start = None
    for i, good in enumerate(np.append(ok, False)):
        if good and start is None:
            start = i
        elif not good and start is not None:
            runs.append(rr[start:i])
            start = None
    return runs


def _hash_update(h: Any, label: str, rr: np.ndarray) -> None:
    h.update(label.encode())
    h.update(np.asarray(rr, dtype=np.float32).tobytes())


# --------------------------------------------------------------------------------------
# measurement on held-out synthetic patients
# --------------------------------------------------------------------------------------
def evaluate_synthetic(
    detector: HRDetector | HRTFLiteDetector,
    seeds: Sequence[int],
    *,
    duration_s: float = 1800.0,
    step: int = 8,
    k: int = 3,
    n: int = 4,
    with_pvcs: bool = False,
) -> dict[str, Any]:
    """Measure episode detection and false alerts on held-out synthetic patients.

    Each seed is one patient: ``duration_s`` of rhythm with one afib episode (3-6 min),
    one tachycardia and one bradycardia episode (2-3 min each), at random
    non-overlapping times, and optionally isolated PVCs (``with_pvcs``) outside them.
    Windows of ``detector.window`` beats are scored every ``step`` beats; a window's
    time is its last beat's time. **Alert rule**: the alert is on while at least ``k``
    of the last ``n`` windows are over threshold; each off->on transition is one alert.
    An alert is *true* when the windows it spans overlap an episode (episode interval
    extended by one window's duration, since a window ends after the beats it covers);
    otherwise it is a false alert. An episode is *detected* when a true alert overlaps it.

    Returns
    -------
    dict
        ``{kind}_detected``/``{kind}_episodes`` for afib, tachy, brady; median
        detection delay (s) from afib onset; ``false_alerts``, ``patient_hours``,
        ``false_alerts_per_patient_hour``; the rule.
    """
    from models.synthetic import Event, synth_ecg

    if detector.threshold is None:
        raise NotFittedError("detector has no threshold; call infer_threshold first")
    kinds = ("afib", "tachy", "brady")
    found = {kk: 0 for kk in kinds}
    total = {kk: 0 for kk in kinds}
    delays: list[float] = []
    false_alerts = 0
    hours = 0.0
    for seed in seeds:
        rng = np.random.default_rng([int(seed), 11])
        durations = {"afib": rng.uniform(180, 360), "tachy": rng.uniform(120, 180), "brady": rng.uniform(120, 180)}
        # place episodes in separate thirds of the record, after a 2 min normal lead-in
        third = (duration_s - 120.0) / 3.0
        order = rng.permutation(3)
        events = []
        spans: list[tuple[str, float, float]] = []
        for slot, kind in zip(order, kinds):
            d = float(durations[kind])
            start = 120.0 + slot * third + rng.uniform(0, max(third - d - 60.0, 1.0))
            params: dict[str, Any] = {}
            if kind == "tachy":
                params = {"hr_bpm": float(rng.uniform(130, 160))}
            elif kind == "brady":
                params = {"hr_bpm": float(rng.uniform(38, 45))}
            else:  # afib ventricular rate: rate-controlled to rapid
                params = {"hr_bpm": float(rng.uniform(75, 130))}
            events.append(Event(kind, float(start), d, params))
            spans.append((kind, float(start), float(start) + d))
        if with_pvcs:
            for t in rng.uniform(60, duration_s - 10, size=int(duration_s / 120)):
                if all(not (s - 30 <= t <= e + 30) for _, s, e in spans):
                    events.append(Event("pvc", float(t), 0.0, {}))
        rec = synth_ecg(duration_s, sample_rate_hz=100.0, hr_bpm=_patient_hr_bpm(int(seed)), events=events,
                        seed=int(seed))
        # the first beat has no interval (NaN); beat i of rr ends at beat_t[i]
        rr = np.asarray(rec.rr_s, dtype=np.float64)[1:]
        beat_t = np.asarray(rec.beat_samples, dtype=np.float64)[1:] / rec.sample_rate_hz
        ends, scores = _score_series(detector, rr, step)
        flagged = scores > detector.threshold
        on = k_of_n(flagged, k, n)
        win_start_t = beat_t[np.maximum(ends - detector.window + 1, 0)] - rr[np.maximum(ends - detector.window + 1, 0)]
        win_end_t = beat_t[ends]
        hours += float(beat_t[-1]) / 3600.0
        detected_here: set[int] = set()
        i = 0
        while i < on.size:
            if not on[i]:
                i += 1
                continue
            j = i
            while j + 1 < on.size and on[j + 1]:
                j += 1
            # the alert spans the windows that made it: from n-1 windows before onset
            a0 = float(win_start_t[max(i - n + 1, 0)])
            a1 = float(win_end_t[j])
            hit = False
            for e_idx, (kind, s, e) in enumerate(spans):
                if a0 <= e and a1 >= s:
                    hit = True
                    if e_idx not in detected_here:
                        detected_here.add(e_idx)
                        if kind == "afib":
                            delays.append(max(float(win_end_t[i]) - s, 0.0))
            if not hit:
                false_alerts += 1
            i = j + 1
        for e_idx, (kind, _, _) in enumerate(spans):
            total[kind] += 1
            found[kind] += int(e_idx in detected_here)
    out: dict[str, Any] = {
        "patients": len(list(seeds)),
        "patient_hours": round(hours, 3),
        "rule": f"alert while >= {k} of the last {n} windows (window {detector.window} beats, "
                f"step {step} beats) score > threshold",
        "false_alerts": false_alerts,
        "false_alerts_per_patient_hour": round(false_alerts / hours, 4) if hours else None,
        "afib_median_delay_s": round(float(np.median(delays)), 1) if delays else None,
        "with_pvcs": with_pvcs,
    }
    for kind in kinds:
        out[f"{kind}_episodes"] = total[kind]
        out[f"{kind}_detected"] = found[kind]
        out[f"{kind}_detection_rate"] = round(found[kind] / total[kind], 4) if total[kind] else None
    return out


def _score_series(detector: HRDetector | HRTFLiteDetector, rr: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
    w = rr_windows(rr, detector.window, step)
    ends = np.arange(w.shape[0], dtype=np.int64) * int(step) + detector.window - 1
    return ends, detector.score(w)


# --------------------------------------------------------------------------------------
# training entry point
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HRTrainResult:
    """What :func:`train_hr` produced."""

    bundle: Path
    threshold: float
    fpr: float
    n_params: int
    n_train_windows: int
    n_val_windows: int
    n_cal_windows: int
    training_data_sha256: str
    metrics: dict[str, Any] = field(default_factory=dict)


def train_hr(
    out: str | Path,
    *,
    records: Sequence[str | Path] = (),
    synthetic: int = 0,
    seed: int = 0,
    fpr: float = 0.01,
    epochs: int = 30,
    duration_s: float = 1200.0,
    train_step: int = 4,
    window: int = WINDOW_BEATS,
    enc_units: int = 16,
    latent_units: int = 8,
    dec_units: int = 16,
    version: str = "0.1.0",
    eval_patients: int = 0,
    progress: bool = True,
) -> HRTrainResult:
    """Train the HR detector on normal rhythm, set its threshold, write the bundle.

    Patients (synthetic seeds, or WFDB records) are split 60/20/20 into train,
    validation (early stopping) and calibration (threshold at ``fpr`` on their
    normal windows), so the threshold is measured on patients the model never saw.

    Parameters
    ----------
    out : path-like
        Bundle folder to write (atomically).
    records : sequence of path-like
        WFDB folders (e.g. nsr2db, qtdb, mitdb DS1); windows come from runs of
        consecutive AAMI-N beats. Exclusive with ``synthetic``.
    synthetic : int
        Number of synthetic normal-rhythm patients (``duration_s`` each).
    seed : int
        Seeds the split, the synthetic patients and training.
    fpr : float
        Target false-positive rate per window on held-out normal patients, in (0, 1).
    epochs : int
        Upper bound on epochs.
    train_step : int
        Beats between training window starts.
    eval_patients : int
        If > 0, also run :func:`evaluate_synthetic` on this many further held-out
        synthetic patients and store the result in the bundle's metrics.
    """
    validate_fpr(fpr)
    if bool(records) == bool(synthetic):
        raise ValueError(f"give exactly one of records or synthetic, got records={list(records)}, synthetic={synthetic}")
    if synthetic and int(synthetic) < 3:
        raise ValueError(f"synthetic needs >= 3 patients (train/val/calibration), got {synthetic}")
    h = hashlib.sha256()
    series: list[tuple[str, list[np.ndarray]]] = []
    from tqdm.auto import tqdm

    if synthetic:
        base = int(seed) * 1_000_003
        for i in tqdm(range(int(synthetic)), desc="synthetic patients", disable=not progress, file=sys.stderr):
            rr = synthetic_normal_rr(base + i, duration_s)
            _hash_update(h, f"synthetic:{base + i}", rr)
            series.append((f"synthetic:{base + i}", [rr]))
        source: dict[str, Any] = {"synthetic_patients": int(synthetic), "duration_s": duration_s,
                                  "generator": "models.synthetic.synth_ecg", "seed_base": base}
    else:
        from models.records import list_records

        for folder in records:
            folder = Path(folder)
            for name in tqdm(list_records(folder), desc=f"records {folder.name}", disable=not progress,
                             file=sys.stderr):
                runs = _record_normal_rr(folder, name)
                for r in runs:
                    _hash_update(h, f"{folder.name}/{name}", r)
                if runs:
                    series.append((f"{folder.name}/{name}", runs))
        if len(series) < 3:
            raise ValueError(f"need >= 3 records with normal rhythm in {list(map(str, records))}, got {len(series)}")
        source = {"records": [str(Path(f).name) for f in records], "n_records": len(series)}

    rng = np.random.default_rng(int(seed))
    order = rng.permutation(len(series))
    n_val = max(1, round(0.2 * len(series)))
    n_cal = max(1, round(0.2 * len(series)))
    groups = {
        "val": order[:n_val],
        "cal": order[n_val : n_val + n_cal],
        "train": order[n_val + n_cal :],
    }

    def windows_of(idx: np.ndarray, step: int) -> np.ndarray:
        parts = [rr_windows(r, window, step) for i in idx for r in series[int(i)][1]]
        parts = [p for p in parts if len(p)]
        return np.concatenate(parts) if parts else np.zeros((0, window), np.float32)

    tr = windows_of(groups["train"], train_step)
    va = windows_of(groups["val"], train_step)
    cal = windows_of(groups["cal"], 1)
    det = HRDetector(version=version, window=window, enc_units=enc_units, latent_units=latent_units,
                     dec_units=dec_units)
    hist = det.fit(tr, va, epochs=epochs, seed=seed, progress=progress)
    thr = det.infer_threshold(cal, fpr)
    metrics: dict[str, Any] = {"final_loss": hist["loss"][-1], "best_val_loss": min(hist["val_loss"]),
                               "epochs_run": len(hist["loss"])}
    if eval_patients and synthetic:
        eval_seeds = [int(seed) * 1_000_003 + int(synthetic) + 10_000 + i for i in range(int(eval_patients))]
        metrics["held_out_synthetic"] = evaluate_synthetic(det, eval_seeds)
        metrics["held_out_synthetic_with_pvcs"] = evaluate_synthetic(det, eval_seeds, with_pvcs=True)
    digest = h.hexdigest()
    det.save(out, extra_meta={
        "thresholds": {"fpr": fpr, "calibration": "(1-fpr) quantile of window scores on held-out normal patients"},
        "training": {"seed": int(seed), "epochs": int(epochs), "train_step": int(train_step),
                     "split": {k: [series[int(i)][0] for i in v] for k, v in groups.items()} if not synthetic
                     else {k: len(v) for k, v in groups.items()},
                     "n_windows": {"train": len(tr), "val": len(va), "cal": len(cal)}, **source},
        "training_data_sha256": digest,
        "metrics": metrics,
    })
    return HRTrainResult(bundle=Path(out), threshold=thr, fpr=fpr, n_params=det.n_params,
                         n_train_windows=len(tr), n_val_windows=len(va), n_cal_windows=len(cal),
                         training_data_sha256=digest, metrics=metrics)


def main(argv: Sequence[str] | None = None) -> int:
    """``cardiowatch train hr --records DIR... | --synthetic N --out DIR [--seed --fpr --epochs]``."""
    p = argparse.ArgumentParser(prog="cardiowatch train hr", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--records", nargs="+", metavar="DIR", help="WFDB folders (normal-rhythm stretches are used)")
    src.add_argument("--synthetic", type=int, metavar="N", help="number of synthetic normal-rhythm patients")
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fpr", type=float, default=0.01, help="target false-positive rate per window (0 < fpr < 1)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--duration-s", type=float, default=1200.0, help="seconds per synthetic patient")
    p.add_argument("--eval-patients", type=int, default=0,
                   help="held-out synthetic patients with afib/tachy/brady episodes to measure")
    p.add_argument("--version", default="0.1.0")
    args = p.parse_args(list(argv) if argv is not None else None)
    try:
        res = train_hr(args.out, records=args.records or (), synthetic=args.synthetic or 0, seed=args.seed,
                       fpr=args.fpr, epochs=args.epochs, duration_s=args.duration_s, version=args.version,
                       eval_patients=args.eval_patients)
    except ValueError as exc:
        p.error(str(exc))
    print(json.dumps({"bundle": str(res.bundle), "threshold": res.threshold, "fpr": res.fpr,
                      "n_params": res.n_params, "windows": [res.n_train_windows, res.n_val_windows,
                                                            res.n_cal_windows],
                      "metrics": res.metrics}, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
