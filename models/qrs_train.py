"""QRS pair-model training: pairs met by the rule-based detector on PhysioNet records, trees, leave-patient-out figures.

The pair models of :mod:`models.qrs` decide, for a candidate that passed the thresholds
soon after the last detection, whether it is the last beat's T wave (``t_wave``) or the
QRS whose P wave was taken for the last beat (``p_wave``). Training data are the pairs
the rule-based pass (``pair_model="none"``) meets on whole preprocessed records
(:func:`models.qrs.qrs_pairs`), labelled from the reference beats: a detection is a QRS
when a reference beat lies within 120 ms of it. Ventricular flutter / fibrillation
episodes are left out, as in the QRS figures.

Both models are small LightGBM binary models (:func:`models.trees.train_gbdt`) with
monotone constraints where physiology gives the direction (a candidate with more slope,
energy or amplitude than the last beat, or a narrower main deflection, is never *more*
likely a T wave), so that an unseen morphology cannot flip the obvious cases.

``python -m models.qrs_train --records DIR [DIR ...] --out DIR`` runs a K-fold
leave-patient-out check through the streaming front end (every record is detected by
models that never saw its patient, the same patient's excerpts in other databases
included), prints the figures per database, then trains on every record and writes the
models with a card holding those figures.
"""

from __future__ import annotations

import argparse
import json
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from models.beats import segment_record
from models.episodes import truth_episodes
from models.evaluation import match_beats
from models.qrs import P_WAVE_WINDOW_S, PAIR_FEATURES, PAIR_MODEL_DIR, QRSPairModel, qrs_pairs
from models.records import has_signal, list_records, load_record
from models.signal import MODEL_RATE_HZ, preprocess_record
from models.trees import GBDT_DEFAULTS, train_gbdt

__all__ = ["PairData", "patient_of", "label_pairs", "record_pairs", "fit_pair_model",
           "streaming_qrs_counts", "main"]

MATCH_S = 0.12
"""A detection within this of a reference beat is a QRS (labels of the pairs)."""

_VF_MARGIN_S = 1.0
_TREE_PARAMS: dict[str, Any] = {"learning_rate": 0.1, "num_leaves": 15, "min_data_in_leaf": 40,
                                "monotone_constraints_method": "advanced"}
_N_TREES = 60

# +1: a larger value makes the positive class (T wave / P wave) more likely; -1 less.
_T_MONOTONE = {
    "dt_over_rr_before": -1, "dt_over_rr_mean": -1, "dt_over_sqrt_rr_before": -1,
    "dt_over_sqrt_rr_mean": -1, "log_slope_ratio": -1, "log_ptp_ratio": -1,
    "log_energy_ratio": -1, "log_raw_slope_ratio": -1, "log_sharpness_b": -1,
    "lobe_width_b_s": 1, "half_width_b_s": 1, "log_energy_per_ptp2_b": -1,
    "log_energy_b_vs_qrs": -1, "log_ptp_b_vs_qrs": -1, "log_slope_b_vs_qrs": -1,
}
_P_MONOTONE = {
    "log_slope_ratio": 1, "log_ptp_ratio": 1, "log_energy_ratio": 1, "log_raw_slope_ratio": 1,
    "log_sharpness_a": -1, "lobe_width_a_s": 1, "half_width_a_s": 1, "log_energy_per_ptp2_a": -1,
    "log_energy_a_vs_qrs": -1, "log_ptp_a_vs_qrs": -1, "log_slope_a_vs_qrs": -1,
    "log_energy_b_vs_qrs": 1, "log_ptp_b_vs_qrs": 1, "log_slope_b_vs_qrs": 1,
}


@dataclass(frozen=True)
class PairData:
    """Labelled pairs of one or more records.

    Attributes
    ----------
    features
        float64 ``[n, len(PAIR_FEATURES)]``.
    label
        int8 ``[n]``: 0 both QRS, 1 the candidate is not a QRS, 2 the last detection was
        not a QRS and the candidate is.
    dt_s
        float64 ``[n]`` seconds between the two candidates.
    """

    features: np.ndarray
    label: np.ndarray
    dt_s: np.ndarray

    @staticmethod
    def concat(parts: Sequence[PairData]) -> PairData:
        k = len(PAIR_FEATURES)
        if not parts:
            return PairData(np.zeros((0, k)), np.zeros(0, np.int8), np.zeros(0))
        return PairData(np.concatenate([p.features for p in parts]),
                        np.concatenate([p.label for p in parts]),
                        np.concatenate([p.dt_s for p in parts]))


