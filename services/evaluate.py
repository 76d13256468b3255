"""Evaluate: replay WFDB records through the worker's pipeline; report beat and episode figures.

``cardiowatch evaluate --records DIR [DIR ...] --out REPORT.json --scores-dir DIR
[--model BUNDLE] [--stream ecg|hr|both] [--plots DIR] [--annotation atr|ecg] [--fs HZ]
[--noise em:12,ma:6,bw:0 [--noise-dir DIR] [--noise-continuous]]``

Every record is sent, as the wire messages a wearable sends, through the same stream
cores the Faust worker runs (:mod:`services.replay`), then compared with its reference
annotations: beat figures (:mod:`models.evaluation`, QRS Se/+P without VF episodes) and
episode figures (:mod:`models.episodes`: VT/VF/AF episode detection, false alarms per
patient-hour). Annotation-only records (nsr2db, chf2db, ltafdb) replay on the
heart-rate stream: the wearable's 1 Hz heart rate and RR intervals come from the beat
times. ``--noise`` adds nstdb noise to every signal record the way PhysioNet's ``nst``
does (:mod:`models.noise`), one condition per item.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from models.episodes import AlertSpan, EpisodeEvaluation, EpisodeRules, evaluate_episodes, pool_episodes, truth_episodes
from models.evaluation import RecordEvaluation, auroc, evaluate_record, pool, roc_curve
from models.noise import NoiseSpec, add_noise, load_noise, parse_noise_specs
from models.records import BeatAnnotations, has_signal, list_annotated, list_records, load_annotations, load_record
from streaming.events import AlertEvent, ScoredBeat
from streaming.policy import HR_CONDITIONS, AlertPolicy

from services.pipelines import build_ecg_pipeline, build_hr_pipeline, build_policy, load_ecg_bundle
from services.replay import BASE_TS_MS, replay
from services.settings import DEFAULT_HR_MODEL_DIR, DEFAULT_MODEL_DIR
from services.simulator import RecordSource, RRSource
from services.subgroups import format_subgroups_table, plot_subgroups, record_demographics, subgroups_section
from models.cli_help import HelpFormatter

__all__ = ["EVALUATION_SCHEMA", "RecordRef", "alert_spans", "discover_records", "evaluate",
           "format_pooled_table", "main"]

EVALUATION_SCHEMA = "cardiowatch.evaluation/1"
_CLEAN = NoiseSpec(None)


@dataclass(frozen=True, slots=True)
class RecordRef:
    """One record to evaluate: its report name, where it is, and whether it has a signal."""

    key: str
    folder: Path
    name: str
    has_signal: bool


def discover_records(folders: Sequence[Path], annotation: str = "atr",
                     names: Sequence[str] | None = None) -> list[RecordRef]:
    """The annotated records of ``folders``, pooled: a ``.{annotation}`` file with a signal
    header, a 0-signal header or none (annotation-only records). Records without it are
    left out: nothing could say whether their detections and alerts are true. Names that occur in more
    than one folder are prefixed by their folder (``mitdb/100``). ``names`` keeps only
    those records (bare or prefixed names)."""
    found: list[tuple[Path, str, bool]] = []
    for folder in folders:
        folder = Path(folder)
        stems = sorted(set(list_records(folder)) | set(list_annotated(folder, annotation)))
        for stem in stems:
            # a record without reference annotations has no truth to judge detections
            # or alerts against (qtdb's unlabelled excerpts, nstdb's noise records)
            if (folder / f"{stem}.{annotation}").is_file():
                found.append((folder, stem, has_signal(folder, stem)))
    counts: dict[str, int] = {}
    for _, stem, _ in found:
        counts[stem] = counts.get(stem, 0) + 1
    refs = [RecordRef(f"{f.name}/{stem}" if counts[stem] > 1 else stem, f, stem, sig)
            for f, stem, sig in found]
    if names:
        wanted = set(names)
        refs = [r for r in refs if r.key in wanted or r.name in wanted]
        missing = wanted - {r.key for r in refs} - {r.name for r in refs}
        if missing:
            raise ValueError(f"record names must be records of {[str(f) for f in folders]}, "
                             f"got unknown {sorted(missing)}")
    return refs


def alert_spans(events: Sequence[AlertEvent], base_ts_ms: int = BASE_TS_MS) -> list[AlertSpan]:
    """One :class:`AlertSpan` per raised alert from its events (raised, updated, cleared),
    in the order raised; times in seconds from ``base_ts_ms``."""
    def s(ts_ms: int) -> float:
        return round((ts_ms - base_ts_ms) / 1000.0, 3)

    spans: dict[str, AlertSpan] = {}
    for a in events:
        cur = spans.get(a.alert_id)
        if a.action == "raised":
            lim = a.details.get("limit_bpm") if a.details else None
            spans[a.alert_id] = AlertSpan(
                condition=a.condition, category=a.category, priority=a.priority,
                stream="hr" if a.condition in HR_CONDITIONS else "ecg",
                onset_s=s(a.onset_ts_ms), raised_s=s(a.detected_ts_ms),
                high_s=s(a.detected_ts_ms) if a.priority == "high" else None,
                limit_bpm=float(lim) if isinstance(lim, (int, float)) else None)
        elif cur is None:
            continue
        elif a.action == "updated" and a.priority == "high" and cur.high_s is None:
            spans[a.alert_id] = replace(cur, high_s=s(a.detected_ts_ms))
        elif a.action == "cleared":
            spans[a.alert_id] = replace(cur, cleared_s=s(a.detected_ts_ms))
    return list(spans.values())


def _alert_json(a: AlertSpan, verdict: str) -> dict[str, Any]:
    d: dict[str, Any] = {"stream": a.stream, "condition": a.condition, "priority": a.priority,
                         "category": a.category, "onset_s": a.onset_s, "raised_s": a.raised_s,
                         "cleared_s": a.cleared_s, "high_s": a.high_s, "verdict": verdict}
    if a.limit_bpm is not None:
        d["limit_bpm"] = a.limit_bpm
    return d


def _file_stem(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key)


class _NoiseCache:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._got: dict[tuple[str, int], tuple[np.ndarray, float]] = {}

    def get(self, name: str, lead_index: int) -> tuple[np.ndarray, float]:
        k = (name, lead_index)
        if k not in self._got:
            self._got[k] = load_noise(self.folder, name, lead_index)
        return self._got[k]


@dataclass(frozen=True)
class _Setup:
    """How every record of a run is replayed and judged."""

    stream: str
    bundle: Any  # models.bundle.Bundle
    policy: AlertPolicy
    hr_model_dir: Path | None
    runtime: str
    annotation: str
    fs: float | None
    channel: int | str | None
    noise: _NoiseCache
    noise_continuous: bool
    scores_dir: Path
    plots_dir: Path | None
    rules: EpisodeRules
    # Leave-patient-out runs (``cardiowatch crossval``): the bundles of the fold that held
    # each record out, by ``<folder name>/<record>``; records not listed use ``bundle``.
    bundle_for: Any = None  # Mapping[str, Bundle] | None
    hr_model_for: Any = None  # Mapping[str, Path] | None

    def ecg_bundle(self, ref: RecordRef) -> Any:
        if self.bundle_for:
            return self.bundle_for.get(f"{ref.folder.name}/{ref.name}", self.bundle)
        return self.bundle

    def hr_dir(self, ref: RecordRef) -> Path | None:
        if self.hr_model_for:
            return self.hr_model_for.get(f"{ref.folder.name}/{ref.name}", self.hr_model_dir)
        return self.hr_model_dir


@dataclass
class _Run:
    """What one record (under one noise condition) gave."""

    entry: dict[str, Any]
    beats: RecordEvaluation | None
    episodes: EpisodeEvaluation


def _evaluate_one(ref: RecordRef, key: str, cond: NoiseSpec, setup: _Setup) -> _Run:
    """Replay one record under one noise condition and judge it."""
    u = setup
    entry: dict[str, Any] = {"record": ref.name, "folder": str(ref.folder),
                             "noise": None if cond.record is None else {"record": cond.record}}
    src: RecordSource | RRSource
    if ref.has_signal:
        rec = load_record(ref.folder, ref.name, channel=u.channel, annotation=u.annotation)
        if cond.record is not None:
            z, z_fs = u.noise.get(cond.record, rec.lead_index)
            mix = add_noise(rec.signal_mv, rec.beat_samples, z, rec.sample_rate_hz, cond.snr_db,
                            aami_classes=rec.aami_classes, noise_rate_hz=z_fs,
                            continuous=u.noise_continuous)
            rec = replace(rec, signal_mv=mix.signal_mv)
            entry["noise"] = {"record": cond.record, "continuous": u.noise_continuous, **mix.to_dict()}
        ann: BeatAnnotations = rec.annotations()
        src = RecordSource.from_record(rec)
        entry.update(source="signal", lead=rec.lead)
    else:
        if u.stream != "hr":
            raise ValueError(f"record {ref.key!r} has no signal (annotation-only): it replays "
                             f"with --stream hr, got --stream {u.stream}")
        ann = load_annotations(ref.folder, ref.name, u.annotation, u.fs)
        src = RRSource.from_annotations(ann)
        entry.update(source="rr-only", lead=None)
    duration_s = ann.duration_s
    entry["duration_s"] = round(duration_s, 3)
    bundle = u.ecg_bundle(ref)
    ecg = build_ecg_pipeline(bundle, u.policy) if u.stream in ("ecg", "both") else None
    hr = build_hr_pipeline(u.hr_dir(ref), u.policy,
                           runtime="keras" if u.runtime == "keras" else "tflite") \
        if u.stream in ("hr", "both") else None
    # An RR-only day is ~86,000 heart-rate messages: batches of 5 minutes (the worker takes
    # whatever Kafka hands it) keep the model calls few; the policy sees the same sequence.
    res = replay(src, f"rec-{key}", ecg, hr, chunks_per_batch=30 if ref.has_signal else 300)
    entry.update(chunks=res.chunks, dead_letters=len(res.dead))

    ref_t, ref_c = ann.beat_times_s, np.asarray(ann.aami_classes)
    truth = truth_episodes(ref_t, ref_c, ann.rhythm_annotations, ann.vf_annotations,
                           ann.sample_rate_hz, duration_s, u.rules)
    beats: RecordEvaluation | None = None
    stem = _file_stem(key)
    if ecg is not None:
        fs_ecg = ann.sample_rate_hz
        t = np.array([(s.r_ts_ms - BASE_TS_MS) / 1000.0 for s in res.scored])
        sc = np.array([s.score for s in res.scored])
        fl = np.array([s.flagged for s in res.scored], dtype=bool)
        _write_scores(u.scores_dir / f"{stem}.csv", t, res.scored)
        beats = evaluate_record(np.round(ref_t * fs_ecg).astype(int), ref_c,
                                np.round(t * fs_ecg).astype(int), sc, fl, fs_ecg, name=key,
                                exclude_s=[(e.start_s, e.end_s) for e in truth.vf])
        entry.update(beats.to_dict())
        if u.plots_dir:
            from models.plots import plot_score_trace

            plot_score_trace(u.plots_dir / f"{stem}_scores.png", t, sc, float(res.scored[0].threshold)
                             if res.scored else bundle.threshold,
                             ref_t, ref_c, f"record {key}: ECG anomaly score")
    if hr is not None and u.plots_dir and res.hr:
        from models.plots import plot_hr_trace

        scored_hr = [o for o in res.hr if o.hr_score is not None]
        plot_hr_trace(u.plots_dir / f"{stem}_hr.png",
                      np.array([(o.ts_ms - BASE_TS_MS) / 1000 for o in res.hr]),
                      np.array([o.hr_bpm for o in res.hr]),
                      score_time_s=np.array([(o.ts_ms - BASE_TS_MS) / 1000 for o in scored_hr]) if scored_hr else None,
                      scores=np.array([o.hr_score for o in scored_hr]) if scored_hr else None,
                      threshold=scored_hr[0].hr_threshold if scored_hr else None,
                      events=[("AF", e.start_s, e.end_s) for e in truth.af],
                      title=f"record {key}: heart rate")
    spans = alert_spans(res.alerts)
    ep = evaluate_episodes(key, truth, spans, ref_t, ref_c, duration_s, u.rules)
    entry["alerts"] = [_alert_json(a, v) for a, v in zip(spans, ep.verdicts)]
    entry["episodes"] = ep.to_dict()
    if u.plots_dir:
        from models.plots import plot_alert_timeline

        plot_alert_timeline(u.plots_dir / f"{stem}_alerts.png", max(duration_s, 1e-3),
                            {k: [(e.start_s, e.end_s) for e in getattr(truth, k)]
                             for k in ("vt", "vf", "af", "afl") if getattr(truth, k)},
                            [(a.condition, a.priority, a.raised_s, a.end_s(duration_s)) for a in spans],
                            f"record {key}: alerts against the reference episodes")
    return _Run(entry, beats, ep)


def _pooled(runs: Sequence[_Run]) -> dict[str, Any]:
    beats = [r.beats for r in runs if r.beats is not None]
    out: dict[str, Any] = pool(beats) if beats else {"n_records": len(runs)}
    out["n_records"] = len(runs)
    out["hours"] = round(sum(r.episodes.duration_s for r in runs) / 3600.0, 4)
    out["episodes"] = pool_episodes(r.episodes for r in runs)
    return out


def _load_each_once(model_for: dict[str, Path], runtime: str) -> dict[str, Any]:
    loaded: dict[Path, Any] = {}
    for p in model_for.values():
        if Path(p) not in loaded:
            loaded[Path(p)] = load_ecg_bundle(Path(p), runtime)
    return {k: loaded[Path(p)] for k, p in model_for.items()}


def _episode_rules(policy) -> EpisodeRules:
    # The policy's default soft limits judge heart-rate alerts that carry no limit of their own.
    _low, brady, tachy, _high = policy.config.limits_for("")
    return EpisodeRules(tachy_bpm=tachy, brady_bpm=brady)


def hr_fold_map(folder: Path) -> dict[str, Path]:
    """``<folder name>/<record>`` -> the per-fold heart-rate bundle that held it out.

    ``folder`` is what ``cardiowatch train hr --fold-bundles`` wrote: ``fold{k}/`` bundles
    whose AF detector never saw the records listed in their
    ``extra["af_detector"]["held_out_records"]``. A record in no fold was not in the AF
    training at all, so the shipped bundle is already held out for it.
    """
    from models.bundle import read_meta

    folds = sorted(p for p in Path(folder).glob("fold*") if (p / "bundle.json").is_file())
    if not folds:
        raise FileNotFoundError(f"no fold*/bundle.json under {folder} (written by cardiowatch train hr --fold-bundles)")
    out: dict[str, Path] = {}
    for f in folds:
        held = read_meta(f).extra.get("af_detector", {}).get("held_out_records")
        if not held:
            raise ValueError(f"{f}: its AF detector section names no held_out_records")
        for name in held:
            if name in out:
                raise ValueError(f"{name} is held out by two fold bundles: {out[name]} and {f}")
            out[str(name)] = f
    return out


#: Columns of the per-record score CSV: one row per detected beat. The first three are
#: the anomaly score and its flag; the rest are the beat classifier's outputs (empty for a
#: bundle without one), so a run rule can be studied offline on the stream's own beats.
SCORE_COLUMNS = ("time_s", "score", "flagged", "beat_class", "p_ventricular", "p_run", "rr_ms",
                 "signal_quality")


def _opt(v: float | None, fmt: str) -> str:
    return "" if v is None else format(v, fmt)


def _write_scores(path: Path, t: np.ndarray, scored: Sequence[ScoredBeat]) -> None:
    with open(path, "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(SCORE_COLUMNS)
        for a, s in zip(t, scored):
            wr.writerow([f"{a:.3f}", f"{s.score:.6f}", int(s.flagged), s.beat_class,
                         _opt(s.p_ventricular, ".4f"), _opt(s.p_run, ".4f"), _opt(s.rr_ms, ".0f"),
                         f"{s.signal_quality:.2f}"])


def evaluate(records_dir: Path | Sequence[Path], out: Path, scores_dir: Path, model_dir: Path,
             stream: str, plots_dir: Path | None, runtime: str = "keras",
             hr_model_dir: Path | None = None, names: list[str] | None = None, *,
             annotation: str = "atr", fs: float | None = None, channel: int | str | None = None,
             noise: Sequence[NoiseSpec] = (), noise_dir: Path | None = None,
             noise_continuous: bool = False, policy_file: Path | None = None,
             model_for: dict[str, Path] | None = None, hr_model_for: dict[str, Path] | None = None,
             group_for: dict[str, str] | None = None) -> dict:
    """Replay every record through the pipeline, write ``out`` (REPORT.json) and return it.

    Parameters
    ----------
    records_dir
        One folder or several (records pooled).
    out, scores_dir, plots_dir
        Report, per-record score CSVs (ECG stream), optional PNGs.
    model_dir, hr_model_dir, runtime
        ECG and heart-rate bundles and the runtime (``keras``, ``tflite``, ``tflite-int8``).
    stream
        ``ecg``, ``hr`` or ``both``; annotation-only records need ``hr``.
    names
        Subset of record names.
    annotation, fs, channel
        Annotation extension, the annotations' rate for records that give none, and a lead
        override (default ``MLII`` when present, else lead 0).
    noise, noise_dir, noise_continuous
        Noise conditions (:func:`models.noise.parse_noise_specs`); each one replays every
        signal record with that noise. Default folder ``<first records folder>/../nstdb``.
    policy_file
        Alert policy settings (default: the policy defaults).
    model_for, hr_model_for
        Per-record ECG / heart-rate bundles by ``<folder name>/<record>`` (leave-patient-out
        runs: each record is scored by the bundle of the fold that held it out).
    group_for
        Record (``<folder name>/<record>``) -> group name, e.g. its fold: the report adds
        ``pooled_by_group`` with each group's pooled figures.
    """
    folders = [Path(records_dir)] if isinstance(records_dir, (str, Path)) else [Path(p) for p in records_dir]
    refs = discover_records(folders, annotation, names)
    if not refs:
        raise SystemExit(f"no records in {[str(f) for f in folders]} (WFDB headers with signals, "
                         f"or .{annotation} annotation files)")
    conditions = list(noise) if noise else [_CLEAN]
    if any(c.record is not None for c in conditions):
        rr_only = [r.key for r in refs if not r.has_signal]
        if rr_only:
            raise ValueError(f"noise needs signal records, got annotation-only {rr_only[:5]}")
    noise_cache = _NoiseCache(Path(noise_dir) if noise_dir else folders[0].parent / "nstdb")
    bundle = load_ecg_bundle(model_dir, runtime)
    policy = build_policy(policy_file)
    setup = _Setup(stream=stream, bundle=bundle, policy=policy, hr_model_dir=hr_model_dir,
                   runtime=runtime, annotation=annotation, fs=fs, channel=channel,
                   noise=noise_cache, noise_continuous=noise_continuous, scores_dir=scores_dir,
                   plots_dir=plots_dir,
                   rules=_episode_rules(policy),
                   bundle_for=_load_each_once(model_for or {}, runtime),
                   hr_model_for=dict(hr_model_for or {}))
    scores_dir.mkdir(parents=True, exist_ok=True)
    if plots_dir:
        plots_dir.mkdir(parents=True, exist_ok=True)
    per_record: dict[str, dict] = {}
    by_condition: dict[str, list[_Run]] = {c.label: [] for c in conditions}
    jobs = [(c, r) for c in conditions for r in refs]
    for cond, ref in tqdm(jobs, desc="evaluate", unit="record", file=sys.stderr):
        key = ref.key if cond.record is None else f"{ref.key}@{cond.label}"
        run = _evaluate_one(ref, key, cond, setup)
        group = (group_for or {}).get(f"{ref.folder.name}/{ref.name}")
        if group is not None:
            run.entry["group"] = group
        per_record[key] = run.entry
        by_condition[cond.label].append(run)
    all_runs = [r for runs in by_condition.values() for r in runs]
    report: dict[str, Any] = {
        "schema": EVALUATION_SCHEMA,
        "model": {"name": bundle.meta.name, "version": bundle.meta.version, "runtime": runtime,
                  "threshold": bundle.threshold, "threshold_fpr": bundle.meta.threshold_fpr},
        "stream": stream,
        "records_dirs": [str(f) for f in folders],
        "records": per_record,
        "pooled": _pooled(all_runs),
    }
    if group_for:
        groups: dict[str, list[_Run]] = {}
        for r in all_runs:
            if "group" in r.entry:
                groups.setdefault(r.entry["group"], []).append(r)
        report["pooled_by_group"] = {g: _pooled(runs) for g, runs in sorted(groups.items())}
    if noise:
        report["noise"] = {"dir": str(noise_cache.folder), "continuous": noise_continuous,
                           "conditions": [c.label for c in conditions]}
        report["pooled_by_noise"] = {label: _pooled(runs) for label, runs in by_condition.items()}
    evaluations = [r.beats for r in all_runs if r.beats is not None]
    # figures by sex and age band, bootstrap over patients (services.subgroups)
    report["subgroups"] = subgroups_section(report, {e.name: e for e in evaluations}, record_demographics(report))
    if plots_dir:
        plot_subgroups(plots_dir / "subgroups.png", report["subgroups"])
    if plots_dir and evaluations:
        from models.plots import plot_roc

        cls = np.concatenate([e.matched_classes for e in evaluations])
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


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def _pooled_column(p: dict[str, Any]) -> list[str]:
    ep = p["episodes"]
    au = p.get("auroc", {})
    ff = p.get("flagged_fraction", {})
    ex = p.get("qrs_excluded", {})
    vt, sus, af, at, al = (ep["vt_episodes"], ep["ventricular_10s_alerted_within_10s"],
                           ep["af_episodes_30s"], ep["af_time"], ep["alerts"])
    slow = ep.get("slow_ventricular_runs", {})
    qrs = (f"{_pct(p.get('qrs_sensitivity'))} / {_pct(p.get('qrs_ppv'))}"
           + (f" ({ex.get('reference', 0)}+{ex.get('detections', 0)} in VF left out)"
              if ex.get("reference") or ex.get("detections") else "")) if "tp" in p else "-"
    return [
        f"{p['n_records']} / {_num(p['hours'], '.1f')} h",
        qrs,
        " / ".join(_num(au.get(k), ".3f") for k in ("V_vs_N", "S_vs_N", "SVF_vs_N")) if au else "-",
        " / ".join(_pct(ff.get(k)) for k in ("N", "S", "V")) if ff else "-",
        f"{vt['detected']}/{vt['total']} ({_pct(vt['sensitivity'])}), median {_num(vt['median_delay_s'], '.1f')} s",
        f"{slow.get('alerted_high', 0)}/{slow.get('total', 0)}",
        f"{sus['alerted']}/{sus['total']}",
        f"{af['alerted']}/{af['total']}; {_pct(at['fraction'])} of {_num(at['af_s'] / 3600, '.1f')} h",
        f"{_num(ep['false_high_per_patient_hour'])} ({al['false_high']})",
        f"{_num(ep['false_non_technical_per_patient_hour'])} ({al['false']})",
        f"{_num(ep['false_af_per_patient_day'])} ({al['false_af']})",
    ]


_ROWS = ["records / hours", "QRS Se / +P (VF excluded)", "AUROC V|S|SVF vs N", "flagged N / S / V",
         "VT episodes detected (HIGH)",
         "slow V runs < 100 bpm, HIGH", "VT/VF >= 10 s HIGH in 10 s", "AF >= 30 s alerted; AF time",
         "false HIGH / patient-hour", "false non-technical / pt-hour", "false AF / patient-day"]


def format_pooled_table(report: dict[str, Any]) -> str:
    """The pooled figures as a short text table (one column per noise condition)."""
    cols = report.get("pooled_by_noise") or {"pooled": report["pooled"]}
    data = {label: _pooled_column(p) for label, p in cols.items()}
    w0 = max(len(r) for r in _ROWS)
    widths = {label: max(len(label), *(len(v) for v in vals)) for label, vals in data.items()}
    lines = ["  ".join([" " * w0] + [label.ljust(widths[label]) for label in data])]
    for i, row in enumerate(_ROWS):
        lines.append("  ".join([row.ljust(w0)] + [data[label][i].ljust(widths[label]) for label in data]))
    return "\n".join(line.rstrip() for line in lines)


def _channel(v: str) -> int | str:
    return int(v) if re.fullmatch(r"\d+", v) else v


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cardiowatch evaluate", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--records", type=Path, nargs="+", required=True,
                   help="folder(s) of WFDB records, pooled")
    p.add_argument("--out", type=Path, required=True, help="REPORT.json to write")
    p.add_argument("--scores-dir", type=Path, required=True, help="per-record score CSVs go here")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="ECG model bundle")
    p.add_argument("--hr-model", type=Path, default=DEFAULT_HR_MODEL_DIR, help="heart-rate model bundle")
    p.add_argument("--stream", choices=["ecg", "hr", "both"], default="ecg",
                   help="which stream to replay: the ECG, the heart rate derived from its beats, or both")
    p.add_argument("--plots", type=Path, help="write score traces, ROC curves and alert timelines here")
    p.add_argument("--runtime", choices=["keras", "tflite", "tflite-int8"], default="keras",
                   help="model runtime of the bundle")
    p.add_argument("--record-names", help="comma-separated subset of records")
    p.add_argument("--annotation", default="atr",
                   help="reference annotation extension: atr (default), ecg (nsr2db, chf2db)")
    p.add_argument("--fs", type=float, help="annotation sample rate (Hz) for records that give none "
                   "(ltafdb: 128)")
    p.add_argument("--channel", type=_channel, help="lead index or name (default: MLII, else lead 0)")
    p.add_argument("--noise", help="nstdb noise conditions, e.g. em:12,ma:6,bw:0 (and clean)")
    p.add_argument("--noise-dir", type=Path, help="folder of the noise records (default: "
                   "<records>/../nstdb)")
    p.add_argument("--noise-continuous", action="store_true",
                   help="noise throughout after 5 min, not in 2-minute on/off blocks")
    p.add_argument("--policy", type=Path, help="alert policy YAML (default: policy defaults)")
    p.add_argument("--hr-fold-bundles", type=Path, metavar="DIR",
                   help="per-fold heart-rate bundles (cardiowatch train hr --fold-bundles): each record the "
                        "AF detector trained on is scored by the fold bundle that held it out")
    a = p.parse_args(argv)
    for folder in a.records:
        if not folder.is_dir():
            p.error(f"--records must be folders, got {folder}")
    if a.fs is not None and not (math.isfinite(a.fs) and a.fs > 0):
        p.error(f"--fs must be a positive rate in Hz, got {a.fs}")
    try:
        noise = parse_noise_specs(a.noise) if a.noise else ()
    except ValueError as e:
        p.error(str(e))
    try:
        rep = evaluate(a.records, a.out, a.scores_dir, a.model, a.stream, a.plots, a.runtime,
                       a.hr_model, a.record_names.split(",") if a.record_names else None,
                       annotation=a.annotation, fs=a.fs, channel=a.channel, noise=noise,
                       noise_dir=a.noise_dir, noise_continuous=a.noise_continuous,
                       policy_file=a.policy,
                       hr_model_for=hr_fold_map(a.hr_fold_bundles) if a.hr_fold_bundles else None)
    except (ValueError, FileNotFoundError) as e:
        print(f"cardiowatch evaluate: {e}", file=sys.stderr)
        return 2
    print(format_pooled_table(rep))
    print("\n" + format_subgroups_table(rep["subgroups"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
