"""VF detector training stage: labelled signal windows from WFDB records, cross-validation by patient, the bundle's detector.

``cardiowatch train vf --records DIR... --bundle BUNDLE_DIR`` trains the ventricular
fibrillation / flutter detector of :mod:`models.ecg.vf` and adds it to an ECG bundle
(``vf_detector.npz`` and ``extra["vf_detector"]``, :func:`models.bundle.update_extras`).

Windows (:func:`collect_windows`) go through the live stream's front end
(:func:`models.signal.preprocess_record`, then the stream's window grid):

- every signal record of the folders, clean. A window is **positive** when it lies
  inside a VF/VFL truth episode (:func:`models.episodes.truth_episodes`: ``(VFL``,
  ``(VF``, ``[`` .. ``]``), **don't care** when it overlaps a VF episode's edge (within
  ``margin_s``) or a VT episode (a fast ventricular rhythm: a VF alarm there is not
  false, and VT is not what this detector is taught), and **negative** otherwise (sinus,
  ectopy, paced, AF, pauses, the nstdb noise-stress records);
- the noise records ``bw``, ``em``, ``ma`` themselves (each channel, at three
  amplitudes), all negative;
- clean records with one of those noise records added as ``nst`` does
  (:func:`models.noise.add_noise`, continuously after its 5-minute learning period) at
  each SNR of ``snrs_db`` in turn: negative, and don't care inside VF.

``noise_span_s`` restricts which part of the noise records is used at all, so a noise
stress test can be run on the part the detector never saw.

Patients (:func:`patient_of`): a MIT-BIH record is a patient (qtdb ``sel1xx``/``sel2xx``
are MIT-BIH excerpts, ``sel8xx`` svdb patients, nstdb ``118e*`` MIT-BIH 118). The
cross-validation (:func:`cross_validate`) folds whole patients, so each positive record
is scored by a model that never saw its patient, and its threshold comes from a stated
false-positive rate on held-out negative patients. Training is seeded and deterministic.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.ecg.vf import (
    EXTRA_KEY,
    FEATURE_NAMES,
    FILE_NAME,
    HOP_S,
    WINDOW_S,
    VFDetector,
    VFSettings,
    record_windows,
    window_features,
)
from models.episodes import Episode, truth_episodes
from models.noise import NST_LEARNING_S, add_noise, load_noise
from models.records import has_signal, list_records, load_record
from models.signal import MODEL_RATE_HZ, preprocess_record
from models.cli_help import HelpFormatter

__all__ = [
    "DEFAULT_SNRS_DB",
    "NOISE_RECORDS",
    "CVResult",
    "VFTrainResult",
    "WindowSet",
    "alarm_times",
    "assign_folds",
    "collect_windows",
    "cross_validate",
    "main",
    "patient_of",
    "train_vf",
    "training_data_hash",
    "window_labels",
]

NOISE_RECORDS = ("bw", "em", "ma")
DEFAULT_SNRS_DB = (6.0, 0.0, -6.0)
#: Pure-noise windows are also taught at these amplitudes of the recorded noise.
NOISE_SCALES = (0.3, 1.0, 3.0)
_POS, _NEG, _SKIP = 1, 0, -1


@dataclass(frozen=True)
class WindowSet:
    """Windows of one source (a record, a record plus noise, a noise channel).

    Attributes
    ----------
    source : str
        ``folder/record``, ``folder/record+em:6``, ``noise/em.0x1``.
    patient : str
        Patient identity for the folds (:func:`patient_of`).
    ends_s : np.ndarray
        float64 [n] window ends, seconds from the source start.
    features : np.ndarray
        float64 [n, len(FEATURE_NAMES)].
    labels : np.ndarray
        int8 [n]: 1 VF/VFL, 0 negative, -1 don't care.
    sha256 : str
        Hash of the source's samples (for the training-data hash).
    vf_episodes : tuple of (start_s, end_s)
        The source's VF/VFL truth episodes (for onset-to-alarm delays).
    """

    source: str
    patient: str
    ends_s: np.ndarray
    features: np.ndarray
    labels: np.ndarray
    sha256: str
    vf_episodes: tuple[tuple[float, float], ...] = ()


def patient_of(folder: str, record: str) -> str:
    """The patient a record belongs to, across PhysioNet databases.

    >>> patient_of("qtdb", "sel102"), patient_of("nstdb", "118e_6"), patient_of("qtdb", "sel803")
    ('mitdb:102', 'mitdb:118', 'svdb:803')
    """
    if record in NOISE_RECORDS:
        return f"noise:{record}"
    m = re.fullmatch(r"sel([12]\d\d)", record)
    if m:
        return f"mitdb:{m.group(1)}"
    m = re.fullmatch(r"sel(8\d\d)", record)
    if m:
        return f"svdb:{m.group(1)}"
    m = re.fullmatch(r"(\d{3})e.*", record)
    if m and folder.startswith("nstdb"):
        return f"mitdb:{m.group(1)}"
    if folder.startswith("mitdb") and re.fullmatch(r"\d{3}", record):
        return f"mitdb:{record}"
    if folder.startswith("svdb"):
        return f"svdb:{record}"
    return f"{folder}:{record}"


def window_labels(ends_s: np.ndarray, window_s: float, vf: Sequence[Episode],
                  vt: Sequence[Episode] = (), margin_s: float = 2.0) -> np.ndarray:
    """Label windows ``[end - window_s, end)``: 1 inside a VF episode, -1 near its edges
    (within ``margin_s``) or overlapping a VT episode, 0 otherwise."""
    e = np.asarray(ends_s, dtype=np.float64)
    s = e - window_s
    lab = np.zeros(e.shape, np.int8)
    for ep in vt:
        lab[(e > ep.start_s) & (s < ep.end_s)] = _SKIP
    for ep in vf:
        near = (e > ep.start_s - margin_s) & (s < ep.end_s + margin_s)
        lab[near] = _SKIP
        lab[(s >= ep.start_s) & (e <= ep.end_s)] = _POS
    return lab


def _sha(x: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x, dtype=np.float32).tobytes()).hexdigest()


def _features(signal_mv: np.ndarray, rate_hz: float) -> tuple[np.ndarray, np.ndarray]:
    y = preprocess_record(signal_mv, rate_hz)
    window = int(round(WINDOW_S * MODEL_RATE_HZ))
    hop = int(round(HOP_S * MODEL_RATE_HZ))
    ends, w = record_windows(y, window, hop)
    return ends / float(MODEL_RATE_HZ), window_features(w)


def _cached(cache_dir: Path | None, key: str, make: Callable[[], WindowSet]) -> WindowSet:
    if cache_dir is None:
        return make()
    fp = Path(cache_dir) / (re.sub(r"[^A-Za-z0-9_.+-]", "_", key) + ".npz")
    if fp.is_file():
        z = np.load(fp, allow_pickle=False)
        meta = json.loads(bytes(z["meta"]).decode())
        return WindowSet(meta["source"], meta["patient"], z["ends_s"], z["features"], z["labels"], meta["sha256"],
                         tuple((float(a), float(b)) for a, b in meta["vf_episodes"]))
    ws = make()
    fp.parent.mkdir(parents=True, exist_ok=True)
    meta = {"source": ws.source, "patient": ws.patient, "sha256": ws.sha256, "vf_episodes": ws.vf_episodes}
    tmp = fp.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), ends_s=ws.ends_s,
                        features=ws.features, labels=ws.labels)
    tmp.replace(fp)
    return ws


def collect_windows(record_dirs: Sequence[Path], noise_dir: Path | None = None, *,
                    snrs_db: Sequence[float] = DEFAULT_SNRS_DB,
                    noise_span_s: tuple[float, float] | None = None,
                    conditions_per_record: int = 3,
                    cache_dir: Path | None = None,
                    progress: Callable[[str], None] | None = None) -> list[WindowSet]:
    """Labelled feature windows of every signal record, the noise records and noisy copies.

    Parameters
    ----------
    record_dirs
        WFDB folders. The noise records (``bw``, ``em``, ``ma``) found in them are used
        as noise, not as records.
    noise_dir
        Folder of the noise records (default: the first record folder holding them).
        ``None`` and none found: no noise windows.
    snrs_db
        SNRs of the noisy copies.
    noise_span_s
        ``(start_s, end_s)`` of the noise records to use (None: all of them).
    conditions_per_record
        Noisy copies per clean record with beats; record ``i`` takes the conditions
        ``(noise, snr)`` numbered ``i * k .. i * k + k - 1`` modulo their count, so every
        noise type meets every SNR across records. 0: no noisy copies.
    cache_dir
        Where to keep each source's windows (the key includes the settings), or None.
    progress
        Called with each source's name.

    Returns
    -------
    list[WindowSet]
    """
    log = progress or (lambda _s: None)
    folders = [Path(d) for d in record_dirs]
    if noise_dir is None:
        noise_dir = next((f for f in folders if all((f / f"{n}.hea").is_file() for n in NOISE_RECORDS)), None)
    span_tag = "all" if noise_span_s is None else f"{noise_span_s[0]:g}-{noise_span_s[1]:g}"
    # the cache key names the window grid and the feature set, so a change never reuses old features
    tag = f"w{WINDOW_S:g}h{HOP_S:g}f{hashlib.sha256(' '.join(FEATURE_NAMES).encode()).hexdigest()[:8]}"
    noise: dict[tuple[str, int], tuple[np.ndarray, float]] = {}

    def noise_channel(name: str, ch: int) -> tuple[np.ndarray, float]:
        if (name, ch) not in noise:
            assert noise_dir is not None
            z, fs = load_noise(noise_dir, name, ch)
            if noise_span_s is not None:
                z = z[int(noise_span_s[0] * fs):int(noise_span_s[1] * fs)]
            noise[(name, ch)] = (z, fs)
        return noise[(name, ch)]

    out: list[WindowSet] = []
    conds = [(n, float(s)) for s in snrs_db for n in NOISE_RECORDS]
    i_rec = 0
    for folder in folders:
        for name in list_records(folder):
            if name in NOISE_RECORDS or not has_signal(folder, name):
                continue
            rec = load_record(folder, name)
            truth = truth_episodes(rec.beat_samples / rec.sample_rate_hz, rec.aami_classes,
                                   rec.rhythm_annotations, rec.vf_annotations, rec.sample_rate_hz,
                                   rec.duration_s)
            src = f"{folder.name}/{name}"
            pid = patient_of(folder.name, name)

            def clean(rec: Any = rec, truth: Any = truth, src: str = src, pid: str = pid) -> WindowSet:
                ends, f = _features(rec.signal_mv, rec.sample_rate_hz)
                return WindowSet(src, pid, ends, f, window_labels(ends, WINDOW_S, truth.vf, truth.vt),
                                 _sha(rec.signal_mv), tuple((e.start_s, e.end_s) for e in truth.vf))

            log(src)
            out.append(_cached(cache_dir, f"{src}.{tag}", clean))
            n_beats = int(np.isin(rec.aami_classes, ("N", "S")).sum())
            if noise_dir is None or conditions_per_record < 1 or n_beats < 10 or folder.name.startswith("nstdb"):
                continue
            for j in range(conditions_per_record):
                nname, snr = conds[(i_rec * conditions_per_record + j) % len(conds)]

                def noisy(rec: Any = rec, truth: Any = truth, src: str = src, pid: str = pid,
                          nname: str = nname, snr: float = snr) -> WindowSet:
                    z, nfs = noise_channel(nname, rec.lead_index)
                    mix = add_noise(rec.signal_mv, rec.beat_samples, z, rec.sample_rate_hz, snr,
                                    aami_classes=rec.aami_classes, noise_rate_hz=nfs, continuous=True)
                    ends, f = _features(mix.signal_mv, rec.sample_rate_hz)
                    lab = window_labels(ends, WINDOW_S, truth.vf, truth.vt)
                    lab[lab == _POS] = _SKIP  # VF under heavy noise is neither taught as VF nor as not-VF
                    on = ends - WINDOW_S >= NST_LEARNING_S  # noisy windows only
                    return WindowSet(f"{src}+{nname}:{snr:g}", pid, ends[on], f[on], lab[on], _sha(mix.signal_mv))

                key = f"{src}+{nname}:{snr:g}.{span_tag}.{tag}"
                log(key)
                out.append(_cached(cache_dir, key, noisy))
            i_rec += 1
    if noise_dir is not None:
        for nname in NOISE_RECORDS:
            for ch in (0, 1):
                for scale in NOISE_SCALES:
                    def pure(nname: str = nname, ch: int = ch, scale: float = scale) -> WindowSet:
                        z, nfs = noise_channel(nname, ch)
                        ends, f = _features(z * scale, nfs)
                        return WindowSet(f"noise/{nname}.{ch}x{scale:g}", f"noise:{nname}", ends, f,
                                         np.zeros(ends.shape, np.int8), _sha(z * scale))

                    key = f"noise/{nname}.{ch}x{scale:g}.{span_tag}.{tag}"
                    log(key)
                    out.append(_cached(cache_dir, key, pure))
    return out


# ---------------------------------------------------------------------------- folds
def assign_folds(patients: Sequence[str], positive: Sequence[str], n_folds: int, seed: int) -> dict[str, int]:
    """Patient -> fold. Patients with VF windows go to folds 0, 1, ... in turn (each is
    then held out by a model that never saw it); the others by a seeded hash. Noise
    records (``noise:*``) get fold -1: the noise part given to training is in every
    fold's training set (hold noise out by time with ``noise_span_s``)."""
    if n_folds < 3:
        raise ValueError(f"n_folds must be >= 3 (test, calibration and training folds), got {n_folds}")
    pos = sorted(set(positive))
    if len(pos) >= n_folds:
        raise ValueError(f"n_folds must exceed the {len(pos)} patients with VF windows, got {n_folds}")
    out: dict[str, int] = {}
    for p in sorted(set(patients)):
        if p.startswith("noise:"):
            out[p] = -1
        elif p in pos:
            out[p] = pos.index(p)
        else:
            out[p] = int(hashlib.sha256(f"{seed}:{p}".encode()).hexdigest(), 16) % n_folds
    return out


