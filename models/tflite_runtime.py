"""TFLite runtime stage: the Detector API over a ``.tflite`` beat autoencoder.

Imports only numpy and ``ai_edge_litert`` (never TensorFlow), so the edge runner can
score beats without a TensorFlow install.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.detector import (
    BEAT_LENGTH,
    DEFAULT_RR_WEIGHT,
    N_CHANNELS,
    NotFittedError,
    Prediction,
    predict_from,
    reconstruction_scores,
    threshold_from_scores,
    validate_fpr,
)

__all__ = ["TFLiteDetector"]


class TFLiteDetector:
    """Beat autoencoder scored with the LiteRT interpreter.

    The exported model has a fixed batch ``b`` (1 for the edge, larger for a server
    export). Inputs are scored in chunks of ``b``, the last chunk zero-padded. The
    batch cannot be resized at load time: the fused LSTM's state tensors are
    allocated for the exported batch (``allocate_tensors`` fails after a resize).

    Parameters
    ----------
    path : str or Path
        The ``.tflite`` file.
    name, version : str
        Identify the model.
    threshold : float, optional
        Operating threshold (from the bundle), or set it with :meth:`infer_threshold`.
    rr_weight : float
        Must match the weight the model was trained and thresholded with.
    num_threads : int
        Interpreter threads.
    """

    def __init__(
        self,
        path: str | Path,
        name: str = "ecg-lstm-ae",
        version: str = "0.0.0",
        threshold: float | None = None,
        rr_weight: float = DEFAULT_RR_WEIGHT,
        num_threads: int = 1,
    ) -> None:
        from ai_edge_litert.interpreter import Interpreter

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"TFLite model not found: {p}")
        self.path = p
        self.name = name
        self.version = version
        self.threshold = threshold
        self.rr_weight = float(rr_weight)
        interp = Interpreter(model_path=str(p), num_threads=int(num_threads))
        inp = interp.get_input_details()[0]
        shape = tuple(int(s) for s in inp["shape"])
        if shape[1:] != (BEAT_LENGTH, N_CHANNELS):
            raise ValueError(f"{p}: input shape must be [b, {BEAT_LENGTH}, {N_CHANNELS}], got {list(shape)}")
        interp.allocate_tensors()
        self._interp = interp
        self._in = interp.get_input_details()[0]
        self._out = interp.get_output_details()[0]
        self.batch_size = int(self._in["shape"][0])
        self.input_dtype = np.dtype(self._in["dtype"])
        self.output_dtype = np.dtype(self._out["dtype"])

    def _quantise_in(self, x: np.ndarray) -> np.ndarray:
        if self.input_dtype == np.float32:
            return x
        scale, zero = self._in["quantization"]
        info = np.iinfo(self.input_dtype)
        q = np.round(x / np.float32(scale)) + zero
        return np.clip(q, info.min, info.max).astype(self.input_dtype)

    def _dequantise_out(self, y: np.ndarray) -> np.ndarray:
        if self.output_dtype == np.float32:
            return y.astype(np.float32)
        scale, zero = self._out["quantization"]
        return ((y.astype(np.float32) - np.float32(zero)) * np.float32(scale)).astype(np.float32)

    def reconstruct(self, x: np.ndarray) -> np.ndarray:
        """Model reconstruction float32 [n, 80, 3]."""
        a = np.asarray(x, dtype=np.float32)
        if a.ndim != 3 or a.shape[1:] != (BEAT_LENGTH, N_CHANNELS):
            raise ValueError(f"x must have shape [n, {BEAT_LENGTH}, {N_CHANNELS}], got {a.shape}")
        n, b = a.shape[0], self.batch_size
        out = np.empty_like(a)
        buf = np.zeros((b, BEAT_LENGTH, N_CHANNELS), dtype=np.float32)
        for i in range(0, n, b):
            chunk = a[i : i + b]
            k = chunk.shape[0]
            if k == b:
                feed = chunk
            else:
                buf[:] = 0.0
                buf[:k] = chunk
                feed = buf
            # The fused LSTM keeps its h/c state in variable tensors that persist across
            # invoke() calls; each beat must start from zero state, as in Keras.
            self._interp.reset_all_variables()
            self._interp.set_tensor(self._in["index"], self._quantise_in(feed))
            self._interp.invoke()
            out[i : i + k] = self._dequantise_out(self._interp.get_tensor(self._out["index"]))[:k]
        return out

    def score(self, x: np.ndarray) -> np.ndarray:
        """Per-beat reconstruction error, float32 [n] (same formula as the Keras model)."""
        a = np.asarray(x, dtype=np.float32)
        return reconstruction_scores(a, self.reconstruct(a), self.rr_weight)

    def predict(self, x: np.ndarray) -> Prediction:
        """Scores and flags at ``self.threshold``."""
        if self.threshold is None:
            raise NotFittedError(f"detector {self.name!r} has no threshold; call infer_threshold first")
        return predict_from(self, x)

    def infer_threshold(self, x_normal: np.ndarray, fpr: float) -> float:
        """Set ``threshold`` to the (1 - fpr) quantile of scores on held-out normal beats."""
        validate_fpr(fpr)
        self.threshold = threshold_from_scores(self.score(x_normal), fpr)
        return self.threshold
