"""Crossval: leave-patient-out figures, each fold's bundle trained without its patients.

``cardiowatch crossval --records DIR [DIR ...] --out DIR [--folds 5] [--epochs N]
[--eval-records DIR ...] [--stream ecg|both] [--runtime keras|tflite|tflite-int8]``

Patients (not records: :func:`models.ecg.train.patient_of` ties the QT Database and
Noise Stress Test excerpts to their MIT-BIH and svdb patients) are dealt into folds.
For each fold a full ECG bundle (autoencoder, beat classifier, VF detector, artefact
detector) is trained on the other folds' patients, with the very code ``cardiowatch train
ecg``, ``train vf`` and ``train artefact`` run; then every record is
replayed through the worker's pipeline (:func:`services.evaluate.evaluate`) scored by
the bundle of the fold that held its patient out. ``--eval-records`` adds records that
are never trained on (noise stress records, the VF record): they are scored by the fold
that holds their patient, or by fold 1 when no fold does. The report is the evaluate
report (pooled over all records) with ``pooled_by_group`` per fold and ``subgroups`` by sex
and age band (:mod:`services.subgroups`), plus ``folds.json``.
The window detectors of fold ``k`` never see a patient fold ``k`` scores (its held-out
patients, and for fold 1 the patients of ``--eval-records`` no fold holds); their window
features are cached in ``--window-cache``. Fold bundles are kept in
``<out>/fold-<k>/bundle`` and reused when present (a detector missing from one is trained
into it), so an interrupted run resumes. ``--fold-bundles DIR`` reads fold ``k``'s bundle
from ``DIR/fold-<k>`` instead (the repository keeps the 5-fold bundles of the reported
figures in ``models/crossval/ecg-5fold``, so they are re-scored in minutes, not retrained
in hours); a bundle there whose held-out patients are not the fold's is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from models.bundle import read_meta, update_extras
from models.ecg import artefact, vf, vf_train
from models.ecg.train import fit_ecg, load_labelled_records, patient_of
from models.records import list_records

from services.evaluate import evaluate, format_pooled_table, hr_fold_map
from services.settings import DEFAULT_HR_MODEL_DIR
from services.subgroups import format_subgroups_table
from models.cli_help import HelpFormatter

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
                                formatter_class=HelpFormatter)
    p.add_argument("--records", type=Path, nargs="+", required=True, help="annotated WFDB folders to train and test on")
    p.add_argument("--eval-records", type=Path, nargs="*", default=[], help="folders only tested on")
    p.add_argument("--out", type=Path, required=True, help="folder for the fold bundles, scores and REPORT.json")
    p.add_argument("--folds", type=int, default=5, help="leave-patient-out folds")
    p.add_argument("--seed", type=int, default=0, help="random seed of the fold assignment and training")
    p.add_argument("--epochs", type=int, default=8, help="autoencoder epochs per fold")
    p.add_argument("--stream", choices=["ecg", "both"], default="both", help="evaluate the ECG stream, or also the heart rate")
    p.add_argument("--runtime", choices=["keras", "tflite", "tflite-int8"], default="keras",
                   help="model runtime of the fold bundles")
    p.add_argument("--hr-model", type=Path, default=DEFAULT_HR_MODEL_DIR, help="heart-rate bundle for --stream both")
    p.add_argument("--hr-fold-bundles", type=Path, metavar="DIR",
                   help="per-fold heart-rate bundles (cardiowatch train hr --fold-bundles), so the AF "
                        "figures are held out too")
    p.add_argument("--window-cache", type=Path, help="keep the VF and artefact detectors' window features "
                   "here (default <out>/windows)")
    p.add_argument("--fold-bundles", type=Path, metavar="DIR",
                   help="read fold k's bundle from DIR/fold-<k> when there (e.g. models/crossval/ecg-5fold)")
    p.add_argument("--classifier-noise", type=Path, metavar="NSTDB_DIR",
                   help="train each fold's beat classifier again with a noisy copy of every training record "
                        "(noise records bw, em, ma from this folder; models.ecg.noisy_beats), where the fold "
                        "bundle's classifier was not trained so yet")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
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
        if a.fold_bundles is not None and (a.fold_bundles / f"fold-{k}" / "bundle.json").is_file():
            out = a.fold_bundles / f"fold-{k}"
            _check_held_out(out, held)
        elif not (out / "bundle.json").is_file():
            print(f"crossval: fold {k}/{a.folds}: training on {len(train)} records "
                  f"({len({r.patient for r in train})} patients), holding out {len(held)} patients",
                  file=sys.stderr, flush=True)
            source = {"kind": "wfdb", "folders": [str(f) for f in a.records],
                      "crossval": {"fold": k, "folds": a.folds, "seed": a.seed, "held_out_patients": held}}
            fit_ecg(out, train, source, epochs=a.epochs, seed=a.seed, progress=not a.quiet,
                    version=f"0.2.0-fold{k}")
        bundles[k] = out
        folds_doc[str(k)] = {"held_out_patients": held, "bundle": str(out)}
    if a.classifier_noise is not None:
        _noisy_classifiers(bundles, labelled, fold_of, [Path(f) for f in a.records], a.classifier_noise,
                           a.seed, not a.quiet)
    all_folders = [Path(f) for f in a.records] + [Path(f) for f in a.eval_records]
    eval_only = sorted({patient_of(f.name, n) for f in map(Path, a.eval_records) for n in list_records(f)}
                       - set(fold_of))
    _window_detectors(bundles, fold_of, eval_only, all_folders, a.window_cache or a.out / "windows")
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


def _check_held_out(bundle: Path, held: list[str]) -> None:
    """Refuse a fold bundle trained with other patients held out than this fold's."""
    crossval = read_meta(bundle).training_config.get("data", {}).get("crossval", {})
    theirs = crossval.get("held_out_patients")
    if theirs != held:
        raise SystemExit(f"crossval: {bundle} held out {len(theirs or [])} patients, not this fold's {len(held)} "
                         f"(other --folds, --seed or --records than it was trained with): train it afresh "
                         f"with --out, without --fold-bundles")


