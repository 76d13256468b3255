"""Evaluate: replay WFDB records through the worker's pipeline and report EC57-style metrics.

``cardiowatch evaluate --records DIR --out REPORT.json --scores-dir DIR
[--model BUNDLE] [--stream ecg|hr|both] [--plots DIR]``

Every record in ``DIR`` is sent, as the wire messages a wearable sends, through the same
stream cores the Faust worker runs (:mod:`services.replay`), then compared with its
reference annotations (:mod:`models.evaluation`).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from models.evaluation import auroc, evaluate_record, pool, roc_curve
from models.records import list_records
from streaming.policy import HR_CONDITIONS

from services.pipelines import build_ecg_pipeline, build_hr_pipeline, build_policy, load_ecg_bundle
from services.replay import BASE_TS_MS, replay
from services.settings import DEFAULT_HR_MODEL_DIR, DEFAULT_MODEL_DIR
from services.simulator import RecordSource

__all__ = ["EVALUATION_SCHEMA", "main", "evaluate"]

EVALUATION_SCHEMA = "cardiowatch.evaluation/1"


def _alerts_json(alerts, stream_of) -> list[dict]:
    out = []
    for a in alerts:
        if a.action != "raised":
            continue
        out.append({"stream": stream_of(a), "condition": a.condition, "priority": a.priority,
                    "category": a.category,
                    "onset_s": round((a.onset_ts_ms - BASE_TS_MS) / 1000.0, 3),
                    "raised_s": round((a.detected_ts_ms - BASE_TS_MS) / 1000.0, 3)})
    return out




def evaluate(records_dir: Path, out: Path, scores_dir: Path, model_dir: Path, stream: str,
             plots_dir: Path | None, runtime: str = "keras", hr_model_dir: Path | None = None,
             names: list[str] | None = None) -> dict:
    bundle = load_ecg_bundle(model_dir, runtime)
    policy = build_policy(None)
    names = names or list_records(records_dir)
    if not names:
        raise SystemExit(f"no WFDB records (.hea) in {records_dir}")
    scores_dir.mkdir(parents=True, exist_ok=True)
    if plots_dir:
        plots_dir.mkdir(parents=True, exist_ok=True)
    per_record: dict[str, dict] = {}
    evaluations = []
    for name in tqdm(names, desc="evaluate", unit="record", file=sys.stderr):
        src = RecordSource(records_dir, name)
        fs = src.sample_rate_hz
        ecg = build_ecg_pipeline(bundle, policy) if stream in ("ecg", "both") else None
        hr = build_hr_pipeline(hr_model_dir, policy, runtime="keras" if runtime == "keras" else "tflite") \
            if stream in ("hr", "both") else None
        res = replay(src, f"rec-{name}", ecg, hr)
        entry: dict = {"chunks": res.chunks, "dead_letters": len(res.dead)}
        t = np.array([(s.r_ts_ms - BASE_TS_MS) / 1000.0 for s in res.scored])
        sc = np.array([s.score for s in res.scored])
        fl = np.array([s.flagged for s in res.scored], dtype=bool)
        with open(scores_dir / f"{name}.csv", "w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(["time_s", "score", "flagged"])
            for a, b, c in zip(t, sc, fl):
                wr.writerow([f"{a:.3f}", f"{b:.6f}", int(c)])
        ref_t = src.beat_times_s
        ref_c = src.beat_classes
        if ecg is not None:
            ev = evaluate_record(np.round(ref_t * fs).astype(int), ref_c, np.round(t * fs).astype(int),
                                 sc, fl, fs, name=name)
            evaluations.append(ev)
            entry.update(ev.to_dict())
            if plots_dir:
                from models.plots import plot_score_trace

                plot_score_trace(plots_dir / f"{name}_scores.png", t, sc, bundle.threshold,
                                 ref_t, ref_c, f"record {name}: ECG anomaly score")
        if hr is not None and plots_dir and res.hr:
            from models.plots import plot_hr_trace

            scored_hr = [o for o in res.hr if o.hr_score is not None]
            plot_hr_trace(plots_dir / f"{name}_hr.png",
                          np.array([(o.ts_ms - BASE_TS_MS) / 1000 for o in res.hr]),
                          np.array([o.hr_bpm for o in res.hr]),
                          score_time_s=np.array([(o.ts_ms - BASE_TS_MS) / 1000 for o in scored_hr]) if scored_hr else None,
                          scores=np.array([o.hr_score for o in scored_hr]) if scored_hr else None,
                          threshold=scored_hr[0].hr_threshold if scored_hr else None,
                          title=f"record {name}: heart rate")
        entry["alerts"] = _alerts_json(res.alerts, lambda a: "hr" if a.condition in HR_CONDITIONS else "ecg")
        per_record[name] = entry
    report = {
        "schema": EVALUATION_SCHEMA,
        "model": {"name": bundle.meta.name, "version": bundle.meta.version, "runtime": runtime,
                  "threshold": bundle.threshold, "threshold_fpr": bundle.meta.threshold_fpr},
        "stream": stream,
        "records": per_record,
        "pooled": pool(evaluations) if evaluations else {},
    }
    if plots_dir and evaluations:
        from models.plots import plot_roc

        cls = np.concatenate([e.matched_classes for e in evaluations]) if hasattr(evaluations[0], "matched_classes") else None
        if cls is not None:
            scs = np.concatenate([e.matched_scores for e in evaluations])
            curves = {}
            for label, pos in (("V vs N", ["V"]), ("S vs N", ["S"]), ("S+V+F vs N", ["S", "V", "F"])):
                p, n = scs[np.isin(cls, pos)], scs[cls == "N"]
                if len(p) and len(n):
                    fpr, tpr, _thr = roc_curve(p, n)
                    curves[label] = (fpr, tpr, auroc(p, n))
            if curves:
                plot_roc(plots_dir / "roc.png", curves)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = _json_safe(report)
    out.write_text(json.dumps(report, indent=1, allow_nan=False))
    return report


def _json_safe(x):
    """NaN (an AUROC with an empty class) becomes null; numpy scalars become Python."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not np.isfinite(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cardiowatch evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=Path, required=True, help="folder of WFDB records")
    p.add_argument("--out", type=Path, required=True, help="REPORT.json to write")
    p.add_argument("--scores-dir", type=Path, required=True, help="per-record score CSVs go here")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="ECG model bundle")
    p.add_argument("--hr-model", type=Path, default=DEFAULT_HR_MODEL_DIR, help="heart-rate model bundle")
    p.add_argument("--stream", choices=["ecg", "hr", "both"], default="ecg")
    p.add_argument("--plots", type=Path, help="write score traces and ROC curves here")
    p.add_argument("--runtime", choices=["keras", "tflite", "tflite-int8"], default="keras")
    p.add_argument("--record-names", help="comma-separated subset of records")
    a = p.parse_args(argv)
    if not a.records.is_dir():
        p.error(f"--records must be a folder, got {a.records}")
    rep = evaluate(a.records, a.out, a.scores_dir, a.model, a.stream, a.plots, a.runtime, a.hr_model,
                   a.record_names.split(",") if a.record_names else None)
    pooled = rep["pooled"]
    print(json.dumps({"records": len(rep["records"]), "pooled": pooled}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
