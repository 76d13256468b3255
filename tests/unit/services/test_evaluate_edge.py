"""`cardiowatch evaluate` and `cardiowatch edge run` on WFDB records written from the
synthetic generator (the PhysioNet records are not needed for these checks)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.synthetic import Event, synth_ecg, write_wfdb
from services.settings import DEFAULT_MODEL_DIR, REPO_ROOT


def write_record(folder: Path, name: str, fs: int, events, seed: int, duration_s: float = 180.0):
    rec = synth_ecg(duration_s, fs, seed=seed, events=events)
    write_wfdb(rec, folder, name)
    return rec


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wfdb")
    write_record(folder, "s101", 360, [Event("pvc", 40), Event("pvc", 75), Event("vrun", 120, 5)], seed=101)
    write_record(folder, "s102", 250, [], seed=102)
    return folder


def test_evaluate_heart_rate_stream_reports_hr_alerts(tmp_path):
    from services.evaluate import evaluate

    folder = tmp_path / "hr"
    folder.mkdir()
    write_record(folder, "t201", 250, [Event("tachy", 30, 120, {"hr_bpm": 150})], seed=201)
    rep = evaluate(folder, tmp_path / "r.json", tmp_path / "s", DEFAULT_MODEL_DIR, "both", None)
    alerts = rep["records"]["t201"]["alerts"]
    tachy = [a for a in alerts if a["condition"] == "tachycardia"]
    assert tachy and tachy[0]["stream"] == "hr"
    assert 30 <= tachy[0]["raised_s"] <= 30 + 5 + 30 + 10  # ramp, sustain 30 s, pipeline lag


def test_evaluate_writes_report_scores_and_plots(records, tmp_path):
    from services.evaluate import EVALUATION_SCHEMA, SCORE_COLUMNS, evaluate

    out, scores, plots = tmp_path / "report.json", tmp_path / "scores", tmp_path / "plots"
    evaluate(records, out, scores, DEFAULT_MODEL_DIR, "ecg", plots)
    rep = json.loads(out.read_text())
    assert rep["schema"] == EVALUATION_SCHEMA
    assert rep["model"]["name"] and rep["model"]["version"]
    assert set(rep["records"]) == {"s101", "s102"}
    r = rep["records"]["s101"]
    # QRS detection on clean synthetic ECG is essentially perfect; a beat within 0.24 s of
    # the record's start or 0.40 s of its end has no full window and is not emitted.
    assert r["fn"] <= 2 and r["qrs_ppv"] >= 0.995
    assert r["auroc"]["V_vs_N"] > 0.9
    raised = r["alerts"]
    assert any(a["condition"] == "ventricular_run" and abs(a["onset_s"] - 120) < 5 for a in raised), raised
    assert all(set(a) >= {"stream", "condition", "priority", "onset_s", "raised_s"} for a in raised)
    assert not [a for a in rep["records"]["s102"]["alerts"] if a["category"] == "physiological"]
    with open(scores / "s101.csv") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == SCORE_COLUMNS and rows[0][:3] == ["time_s", "score", "flagged"]
    assert {row[3] for row in rows[1:]} <= {"N", "S", "V", "F", "Q", "X"}  # the bundle has a classifier
    assert len(rows) - 1 == r["tp"] + r["fp"]  # one row per detected beat
    assert (plots / "s101_scores.png").stat().st_size > 1000
    assert rep["pooled"]["auroc"]["V_vs_N"] is not None


def test_edge_runner_never_imports_tensorflow(records):
    model = DEFAULT_MODEL_DIR / "model_int8.tflite"
    code = (
        "import sys, json; from pathlib import Path; from services.edge import run_edge; "
        f"s = run_edge(Path({str(model)!r}), Path({str(records / 's101')!r}), quiet=True); "
        "s['tf_in_modules'] = any(m == 'tensorflow' or m.startswith(('tensorflow.', 'tf_keras', 'keras')) "
        "for m in sys.modules); print(json.dumps(s))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    s = json.loads(out.stdout.strip().splitlines()[-1])
    assert s["tf_in_modules"] is False
    assert s["beats"] > 150 and s["alerts_raised"] >= 1
    assert s["model_size_kb"] > 0


def test_edge_cli_prints_alerts_as_they_happen(records):
    model = DEFAULT_MODEL_DIR / "model_float32.tflite"
    out = subprocess.run([sys.executable, "-m", "services.cli", "edge", "run", "--model", str(model),
                          "--record", str(records / "s101")], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert any("ventricular_run" in ln and ln.startswith("[edge]") for ln in lines), lines
    summary = json.loads(lines[-1])
    assert summary["tensorflow_imported"] is False


def test_simulate_writes_wfdb_records_with_reference_beats(tmp_path):
    from models.records import list_records, load_record

    out = subprocess.run([sys.executable, "-m", "services.cli", "simulate", "--write-records",
                          str(tmp_path), "--patients", "2", "--seconds", "120"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert list_records(tmp_path) == ["p0001", "p0002"]
    rec = load_record(tmp_path, "p0001")
    assert rec.sample_rate_hz == 250 and len(rec.signal_mv) == 120 * 250
    classes = list(rec.aami_classes)
    assert classes.count("V") >= 3 + 3  # isolated PVCs plus the ventricular run
    assert classes.count("N") > 100
