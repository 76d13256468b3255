"""Heart-rate training stage: fit the RR-window LSTM autoencoder on normal rhythm, calibrate its thresholds, write the bundle.

Patients (synthetic seeds, or WFDB records) are split 60/20/20 into train, validation
(early stopping) and calibration (each runtime's threshold at a stated FPR on their
normal windows), so thresholds are measured on patients the model never saw. Windows
and features come from :mod:`models.hr.features`; the model, training loop, export and
bundle are the shared ones (:mod:`models.autoencoder`, :mod:`models.export`,
:mod:`models.bundle`).

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
from models.hr.features import N_FEATURES, RR_MAX_S, RR_MIN_S, WINDOW_BEATS, DEFAULT_TRIM, HRInput, HRNormaliser, HRScore, rr_windows

__all__ = [
    "HRTrainResult",
    "evaluate_synthetic",
    "k_of_n",
    "main",
    "score_rr",
    "synthetic_normal_rr",
    "train_hr",
]

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


def _record_normal_rr(folder: Path, name: str) -> list[np.ndarray]:
    """Runs of RR intervals between consecutive AAMI-N beats of one WFDB record."""
    from models.records import load_record

    rec = load_record(folder, name)
    samples = np.asarray(rec.beat_samples, dtype=np.float64)
    cls = np.asarray(rec.aami_classes, dtype=str)
    if samples.size < 2:
        return []
    rr = np.diff(samples) / float(rec.sample_rate_hz)
    ok = (cls[1:] == "N") & (cls[:-1] == "N") & (rr >= RR_MIN_S) & (rr <= RR_MAX_S)
    runs: list[np.ndarray] = []
    start = None
    for i, good in enumerate(np.append(ok, False)):
        if good and start is None:
            start = i
        elif not good and start is not None:
            runs.append(rr[start:i])
            start = None
    return runs


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
    """
    from models.bundle import read_meta, write_bundle

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
        from models.records import list_records

        for folder in records:
            folder = Path(folder)
            for name in tqdm(list_records(folder), desc=f"records {folder.name}", disable=not progress,
                             file=sys.stderr):
                runs = _record_normal_rr(folder, name)
                for r in runs:
                    _hash_update(h, f"{folder.name}/{name}", r)
                if runs:
                    series.append((f"{folder.name}/{name}", runs))
        if len(series) < 3:
            raise ValueError(f"need >= 3 records with normal rhythm in {list(map(str, records))}, got {len(series)}")
        source = {"records": [str(Path(f).name) for f in records], "n_records": len(series)}

    rng = np.random.default_rng(int(seed))
    order = rng.permutation(len(series))
    n_val = max(1, round(0.2 * len(series)))
    n_cal = max(1, round(0.2 * len(series)))
    groups = {
        "val": order[:n_val],
        "cal": order[n_val : n_val + n_cal],
        "train": order[n_val + n_cal :],
    }

    def windows_of(idx: np.ndarray, step: int) -> np.ndarray:
        parts = [rr_windows(r, window, step) for i in idx for r in series[int(i)][1]]
        parts = [p for p in parts if len(p)]
        return np.concatenate(parts) if parts else np.zeros((0, window), np.float32)

    tr = windows_of(groups["train"], train_step)
    va = windows_of(groups["val"], train_step)
    cal = windows_of(groups["cal"], 1)
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
    path = write_bundle(out, det, spec, calibration=x_cal, fpr=fpr, representative=rep,
                        training_data_sha256=digest, seed=int(seed), training_config=config, metrics=metrics,
                        server_batch_size=server_batch_size)
    return HRTrainResult(bundle=path, threshold=thr, fpr=fpr, n_params=det.n_params,
                         n_train_windows=len(tr), n_val_windows=len(va), n_cal_windows=len(cal),
                         training_data_sha256=digest, metrics=metrics, thresholds=read_meta(path).thresholds())


def main(argv: Sequence[str] | None = None) -> int:
    """``cardiowatch train hr --records DIR... | --synthetic N --out DIR [--seed --fpr --epochs]``."""
    p = argparse.ArgumentParser(prog="cardiowatch train hr", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--records", nargs="+", metavar="DIR", help="WFDB folders (normal-rhythm stretches are used)")
    src.add_argument("--synthetic", type=int, metavar="N", help="number of synthetic normal-rhythm patients")
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fpr", type=float, default=0.01, help="target false-positive rate per window (0 < fpr < 1)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--duration-s", type=float, default=1200.0, help="seconds per synthetic patient")
    p.add_argument("--eval-patients", type=int, default=0,
                   help="held-out synthetic patients with afib/tachy/brady episodes to measure")
    p.add_argument("--version", default="0.1.0")
    args = p.parse_args(list(argv) if argv is not None else None)
    try:
        res = train_hr(args.out, records=args.records or (), synthetic=args.synthetic or 0, seed=args.seed,
                       fpr=args.fpr, epochs=args.epochs, duration_s=args.duration_s, version=args.version,
                       eval_patients=args.eval_patients)
    except ValueError as exc:
        p.error(str(exc))
    print(json.dumps({"bundle": str(res.bundle), "threshold": res.threshold, "thresholds": res.thresholds, "fpr": res.fpr,
                      "n_params": res.n_params, "windows": [res.n_train_windows, res.n_val_windows,
                                                            res.n_cal_windows],
                      "metrics": res.metrics}, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
