"""ECG training stage: fit the beat LSTM autoencoder on normal beats, calibrate its thresholds, write the bundle.

Data come from WFDB folders (:mod:`models.records`, annotated beats) or from the
project's synthetic generator (:mod:`models.synthetic`, one seed per "patient").
Records are split BY PATIENT into train (fit), val (early stopping) and calib
(each runtime's threshold at a stated FPR on their normal beats); no patient's beats
appear in two splits. Beats go through the same front end as the live stream
(:func:`models.signal.preprocess_record`, :func:`models.beats.segment_record`,
:func:`models.beats.beat_features`); detected beats are labelled by the nearest
annotation within 150 ms.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from models.autoencoder import LSTMAutoencoder, validate_fpr
from models.ecg.beatfeatures import FEATURE_NAMES
from models.ecg.scorer import CLASSIFIER_FILE
from models.ecg.features import BEAT_LENGTH, N_CHANNELS, ECGInput, ECGScore, Normaliser, make_model_input
from models.cli_help import HelpFormatter

__all__ = [
    "LabelledBeats",
    "TrainResult",
    "beats_from_signal",
    "patient_of",
    "evaluate_detector",
    "fit_ecg",
    "load_labelled_records",
    "main",
    "synthetic_eval_patients",
    "train_ecg",
    "training_data_hash",
]

# A detected beat takes the label of the nearest annotation within this window
# (AAMI EC57 beat-matching tolerance).
_MATCH_TOL_S = 0.15
# Beat-quality floor for training / threshold beats (noisy beats are not "normal data").
_MIN_QUALITY = 0.5
# Training loop settings of the ECG model (Adam step, early-stopping patience).
LEARNING_RATE = 2e-3
PATIENCE = 4


@dataclass(frozen=True)
class LabelledBeats:
    """Beats of one record (one patient) with labels.

    Attributes
    ----------
    name : str
        Record name (``folder/record``).
    waveforms : np.ndarray
        float32 [n, 80] baseline-subtracted mV.
    rr_context : np.ndarray
        float32 [n, 2] RR ratios.
    labels : np.ndarray
        str [n] class per detected beat: the AAMI class of the reference beat within
        150 ms, or ``"X"`` when there is none (a false detection).
    quality : np.ndarray
        float32 [n] beat quality (0 in the front end's 3 s warm-up, as in the stream).
    data_sha256 : str
        sha256 of the raw samples (for the training-data hash).
    features : np.ndarray
        float32 [n, len(FEATURE_NAMES)] beat-context features, computed in stream order.
    patient : str
        Patient identity (:func:`patient_of`); folds never split a patient.
    """

    name: str
    waveforms: np.ndarray
    rr_context: np.ndarray
    labels: np.ndarray
    quality: np.ndarray
    data_sha256: str
    features: np.ndarray = field(default_factory=lambda: np.zeros((0, len(FEATURE_NAMES)), np.float32))
    patient: str = ""


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train_ecg` produced.

    Attributes
    ----------
    bundle_path : Path
        The bundle folder.
    metrics : dict
        Training and held-out metrics (as stored in the bundle).
    history : dict
        Keras loss history.
    thresholds : dict
        Runtime -> its threshold as written to the bundle (``tflite-server`` for the
        server export).
    """

    bundle_path: Path
    metrics: dict[str, Any]
    history: dict[str, list[float]] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)


def patient_of(folder: str, record: str) -> str:
    """Patient identity of a PhysioNet record, so that folds never split a patient.

    A MIT-BIH Arrhythmia record is a patient; QT Database excerpts ``sel1xx``/``sel2xx``
    are MIT-BIH records of that number and ``sel8xx`` Supraventricular Arrhythmia
    Database records; Noise Stress Test records ``118e*`` are MIT-BIH 118 with noise.
    Any other record is its own patient.
    """
    f, r = Path(folder).name, str(record)
    if f.startswith("mitdb"):
        return f"mitdb/{r}"
    if f == "qtdb" and r.startswith("sel") and r[3:].isdigit():
        num = r[3:]
        if len(num) == 3 and num[0] in "12":
            return f"mitdb/{num}"
        if len(num) == 3 and num[0] == "8":
            return f"svdb/{num}"
    if f == "nstdb" and r.startswith("118e"):
        return "mitdb/118"
    return f"{f}/{r}"


