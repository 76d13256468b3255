"""Heart-rate training stage: fit the RR-window LSTM autoencoder on normal rhythm and the AF detector on labelled rhythm, calibrate their thresholds, write one bundle.

Autoencoder. Patients (synthetic seeds, or WFDB records) are split 60/20/20 into train,
validation (early stopping) and calibration (each runtime's threshold at a stated FPR on
their normal windows), so thresholds are measured on patients the model never saw. From
records, the normal rhythm is every run of consecutive N beats in sinus rhythm (``(N`` or
``(SBR`` annotated, or a sinus-rhythm database, :data:`models.hr.data.SINUS_DATABASES`)
of the RR series as the wearable reports it (:mod:`models.hr.data`), at most
``max_windows_per_patient`` windows per patient so that 80 day-long records do not
drown the short ones. Windows and features come from :mod:`models.hr.features`; the
model, training loop, export and bundle are the shared ones (:mod:`models.autoencoder`,
:mod:`models.export`, :mod:`models.bundle`).

AF detector (records only). :func:`models.hr.af_train.train_af`: patient-wise folds,
the threshold from a stated false-alert rate on held-out patients, the detector on every
patient; shipped as the bundle's extra file ``af_detector.npz`` with its settings and
held-out figures in ``extra["af_detector"]``. ``fold_bundles`` also writes one bundle per
fold whose AF detector never saw that fold's patients (for ``cardiowatch evaluate``).

Alerting (persistence) is the alert policy's job; :func:`k_of_n` is the rule used here
to *measure* the detector on held-out synthetic patients (:func:`evaluate_synthetic`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from models.autoencoder import Detector, LSTMAutoencoder, NotFittedError, validate_fpr
from models.hr.data import RRSeries, load_rr_folders
from models.hr.features import N_FEATURES, RR_MAX_S, RR_MIN_S, WINDOW_BEATS, DEFAULT_TRIM, HRInput, HRNormaliser, HRScore, rr_windows
from models.cli_help import HelpFormatter

__all__ = [
    "HRTrainResult",
    "evaluate_synthetic",
    "k_of_n",
    "main",
    "score_rr",
    "synthetic_normal_rr",
    "train_hr",
]

#: Rhythms whose N-N intervals count as normal rhythm for the autoencoder (sinus rhythm,
#: sinus bradycardia).
SINUS_RHYTHMS = ("N", "SBR")
AF_DETECTOR_FILE = "af_detector.npz"

# Training loop settings of the heart-rate model (batch, Adam step, early-stopping patience).
BATCH_SIZE = 128
LEARNING_RATE = 3e-3
PATIENCE = 5


def k_of_n(flagged: np.ndarray | Sequence[bool], k: int, n: int) -> np.ndarray:
    """Persistence: True at window ``i`` when >= k of windows ``i-n+1 .. i`` are flagged.

    Windows before the first full group of ``n`` use what is available.
    """
    f = np.asarray(flagged, dtype=bool).ravel()
    if not (1 <= int(k) <= int(n)):
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    c = np.concatenate([[0], np.cumsum(f, dtype=np.int64)])
    idx = np.arange(1, f.size + 1)
    counts = c[idx] - c[np.maximum(idx - int(n), 0)]
    return counts >= int(k)


def score_rr(detector: Detector, input_spec: HRInput, rr_s: np.ndarray | Sequence[float], step: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Score every ``step``-th window of an RR series.

    Parameters
    ----------
    detector : Detector
        A heart-rate detector (any runtime).
    input_spec : HRInput
        Its bundle's window and normaliser.
    rr_s : array-like
        RR intervals in seconds.
    step : int
        Intervals between window starts.

    Returns
    -------
    end_index, scores : np.ndarray
        Index into ``rr_s`` of each window's last interval, and its score.
    """
    window = input_spec.window_beats
    w = rr_windows(rr_s, window, step)
    ends = np.arange(w.shape[0], dtype=np.int64) * int(step) + window - 1
    return ends, detector.score(input_spec.make_input(w))


# --------------------------------------------------------------------------------------
# data: synthetic patients and WFDB records
# --------------------------------------------------------------------------------------
def _patient_hr_bpm(seed: int) -> float:
    # resting HR of a synthetic patient: 55-95 bpm, a typical adult resting range
    return float(np.random.default_rng([seed, 7]).uniform(55.0, 95.0))


