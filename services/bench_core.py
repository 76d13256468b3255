"""Benchmark: the stream core alone (no Kafka, no Faust), per 1 s ECG chunk.

``cardiowatch bench core --patients N --seconds S --json`` feeds N synthetic 250 Hz
patients through :class:`~streaming.pipeline.ECGPipeline` in batches of one chunk per
patient, after a warm-up, and reports the wall time per chunk, state serialisation
included. With ``bench stream`` (the same core inside the Faust worker on the real
broker) it shows how much of the streaming cost is the core itself.

``--codec`` measures the bytes instead: what each patient costs per second on the raw ECG
topic (``cardiowatch.ecg/1`` JSON against ``cardiowatch.ecg/2`` binary) and on the two
state changelogs, and the CPU time per chunk of the decoders and encoders on the hot
path (wire decode, state encode and decode, score records). Times are thread CPU time,
the best of several repeats, so that other work on the machine inflates them less. It
uses only interfaces older trees have too, so the same file measures a checkout from
before these codecs::

    cd OLD_CHECKOUT && PYTHONPATH=$PWD python NEW_CHECKOUT/services/bench_core.py --codec --json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from models.synthetic import SyntheticPatient
from streaming.pipeline import ECGPatientState, HRPatientState, InMessage
from streaming.schemas import decode_ecg

from services.pipelines import build_ecg_pipeline, build_policy, load_ecg_bundle
from services.settings import DEFAULT_MODEL_DIR
from services.simulator import Wearable, patient_ids
from models.cli_help import HelpFormatter

__all__ = ["main", "run", "run_codec"]

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


def _cpu_us(f: Callable[[], Any], n: int = 50, repeats: int = 7) -> float:
    """Thread CPU time of one call of ``f`` in µs, the best of ``repeats`` runs of ``n``."""
    best = float("inf")
    for _ in range(repeats):
        t = time.thread_time()
        for _ in range(n):
            f()
        best = min(best, (time.thread_time() - t) / n)
    return round(best * 1e6, 1)


def _record_source(path: Path) -> Any:
    from services.simulator import RecordSource

    return RecordSource(path.parent, path.name)


def run_codec(patients: int, seconds: int, warmup_s: int, model: Path, runtime: str,
              record: Path | None = None, tick_interval_s: float = 5.0) -> dict:
    """Bytes per patient-second and codec CPU time per chunk (see the module docstring).

    ``patients`` synthetic 250 Hz wearables (or one replaying ``record``, a WFDB record
    path without extension) run through the ECG and heart-rate cores one chunk per
    patient per batch, as the worker does at this load; every state written is measured.
    The worker also rewrites every ECG state each ``tick_interval_s``, which the
    changelog figure includes."""
    from services.pipelines import build_hr_pipeline
    from services.settings import DEFAULT_HR_MODEL_DIR

    try:  # a tree from before the binary wire format has none
        from streaming.schemas import encode_ecg2
    except ImportError:
        encode_ecg2 = None
    policy = build_policy(None)
    pipe = build_ecg_pipeline(load_ecg_bundle(model, runtime), policy)
    hr = build_hr_pipeline(DEFAULT_HR_MODEL_DIR, policy, "tflite" if runtime != "keras" else "keras")
    if record is not None:
        ws = [Wearable("rec", "dev-rec", _record_source(record), T0)]
    else:
        ws = [Wearable(pid, f"dev-{pid}", SyntheticPatient(pid, 250), T0) for pid in patient_ids(patients)]
    es: dict = {}
    hs: dict = {}
    wire1: list[int] = []
    wire2: list[int] = []
    ecg_state: list[int] = []
    hr_state: list[int] = []
    hr_msgs = 0
    last: tuple[str, bytes, bytes | None] = ("", b"", None)
    for k in range(warmup_s + seconds):
        em, hm = [], []
        for w in ws:
            e, h = w.step()
            if e is None:
                continue
            em.append(InMessage(w.patient_id.encode(), e, 0, k))
            if h is not None:
                hm.append(InMessage(w.patient_id.encode(), h, 0, w.hr_seq - 1))
            last = (w.patient_id, e, h)
        if not em:
            break
        r = pipe.process(em, es)
        es.update(r.states)
        rh = hr.process(hm, hs)
        hs.update(rh.states)
        if k < warmup_s:
            continue
        for m in em:
            wire1.append(len(m.value or b""))
            if encode_ecg2 is not None:
                c = decode_ecg(m.value, m.key)
                wire2.append(len(encode_ecg2(c.patient_id, c.device_id, c.seq, c.ts_ms, c.sample_rate_hz,
                                             c.samples_mv, c.leads)))
        ecg_state += [len(st.to_bytes(policy)) for st in r.states.values()]
        hr_state += [len(st.to_bytes(policy)) for st in rh.states.values()]
        hr_msgs += len(hm)
    measured = len(wire1)  # patient-seconds measured
    ecg_b, hr_b = float(np.mean(ecg_state)), float(np.mean(hr_state)) if hr_state else 0.0
    # per patient-second: one ECG state per chunk, again at every tick; one HR state per
    # heart-rate message (ECG patients' HR states are not ticked)
    ecg_ps = ecg_b * (1 + 1 / tick_interval_s)
    hr_ps = sum(hr_state) / measured
    pid, e1, h1 = last
    st_e = es[pid]
    raw_e = st_e.to_bytes(policy)
    st_h = hs.get(pid)
    raw_h = st_h.to_bytes(policy) if st_h is not None else None
    key = pid.encode()
    res: dict[str, Any] = {
        "source": str(record) if record is not None else f"synthetic 250 Hz x {patients}",
        "patient_seconds": measured,
        "ecg_topic_bytes_per_patient_s": {"ecg/1": round(float(np.mean(wire1)), 1),
                                          "ecg/2": round(float(np.mean(wire2)), 1) if wire2 else None},
        "hr_messages_per_patient_s": round(hr_msgs / measured, 3),
        "state_bytes_per_write": {"ecg": round(ecg_b, 1), "hr": round(hr_b, 1),
                                  "ecg_p95": float(np.percentile(ecg_state, 95))},
        "changelog_bytes_per_patient_s": {"ecg": round(ecg_ps, 1), "hr": round(hr_ps, 1),
                                          "total": round(ecg_ps + hr_ps, 1),
                                          "tick_interval_s": tick_interval_s},
        "cpu_us": {
            "decode ecg/1 chunk": _cpu_us(lambda: decode_ecg(e1, key)),
            "ecg state encode": _cpu_us(lambda: st_e.to_bytes(policy)),
            "ecg state decode": _cpu_us(lambda: ECGPatientState.from_bytes(raw_e, policy)),
        },
    }
    cpu = res["cpu_us"]
    if encode_ecg2 is not None:
        c = decode_ecg(e1, key)
        e2 = encode_ecg2(c.patient_id, c.device_id, c.seq, c.ts_ms, c.sample_rate_hz, c.samples_mv, c.leads)
        cpu["decode ecg/2 chunk"] = _cpu_us(lambda: decode_ecg(e2, key))
    if h1 is not None:
        from streaming.schemas import decode_hr

        cpu["decode hr/1 sample"] = _cpu_us(lambda: decode_hr(h1, key))
    if st_h is not None and raw_h is not None:
        cpu["hr state encode"] = _cpu_us(lambda: st_h.to_bytes(policy))
        cpu["hr state decode"] = _cpu_us(lambda: HRPatientState.from_bytes(raw_h, policy))
    if r.scored:
        cpu["score record encode"] = _cpu_us(r.scored[-1].to_json, n=200)
    res["cpu_count"] = os.cpu_count()
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cardiowatch bench core", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--patients", type=int, default=300, help="simulated patients")
    p.add_argument("--seconds", type=int, default=10, help="measured chunks per patient")
    p.add_argument("--warmup-s", type=int, default=12, help="chunks per patient before measuring")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="ECG model bundle")
    p.add_argument("--runtime", default="keras", choices=["keras", "tflite", "tflite-int8"], help="model runtime")
    p.add_argument("--json", action="store_true", help="print one JSON line instead of indented JSON")
    p.add_argument("--codec", action="store_true",
                   help="measure bytes per patient-second (wire, changelogs) and codec CPU time instead")
    p.add_argument("--record", type=Path, help="--codec: replay this WFDB record (path without extension)")
    a = p.parse_args(argv)
    if a.patients < 1 or a.seconds < 1:
        p.error(f"--patients and --seconds must be >= 1, got {a.patients} and {a.seconds}")
    if a.record is not None and not a.codec:
        p.error("--record goes with --codec")
    if a.codec:
        out = run_codec(a.patients, a.seconds, a.warmup_s, a.model, a.runtime, a.record)
    else:
        out = run(a.patients, a.seconds, a.warmup_s, a.model, a.runtime)
    print(json.dumps(out, indent=None if a.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
