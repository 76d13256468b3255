"""Model bundle (schema 2, both kinds): atomic write, per-runtime thresholds, extra files, hash-checking reader, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import models.export
from models.autoencoder import threshold_from_scores
from models.bundle import (
    BUNDLE_SCHEMA,
    BundleError,
    load_bundle,
    load_tflite_file,
    read_meta,
    update_extras,
    write_bundle,
)
from models.ecg.features import ECGInput, Normaliser
from models.hr.features import HRInput, HRNormaliser
from models.tflite_runtime import TFLiteDetector

REPO = Path(__file__).resolve().parents[3]
SHIPPED_ECG = REPO / "models" / "pretrained" / "ecg-lstm-ae"
SHIPPED_HR = REPO / "models" / "pretrained" / "hr-lstm-ae"
MODEL_FILES = ["model.keras", "model_float32.tflite", "model_int8.tflite"]


def _write(case: Any, out: Path, **kw: Any) -> Path:
    args: dict[str, Any] = {"calibration": case.x_cal, "fpr": case.fpr, "representative": case.x_train[:100],
                            "training_data_sha256": "ab" * 32, "seed": 0, "metrics": {"auroc_V_vs_N": 0.5}}
    args.update(kw)
    return write_bundle(out, case.detector, case.input_spec, **args)


@pytest.fixture(scope="module")
def ecg(tiny_case: Callable[[str], Any]) -> Any:
    return tiny_case("ecg")


@pytest.fixture(scope="module")
def hr(tiny_case: Callable[[str], Any]) -> Any:
    return tiny_case("hr")


@pytest.fixture(scope="module")
def bundle_dir(ecg: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ECG bundle with a server export, two extra files and an extra section."""
    src = tmp_path_factory.mktemp("src") / "notes.txt"
    src.write_text("beat classifier notes\n")
    return _write(ecg, tmp_path_factory.mktemp("b") / "bundle", server_batch_size=16,
                  extra_files={"classifier.bin": b"\x00\x01weights", "notes.txt": src},
                  extra={"beat_classifier": {"file": "classifier.bin", "classes": ["N", "S", "V"]}})


def test_layout_and_meta(bundle_dir: Path, ecg: Any) -> None:
    names = sorted(p.name for p in bundle_dir.iterdir())
    assert names == sorted(["bundle.json", "classifier.bin", "notes.txt", "model_float32_server.tflite", *MODEL_FILES])
    doc = json.loads((bundle_dir / "bundle.json").read_text())
    assert doc["schema"] == BUNDLE_SCHEMA == "cardiowatch.bundle/2" and doc["kind"] == "ecg"
    assert doc["input"]["beat_spec"] == {"rate_hz": 125, "pre_s": 0.24, "post_s": 0.40, "length": 80}
    assert doc["input"]["normaliser"] == ecg.input_spec.normaliser.to_dict()
    assert doc["architecture"] == {"timesteps": 80, "channels": 3, "enc_units": 8, "latent_units": 4, "dec_units": 8,
                                   "mixed_precision": False}
    assert doc["score"]["rr_weight"] == 1.0 and doc["thresholds"]["fpr"] == ecg.fpr
    assert doc["thresholds"]["n_calibration"] == len(ecg.x_cal)
    assert set(doc["runtimes"]) == {"keras", "tflite", "tflite-int8"}
    assert doc["server"]["batch_size"] == 16 and doc["server"]["file"] == "model_float32_server.tflite"
    assert set(doc["files"]) == set(names) - {"bundle.json"}
    assert set(doc["library_versions"]) == {"tensorflow", "tf-keras", "numpy", "scipy", "ai-edge-litert"}
    assert doc["seed"] == 0 and doc["metrics"]["auroc_V_vs_N"] == 0.5 and doc["metrics"]["n_params"] > 0
    assert set(doc["metrics"]["size_kb"]) == {"model.keras", "model_float32.tflite", "model_int8.tflite", "model_float32_server.tflite"}
    for ops in doc["metrics"]["tflite_ops"].values():
        assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in ops and not any(o.startswith("Flex") for o in ops)
    meta = read_meta(bundle_dir)
    assert meta.kind == "ecg" and meta.input == ecg.input_spec and meta.score == ecg.detector.scoring
    assert meta.extra == {"beat_classifier": {"file": "classifier.bin", "classes": ["N", "S", "V"]}}
    assert meta.extra_files == ("classifier.bin", "notes.txt")