def synthetic_normal_rr(seed: int, duration_s: float, sample_rate_hz: float = 100.0) -> np.ndarray:
    """RR intervals (s) of one synthetic patient in normal sinus rhythm.

    Uses the project's ECG generator (:func:`models.synthetic.synth_ecg`) with a
    per-seed resting heart rate in 55-95 bpm; only the RR ground truth is used, so a
    low sample rate keeps it cheap.
    """
    from models.synthetic import synth_ecg

    rec = synth_ecg(duration_s, sample_rate_hz=sample_rate_hz, hr_bpm=_patient_hr_bpm(seed), seed=int(seed))
    rr = np.asarray(rec.rr_s, dtype=np.float64)
    return rr[np.isfinite(rr)]  # the first beat has no interval (NaN)


def _normal_runs(series: RRSeries) -> list[np.ndarray]:
    """Runs of RR intervals between consecutive N beats in sinus rhythm (module docstring)."""
    rr, cls = series.rr_s, series.aami
    if rr.size == 0:
        return []
    prev_n = np.concatenate([[False], cls[:-1] == "N"]) & ~series.gap_before
    ok = (cls == "N") & prev_n & np.isin(series.rhythm, SINUS_RHYTHMS) & (rr >= RR_MIN_S) & (rr <= RR_MAX_S)
    # an interval right after a left-out (noisy) one is not ok (prev_n), so runs never
    # span a hole
    edges = np.flatnonzero(np.diff(np.concatenate([[0], ok.astype(np.int8), [0]])))
    return [rr[a:b] for a, b in zip(edges[::2], edges[1::2])]


def _hash_update(h: Any, label: str, rr: np.ndarray) -> None:
    h.update(label.encode())
    h.update(np.asarray(rr, dtype=np.float32).tobytes())


