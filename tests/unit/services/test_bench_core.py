"""`cardiowatch bench core` runs and reports sane numbers (a smoke test, not a timing)."""

from __future__ import annotations

from services.bench_core import run
from services.settings import DEFAULT_MODEL_DIR


def test_bench_core_reports_per_chunk_cost():
    r = run(patients=4, seconds=3, warmup_s=4, model=DEFAULT_MODEL_DIR, runtime="tflite")
    assert r["chunks"] == 12
    assert r["beats"] > 5  # ~1 beat per second per patient
    assert r["us_per_chunk"] > 0 and r["chunks_per_s"] > 0


def test_bench_core_codec_reports_bytes_and_codec_times():
    from services.bench_core import run_codec

    r = run_codec(patients=2, seconds=4, warmup_s=8, model=DEFAULT_MODEL_DIR, runtime="tflite")
    assert r["patient_seconds"] == 8
    wire = r["ecg_topic_bytes_per_patient_s"]
    assert 500 < wire["ecg/2"] < 600 < 1400 < wire["ecg/1"]  # 1 s of one lead at 250 Hz
    log = r["changelog_bytes_per_patient_s"]
    assert abs(log["total"] - log["ecg"] - log["hr"]) < 0.2 and 0 < log["total"] < 4000
    assert set(r["cpu_us"]) >= {"decode ecg/1 chunk", "decode ecg/2 chunk", "ecg state encode", "ecg state decode"}
    assert all(v > 0 for v in r["cpu_us"].values())