def patient_of(database: str, record: str) -> str:
    """The patient a PhysioNet record belongs to, across the databases in shared/data.

    qtdb ``sel1xx``/``sel2xx`` are MIT-BIH records, ``sel8xx`` svdb records, nstdb
    ``118e*`` MIT-BIH 118 with noise; other qtdb records are their own patients.
    """
    if database.startswith("qtdb"):
        if record.startswith("sel") and record[3:].isdigit() and len(record) == 6 and record[3] in "128":
            return f"{'svdb' if record[3] == '8' else 'mitdb'}:{record[3:]}"
        return f"qtdb:{record}"
    if database.startswith("nstdb") and record.startswith("118e"):
        return "mitdb:118"
    if database.startswith("mitdb"):
        return f"mitdb:{record}"
    return f"{database}:{record}"


def _is_qrs(index: np.ndarray, ref_s: np.ndarray, fs: float) -> np.ndarray:
    t = np.asarray(index, np.float64) / fs
    if ref_s.size == 0:
        return np.zeros(t.shape, bool)
    k = np.searchsorted(ref_s, t)
    after = np.abs(ref_s[np.minimum(k, ref_s.size - 1)] - t)
    before = np.abs(ref_s[np.maximum(k - 1, 0)] - t)
    return np.minimum(after, before) <= MATCH_S


