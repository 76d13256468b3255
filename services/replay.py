"""Replay: a record driven through the worker's own stream cores without Kafka.

The evaluator and the edge runner use this to feed a record, chunk by chunk, as the
exact wire messages a wearable sends (:class:`services.simulator.Wearable`) into the
same :class:`~streaming.pipeline.ECGPipeline` and :class:`~streaming.pipeline.HRPipeline`
the Faust agents call.

An RR-only source (:class:`services.simulator.RRSource`: an annotation-only record)
sends heart-rate messages only, through the heart-rate core alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from streaming.events import AlertEvent, HRObservation, ScoredBeat
from streaming.pipeline import DeadLetter, ECGPipeline, HRPipeline, InMessage

from services.simulator import BeatSource, RRSource, Wearable

__all__ = ["ReplayResult", "replay"]

BASE_TS_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: records start here in event time


@dataclass
class ReplayResult:
    scored: list[ScoredBeat] = field(default_factory=list)
    alerts: list[AlertEvent] = field(default_factory=list)
    hr: list[HRObservation] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    chunks: int = 0


def replay(source: BeatSource | RRSource, patient_id: str, ecg: ECGPipeline | None,
           hr: HRPipeline | None, base_ts_ms: int = BASE_TS_MS, chunks_per_batch: int = 30,
           on_batch: Callable[[ReplayResult, Sequence[ScoredBeat], Sequence[AlertEvent], int], None] | None = None,
           max_chunks: int | None = None) -> ReplayResult:
    """Replay ``source`` to its end (or ``max_chunks``) through the given pipelines.

    ``chunks_per_batch`` chunks (seconds) make one batch of consumed messages, as the
    worker gets them from Kafka. An :class:`RRSource` needs ``ecg`` None.
    """
    rr_only = isinstance(source, RRSource)
    if isinstance(source, RRSource) and ecg is not None:
        raise ValueError(f"source {source.name!r} is RR-only (no ECG samples): ecg must be None, "
                         f"got {type(ecg).__name__}")
    w = Wearable(patient_id, f"replay-{patient_id}", source, base_ts_ms)
    out = ReplayResult()
    ecg_state = hr_state = None
    offset = 0
    done = False
    while not done:
        ecg_msgs, hr_msgs = [], []
        for _ in range(chunks_per_batch):
            if max_chunks is not None and out.chunks >= max_chunks:
                done = True
                break
            if rr_only:
                advanced, h = w.step_rr()
                e = None
                if not advanced:
                    done = True
                    break
            else:
                e, h = w.step()
                if e is None:
                    done = True
                    break
            out.chunks += 1
            if e is not None:
                ecg_msgs.append(InMessage(patient_id.encode(), e, 0, offset))
            if h is not None:
                hr_msgs.append(InMessage(patient_id.encode(), h, 0, offset))
            offset += 1
        new_scores: list[ScoredBeat] = []
        new_alerts: list[AlertEvent] = []
        if ecg is not None and ecg_msgs:
            r = ecg.process(ecg_msgs, {patient_id: ecg_state} if ecg_state else {})
            ecg_state = r.states.get(patient_id, ecg_state)
            new_scores, new_alerts = r.scored, list(r.alerts)
            out.dead.extend(r.dead)
        if hr is not None and hr_msgs:
            r2 = hr.process(hr_msgs, {patient_id: hr_state} if hr_state else {})
            hr_state = r2.states.get(patient_id, hr_state)
            out.hr.extend(r2.observations)
            new_alerts.extend(r2.alerts)
            out.dead.extend(r2.dead)
        if done and ecg is not None and ecg_state is not None:
            # the record ended: the last beats need no more samples after them
            r = ecg.flush({patient_id: ecg_state})
            ecg_state = r.states.get(patient_id, ecg_state)
            new_scores = list(new_scores) + r.scored
            new_alerts = new_alerts + list(r.alerts)
        out.scored.extend(new_scores)
        out.alerts.extend(new_alerts)
        if on_batch is not None:
            on_batch(out, new_scores, new_alerts, out.chunks)
    return out