def beats_from_signal(
    name: str,
    signal_mv: np.ndarray,
    sample_rate_hz: float,
    ann_samples: np.ndarray,
    ann_labels: Sequence[str] | np.ndarray,
    patient: str | None = None,
) -> LabelledBeats:
    """Run the live front end over a record and label every detected beat.

    Parameters
    ----------
    name : str
        Record name.
    signal_mv : np.ndarray
        1-D signal in mV at ``sample_rate_hz``.
    sample_rate_hz : float
        Its rate.
    ann_samples, ann_labels : array-like
        Annotated R-peak sample indices (input rate) and AAMI classes.
    patient : str, optional
        Patient identity (default: ``name``).

    Returns
    -------
    LabelledBeats
        Every detected beat, in stream order, with its beat-context features; a
        detection with no annotation within 150 ms is labelled ``"X"``.
    """
    from dataclasses import replace

    from models.beats import WARMUP_S, BeatSpec, beat_features, segment_record
    from models.ecg.beatfeatures import beat_feature_matrix
    from models.signal import MODEL_RATE_HZ, preprocess_record

    x = np.asarray(signal_mv, dtype=np.float64)
    y = preprocess_record(x, sample_rate_hz)
    warm = MODEL_RATE_HZ * WARMUP_S
    # the stream core gives beats of a segment's warm-up quality 0: so does training
    beats = [b if b.r_index >= warm else replace(b, quality=0.0) for b in segment_record(y, BeatSpec())]
    ann = np.asarray(ann_samples, dtype=np.float64) * (MODEL_RATE_HZ / float(sample_rate_hz))
    lab = np.asarray(ann_labels).astype(str)
    order = np.argsort(ann)
    ann, lab = ann[order], lab[order]
    digest = hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()
    if not beats:
        return LabelledBeats(name, np.zeros((0, 80), np.float32), np.ones((0, 2), np.float32), np.zeros(0, "<U1"),
                             np.zeros(0, np.float32), digest, patient=patient or name)
    r = np.array([b.r_index for b in beats], dtype=np.float64)
    labels = np.full(r.size, "X", "<U1")
    if ann.size:
        j = np.clip(np.searchsorted(ann, r), 1, ann.size - 1) if ann.size > 1 else np.zeros(r.size, dtype=np.int64)
        if ann.size > 1:
            j = np.where(np.abs(r - ann[j - 1]) <= np.abs(r - ann[j]), j - 1, j)
        keep = np.abs(ann[j] - r) <= _MATCH_TOL_S * MODEL_RATE_HZ
        labels[keep] = lab[j[keep]]
    waves, rr = beat_features(beats)
    quality = np.array([float(b.quality) for b in beats], dtype=np.float32)
    feats, _ = beat_feature_matrix(beats)
    return LabelledBeats(
        name=name,
        waveforms=np.asarray(waves, np.float32),
        rr_context=np.asarray(rr, np.float32),
        labels=labels,
        quality=quality,
        data_sha256=digest,
        features=feats,
        patient=patient or name,
    )


def _synthetic_normal_patient(seed: int, duration_s: float) -> LabelledBeats:
    from models.synthetic import Event, synth_ecg

    rng = np.random.default_rng([seed, 7])
    events = []
    # Mild baseline wander on part of the record: the front end must cope, and the
    # model must not learn that a perfectly flat baseline is "normal".
    if rng.random() < 0.5:
        start = float(rng.uniform(0, duration_s / 2))
        events.append(Event("wander", start, duration_s / 3, {"amplitude_mv": float(rng.uniform(0.1, 0.5))}))
    rec = synth_ecg(
        duration_s,
        sample_rate_hz=float(rng.choice([250.0, 360.0])),
        hr_bpm=float(rng.uniform(55, 95)),
        events=events,
        seed=int(seed),
        noise_mv=float(rng.uniform(0.005, 0.04)),
    )
    return beats_from_signal(f"synthetic-{seed}", rec.signal_mv, rec.sample_rate_hz, rec.beat_samples, rec.beat_labels)