def _calibration_fold(test: int, n_folds: int, positive_folds: set[int]) -> int:
    # negatives of the first later fold holding no positive patient set the threshold
    for j in range(1, n_folds):
        c = (test + j) % n_folds
        if c not in positive_folds:
            return c
    return (test + 1) % n_folds


def _stack(sets: Sequence[WindowSet]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.concatenate([s.features for s in sets]) if sets else np.zeros((0, len(FEATURE_NAMES)))
    y = np.concatenate([s.labels for s in sets]) if sets else np.zeros(0, np.int8)
    pat = np.concatenate([np.full(len(s.labels), s.patient, dtype=object) for s in sets]) if sets else np.zeros(0, object)
    keep = y >= 0
    return x[keep], y[keep].astype(np.int64), pat[keep]


def _weights(y: np.ndarray, pat: np.ndarray) -> np.ndarray:
    # VF weighs as much as everything else; each VF patient weighs the same however long
    # its episodes are (few patients: the longest must not define VF alone).
    w = np.zeros(y.shape[0])
    pos = sorted(set(pat[y == 1].tolist()))
    for p in pos:
        m = (pat == p) & (y == 1)
        w[m] = 1.0 / m.sum() / len(pos)
    neg = y == 0
    w[neg] = 1.0 / max(int(neg.sum()), 1)
    return w


def _fit(sets: Sequence[WindowSet], l2: float, settings: VFSettings) -> VFDetector:
    x, y, pat = _stack(sets)
    return VFDetector.fit(x, y, sample_weight=_weights(y, pat), l2=l2, settings=settings)


def alarm_times(ends_s: np.ndarray, above: np.ndarray, consecutive: int, max_step_s: float = 1.5) -> np.ndarray:
    """Window ends at which ``consecutive`` contiguous windows above threshold first
    complete a run (as the policy's ``ventricular_fibrillation`` rule raises)."""
    out: list[float] = []
    run = 0
    prev: float | None = None
    for e, a in zip(np.asarray(ends_s, dtype=np.float64).tolist(), np.asarray(above, dtype=bool).tolist()):
        contiguous = prev is not None and 0 < e - prev <= max_step_s
        run = (run + 1 if contiguous else 1) if a else 0
        prev = e
        if run == consecutive:
            out.append(e)
    return np.asarray(out)


def _record_figures(s: WindowSet, p: np.ndarray, thr: float, consecutive: int, fold: int) -> dict[str, Any]:
    neg = s.labels == 0
    false_alarms = alarm_times(s.ends_s, neg & (p > thr), consecutive)
    row: dict[str, Any] = {
        "source": s.source, "patient": s.patient, "fold": fold, "threshold": round(thr, 6),
        "negative_hours": round(float(neg.sum()) * HOP_S / 3600.0, 4),
        "false_windows": int((neg & (p > thr)).sum()), "false_alarms": int(false_alarms.size),
        "false_alarm_s": [round(float(t), 1) for t in false_alarms[:20]],
    }
    pos = s.labels == 1
    if pos.any():
        alarms = alarm_times(s.ends_s, p > thr, consecutive)
        eps = []
        for a, b in s.vf_episodes:
            hit = alarms[(alarms >= a - 1.0) & (alarms <= b + 5.0)]
            eps.append({"onset_s": round(a, 2), "duration_s": round(b - a, 2),
                        "delay_s": round(max(float(hit[0]) - a, 0.0), 2) if hit.size else None})
        row.update(positive_windows=int(pos.sum()), sensitivity=round(float((p[pos] > thr).mean()), 4),
                   episodes=eps)
    return row


@dataclass(frozen=True)
class CVResult:
    """Leave-patients-out figures of the VF detector.

    Attributes
    ----------
    folds : dict[str, int]
        Patient -> fold.
    detectors : dict[int, VFDetector]
        Fold -> the model that never saw that fold (nor its calibration fold), at its
        threshold from the calibration fold's negatives.
    records : list[dict]
        Per held-out source: negative hours, false windows and alarms, and for VF
        records window sensitivity and each episode's onset-to-alarm delay.
    summary : dict
        Pooled: false windows and alarms per hour (clean, noisy copies, noise only,
        extra held-out sets), VF sensitivity per record, delays.
    """

    folds: dict[str, int]
    detectors: dict[int, VFDetector]
    records: list[dict[str, Any]]
    summary: dict[str, Any]


def _kind(source: str) -> str:
    return "noise_only" if source.startswith("noise/") else "noisy_copy" if "+" in source else "clean"


def cross_validate(sets: Sequence[WindowSet], *, fpr: float, l2: float = 1.0, settings: VFSettings = VFSettings(),
                   n_folds: int = 5, seed: int = 0, eval_sets: Sequence[WindowSet] = ()) -> CVResult:
    """Fold by patient: fold ``k``'s model is fitted on every other fold but one, whose
    negatives set its threshold at ``fpr``, and scores fold ``k``.

    ``eval_sets`` (e.g. noise copies made from a part of the noise records training never
    used) are scored by their patient's fold model, or by fold 0's when the patient has
    no fold (pure noise); they never train.
    """
    patients = [s.patient for s in sets]
    positive = [s.patient for s in sets if (s.labels == 1).any()]
    folds = assign_folds(patients + [s.patient for s in eval_sets], positive, n_folds, seed)
    pos_folds = {folds[p] for p in positive}
    detectors: dict[int, VFDetector] = {}
    rows: list[dict[str, Any]] = []
    for k in range(n_folds):
        cal = _calibration_fold(k, n_folds, pos_folds)
        train = [s for s in sets if folds[s.patient] not in (k, cal)]
        det = _fit(train, l2, settings)
        cal_neg = np.concatenate([s.features[s.labels == 0] for s in sets if folds[s.patient] == cal])
        det = det.with_threshold(cal_neg, fpr)
        detectors[k] = det
        assert det.threshold is not None
        test = [(s, "cv") for s in sets if folds[s.patient] == k]
        test += [(s, "eval") for s in eval_sets if folds[s.patient] == k or (folds[s.patient] == -1 and k == 0)]
        for s, role in test:
            row = _record_figures(s, det.score_features(s.features), det.threshold, settings.consecutive, k)
            row["role"] = role
            rows.append(row)
    return CVResult(folds, detectors, rows, _summary(rows))


def _summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for role in ("cv", "eval"):
        for kind in ("clean", "noisy_copy", "noise_only"):
            rs = [r for r in rows if r["role"] == role and _kind(r["source"]) == kind]
            if not rs:
                continue
            h = sum(r["negative_hours"] for r in rs)
            fw = sum(r["false_windows"] for r in rs)
            fa = sum(r["false_alarms"] for r in rs)
            out[f"{role}_{kind}"] = {"records": len(rs), "negative_hours": round(h, 2), "false_windows": fw,
                                     "false_windows_per_hour": round(fw / h, 3) if h else None,
                                     "false_alarms": fa, "false_alarms_per_hour": round(fa / h, 4) if h else None}
    vf = [r for r in rows if "sensitivity" in r and r["role"] == "cv"]
    out["vf_records"] = {r["source"]: {"sensitivity": r["sensitivity"], "threshold": r["threshold"],
                                       "episodes": r["episodes"]} for r in vf}
    delays = [e["delay_s"] for r in vf for e in r["episodes"]]
    long_eps = [e for r in vf for e in r["episodes"] if e["duration_s"] >= 10.0]
    out["vf_episodes"] = len(delays)
    out["vf_episodes_alarmed"] = sum(d is not None for d in delays)
    out["vf_episodes_10s"] = len(long_eps)
    out["vf_episodes_10s_alarmed_within_10s"] = sum(e["delay_s"] is not None and e["delay_s"] <= 10.0 for e in long_eps)
    got = [d for d in delays if d is not None]
    out["delay_s_median"] = float(np.median(got)) if got else None
    out["delay_s_max"] = max(got) if got else None
    return out


def training_data_hash(sets: Sequence[WindowSet]) -> str:
    """sha256 over the sources' names and sample hashes."""
    h = hashlib.sha256()
    for s in sorted(sets, key=lambda s: s.source):
        h.update(f"{s.source}:{s.sha256}\n".encode())
    return h.hexdigest()


@dataclass(frozen=True)
class VFTrainResult:
    """What :func:`train_vf` produced: the shipped detector, its ``extra["vf_detector"]``
    document, and the cross-validation behind the figures in it."""

    detector: VFDetector
    doc: dict[str, Any]
    cv: CVResult | None


def train_vf(sets: Sequence[WindowSet], *, fpr: float = 5e-4, l2: float = 1.0,
             settings: VFSettings = VFSettings(), n_folds: int = 5, seed: int = 0,
             eval_sets: Sequence[WindowSet] = (), cross_validated: bool = True) -> VFTrainResult:
    """Cross-validate, then fit the shipped detector.

    The shipped model is fitted on every patient but one calibration fold holding no VF
    patient (its negatives set the threshold at ``fpr``, so the threshold still comes
    from patients the model was not fitted on).

    ``cross_validated=False`` skips the cross-validation (the detector of one fold of an
    outer cross-validation, whose figures come from that): the document then holds no
    figures and ``cv`` is None.

    Returns
    -------
    VFTrainResult
        The detector, the ``extra["vf_detector"]`` document (settings, training
        description, cross-validated figures) and the cross-validation.
    """
    positive = {s.patient for s in sets if (s.labels == 1).any()}
    if cross_validated:
        cv = cross_validate(sets, fpr=fpr, l2=l2, settings=settings, n_folds=n_folds, seed=seed, eval_sets=eval_sets)
        folds = cv.folds
    else:
        cv = None
        folds = assign_folds([s.patient for s in sets], sorted(positive), n_folds, seed)
    pos_folds = {folds[p] for p in positive}
    cal = next((c for c in range(n_folds) if c not in pos_folds), n_folds - 1)
    det = _fit([s for s in sets if folds[s.patient] != cal], l2, settings)
    cal_neg = np.concatenate([s.features[s.labels == 0] for s in sets if folds[s.patient] == cal])
    det = det.with_threshold(cal_neg, fpr)
    _, y, pat = _stack(sets)
    doc = {
        "file": FILE_NAME,
        "settings": det.settings.to_dict(),
        "feature_names": list(FEATURE_NAMES),
        "model": "logistic regression (L2) on standardised window features",
        "training": {
            "sources": len(sets), "windows": int(y.size), "vf_windows": int((y == 1).sum()),
            "vf_patients": sorted(positive), "negative_patients": len(set(pat[y == 0].tolist())),
            "calibration_fold": cal, "n_folds": n_folds, "seed": seed, "fpr": fpr, "l2": l2,
            "training_data_sha256": training_data_hash(sets),
        },
        "metrics": {"rule": "leave-patients-out: each record scored by the fold model that never saw "
                            "its patient; alarms are runs of settings.consecutive windows",
                    **cv.summary} if cv is not None else {"rule": "not cross-validated here (one fold of an "
                                                               "outer cross-validation)"},
    }
    return VFTrainResult(det, doc, cv)


def main(argv: Sequence[str] | None = None) -> int:
    """``cardiowatch train vf`` entry point.

    Example: ``cardiowatch train vf --records ../shared/data/* --bundle models/pretrained/ecg-lstm-ae``.
    """
    from models.bundle import update_extras

    ap = argparse.ArgumentParser(prog="cardiowatch train vf",
                                 description="Train the VF/VFL detector on WFDB records and add it to an ECG bundle.",
                                 formatter_class=HelpFormatter)
    ap.add_argument("--records", nargs="+", required=True, type=Path, metavar="DIR", help="WFDB record folders")
    ap.add_argument("--bundle", required=True, type=Path, metavar="BUNDLE_DIR",
                    help="ECG bundle to add vf_detector.npz to (changed atomically)")
    ap.add_argument("--noise-dir", type=Path, help="folder of the nstdb noise records bw, em, ma "
                                                  "(default: the record folder holding them)")
    ap.add_argument("--snrs", default=",".join(f"{v:g}" for v in DEFAULT_SNRS_DB), help="SNRs (dB) of the noisy copies")
    ap.add_argument("--noise-span", nargs=2, type=float, metavar=("START_S", "END_S"),
                    help="use only this part of the noise records (hold the rest out for a noise stress test)")
    ap.add_argument("--fpr", type=float, default=5e-4, help="false-positive rate per window on held-out negatives")
    ap.add_argument("--consecutive", type=int, default=VFSettings().consecutive,
                    help="windows above threshold in a row for an alarm (the policy's default)")
    ap.add_argument("--folds", type=int, default=5, help="patient-wise cross-validation folds")
    ap.add_argument("--seed", type=int, default=0, help="random seed of the folds")
    ap.add_argument("--l2", type=float, default=1.0, help="L2 penalty of the logistic detector")
    ap.add_argument("--cache-dir", type=Path, help="keep each source's features here")
    ap.add_argument("--report", type=Path, help="also write the cross-validated figures per record here (JSON)")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    a = ap.parse_args(argv)
    try:
        settings = VFSettings(consecutive=a.consecutive)
        snrs = [float(v) for v in a.snrs.split(",") if v.strip()]
    except ValueError as exc:
        ap.error(str(exc))
    log = None if a.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    sets = collect_windows(a.records, a.noise_dir, snrs_db=snrs,
                           noise_span_s=tuple(a.noise_span) if a.noise_span else None,
                           cache_dir=a.cache_dir, progress=log)
    res = train_vf(sets, fpr=a.fpr, l2=a.l2, settings=settings, n_folds=a.folds, seed=a.seed)
    # the noisy copies' figures hold patients out, not the noise itself unless a span is given
    res.doc["training"]["noise_span_s"] = list(a.noise_span) if a.noise_span else "all"
    res.doc["training"]["snrs_db"] = snrs
    update_extras(a.bundle, files={FILE_NAME: res.detector.to_bytes()}, extra={EXTRA_KEY: res.doc})
    if a.report:
        assert res.cv is not None  # cross-validated above
        a.report.write_text(json.dumps({"summary": res.cv.summary, "records": res.cv.records,
                                        "folds": res.cv.folds}, indent=1))
    print(json.dumps({"bundle": str(a.bundle), "settings": res.doc["settings"], "metrics": res.doc["metrics"]},
                     indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