# --------------------------------------------------------------------------------------
# measurement on held-out synthetic patients
# --------------------------------------------------------------------------------------
def evaluate_synthetic(
    detector: Detector,
    input_spec: HRInput,
    seeds: Sequence[int],
    *,
    duration_s: float = 1800.0,
    step: int = 8,
    k: int = 3,
    n: int = 4,
    with_pvcs: bool = False,
) -> dict[str, Any]:
    """Measure episode detection and false alerts on held-out synthetic patients.

    Each seed is one patient: ``duration_s`` of rhythm with one afib episode (3-6 min),
    one tachycardia and one bradycardia episode (2-3 min each), at random
    non-overlapping times, and optionally isolated PVCs (``with_pvcs``) outside them.
    Windows of ``input_spec.window_beats`` beats (features from ``input_spec``) are
    scored by ``detector`` (any runtime, at its threshold) every ``step`` beats; a window's
    time is its last beat's time. **Alert rule**: the alert is on while at least ``k``
    of the last ``n`` windows are over threshold; each off->on transition is one alert.
    An alert is *true* when the windows it spans overlap an episode (episode interval
    extended by one window's duration, since a window ends after the beats it covers);
    otherwise it is a false alert. An episode is *detected* when a true alert overlaps it.

    Returns
    -------
    dict
        ``{kind}_detected``/``{kind}_episodes`` for afib, tachy, brady; median
        detection delay (s) from afib onset; ``false_alerts``, ``patient_hours``,
        ``false_alerts_per_patient_hour``; the rule.
    """
    from models.synthetic import Event, synth_ecg

    if detector.threshold is None:
        raise NotFittedError("detector has no threshold; call infer_threshold first")
    window = input_spec.window_beats
    kinds: tuple[Literal["afib", "tachy", "brady"], ...] = ("afib", "tachy", "brady")
    found: dict[str, int] = {kk: 0 for kk in kinds}
    total: dict[str, int] = {kk: 0 for kk in kinds}
    delays: list[float] = []
    false_alerts = 0
    hours = 0.0
    for seed in seeds:
        rng = np.random.default_rng([int(seed), 11])
        durations = {"afib": rng.uniform(180, 360), "tachy": rng.uniform(120, 180), "brady": rng.uniform(120, 180)}
        # place episodes in separate thirds of the record, after a 2 min normal lead-in
        third = (duration_s - 120.0) / 3.0
        order = rng.permutation(3)
        events = []
        spans: list[tuple[str, float, float]] = []
        for slot, episode in zip(order, kinds):
            d = float(durations[episode])
            start = 120.0 + slot * third + rng.uniform(0, max(third - d - 60.0, 1.0))
            params: dict[str, Any] = {}
            if episode == "tachy":
                params = {"hr_bpm": float(rng.uniform(130, 160))}
            elif episode == "brady":
                params = {"hr_bpm": float(rng.uniform(38, 45))}
            else:  # afib ventricular rate: rate-controlled to rapid
                params = {"hr_bpm": float(rng.uniform(75, 130))}
            events.append(Event(episode, float(start), d, params))
            spans.append((episode, float(start), float(start) + d))
        if with_pvcs:
            for t in rng.uniform(60, duration_s - 10, size=int(duration_s / 120)):
                if all(not (s - 30 <= t <= e + 30) for _, s, e in spans):
                    events.append(Event("pvc", float(t), 0.0, {}))
        rec = synth_ecg(duration_s, sample_rate_hz=100.0, hr_bpm=_patient_hr_bpm(int(seed)), events=events,
                        seed=int(seed))
        # the first beat has no interval (NaN); beat i of rr ends at beat_t[i]
        rr = np.asarray(rec.rr_s, dtype=np.float64)[1:]
        beat_t = np.asarray(rec.beat_samples, dtype=np.float64)[1:] / rec.sample_rate_hz
        ends, scores = score_rr(detector, input_spec, rr, step)
        flagged = scores > detector.threshold
        on = k_of_n(flagged, k, n)
        first = np.maximum(ends - window + 1, 0)
        win_start_t = beat_t[first] - rr[first]
        win_end_t = beat_t[ends]
        hours += float(beat_t[-1]) / 3600.0
        detected_here: set[int] = set()
        i = 0
        while i < on.size:
            if not on[i]:
                i += 1
                continue
            j = i
            while j + 1 < on.size and on[j + 1]:
                j += 1
            # the alert spans the windows that made it: from n-1 windows before onset
            a0 = float(win_start_t[max(i - n + 1, 0)])
            a1 = float(win_end_t[j])
            hit = False
            for e_idx, (kind, s, e) in enumerate(spans):
                if a0 <= e and a1 >= s:
                    hit = True
                    if e_idx not in detected_here:
                        detected_here.add(e_idx)
                        if kind == "afib":
                            delays.append(max(float(win_end_t[i]) - s, 0.0))
            if not hit:
                false_alerts += 1
            i = j + 1
        for e_idx, (kind, _, _) in enumerate(spans):
            total[kind] += 1
            found[kind] += int(e_idx in detected_here)
    out: dict[str, Any] = {
        "patients": len(list(seeds)),
        "patient_hours": round(hours, 3),
        "rule": f"alert while >= {k} of the last {n} windows (window {window} beats, "
                f"step {step} beats) score > threshold",
        "false_alerts": false_alerts,
        "false_alerts_per_patient_hour": round(false_alerts / hours, 4) if hours else None,
        "afib_median_delay_s": round(float(np.median(delays)), 1) if delays else None,
        "with_pvcs": with_pvcs,
    }
    for kind in kinds:
        out[f"{kind}_episodes"] = total[kind]
        out[f"{kind}_detected"] = found[kind]
        out[f"{kind}_detection_rate"] = round(found[kind] / total[kind], 4) if total[kind] else None
    return out


