"""Model bundle stage: one versioned folder per detector (ECG or heart rate), written atomically, read with hash checks.

Layout of a bundle folder::

    model.keras                 tf_keras autoencoder [b, T, C] -> [b, T, C]
    model_float32.tflite        batch 1, builtin ops only (edge)
    model_int8.tflite           batch 1, full-integer int8, float32 in/out (edge)
    model_float32_server.tflite fixed batch, float32 (optional, servers)
    <extra files>               named files a kind adds (listed and hashed like the models)
    bundle.json                 schema "cardiowatch.bundle/2", below

``bundle.json`` (schema ``cardiowatch.bundle/2``)::

    schema, kind ("ecg" | "hr"), name, version, created
    input         kind-specific input settings
                  ecg: beat_spec {rate_hz, pre_s, post_s, length}, channels, normaliser {center, scale}
                  hr:  window {unit, window_beats, features, rr_clip_s},
                       normaliser {log_hr_mean, log_hr_std, irregularity_scale}
    architecture  timesteps, channels, enc_units, latent_units, dec_units, mixed_precision
    score         kind-specific score settings (ecg: rr_weight; hr: trim) and its rule
    thresholds    fpr, rule, n_calibration
    runtimes      {"keras" | "tflite" | "tflite-int8": {file, batch_size, threshold}}
    server        {file, batch_size, threshold} of the fixed-batch float32 model, or null
    files         {file name: sha256} of EVERY file above, extra files included
    extra         kind-specific JSON section (free-form; {} when unused)
    training_data_sha256, seed, training_config, library_versions, metrics

**Thresholds per runtime.** Each model file has its own threshold: the (1 - fpr)
quantile of *that file's* scores on the held-out calibration set, so an int8 model is
not run at a threshold measured on float scores. Loading a runtime gives its threshold.

:func:`read_meta` checks the sha256 of every listed file before anything is loaded;
loading with ``runtime="tflite"`` or ``"tflite-int8"`` never imports TensorFlow.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

import numpy as np

from models.autoencoder import Detector, DetectorError, threshold_from_scores, validate_fpr
from models.ecg.features import ECGInput, ECGScore
from models.hr.features import HRInput, HRScore

if TYPE_CHECKING:  # pragma: no cover
    from models.autoencoder import LSTMAutoencoder

__all__ = [
    "BUNDLE_SCHEMA",
    "KINDS",
    "RUNTIMES",
    "Architecture",
    "Bundle",
    "BundleError",
    "BundleMeta",
    "InputSpec",
    "Kind",
    "ModelFile",
    "Runtime",
    "Score",
    "library_versions",
    "load_bundle",
    "load_tflite_file",
    "read_meta",
    "update_extras",
    "write_bundle",
]

BUNDLE_SCHEMA = "cardiowatch.bundle/2"
Kind = Literal["ecg", "hr"]
Runtime = Literal["keras", "tflite", "tflite-int8"]
RUNTIMES: tuple[str, ...] = ("keras", "tflite", "tflite-int8")
InputSpec = Union[ECGInput, HRInput]
Score = Union[ECGScore, HRScore]
#: kind -> (input settings class, score class). A new detector kind is one entry here
#: plus its own ``models/<kind>/features.py``.
KINDS: dict[str, tuple[type[Any], type[Any]]] = {"ecg": (ECGInput, ECGScore), "hr": (HRInput, HRScore)}

KERAS_FILE = "model.keras"
F32_FILE = "model_float32.tflite"
INT8_FILE = "model_int8.tflite"
SERVER_FILE = "model_float32_server.tflite"
META_FILE = "bundle.json"
_MODEL_FILES = (KERAS_FILE, F32_FILE, INT8_FILE, SERVER_FILE)
_LIBS = ("tensorflow", "tf-keras", "numpy", "scipy", "ai-edge-litert")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_THRESHOLD_RULE = "(1 - fpr) quantile of each model file's own scores on the held-out calibration set"


class BundleError(DetectorError):
    """A bundle folder is missing, malformed, or its files do not match bundle.json."""


@dataclass(frozen=True)
class Architecture:
    """Autoencoder shape and widths (the ``architecture`` section)."""

    timesteps: int
    channels: int
    enc_units: int
    latent_units: int
    dec_units: int
    mixed_precision: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (the keys of :meth:`LSTMAutoencoder.config`)."""
        return {
            "timesteps": self.timesteps,
            "channels": self.channels,
            "enc_units": self.enc_units,
            "latent_units": self.latent_units,
            "dec_units": self.dec_units,
            "mixed_precision": self.mixed_precision,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Architecture:
        """Inverse of :meth:`to_dict`; KeyError names a missing key."""
        keys = ("timesteps", "channels", "enc_units", "latent_units", "dec_units")
        for k in keys:
            if k not in d:
                raise KeyError(k)
        vals = {k: int(d[k]) for k in keys}
        for k, v in vals.items():
            if v < 1:
                raise ValueError(f"{k} must be >= 1, got {v}")
        return cls(**vals, mixed_precision=bool(d.get("mixed_precision", False)))


@dataclass(frozen=True)
class ModelFile:
    """One scoring model file of a bundle and its own threshold.

    Attributes
    ----------
    file : str
        File name inside the bundle folder.
    threshold : float
        (1 - fpr) quantile of this file's scores on the calibration set.
    batch_size : int or None
        Fixed batch of a TFLite file; None for the Keras model (any batch).
    """

    file: str
    threshold: float
    batch_size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"file": self.file, "batch_size": self.batch_size, "threshold": self.threshold}


