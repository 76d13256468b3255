"""Crossval: leave-patient-out figures, each fold's bundle trained without its patients.

``cardiowatch crossval --records DIR [DIR ...] --out DIR [--folds 5] [--epochs N]
[--eval-records DIR ...] [--stream ecg|both] [--runtime keras|tflite|tflite-int8]``

Patients (not records: :func:`models.ecg.train.patient_of` ties the QT Database and
Noise Stress Test excerpts to their MIT-BIH and svdb patients) are dealt into folds.
For each fold a full ECG bundle (autoencoder, beat classifier) is trained on the other
folds' patients, with the very code ``cardiowatch train ecg`` runs; then every record is
replayed through the worker's pipeline (:func:`services.evaluate.evaluate`) scored by
the bundle of the fold that held its patient out. ``--eval-records`` adds records that
are never trained on (noise stress records, the VF record): they are scored by the fold
that holds their patient, or by fold 1 when no fold does. The report is the evaluate
report (pooled over all records) with ``pooled_by_group`` per fold and ``subgroups`` by sex
and age band (:mod:`services.subgroups`), plus ``folds.json``.
Fold bundles are kept in ``<out>/fold-<k>/bundle`` and reused when present, so an
interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from models.ecg.train import fit_ecg, load_labelled_records, patient_of
from models.records import list_records

from services.evaluate import evaluate, format_pooled_table, hr_fold_map
from services.settings import DEFAULT_HR_MODEL_DIR
from services.subgroups import format_subgroups_table

__all__ = ["assign_folds", "main"]


def assign_folds(patients: list[str], folds: int, seed: int) -> dict[str, int]:
    """Patient -> fold (1-based), dealt round-robin over a seeded permutation."""
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    uniq = sorted(set(patients))
    if len(uniq) < folds:
        raise ValueError(f"need at least {folds} patients for {folds} folds, got {len(uniq)}")
    perm = np.random.default_rng([seed, 23]).permutation(len(uniq))
    return {uniq[j]: i % folds + 1 for i, j in enumerate(perm)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cardiowatch crossval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=Path, nargs="+", required=True, help="annotated WFDB folders to train and test on")
    p.add_argument("--eval-records", type=Path, nargs="*", default=[], help="folders only tested on")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=8, help="autoencoder epochs per fold")
    p.add_argument("--stream", choices=["ecg", "both"], default="both")
    p.add_argument("--runtime", choices=["keras", "tflite", "tflite-int8"], default="keras")
    p.add_argument("--hr-model", type=Path, default=DEFAULT_HR_MODEL_DIR)
    p.add_argument("--hr-fold-bundles", type=Path, metavar="DIR",
                   help="per-fold heart-rate bundles (cardiowatch train hr --fold-bundles), so the AF "
                        "figures are held out too")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    labelled = load_labelled_records([Path(f) for f in a.records], progress=not a.quiet)
    fold_of = assign_folds([r.patient for r in labelled], a.folds, a.seed)
    folds_doc: dict[str, dict] = {}
    bundles: dict[int, Path] = {}
    for k in range(1, a.folds + 1):
        held = sorted(pid for pid, f in fold_of.items() if f == k)
        train = [r for r in labelled if fold_of[r.patient] != k]
        out = a.out / f"fold-{k}" / "bundle"
        if not (out / "bundle.json").is_file():
            print(f"crossval: fold {k}/{a.folds}: training on {len(train)} records "
                  f"({len({r.patient for r in train})} patients), holding out {len(held)} patients",
                  file=sys.stderr, flush=True)
            source = {"kind": "wfdb", "folders": [str(f) for f in a.records],
                      "crossval": {"fold": k, "folds": a.folds, "seed": a.seed, "held_out_patients": held}}
            fit_ecg(out, train, source, epochs=a.epochs, seed=a.seed, progress=not a.quiet,
                    version=f"0.2.0-fold{k}")
        bundles[k] = out
        folds_doc[str(k)] = {"held_out_patients": held, "bundle": str(out)}
    model_for: dict[str, Path] = {}
    group_for: dict[str, str] = {}
    for folder in [Path(f) for f in a.records] + [Path(f) for f in a.eval_records]:
        for name in list_records(folder):
            k = fold_of.get(patient_of(folder.name, name), 1)
            model_for[f"{folder.name}/{name}"] = bundles[k]
            group_for[f"{folder.name}/{name}"] = f"fold-{k}"
    (a.out / "folds.json").write_text(json.dumps({"folds": a.folds, "seed": a.seed, "fold_of": fold_of,
                                                   "folds_detail": folds_doc}, indent=1))
    report = evaluate([Path(f) for f in a.records] + [Path(f) for f in a.eval_records], a.out / "REPORT.json",
                      a.out / "scores", bundles[1], a.stream, a.out / "plots", a.runtime, a.hr_model,
                      model_for=model_for, group_for=group_for,
                      hr_model_for=hr_fold_map(a.hr_fold_bundles) if a.hr_fold_bundles else None)
    # one column per fold, then all folds pooled
    print(format_pooled_table({"pooled_by_noise": {**report.get("pooled_by_group", {}),
                                                   "pooled": report["pooled"]}}))
    print("\n" + format_subgroups_table(report["subgroups"]))
    print(f"\ncrossval: {a.folds} folds in {(time.monotonic() - t0) / 60:.1f} min; report {a.out / 'REPORT.json'}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