def test_hr_layout_and_meta(hr: Any) -> None:
    doc = json.loads((hr.bundle / "bundle.json").read_text())
    assert doc["schema"] == BUNDLE_SCHEMA and doc["kind"] == "hr"
    assert doc["input"]["window"]["window_beats"] == 32 and doc["input"]["window"]["rr_clip_s"] == [0.2, 3.0]
    assert doc["input"]["normaliser"] == hr.input_spec.normaliser.to_dict()
    assert doc["score"]["trim"] == 4 and doc["architecture"]["channels"] == 2
    assert doc["server"] is None
    assert sorted(doc["files"]) == MODEL_FILES
    meta = read_meta(hr.bundle)
    assert isinstance(meta.input, HRInput) and meta.input == hr.input_spec


@pytest.mark.parametrize("kind", ["ecg", "hr"])
def test_each_runtime_has_its_own_threshold(kind: str, tiny_case: Callable[[str], Any]) -> None:
    case = tiny_case(kind)
    meta = read_meta(case.bundle)
    for runtime, mf in meta.runtimes.items():
        det = load_bundle(case.bundle, runtime=runtime).detector  # type: ignore[arg-type]
        assert mf.threshold == threshold_from_scores(det.score(case.x_cal), case.fpr)
    # int8 scores differ from float scores, so int8 gets a threshold of its own
    assert meta.threshold("tflite-int8") != meta.threshold("keras")


def test_server_threshold_is_its_own(bundle_dir: Path, ecg: Any) -> None:
    b = load_bundle(bundle_dir, runtime="tflite", server=True)
    assert b.model_file.file == "model_float32_server.tflite"
    assert b.threshold == threshold_from_scores(b.detector.score(ecg.x_cal), ecg.fpr) == read_meta(bundle_dir).server.threshold  # type: ignore[union-attr]


@pytest.mark.parametrize("runtime", ["keras", "tflite", "tflite-int8"])
def test_load_each_runtime(bundle_dir: Path, ecg: Any, runtime: str) -> None:
    b = load_bundle(bundle_dir, runtime=runtime)  # type: ignore[arg-type]
    assert b.detector.threshold == b.threshold == b.meta.threshold(runtime) and b.detector.version == "0.0.0"
    s = b.detector.score(ecg.x_clean[:20])
    ref = ecg.detector.score(ecg.x_clean[:20])
    if runtime == "keras":
        np.testing.assert_array_equal(s, ref)
    elif runtime == "tflite":
        np.testing.assert_allclose(s, ref, rtol=1e-4, atol=1e-6)
    else:
        # tiny model: int8 only has to track the float scores here; the int8 accuracy
        # test is in test_export_parity.py.
        assert s.shape == ref.shape and np.all(np.isfinite(s)) and np.corrcoef(s, ref)[0, 1] > 0.7


def test_server_export_matches_edge(bundle_dir: Path, ecg: Any) -> None:
    edge = load_bundle(bundle_dir, runtime="tflite").detector
    server = load_bundle(bundle_dir, runtime="tflite", server=True).detector
    assert getattr(server, "batch_size") == 16
    x = ecg.x_clean[:37]  # not a multiple of the batch: padding path
    np.testing.assert_allclose(server.score(x), edge.score(x), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["ecg", "hr"])