# --------------------------------------------------------------------------------------
# training entry point
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HRTrainResult:
    """What :func:`train_hr` produced.

    ``threshold`` is the Keras runtime's; ``thresholds`` has every runtime's as written
    to the bundle (``tflite-server`` for a server export).
    """

    bundle: Path
    threshold: float
    fpr: float
    n_params: int
    n_train_windows: int
    n_val_windows: int
    n_cal_windows: int
    training_data_sha256: str
    metrics: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    af: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def train_hr(
    out: str | Path,
    *,
    records: Sequence[str | Path] = (),
    synthetic: int = 0,
    seed: int = 0,
    fpr: float = 0.01,
    epochs: int = 30,
    duration_s: float = 1200.0,
    train_step: int = 4,
    window: int = WINDOW_BEATS,
    enc_units: int = 16,
    latent_units: int = 8,
    dec_units: int = 16,
    trim: int = DEFAULT_TRIM,
    version: str = "0.1.0",
    eval_patients: int = 0,
    server_batch_size: int | None = None,
    progress: bool = True,
    fs: float | None = None,
    max_windows_per_patient: int = 400,
    af: bool = True,
    af_folds: int = 5,
    af_max_false_per_day: float = 0.5,
    af_trees: int = 150,
    fold_bundles: str | Path | None = None,
) -> HRTrainResult:
    """Train the HR detector on normal rhythm, calibrate its thresholds, write the bundle.

    Patients (synthetic seeds, or WFDB records) are split 60/20/20 into train,
    validation (early stopping) and calibration (every runtime's threshold at ``fpr``
    on its own scores of their normal windows), so thresholds are measured on patients
    the model never saw.

    Parameters
    ----------
    out : path-like
        Bundle folder to write (atomically).
    records : sequence of path-like
        WFDB folders (e.g. nsr2db, qtdb, mitdb DS1); windows come from runs of
        consecutive AAMI-N beats. Exclusive with ``synthetic``.
    synthetic : int
        Number of synthetic normal-rhythm patients (``duration_s`` each).
    seed : int
        Seeds the split, the synthetic patients and training.
    fpr : float
        Target false-positive rate per window on held-out normal patients, in (0, 1).
    epochs : int
        Upper bound on epochs.
    train_step : int
        Beats between training window starts.
    window, enc_units, latent_units, dec_units, trim : int
        Window length (beats), layer widths, beats left out of the score.
    eval_patients : int
        If > 0, also run :func:`evaluate_synthetic` on this many further held-out
        synthetic patients and store the result in the bundle's metrics.
    server_batch_size : int or None
        Also export a fixed-batch float32 TFLite model for servers (None: skip).
    fs : float or None
        The annotations' rate for records that give none (ltafdb: 128).
    max_windows_per_patient : int
        Cap on one patient's autoencoder training (and validation) windows; calibration
        windows are capped at four times as many.
    af, af_folds, af_max_false_per_day, af_trees
        Records only: train the AF detector (:func:`models.hr.af_train.train_af`) with
        this many patient-wise folds, its threshold for at most this many false AF
        alerts per patient-day on held-out patients, this many trees.
    fold_bundles : path-like or None
        Also write ``fold{k}/`` bundles here: this bundle's autoencoder with fold ``k``'s
        AF detector (never trained on fold ``k``'s patients) at that fold's threshold.
    """
    import time

    from models.bundle import read_meta, write_bundle

    t_start = time.monotonic()

    validate_fpr(fpr)
    if bool(records) == bool(synthetic):
        raise ValueError(f"give exactly one of records or synthetic, got records={list(records)}, synthetic={synthetic}")
    if synthetic and int(synthetic) < 3:
        raise ValueError(f"synthetic needs >= 3 patients (train/val/calibration), got {synthetic}")
    h = hashlib.sha256()
    series: list[tuple[str, list[np.ndarray]]] = []
    from tqdm.auto import tqdm

    if synthetic:
        base = int(seed) * 1_000_003
        for i in tqdm(range(int(synthetic)), desc="synthetic patients", disable=not progress, file=sys.stderr):
            rr = synthetic_normal_rr(base + i, duration_s)
            _hash_update(h, f"synthetic:{base + i}", rr)
            series.append((f"synthetic:{base + i}", [rr]))
        source: dict[str, Any] = {"synthetic_patients": int(synthetic), "duration_s": duration_s,
                                  "generator": "models.synthetic.synth_ecg", "seed_base": base}
    else:
        rr_series = list(load_rr_folders(records, fs=fs, progress=progress))
        for rs in rr_series:
            _hash_update(h, rs.name, rs.rr_s)
            h.update(rs.rhythm.astype("U8").tobytes())
            runs = _normal_runs(rs)
            if runs:
                series.append((rs.name, runs))
        if len(series) < 3:
            raise ValueError(f"need >= 3 records with normal rhythm in {list(map(str, records))}, got {len(series)}")
        source = {"records": [str(Path(f).name) for f in records], "n_records": len(rr_series),
                  "n_records_with_normal_rhythm": len(series),
                  "normal_rhythm": f"runs of N-N intervals in rhythm {list(SINUS_RHYTHMS)}, noisy intervals left out",
                  "max_windows_per_patient": int(max_windows_per_patient)}

    rng = np.random.default_rng(int(seed))
    order = rng.permutation(len(series))
    n_val = max(1, round(0.2 * len(series)))
    n_cal = max(1, round(0.2 * len(series)))
    groups = {
        "val": order[:n_val],
        "cal": order[n_val : n_val + n_cal],
        "train": order[n_val + n_cal :],
    }

    pick = np.random.default_rng([int(seed), 3])

    def windows_of(idx: np.ndarray, step: int, cap: int | None) -> np.ndarray:
        out = []
        for i in idx:
            parts = [w for w in (rr_windows(r, window, step) for r in series[int(i)][1]) if len(w)]
            if not parts:
                continue
            w = np.concatenate(parts)
            if cap is not None and len(w) > cap:  # one patient's share, drawn evenly over its record
                w = w[np.sort(pick.choice(len(w), cap, replace=False))]
            out.append(w)
        return np.concatenate(out) if out else np.zeros((0, window), np.float32)

    cap = None if synthetic else int(max_windows_per_patient)
    tr = windows_of(groups["train"], train_step, cap)
    va = windows_of(groups["val"], train_step, cap)
    cal = windows_of(groups["cal"], 1, None if cap is None else 4 * cap)
    for key, arr in (("train", tr), ("val", va), ("calibration", cal)):
        if arr.shape[0] == 0:
            raise ValueError(f"no {window}-beat normal-rhythm windows in the {key} split")
    spec = HRInput(normaliser=HRNormaliser.fit(tr), window_beats=window)
    x_tr, x_va, x_cal = spec.make_input(tr), spec.make_input(va), spec.make_input(cal)
    det = LSTMAutoencoder(timesteps=window, channels=N_FEATURES, score=HRScore(trim=trim), name="hr-lstm-ae",
                          version=version, enc_units=enc_units, latent_units=latent_units, dec_units=dec_units,
                          input_name="rr_window")
    hist = det.fit(x_tr, x_va, epochs=epochs, batch_size=BATCH_SIZE, seed=seed, progress=progress,
                   patience=PATIENCE, learning_rate=LEARNING_RATE)
    # The Keras threshold, for the held-out measurement below; write_bundle calibrates
    # every runtime (this one included, to the same value) on the same windows.
    thr = det.infer_threshold(x_cal, fpr)
    metrics: dict[str, Any] = {"final_loss": hist["loss"][-1], "best_val_loss": min(hist["val_loss"]),
                               "epochs_run": len(hist["loss"])}
    if eval_patients and synthetic:
        eval_seeds = [int(seed) * 1_000_003 + int(synthetic) + 10_000 + i for i in range(int(eval_patients))]
        metrics["held_out_synthetic"] = evaluate_synthetic(det, spec, eval_seeds)
        metrics["held_out_synthetic_with_pvcs"] = evaluate_synthetic(det, spec, eval_seeds, with_pvcs=True)
    digest = h.hexdigest()
    config = {
        "seed": int(seed), "epochs": int(epochs), "train_step": int(train_step),
        "batch_size": BATCH_SIZE, "optimizer": "adam", "learning_rate": LEARNING_RATE,
        "early_stopping": f"val_loss, patience {PATIENCE}, best weights restored",
        "split": {k: [series[int(i)][0] for i in v] for k, v in groups.items()} if not synthetic
        else {k: len(v) for k, v in groups.items()},
        "n_windows": {"train": len(tr), "val": len(va), "cal": len(cal)}, **source,
    }
    # Windows from several patients spread the int8 ranges over real variation.
    rep = np.random.default_rng([int(seed), 5]).permutation(x_tr)[:500]
    extra_files: dict[str, bytes] = {}
    extra: dict[str, Any] = {}
    af_summary: dict[str, Any] = {}
    af_result = None
    if not synthetic and af:
        from models.hr.af_train import train_af

        af_result = train_af(rr_series, k=af_folds, seed=seed, max_false_per_day=af_max_false_per_day,
                             n_trees=af_trees, progress=progress)
        extra_files[AF_DETECTOR_FILE] = af_result.detector.to_bytes()
        af_summary = {
            "file": AF_DETECTOR_FILE, **af_result.detector.settings(),
            "threshold_rule": (f"lowest probability with <= {af_max_false_per_day} false AF alerts per "
                               "patient-day under the alert rule, on out-of-fold (held-out) predictions"),
            "max_false_per_day": af_max_false_per_day, "folds": af_folds,
            "training_seconds": round(af_result.seconds, 1),
        }
        extra["af_detector"] = af_summary
        metrics["af_detector"] = {
            "held_out_pooled": {k: v for k, v in af_result.pooled.items() if k != "threshold_table"},
            "held_out_threshold_table": af_result.pooled["threshold_table"],
            "held_out_folds": af_result.folds, "fold_of": af_result.fold_of,
        }
        config["af_detector"] = {"folds": af_folds, "trees": af_trees, "seed": int(seed),
                                 "records": sorted(af_result.fold_of)}
    path = write_bundle(out, det, spec, calibration=x_cal, fpr=fpr, representative=rep,
                        training_data_sha256=digest, seed=int(seed), training_config=config, metrics=metrics,
                        server_batch_size=server_batch_size, extra_files=extra_files, extra=extra)
    if fold_bundles is not None and af_result is not None:
        from models.hr.af import AFDetector

        for f, (fold_det, thr_f) in enumerate(zip(af_result.fold_detectors, af_result.fold_thresholds)):
            d = AFDetector(fold_det.ensemble, thr_f, fold_det.rule)
            held = sorted(n for n, k in af_result.fold_of.items() if k == f)
            write_bundle(Path(fold_bundles) / f"fold{f}", det, spec, calibration=x_cal, fpr=fpr,
                         representative=rep, training_data_sha256=digest, seed=int(seed),
                         training_config={**config, "fold": f, "af_held_out_records": held},
                         metrics={"af_detector_fold": af_result.folds[f]}, server_batch_size=None,
                         extra_files={AF_DETECTOR_FILE: d.to_bytes()},
                         extra={"af_detector": {**af_summary, **d.settings(), "fold": f,
                                                "held_out_records": held}})
    return HRTrainResult(bundle=path, threshold=thr, fpr=fpr, n_params=det.n_params,
                         n_train_windows=len(tr), n_val_windows=len(va), n_cal_windows=len(cal),
                         training_data_sha256=digest, metrics=metrics, thresholds=read_meta(path).thresholds(),
                         af=af_summary, seconds=time.monotonic() - t_start)


