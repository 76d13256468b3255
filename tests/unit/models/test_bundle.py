"""Model bundle: atomic write, load per runtime, BundleError cases."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import models.export
from models.bundle import BUNDLE_SCHEMA, BundleError, load_bundle, read_meta, write_bundle
from models.detector import LSTMAutoencoder, Normaliser, make_model_input

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def trained() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, 80)
    w = np.exp(-((t - 0.375) / 0.03) ** 2)[None, :] * rng.uniform(0.8, 1.2, (400, 1)) + 0.02 * rng.standard_normal((400, 80))
    rr = np.exp(0.05 * rng.standard_normal((400, 2)))
    norm = Normaliser.fit(w)
    x = make_model_input(w, rr, norm)
    det = LSTMAutoencoder(enc_units=4, latent_units=2, dec_units=4, version="9.9.9")
    det.fit(x[:300], x[300:], epochs=1, batch_size=64, seed=0, progress=False)
    det.infer_threshold(x[300:], 0.05)
    return {"det": det, "norm": norm, "x": x}


def _write(trained: dict[str, Any], out: Path, **kw: Any) -> Path:
    return write_bundle(out, trained["det"], trained["norm"], threshold_fpr=0.05, training_data_sha256="ab" * 32, seed=0,
                        representative=trained["x"][:100], metrics={"auroc_V_vs_N": 0.5}, **kw)


@pytest.fixture(scope="module")
def bundle_dir(trained: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write(trained, tmp_path_factory.mktemp("b") / "bundle", server_batch_size=16)


def test_layout_and_meta(bundle_dir: Path, trained: dict[str, Any]) -> None:
    names = sorted(p.name for p in bundle_dir.iterdir())
    assert names == ["bundle.json", "model.keras", "model_float32.tflite", "model_float32_server.tflite", "model_int8.tflite"]
    doc = json.loads((bundle_dir / "bundle.json").read_text())
    assert doc["schema"] == BUNDLE_SCHEMA
    assert doc["beat_spec"] == {"rate_hz": 125, "pre_s": 0.24, "post_s": 0.40, "length": 80}
    assert doc["thresholds"] == {"operating": trained["det"].threshold, "fpr": 0.05}
    assert set(doc["library_versions"]) == {"tensorflow", "tf-keras", "numpy", "scipy", "ai-edge-litert"}
    assert doc["training_config"]["enc_units"] == 4 and doc["seed"] == 0
    assert set(doc["metrics"]["size_kb"]) == {"model.keras", "model_float32.tflite", "model_int8.tflite", "model_float32_server.tflite"}
    for ops in doc["metrics"]["tflite_ops"].values():
        assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in ops and not any(o.startswith("Flex") for o in ops)
    meta = read_meta(bundle_dir)
    assert meta.version == "9.9.9" and meta.normaliser == trained["norm"]


@pytest.mark.parametrize("runtime", ["keras", "tflite", "tflite-int8"])
def test_load_each_runtime(bundle_dir: Path, trained: dict[str, Any], runtime: str) -> None:
    b = load_bundle(bundle_dir, runtime=runtime)  # type: ignore[arg-type]
    assert b.detector.threshold == trained["det"].threshold and b.detector.version == "9.9.9"
    s = b.detector.score(trained["x"][:20])
    ref = trained["det"].score(trained["x"][:20])
    if runtime == "keras":
        np.testing.assert_array_equal(s, ref)
    elif runtime == "tflite":
        np.testing.assert_allclose(s, ref, rtol=1e-4, atol=1e-6)
    else:
        # 1-epoch 4-unit model: int8 only has to track the float scores here; the int8
        # accuracy test is in test_export_parity.py.
        assert s.shape == ref.shape and np.all(np.isfinite(s)) and np.corrcoef(s, ref)[0, 1] > 0.7


def test_server_export_matches_edge(bundle_dir: Path, trained: dict[str, Any]) -> None:
    edge = load_bundle(bundle_dir, runtime="tflite").detector
    server = load_bundle(bundle_dir, runtime="tflite", server=True).detector
    assert getattr(server, "batch_size") == 16
    x = trained["x"][:37]  # not a multiple of the batch: padding path
    np.testing.assert_allclose(server.score(x), edge.score(x), rtol=1e-5, atol=1e-7)


def test_tflite_load_imports_no_tensorflow(bundle_dir: Path) -> None:
    code = (
        "import sys, numpy as np; from models.bundle import load_bundle;"
        f"b = load_bundle({str(bundle_dir)!r}, runtime='tflite-int8');"
        "b.detector.score(np.zeros((2, 80, 3), np.float32));"
        "assert 'tensorflow' not in sys.modules and 'tf_keras' not in sys.modules, 'TF imported'"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


def test_failure_mid_write_leaves_no_partial_bundle(trained: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a: Any, **k: Any) -> Any:
        raise RuntimeError("disk full")

    monkeypatch.setattr(models.export, "export_tflite", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        _write(trained, tmp_path / "new", server_batch_size=None)
    assert list(tmp_path.iterdir()) == []  # neither the bundle nor a temp folder


def test_failed_overwrite_keeps_old_bundle(bundle_dir: Path, trained: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "bundle"
    shutil.copytree(bundle_dir, target)
    before = read_meta(target)
    monkeypatch.setattr(models.export, "export_tflite", lambda *a, **k: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError, match="killed"):
        _write(trained, target)
    assert read_meta(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_overwrite_replaces(bundle_dir: Path, trained: dict[str, Any], tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    shutil.copytree(bundle_dir, target)
    _write(trained, target, server_batch_size=None)
    assert not (target / "model_float32_server.tflite").exists()
    assert read_meta(target).server_batch_size is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def _copy(bundle_dir: Path, tmp_path: Path) -> Path:
    d = tmp_path / "b"
    shutil.copytree(bundle_dir, d)
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

    with pytest.raises(BundleError, match="schema must be"):
        load_bundle(with_doc(lambda x: x.update(schema="other/2")))
    with pytest.raises(BundleError, match="missing key thresholds.operating"):
        load_bundle(with_doc(lambda x: x["thresholds"].pop("operating")))
    with pytest.raises(BundleError, match="thresholds.fpr must be in"):
        load_bundle(with_doc(lambda x: x["thresholds"].update(fpr=1.0)))
    with pytest.raises(BundleError, match="bad normaliser: scale must be finite and > 0, got -1"):
        load_bundle(with_doc(lambda x: x["normaliser"].update(scale=-1)))
    (d / "bundle.json").write_text("{not json")
    with pytest.raises(BundleError, match="bundle.json: not valid JSON"):
        load_bundle(d)
    (d / "bundle.json").write_text(json.dumps(doc))
    (d / "model_int8.tflite").write_bytes(b"garbage")
    with pytest.raises(BundleError, match=r"model_int8.tflite: sha256 does not match"):
        load_bundle(d, runtime="tflite-int8")
    (d / "model_int8.tflite").unlink()
    with pytest.raises(BundleError, match=r"bundle file missing: .*model_int8.tflite"):
        load_bundle(d, runtime="keras")
    with pytest.raises(ValueError, match="runtime must be one of"):
        load_bundle(bundle_dir, runtime="onnx")  # type: ignore[arg-type]


def test_write_needs_threshold(trained: dict[str, Any], tmp_path: Path) -> None:
    det = LSTMAutoencoder(enc_units=4, latent_units=2, dec_units=4)
    det._set_model(trained["det"].keras_model)
    with pytest.raises(ValueError, match="no threshold"):
        write_bundle(tmp_path / "b", det, trained["norm"], 0.05, "x", 0, trained["x"][:10])
    assert not (tmp_path / "b").exists()
