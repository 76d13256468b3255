"""Benchmark: the stream core alone (no Kafka, no Faust), per 1 s ECG chunk.

``cardiowatch bench core --patients N --seconds S --json`` feeds N synthetic 250 Hz
patients through :class:`~streaming.pipeline.ECGPipeline` in batches of one chunk per
patient, after a warm-up, and reports the wall time per chunk, state serialisation
included. With ``bench stream`` (the same core inside the Faust worker on the real
broker) it shows how much of the streaming cost is the core itself.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from models.synthetic import SyntheticPatient
from streaming.pipeline import InMessage

from services.pipelines import build_ecg_pipeline, build_policy, load_ecg_bundle
from services.settings import DEFAULT_MODEL_DIR
from services.simulator import Wearable, patient_ids
from models.cli_help import HelpFormatter

__all__ = ["main", "run"]

T0 = 1_767_225_600_000


def run(patients: int, seconds: int, warmup_s: int, model: Path, runtime: str) -> dict:
    pipe = build_ecg_pipeline(load_ecg_bundle(model, runtime), build_policy(None))
    ws = [Wearable(pid, f"dev-{pid}", SyntheticPatient(pid, 250), T0) for pid in patient_ids(patients)]

    def second(k: int) -> list[InMessage]:
        return [InMessage(w.patient_id.encode(), w.step()[0], 0, k) for w in ws]

    states: dict = {}
    for k in range(warmup_s):
        states.update(pipe.process(second(k), states).states)
    batches = [second(k) for k in range(warmup_s, warmup_s + seconds)]
    t = time.perf_counter()
    beats = 0
    for msgs in batches:
        r = pipe.process(msgs, states)
        states.update(r.states)
        beats += len(r.scored)
        for st in r.states.values():
            st.to_bytes(pipe.policy)
    el = time.perf_counter() - t
    chunks = patients * seconds
    return {"patients": patients, "chunks": chunks, "beats": beats, "runtime": runtime,
            "us_per_chunk": round(el / chunks * 1e6, 1), "chunks_per_s": round(chunks / el, 1),
            "warmup_s": warmup_s, "cpu_count": os.cpu_count()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cardiowatch bench core", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--patients", type=int, default=300, help="simulated patients")
    p.add_argument("--seconds", type=int, default=10, help="measured chunks per patient")
    p.add_argument("--warmup-s", type=int, default=12, help="chunks per patient before measuring")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="ECG model bundle")
    p.add_argument("--runtime", default="keras", choices=["keras", "tflite", "tflite-int8"], help="model runtime")
    p.add_argument("--json", action="store_true", help="print one JSON line instead of indented JSON")
    a = p.parse_args(argv)
    if a.patients < 1 or a.seconds < 1:
        p.error(f"--patients and --seconds must be >= 1, got {a.patients} and {a.seconds}")
    print(json.dumps(run(a.patients, a.seconds, a.warmup_s, a.model, a.runtime),
                     indent=None if a.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