@dataclass(frozen=True)
class BundleMeta:
    """Contents of ``bundle.json``.

    Attributes
    ----------
    kind : {"ecg", "hr"}
        Detector kind: which input settings and score apply.
    name, version : str
        Model identity (also stamped on every scored beat downstream).
    created : str
        ISO-8601 UTC creation time.
    input : ECGInput or HRInput
        Kind-specific input settings (ECG: beat window + normaliser; HR: window + HR normaliser).
    architecture : Architecture
        Autoencoder shape and widths.
    score : ECGScore or HRScore
        Kind-specific score settings.
    threshold_fpr : float
        False-positive rate on held-out normal data every threshold was set for.
    runtimes : dict[str, ModelFile]
        Runtime ("keras", "tflite", "tflite-int8") -> its model file and threshold.
    server : ModelFile or None
        Fixed-batch float32 TFLite model for servers (runtime "tflite", ``server=True``).
    files : dict[str, str]
        File name -> sha256 of every file of the bundle (model and extra files).
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
    extra : dict
        Kind-specific extension section (e.g. settings of extra files).
    n_calibration : int or None
        Size of the calibration set the thresholds were measured on.
    """

    kind: str
    name: str
    version: str
    created: str
    input: InputSpec
    architecture: Architecture
    score: Score
    threshold_fpr: float
    runtimes: dict[str, ModelFile]
    files: dict[str, str]
    training_data_sha256: str
    seed: int
    server: ModelFile | None = None
    training_config: dict[str, Any] = field(default_factory=dict)
    library_versions: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    n_calibration: int | None = None

    def model_file(self, runtime: str, server: bool = False) -> ModelFile:
        """The model file a runtime loads (the server export for ``"tflite"`` with ``server``
        when the bundle has one); BundleError if the bundle ships none for ``runtime``."""
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        if runtime == "tflite" and server and self.server is not None:
            return self.server
        if runtime not in self.runtimes:
            raise BundleError(f"bundle {self.name}@{self.version} ships no {runtime!r} model; it has {sorted(self.runtimes)}")
        return self.runtimes[runtime]

    def threshold(self, runtime: str, server: bool = False) -> float:
        """The operating threshold of ``runtime``'s model file."""
        return self.model_file(runtime, server).threshold

    def thresholds(self) -> dict[str, float]:
        """Runtime -> threshold, with ``"tflite-server"`` for the server export if present."""
        out = {rt: m.threshold for rt, m in self.runtimes.items()}
        if self.server is not None:
            out["tflite-server"] = self.server.threshold
        return out

    @property
    def extra_files(self) -> tuple[str, ...]:
        """Listed files that are not one of the model files."""
        used = {m.file for m in self.runtimes.values()} | ({self.server.file} if self.server else set())
        return tuple(sorted(set(self.files) - used))

    def to_json_dict(self) -> dict[str, Any]:
        """The ``bundle.json`` document."""
        return {
            "schema": BUNDLE_SCHEMA,
            "kind": self.kind,
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "input": self.input.to_dict(),
            "architecture": self.architecture.to_dict(),
            "score": self.score.to_dict(),
            "thresholds": {"fpr": self.threshold_fpr, "rule": _THRESHOLD_RULE, "n_calibration": self.n_calibration},
            "runtimes": {rt: m.to_dict() for rt, m in self.runtimes.items()},
            "server": None if self.server is None else self.server.to_dict(),
            "files": dict(sorted(self.files.items())),
            "extra": self.extra,
            "training_data_sha256": self.training_data_sha256,
            "seed": self.seed,
            "training_config": self.training_config,
            "library_versions": self.library_versions,
            "metrics": self.metrics,
        }

    @classmethod
    def from_json_dict(cls, d: Mapping[str, Any], source: str = META_FILE) -> BundleMeta:
        """Parse and validate a ``bundle.json`` document; BundleError names the bad key."""

        def get(obj: Any, key: str, path: str) -> Any:
            if not isinstance(obj, Mapping) or key not in obj:
                raise BundleError(f"{source}: missing key {path}")
            return obj[key]

        schema = get(d, "schema", "schema")
        if schema != BUNDLE_SCHEMA:
            raise BundleError(f"{source}: schema must be {BUNDLE_SCHEMA!r}, got {schema!r}")
        kind = get(d, "kind", "kind")
        if kind not in KINDS:
            raise BundleError(f"{source}: kind must be one of {sorted(KINDS)}, got {kind!r}")
        input_cls, score_cls = KINDS[kind]
        section = "input"
        try:
            inp = input_cls.from_dict(get(d, "input", "input"))
            section = "architecture"
            arch = Architecture.from_dict(get(d, "architecture", "architecture"))
            section = "score"
            score = score_cls.from_dict(get(d, "score", "score"))
        except KeyError as exc:
            raise BundleError(f"{source}: missing key {section}.{exc.args[0]}") from exc
        except (TypeError, ValueError) as exc:
            raise BundleError(f"{source}: bad {section}: {exc}") from exc
        if (arch.timesteps, arch.channels) != (inp.timesteps, inp.channels):
            raise BundleError(
                f"{source}: architecture [timesteps, channels] = [{arch.timesteps}, {arch.channels}] does not match "
                f"the {kind} input [{inp.timesteps}, {inp.channels}]"
            )
        try:
            score.check_shape(arch.timesteps, arch.channels)
        except ValueError as exc:
            raise BundleError(f"{source}: bad score: {exc}") from exc

        files = get(d, "files", "files")
        if not isinstance(files, Mapping):
            raise BundleError(f"{source}: files must be an object of file name -> sha256, got {type(files).__name__}")
        for fname, digest in files.items():
            _check_file_name(fname, f"{source}: files")
            if not isinstance(digest, str) or not _SHA256.match(digest):
                raise BundleError(f"{source}: files[{fname!r}] must be a sha256 hex digest, got {digest!r}")

        def model_file(m: Any, path: str, keras: bool) -> ModelFile:
            fname = get(m, "file", f"{path}.file")
            if not isinstance(fname, str) or fname not in files:
                raise BundleError(f"{source}: {path}.file {fname!r} is not listed in files")
            try:
                thr = float(get(m, "threshold", f"{path}.threshold"))
                batch = m.get("batch_size")
                batch = None if batch is None else int(batch)
            except (TypeError, ValueError) as exc:
                raise BundleError(f"{source}: bad value in {path}: {exc}") from exc
            if not math.isfinite(thr):
                raise BundleError(f"{source}: {path}.threshold must be finite, got {thr}")
            if not keras and (batch is None or batch < 1):
                raise BundleError(f"{source}: {path}.batch_size must be an integer >= 1, got {m.get('batch_size')!r}")
            return ModelFile(file=fname, threshold=thr, batch_size=None if keras else batch)

        rts = get(d, "runtimes", "runtimes")
        if not isinstance(rts, Mapping) or not rts:
            raise BundleError(f"{source}: runtimes must be a non-empty object, got {rts!r}")
        unknown = sorted(set(rts) - set(RUNTIMES))
        if unknown:
            raise BundleError(f"{source}: runtimes has unknown runtime(s) {unknown}; known: {list(RUNTIMES)}")
        runtimes = {rt: model_file(rts[rt], f"runtimes.{rt}", rt == "keras") for rt in RUNTIMES if rt in rts}
        server = None if d.get("server") is None else model_file(d["server"], "server", False)

        thr = get(d, "thresholds", "thresholds")
        try:
            fpr = float(get(thr, "fpr", "thresholds.fpr"))
            n_cal = thr.get("n_calibration")
            meta = cls(
                kind=str(kind),
                name=str(get(d, "name", "name")),
                version=str(get(d, "version", "version")),
                created=str(get(d, "created", "created")),
                input=inp,
                architecture=arch,
                score=score,
                threshold_fpr=fpr,
                runtimes=runtimes,
                server=server,
                files={str(k): str(v) for k, v in files.items()},
                training_data_sha256=str(get(d, "training_data_sha256", "training_data_sha256")),
                seed=int(get(d, "seed", "seed")),
                training_config=dict(d.get("training_config") or {}),
                library_versions=dict(d.get("library_versions") or {}),
                metrics=dict(d.get("metrics") or {}),
                extra=dict(d.get("extra") or {}),
                n_calibration=None if n_cal is None else int(n_cal),
            )
        except (TypeError, ValueError) as exc:
            raise BundleError(f"{source}: bad value: {exc}") from exc
        if not (0.0 < meta.threshold_fpr < 1.0):
            raise BundleError(f"{source}: thresholds.fpr must be in (0, 1), got {meta.threshold_fpr}")
        return meta