def test_tflite_load_imports_no_tensorflow(kind: str, tiny_case: Callable[[str], Any]) -> None:
    case = tiny_case(kind)
    t, c = case.x_cal.shape[1:]
    code = (
        "import sys, numpy as np; from models.bundle import load_bundle;"
        f"b = load_bundle({str(case.bundle)!r}, runtime='tflite-int8', kind={kind!r});"
        f"b.detector.score(np.zeros((2, {t}, {c}), np.float32));"
        "assert 'tensorflow' not in sys.modules and 'tf_keras' not in sys.modules, 'TF imported'"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


def test_load_tflite_file_uses_that_files_threshold(bundle_dir: Path) -> None:
    meta = read_meta(bundle_dir)
    for fname, runtime, want in (("model_int8.tflite", "tflite-int8", meta.threshold("tflite-int8")),
                                 ("model_float32.tflite", "tflite", meta.threshold("tflite")),
                                 ("model_float32_server.tflite", "tflite", meta.threshold("tflite", server=True))):
        b = load_tflite_file(bundle_dir / fname)
        assert b.runtime == runtime and b.threshold == want == b.detector.threshold
        assert isinstance(b.detector, TFLiteDetector) and b.detector.path.name == fname
    with pytest.raises(BundleError, match="not a TFLite model of the bundle"):
        load_tflite_file(bundle_dir / "classifier.bin")
    with pytest.raises(BundleError, match="expected a 'hr' bundle, got kind 'ecg'"):
        load_tflite_file(bundle_dir / "model_int8.tflite", kind="hr")


@pytest.mark.parametrize("kind", ["ecg", "hr"])
def test_failure_mid_write_leaves_no_partial_bundle(kind: str, tiny_case: Callable[[str], Any], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a: Any, **k: Any) -> Any:
        raise RuntimeError("disk full")

    monkeypatch.setattr(models.export, "export_tflite", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        _write(tiny_case(kind), tmp_path / "new", server_batch_size=None)
    assert list(tmp_path.iterdir()) == []  # neither the bundle nor a temp folder


def test_failed_overwrite_keeps_old_bundle(bundle_dir: Path, ecg: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "bundle"
    shutil.copytree(bundle_dir, target)
    before = read_meta(target)
    monkeypatch.setattr(models.export, "export_tflite", lambda *a, **k: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError, match="killed"):
        _write(ecg, target)
    assert read_meta(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_overwrite_replaces(bundle_dir: Path, hr: Any, tmp_path: Path) -> None:
    # an ECG bundle with extras replaced by an HR bundle without: nothing of the old one stays
    target = tmp_path / "bundle"
    shutil.copytree(bundle_dir, target)
    _write(hr, target, server_batch_size=None)
    assert sorted(p.name for p in target.iterdir()) == sorted(["bundle.json", *MODEL_FILES])
    meta = read_meta(target)
    assert meta.kind == "hr" and meta.server is None and meta.extra_files == ()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def _copy(src: Path, tmp_path: Path) -> Path:
    d = tmp_path / "b"
    shutil.copytree(src, d)
    return d


def test_bundle_errors(bundle_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="bundle folder not found"):
        load_bundle(tmp_path / "nope")
    d = _copy(bundle_dir, tmp_path)
    doc = json.loads((d / "bundle.json").read_text())

    def with_doc(mut: Any) -> Path:
        dd = json.loads(json.dumps(doc))
        mut(dd)
        (d / "bundle.json").write_text(json.dumps(dd))
        return d

    with pytest.raises(BundleError, match="schema must be 'cardiowatch.bundle/2', got 'cardiowatch.bundle/1'"):
        load_bundle(with_doc(lambda x: x.update(schema="cardiowatch.bundle/1")))
    with pytest.raises(BundleError, match="kind must be one of"):
        load_bundle(with_doc(lambda x: x.update(kind="eeg")))
    with pytest.raises(BundleError, match="missing key runtimes.tflite-int8.threshold"):
        load_bundle(with_doc(lambda x: x["runtimes"]["tflite-int8"].pop("threshold")))
    with pytest.raises(BundleError, match="runtimes.keras.threshold must be finite"):
        load_bundle(with_doc(lambda x: x["runtimes"]["keras"].update(threshold=float("inf"))))
    with pytest.raises(BundleError, match="thresholds.fpr must be in"):
        load_bundle(with_doc(lambda x: x["thresholds"].update(fpr=1.0)))
    with pytest.raises(BundleError, match="missing key input.normaliser.center"):
        load_bundle(with_doc(lambda x: x["input"]["normaliser"].pop("center")))
    with pytest.raises(BundleError, match="bad normaliser: scale must be finite and > 0, got -1"):
        load_bundle(with_doc(lambda x: x["input"]["normaliser"].update(scale=-1)))
    with pytest.raises(BundleError, match=r"beat_spec.length must be 80, got 81"):
        load_bundle(with_doc(lambda x: x["input"]["beat_spec"].update(length=81)))
    with pytest.raises(BundleError, match=r"architecture \[timesteps, channels\] = \[80, 2\] does not match"):
        load_bundle(with_doc(lambda x: x["architecture"].update(channels=2)))
    with pytest.raises(BundleError, match=r"runtimes.tflite.file 'other.tflite' is not listed in files"):
        load_bundle(with_doc(lambda x: x["runtimes"]["tflite"].update(file="other.tflite")))
    with pytest.raises(BundleError, match=r"'\.\./x' is not a plain file name"):
        load_bundle(with_doc(lambda x: x["files"].update({"../x": "0" * 64})))
    with pytest.raises(BundleError, match="unknown runtime"):
        load_bundle(with_doc(lambda x: x["runtimes"].update(onnx=x["runtimes"]["keras"])))
    (d / "bundle.json").write_text("{not json")
    with pytest.raises(BundleError, match="bundle.json: not valid JSON"):
        load_bundle(d)
    (d / "bundle.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="expected a 'hr' bundle, got kind 'ecg'"):
        load_bundle(d, kind="hr")
    (d / "model_int8.tflite").write_bytes(b"garbage")
    with pytest.raises(BundleError, match=r"model_int8.tflite: sha256 does not match"):
        load_bundle(d, runtime="tflite-int8")
    (d / "model_int8.tflite").unlink()
    with pytest.raises(BundleError, match=r"bundle file missing: .*model_int8.tflite"):
        load_bundle(d, runtime="keras")
    with pytest.raises(ValueError, match="runtime must be one of"):
        load_bundle(bundle_dir, runtime="onnx")  # type: ignore[arg-type]


def test_extra_files_are_hash_checked(bundle_dir: Path, tmp_path: Path) -> None:
    d = _copy(bundle_dir, tmp_path)
    (d / "classifier.bin").write_bytes(b"tampered")
    with pytest.raises(BundleError, match=r"classifier.bin: sha256 does not match bundle.json files\['classifier.bin'\]"):
        read_meta(d)
    (d / "classifier.bin").unlink()
    with pytest.raises(BundleError, match=r"bundle file missing: .*classifier.bin"):
        load_bundle(d, runtime="tflite")


def test_hr_bundle_reader_checks_hashes(hr: Any, tmp_path: Path) -> None:
    # the schema-1 heart-rate reader checked no hashes; the one reader checks every kind's files
    d = _copy(hr.bundle, tmp_path)
    with open(d / "model.keras", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match=r"model.keras: sha256 does not match"):
        load_bundle(d, runtime="tflite", kind="hr")


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"calibration": np.zeros((0, 80, 3), np.float32)}, r"calibration must have shape \[n>0, 80, 3\]"),
        ({"calibration": np.zeros((5, 32, 2), np.float32)}, r"calibration must have shape"),
        ({"fpr": 1.0}, "fpr must be in"),
        ({"server_batch_size": 0}, "server_batch_size must be >= 1"),
        ({"extra_files": {"model.keras": b"x"}}, "is a model file name"),
        ({"extra_files": {"bundle.json": b"x"}}, "not a plain file name"),
        ({"extra_files": {"sub/x.bin": b"x"}}, "not a plain file name"),
        ({"extra": {"x": float("nan")}}, "Out of range float values are not JSON compliant"),
    ],
)
def test_write_validates(ecg: Any, tmp_path: Path, kw: dict[str, Any], match: str) -> None:
    with pytest.raises((ValueError, BundleError), match=match):
        _write(ecg, tmp_path / "b", **kw)
    assert list(tmp_path.iterdir()) == []


def test_write_rejects_a_detector_of_another_kind(ecg: Any, hr: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="detector scores with ECGScore, a 'hr' bundle needs HRScore"):
        write_bundle(tmp_path / "b", ecg.detector, hr.input_spec, calibration=hr.x_cal, fpr=0.05,
                     representative=hr.x_train, training_data_sha256="x", seed=0)
    with pytest.raises(ValueError, match=r"detector input shape \[32, 2\] does not match the hr input \[16, 2\]"):
        write_bundle(tmp_path / "b", hr.detector, HRInput(normaliser=hr.input_spec.normaliser, window_beats=16),
                     calibration=hr.x_cal, fpr=0.05, representative=hr.x_train, training_data_sha256="x", seed=0)
    assert not (tmp_path / "b").exists()


def test_shipped_bundles_load_with_their_thresholds() -> None:
    ecg = read_meta(SHIPPED_ECG)
    hr = read_meta(SHIPPED_HR)
    assert (ecg.kind, hr.kind) == ("ecg", "hr")
    assert isinstance(ecg.input, ECGInput) and isinstance(ecg.input.normaliser, Normaliser)
    assert isinstance(hr.input, HRInput) and isinstance(hr.input.normaliser, HRNormaliser)
    # both were trained by `cardiowatch train` on PhysioNet records; every runtime has its
    # own threshold, the ECG Keras one is the one the training run measured
    assert ecg.training_config["data"]["kind"] == "wfdb"
    assert ecg.threshold("keras") == ecg.metrics["threshold"]
    assert set(hr.training_config["records"]) == {"nsr2db", "chf2db", "ltafdb", "mitdb-ds1", "svdb"}
    assert hr.extra["af_detector"]["file"] in hr.extra_files
    for meta in (ecg, hr):
        assert set(meta.runtimes) == {"keras", "tflite", "tflite-int8"}
        assert all(0 < meta.threshold(r) < 10 for r in meta.runtimes)
    assert ecg.server is not None
    b = load_bundle(SHIPPED_HR, runtime="tflite", kind="hr")
    assert b.threshold == hr.threshold("tflite")


# ---------------------------------------------------------------- update_extras
def _sha(p: Path) -> str:
    import hashlib

    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_update_extras_adds_and_replaces_files_and_sections(bundle_dir: Path, tmp_path: Path) -> None:
    d = _copy(bundle_dir, tmp_path)
    before = read_meta(d)
    src = tmp_path / "vf.npz"
    src.write_bytes(b"vf weights")
    meta = update_extras(d, files={"vf_detector.npz": src, "classifier.bin": b"new weights"},
                         extra={"vf_detector": {"file": "vf_detector.npz", "threshold": 0.5}})
    assert meta == read_meta(d)  # what it returns is what is on disk, hashes checked
    assert (d / "vf_detector.npz").read_bytes() == b"vf weights"
    assert (d / "classifier.bin").read_bytes() == b"new weights"
    for name in ("vf_detector.npz", "classifier.bin", "notes.txt", *MODEL_FILES):
        assert meta.files[name] == _sha(d / name)
    # other sections of extra are kept; the given top-level keys replaced or added
    assert meta.extra == {**before.extra, "vf_detector": {"file": "vf_detector.npz", "threshold": 0.5}}
    assert meta.extra_files == ("classifier.bin", "notes.txt", "vf_detector.npz")
    # models and thresholds untouched
    assert (meta.runtimes, meta.server, meta.input, meta.created) == (before.runtimes, before.server,
                                                                     before.input, before.created)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "vf.npz"]  # no temp folder left
    update_extras(d, extra={"vf_detector": {"file": "vf_detector.npz", "threshold": 0.7}})
    assert read_meta(d).extra["vf_detector"]["threshold"] == 0.7