def synthetic_eval_patients(n_patients: int, seed: int, duration_s: float = 120.0) -> list[LabelledBeats]:
    """Held-out synthetic patients with PVC and ventricular-run events, for evaluation.

    Seeds are drawn from a range disjoint from the training seeds of :func:`train_ecg`.
    """
    from models.synthetic import Event, synth_ecg

    out = []
    for i in range(int(n_patients)):
        s = 1_000_000 + int(seed) * 1000 + i
        rng = np.random.default_rng([s, 11])
        t_pvc = np.arange(6.0, duration_s - 5.0, float(rng.uniform(6.0, 10.0)))
        events = [Event("pvc", float(t + rng.uniform(0, 1))) for t in t_pvc]
        events.append(Event("vrun", float(duration_s * 0.5 + 0.5), 4.0))
        rec = synth_ecg(duration_s, sample_rate_hz=250.0, hr_bpm=float(rng.uniform(55, 95)), events=events, seed=s, noise_mv=0.02)
        out.append(beats_from_signal(f"synthetic-eval-{s}", rec.signal_mv, rec.sample_rate_hz, rec.beat_samples, rec.beat_labels))
    return out


def load_labelled_records(folders: Sequence[Path], progress: bool = True) -> list[LabelledBeats]:
    """Every annotated record of ``folders`` through the live front end, labelled
    (:func:`beats_from_signal`), with its patient identity (:func:`patient_of`)."""
    return _records_beats(folders, progress)


def _records_beats(folders: Sequence[Path], progress: bool) -> list[LabelledBeats]:
    from models.records import list_records, load_record

    out = []
    items = [(Path(f), n) for f in folders for n in list_records(f)]
    for folder, name in _progress(items, progress, "records"):
        rec = load_record(folder, name)
        if rec.beat_samples.size == 0:
            continue  # no beat annotations: nothing to learn from (e.g. nstdb noise records)
        out.append(beats_from_signal(f"{folder.name}/{rec.name}", rec.signal_mv, rec.sample_rate_hz, rec.beat_samples,
                                     rec.aami_classes, patient=patient_of(folder.name, rec.name)))
    return out


def _progress(items: Sequence[Any], on: bool, desc: str) -> Any:
    if not on:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, file=sys.stderr)


def training_data_hash(patients: Sequence[LabelledBeats]) -> str:
    """sha256 over the sorted (record name, sample sha256) pairs."""
    h = hashlib.sha256()
    for name, digest in sorted((p.name, p.data_sha256) for p in patients):
        h.update(name.encode())
        h.update(b"\0")
        h.update(digest.encode())
        h.update(b"\n")
    return h.hexdigest()