def _check_file_name(name: Any, where: str) -> None:
    # Listed files are plain names inside the bundle folder: no paths, no hidden files,
    # never bundle.json itself (it cannot hash itself).
    if (not isinstance(name, str) or not name or name in (".", "..") or name.startswith(".")
            or "/" in name or "\\" in name or name == META_FILE):
        raise BundleError(f"{where}: {name!r} is not a plain file name inside the bundle folder")


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle: its metadata and a ready :class:`~models.autoencoder.Detector`.

    Attributes
    ----------
    path : Path
        Bundle folder.
    meta : BundleMeta
        Its ``bundle.json``.
    detector : Detector
        The runtime's detector, its ``threshold`` set to :attr:`threshold`.
    runtime : str
        "keras", "tflite" or "tflite-int8".
    model_file : ModelFile
        The file loaded (the server export when asked for and present).
    """

    path: Path
    meta: BundleMeta
    detector: Detector
    runtime: str
    model_file: ModelFile

    @property
    def threshold(self) -> float:
        """This runtime's operating threshold (calibrated on its own scores)."""
        return self.model_file.threshold


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
    input_spec: InputSpec,
    *,
    calibration: np.ndarray,
    fpr: float,
    representative: np.ndarray,
    training_data_sha256: str,
    seed: int,
    training_config: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    server_batch_size: int | None = 64,
    extra_files: Mapping[str, str | Path | bytes] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Export, calibrate per runtime and write a bundle folder atomically.

    Everything is written into a temporary sibling folder, checked, then moved into
    place with ``os.replace``; an existing bundle at ``out_dir`` is swapped out only
    after the new one is complete, so a failure at any point leaves either the old
    bundle or nothing, never a partial folder.

    Parameters
    ----------
    out_dir : str or Path
        Bundle folder to create or replace.
    detector : LSTMAutoencoder
        Fitted detector; its score object must be the kind's (ECGScore / HRScore).
    input_spec : ECGInput or HRInput
        The kind's input settings the model inputs were built with; fixes ``kind``.
    calibration : np.ndarray
        float32 [n > 0, timesteps, channels] held-out normal inputs (patients neither
        trained nor validated on). Every model file's threshold is the (1 - fpr)
        quantile of its own scores on them.
    fpr : float
        Target false-positive rate, in (0, 1).
    representative : np.ndarray
        float32 [n, timesteps, channels] normal inputs for int8 calibration.
    training_data_sha256 : str
        Hash of the training data.
    seed : int
        Training seed.
    training_config, metrics : mapping, optional
        Recorded as given (must be JSON-serialisable).
    server_batch_size : int or None
        Also export a float32 model with this fixed batch (None: skip).
    extra_files : mapping of file name -> path or bytes, optional
        Further files to ship (e.g. a small classifier). Listed in ``files`` with their
        sha256 and verified on read like the model files. Plain names only, not one of
        the model file names.
    extra : mapping, optional
        Kind-specific JSON section stored as ``extra`` (e.g. settings of the extra files).

    Returns
    -------
    Path
        ``out_dir``.
    """
    from models.export import export_tflite
    from models.tflite_runtime import TFLiteDetector

    f = validate_fpr(fpr)
    kind = input_spec.kind
    if kind not in KINDS:
        raise ValueError(f"input_spec.kind must be one of {sorted(KINDS)}, got {kind!r}")
    if not isinstance(detector.scoring, KINDS[kind][1]):
        raise ValueError(f"detector scores with {type(detector.scoring).__name__}, a {kind!r} bundle needs {KINDS[kind][1].__name__}")
    shape = (input_spec.timesteps, input_spec.channels)
    if detector.input_shape != shape:
        raise ValueError(f"detector input shape {list(detector.input_shape)} does not match the {kind} input {list(shape)}")
    cal = np.asarray(calibration, dtype=np.float32)
    if cal.ndim != 3 or cal.shape[1:] != shape or cal.shape[0] == 0:
        raise ValueError(f"calibration must have shape [n>0, {shape[0]}, {shape[1]}], got {cal.shape}")
    if server_batch_size is not None and int(server_batch_size) < 1:
        raise ValueError(f"server_batch_size must be >= 1 or None, got {server_batch_size}")
    extra_files = dict(extra_files or {})
    for fname in extra_files:
        _check_file_name(fname, "extra_files")
        if fname in _MODEL_FILES:
            raise ValueError(f"extra_files: {fname!r} is a model file name of the bundle")
    extra_doc = json.loads(json.dumps(dict(extra or {}), allow_nan=False))  # JSON-only, fails early

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        detector.save(tmp / KERAS_FILE)
        r32 = export_tflite(detector, tmp / F32_FILE, int8=False, batch_size=1)
        r8 = export_tflite(detector, tmp / INT8_FILE, representative=representative, int8=True, batch_size=1)
        sizes = {KERAS_FILE: (tmp / KERAS_FILE).stat().st_size / 1024.0, F32_FILE: r32.size_kb, INT8_FILE: r8.size_kb}
        ops = {F32_FILE: list(r32.ops), INT8_FILE: list(r8.ops)}
        if server_batch_size is not None:
            rs = export_tflite(detector, tmp / SERVER_FILE, int8=False, batch_size=int(server_batch_size))
            sizes[SERVER_FILE] = rs.size_kb
            ops[SERVER_FILE] = list(rs.ops)
        for fname, src in extra_files.items():
            if isinstance(src, bytes):
                (tmp / fname).write_bytes(src)
            else:
                shutil.copyfile(src, tmp / fname)

        # Each file's threshold from its own scores on the calibration set.
        def tflite_threshold(fname: str) -> float:
            return threshold_from_scores(TFLiteDetector(tmp / fname, detector.scoring).score(cal), f)

        runtimes = {
            "keras": ModelFile(KERAS_FILE, threshold_from_scores(detector.score(cal), f), None),
            "tflite": ModelFile(F32_FILE, tflite_threshold(F32_FILE), 1),
            "tflite-int8": ModelFile(INT8_FILE, tflite_threshold(INT8_FILE), 1),
        }
        server = None
        if server_batch_size is not None:
            server = ModelFile(SERVER_FILE, tflite_threshold(SERVER_FILE), int(server_batch_size))

        files = {p.name: _sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        all_metrics = dict(metrics or {})
        all_metrics["n_params"] = detector.n_params
        all_metrics["size_kb"] = {k: round(v, 1) for k, v in sizes.items()}
        all_metrics["tflite_ops"] = ops
        meta = BundleMeta(
            kind=kind,
            name=detector.name,
            version=detector.version,
            created=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
            input=input_spec,
            architecture=Architecture(**detector.config()),
            score=detector.scoring,
            threshold_fpr=f,
            runtimes=runtimes,
            server=server,
            files=files,
            training_data_sha256=training_data_sha256,
            seed=int(seed),
            training_config=dict(training_config or {}),
            library_versions=library_versions(),
            metrics=all_metrics,
            extra=extra_doc,
            n_calibration=int(cal.shape[0]),
        )
        doc = meta.to_json_dict()
        BundleMeta.from_json_dict(doc, source=f"{out / META_FILE} (as written)")  # the reader accepts what we write
        _write_meta(tmp, doc)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_meta(tmp: Path, doc: dict[str, Any]) -> None:
    """Write ``bundle.json`` into the temp folder, flushed to disk."""
    with open(tmp / META_FILE, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2, sort_keys=False, allow_nan=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


def _publish(tmp: Path, out: Path) -> None:
    """Open the temp folder's permissions (mkdtemp creates 0700) and swap it into ``out``."""
    os.chmod(tmp, 0o755)
    for fp in tmp.iterdir():
        os.chmod(fp, 0o644)
    _swap_into_place(tmp, out)


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


