"""Artefact stage: is a signal window ECG, or noise that a beat detector would misread?

A noise burst read as beats becomes a "ventricular run" (the bursts look nothing like the
patient's beat) or, when it hides the QRS complexes, a "pause": both HIGH alarms, both
false. The hand-made signal-quality check (:mod:`models.sqi`) judges the share of
high-frequency energy, which muscle noise raises but electrode motion, the worst
artefact of wearables, does not. This detector learns it instead: the window model of
the VF stage (:class:`models.ecg.vf.VFDetector`, a logistic regression on the same
spectral, threshold-crossing and amplitude features of the same 4-s windows, so the
features are computed once per window for both) taught *noisy* against *clean ECG*:

- **noisy** (1): clean records with ``bw``, ``em`` or ``ma`` added as ``nst`` does at
  each SNR of ``snrs_db`` (:func:`models.ecg.vf_train.collect_windows`), and the noise
  records alone;
- **clean** (0): every window of the clean records, whatever the rhythm; ventricular
  tachycardia, flutter and fibrillation windows weigh ``rhythm_weight`` times more, and
  windows whose reference beats come at ``fast_bpm`` or more (:func:`window_rates_bpm`)
  ``fast_weight`` times more, since calling them noise would silence the alarms that
  matter most. Fast rhythms are rare in the records (about 0.5 % of clean windows are at
  150 bpm or more): unweighted, the model learnt "fast = noise" and called three in four
  of them noisy on held-out patients.

Only ``noise_span_s`` of the noise records is used (by default their first 5 minutes,
which the Noise Stress Test Database's own records never contain: nstdb adds noise after
minute 5 at the noise record's own times), and the nstdb records are never trained on,
so a noise stress test on them measures noise the detector never saw. The threshold is
the (1 - ``fpr``) quantile of the scores of clean windows of calibration patients the
model was not fitted on.

In the stream (:class:`streaming.pipeline.ECGPipeline`) a chunk is reported noisy when
a window ending in it is the ``consecutive``-th (default 2) in a row above the
threshold: the policy suppresses the ECG conditions across it and raises the technical
``signal_noisy`` alert when it lasts. Noise lasts; a lone window above the threshold is
more often an odd or fast rhythm (on held-out patients, flagging single windows lost 3
of 50 ventricular-tachycardia episodes, in MIT-BIH 203 and 217; two in a row lost none). The detector ships
inside the ECG bundle as ``artefact_detector.npz`` with its settings and figures in
``extra["artefact_detector"]`` (``cardiowatch train artefact --bundle DIR``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.ecg.vf import FEATURE_NAMES, WINDOW_S as _WINDOW_S, VFDetector, VFSettings, load_window_detector
from models.ecg.vf_train import training_data_hash
from models.cli_help import HelpFormatter

__all__ = ["DEFAULT_CONSECUTIVE", "DEFAULT_FPR", "DEFAULT_NOISE_SPAN_S", "DEFAULT_SNRS_DB", "EXTRA_KEY", "FILE_NAME",
           "ArtefactTrainResult", "load_artefact_detector", "main", "train_artefact", "window_rates_bpm"]

EXTRA_KEY = "artefact_detector"
FILE_NAME = "artefact_detector.npz"
DEFAULT_FPR = 0.01
DEFAULT_CONSECUTIVE = 2
DEFAULT_SNRS_DB: tuple[float, ...] = (12.0, 6.0, 0.0, -6.0)
DEFAULT_NOISE_SPAN_S: tuple[float, float] = (0.0, 300.0)
_RHYTHM_WEIGHT = 5.0
_FAST_WEIGHT = 50.0
_FAST_BPM = 120.0
_CALIBRATION_SHARE = 0.2


def load_artefact_detector(bundle_dir: str | Path, extra: Mapping[str, Any]) -> VFDetector | None:
    """The artefact detector a bundle ships, or None when it has none.

    Raises
    ------
    VFDetectorError
        Settings without a threshold, a missing or malformed file.
    """
    return load_window_detector(bundle_dir, extra, EXTRA_KEY, FILE_NAME, "artefact detector")


class ArtefactTrainResult:
    """The fitted detector at its threshold and its ``extra["artefact_detector"]`` document."""

    def __init__(self, detector: VFDetector, doc: dict[str, Any]) -> None:
        self.detector = detector
        self.doc = doc


def window_rates_bpm(sets: Sequence[Any], folders: Sequence[Path], annotation: str = "atr") -> dict[str, np.ndarray]:
    """Reference heart rate (bpm) of each window of the clean sources: ``60 (n - 1) / span``
    of the ``n`` reference beats inside it, 0 with fewer than two (or no annotations)."""
    from models.records import load_annotations

    by_name = {Path(f).name: Path(f) for f in folders}
    out: dict[str, np.ndarray] = {}
    for s in sets:
        if _kind(s.source) != "clean":
            continue
        folder, _, name = s.source.partition("/")
        e = np.asarray(s.ends_s, dtype=np.float64)
        rate = np.zeros(e.shape)
        if folder in by_name and (by_name[folder] / f"{name}.{annotation}").is_file():
            bt = np.asarray(load_annotations(by_name[folder], name, annotation).beat_times_s, dtype=np.float64)
            if bt.size >= 2:
                lo = np.searchsorted(bt, e - _WINDOW_S)
                hi = np.searchsorted(bt, e)
                n = hi - lo
                span = bt[np.clip(hi - 1, 0, bt.size - 1)] - bt[np.clip(lo, 0, bt.size - 1)]
                rate = np.where(n >= 2, 60.0 * (n - 1) / np.maximum(span, 1e-3), 0.0)
        out[s.source] = rate
    return out


def _kind(source: str) -> str:
    return "noise_only" if source.startswith("noise/") else "noisy_copy" if "+" in source else "clean"


def _snr(source: str) -> str:
    return source.rsplit(":", 1)[1] if "+" in source else "-"


def train_artefact(sets: Sequence[Any], *, fpr: float = DEFAULT_FPR, l2: float = 1.0, seed: int = 0,
                   exclude_patients: Sequence[str] = (), rhythm_weight: float = _RHYTHM_WEIGHT,
                   rates_bpm: Mapping[str, np.ndarray] | None = None, fast_bpm: float = _FAST_BPM,
                   fast_weight: float = _FAST_WEIGHT, consecutive: int = DEFAULT_CONSECUTIVE,
                   settings: VFSettings | None = None) -> ArtefactTrainResult:
    """Fit the artefact detector on windows of :func:`models.ecg.vf_train.collect_windows`.

    Parameters
    ----------
    sets : sequence of models.ecg.vf_train.WindowSet
        Clean records, their noisy copies and the noise records. nstdb records are left
        out (they are noisy themselves and are the noise stress test).
    fpr : float
        Share of clean windows of the calibration patients above the threshold.
    exclude_patients : sequence of str
        Patients (``WindowSet.patient``) never trained or calibrated on (a
        cross-validation fold's held-out patients).
    rhythm_weight : float
        Weight of VT/VF/VFL clean windows against other clean windows.
    consecutive : int
        Windows above the threshold in a row that make a chunk noisy (stored in the
        settings; the stream pipeline applies it).
    rates_bpm, fast_bpm, fast_weight : optional
        Reference rate per window of each clean source (:func:`window_rates_bpm`);
        windows at ``fast_bpm`` or more weigh ``fast_weight`` times more. None: no rate
        weighting.

    Returns
    -------
    ArtefactTrainResult

    Raises
    ------
    ValueError
        Nothing left to train on, or no noisy windows.
    """
    if not (0.0 < fpr < 0.5):
        raise ValueError(f"fpr must be in (0, 0.5), got {fpr}")
    excluded = set(exclude_patients)
    use = [s for s in sets if not s.source.startswith("nstdb/") and s.patient not in excluded and len(s.labels)]
    people = sorted({s.patient for s in use if not s.patient.startswith("noise:")})
    if len(people) < 5:
        raise ValueError(f"need clean records of at least 5 patients, got {len(people)}")
    rank = {p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest() for p in people}
    n_cal = max(1, int(round(_CALIBRATION_SHARE * len(people))))
    cal = set(sorted(people, key=lambda p: rank[p])[:n_cal])
    fit_sets = [s for s in use if s.patient not in cal]
    x = np.concatenate([s.features for s in fit_sets])
    y = np.concatenate([np.full(len(s.labels), 0 if _kind(s.source) == "clean" else 1, np.int64) for s in fit_sets])
    rhythm = np.concatenate([(s.labels != 0) if _kind(s.source) == "clean" else np.zeros(len(s.labels), bool)
                             for s in fit_sets])
    rates = rates_bpm or {}

    def fast_of(s: Any) -> np.ndarray:
        r = rates.get(s.source)
        return np.zeros(len(s.labels), bool) if r is None or _kind(s.source) != "clean" else np.asarray(r) >= fast_bpm

    fast = np.concatenate([fast_of(s) for s in fit_sets])
    if not (y == 1).any():
        raise ValueError("no noisy windows: give noise records (bw, em, ma) and clean records with beats")
    w = np.where(y == 1, 0.5 / max(int((y == 1).sum()), 1), 0.5 / max(int((y == 0).sum()), 1))
    w = np.where(rhythm, w * rhythm_weight, w)
    w = np.where(fast, w * fast_weight, w)
    st = settings or VFSettings()
    # no amplitude gate: a flat window is the lead-off check's, but a small one can be noise
    st = VFSettings(st.rate_hz, st.window_s, st.hop_s, None, None, 0.0, consecutive)
    det = VFDetector.fit(x, y, sample_weight=w, l2=l2, settings=st)
    cal_sets = [s for s in use if s.patient in cal]
    cal_clean = [s for s in cal_sets if _kind(s.source) == "clean"]
    det = det.with_threshold(np.concatenate([s.features for s in cal_clean]), fpr)
    thr = det.threshold
    assert thr is not None

    def flagged(ss: Sequence[Any], mask: Any = None) -> dict[str, Any]:
        ss = [s for s in ss if len(s.labels)]
        if not ss:
            return {"windows": 0, "flagged": None}
        f = np.concatenate([s.features if mask is None else s.features[mask(s)] for s in ss])
        return {"windows": int(f.shape[0]),
                "flagged": float(np.mean(det.score_features(f) > thr)) if f.shape[0] else None}

    figures: dict[str, Any] = {
        "rule": "calibration patients (never fitted on): share of windows above the threshold",
        "calibration_patients": sorted(cal),
        "clean": flagged(cal_clean),
        "clean_vt_vf": flagged(cal_clean, lambda s: s.labels != 0),
        "clean_fast": flagged(cal_clean, fast_of) if rates else None,
        "noisy_copy_by_snr_db": {snr: flagged([s for s in cal_sets if _kind(s.source) == "noisy_copy"
                                               and _snr(s.source) == snr])
                                 for snr in sorted({_snr(s.source) for s in cal_sets
                                                    if _kind(s.source) == "noisy_copy"}, key=float)},
    }
    doc = {
        "file": FILE_NAME,
        "settings": det.settings.to_dict(),
        "feature_names": list(FEATURE_NAMES),
        "model": "logistic regression (L2) on standardised window features (the VF stage's)",
        "training": {"sources": len(fit_sets), "windows": int(y.size), "noisy_windows": int((y == 1).sum()),
                     "patients": len({s.patient for s in fit_sets}), "excluded_patients": sorted(excluded),
                     "fpr": fpr, "l2": l2, "seed": seed, "rhythm_weight": rhythm_weight,
                     "fast_bpm": fast_bpm if rates else None, "fast_weight": fast_weight if rates else None,
                     "training_data_sha256": training_data_hash(fit_sets)},
        "metrics": figures,
    }
    return ArtefactTrainResult(det, doc)


def main(argv: Sequence[str] | None = None) -> int:
    """``cardiowatch train artefact`` entry point.

    Example: ``cardiowatch train artefact --records ../shared/data/* --bundle models/pretrained/ecg-lstm-ae``.
    """
    from models.bundle import update_extras
    from models.ecg.vf_train import collect_windows

    ap = argparse.ArgumentParser(prog="cardiowatch train artefact",
                                 description="Train the artefact (noise) detector and add it to an ECG bundle.",
                                 formatter_class=HelpFormatter)
    ap.add_argument("--records", nargs="+", required=True, type=Path, metavar="DIR", help="WFDB record folders")
    ap.add_argument("--bundle", required=True, type=Path, metavar="BUNDLE_DIR",
                    help="ECG bundle to add artefact_detector.npz to (changed atomically)")
    ap.add_argument("--noise-dir", type=Path, help="folder of the nstdb noise records bw, em, ma")
    ap.add_argument("--snrs", default=",".join(f"{v:g}" for v in DEFAULT_SNRS_DB), help="SNRs (dB) of the noisy copies")
    ap.add_argument("--noise-span", nargs=2, type=float, metavar=("START_S", "END_S"), default=DEFAULT_NOISE_SPAN_S,
                    help="part of the noise records to use (default: the first 5 minutes, which nstdb never uses)")
    ap.add_argument("--fpr", type=float, default=DEFAULT_FPR, help="share of clean windows called noisy")
    ap.add_argument("--exclude-patients", default="", help="comma-separated patients never trained on")
    ap.add_argument("--seed", type=int, default=0, help="random seed")
    ap.add_argument("--l2", type=float, default=1.0, help="L2 penalty of the logistic detector")
    ap.add_argument("--cache-dir", type=Path, help="keep each source's features here")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    a = ap.parse_args(argv)
    try:
        snrs = [float(v) for v in a.snrs.split(",") if v.strip()]
    except ValueError as exc:
        ap.error(f"--snrs: {exc}")
    log = None if a.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    sets = collect_windows(a.records, a.noise_dir, snrs_db=snrs, noise_span_s=tuple(a.noise_span),
                           cache_dir=a.cache_dir, progress=log)
    try:
        res = train_artefact(sets, fpr=a.fpr, l2=a.l2, seed=a.seed,
                             exclude_patients=[p for p in a.exclude_patients.split(",") if p],
                             rates_bpm=window_rates_bpm(sets, a.records))
    except ValueError as exc:
        print(f"cardiowatch train artefact: {exc}", file=sys.stderr)
        return 2
    res.doc["training"]["noise_span_s"] = list(a.noise_span)
    res.doc["training"]["snrs_db"] = snrs
    update_extras(a.bundle, files={FILE_NAME: res.detector.to_bytes()}, extra={EXTRA_KEY: res.doc})
    print(json.dumps({"bundle": str(a.bundle), "settings": res.doc["settings"], "metrics": res.doc["metrics"]},
                     indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