def _split(n: int, seed: int, fractions: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if n < 3:
        raise ValueError(f"need at least 3 patients/records for a train/val/calib split, got {n}")
    perm = np.random.default_rng([seed, 3]).permutation(n)
    n_val = max(1, int(round(n * fractions[1])))
    n_cal = max(1, int(round(n * fractions[2])))
    n_tr = n - n_val - n_cal
    if n_tr < 1:
        raise ValueError(f"split {fractions} leaves no training patients out of {n}")
    return perm[:n_tr], perm[n_tr : n_tr + n_val], perm[n_tr + n_val :]


def _normal(patients: Sequence[LabelledBeats]) -> tuple[np.ndarray, np.ndarray]:
    w = [p.waveforms[(p.labels == "N") & (p.quality >= _MIN_QUALITY)] for p in patients]
    r = [p.rr_context[(p.labels == "N") & (p.quality >= _MIN_QUALITY)] for p in patients]
    return np.concatenate(w) if w else np.zeros((0, 80), np.float32), np.concatenate(r) if r else np.zeros((0, 2), np.float32)


def evaluate_detector(detector: Any, patients: Sequence[LabelledBeats], normaliser: Normaliser) -> dict[str, Any]:
    """AUROC V vs N and flagged fractions at the detector's threshold over ``patients``."""
    from models.evaluation import auroc

    w = np.concatenate([p.waveforms for p in patients])
    r = np.concatenate([p.rr_context for p in patients])
    lab = np.concatenate([p.labels for p in patients])
    s = detector.score(make_model_input(w, r, normaliser))
    v, n = s[lab == "V"], s[lab == "N"]
    out: dict[str, Any] = {"n_beats_N": int(n.size), "n_beats_V": int(v.size), "auroc_V_vs_N": float(auroc(v, n))}
    if detector.threshold is not None:
        out["flagged_fraction_V"] = float(np.mean(v > detector.threshold)) if v.size else None
        out["flagged_fraction_N"] = float(np.mean(n > detector.threshold)) if n.size else None
    return out


def train_ecg(
    out_dir: str | Path,
    records: Sequence[str | Path] = (),
    synthetic_patients: int = 0,
    epochs: int = 30,
    seed: int = 0,
    fpr: float = 0.01,
    batch_size: int = 256,
    synthetic_duration_s: float = 120.0,
    eval_patients: int = 8,
    enc_units: int = 32,
    latent_units: int = 16,
    dec_units: int = 32,
    rr_weight: float = 1.0,
    name: str = "ecg-lstm-ae",
    version: str = "0.1.0",
    mixed_precision: bool = False,
    split: tuple[float, float, float] = (0.7, 0.15, 0.15),
    server_batch_size: int | None = 64,
    progress: bool = True,
) -> TrainResult:
    """Train the ECG beat autoencoder and write its bundle.

    Parameters
    ----------
    out_dir : str or Path
        Bundle folder (written atomically).
    records : sequence of folders
        WFDB folders (:mod:`models.records`); used if given.
    synthetic_patients : int
        Otherwise, this many synthetic patients (seeds) of ``synthetic_duration_s`` each.
    epochs, batch_size, seed : int
        Training loop; the seed fixes the split, the data and the weights.
    fpr : float
        Target false-positive rate on held-out normal beats; every runtime's threshold
        is calibrated on its own scores of the calib patients' normal beats.
    eval_patients : int
        Synthetic held-out patients with PVC / vrun events for AUROC (synthetic mode;
        with records, the calib records' V beats are used instead).
    enc_units, latent_units, dec_units, rr_weight, mixed_precision
        Model settings (:class:`models.autoencoder.LSTMAutoencoder`, :class:`models.ecg.features.ECGScore`).
    name, version : str
        Bundle identity.
    split : tuple
        Patient fractions (train, val, calib).
    server_batch_size : int or None
        Also export a fixed-batch float32 TFLite model for servers.
    progress : bool
        tqdm / Keras progress on stderr.

    Returns
    -------
    TrainResult
    """
    validate_fpr(fpr)
    if not records and int(synthetic_patients) < 3:
        raise ValueError(f"give WFDB record folders or synthetic_patients >= 3, got records={list(records)} synthetic_patients={synthetic_patients}")
    if records:
        patients = _records_beats([Path(r) for r in records], progress)
        source: dict[str, Any] = {"kind": "wfdb", "folders": [str(r) for r in records]}
    else:
        seeds = [int(seed) * 10_000 + i for i in range(int(synthetic_patients))]
        patients = [_synthetic_normal_patient(s, synthetic_duration_s) for s in _progress(seeds, progress, "synthetic patients")]
        source = {"kind": "synthetic", "generator": "models.synthetic.synth_ecg", "patients": int(synthetic_patients), "duration_s": float(synthetic_duration_s), "seeds": f"{seeds[0]}..{seeds[-1]}"}
    return fit_ecg(out_dir, patients, source, epochs=epochs, seed=seed, fpr=fpr, batch_size=batch_size,
                   enc_units=enc_units, latent_units=latent_units, dec_units=dec_units, rr_weight=rr_weight,
                   name=name, version=version, mixed_precision=mixed_precision, split=split,
                   server_batch_size=server_batch_size, progress=progress,
                   eval_patients=0 if records else eval_patients, synthetic_duration_s=synthetic_duration_s)


def fit_ecg(
    out_dir: str | Path,
    patients: Sequence[LabelledBeats],
    source: dict[str, Any],
    *,
    epochs: int = 30,
    seed: int = 0,
    fpr: float = 0.01,
    batch_size: int = 256,
    enc_units: int = 32,
    latent_units: int = 16,
    dec_units: int = 32,
    rr_weight: float = 1.0,
    name: str = "ecg-lstm-ae",
    version: str = "0.1.0",
    mixed_precision: bool = False,
    split: tuple[float, float, float] = (0.7, 0.15, 0.15),
    server_batch_size: int | None = 64,
    progress: bool = True,
    eval_patients: int = 0,
    synthetic_duration_s: float = 120.0,
    classifier: bool | None = None,
    ventricular_fpr: float = 0.008,
    supraventricular_fpr: float = 0.008,
) -> TrainResult:
    """Fit the autoencoder (and the beat classifier) on labelled beats and write the bundle.

    :func:`train_ecg` loads the beats and calls this; cross-validation calls it once per
    fold with the fold's training patients, so the front end runs once per record.

    Parameters
    ----------
    patients : sequence of LabelledBeats
        One entry per record; ``patient`` groups records of one person.
    source : dict
        Description of the training data, stored in the bundle.
    classifier : bool, optional
        Train the beat classifier too (default: when the beats carry ectopic labels).
    ventricular_fpr, supraventricular_fpr : float
        The classifier's operating points (fractions of held-out normal beats called V, S).

    Other parameters are those of :func:`train_ecg`.
    """
    from models.bundle import read_meta, write_bundle

    validate_fpr(fpr)
    groups = sorted({p.patient or p.name for p in patients})
    g_tr, g_va, g_ca = (set(groups[i] for i in part) for part in _split(len(groups), int(seed), split))
    tr = [i for i, p in enumerate(patients) if (p.patient or p.name) in g_tr]
    va = [i for i, p in enumerate(patients) if (p.patient or p.name) in g_va]
    ca = [i for i, p in enumerate(patients) if (p.patient or p.name) in g_ca]
    w_tr, r_tr = _normal([patients[i] for i in tr])
    w_va, r_va = _normal([patients[i] for i in va])
    w_ca, r_ca = _normal([patients[i] for i in ca])
    for key, arr in (("train", w_tr), ("val", w_va), ("calib", w_ca)):
        if arr.shape[0] == 0:
            raise ValueError(f"no normal beats of quality >= {_MIN_QUALITY} in the {key} split")
    normaliser = Normaliser.fit(w_tr)
    x_tr = make_model_input(w_tr, r_tr, normaliser)
    x_va = make_model_input(w_va, r_va, normaliser)
    x_ca = make_model_input(w_ca, r_ca, normaliser)

    det = LSTMAutoencoder(
        timesteps=BEAT_LENGTH,
        channels=N_CHANNELS,
        score=ECGScore(rr_weight=rr_weight),
        name=name,
        version=version,
        enc_units=enc_units,
        latent_units=latent_units,
        dec_units=dec_units,
        mixed_precision=mixed_precision,
        input_name="beat",
    )
    history = det.fit(
        x_tr, x_va, epochs=epochs, batch_size=batch_size, seed=seed, progress=progress, patience=PATIENCE, learning_rate=LEARNING_RATE
    )
    # The Keras threshold, for the held-out metrics below; write_bundle calibrates every
    # runtime (this one included, to the same value) on the same calib beats.
    threshold = det.infer_threshold(x_ca, fpr)

    metrics: dict[str, Any] = {
        "n_patients": {"train": len(g_tr), "val": len(g_va), "calib": len(g_ca)},
        "n_records": {"train": int(len(tr)), "val": int(len(va)), "calib": int(len(ca))},
        "n_beats": {"train": int(len(x_tr)), "val": int(len(x_va)), "calib": int(len(x_ca))},
        "epochs_run": len(history.get("loss", [])),
        "final_loss": history["loss"][-1],
        "best_val_loss": float(min(history["val_loss"])),
        "threshold": threshold,
    }
    if eval_patients <= 0:
        held = [patients[i] for i in ca]
        metrics["heldout"] = {"source": "autoencoder alone, calib patients (all beats)",
                              **evaluate_detector(det, held, normaliser)}
    else:
        held = synthetic_eval_patients(eval_patients, seed, synthetic_duration_s)
        metrics["heldout"] = {"source": f"{eval_patients} synthetic patients with pvc/vrun events, unseen seeds", **evaluate_detector(det, held, normaliser)}
    extra_files: dict[str, bytes] = {}
    extra: dict[str, Any] = {}
    labels_all = np.concatenate([p.labels for p in patients])
    if classifier is None:
        classifier = bool(np.isin(labels_all, ["S", "V"]).any())
    if classifier:
        clf, clf_metrics = _fit_classifier(det, normaliser, patients, seed, ventricular_fpr, supraventricular_fpr,
                                           progress)
        extra_files[CLASSIFIER_FILE] = clf.trees.to_bytes()
        extra["beat_classifier"] = {**clf.settings(), "file": CLASSIFIER_FILE}
        metrics["beat_classifier"] = clf_metrics
    config = {
        "data": source,
        "epochs": int(epochs),
        "batch_size": int(batch_size),
        "fpr": float(fpr),
        "split_fractions": list(split),
        "optimizer": "adam",
        "learning_rate": LEARNING_RATE,
        "early_stopping": f"val_loss, patience {PATIENCE}, best weights restored",
        "beat_min_quality": _MIN_QUALITY,
    }
    # Calibration beats from several patients spread the int8 ranges over real variation.
    rep = np.random.default_rng([seed, 5]).permutation(x_tr)[:500]
    path = write_bundle(
        out_dir,
        det,
        ECGInput(normaliser=normaliser),
        calibration=x_ca,
        fpr=fpr,
        representative=rep,
        training_data_sha256=training_data_hash(patients),
        seed=seed,
        training_config=config,
        metrics=metrics,
        server_batch_size=server_batch_size,
        extra_files=extra_files,
        extra=extra,
    )
    return TrainResult(bundle_path=path, metrics=metrics, history=history, thresholds=read_meta(path).thresholds())


def _fit_classifier(det: Any, normaliser: Normaliser, patients: Sequence[LabelledBeats], seed: int,
                    ventricular_fpr: float, supraventricular_fpr: float, progress: bool,
                    noisy: Sequence[LabelledBeats] = ()) -> tuple[Any, dict[str, Any]]:
    """Train the beat classifier on every beat of ``patients`` (their context features and
    the autoencoder's score) and of their ``noisy`` copies (:mod:`models.ecg.noisy_beats`;
    they train, only the clean beats set the thresholds); report its out-of-fold figures
    over patient folds, on the clean beats."""
    from models.ecg.classifier import train_beat_classifier
    from models.ecg.scorer import AE_FEATURE, classifier_features
    from models.evaluation import auroc

    rows, labels, groups, clean = [], [], [], []
    for p, is_clean in _progress([(p, True) for p in patients] + [(p, False) for p in noisy], progress,
                                 "autoencoder scores"):
        if not len(p.labels):
            continue
        ae = det.score(make_model_input(p.waveforms, p.rr_context, normaliser))
        rows.append(classifier_features(p.features, ae))
        labels.append(p.labels)
        groups.extend([p.patient or p.name] * len(p.labels))
        clean.append(np.full(len(p.labels), is_clean))
    x, lab, cal = np.concatenate(rows), np.concatenate(labels), np.concatenate(clean)
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if progress else None
    clf, oof = train_beat_classifier(x, lab, groups, FEATURE_NAMES + (AE_FEATURE,), ventricular_fpr=ventricular_fpr,
                                     supraventricular_fpr=supraventricular_fpr, seed=seed, progress=say,
                                     calibrate=cal if noisy else None)
    oof, lab = oof[cal], lab[cal]
    p_abn = np.maximum(oof[:, 2] / clf.ventricular_threshold, oof[:, 1] / clf.supraventricular_threshold)
    n = lab == "N"
    out: dict[str, Any] = {"source": "out-of-fold predictions, 3 patient folds of the training patients"
                                     + (" (clean beats; trained with a noisy copy of each record)" if noisy else ""),
                           "n_beats": {c: int(np.sum(lab == c)) for c in ("N", "S", "V", "F", "Q", "X")}}
    if noisy:
        out["noisy_copies"] = len(noisy)
    for key, pos in (("auroc_V_vs_N", ["V"]), ("auroc_S_vs_N", ["S"]), ("auroc_SVF_vs_N", ["S", "V", "F"])):
        out[key] = float(auroc(p_abn[np.isin(lab, pos)], p_abn[n]))
    out["flagged_fraction"] = {c: float(np.mean(p_abn[lab == c] > 1.0)) for c in ("N", "S", "V")
                               if np.any(lab == c)}
    out["ventricular_fraction"] = {c: float(np.mean(oof[lab == c, 2] >= clf.ventricular_threshold))
                                   for c in ("N", "S", "V") if np.any(lab == c)}
    return clf, out


def main(argv: Sequence[str] | None = None) -> int:
    """``cardiowatch train ecg`` entry point.

    Example: ``cardiowatch train ecg --synthetic 60 --out models/pretrained/ecg-lstm-ae``.
    """
    ap = argparse.ArgumentParser(prog="cardiowatch train ecg", description="Train the ECG beat LSTM autoencoder and write a model bundle.",
                                 formatter_class=HelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--records", nargs="+", metavar="DIR", help="WFDB record folders (normal beats used for training)")
    src.add_argument("--synthetic", type=int, metavar="N_PATIENTS", help="train on N synthetic patients instead")
    ap.add_argument("--out", required=True, metavar="BUNDLE_DIR", help="model bundle folder to write (atomically)")
    ap.add_argument("--epochs", type=int, default=30, help="autoencoder training epochs")
    ap.add_argument("--seed", type=int, default=0, help="random seed")
    ap.add_argument("--fpr", type=float, default=0.01,
                    help="false-positive rate on held-out normal beats that sets the threshold (0 < fpr < 1)")
    ap.add_argument("--batch-size", type=int, default=256, help="training batch size (beats)")
    ap.add_argument("--duration-s", type=float, default=120.0, help="--synthetic: record length per patient in seconds")
    ap.add_argument("--eval-patients", type=int, default=8,
                    help="--synthetic: held-out synthetic patients the bundle is measured on")
    ap.add_argument("--version", default="0.1.0", help="version string written into the bundle")
    ap.add_argument("--mixed-precision", action="store_true", help="float16 compute (GPUs with tensor cores)")
    ap.add_argument("--quiet", action="store_true", help="no per-epoch progress")
    a = ap.parse_args(argv)
    try:
        validate_fpr(a.fpr)
    except ValueError as exc:
        ap.error(str(exc))
    res = train_ecg(
        a.out,
        records=a.records or (),
        synthetic_patients=a.synthetic or 0,
        epochs=a.epochs,
        seed=a.seed,
        fpr=a.fpr,
        batch_size=a.batch_size,
        synthetic_duration_s=a.duration_s,
        eval_patients=a.eval_patients,
        version=a.version,
        mixed_precision=a.mixed_precision,
        progress=not a.quiet,
    )
    import json

    print(json.dumps({"bundle": str(res.bundle_path), **res.metrics, "thresholds": res.thresholds}, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