def main(argv: Sequence[str] | None = None) -> int:
    """``cardiowatch train hr --records DIR... | --synthetic N --out DIR [--seed --fpr --epochs]``."""
    p = argparse.ArgumentParser(prog="cardiowatch train hr", description=__doc__.splitlines()[0],
                                formatter_class=HelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--records", nargs="+", metavar="DIR", help="WFDB folders (normal-rhythm stretches are used)")
    src.add_argument("--synthetic", type=int, metavar="N", help="number of synthetic normal-rhythm patients")
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--fpr", type=float, default=0.01, help="target false-positive rate per window (0 < fpr < 1)")
    p.add_argument("--epochs", type=int, default=30, help="autoencoder training epochs")
    p.add_argument("--duration-s", type=float, default=1200.0, help="--synthetic: seconds per patient")
    p.add_argument("--eval-patients", type=int, default=0,
                   help="held-out synthetic patients with afib/tachy/brady episodes to measure")
    p.add_argument("--version", default="0.1.0", help="version string written into the bundle")
    p.add_argument("--fs", type=float, help="annotation sample rate (Hz) for records that give none (ltafdb: 128)")
    p.add_argument("--max-windows-per-patient", type=int, default=400,
                   help="cap on one patient's autoencoder training windows (records)")
    p.add_argument("--no-af", action="store_true", help="records: skip the AF detector")
    p.add_argument("--af-folds", type=int, default=5, help="patient-wise folds of the AF detector")
    p.add_argument("--af-max-false-per-day", type=float, default=0.5,
                   help="false AF alerts per patient-day on held-out patients the AF threshold is chosen for")
    p.add_argument("--af-trees", type=int, default=150, help="trees of the AF detector's forest")
    p.add_argument("--fold-bundles", metavar="DIR",
                   help="also write one bundle per fold (AF detector held out from that fold's patients)")
    args = p.parse_args(list(argv) if argv is not None else None)
    try:
        res = train_hr(args.out, records=args.records or (), synthetic=args.synthetic or 0, seed=args.seed,
                       fpr=args.fpr, epochs=args.epochs, duration_s=args.duration_s, version=args.version,
                       eval_patients=args.eval_patients, fs=args.fs,
                       max_windows_per_patient=args.max_windows_per_patient, af=not args.no_af,
                       af_folds=args.af_folds, af_max_false_per_day=args.af_max_false_per_day,
                       af_trees=args.af_trees, fold_bundles=args.fold_bundles)
    except ValueError as exc:
        p.error(str(exc))
    metrics = {k: v for k, v in res.metrics.items() if k != "af_detector"}
    af = res.metrics.get("af_detector", {})
    print(json.dumps({"bundle": str(res.bundle), "threshold": res.threshold, "thresholds": res.thresholds, "fpr": res.fpr,
                      "n_params": res.n_params, "windows": [res.n_train_windows, res.n_val_windows,
                                                            res.n_cal_windows],
                      "metrics": metrics, "af_detector": res.af,
                      "af_held_out": {"pooled": af.get("held_out_pooled"),
                                      "folds": [{k: v for k, v in f.items() if k != "records_in_fold"}
                                                for f in af.get("held_out_folds", [])]},
                      "seconds": round(res.seconds, 1)}, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
