"""Benchmark of :class:`models.beats.ECGFrontEnd` per-chunk cost, as in the worker's hot path.

Many synthetic patients stream 1 s chunks round-robin (state kept per patient between
chunks, like the per-patient table in the Faust worker); after a warm-up that fills the
segmenter buffers, each ``process`` call is timed with ``time.perf_counter``.

Run ``python -m models.bench_frontend`` (prints JSON: median / p90 microseconds per chunk).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from models.beats import ECGFrontEnd
from models.synthetic import Event, synth_ecg

__all__ = ["bench_front_end"]


def _patient_events(i: int) -> list[Event]:
    kinds = (
        [],
        [Event("pvc", 9.0), Event("pvc", 14.0)],
        [Event("pause", 11.0, 3.0)],
        [Event("tachy", 8.0, 10.0)],
        [Event("motion", 12.0, 2.0, {"amplitude_mv": 0.5})],
        [Event("afib", 8.0, 10.0)],
    )
    return kinds[i % len(kinds)]


def bench_front_end(
    n_patients: int = 300,
    measured_s: int = 10,
    warmup_s: int = 8,
    sample_rate_hz: float = 250.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Time ``ECGFrontEnd.process`` on 1 s chunks from many patients.

    Parameters
    ----------
    n_patients
        Synthetic patients streamed round-robin.
    measured_s
        Timed chunks (seconds of stream) per patient, after the warm-up.
    warmup_s
        Untimed chunks per patient first (fill buffers, caches).
    sample_rate_hz
        Raw input rate.
    seed
        Base seed of the synthetic patients.

    Returns
    -------
    dict
        ``chunks``, ``median_us``, ``p90_us``, ``mean_us``, ``beats`` (emitted in the
        timed part) and ``state_bytes_median`` (size of ``FrontEndState.to_bytes()``).
    """
    if n_patients < 1 or measured_s < 1 or warmup_s < 0:
        raise ValueError(
            f"n_patients, measured_s must be >= 1 and warmup_s >= 0, "
            f"got {n_patients}, {measured_s}, {warmup_s}"
        )
    fs = float(sample_rate_hz)
    chunk = int(round(fs))
    total_s = warmup_s + measured_s
    fe = ECGFrontEnd(fs)
    signals = [
        synth_ecg(total_s + 1, fs, hr_bpm=50 + (i * 7) % 60, seed=seed + i,
                  events=_patient_events(i), noise_mv=0.03).signal_mv
        for i in range(n_patients)
    ]
    states = [fe.initial_state() for _ in range(n_patients)]
    times: list[float] = []
    n_beats = 0
    for sec in range(total_s):
        for p in range(n_patients):
            x = signals[p][sec * chunk : (sec + 1) * chunk]
            t0 = time.perf_counter()
            res, states[p] = fe.process(states[p], x)
            dt = time.perf_counter() - t0
            if sec >= warmup_s:
                times.append(dt)
                n_beats += len(res.beats)
    us = np.asarray(times) * 1e6
    sizes = [len(s.to_bytes()) for s in states]
    return {
        "chunks": int(us.shape[0]),
        "patients": n_patients,
        "sample_rate_hz": fs,
        "median_us": round(float(np.median(us)), 1),
        "p90_us": round(float(np.percentile(us, 90)), 1),
        "mean_us": round(float(us.mean()), 1),
        "beats": n_beats,
        "state_bytes_median": int(np.median(sizes)),
        "state_bytes_max": int(np.max(sizes)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=300)
    ap.add_argument("--measured-s", type=int, default=10)
    ap.add_argument("--warmup-s", type=int, default=8)
    ap.add_argument("--rate-hz", type=float, default=250.0)
    a = ap.parse_args()
    print(json.dumps(bench_front_end(a.patients, a.measured_s, a.warmup_s, a.rate_hz)))


if __name__ == "__main__":
    main()