def label_pairs(a_index: np.ndarray, b_index: np.ndarray, fs: float, ref_s: np.ndarray,
                exclude_s: Sequence[tuple[float, float]] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Labels of pairs from the reference beat times, and the mask of pairs kept.

    Parameters
    ----------
    a_index, b_index
        Detection sample indices at ``fs``.
    fs
        Their sample rate, Hz.
    ref_s
        Sorted reference beat times, s.
    exclude_s
        Intervals (s) whose pairs are dropped (VF episodes), widened by 1 s.

    Returns
    -------
    label, keep
        int8 labels (see :class:`PairData`) and a bool mask.
    """
    qa, qb = _is_qrs(a_index, ref_s, fs), _is_qrs(b_index, ref_s, fs)
    label = np.where(qa & qb, 0, np.where(~qb, 1, 2)).astype(np.int8)
    keep = np.ones(a_index.shape, bool)
    for lo, hi in exclude_s:
        for idx in (a_index, b_index):
            t = idx / fs
            keep &= ~((t >= lo - _VF_MARGIN_S) & (t <= hi + _VF_MARGIN_S))
    return label, keep


def _load(folder: Path, name: str) -> tuple[np.ndarray, np.ndarray, list[tuple[float, float]]]:
    rec = load_record(folder, name)
    ann = rec.annotations()
    truth = truth_episodes(ann.beat_times_s, ann.aami_classes, ann.rhythm_annotations,
                           ann.vf_annotations, rec.sample_rate_hz, ann.duration_s)
    y = preprocess_record(rec.signal_mv, rec.sample_rate_hz)
    return y, ann.beat_times_s, [(e.start_s, e.end_s) for e in truth.vf]


def record_pairs(folder: Path, name: str) -> PairData:
    """The labelled pairs of one record (its first MLII-preferred lead)."""
    y, ref_s, vf = _load(folder, name)
    p = qrs_pairs(y, float(MODEL_RATE_HZ))
    label, keep = label_pairs(p.a_index, p.b_index, float(MODEL_RATE_HZ), ref_s, vf)
    return PairData(p.features[keep], label[keep], p.dt_s[keep])


def fit_pair_model(data: PairData, seed: int = 0, n_trees: int = _N_TREES,
                   card: dict[str, Any] | None = None) -> QRSPairModel:
    """Train the T-wave model on every pair and the P-wave model on the pairs closer than
    the P window whose candidate is a QRS.

    Raises
    ------
    ValueError
        If a model would have a single class to learn.
    """
    names = list(PAIR_FEATURES)
    y_t = (data.label == 1).astype(np.int64)
    sel = (data.dt_s < P_WAVE_WINDOW_S) & (data.label != 1)
    y_p = (data.label[sel] == 2).astype(np.int64)
    for what, y in (("t_wave", y_t), ("p_wave", y_p)):
        if y.size == 0 or y.min() == y.max():
            raise ValueError(f"{what} training pairs must hold both classes, got {np.bincount(y, minlength=2)}")
    params_t = dict(_TREE_PARAMS, monotone_constraints=[_T_MONOTONE.get(n, 0) for n in names])
    params_p = dict(_TREE_PARAMS, monotone_constraints=[_P_MONOTONE.get(n, 0) for n in names])
    t = train_gbdt(data.features, y_t, ["qrs", "t_wave"], names, n_trees=n_trees, seed=seed, params=params_t)
    p = train_gbdt(data.features[sel], y_p, ["qrs", "p_wave"], names, n_trees=n_trees, seed=seed,
                   params=params_p)
    return QRSPairModel(t, p, card=card)


def streaming_qrs_counts(folder: Path, name: str,
                         model: QRSPairModel | Literal["shipped", "none"]) -> tuple[int, int, int]:
    """(tp, fn, fp) of the streaming front end on one record, VF episodes left out, 150 ms."""
    y, ref_s, vf = _load(folder, name)
    det_s = np.array([b.r_index for b in segment_record(y, pair_model=model)], float) / float(MODEL_RATE_HZ)

    def outside(t: np.ndarray) -> np.ndarray:
        m = np.ones(t.shape, bool)
        for lo, hi in vf:
            m &= ~((t >= lo) & (t <= hi))
        return m

    r, d = ref_s[outside(ref_s)], det_s[outside(det_s)]
    m = match_beats(np.round(r * 1000).astype(np.int64), np.round(d * 1000).astype(np.int64), 1000.0)
    return m.tp, m.fn, m.fp


def _figures(counts: Mapping[str, int]) -> dict[str, float | int]:
    tp, fn, fp = counts["tp"], counts["fn"], counts["fp"]
    return {"tp": tp, "fn": fn, "fp": fp, "sensitivity_pct": round(100.0 * tp / max(tp + fn, 1), 3),
            "ppv_pct": round(100.0 * tp / max(tp + fp, 1), 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.qrs_train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=Path, nargs="+", required=True,
                    help="record folders (their names are the database names, e.g. mitdb-ds1)")
    ap.add_argument("--out", type=Path, default=PAIR_MODEL_DIR)
    ap.add_argument("--folds", type=int, default=2, help="leave-patient-out folds (0: skip the check)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.folds == 1 or a.folds < 0:
        ap.error(f"--folds must be 0 or >= 2, got {a.folds}")
    recs = [(f, n) for f in a.records for n in list_records(f)
            if has_signal(f, n) and (f / f"{n}.atr").is_file()]
    if not recs:
        ap.error(f"no annotated records with a signal in {[str(f) for f in a.records]}")
    t0 = time.time()
    data: dict[tuple[Path, str], PairData] = {}
    for f, n in recs:
        data[(f, n)] = record_pairs(f, n)
    print(f"pairs from {len(recs)} records: {sum(len(d.label) for d in data.values())} "
          f"({time.time() - t0:.0f} s)", flush=True)

    def fold(f: Path, n: str) -> int:
        return zlib.crc32(patient_of(f.name, n).encode()) % a.folds

    held_out: dict[str, dict[str, int]] = {}
    if a.folds:
        for k in range(a.folds):
            train = PairData.concat([d for (f, n), d in data.items() if fold(f, n) != k])
            m = fit_pair_model(train, a.seed)
            for f, n in recs:
                if fold(f, n) != k:
                    continue
                tp, fn, fp = streaming_qrs_counts(f, n, m)
                c = held_out.setdefault(f.name, {"tp": 0, "fn": 0, "fp": 0, "records": 0})
                c["tp"] += tp
                c["fn"] += fn
                c["fp"] += fp
                c["records"] += 1
            print(f"fold {k + 1}/{a.folds} done ({time.time() - t0:.0f} s)", flush=True)
        pooled = {k: sum(c[k] for c in held_out.values()) for k in ("tp", "fn", "fp")}
        for db, c in sorted(held_out.items()):
            fig = _figures(c)
            print(f"{db:14s} records {c['records']:3d}  Se {fig['sensitivity_pct']:.2f} %  "
                  f"+P {fig['ppv_pct']:.2f} %  (fn {c['fn']}, fp {c['fp']})")
        fig = _figures(pooled)
        print(f"{'pooled':14s}               Se {fig['sensitivity_pct']:.2f} %  +P {fig['ppv_pct']:.2f} %")
    card = {
        "trained_on": sorted(f"{f.name}/{n}" for f, n in recs),
        "pairs": int(sum(len(d.label) for d in data.values())),
        "label_match_s": MATCH_S,
        "n_trees": _N_TREES,
        "seed": a.seed,
        "leave_patient_out": {
            "folds": a.folds,
            "by_database": {db: _figures(c) for db, c in sorted(held_out.items())},
            "how": "streaming front end (1 s decisions on a 6 s buffer), VF episodes left out, "
                   "150 ms matching; each record detected by models trained without its patient",
        },
    }
    model = fit_pair_model(PairData.concat(list(data.values())), a.seed, card=card)
    model.save(a.out)
    print(f"wrote {a.out} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