def update_extras(bundle_dir: str | Path, files: Mapping[str, str | Path | bytes] | None = None,
                  extra: Mapping[str, Any] | None = None) -> BundleMeta:
    """Add or replace extra files and ``extra`` sections of an existing bundle, atomically.

    The bundle is checked first (every listed file's hash), copied into a temporary
    sibling folder, changed there (new files written, every hash recomputed, the given
    top-level ``extra`` keys replaced, the others kept), read back, then swapped into
    place like :func:`write_bundle` does: a failure leaves the old bundle untouched.
    Model files and thresholds are never changed.

    Parameters
    ----------
    bundle_dir : str or Path
        An existing bundle folder.
    files : mapping of file name -> path or bytes, optional
        Extra files to add or replace (plain names, not a model file of the bundle).
    extra : mapping, optional
        Top-level keys of the ``extra`` section to add or replace (JSON-serialisable).

    Returns
    -------
    BundleMeta
        The updated ``bundle.json``.

    Raises
    ------
    BundleError
        The bundle is missing or corrupt, or a file name is not allowed.
    """
    out = Path(bundle_dir)
    meta = read_meta(out)
    files = dict(files or {})
    models = {m.file for m in meta.runtimes.values()} | ({meta.server.file} if meta.server else set())
    for fname in files:
        _check_file_name(fname, "files")
        if fname in models or fname in _MODEL_FILES:
            raise BundleError(f"files: {fname!r} is a model file of the bundle; retrain to change it")
    try:
        extra_doc = json.loads(json.dumps({**meta.extra, **dict(extra or {})}, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise BundleError(f"extra must be JSON-serialisable: {exc}") from exc
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for fp in out.iterdir():
            if fp.is_file() and fp.name != META_FILE:
                shutil.copyfile(fp, tmp / fp.name)
        for fname, src in files.items():
            if isinstance(src, bytes):
                (tmp / fname).write_bytes(src)
            else:
                shutil.copyfile(src, tmp / fname)
        hashes = {name: _sha256_file(tmp / name) for name in sorted(set(meta.files) | set(files))}
        new = replace(meta, files=hashes, extra=extra_doc)
        _write_meta(tmp, new.to_json_dict())
        checked = read_meta(tmp)  # the reader accepts what we wrote, hashes included
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return checked


def read_meta(path: str | Path, verify_files: bool = True) -> BundleMeta:
    """Read and validate ``bundle.json`` of a bundle folder (no TensorFlow import).

    Raises
    ------
    BundleError
        Missing folder or file, bad JSON, missing or bad key, or a listed file (model
        or extra) that is missing or whose sha256 differs from the recorded one (when
        ``verify_files``).
    """
    p = Path(path)
    meta_path = p / META_FILE
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


def _check_kind(meta: BundleMeta, kind: str | None, path: Path) -> None:
    if kind is not None and meta.kind != kind:
        raise BundleError(f"{path}: expected a {kind!r} bundle, got kind {meta.kind!r}")


def _build_detector(path: Path, meta: BundleMeta, runtime: str, mf: ModelFile, num_threads: int) -> Detector:
    fp = path / mf.file
    detector: Any
    try:
        if runtime == "keras":
            from models.autoencoder import LSTMAutoencoder

            detector = LSTMAutoencoder.load(fp, score=meta.score, name=meta.name, version=meta.version, threshold=mf.threshold)
            got = Architecture(**detector.config())
        else:
            from models.tflite_runtime import TFLiteDetector

            detector = TFLiteDetector(fp, score=meta.score, name=meta.name, version=meta.version, threshold=mf.threshold,
                                      num_threads=num_threads)
    except BundleError:
        raise
    except Exception as exc:  # corrupt model files raise assorted errors from TF / LiteRT
        raise BundleError(f"{fp}: cannot load model: {exc}") from exc
    if runtime == "keras":
        if got != meta.architecture:
            raise BundleError(f"{fp}: model architecture {got.to_dict()} does not match bundle.json {meta.architecture.to_dict()}")
    else:
        want = (meta.architecture.timesteps, meta.architecture.channels)
        if detector.input_shape != want or detector.batch_size != mf.batch_size:
            raise BundleError(f"{fp}: input [batch, timesteps, channels] = [{detector.batch_size}, {detector.timesteps}, "
                              f"{detector.channels}], bundle.json says [{mf.batch_size}, {want[0]}, {want[1]}]")
    return detector  # type: ignore[no-any-return]


def load_bundle(path: str | Path, runtime: Runtime = "keras", server: bool = False, num_threads: int = 1,
                kind: Kind | None = None) -> Bundle:
    """Load a bundle and build its detector for one runtime.

    Parameters
    ----------
    path : str or Path
        Bundle folder.
    runtime : {"keras", "tflite", "tflite-int8"}
        Which model file scores. The TFLite runtimes never import TensorFlow.
    server : bool
        With ``runtime="tflite"``, use the fixed-batch server export if the bundle has one.
    num_threads : int
        TFLite interpreter threads.
    kind : {"ecg", "hr"}, optional
        Expected kind; BundleError if the bundle is of another kind.

    Returns
    -------
    Bundle
        Its detector's ``threshold`` is the runtime's own.

    Raises
    ------
    BundleError
        Bad bundle (names the file or key), a file hash mismatch, the wrong kind, or no
        model for ``runtime``; ValueError for an unknown runtime.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    p = Path(path)
    meta = read_meta(p)
    _check_kind(meta, kind, p)
    mf = meta.model_file(runtime, server)
    return Bundle(path=p, meta=meta, detector=_build_detector(p, meta, runtime, mf, num_threads), runtime=runtime,
                  model_file=mf)


def load_tflite_file(model: str | Path, num_threads: int = 1, kind: Kind | None = None) -> Bundle:
    """Load the bundle a ``.tflite`` file belongs to, scoring with that file and its own threshold.

    The file's folder must be its bundle (``bundle.json`` lists it as the ``tflite``,
    ``tflite-int8`` or server model). Never imports TensorFlow.
    """
    fp = Path(model)
    meta = read_meta(fp.parent)
    _check_kind(meta, kind, fp.parent)
    entries = [(rt, m) for rt, m in meta.runtimes.items() if rt != "keras"]
    if meta.server is not None:
        entries.append(("tflite", meta.server))
    for rt, mf in entries:
        if mf.file == fp.name:
            return Bundle(path=fp.parent, meta=meta, detector=_build_detector(fp.parent, meta, rt, mf, num_threads),
                          runtime=rt, model_file=mf)
    names = sorted(m.file for _, m in entries)
    raise BundleError(f"{fp}: not a TFLite model of the bundle in {fp.parent} (its TFLite files: {names})")
