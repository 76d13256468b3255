"""`cardiowatch bench core` runs and reports sane numbers (a smoke test, not a timing)."""

from __future__ import annotations

from services.bench_core import run
from services.settings import DEFAULT_MODEL_DIR


def test_bench_core_reports_per_chunk_cost():
    r = run(patients=4, seconds=3, warmup_s=4, model=DEFAULT_MODEL_DIR, runtime="tflite")
    assert r["chunks"] == 12
    assert r["beats"] > 5  # ~1 beat per second per patient
    assert r["us_per_chunk"] > 0 and r["chunks_per_s"] > 0