def test_update_extras_is_atomic(bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import models.bundle as mb

    d = _copy(bundle_dir, tmp_path)
    before = {p.name: p.read_bytes() for p in d.iterdir()}

    def boom(tmp: Path, out: Path) -> None:
        assert (tmp / "vf_detector.npz").is_file()  # the new bundle was complete
        raise OSError("killed before the rename")

    monkeypatch.setattr(mb, "_swap_into_place", boom)
    with pytest.raises(OSError, match="killed"):
        update_extras(d, files={"vf_detector.npz": b"x"}, extra={"vf_detector": {}})
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


@pytest.mark.parametrize(("files", "extra", "match"), [
    ({"model_int8.tflite": b"x"}, None, "is a model file of the bundle"),
    ({"bundle.json": b"x"}, None, "not a plain file name"),
    ({"../x.bin": b"x"}, None, "not a plain file name"),
    (None, {"x": float("nan")}, "extra must be JSON-serialisable"),
])
def test_update_extras_validates(bundle_dir: Path, tmp_path: Path, files: Any, extra: Any, match: str) -> None:
    d = _copy(bundle_dir, tmp_path)
    before = read_meta(d)
    with pytest.raises(BundleError, match=match):
        update_extras(d, files=files, extra=extra)
    assert read_meta(d) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_update_extras_refuses_a_corrupt_bundle(bundle_dir: Path, tmp_path: Path) -> None:
    d = _copy(bundle_dir, tmp_path)
    (d / "notes.txt").write_text("tampered")
    with pytest.raises(BundleError, match="notes.txt: sha256 does not match"):
        update_extras(d, files={"vf_detector.npz": b"x"})
    assert not (d / "vf_detector.npz").exists()
