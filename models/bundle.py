"""Model bundle stage: a versioned folder (Keras model, TFLite models, bundle.json) written atomically.

Layout of a bundle folder::

    model.keras                 tf_keras model (reconstruction [b, 80, 3] -> [b, 80, 3])
    model_float32.tflite        batch 1, builtin ops only (edge)
    model_int8.tflite           batch 1, full-integer int8, float32 in/out (edge)
    model_float32_server.tflite fixed batch ``server_batch_size`` (optional)
    bundle.json                 schema "cardiowatch.bundle/1": spec, normaliser,
                                thresholds, training-data hash, config, versions,
                                metrics, and the sha256 of every file above

Loading with ``runtime="tflite"`` or ``"tflite-int8"`` never imports TensorFlow.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from models.detector import BEAT_LENGTH, Detector, Normaliser, validate_fpr

if TYPE_CHECKING:  # pragma: no cover
    from models.detector import LSTMAutoencoder

__all__ = [
    "BUNDLE_SCHEMA",
    "Bundle",
    "BundleError",
    "BundleMeta",
    "Runtime",
    "library_versions",
    "load_bundle",
    "read_meta",
    "write_bundle",
]

BUNDLE_SCHEMA = "cardiowatch.bundle/1"
Runtime = Literal["keras", "tflite", "tflite-int8"]
_RUNTIMES: tuple[str, ...] = ("keras", "tflite", "tflite-int8")
_KERAS_FILE = "model.keras"
_F32_FILE = "model_float32.tflite"
_INT8_FILE = "model_int8.tflite"
_SERVER_FILE = "model_float32_server.tflite"
_META_FILE = "bundle.json"
_LIBS = ("tensorflow", "tf-keras", "numpy", "scipy", "ai-edge-litert")


class BundleError(Exception):
    """A bundle folder is missing, malformed, or its files do not match bundle.json."""


@dataclass(frozen=True)
class BundleMeta:
    """Contents of ``bundle.json``.

    Attributes
    ----------
    name, version : str
        Model identity (also stamped on every scored beat downstream).
    created : str
        ISO-8601 UTC creation time.
    sample_rate_hz : int
        Model input rate (125).
    beat_pre_s, beat_post_s : float
        Beat window around the R peak, seconds.
    beat_length : int
        Samples per beat (80).
    normaliser : Normaliser
        Global amplitude normaliser.
    threshold : float
        Operating threshold on the score.
    threshold_fpr : float
        False-positive rate on held-out normal beats the threshold was set for.
    rr_weight : float
        Weight of the RR-context term in the score.
    training_data_sha256 : str
        sha256 over the training record names and sample hashes.
    seed : int
        Training seed.
    training_config : dict
        Training hyper-parameters and data description.
    library_versions : dict
        Installed versions of tensorflow, tf-keras, numpy, scipy, ai-edge-litert.
    metrics : dict
        Metrics measured at training time (held-out patients).
    files : dict
        File name -> sha256 of the model files.
    server_batch_size : int or None
        Batch of ``model_float32_server.tflite`` if present.
    """

    name: str
    version: str
    created: str
    sample_rate_hz: int
    beat_pre_s: float
    beat_post_s: float
    beat_length: int
    normaliser: Normaliser
    threshold: float
    threshold_fpr: float
    rr_weight: float
    training_data_sha256: str
    seed: int
    training_config: dict[str, Any] = field(default_factory=dict)
    library_versions: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    server_batch_size: int | None = None

    def to_json_dict(self) -> dict[str, Any]:
        """The ``bundle.json`` document."""
        return {
            "schema": BUNDLE_SCHEMA,
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "sample_rate_hz": self.sample_rate_hz,
            "beat_spec": {"rate_hz": self.sample_rate_hz, "pre_s": self.beat_pre_s, "post_s": self.beat_post_s, "length": self.beat_length},
            "normaliser": self.normaliser.to_dict(),
            "thresholds": {"operating": self.threshold, "fpr": self.threshold_fpr},
            "score": {"rr_weight": self.rr_weight},
            "training_data_sha256": self.training_data_sha256,
            "seed": self.seed,
            "training_config": self.training_config,
            "library_versions": self.library_versions,
            "metrics": self.metrics,
            "files": self.files,
            "server_batch_size": self.server_batch_size,
        }

    @classmethod
    def from_json_dict(cls, d: dict[str, Any], source: str = _META_FILE) -> BundleMeta:
        """Parse and validate a ``bundle.json`` document; BundleError names the bad key."""

        def get(obj: Any, key: str, path: str) -> Any:
            if not isinstance(obj, dict) or key not in obj:
                raise BundleError(f"{source}: missing key {path}")
            return obj[key]

        schema = get(d, "schema", "schema")
        if schema != BUNDLE_SCHEMA:
            raise BundleError(f"{source}: schema must be {BUNDLE_SCHEMA!r}, got {schema!r}")
        try:
            spec = get(d, "beat_spec", "beat_spec")
            thr = get(d, "thresholds", "thresholds")
            norm = get(d, "normaliser", "normaliser")
            meta = cls(
                name=str(get(d, "name", "name")),
                version=str(get(d, "version", "version")),
                created=str(get(d, "created", "created")),
                sample_rate_hz=int(get(d, "sample_rate_hz", "sample_rate_hz")),
                beat_pre_s=float(get(spec, "pre_s", "beat_spec.pre_s")),
                beat_post_s=float(get(spec, "post_s", "beat_spec.post_s")),
                beat_length=int(get(spec, "length", "beat_spec.length")),
                normaliser=_normaliser(norm, source),
                threshold=float(get(thr, "operating", "thresholds.operating")),
                threshold_fpr=float(get(thr, "fpr", "thresholds.fpr")),
                rr_weight=float(get(get(d, "score", "score"), "rr_weight", "score.rr_weight")),
                training_data_sha256=str(get(d, "training_data_sha256", "training_data_sha256")),
                seed=int(get(d, "seed", "seed")),
                training_config=dict(d.get("training_config", {})),
                library_versions=dict(d.get("library_versions", {})),
                metrics=dict(d.get("metrics", {})),
                files=dict(get(d, "files", "files")),
                server_batch_size=None if d.get("server_batch_size") is None else int(d["server_batch_size"]),
            )
        except (TypeError, ValueError) as exc:
            raise BundleError(f"{source}: bad value: {exc}") from exc
        if meta.beat_length != BEAT_LENGTH:
            raise BundleError(f"{source}: beat_spec.length must be {BEAT_LENGTH}, got {meta.beat_length}")
        if not math.isfinite(meta.threshold):
            raise BundleError(f"{source}: thresholds.operating must be finite, got {meta.threshold}")
        if not (0.0 < meta.threshold_fpr < 1.0):
            raise BundleError(f"{source}: thresholds.fpr must be in (0, 1), got {meta.threshold_fpr}")
        return meta


def _normaliser(d: Any, source: str) -> Normaliser:
    if not isinstance(d, dict) or "center" not in d or "scale" not in d:
        raise BundleError(f"{source}: missing key normaliser.center / normaliser.scale")
    try:
        return Normaliser(center=float(d["center"]), scale=float(d["scale"]))
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{source}: bad normaliser: {exc}") from exc


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle: its metadata and a ready :class:`~models.detector.Detector`."""

    path: Path
    meta: BundleMeta
    detector: Detector
    runtime: str


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries a bundle depends on (no imports)."""
    out: dict[str, str] = {}
    for lib in _LIBS:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = "absent"
    return out


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            h.update(block)
    return h.hexdigest()


def write_bundle(
    out_dir: str | Path,
    detector: LSTMAutoencoder,
    normaliser: Normaliser,
    threshold_fpr: float,
    training_data_sha256: str,
    seed: int,
    representative: np.ndarray,
    training_config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    beat_pre_s: float = 0.24,
    beat_post_s: float = 0.40,
    sample_rate_hz: int = 125,
    server_batch_size: int | None = 64,
) -> Path:
    """Write a bundle folder atomically.

    Everything is written into a temporary sibling folder, checked, then moved into
    place with ``os.replace``; an existing bundle at ``out_dir`` is swapped out only
    after the new one is complete, so a failure at any point leaves either the old
    bundle or nothing, never a partial folder.

    Parameters
    ----------
    out_dir : str or Path
        Bundle folder to create or replace.
    detector : LSTMAutoencoder
        Fitted detector with ``threshold`` set.
    normaliser : Normaliser
        The global normaliser the model inputs were built with.
    threshold_fpr : float
        FPR the detector's threshold was inferred at.
    training_data_sha256 : str
        Hash of the training data.
    seed : int
        Training seed.
    representative : np.ndarray
        float32 [n, 80, 3] normal beats for int8 calibration.
    training_config, metrics : dict, optional
        Recorded as given (must be JSON-serialisable).
    beat_pre_s, beat_post_s : float
        Beat window, seconds.
    sample_rate_hz : int
        Model input rate.
    server_batch_size : int or None
        Also export a float32 model with this fixed batch (None: skip).

    Returns
    -------
    Path
        ``out_dir``.
    """
    from models.export import export_tflite

    validate_fpr(threshold_fpr)
    if detector.threshold is None:
        raise ValueError("detector has no threshold; call infer_threshold before write_bundle")
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        detector.save(tmp / _KERAS_FILE)
        r32 = export_tflite(detector, tmp / _F32_FILE, int8=False, batch_size=1)
        r8 = export_tflite(detector, tmp / _INT8_FILE, representative=representative, int8=True, batch_size=1)
        sizes = {_KERAS_FILE: (tmp / _KERAS_FILE).stat().st_size / 1024.0, _F32_FILE: r32.size_kb, _INT8_FILE: r8.size_kb}
        ops = {_F32_FILE: list(r32.ops), _INT8_FILE: list(r8.ops)}
        if server_batch_size is not None:
            rs = export_tflite(detector, tmp / _SERVER_FILE, int8=False, batch_size=int(server_batch_size))
            sizes[_SERVER_FILE] = rs.size_kb
            ops[_SERVER_FILE] = list(rs.ops)
        files = {p.name: _sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        all_metrics = dict(metrics or {})
        all_metrics["size_kb"] = {k: round(v, 1) for k, v in sizes.items()}
        all_metrics["tflite_ops"] = ops
        meta = BundleMeta(
            name=detector.name,
            version=detector.version,
            created=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
            sample_rate_hz=int(sample_rate_hz),
            beat_pre_s=float(beat_pre_s),
            beat_post_s=float(beat_post_s),
            beat_length=BEAT_LENGTH,
            normaliser=normaliser,
            threshold=float(detector.threshold),
            threshold_fpr=float(threshold_fpr),
            rr_weight=float(detector.rr_weight),
            training_data_sha256=training_data_sha256,
            seed=int(seed),
            training_config={**detector.config(), **(training_config or {})},
            library_versions=library_versions(),
            metrics=all_metrics,
            files=files,
            server_batch_size=None if server_batch_size is None else int(server_batch_size),
        )
        with open(tmp / _META_FILE, "w", encoding="utf-8") as f:
            json.dump(meta.to_json_dict(), f, indent=2, sort_keys=False, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700
        for fp in tmp.iterdir():
            os.chmod(fp, 0o644)
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _swap_into_place(tmp: Path, out: Path) -> None:
    # rename(2) cannot replace a non-empty directory, so the old bundle is first moved
    # aside (atomic), the new one renamed in (atomic), then the old one deleted.
    if not out.exists():
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rmdir(old)
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def read_meta(path: str | Path, verify_files: bool = True) -> BundleMeta:
    """Read and validate ``bundle.json`` of a bundle folder (no TensorFlow import).

    Raises
    ------
    BundleError
        Missing folder or file, bad JSON, missing or bad key, or a model file whose
        sha256 differs from the one recorded (when ``verify_files``).
    """
    p = Path(path)
    meta_path = p / _META_FILE
    if not p.is_dir():
        raise BundleError(f"bundle folder not found: {p}")
    if not meta_path.is_file():
        raise BundleError(f"bundle file missing: {meta_path}")
    try:
        doc = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{meta_path}: not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise BundleError(f"{meta_path}: top level must be an object, got {type(doc).__name__}")
    meta = BundleMeta.from_json_dict(doc, source=str(meta_path))
    if verify_files:
        for name, digest in meta.files.items():
            fp = p / name
            if not fp.is_file():
                raise BundleError(f"bundle file missing: {fp}")
            if _sha256_file(fp) != digest:
                raise BundleError(f"{fp}: sha256 does not match bundle.json files[{name!r}]")
    return meta


def load_bundle(path: str | Path, runtime: Runtime = "keras", server: bool = False, num_threads: int = 1) -> Bundle:
    """Load a bundle and build its detector.

    Parameters
    ----------
    path : str or Path
        Bundle folder.
    runtime : {"keras", "tflite", "tflite-int8"}
        Which model file scores beats. The TFLite runtimes never import TensorFlow.
    server : bool
        With ``runtime="tflite"``, use the fixed-batch server export if the bundle has one.
    num_threads : int
        TFLite interpreter threads.

    Returns
    -------
    Bundle

    Raises
    ------
    BundleError
        Bad bundle (names the file or key); ValueError for an unknown runtime.
    """
    if runtime not in _RUNTIMES:
        raise ValueError(f"runtime must be one of {_RUNTIMES}, got {runtime!r}")
    p = Path(path)
    meta = read_meta(p)
    if runtime == "keras":
        fname = _KERAS_FILE
    elif runtime == "tflite":
        fname = _SERVER_FILE if server and meta.server_batch_size is not None else _F32_FILE
    else:
        fname = _INT8_FILE
    fp = p / fname
    if fname not in meta.files or not fp.is_file():
        raise BundleError(f"bundle file missing: {fp}")
    detector: Detector
    try:
        if runtime == "keras":
            from models.detector import LSTMAutoencoder

            detector = LSTMAutoencoder.load(fp, name=meta.name, version=meta.version, rr_weight=meta.rr_weight, threshold=meta.threshold)
        else:
            from models.tflite_runtime import TFLiteDetector

            detector = TFLiteDetector(fp, name=meta.name, version=meta.version, threshold=meta.threshold, rr_weight=meta.rr_weight, num_threads=num_threads)
    except BundleError:
        raise
    except Exception as exc:  # corrupt model files raise assorted errors from TF / LiteRT
        raise BundleError(f"{fp}: cannot load model: {exc}") from exc
    return Bundle(path=p, meta=meta, detector=detector, runtime=runtime)

