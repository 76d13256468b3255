"""Export stage: convert a Keras autoencoder (any detector kind) to TFLite with builtin ops only.

The input shape [batch, timesteps, channels] is taken from the Keras model, so one
export serves the ECG beat model and the heart-rate window model. Three flavours: a
float32 batch-1 model for the edge, a full-integer int8 model with float32 I/O, and a
fixed-batch float32 model for servers.

The int8 model is full-integer quantised (weights and activations int8; LSTM cell
state int16, as TFLite's integer LSTM kernel requires) calibrated on representative
normal inputs, with **float32 input and output**: the only float ops are one QUANTIZE
at the input and one DEQUANTIZE at the output, and the runtime computes the squared
error against the float input. An int8 output would quantise the reconstruction error
itself to 1/256 of the output range, which costs more score resolution than it saves.
``int8_io=True`` gives int8 in/out for integer-only accelerators;
:class:`models.tflite_runtime.TFLiteDetector` handles both.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.autoencoder import DetectorError

__all__ = ["ExportError", "ExportReport", "export_tflite", "tflite_op_names"]

# Ops the flatbuffer must never contain: Flex (SELECT_TF_OPS) or custom ops cannot run
# under the plain LiteRT interpreter on an edge device.
_FORBIDDEN_PREFIXES = ("Flex",)


class ExportError(DetectorError):
    """Conversion produced a model that is not builtin-ops-only, or failed."""


@dataclass(frozen=True)
class ExportReport:
    """What was written.

    Attributes
    ----------
    path : Path
        The ``.tflite`` file.
    size_kb : float
        File size in KiB.
    ops : tuple[str, ...]
        Sorted distinct op names in the model.
    int8 : bool
        Full-integer quantised.
    input_dtype, output_dtype : str
        I/O tensor dtypes.
    batch_size : int
        Fixed batch dimension.
    """

    path: Path
    size_kb: float
    ops: tuple[str, ...]
    int8: bool
    input_dtype: str
    output_dtype: str
    batch_size: int


def tflite_op_names(path: str | Path) -> tuple[str, ...]:
    """Distinct op names of a ``.tflite`` file, read with the LiteRT interpreter."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    return tuple(sorted({str(op["op_name"]) for op in interp._get_ops_details()}))


def export_tflite(
    model: Any,
    path: str | Path,
    representative: np.ndarray | None = None,
    int8: bool = False,
    batch_size: int = 1,
    int8_io: bool = False,
) -> ExportReport:
    """Convert a tf_keras autoencoder to a ``.tflite`` file with a fixed input shape.

    Parameters
    ----------
    model : tf_keras.Model or LSTMAutoencoder
        Model mapping [b, timesteps, channels] -> [b, timesteps, channels]; the shape
        and the input tensor's name are read from it.
    path : str or Path
        Output file (written atomically: temp file + ``os.replace``).
    representative : np.ndarray, optional
        float32 [n, timesteps, channels] normal inputs for int8 calibration (required
        when ``int8``; a few hundred inputs from several patients is plenty).
    int8 : bool
        Full-integer quantisation with ``TFLITE_BUILTINS_INT8`` (16x8 activations
        are not used).
    batch_size : int
        Fixed batch dimension (1 for the edge; larger for server-side throughput).
    int8_io : bool
        With ``int8``, make the input and output tensors int8 as well.

    Returns
    -------
    ExportReport

    Raises
    ------
    ExportError
        If the converted model contains Flex or custom ops.
    """
    import tensorflow as tf

    keras_model = getattr(model, "keras_model", model)
    shape = tuple(keras_model.input_shape)
    if len(shape) != 3 or shape[1] is None or shape[2] is None:
        raise ValueError(f"model input must be [batch, timesteps, channels] with fixed timesteps and channels, got {shape}")
    timesteps, channels = int(shape[1]), int(shape[2])
    input_name = str(keras_model.input_names[0])
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if int8_io and not int8:
        raise ValueError("int8_io=True needs int8=True")
    if int8:
        if representative is None:
            raise ValueError("int8 export needs representative normal inputs, got representative=None")
        rep = np.asarray(representative, dtype=np.float32)
        if rep.ndim != 3 or rep.shape[1:] != (timesteps, channels) or rep.shape[0] == 0:
            raise ValueError(f"representative must have shape [n>0, {timesteps}, {channels}], got {rep.shape}")

    spec = tf.TensorSpec([int(batch_size), timesteps, channels], tf.float32, name=input_name)
    fn = tf.function(lambda x: keras_model(x, training=False))
    concrete = fn.get_concrete_function(spec)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], keras_model)
    if int8:
        b = int(batch_size)

        def rep_gen() -> Any:
            n = min(len(rep), 500)
            for i in range(0, n - b + 1, b):
                yield [rep[i : i + b]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = rep_gen
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    else:
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    try:
        flat = converter.convert()
    except Exception as exc:  # converter raises assorted ConverterError/RuntimeError types
        raise ExportError(f"TFLite conversion to {path} failed: {exc}") from exc

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(flat)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a model file is meant to be read by others
        ops = tflite_op_names(tmp)
        bad = [op for op in ops if op.startswith(_FORBIDDEN_PREFIXES) or op.upper() == "CUSTOM"]
        if bad:
            raise ExportError(f"{out} would contain non-builtin ops {bad}; only builtin ops are allowed")
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise

    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(out))
    return ExportReport(
        path=out,
        size_kb=out.stat().st_size / 1024.0,
        ops=ops,
        int8=bool(int8),
        input_dtype=np.dtype(interp.get_input_details()[0]["dtype"]).name,
        output_dtype=np.dtype(interp.get_output_details()[0]["dtype"]).name,
        batch_size=int(batch_size),
    )
