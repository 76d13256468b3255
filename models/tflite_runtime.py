"""TFLite runtime stage: the Detector API over a ``.tflite`` autoencoder, for every detector kind.

Imports only numpy and ``ai_edge_litert`` (never TensorFlow), so the edge runner can
score without a TensorFlow install. The input shape comes from the model file; the
kind's :class:`~models.autoencoder.ReconstructionScore` turns reconstructions into
scores exactly as the Keras runtime does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.autoencoder import (
    NotFittedError,
    Prediction,
    ReconstructionScore,
    check_input,
    predict_from,
    threshold_from_scores,
    validate_fpr,
)

__all__ = ["TFLiteDetector"]


class TFLiteDetector:
    """Autoencoder scored with the LiteRT interpreter (float32 or int8 model).

    The exported model has a fixed batch ``b`` (1 for the edge, larger for a server
    export). Inputs are scored in chunks of ``b``, the last chunk zero-padded. The
    batch cannot be resized at load time: the fused LSTM's state tensors are
    allocated for the exported batch (``allocate_tensors`` fails after a resize).

    Parameters
    ----------
    path : str or Path
        The ``.tflite`` file, input [b, timesteps, channels].
    score : ReconstructionScore
        The kind's score; must be the one the model was trained and thresholded with.
    name, version : str
        Identify the model.
    threshold : float, optional
        Operating threshold (from the bundle, for this model file), or set it with
        :meth:`infer_threshold`.
    num_threads : int
        Interpreter threads.
    """

    def __init__(
        self,
        path: str | Path,
        score: ReconstructionScore,
        name: str = "lstm-ae",
        version: str = "0.0.0",
        threshold: float | None = None,
        num_threads: int = 1,
    ) -> None:
        from ai_edge_litert.interpreter import Interpreter

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"TFLite model not found: {p}")
        self.path = p
        self.scoring = score
        self.name = name
        self.version = version
        self.threshold = threshold
        interp = Interpreter(model_path=str(p), num_threads=int(num_threads))
        shape = tuple(int(s) for s in interp.get_input_details()[0]["shape"])
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"{p}: input shape must be [b, timesteps, channels], got {list(shape)}")
        interp.allocate_tensors()
        self._interp = interp
        self._in = interp.get_input_details()[0]
        self._out = interp.get_output_details()[0]
        self.batch_size = int(shape[0])
        self.timesteps = int(shape[1])
        self.channels = int(shape[2])
        self.input_dtype = np.dtype(self._in["dtype"])
        self.output_dtype = np.dtype(self._out["dtype"])

    @property
    def input_shape(self) -> tuple[int, int]:
        """(timesteps, channels) of one input."""
        return (self.timesteps, self.channels)

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
        """Model reconstruction float32 [n, timesteps, channels]."""
        a = check_input(x, self.timesteps, self.channels)
        n, b = a.shape[0], self.batch_size
        out = np.empty_like(a)
        buf = np.zeros((b, self.timesteps, self.channels), dtype=np.float32)
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
            # invoke() calls; each input must start from zero state, as in Keras.
            self._interp.reset_all_variables()
            self._interp.set_tensor(self._in["index"], self._quantise_in(feed))
            self._interp.invoke()
            out[i : i + k] = self._dequantise_out(self._interp.get_tensor(self._out["index"]))[:k]
        return out

    def score(self, x: np.ndarray) -> np.ndarray:
        """Per-input score, float32 [n] (the kind's score, as the Keras runtime computes it)."""
        a = check_input(x, self.timesteps, self.channels)
        return self.scoring.numpy(a, self.reconstruct(a))

    def predict(self, x: np.ndarray) -> Prediction:
        """Scores and flags at ``self.threshold``."""
        if self.threshold is None:
            raise NotFittedError(f"detector {self.name!r} has no threshold; call infer_threshold first")
        return predict_from(self, x)

    def infer_threshold(self, x_normal: np.ndarray, fpr: float) -> float:
        """Set ``threshold`` to the (1 - fpr) quantile of scores on held-out normal inputs."""
        validate_fpr(fpr)
        self.threshold = threshold_from_scores(self.score(x_normal), fpr)
        return self.threshold