def _noisy_classifiers(bundles: dict[int, Path], labelled: list, fold_of: dict[str, int], folders: list[Path],
                       noise_dir: Path, seed: int, progress: bool) -> None:
    """Train each fold bundle's beat classifier again on its training patients and their
    noisy copies (:mod:`models.ecg.noisy_beats`), unless it already was."""
    from models.ecg.noisy_beats import noisy_copies
    from models.ecg.classifier_train import refit_classifier

    todo = [k for k, out in sorted(bundles.items())
            if "noise_augmented" not in read_meta(out).extra.get("beat_classifier", {})]
    if not todo:
        return
    noisy = noisy_copies(folders, noise_dir, progress=progress)
    for k in todo:
        print(f"crossval: fold {k}: beat classifier with noisy copies", file=sys.stderr, flush=True)
        refit_classifier(bundles[k], [r for r in labelled if fold_of[r.patient] != k],
                         [r for r in noisy if fold_of.get(r.patient) != k], seed=seed, progress=progress)


def _window_detectors(bundles: dict[int, Path], fold_of: dict[str, int], eval_only: list[str],
                      folders: list[Path], cache: Path) -> None:
    """Train the VF and artefact detectors into each fold bundle that lacks them, without
    the patients that fold scores."""
    noise_dir = next((f for f in folders if all((f / f"{n}.hea").is_file() for n in vf_train.NOISE_RECORDS)), None)
    vf_sets: list | None = None
    art_sets: list | None = None
    art_rates: dict | None = None
    for k, out in sorted(bundles.items()):
        # the window detectors name patients "db:record", the folds "db/record"
        scored = {pid.replace("/", ":", 1) for pid, f in fold_of.items() if f == k}
        if k == 1:
            scored |= {pid.replace("/", ":", 1) for pid in eval_only}
        extra = read_meta(out).extra
        if vf.EXTRA_KEY not in extra:
            if vf_sets is None:
                vf_sets = vf_train.collect_windows(folders, noise_dir, cache_dir=cache)
            print(f"crossval: fold {k}: VF detector", file=sys.stderr, flush=True)
            res = vf_train.train_vf([s for s in vf_sets if s.patient not in scored], cross_validated=False)
            res.doc["training"]["held_out_patients"] = sorted(scored)
            update_extras(out, files={vf.FILE_NAME: res.detector.to_bytes()}, extra={vf.EXTRA_KEY: res.doc})
        if artefact.EXTRA_KEY not in extra:
            if art_sets is None:
                art_sets = vf_train.collect_windows(folders, noise_dir, snrs_db=artefact.DEFAULT_SNRS_DB,
                                                    noise_span_s=artefact.DEFAULT_NOISE_SPAN_S, cache_dir=cache)
            print(f"crossval: fold {k}: artefact detector", file=sys.stderr, flush=True)
            if art_rates is None:
                art_rates = artefact.window_rates_bpm(art_sets, folders)
            ares = artefact.train_artefact(art_sets, exclude_patients=sorted(scored), rates_bpm=art_rates)
            ares.doc["training"]["noise_span_s"] = list(artefact.DEFAULT_NOISE_SPAN_S)
            ares.doc["training"]["snrs_db"] = list(artefact.DEFAULT_SNRS_DB)
            update_extras(out, files={artefact.FILE_NAME: ares.detector.to_bytes()},
                          extra={artefact.EXTRA_KEY: ares.doc})


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
