"""Edge runner: offline detection on a wearable or gateway with only the TFLite runtime.

``cardiowatch edge run --model BUNDLE/model_int8.tflite --record DIR/NAME`` runs the same
preprocessing, beat segmentation, scoring and alert policy as the streaming worker
(:mod:`services.replay` over :mod:`streaming.pipeline`), scoring with
``ai_edge_litert`` only. TensorFlow is never imported (a test checks ``sys.modules``).
The ``.tflite`` file's folder must hold the bundle's ``bundle.json`` (beat window,
normaliser, and this file's own threshold); every file hash is checked first.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from models.bundle import load_tflite_file
from streaming.events import AlertEvent

from services.pipelines import build_ecg_pipeline, build_policy
from services.replay import BASE_TS_MS, replay
from services.simulator import RecordSource
from models.cli_help import HelpFormatter

__all__ = ["main", "run_edge"]


def run_edge(model: Path, record: Path, policy_file: Path | None = None, threads: int = 1,
             quiet: bool = False) -> dict:
    bundle = load_tflite_file(model, num_threads=threads, kind="ecg")
    det = bundle.detector
    ecg = build_ecg_pipeline(bundle, build_policy(policy_file))
    src = RecordSource(record.parent, record.name)

    def show(_res, _scores, alerts: list[AlertEvent], _chunks: int) -> None:
        if quiet:
            return
        for a in alerts:
            t = (a.detected_ts_ms - BASE_TS_MS) / 1000.0
            onset = (a.onset_ts_ms - BASE_TS_MS) / 1000.0
            print(f"[edge] t={t:8.1f}s {a.action:<9} {a.priority.upper():<6} {a.condition:<20} "
                  f"onset {onset:.1f}s  {a.rule}", flush=True)

    t0 = time.perf_counter()
    res = replay(src, f"edge-{record.name}", ecg, None, on_batch=show, chunks_per_batch=1)
    wall = time.perf_counter() - t0
    # Latency of the model alone, one beat per invoke as on a device (an LSTM's cost
    # does not depend on the values, so a zero beat of the bundle's shape is enough).
    x1 = np.zeros((1, bundle.meta.architecture.timesteps, bundle.meta.architecture.channels), dtype=np.float32)
    for _ in range(20):
        det.score(x1)
    n_timed, t1 = 200, time.perf_counter()
    for _ in range(n_timed):
        det.score(x1)
    lat = (time.perf_counter() - t1) / n_timed
    summary = {
        "record": record.name,
        "model": str(model),
        "model_size_kb": round(model.stat().st_size / 1024, 1),
        "runtime": bundle.runtime,
        "threshold": bundle.threshold,
        "beats": len(res.scored),
        "flagged": sum(s.flagged for s in res.scored),
        "alerts_raised": sum(a.action == "raised" for a in res.alerts),
        "signal_s": round(res.chunks * 1.0, 1),
        "wall_s": round(wall, 2),
        "realtime_factor": round(res.chunks / wall, 1) if wall else None,
        "model_latency_per_beat_ms": round(lat * 1000, 3),
        "pipeline_ms_per_beat": round(1000 * wall / max(1, len(res.scored)), 3),
        "threads": threads,
        "tensorflow_imported": "tensorflow" in sys.modules,
    }
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cardiowatch edge run", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="a .tflite file inside a model bundle folder")
    p.add_argument("--record", type=Path, required=True, help="WFDB record path without extension")
    p.add_argument("--policy", type=Path, help="alert policy YAML (default: built-in)")
    p.add_argument("--threads", type=int, default=1, help="TFLite interpreter threads")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    a = p.parse_args(argv)
    if a.model.suffix != ".tflite" or not a.model.is_file():
        p.error(f"--model must be an existing .tflite file, got {a.model}")
    if not a.record.with_suffix(".hea").is_file():
        p.error(f"--record must name a WFDB record (found no {a.record.with_suffix('.hea')})")
    print(json.dumps(run_edge(a.model, a.record, a.policy, a.threads, a.quiet)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
